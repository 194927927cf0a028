//! The dplock semantics the foundation promises, each pinned against the real server: Lock,
//! Acquire, Unlock, leases, the purger, fencing tokens, Close and bad input.

mod support;

use std::time::{Duration, Instant};

use actix_mongo_lock::{
    Acquire, Close, Lock, LockConfig, LockError, LockId, LockManager, Unlock, UnlockOutcome,
};
use mongodb::bson::{doc, Bson};
use support::server::{client, fast_config, manager, snapshot, stored, stored_fence};

fn stored_lock_id(document: &mongodb::bson::Document) -> Option<String> {
    document
        .get_document("exclusive")
        .ok()
        .and_then(|e| e.get_str("lockId").ok())
        .map(str::to_owned)
}

#[actix_rt::test]
async fn lock_then_lock_again_is_refused() {
    let config = fast_config("relock");
    let locks = manager(&config).await;

    let grant = locks.send(Lock::new("printer")).await.unwrap().unwrap();
    let again = locks.send(Lock::new("printer")).await.unwrap();

    assert!(
        matches!(&again, Err(LockError::AlreadyLocked { resource_id, .. }) if resource_id == "printer"),
        "second Lock answered {again:?}"
    );
    let document = stored(&config, "printer")
        .await
        .expect("the grant is stored");
    assert_eq!(
        stored_lock_id(&document).as_deref(),
        Some(grant.lock_id.as_str())
    );
    assert_eq!(grant.resource_id.as_str(), "printer");
    assert!(grant.expires_at > grant.granted_at + Duration::from_secs(9));
}

#[actix_rt::test]
async fn acquire_waits_until_holder_unlocks() {
    let config = fast_config("acquire_waits");
    let locks = manager(&config).await;
    let other = manager(&config).await;
    let held = locks.send(Lock::new("door")).await.unwrap().unwrap();

    let waiting = other.send(Acquire::new("door"));
    let unlocker = locks.clone();
    let unlock_at = actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        let outcome = unlocker.send(Unlock::new(held.lock_id)).await.unwrap();
        (sent, outcome)
    });

    let grant = waiting
        .await
        .unwrap()
        .expect("Acquire gets the lock once it is free");
    let granted = Instant::now();
    let (unlock_sent, outcome) = unlock_at.await.unwrap();
    assert_eq!(outcome.unwrap(), UnlockOutcome::Released);
    assert!(
        granted >= unlock_sent,
        "Acquire was granted before the Unlock"
    );
    assert!(grant.fence > held.fence);
}

#[actix_rt::test]
async fn acquire_gives_up_after_the_retry_budget() {
    let config = fast_config("acquire_budget").acquire_retries(Duration::from_millis(30), 4);
    let locks = manager(&config).await;
    locks.send(Lock::new("vault")).await.unwrap().unwrap();

    let started = Instant::now();
    let fixed = locks
        .send(Acquire::new("vault").fixed_polling())
        .await
        .unwrap();
    assert!(
        matches!(
            fixed,
            Err(LockError::AcquireMaxRetries { max_retries: 4, .. })
        ),
        "fixed polling answered {fixed:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(120));

    let started = Instant::now();
    let adaptive = locks.send(Acquire::new("vault")).await.unwrap();
    assert!(
        matches!(adaptive, Err(LockError::AcquireMaxRetries { .. })),
        "adaptive polling answered {adaptive:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(120));

    let timed = locks
        .send(Acquire::new("vault").timeout(Duration::from_millis(80)))
        .await
        .unwrap();
    assert!(
        matches!(timed, Err(LockError::AcquireTimeout { waited, .. }) if waited == Duration::from_millis(80)),
        "Acquire with a deadline answered {timed:?}"
    );
}

#[actix_rt::test]
async fn unlock_by_a_wrong_id_leaves_the_holder() {
    let config = fast_config("wrong_id");
    let locks = manager(&config).await;
    let grant = locks.send(Lock::new("ledger")).await.unwrap().unwrap();
    let before = snapshot(&config).await;

    let outcome = locks
        .send(Unlock::new(LockId::generate()))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(outcome, UnlockOutcome::NotHeld);
    assert_eq!(
        snapshot(&config).await,
        before,
        "a wrong id changed the store"
    );
    let again = locks.send(Lock::new("ledger")).await.unwrap();
    assert!(matches!(again, Err(LockError::AlreadyLocked { .. })));
    let released = locks
        .send(Unlock::new(grant.lock_id.clone()))
        .await
        .unwrap();
    assert_eq!(released.unwrap(), UnlockOutcome::Released);
    let twice = locks.send(Unlock::new(grant.lock_id)).await.unwrap();
    assert_eq!(twice.unwrap(), UnlockOutcome::NotHeld);
}

#[actix_rt::test]
async fn an_expired_lease_is_taken_over() {
    let config = fast_config("expired").ttl(Duration::from_millis(300));
    let first = manager(&config).await;
    let second = manager(&config).await;
    let old = first.send(Lock::new("slot")).await.unwrap().unwrap();

    actix_rt::time::sleep(Duration::from_millis(350)).await;
    // A server that compares dates by whole seconds may see the lease end up to 1 s late.
    let new = second
        .send(Acquire::new("slot").timeout(Duration::from_secs(3)))
        .await
        .unwrap()
        .expect("an expired lease is taken over");

    assert!(new.fence > old.fence);
    assert!(
        new.granted_at >= old.expires_at,
        "taken over before the lease ended"
    );
    let late = first.send(Unlock::new(old.lock_id)).await.unwrap().unwrap();
    assert_eq!(
        late,
        UnlockOutcome::NotHeld,
        "a late release changed something"
    );
    let document = stored(&config, "slot").await.unwrap();
    assert_eq!(
        stored_lock_id(&document).as_deref(),
        Some(new.lock_id.as_str())
    );
}

#[actix_rt::test]
async fn the_purger_clears_expired_holds_and_leaves_live_ones() {
    let short = fast_config("purger")
        .ttl(Duration::from_millis(200))
        .purger_period(Duration::from_millis(150));
    let long = short.clone().ttl(Duration::from_secs(30));
    let short_lived = manager(&short).await;
    let long_lived = manager(&long).await;
    let expiring = short_lived.send(Lock::new("stale")).await.unwrap().unwrap();
    let live = long_lived.send(Lock::new("fresh")).await.unwrap().unwrap();

    // Purges run every 150 ms; a server comparing dates by whole seconds sees expiry up to 1 s late.
    actix_rt::time::sleep(Duration::from_millis(1700)).await;

    let stale = stored(&short, "stale")
        .await
        .expect("purged documents stay");
    let exclusive = stale.get_document("exclusive").unwrap();
    assert_eq!(exclusive.get("acquired"), Some(&Bson::Boolean(false)));
    assert_eq!(exclusive.get("lockId"), Some(&Bson::Null));
    assert_eq!(stored_fence(&stale), expiring.fence, "purge kept the fence");
    let fresh = stored(&short, "fresh").await.unwrap();
    assert_eq!(
        stored_lock_id(&fresh).as_deref(),
        Some(live.lock_id.as_str())
    );
}

/// A start creates the three lock indexes, `resource` unique, and none on `shared.locks.*`
/// (nx-27017 loses matches through an index on an array's fields: docs/compatibility.md,
/// deviation 12).
#[actix_rt::test]
async fn a_start_creates_the_three_lock_indexes() {
    use futures::TryStreamExt;

    let config = fast_config("three_indexes");
    let _locks = manager(&config).await;
    let indexes: Vec<mongodb::IndexModel> = support::server::collection(&config)
        .await
        .list_indexes()
        .await
        .expect("listIndexes")
        .try_collect()
        .await
        .expect("read listIndexes");
    let keyed = |key: &str| indexes.iter().find(|i| i.keys.keys().eq([key]));
    for key in ["resource", "exclusive.lockId", "exclusive.expiresAt"] {
        assert!(keyed(key).is_some(), "no index on {key}: {indexes:?}");
    }
    for key in ["shared.locks.lockId", "shared.locks.expiresAt"] {
        assert!(keyed(key).is_none(), "an index on {key}: {indexes:?}");
    }
    let unique = keyed("resource").and_then(|i| i.options.as_ref()?.unique);
    assert_eq!(unique, Some(true), "the resource index is unique");
}

/// What a start and each purge send, as the driver's command monitoring sees it: the start asks
/// `buildInfo`, creates the three indexes (one `createIndexes` for all) and reads the clock
/// (`hello`); a purge, idle otherwise, sends the same `createIndexes` (a no-op once the indexes
/// exist), `hello`, one `update` (exclusive holds) and one `find` (documents with shared holds,
/// none here), four commands.
#[actix_rt::test]
async fn a_start_and_each_purge_send_exactly_their_commands() {
    use std::sync::{Arc, Mutex};

    use mongodb::event::command::CommandEvent;
    use mongodb::event::EventHandler;
    use mongodb::options::ClientOptions;

    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&sent);
    let mut options = ClientOptions::parse(support::server::uri()).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.command_event_handler = Some(EventHandler::callback(move |event| {
        if let CommandEvent::Started(started) = event {
            seen.lock().unwrap().push(started.command_name.clone());
        }
    }));
    let client = mongodb::Client::with_options(options).unwrap();
    let period = Duration::from_secs(1);
    let config = fast_config("purge_commands").purger_period(period);
    let locks = LockManager::with_client(client, config).await.unwrap();
    // The purge at start, then one per period: three purges by two and a half periods.
    actix_rt::time::sleep(period * 2 + period / 2).await;
    locks.send(Close).await.unwrap();

    let sent = sent.lock().unwrap().clone();
    let purge = ["createIndexes", "hello", "update", "find"];
    let mut expected = vec!["buildInfo", "createIndexes", "hello"];
    for _ in 0..3 {
        expected.extend(purge);
    }
    assert_eq!(sent, expected, "a start and three purges sent {sent:?}");
}

#[actix_rt::test]
async fn fences_increase_across_grant_release_expiry_and_purge() {
    let config = fast_config("fences")
        .ttl(Duration::from_millis(200))
        .purger_period(Duration::from_millis(100));
    let locks = manager(&config).await;
    let mut fences = Vec::new();

    let granted = locks.send(Lock::new("token")).await.unwrap().unwrap();
    fences.push(granted.fence);
    locks
        .send(Unlock::new(granted.lock_id))
        .await
        .unwrap()
        .unwrap();
    let after_release = locks.send(Lock::new("token")).await.unwrap().unwrap();
    fences.push(after_release.fence);
    // Let the lease run out and take it over (by the grant itself, or after a purge).
    actix_rt::time::sleep(Duration::from_millis(250)).await;
    let after_expiry = locks
        .send(Acquire::new("token").timeout(Duration::from_secs(3)))
        .await
        .unwrap()
        .unwrap();
    fences.push(after_expiry.fence);
    // Now let the purger clear it (up to 1 s late on a whole-second server), and grant again.
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let purged = stored(&config, "token").await.unwrap();
    assert_eq!(
        purged.get_document("exclusive").unwrap().get("acquired"),
        Some(&Bson::Boolean(false)),
        "the purger cleared the expired hold"
    );
    let after_purge = locks.send(Lock::new("token")).await.unwrap().unwrap();
    fences.push(after_purge.fence);

    assert!(
        fences.windows(2).all(|pair| pair[0] < pair[1]),
        "fences did not increase: {fences:?}"
    );
}

#[actix_rt::test]
async fn close_answers_every_in_flight_message_and_later_ones_with_closing() {
    let config = fast_config("close")
        .acquire_retries(Duration::from_millis(100), 1000)
        .purger_period(Duration::from_millis(100));
    let holder = manager(&config).await;
    let locks = manager(&config).await;
    holder
        .send(Lock::new("busy"))
        .await
        .unwrap()
        .expect("held by another manager");

    // One Acquire certainly in flight before Close: still unanswered after 300 ms, it has been
    // accepted and waits (its budget is 100 s).
    let waiting = actix_rt::spawn(locks.send(Acquire::new("busy")));
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the Acquire of a held resource answered at once"
    );

    // A burst: Acquires that wait, one-shot Locks, and Unlocks. Close is sent while some are
    // still in the mailbox or under way, whichever the server's speed makes it.
    let mut replies = Vec::new();
    for i in 0..20 {
        let acquire = locks.send(Acquire::new("busy"));
        let lock = locks.send(Lock::new(format!("free-{i}")));
        let unlock = locks.send(Unlock::new(LockId::generate()));
        replies.push(actix_rt::spawn(async move {
            (acquire.await, lock.await, unlock.await)
        }));
    }
    locks.send(Close).await.expect("Close is answered");

    let waiting = waiting
        .await
        .unwrap()
        .expect("the waiting Acquire is answered");
    assert!(
        matches!(waiting, Err(LockError::Closing)),
        "the Acquire waiting at Close answered {waiting:?}"
    );
    // A sender waits while the mailbox is full, so some messages may reach the manager only
    // after Close: those are answered `Closing`. Every message is answered either way, and a
    // Lock granted before Close is released by it.
    for reply in replies {
        let (acquire, lock, unlock) = reply.await.unwrap();
        let acquire = acquire.expect("every Acquire is answered");
        assert!(
            matches!(acquire, Err(LockError::Closing)),
            "waiting Acquire answered {acquire:?}"
        );
        match lock.expect("every Lock is answered") {
            Ok(_) | Err(LockError::Closing) => {}
            Err(e) => panic!("Lock of a free resource answered {e:?}"),
        }
        match unlock.expect("every Unlock is answered") {
            Ok(outcome) => assert_eq!(outcome, UnlockOutcome::NotHeld),
            Err(LockError::Closing) => {}
            Err(e) => panic!("Unlock of an unknown id answered {e:?}"),
        }
    }
    for i in 0..20 {
        let document = stored(&config, &format!("free-{i}")).await;
        let held = document.is_some_and(|d| {
            d.get_document("exclusive")
                .is_ok_and(|e| e.get_bool("acquired") == Ok(true))
        });
        assert!(!held, "free-{i} is still held after Close");
    }
    let after = locks.send(Lock::new("later")).await.unwrap();
    assert!(matches!(after, Err(LockError::Closing)), "{after:?}");
    let after = locks.send(Close).await;
    assert!(after.is_ok(), "a second Close is answered too");
}

#[actix_rt::test]
async fn close_stops_the_purger() {
    let config = fast_config("close_purger").purger_period(Duration::from_millis(100));
    let locks = manager(&config).await;
    locks.send(Close).await.unwrap();

    // A hold left behind by a crashed holder, expired long ago: a running purger would clear it.
    let expired = mongodb::bson::DateTime::from_system_time(
        std::time::SystemTime::now() - Duration::from_secs(60),
    );
    support::server::collection(&config)
        .await
        .insert_one(doc! {
            "resource": format!("{}-left", config.name),
            "exclusive": {
                "lockId": "crashed", "owner": "gone", "host": "gone", "comment": Bson::Null,
                "createdAt": expired, "renewedAt": Bson::Null, "expiresAt": expired,
                "acquired": true,
            },
            "shared": { "count": 0, "locks": [] },
            "fence": 1_i64,
        })
        .await
        .unwrap();
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let left = stored(&config, "left").await.unwrap();
    assert_eq!(
        left.get_document("exclusive").unwrap().get("acquired"),
        Some(&Bson::Boolean(true)),
        "a purger ran after Close"
    );
}

#[actix_rt::test]
async fn close_releases_the_holds_still_held() {
    let config = fast_config("close_releases");
    let locks = manager(&config).await;
    let other = manager(&config).await;
    let kept = locks.send(Lock::new("kept")).await.unwrap().unwrap();
    let unlocked = locks.send(Lock::new("unlocked")).await.unwrap().unwrap();
    locks
        .send(Unlock::new(unlocked.lock_id))
        .await
        .unwrap()
        .unwrap();

    locks.send(Close).await.unwrap();

    let next = other.send(Lock::new("kept")).await.unwrap();
    let next = next.expect("Close released the hold it still had");
    assert!(next.fence > kept.fence);
}

#[actix_rt::test]
async fn bad_resource_ids_are_rejected_and_nothing_is_written() {
    let config = fast_config("bad_ids");
    let locks = manager(&config).await;
    let bad = ["".to_owned(), "x".repeat(513), "nul\0byte".to_owned()];

    for id in &bad {
        let lock = locks.send(Lock::new(id.clone())).await.unwrap();
        assert!(
            matches!(lock, Err(LockError::InvalidResourceId { .. })),
            "Lock({id:?}) answered {lock:?}"
        );
        let acquire = locks.send(Acquire::new(id.clone())).await.unwrap();
        assert!(
            matches!(acquire, Err(LockError::InvalidResourceId { .. })),
            "Acquire({id:?}) answered {acquire:?}"
        );
    }
    assert!(
        snapshot(&config).await.is_empty(),
        "bad input wrote something"
    );
    let longest = locks.send(Lock::new("y".repeat(512))).await.unwrap();
    assert!(longest.is_ok(), "512 bytes is allowed: {longest:?}");
}

#[actix_rt::test]
async fn an_unreachable_database_is_a_typed_error_not_a_hang() {
    // Nothing listens on port 1; the driver gives up after its server selection timeout.
    let client = mongodb::Client::with_uri_str(
        "mongodb://127.0.0.1:1/?directConnection=true&serverSelectionTimeoutMS=500",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let result = LockManager::with_client(client, fast_config("unreachable")).await;
    assert!(
        matches!(result, Err(LockError::Database(_))),
        "start answered {:?}",
        result.map(|_| ())
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[actix_rt::test]
async fn an_invalid_configuration_is_refused_before_any_request() {
    let client = client().await;
    for config in [
        LockConfig::new(""),
        LockConfig::new("has space"),
        LockConfig::new("ok").ttl(Duration::ZERO),
        LockConfig::new("ok").database("a.b"),
    ] {
        let result = LockManager::with_client(client.clone(), config.clone()).await;
        assert!(
            matches!(result, Err(LockError::InvalidConfig { .. })),
            "{config:?} was accepted"
        );
    }
    // Filtered here, not by the server: nx-27017 answers every collection whatever the filter,
    // and other tests may use the default database.
    let names = client
        .database("locks")
        .list_collection_names()
        .await
        .unwrap();
    assert!(
        !names.iter().any(|name| name == "ok_locks"),
        "a refused configuration created ok_locks: {names:?}"
    );
}

#[actix_rt::test]
async fn dropping_every_address_still_drains_and_releases() {
    let config = fast_config("dropped");
    let other = manager(&config).await;
    let locks = manager(&config).await;
    let held = locks.send(Lock::new("kept")).await.unwrap().unwrap();
    let busy = other.send(Lock::new("busy")).await.unwrap().unwrap();
    let waiting = locks.send(Acquire::new("busy").timeout(Duration::from_secs(30)));

    drop(locks);
    let answer = waiting.await.expect("an accepted Acquire is answered");
    assert!(matches!(answer, Err(LockError::Closing)), "{answer:?}");

    let next = other
        .send(Acquire::new("kept").timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    let next = next.expect("the stopped manager released its hold");
    assert!(next.fence > held.fence);
    other
        .send(Unlock::new(busy.lock_id))
        .await
        .unwrap()
        .unwrap();
}

#[actix_rt::test]
async fn close_and_stop_system_answers_every_message_first() {
    let config = fast_config("stop_system");
    let holder = manager(&config).await;
    let locks = manager(&config).await;
    holder.send(Lock::new("busy")).await.unwrap().unwrap();
    let waiting: Vec<_> = (0..10)
        .map(|_| locks.send(Acquire::new("busy").timeout(Duration::from_secs(30))))
        .collect();
    actix_rt::time::sleep(Duration::from_millis(50)).await;

    LockManager::close_and_stop_system([&locks, &holder]).await;

    for answer in futures::future::join_all(waiting).await {
        let answer = answer.expect("answered before the System stopped");
        assert!(matches!(answer, Err(LockError::Closing)), "{answer:?}");
    }
    let after = holder.send(Lock::new("later")).await.unwrap();
    assert!(matches!(after, Err(LockError::Closing)), "{after:?}");
}
