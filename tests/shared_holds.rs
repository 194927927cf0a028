//! Shared holds and counted semaphores (issue 21), each pinned against the real server: shared
//! holds beside each other and never beside an exclusive one, the fence rule, the limit of
//! holders, permits of dead holders coming back, writer priority, Renew/Unlock/Status/ListHolds
//! and guards on shared holds, and bad input.

mod support;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use actix_mongo_lock::{
    Acquire, ListHolds, Lock, LockError, LockGuard, LockManager, LostReason, Renew, Status, Unlock,
    UnlockOutcome,
};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use support::failpoint::recorded_client;
use support::losses::LossCollector;
use support::poll::eventually;
use support::server::{
    collection, fast_config, manager, snapshot, stored, stored_hold, stored_shared, unlocked, uri,
};

fn shared_ids(document: &Document) -> Vec<String> {
    stored_shared(document).0
}

fn shared_count(document: &Document) -> i64 {
    stored_shared(document).1
}

#[actix_rt::test]
async fn shared_holds_coexist_refuse_an_exclusive_one_and_its_fence_rises_past_theirs() {
    let config = fast_config("shared_coexist");
    let one = manager(&config).await;
    let two = manager(&config).await;

    let a = one.send(Lock::shared("doc")).await.unwrap().unwrap();
    let b = two.send(Lock::shared("doc")).await.unwrap().unwrap();
    assert!(a.shared && b.shared);
    assert!(b.fence > a.fence, "every shared grant raises the fence");
    let exclusive = one.send(Lock::new("doc")).await.unwrap();
    assert!(
        matches!(exclusive, Err(LockError::AlreadyLocked { .. })),
        "an exclusive Lock beside two shared holds answered {exclusive:?}"
    );

    let document = stored(&config, "doc").await.expect("stored");
    assert_eq!(shared_count(&document), 2);
    let mut ids = shared_ids(&document);
    ids.sort();
    let mut granted = vec![a.lock_id.to_string(), b.lock_id.to_string()];
    granted.sort();
    assert_eq!(
        ids, granted,
        "both shared holds are stored under their lock ids"
    );
    assert!(stored_hold(&config, "doc").await.is_none());

    assert_eq!(
        unlocked(&one, Unlock::new(a.lock_id)).await,
        UnlockOutcome::Released
    );
    let still = one.send(Lock::new("doc")).await.unwrap();
    assert!(matches!(still, Err(LockError::AlreadyLocked { .. })));
    // Released through the other manager: anyone with the lock id may unlock.
    assert_eq!(
        unlocked(&one, Unlock::new(b.lock_id)).await,
        UnlockOutcome::Released
    );
    let writer = one.send(Lock::new("doc")).await.unwrap().unwrap();
    assert!(
        writer.fence > a.fence.max(b.fence),
        "a writer's fence {} must exceed every reader's ({}, {})",
        writer.fence,
        a.fence,
        b.fence
    );
    let document = stored(&config, "doc").await.expect("stored");
    assert_eq!(shared_count(&document), 0);
    assert!(shared_ids(&document).is_empty());
}

#[actix_rt::test]
async fn a_shared_hold_is_refused_while_an_exclusive_hold_is_live() {
    let config = fast_config("shared_vs_exclusive");
    let one = manager(&config).await;
    let two = manager(&config).await;
    let writer = one.send(Lock::new("doc")).await.unwrap().unwrap();

    let reader = two.send(Lock::shared("doc")).await.unwrap();
    assert!(
        matches!(reader, Err(LockError::AlreadyLocked { .. })),
        "a shared Lock beside an exclusive hold answered {reader:?}"
    );
    let document = stored(&config, "doc").await.expect("stored");
    assert_eq!(shared_count(&document), 0);

    let waiting = two.send(Acquire::shared("doc").timeout(Duration::from_secs(10)));
    let unlocker = one.clone();
    let released_at = actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        let at = Instant::now();
        unlocked(&unlocker, Unlock::new(writer.lock_id)).await;
        at
    });
    let reader = waiting.await.unwrap().unwrap();
    let released_at = released_at.await.unwrap();
    assert!(
        Instant::now() >= released_at,
        "the shared Acquire was granted before the writer unlocked"
    );
    assert!(reader.shared);
}

#[actix_rt::test]
async fn a_semaphore_never_has_more_than_its_limit_of_holders() {
    let config = fast_config("semaphore");
    let mut managers = Vec::new();
    for _ in 0..3 {
        managers.push(manager(&config).await);
    }
    let holding = Rc::new(Cell::new(0_usize));
    let most = Rc::new(Cell::new(0_usize));
    let grants = Rc::new(Cell::new(0_usize));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut workers = Vec::new();
    for locks in &managers {
        for _ in 0..3 {
            let locks = locks.clone();
            let (holding, most, grants) = (holding.clone(), most.clone(), grants.clone());
            workers.push(actix_rt::spawn(async move {
                while Instant::now() < deadline {
                    let request = Acquire::shared("pool")
                        .max_holders(2)
                        .timeout(Duration::from_secs(5));
                    let Ok(grant) = locks.send(request).await.unwrap() else {
                        continue;
                    };
                    // Counted after the grant and uncounted before the Unlock: never more than
                    // truly held at once.
                    holding.set(holding.get() + 1);
                    most.set(most.get().max(holding.get()));
                    grants.set(grants.get() + 1);
                    // Long enough that a second permit is granted while this one is held,
                    // even on a loaded SecantusDB (30 ms was not, beside the full suite).
                    actix_rt::time::sleep(Duration::from_millis(150)).await;
                    holding.set(holding.get() - 1);
                    let outcome = unlocked(&locks, Unlock::shared(grant.lock_id)).await;
                    assert_eq!(outcome, UnlockOutcome::Released);
                }
            }));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        most.get() <= 2,
        "{} shared holders at once, limit 2",
        most.get()
    );
    assert_eq!(
        most.get(),
        2,
        "the limit was never reached: the test proved nothing"
    );
    assert!(grants.get() >= 10, "only {} grants in 3 s", grants.get());
    let document = stored(&config, "pool").await.expect("stored");
    assert_eq!(shared_count(&document), 0, "every permit came back");
}

/// A shared hold as square/mongo-lock's `SLock` stores it, of a holder that died: it is never
/// released, its lease ends `lease` from now.
async fn dead_shared_holder(
    config: &actix_mongo_lock::LockConfig,
    resource: &str,
    lease: Duration,
) -> SystemTime {
    let now = SystemTime::now();
    let ends = now + lease;
    let entry = doc! {
        "lockId": "dead-go-holder", "owner": "go", "host": "gone", "comment": Bson::Null,
        "createdAt": DateTime::from_system_time(now), "renewedAt": Bson::Null,
        "expiresAt": DateTime::from_system_time(ends), "acquired": true, "_id": ObjectId::new(),
    };
    let released = doc! {
        "lockId": Bson::Null, "owner": Bson::Null, "host": Bson::Null, "comment": Bson::Null,
        "createdAt": Bson::Null, "renewedAt": Bson::Null, "expiresAt": Bson::Null,
        "acquired": false,
    };
    collection(config)
        .await
        .insert_one(doc! {
            "resource": format!("{}-{resource}", config.name),
            "exclusive": released,
            "shared": { "count": 1, "locks": [entry] },
        })
        .await
        .expect("insert a dead holder's shared hold");
    ends
}

#[actix_rt::test]
async fn the_permit_of_a_dead_holder_comes_back_when_its_lease_ends() {
    let config = fast_config("dead_permit");
    let locks = manager(&config).await;
    let lease = Duration::from_secs(2);
    let ends = dead_shared_holder(&config, "pool", lease).await;

    let refused = locks
        .send(Lock::shared("pool").max_holders(1))
        .await
        .unwrap();
    assert!(matches!(refused, Err(LockError::AlreadyLocked { .. })));
    let grant = locks
        .send(
            Acquire::shared("pool")
                .max_holders(1)
                .timeout(Duration::from_secs(15)),
        )
        .await
        .unwrap()
        .unwrap();
    let granted = SystemTime::now();
    assert!(
        granted >= ends,
        "granted before the dead holder's lease ended"
    );
    // The lease, plus one safety probe (1 s), plus a generous margin (nx-27017 compares dates
    // by the whole second).
    assert!(
        granted <= ends + Duration::from_secs(1) + Duration::from_secs(3),
        "the permit came back {:?} after the lease ended",
        granted.duration_since(ends).unwrap_or_default()
    );
    let document = stored(&config, "pool").await.expect("stored");
    assert_eq!(shared_ids(&document), vec![grant.lock_id.to_string()]);
    assert_eq!(shared_count(&document), 1);
}

#[actix_rt::test]
async fn an_exclusive_waiter_is_granted_once_a_dead_shared_holders_lease_ends() {
    let config = fast_config("dead_reader");
    let locks = manager(&config).await;
    let ends = dead_shared_holder(&config, "doc", Duration::from_secs(2)).await;
    let grant = locks
        .send(Acquire::new("doc").timeout(Duration::from_secs(15)))
        .await
        .unwrap()
        .unwrap();
    let granted = SystemTime::now();
    assert!(granted >= ends);
    assert!(
        granted <= ends + Duration::from_secs(4),
        "granted {:?} after the lease ended",
        granted.duration_since(ends).unwrap_or_default()
    );
    assert!(!grant.shared);
    let document = stored(&config, "doc").await.expect("stored");
    assert_eq!(shared_count(&document), 0);
}

/// A one-shot `Lock` is not refused by a permit whose holder died: once the dead reader's
/// lease ended, the first `Lock` after it drops the expired hold and is granted, though no
/// waiter and no purge (every 5 minutes) dropped it first.
#[actix_rt::test]
async fn a_lock_is_granted_once_a_dead_shared_holders_lease_ends() {
    let config = fast_config("dead_reader_lock");
    let locks = manager(&config).await;
    let ends = dead_shared_holder(&config, "doc", Duration::from_secs(1)).await;
    let refused = locks.send(Lock::new("doc")).await.unwrap();
    assert!(
        matches!(refused, Err(LockError::AlreadyLocked { .. })),
        "granted over a live shared hold: {refused:?}"
    );
    // Past the lease end, by more than a second: nx-27017 compares dates by the whole second.
    let past = ends + Duration::from_millis(1500);
    actix_rt::time::sleep(past.duration_since(SystemTime::now()).unwrap_or_default()).await;
    let grant = locks
        .send(Lock::new("doc"))
        .await
        .unwrap()
        .expect("a Lock after the dead reader's lease ended is granted");
    assert!(!grant.shared);
    let document = stored(&config, "doc").await.expect("stored");
    assert_eq!(
        shared_count(&document),
        0,
        "the dead holder's permit was dropped"
    );
    assert!(shared_ids(&document).is_empty());
}

#[actix_rt::test]
async fn the_purger_returns_a_dead_holders_permit() {
    let config = fast_config("purged_permit").purger_period(Duration::from_millis(300));
    let _locks = manager(&config).await;
    dead_shared_holder(&config, "pool", Duration::from_secs(1)).await;
    eventually(
        "the purger dropped the expired shared hold",
        Duration::from_secs(8),
        || async {
            let document = stored(&config, "pool").await?;
            (shared_count(&document) == 0 && shared_ids(&document).is_empty()).then_some(())
        },
    )
    .await;
}

#[actix_rt::test]
async fn a_waiting_writer_holds_back_new_shared_grants() {
    let config = fast_config("writer_priority");
    let readers = manager(&config).await;
    let writers = manager(&config).await;
    let late = manager(&config).await;
    let first = readers.send(Lock::shared("doc")).await.unwrap().unwrap();

    let writer = writers.send(Acquire::new("doc").timeout(Duration::from_secs(15)));
    let writer = actix_rt::spawn(async move { (writer.await, Instant::now()) });
    // The writer is in line once its turn is stored.
    eventually(
        "the writer's turn is stored",
        Duration::from_secs(5),
        || async {
            let document = stored(&config, "doc").await?;
            let turn = document.get_document("turn").ok()?;
            (!turn.get_str("manager").ok()?.is_empty()).then_some(())
        },
    )
    .await;
    let refused = late.send(Lock::shared("doc")).await.unwrap();
    assert!(
        matches!(refused, Err(LockError::AlreadyLocked { .. })),
        "a shared Lock while a writer waits in line answered {refused:?}"
    );
    let reader = late.send(Acquire::shared("doc").timeout(Duration::from_secs(15)));
    let reader = actix_rt::spawn(async move { (reader.await, Instant::now()) });
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    unlocked(&readers, Unlock::new(first.lock_id)).await;

    let (written, writer_at) = writer.await.unwrap();
    let written = written.unwrap().unwrap();
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    unlocked(&writers, Unlock::new(written.lock_id)).await;
    let (read, reader_at) = reader.await.unwrap();
    let read = read.unwrap().unwrap();
    assert!(
        reader_at > writer_at,
        "the later shared Acquire was granted before the waiting writer"
    );
    assert!(read.fence > written.fence && written.fence > first.fence);
}

#[actix_rt::test]
async fn renew_status_list_and_guards_work_on_shared_holds() {
    let config = fast_config("shared_ops").owner("reader-a");
    let locks = manager(&config).await;
    let a = locks.send(Lock::shared("doc")).await.unwrap().unwrap();
    let guard = LockGuard::lock(&locks, Lock::shared("doc")).await.unwrap();
    let b = guard.grant().clone();

    actix_rt::time::sleep(Duration::from_millis(1100)).await;
    let renewed = locks
        .send(Renew::new(a.lock_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.fence, a.fence, "a renewal keeps the hold's fence");
    assert!(renewed.expires_at > a.expires_at);
    assert!(renewed.shared);

    let status = locks
        .send(Status::new("doc"))
        .await
        .unwrap()
        .unwrap()
        .expect("the resource is held");
    assert!(status.shared && status.live);
    assert_eq!(status.shared_holders, 2);
    assert_eq!(status.owner.as_deref(), Some("reader-a"));
    assert_eq!(status.expires_at, Some(renewed.expires_at));
    let listed = locks.send(ListHolds).await.unwrap().unwrap();
    let mut fences: Vec<i64> = listed.iter().map(|hold| hold.fence).collect();
    fences.sort_unstable();
    assert_eq!(fences, vec![a.fence, b.fence]);
    assert!(listed
        .iter()
        .all(|hold| hold.shared && hold.shared_holders == 2));

    assert_eq!(guard.unlock().await.unwrap(), UnlockOutcome::Released);
    let document = stored(&config, "doc").await.expect("stored");
    assert_eq!(shared_ids(&document), vec![a.lock_id.to_string()]);
    assert_eq!(
        unlocked(&locks, Unlock::shared(a.lock_id.clone())).await,
        UnlockOutcome::Released
    );
    assert_eq!(
        unlocked(&locks, Unlock::shared(a.lock_id.clone())).await,
        UnlockOutcome::NotHeld
    );
    let lost = locks.send(Renew::new(a.lock_id)).await.unwrap();
    assert!(matches!(lost, Err(LockError::LockLost)), "{lost:?}");
    assert!(locks
        .send(Status::new("doc"))
        .await
        .unwrap()
        .unwrap()
        .is_none());
}

#[actix_rt::test]
async fn bad_shared_input_is_refused_with_typed_errors_and_writes_nothing() {
    let config = fast_config("shared_bad_input");
    let locks = manager(&config).await;
    let other = manager(&config).await;

    let zero = locks
        .send(Lock::shared("pool").max_holders(0))
        .await
        .unwrap();
    assert!(
        matches!(
            zero,
            Err(LockError::InvalidMaxHolders { max_holders: 0, .. })
        ),
        "{zero:?}"
    );
    let zero = locks
        .send(Acquire::new("pool").max_holders(0))
        .await
        .unwrap();
    assert!(
        matches!(zero, Err(LockError::InvalidMaxHolders { .. })),
        "{zero:?}"
    );
    assert!(
        snapshot(&config).await.is_empty(),
        "a limit of 0 wrote something"
    );

    let held = locks
        .send(Lock::shared("pool").max_holders(2))
        .await
        .unwrap()
        .unwrap();
    let before = snapshot(&config).await;
    for request in [Lock::shared("pool").max_holders(3), Lock::shared("pool")] {
        let requested = match request.mode {
            actix_mongo_lock::HoldMode::Shared { max_holders } => max_holders,
            actix_mongo_lock::HoldMode::Exclusive => unreachable!(),
        };
        let mismatch = other.send(request).await.unwrap();
        assert!(
            matches!(
                &mismatch,
                Err(LockError::MaxHoldersMismatch { stored: 2, requested: r, .. }) if *r == requested
            ),
            "{mismatch:?}"
        );
    }
    assert_eq!(
        snapshot(&config).await,
        before,
        "a mismatched limit wrote something"
    );
    unlocked(&other, Unlock::new(held.lock_id)).await;
    // With no shared holds left, a new limit may be set.
    let relimited = other
        .send(Lock::shared("pool").max_holders(3))
        .await
        .unwrap();
    assert!(relimited.is_ok(), "{relimited:?}");

    let exclusive = locks.send(Lock::new("door")).await.unwrap().unwrap();
    let before = snapshot(&config).await;
    for manager in [&locks, &other] {
        let refused = manager
            .send(Unlock::shared(exclusive.lock_id.clone()))
            .await
            .unwrap();
        assert!(matches!(refused, Err(LockError::NotShared)), "{refused:?}");
    }
    assert_eq!(
        snapshot(&config).await,
        before,
        "a shared Unlock of an exclusive hold wrote"
    );
    assert_eq!(
        stored_hold(&config, "door").await.map(|hold| hold.lock_id),
        Some(exclusive.lock_id.to_string())
    );
}

/// Readers (at most 3 at once) and writers of three managers racing for one resource: no
/// writer ever overlaps anyone, readers never exceed their limit, and both kinds get grants.
#[actix_rt::test]
async fn in_a_race_of_readers_and_writers_no_writer_overlaps_anyone() {
    let config = fast_config("mixed_race");
    let mut managers = Vec::new();
    for _ in 0..3 {
        managers.push(manager(&config).await);
    }
    // Counted after each grant and uncounted before its Unlock: an overlap seen is a real one.
    let readers = Rc::new(Cell::new(0_usize));
    let writers = Rc::new(Cell::new(0_usize));
    let most_readers = Rc::new(Cell::new(0_usize));
    let overlaps = Rc::new(Cell::new(0_usize));
    let grants = Rc::new(Cell::new((0_usize, 0_usize)));
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for (m, locks) in managers.iter().enumerate() {
        for w in 0..3 {
            let locks = locks.clone();
            let (readers, writers) = (readers.clone(), writers.clone());
            let (most_readers, overlaps, grants) =
                (most_readers.clone(), overlaps.clone(), grants.clone());
            let writes = (m + w) % 3 == 0;
            workers.push(actix_rt::spawn(async move {
                while Instant::now() < deadline {
                    let request = if writes {
                        Acquire::new("doc")
                    } else {
                        Acquire::shared("doc").max_holders(3)
                    };
                    let asked = locks.send(request.timeout(Duration::from_secs(10)));
                    let Ok(grant) = asked.await.unwrap() else {
                        continue;
                    };
                    if writes {
                        if readers.get() + writers.get() > 0 {
                            overlaps.set(overlaps.get() + 1);
                        }
                        writers.set(writers.get() + 1);
                        grants.set((grants.get().0, grants.get().1 + 1));
                    } else {
                        if writers.get() > 0 {
                            overlaps.set(overlaps.get() + 1);
                        }
                        readers.set(readers.get() + 1);
                        most_readers.set(most_readers.get().max(readers.get()));
                        grants.set((grants.get().0 + 1, grants.get().1));
                    }
                    actix_rt::time::sleep(Duration::from_millis(20)).await;
                    if writes {
                        writers.set(writers.get() - 1);
                    } else {
                        readers.set(readers.get() - 1);
                    }
                    let outcome = unlocked(&locks, Unlock::new(grant.lock_id)).await;
                    assert_eq!(outcome, UnlockOutcome::Released);
                }
            }));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let (read, written) = grants.get();
    eprintln!(
        "race: {read} shared and {written} exclusive grants, at most {} readers at once",
        most_readers.get()
    );
    assert_eq!(
        overlaps.get(),
        0,
        "{} overlaps with a writer",
        overlaps.get()
    );
    assert!(
        most_readers.get() <= 3,
        "{} readers at once, limit 3",
        most_readers.get()
    );
    // A stall behind a turn kept for a waiter that cannot use it shows as a handful of grants
    // (5 shared and 4 exclusive, before the fix); healthy runs grant 30 and 15 on SecantusDB
    // beside a full test run, 88 and 45 on nx-27017.
    assert!(
        read >= 12 && written >= 6,
        "{read} shared and {written} exclusive grants: stalled"
    );
    let document = stored(&config, "doc").await.expect("stored");
    assert_eq!(shared_count(&document), 0);
    assert!(stored_hold(&config, "doc").await.is_none());
}

/// What a shared grant and release cost, counted by the driver's command monitoring: the first
/// grant of a resource reads that it has no document, inserts it and checks that it is the only
/// one (as an exclusive grant does); after that, while this manager made the last shared write,
/// a grant and a release are one `findAndModify` each.
#[actix_rt::test]
async fn an_uncontended_shared_grant_is_one_request() {
    let config = fast_config("shared_cost");
    let (client, commands) = recorded_client(&uri(), "shared-cost").await;
    let locks = LockManager::with_client(client, config.clone())
        .await
        .expect("start a manager");
    // The purge at start runs on its own; let it finish before counting.
    eventually("the purge at start", Duration::from_secs(5), || async {
        commands
            .names()
            .iter()
            .any(|name| name == "find")
            .then_some(())
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;

    commands.clear();
    let first = locks.send(Lock::shared("doc")).await.unwrap().unwrap();
    // Read (no document), insert, and check that the inserted document is the only one.
    assert_eq!(commands.names(), ["find", "findAndModify", "find"]);
    let mut held = first;
    for round in 0..3 {
        commands.clear();
        assert_eq!(
            unlocked(&locks, Unlock::new(held.lock_id)).await,
            UnlockOutcome::Released
        );
        assert_eq!(
            commands.names(),
            ["findAndModify"],
            "round {round}: a release"
        );
        commands.clear();
        held = locks.send(Lock::shared("doc")).await.unwrap().unwrap();
        assert_eq!(
            commands.names(),
            ["findAndModify"],
            "round {round}: a grant"
        );
    }
}

/// A shared grant's first write of a resource inserts its document, as an exclusive grant's
/// does, and so relies on the unique `resource` index too. With the collection lost under
/// running managers (the index gone with it), a shared and an exclusive first grant racing for
/// each of ten resources are never both granted, and leave one document per resource.
#[actix_rt::test]
async fn first_shared_and_exclusive_grants_exclude_each_other_after_the_collection_is_lost() {
    let config = fast_config("shared_collection_lost").ttl(Duration::from_secs(30));
    let readers = manager(&config).await;
    let writers = manager(&config).await;
    let warm_up = readers
        .send(Lock::shared("warm-up"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        unlocked(&readers, Unlock::new(warm_up.lock_id)).await,
        UnlockOutcome::Released
    );
    collection(&config)
        .await
        .drop()
        .await
        .expect("drop the lock collection");

    for r in 0..10 {
        let resource = format!("r{r}");
        let (read, written) = futures::join!(
            readers.send(Lock::shared(resource.clone())),
            writers.send(Lock::new(resource.clone())),
        );
        let (read, written) = (read.unwrap(), written.unwrap());
        assert!(
            !(read.is_ok() && written.is_ok()),
            "{resource}: a shared and an exclusive hold granted at once ({read:?}, {written:?})"
        );
        let documents = collection(&config)
            .await
            .count_documents(doc! { "resource": format!("{}-{resource}", config.name) })
            .await
            .unwrap();
        assert!(documents <= 1, "{resource}: {documents} documents");
    }
}

/// Keep-alive renews a shared hold past its lease, keeps a writer out meanwhile, and tells the
/// holder (`LeaseLost`, `Gone`) when the hold is released elsewhere. Leases of a few seconds:
/// nx-27017 compares dates by the whole second.
#[actix_rt::test]
async fn keep_alive_renews_a_shared_hold_and_tells_when_it_is_gone() {
    let ttl = Duration::from_secs(3);
    let config = fast_config("shared_keep_alive");
    let locks = manager(&config).await;
    let other = manager(&config).await;
    let losses = LossCollector::default();
    let keep_alive = losses.keep_alive();
    let grant = locks
        .send(Acquire::shared("doc").ttl(ttl).keep_alive(keep_alive))
        .await
        .unwrap()
        .unwrap();

    actix_rt::time::sleep(ttl * 2).await;
    let status = other
        .send(Status::new("doc"))
        .await
        .unwrap()
        .unwrap()
        .expect("still held");
    assert!(status.shared && status.live, "{status:?}");
    assert!(
        status.expires_at.is_some_and(|at| at > grant.expires_at),
        "not renewed: {status:?}"
    );
    assert_eq!(status.fence, grant.fence);
    let writer = other.send(Lock::new("doc")).await.unwrap();
    assert!(
        matches!(writer, Err(LockError::AlreadyLocked { .. })),
        "{writer:?}"
    );
    assert!(losses.losses().is_empty());

    assert_eq!(
        unlocked(&other, Unlock::new(grant.lock_id.clone())).await,
        UnlockOutcome::Released
    );
    let lost = eventually("LeaseLost after the release elsewhere", ttl * 2, || async {
        losses.losses().first().map(|(_, lost)| lost.clone())
    })
    .await;
    assert_eq!(lost.reason, LostReason::Gone);
    assert_eq!(lost.fence, grant.fence);
    assert_eq!(lost.lock_id, grant.lock_id);
}

/// A renewal by a Go client (square/mongo-lock rewrites its entry's `expiresAt` and leaves
/// `shared.count`, `fence` and `rev` as they were) is never undone by this crate's next shared
/// write computed from what it saw before: the write's condition names the `expiresAt` of every
/// Go entry it saw, fails, and is computed again from a fresh read. Not on nx-27017, which
/// cannot find such a date (deviation 14): there the renewal is undone.
#[actix_rt::test]
async fn a_go_clients_renewal_of_its_shared_hold_is_not_overwritten() {
    let config = fast_config("go_renewal_kept");
    let locks = manager(&config).await;
    dead_shared_holder(&config, "rw", Duration::from_secs(20)).await;
    let ours = locks.send(Lock::shared("rw")).await.unwrap().unwrap();

    // The Go holder renews: its entry's lease now ends 60 s from now.
    let renewed_until =
        DateTime::from_millis((DateTime::now().timestamp_millis() / 1000 + 60) * 1000 + 123);
    let stored_now = stored(&config, "rw").await.expect("stored");
    let mut shared = stored_now.get_document("shared").unwrap().clone();
    let entries: Vec<Bson> = shared
        .get_array("locks")
        .unwrap()
        .iter()
        .map(|entry| {
            let mut entry = entry.as_document().unwrap().clone();
            if entry.get_str("lockId") == Ok("dead-go-holder") {
                entry.insert("expiresAt", renewed_until);
                entry.insert("renewedAt", DateTime::now());
            }
            Bson::Document(entry)
        })
        .collect();
    shared.insert("locks", entries);
    collection(&config)
        .await
        .update_one(
            doc! { "resource": format!("{}-rw", config.name) },
            doc! { "$set": { "shared": shared } },
        )
        .await
        .expect("the Go renewal");

    locks
        .send(Unlock::shared(ours.lock_id))
        .await
        .unwrap()
        .unwrap();
    let document = stored(&config, "rw").await.expect("stored");
    assert_eq!(shared_ids(&document), vec!["dead-go-holder".to_owned()]);
    assert_eq!(shared_count(&document), 1);
    let go_entry = document
        .get_document("shared")
        .unwrap()
        .get_array("locks")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    let kept = go_entry.get_datetime("expiresAt") == Ok(&renewed_until);
    if std::env::var("MONGO_SERVER").as_deref() == Ok("nx") {
        // nx-27017 finds no date inside an array by equality (docs/compatibility.md, deviation
        // 14), so the store cannot pin a Go lease end there: the renewal is undone, as pinned.
        assert!(
            !kept,
            "nx-27017 kept the Go renewal: deviation 14 is gone: {go_entry}"
        );
    } else {
        assert!(kept, "the Go renewal was undone: {go_entry}");
    }
}
