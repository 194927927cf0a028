//! The atomicity probe: whether a server keeps the promises a lock rests on, measured on the
//! server itself. Run it against your own server before you rely on a lock there:
//!
//! ```sh
//! MONGODB_URI=mongodb://host:27017/ cargo test --test atomicity      # your server
//! scripts/with-mongo cargo test --test atomicity                     # nx-27017
//! MONGO_SERVER=secantus scripts/with-mongo cargo test --test atomicity
//! ```
//!
//! Three probes, each with several clients of their own (separate connection pools, so the
//! server sees the requests arrive at once on separate connections):
//!
//! - 8 clients make 200 `$inc` each on one document: it must count exactly 1,600 (FerretDB
//!   1.24 counted 211 to 276);
//! - 8 clients race conditional updates, each moving one document from the value it read to
//!   the next: every value must be reached by exactly one of them (the grant is such an
//!   update: two winners are two holders);
//! - 4 lock managers (2 workers each) race to grant and release one resource: no two grants
//!   with one fence, no two holds at once (checked by `support::history`).
//!
//! The probe measures the server, so its managers start even where a manager would refuse to
//! (`LockConfig::allow_unsafe_server`): on such a server the probe fails with what went wrong.
//! Each probe works in a collection of its own in `actix_mongo_lock_tests` and drops it when it
//! passes. Every failure message says what was counted.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use actix_mongo_lock::{Lock, LockError};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;
use support::history::History;
use support::server::{client, fast_config, hold_and_unlock, unique_name, uri};

/// Clients racing in the two document probes.
const CLIENTS: usize = 8;
/// Updates each client makes in the `$inc` probe.
const INCREMENTS: usize = 200;

/// A fresh probe collection holding one document `{_id: 1, n: 0}`, and its name.
async fn probe_collection(prefix: &str) -> (Collection<Document>, String) {
    let name = unique_name(prefix);
    let collection = client()
        .await
        .database("actix_mongo_lock_tests")
        .collection::<Document>(&name);
    collection
        .insert_one(doc! { "_id": 1, "n": 0 })
        .await
        .unwrap_or_else(|e| panic!("cannot write to {}: {e}", uri()));
    (collection, name)
}

/// The same collection through a client of its own.
async fn on_own_client(name: &str) -> Collection<Document> {
    client()
        .await
        .database("actix_mongo_lock_tests")
        .collection(name)
}

/// `n` as an integer (Int32 or Int64, as servers differ).
fn count(document: &Document) -> i64 {
    match document.get("n") {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        other => panic!("n is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_clients_making_200_increments_each_on_one_document_count_1600() {
    let (collection, name) = probe_collection("atomic_inc").await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mine = on_own_client(&name).await;
        clients.push(tokio::spawn(async move {
            let mut modified = 0;
            for _ in 0..INCREMENTS {
                let result = mine
                    .update_one(doc! { "_id": 1 }, doc! { "$inc": { "n": 1 } })
                    .await
                    .expect("an $inc");
                assert_eq!(result.matched_count, 1, "the $inc missed its document");
                modified += result.modified_count;
            }
            modified
        }));
    }
    let mut acknowledged = 0;
    for client in clients {
        acknowledged += client.await.unwrap();
    }
    let stored = collection
        .find_one(doc! { "_id": 1 })
        .await
        .unwrap()
        .expect("the document");
    let expected = (CLIENTS * INCREMENTS) as i64;
    eprintln!(
        "$inc probe: {CLIENTS} clients x {INCREMENTS}: {acknowledged} acknowledged, n = {}",
        count(&stored)
    );
    assert_eq!(
        acknowledged as i64, expected,
        "the server acknowledged {acknowledged} increments of {expected}"
    );
    assert_eq!(
        count(&stored),
        expected,
        "{CLIENTS} clients x {INCREMENTS} acknowledged $inc left n = {}: the server loses \
         concurrent updates, and a lock on it is not safe",
        count(&stored)
    );
    collection.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_conditional_updates_reach_every_value_exactly_once() {
    // Each client reads n and moves it to n + 1 only if it still is n, in one findAndModify, as
    // a grant takes a resource only if it is still free: of clients that read the same n, one
    // must win and the others miss.
    let (collection, name) = probe_collection("atomic_cas").await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mine = on_own_client(&name).await;
        clients.push(tokio::spawn(async move {
            let mut reached = Vec::new();
            let mut missed = 0_u64;
            while Instant::now() < deadline {
                let seen = count(&mine.find_one(doc! { "_id": 1 }).await.unwrap().unwrap());
                let moved = mine
                    .find_one_and_update(
                        doc! { "_id": 1, "n": seen },
                        doc! { "$set": { "n": seen + 1 } },
                    )
                    .return_document(ReturnDocument::After)
                    .await
                    .expect("a conditional update");
                match moved {
                    Some(after) => {
                        assert_eq!(count(&after), seen + 1, "answered {after:?}");
                        reached.push(seen + 1);
                    }
                    None => missed += 1,
                }
            }
            (reached, missed)
        }));
    }
    let mut winners: BTreeMap<i64, usize> = BTreeMap::new();
    let mut missed = 0;
    for client in clients {
        let (reached, misses) = client.await.unwrap();
        missed += misses;
        for value in reached {
            *winners.entry(value).or_default() += 1;
        }
    }
    let stored = count(
        &collection
            .find_one(doc! { "_id": 1 })
            .await
            .unwrap()
            .unwrap(),
    );
    let twice: Vec<_> = winners.iter().filter(|(_, &n)| n > 1).collect();
    eprintln!(
        "conditional update probe: {} wins, {missed} misses, {} values won more than once, \
         n = {stored}",
        winners.values().sum::<usize>(),
        twice.len()
    );
    assert!(
        twice.is_empty(),
        "{} values were reached by more than one client (value, winners): {:?}: two grants \
         of one resource would both succeed",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    let wins = winners.len() as i64;
    assert_eq!(stored, wins, "n = {stored} after {wins} winning updates");
    assert!(
        missed > 0 && wins > (CLIENTS as i64),
        "too little racing to tell: {wins} wins, {missed} misses"
    );
    collection.drop().await.unwrap();
}

#[actix_rt::test]
async fn racing_managers_never_give_two_grants_one_fence_nor_two_holds_at_once() {
    let config = fast_config("atomic_grants").allow_unsafe_server(true);
    let history = History::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut workers = Vec::new();
    let mut refusals = Vec::new();
    for m in 0..4 {
        let locks = actix_mongo_lock::LockManager::with_client(client().await, config.clone())
            .await
            .unwrap_or_else(|e| panic!("cannot start a lock manager on {}: {e}", uri()));
        for w in 0..2 {
            let (locks, history) = (locks.clone(), history.clone());
            let name = format!("m{m}w{w}");
            let refused = std::rc::Rc::new(std::cell::Cell::new(0_u32));
            refusals.push(std::rc::Rc::clone(&refused));
            let lease = config.ttl;
            workers.push(actix_rt::spawn(async move {
                while Instant::now() < deadline {
                    let requested = SystemTime::now();
                    match locks.send(Lock::new("contended")).await.unwrap() {
                        Ok(grant) => {
                            let hold = Duration::from_millis(1);
                            let unlocked = hold_and_unlock(
                                &name, &locks, &history, grant, requested, lease, hold,
                            );
                            if let Err(e) = unlocked.await.unwrap() {
                                panic!("{name}'s Unlock failed: {e}");
                            }
                        }
                        Err(LockError::AlreadyLocked { .. }) => {
                            refused.set(refused.get() + 1);
                            actix_rt::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(e) => panic!("{name}'s Lock failed: {e}"),
                    }
                }
            }));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let refused: u32 = refusals.iter().map(|r| r.get()).sum();
    match history.check() {
        Ok(summary) => eprintln!("grant probe: {summary:?}, {refused} refusals"),
        Err(violations) => {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for violation in &violations.list {
                *kinds.entry(format!("{:?}", violation.kind)).or_default() += 1;
            }
            eprintln!(
                "grant probe: {} holds, {refused} refusals, violations {kinds:?}",
                violations.holds
            )
        }
    }
    let summary = history.assert_ok();
    assert!(
        summary.holds >= 10 && refused > 0,
        "too little racing to tell: {summary:?}, {refused} refusals"
    );
    support::server::collection(&config)
        .await
        .drop()
        .await
        .unwrap();
}
