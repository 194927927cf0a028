//! Reliability under load and when processes or the server die: a multi-process contention
//! soak, a holder killed with SIGKILL, the server restarted under running managers (file-backed
//! and in-memory), and Close with a thousand messages in flight. Every scenario checks mutual
//! exclusion (the history checker, fences) and prints its figures.
//!
//! ```sh
//! scripts/with-mongo cargo test --test reliability -- --nocapture
//! # the long soak (60 s; SOAK_PROCESSES sets the number of processes, 4 by default):
//! SOAK_SECONDS=60 scripts/with-mongo cargo test --release --test reliability contention_soak -- --nocapture
//! ```
//!
//! The tests run one at a time (they share one lock, `SERIAL`): the soak saturates the machine
//! and the embedded server, and the others measure takeover times that must not suffer from it.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant, SystemTime};

use actix::Addr;
use actix_mongo_lock::{
    Acquire, Close, Lock, LockConfig, LockError, LockGrant, LockId, LockManager, Unlock,
    UnlockOutcome,
};
use mongodb::bson::{doc, Bson, DateTime, Document};
use support::contender::{Contender, ContenderRun};
use support::history::History;
use support::own_server::{free_port, OwnServer, ScratchDir, Stop, Storage};
use support::server::{
    client_for, collection, fast_config, manager, stored, stored_fence, stored_hold, unique_name,
    uri,
};

/// One test at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value:?} is not a number: {e}")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------
// Contention soak
// ---------------------------------------------------------------------------------------------

/// N lock-contender processes × 8 workers × 4 resources for SOAK_SECONDS (10 s by default):
/// every hold any process saw goes into one history, which must show no overlap and fences
/// rising in grant order; the fences stored at the end must account for every grant.
#[actix_rt::test]
async fn contention_soak_keeps_mutual_exclusion_across_processes() {
    let _serial = SERIAL.lock().await;
    let seconds = env_number("SOAK_SECONDS", 10);
    let processes = env_number("SOAK_PROCESSES", 4) as usize;
    let (workers, resources, ttl_ms, hold_ms) = (8, 4, 5000, 5);
    let name = unique_name("soak");
    let started = Instant::now();
    let children: Vec<_> = (1..=processes)
        .map(|p| {
            let contender = Contender {
                name: name.clone(),
                process: format!("p{p}"),
                workers,
                resources,
                seconds,
                ttl_ms,
                hold_ms,
            };
            contender.spawn(&uri())
        })
        .collect();
    // Read every child's output at once: a child blocked on a full pipe would stall its holds.
    let readers: Vec<_> = children
        .into_iter()
        .map(|child| std::thread::spawn(move || child.wait_with_output()))
        .collect();
    let mut runs = Vec::new();
    for reader in readers {
        let output = reader.join().unwrap().expect("lock-contender runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "lock-contender failed ({}): {stderr}",
            output.status
        );
        runs.push(ContenderRun::parse(&stdout, &stderr));
    }
    let elapsed = started.elapsed();

    let history = History::new();
    runs.iter().for_each(|run| run.record(&history));
    let summary = history.assert_ok();
    let grants = summary.holds;
    let by_outcome =
        runs.iter()
            .flat_map(|run| &run.holds)
            .fold(BTreeMap::<&str, usize>::new(), |mut m, h| {
                *m.entry(h.outcome.as_str()).or_default() += 1;
                m
            });
    let refusals: u64 = runs.iter().filter_map(|run| run.done).map(|d| d.1).sum();
    let per_process: Vec<usize> = runs.iter().map(|run| run.holds.len()).collect();
    let errors: Vec<&str> = runs
        .iter()
        .flat_map(|run| run.stderr.lines())
        .filter(|line| line.contains("lock-contender"))
        .collect();
    let rate = grants as f64 / seconds as f64;
    println!(
        "contention soak: {processes} processes x {workers} workers x {resources} resources for \
         {seconds} s (TTL {ttl_ms} ms, hold {hold_ms} ms): {grants} grants = {rate:.1} grants/s, \
         {refusals} Acquires out of retries, unlocks {by_outcome:?}, per process {per_process:?}, \
         per resource {:?}; 0 violations; wall time {elapsed:.1?}",
        summary.per_resource
    );

    assert!(
        runs.iter().all(|run| run.done.is_some()),
        "a contender did not finish"
    );
    assert!(
        per_process.iter().all(|&n| n > 0),
        "a process never got a lock: {per_process:?}"
    );
    assert!(errors.is_empty(), "contenders reported errors: {errors:#?}");
    assert_eq!(
        by_outcome.get("error"),
        None,
        "an Unlock failed without any fault"
    );
    // Every grant takes the next fence, and a fence no caller was told of comes only from a
    // grant whose outcome its manager could not learn (docs/reliability.md, "Retried writes and
    // fence gaps"). No write fails here (no fault is injected); the one way left is an Acquire
    // that runs out of retries with an attempt in flight: if that attempt lands, its grant is
    // released unseen. So the fences told are distinct and miss at most one per Acquire given
    // up, and none at all when no Acquire gave up.
    let config = LockConfig::new(&name).database("actix_mongo_lock_tests");
    let mut missing = Vec::new();
    for r in 0..resources {
        let resource = format!("r{r}");
        let told: Vec<i64> = runs
            .iter()
            .flat_map(|run| &run.holds)
            .filter(|h| h.resource == resource)
            .map(|h| h.fence)
            .collect();
        let distinct: BTreeSet<i64> = told.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            told.len(),
            "{resource}: a fence was told twice"
        );
        let document = stored(&config, &resource)
            .await
            .expect("the resource was stored");
        let last = stored_fence(&document);
        assert!(
            distinct.last().is_some_and(|&f| f <= last),
            "{resource}: a fence above the stored {last} was told"
        );
        missing.extend((1..=last).filter(|f| !distinct.contains(f)).map(|f| (r, f)));
        assert_eq!(
            document.get_document("exclusive").unwrap().get("acquired"),
            Some(&Bson::Boolean(false)),
            "{resource} is still held after every contender closed"
        );
    }
    println!(
        "fences told to no caller (resource, fence): {missing:?}; Acquires given up: {refusals}"
    );
    assert!(
        missing.len() as u64 <= refusals,
        "fences told to no caller (resource, fence): {missing:?}, but only {refusals} Acquires \
         gave up: a grant was applied without its caller hearing of it"
    );
}

// ---------------------------------------------------------------------------------------------
// A holder killed while holding
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn a_killed_holders_lock_is_taken_over_after_its_lease_and_its_id_releases_nothing() {
    let _serial = SERIAL.lock().await;
    let ttl = Duration::from_secs(2);
    let acquire_period = Duration::from_millis(100);
    let name = unique_name("killed");
    let config = LockConfig::new(&name)
        .database("actix_mongo_lock_tests")
        .ttl(ttl)
        .acquire_retries(acquire_period, 100);
    // The victim holds r0 for 60 s (its only worker sleeps while holding).
    let victim = Contender {
        name: name.clone(),
        process: "victim".to_owned(),
        workers: 1,
        resources: 1,
        seconds: 1,
        ttl_ms: ttl.as_millis() as u64,
        hold_ms: 60_000,
    };
    let mut child = victim.spawn(&uri());
    let (dead_id, dead_fence, dead_created, dead_expires) = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(hold) = stored_hold(&config, "r0").await {
                break (hold.lock_id, hold.fence, hold.created_at, hold.expires_at);
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the victim exited before holding"
            );
            assert!(Instant::now() < deadline, "the victim never held r0");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    };
    child.kill().expect("SIGKILL the holder");
    let killed = Instant::now();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the victim was not killed: {status}");

    let survivor = manager(&config).await;
    let requested = SystemTime::now();
    let grant: LockGrant = survivor
        .send(Acquire::new("r0").timeout(ttl + Duration::from_secs(5)))
        .await
        .unwrap()
        .expect("the survivor takes over the dead holder's lock");
    let took = killed.elapsed();
    let granted = SystemTime::now();

    // Not before the dead holder's lease ended; within one acquire period of its end (+1 s on
    // a server comparing dates by whole seconds, +300 ms of scheduling on a busy machine).
    assert!(
        grant.granted_at > dead_expires,
        "taken over before the dead holder's lease ended"
    );
    assert!(grant.fence > dead_fence);
    let late = granted
        .duration_since(dead_expires)
        .unwrap_or(Duration::ZERO);
    let slack = acquire_period + Duration::from_secs(1) + Duration::from_millis(300);
    assert!(
        late < slack,
        "taken over {late:?} after the lease ended (allowed {slack:?})"
    );
    assert!(took < ttl + slack, "taken over {took:?} after the kill");

    // The dead holder's id releases nothing; the new hold stays.
    let dead = LockId::parse(&dead_id).expect("the stored lock id parses");
    let outcome = survivor.send(Unlock::new(dead)).await.unwrap().unwrap();
    assert_eq!(outcome, UnlockOutcome::NotHeld);
    let (holder, fence) = stored_hold(&config, "r0")
        .await
        .expect("still held")
        .id_and_fence();
    assert_eq!(
        (holder.as_str(), fence),
        (grant.lock_id.as_str(), grant.fence)
    );

    let history = History::new();
    history.granted(
        "victim",
        "r0",
        dead_fence,
        dead_created,
        dead_created,
        dead_expires,
    );
    history.granted(
        "survivor",
        "r0",
        grant.fence,
        requested,
        granted,
        requested + ttl,
    );
    history.assert_ok();
    println!(
        "killed holder: SIGKILL while holding (TTL {ttl:?}); taken over {took:?} after the kill, \
         {late:?} after its lease ended; fence {dead_fence} -> {}; the dead id's Unlock: NotHeld",
        grant.fence
    );
}

// ---------------------------------------------------------------------------------------------
// The server restarted under running managers
// ---------------------------------------------------------------------------------------------

/// Sends `Lock(resource)` until the manager reaches the server again (the first requests after
/// a restart may fail on dead pooled connections): its first non-database answer.
async fn lock_when_reachable(
    locks: &Addr<LockManager>,
    resource: &str,
) -> (Result<LockGrant, LockError>, u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut failures = 0;
    loop {
        match locks.send(Lock::new(resource)).await.unwrap() {
            Err(e @ (LockError::Database(_) | LockError::Unavailable { .. })) => {
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "the manager did not reconnect within 15 s: {e}"
                );
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
            answer => return (answer, failures),
        }
    }
}

async fn managers_on(
    server: &OwnServer,
    config: &LockConfig,
) -> (Addr<LockManager>, Addr<LockManager>) {
    let start = || async {
        LockManager::with_client(client_for(&server.uri()).await, config.clone())
            .await
            .expect("start a manager on the test's own server")
    };
    (start().await, start().await)
}

#[actix_rt::test]
async fn a_file_backed_server_restart_keeps_holds_and_managers_reconnect_by_themselves() {
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("restart-file");
    let storage = Storage::File(dir.path().join("locks.db"));
    let mut server = OwnServer::start(storage, free_port(), dir.path()).await;
    let config = fast_config("restart_file").ttl(Duration::from_secs(30));
    let (holder, other) = managers_on(&server, &config).await;
    let held = holder.send(Lock::new("kept")).await.unwrap().unwrap();
    let mut reconnect_failures = Vec::new();

    for how in [Stop::Term, Stop::Kill] {
        server.stop(how);
        // While the server is down: a typed error, not a hang or a panic.
        let down = holder.send(Lock::new("while-down")).await.unwrap();
        assert!(
            matches!(
                down,
                Err(LockError::Database(_) | LockError::Unavailable { .. })
            ),
            "Lock with the server down answered {down:?}"
        );
        server.start_again().await;

        // The same managers, not restarted, reach the server again; the hold survived.
        let (again, failures) = lock_when_reachable(&other, "kept").await;
        reconnect_failures.push((how, failures));
        assert!(
            matches!(again, Err(LockError::AlreadyLocked { .. })),
            "after a {how:?} restart, Lock of the held resource answered {again:?}"
        );
        let (fresh, _) = lock_when_reachable(&holder, &format!("fresh-{how:?}")).await;
        fresh.expect("the holder's manager locks again after the restart");
    }

    let outcome = holder
        .send(Unlock::new(held.lock_id.clone()))
        .await
        .unwrap();
    assert_eq!(
        outcome.expect("the holder unlocks after two restarts"),
        UnlockOutcome::Released
    );
    let next = other.send(Lock::new("kept")).await.unwrap().unwrap();
    assert!(
        next.fence > held.fence,
        "the fence went back across restarts"
    );
    println!(
        "file-backed restart (SIGTERM, then SIGKILL): the hold survived both, the holder's \
         Unlock answered Released, fence {} -> {}; failed requests before each reconnect: \
         {reconnect_failures:?}",
        held.fence, next.fence
    );
}

/// An in-memory server forgets everything when it restarts: the live hold is gone, a second
/// manager is granted the same resource while the first still believes it holds it, and the
/// fence starts again from 1, so even fencing cannot tell the two apart. This is what a
/// grant acknowledged by a primary and then lost (a failover without `w: majority`) looks like;
/// see docs/reliability.md.
#[actix_rt::test]
async fn an_in_memory_server_restart_loses_holds_and_repeats_fences() {
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("restart-memory");
    let mut server = OwnServer::start(Storage::Memory, free_port(), dir.path()).await;
    let config = fast_config("restart_memory").ttl(Duration::from_secs(30));
    let (holder, other) = managers_on(&server, &config).await;
    let first = holder.send(Lock::new("kept")).await.unwrap().unwrap();
    let again = holder.send(Lock::new("kept")).await.unwrap().unwrap_err();
    assert!(matches!(again, LockError::AlreadyLocked { .. }));

    server.stop(Stop::Term);
    server.start_again().await;

    let (second, _) = lock_when_reachable(&other, "kept").await;
    let second = second.expect("after an in-memory restart the held resource is free again");
    assert!(
        first.expires_at > SystemTime::now(),
        "the first lease should still be live for this to show anything"
    );
    assert!(
        second.fence <= first.fence,
        "fences continued ({} -> {}) although the server lost its data",
        first.fence,
        second.fence
    );
    // Its first try may meet the dropped connection; the retry then cannot tell whether that
    // try released anything, and says so.
    let stale = holder.send(Unlock::new(first.lock_id)).await.unwrap();
    assert!(
        matches!(
            stale,
            Ok(UnlockOutcome::NotHeld | UnlockOutcome::Unconfirmed)
        ),
        "{stale:?}"
    );
    println!(
        "in-memory restart: live hold lost; a second manager was granted the resource {:?} \
         before the first lease would have ended; fence {} then {} again",
        first
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
        first.fence,
        second.fence
    );
}

/// The grant's upsert relies on the unique `resource` index: without it, a grant of a held
/// resource inserts a second document for it instead of failing. The manager creates the
/// index once at start, so when the collection is lost under running managers (dropped,
/// restored from a dump, an in-memory server restarted), new grants must still exclude each
/// other.
#[actix_rt::test]
async fn grants_stay_exclusive_after_the_lock_collection_is_lost_under_running_managers() {
    let _serial = SERIAL.lock().await;
    let config = fast_config("collection_lost").ttl(Duration::from_secs(30));
    let first = manager(&config).await;
    let second = manager(&config).await;
    let warm_up = first.send(Lock::new("warm-up")).await.unwrap().unwrap();
    first
        .send(Unlock::new(warm_up.lock_id))
        .await
        .unwrap()
        .unwrap();

    collection(&config)
        .await
        .drop()
        .await
        .expect("drop the lock collection");

    let held = first.send(Lock::new("r")).await.unwrap().unwrap();
    let again = second.send(Lock::new("r")).await.unwrap();
    let documents = collection(&config)
        .await
        .count_documents(doc! { "resource": format!("{}-r", config.name) })
        .await
        .unwrap();
    assert!(
        matches!(again, Err(LockError::AlreadyLocked { .. })),
        "after the collection was dropped, a second manager was granted \"r\" while the first \
         holds it (fences {} and {:?}; {documents} documents for \"r\"): {again:?}",
        held.fence,
        again.as_ref().map(|g| g.fence)
    );
    assert_eq!(documents, 1);
}

// ---------------------------------------------------------------------------------------------
// Close under load
// ---------------------------------------------------------------------------------------------

/// What one message in the load was, and how it was answered.
enum Sent {
    Lock(Result<LockGrant, LockError>),
    Acquire(Result<LockGrant, LockError>),
    Unlock(LockId, Result<UnlockOutcome, LockError>),
}

fn expired_hold(config: &LockConfig, resource: &str) -> Document {
    let long_ago = DateTime::from_system_time(SystemTime::now() - Duration::from_secs(3600));
    doc! {
        "resource": format!("{}-{resource}", config.name),
        "exclusive": {
            "lockId": LockId::generate().as_str(), "owner": "canary", "host": "canary",
            "comment": Bson::Null, "createdAt": long_ago, "renewedAt": Bson::Null,
            "expiresAt": long_ago, "acquired": true,
        },
        "shared": { "count": 0, "locks": [] },
        "fence": 1_i64,
    }
}

async fn is_acquired(config: &LockConfig, resource: &str) -> bool {
    let document = stored(config, resource).await.expect("the document exists");
    document.get_document("exclusive").unwrap().get("acquired") == Some(&Bson::Boolean(true))
}

#[actix_rt::test]
async fn close_under_load_answers_all_1000_messages_and_keeps_no_released_lock() {
    let _serial = SERIAL.lock().await;
    // This is about the drain, not the bounds: a thousand messages keep the slower test server
    // (SecantusDB, one core) busy for seconds, so requests and Close get room enough.
    let config = fast_config("close_load")
        .ttl(Duration::from_secs(30))
        .acquire_retries(Duration::from_millis(50), 1000)
        .purger_period(Duration::from_millis(100))
        .request_timeout(Duration::from_secs(30))
        .close_timeout(Duration::from_secs(60));
    let locks = manager(&config).await;
    // Holds resources elsewhere; its own purger (one purge at start, then hourly) must not be
    // mistaken for the closed manager's.
    let holder = manager(&config.clone().purger_period(Duration::from_secs(3600))).await;

    // The purger runs: an expired hold is cleared within a few periods (+1 s on a server
    // comparing dates by whole seconds).
    let canaries = collection(&config).await;
    canaries
        .insert_one(expired_hold(&config, "canary-before"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while is_acquired(&config, "canary-before").await {
        assert!(Instant::now() < deadline, "the purger never ran");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    // Holds to release in the load, and resources held elsewhere to wait on.
    let mut held = Vec::new();
    for i in 0..150 {
        held.push(
            locks
                .send(Lock::new(format!("pre-{i}")))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for i in 0..5 {
        holder
            .send(Lock::new(format!("elsewhere-{i}")))
            .await
            .unwrap()
            .unwrap();
    }

    // 1,000 messages in the mailbox at once, in this order (each through its own Addr clone,
    // so none waits for mailbox space): Locks of free and of contended resources, Acquires of
    // contended resources, of resources held elsewhere and of resources the load releases,
    // Unlocks of live holds and of unknown ids.
    let mut replies = Vec::new();
    let mut kinds = BTreeMap::<&str, usize>::new();
    let mut held = held.into_iter();
    for i in 0..1000usize {
        let addr = locks.clone();
        let (kind, reply): (&str, actix_rt::task::JoinHandle<Sent>) = match i % 8 {
            0 | 1 => ("Lock free", {
                let r = addr.send(Lock::new(format!("free-{i}")));
                actix_rt::spawn(async move { Sent::Lock(r.await.unwrap()) })
            }),
            2 => ("Lock contended", {
                let r = addr.send(Lock::new(format!("hot-{}", i % 10)));
                actix_rt::spawn(async move { Sent::Lock(r.await.unwrap()) })
            }),
            3 => ("Acquire contended", {
                let r = addr.send(Acquire::new(format!("hot-{}", i % 10)));
                actix_rt::spawn(async move { Sent::Acquire(r.await.unwrap()) })
            }),
            4 => ("Acquire held elsewhere", {
                let r = addr.send(Acquire::new(format!("elsewhere-{}", i % 5)));
                actix_rt::spawn(async move { Sent::Acquire(r.await.unwrap()) })
            }),
            5 => ("Acquire released by the load", {
                let r = addr.send(Acquire::new(format!("pre-{}", i % 150)));
                actix_rt::spawn(async move { Sent::Acquire(r.await.unwrap()) })
            }),
            6 => match held.next() {
                Some(grant) => ("Unlock live", {
                    let id = grant.lock_id.clone();
                    let r = addr.send(Unlock::new(grant.lock_id));
                    actix_rt::spawn(async move { Sent::Unlock(id, r.await.unwrap()) })
                }),
                None => ("Unlock unknown", {
                    let id = LockId::generate();
                    let r = addr.send(Unlock::new(id.clone()));
                    actix_rt::spawn(async move { Sent::Unlock(id, r.await.unwrap()) })
                }),
            },
            _ => ("Unlock unknown", {
                let id = LockId::generate();
                let r = addr.send(Unlock::new(id.clone()));
                actix_rt::spawn(async move { Sent::Unlock(id, r.await.unwrap()) })
            }),
        };
        *kinds.entry(kind).or_default() += 1;
        replies.push(reply);
    }
    // Close while most of them are still in flight: once the first 200 are answered.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answered_before_close = loop {
        let answered = replies.iter().filter(|r| r.is_finished()).count();
        if answered >= 200 {
            break answered;
        }
        assert!(
            Instant::now() < deadline,
            "only {answered} of 1000 answered in 20 s"
        );
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    };
    let close_sent = Instant::now();
    let close = actix_rt::spawn(locks.clone().send(Close));

    // Once closing has begun (a probe answers Closing), late messages are all refused.
    let mut probes = 0;
    loop {
        probes += 1;
        match locks.send(Lock::new("probe")).await.unwrap() {
            Err(LockError::Closing) => break,
            Ok(_) | Err(LockError::AlreadyLocked { .. }) => {}
            Err(e) => panic!("a probe answered {e:?}"),
        }
        actix_rt::task::yield_now().await;
    }
    let late: Vec<_> = (0..100)
        .map(|i| {
            let addr = locks.clone();
            match i % 3 {
                0 => {
                    let r = addr.send(Lock::new(format!("late-{i}")));
                    actix_rt::spawn(async move { Sent::Lock(r.await.unwrap()) })
                }
                1 => {
                    let r = addr.send(Acquire::new(format!("late-{i}")));
                    actix_rt::spawn(async move { Sent::Acquire(r.await.unwrap()) })
                }
                _ => {
                    let id = LockId::generate();
                    let r = addr.send(Unlock::new(id.clone()));
                    actix_rt::spawn(async move { Sent::Unlock(id, r.await.unwrap()) })
                }
            }
        })
        .collect();

    close.await.unwrap().expect("Close is answered");
    let closed_after = close_sent.elapsed();

    // Every message of the load was accepted before Close and answered with its own result
    // (a wait or a grant still under way when closing began ends `Closing`).
    let mut answers = BTreeMap::<String, usize>::new();
    let mut released = Vec::new();
    let mut granted = HashSet::new();
    for reply in replies {
        let sent = reply.await.expect("no reply task panicked");
        let label = match &sent {
            Sent::Lock(Ok(grant)) | Sent::Acquire(Ok(grant)) => {
                granted.insert(grant.lock_id.to_string());
                "granted".to_owned()
            }
            Sent::Lock(Err(LockError::AlreadyLocked { .. })) => "AlreadyLocked".to_owned(),
            // Granted while closing: Close releases it and answers Closing (checked below:
            // no hold is left under an id no caller was given).
            Sent::Lock(Err(LockError::Closing)) => "Lock ended Closing".to_owned(),
            Sent::Lock(Err(e)) => panic!("a Lock accepted before Close answered {e:?}"),
            Sent::Acquire(Err(LockError::Closing)) => "Acquire ended Closing".to_owned(),
            Sent::Acquire(Err(e)) => panic!("an Acquire accepted before Close answered {e:?}"),
            Sent::Unlock(id, Ok(UnlockOutcome::Released)) => {
                released.push(id.clone());
                "Released".to_owned()
            }
            Sent::Unlock(_, Ok(UnlockOutcome::NotHeld)) => "NotHeld".to_owned(),
            Sent::Unlock(_, Ok(other)) => {
                panic!("an Unlock answered {other:?} although no connection failed")
            }
            Sent::Unlock(_, Err(e)) => panic!("an Unlock accepted before Close answered {e:?}"),
        };
        *answers.entry(label).or_default() += 1;
    }
    for reply in late {
        match reply.await.expect("no reply task panicked") {
            Sent::Lock(Err(LockError::Closing))
            | Sent::Acquire(Err(LockError::Closing))
            | Sent::Unlock(_, Err(LockError::Closing)) => {}
            _ => panic!("a message sent after closing began was not answered Closing"),
        }
    }
    assert!(
        answers.get("Acquire ended Closing").copied().unwrap_or(0) > 0,
        "no Acquire was still waiting at Close: {answers:?}"
    );
    assert_eq!(
        released.len(),
        kinds["Unlock live"],
        "every live hold unlocked in the load is released: {answers:?}"
    );

    // The purger has stopped: an expired hold written now stays, over many purge periods.
    canaries
        .insert_one(expired_hold(&config, "canary-after"))
        .await
        .unwrap();

    // Nothing an Unlock released is held again under that id, and every hold this manager
    // left in the database is one it answered with a grant (no orphan of an Acquire that
    // ended Closing).
    let coll = collection(&config).await;
    for id in &released {
        let count = coll
            .count_documents(doc! { "exclusive.lockId": id.as_str() })
            .await
            .unwrap();
        assert_eq!(count, 0, "a lock id answered Released is still stored");
    }
    let mut cursor = coll
        .find(doc! { "exclusive.acquired": true, "exclusive.owner": &config.owner })
        .await
        .unwrap();
    let mut left = 0;
    while cursor.advance().await.unwrap() {
        let document = cursor.deserialize_current().unwrap();
        let id = document
            .get_document("exclusive")
            .unwrap()
            .get_str("lockId")
            .unwrap()
            .to_owned();
        let resource = document.get_str("resource").unwrap_or("?").to_owned();
        if resource.ends_with("-probe") || resource.contains("elsewhere") {
            continue; // probes; the other manager's holds share our owner name
        }
        assert!(
            granted.contains(&id),
            "{resource} is held under a lock id no caller was given"
        );
        left += 1;
    }

    actix_rt::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        is_acquired(&config, "canary-after").await,
        "an expired hold was purged after Close: the purger still runs"
    );
    println!(
        "close under load: 1000 messages in flight {kinds:?}, Close sent once \
         {answered_before_close} were answered: answered {answers:?}; \
         {probes} probe(s) until Closing, then 100 late messages all Closing; Close returned \
         {closed_after:?} after it was sent; {left} of its grants still held after Close (each \
         one a caller was given), no released id held; purger stopped"
    );
}
