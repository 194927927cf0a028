//! Leases done right: renewal, keep-alive, the lost-lock signal, server time, status, and the
//! guard, each against the real server.
//!
//! The embedded server compares dates by whole seconds (docs/compatibility.md): a renewal in
//! the last second of a lease may be refused there, so leases that get renewed here are a few
//! seconds long, and renewals happen with more than a second left.

mod support;

use std::time::{Duration, Instant, SystemTime};

use actix_mongo_lock::{
    Acquire, KeepAlive, ListHolds, LocalClock, Lock, LockError, LockGuard, LockManager, LostReason,
    Renew, Status, Unlock, UnlockOutcome,
};
use mongodb::bson::doc;
use support::history::History;
use support::losses::LossCollector;
use support::proxy::FaultProxy;
use support::server::{client_for, collection, fast_config, manager, stored, take_turns};

#[actix_rt::test]
async fn renew_extends_the_lease() {
    let config = fast_config("renew").ttl(Duration::from_secs(3));
    let locks = manager(&config).await;
    let grant = locks.send(Lock::new("lease")).await.unwrap().unwrap();

    actix_rt::time::sleep(Duration::from_millis(600)).await;
    let renewed = locks
        .send(Renew::new(grant.lock_id.clone()))
        .await
        .unwrap()
        .expect("a live hold is renewed");

    assert!(renewed.expires_at >= grant.expires_at + Duration::from_millis(500));
    assert_eq!(renewed.fence, grant.fence, "renewal is not a new grant");
    assert_eq!(renewed.lock_id, grant.lock_id);
    let status = locks.send(Status::new("lease")).await.unwrap().unwrap();
    let status = status.expect("the hold is shown");
    assert_eq!(status.expires_at, Some(renewed.expires_at));
    assert!(status.renewed_at.is_some());
}

#[actix_rt::test]
async fn renew_after_expiry_answers_lock_lost_and_the_successor_keeps_its_hold() {
    let config = fast_config("renew_late").ttl(Duration::from_millis(300));
    let first = manager(&config).await;
    let second = manager(&config).await;
    let old = first.send(Lock::new("seat")).await.unwrap().unwrap();
    let successor = second
        .send(Acquire::new("seat").timeout(Duration::from_secs(3)))
        .await
        .unwrap()
        .expect("the expired hold is taken over");

    let late = first.send(Renew::new(old.lock_id)).await.unwrap();

    assert!(matches!(late, Err(LockError::LockLost)), "{late:?}");
    let document = stored(&config, "seat").await.unwrap();
    let holder = document
        .get_document("exclusive")
        .unwrap()
        .get_str("lockId");
    assert_eq!(holder.ok(), Some(successor.lock_id.as_str()));
    let unlocked = second.send(Unlock::new(successor.lock_id)).await.unwrap();
    assert_eq!(unlocked.unwrap(), UnlockOutcome::Released);
}

#[actix_rt::test]
async fn renew_never_revives_an_expired_hold() {
    let config = fast_config("no_revival").ttl(Duration::from_millis(200));
    let locks = manager(&config).await;
    let grant = locks.send(Lock::new("ghost")).await.unwrap().unwrap();
    // Past the lease, even on a server that compares dates by whole seconds; nobody took it.
    actix_rt::time::sleep(Duration::from_millis(1300)).await;

    let revived = locks.send(Renew::new(grant.lock_id)).await.unwrap();

    assert!(matches!(revived, Err(LockError::LockLost)), "{revived:?}");
    let status = locks.send(Status::new("ghost")).await.unwrap().unwrap();
    assert!(
        status.as_ref().is_none_or(|s| !s.live),
        "an expired hold came back to life: {status:?}"
    );
}

#[actix_rt::test]
async fn renewal_and_purge_do_not_race_into_purging_a_renewed_hold() {
    // Purges every 50 ms while the holder renews by hand every 600 ms for 4 s.
    let config = fast_config("renew_purge")
        .ttl(Duration::from_millis(2400))
        .purger_period(Duration::from_millis(50));
    let locks = manager(&config).await;
    let grant = locks.send(Lock::new("busy")).await.unwrap().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        actix_rt::time::sleep(Duration::from_millis(600)).await;
        let renewed = locks.send(Renew::new(grant.lock_id.clone())).await.unwrap();
        assert!(renewed.is_ok(), "renewal refused: {renewed:?}");
    }
    let released = locks.send(Unlock::new(grant.lock_id)).await.unwrap();
    assert_eq!(released.unwrap(), UnlockOutcome::Released);
}

#[actix_rt::test]
async fn keep_alive_holds_a_lock_for_five_ttls_with_no_unlock() {
    let ttl = Duration::from_millis(2400);
    let config = fast_config("keep_alive").ttl(ttl);
    let holder = manager(&config).await;
    let rival = manager(&config).await;
    let losses = LossCollector::default();
    let grant = holder
        .send(Lock::new("long-job").keep_alive(losses.keep_alive()))
        .await
        .unwrap()
        .unwrap();

    let started = Instant::now();
    while started.elapsed() < ttl * 5 {
        actix_rt::time::sleep(Duration::from_millis(400)).await;
        let rival_try = rival.send(Lock::new("long-job")).await.unwrap();
        assert!(
            matches!(rival_try, Err(LockError::AlreadyLocked { .. })),
            "the kept-alive hold was lost after {:?}: {rival_try:?}",
            started.elapsed()
        );
    }

    assert!(losses.losses().is_empty(), "a loss was signalled");
    let status = rival
        .send(Status::new("long-job"))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(status.expires_at.unwrap() > grant.expires_at + ttl * 3);
    let released = holder.send(Unlock::new(grant.lock_id)).await.unwrap();
    assert_eq!(released.unwrap(), UnlockOutcome::Released);
}

#[actix_rt::test]
async fn a_cut_off_holder_is_told_of_the_loss_before_anyone_else_takes_the_lock() {
    let ttl = Duration::from_millis(2400);
    let config = fast_config("cut_off").ttl(ttl);
    let proxy = FaultProxy::start(support::proxy::upstream_from_env())
        .await
        .unwrap();
    let holder = LockManager::with_client(client_for(&proxy.uri()).await, config.clone())
        .await
        .unwrap();
    let rival = manager(&config).await;
    let losses = LossCollector::default();
    let history = History::new();
    let requested = SystemTime::now();
    let grant = holder
        .send(Lock::new("line").keep_alive(losses.keep_alive()))
        .await
        .unwrap()
        .unwrap();
    let held = history.granted(
        "holder",
        "line",
        grant.fence,
        requested,
        SystemTime::now(),
        requested + ttl,
    );

    proxy.black_hole();
    let cut_at = Instant::now();
    let requested = SystemTime::now();
    let taken = rival
        .send(Acquire::new("line").timeout(Duration::from_secs(6)))
        .await
        .unwrap()
        .expect("the rival gets the lock once the lease has ended");
    let taken_at = Instant::now();
    history.granted(
        "rival",
        "line",
        taken.fence,
        requested,
        SystemTime::now(),
        requested + ttl,
    );

    let losses = losses.losses();
    let [(told_at, lost)] = &losses[..] else {
        panic!("expected exactly one loss, got {losses:?}");
    };
    history.lost(held, SystemTime::now() - told_at.elapsed());
    assert_eq!(lost.reason, LostReason::Unreachable);
    assert_eq!(lost.lock_id, grant.lock_id);
    assert!(
        *told_at < taken_at,
        "the holder was told {:?} after the rival took the lock",
        told_at.duration_since(taken_at)
    );
    assert!(
        told_at.duration_since(cut_at) <= ttl,
        "the loss was told {:?} after the cut, more than a lease",
        told_at.duration_since(cut_at)
    );
    assert!(taken.fence > grant.fence);
    history.assert_ok();
    proxy.restore();
}

#[actix_rt::test]
async fn a_hold_taken_from_under_keep_alive_is_signalled_within_one_renewal_interval() {
    let ttl = Duration::from_millis(2400);
    let config = fast_config("taken").ttl(ttl);
    let holder = manager(&config).await;
    let losses = LossCollector::default();
    let grant = holder
        .send(Lock::new("desk").keep_alive(losses.keep_alive()))
        .await
        .unwrap()
        .unwrap();

    // Someone else's hold replaces ours behind the manager's back (an operator, a bug, a
    // purge after a long pause): the next renewal finds it gone.
    let replaced_at = Instant::now();
    collection(&config)
        .await
        .update_one(
            doc! { "exclusive.lockId": grant.lock_id.as_str() },
            doc! { "$set": { "exclusive.lockId": "someone-else" } },
        )
        .await
        .unwrap();
    actix_rt::time::sleep(ttl / 3 + Duration::from_millis(400)).await;

    let losses = losses.losses();
    let [(told_at, lost)] = &losses[..] else {
        panic!("expected exactly one loss, got {losses:?}");
    };
    assert_eq!(lost.reason, LostReason::Gone);
    assert!(told_at.duration_since(replaced_at) <= ttl / 3 + Duration::from_millis(200));
}

#[actix_rt::test]
async fn skewed_managers_never_overlap_an_honest_one() {
    let ttl = Duration::from_millis(800);
    let config = fast_config("skew")
        .ttl(ttl)
        .acquire_retries(Duration::from_millis(50), 60);
    let skews = [
        ("honest", LocalClock::system()),
        ("fast", LocalClock::skewed(Duration::from_secs(10), true)),
        ("slow", LocalClock::skewed(Duration::from_secs(10), false)),
    ];
    let mut managers = Vec::new();
    for (name, clock) in skews {
        managers.push((name, manager(&config.clone().clock(clock)).await));
    }

    // A fast clock does not make a live lease look expired.
    let honest = &managers[0].1;
    let held = honest
        .send(Lock::new("direct").keep_alive(KeepAlive::silent()))
        .await
        .unwrap()
        .unwrap();
    let fast_try = managers[1].1.send(Lock::new("direct")).await.unwrap();
    assert!(
        matches!(fast_try, Err(LockError::AlreadyLocked { .. })),
        "{fast_try:?}"
    );
    // A slow clock does not write a lease that has already ended.
    honest
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
    let slow = managers[2]
        .1
        .send(Lock::new("direct"))
        .await
        .unwrap()
        .unwrap();
    let honest_try = honest.send(Lock::new("direct")).await.unwrap();
    assert!(
        matches!(honest_try, Err(LockError::AlreadyLocked { .. })),
        "{honest_try:?}"
    );
    assert!(slow.expires_at > SystemTime::now() + ttl / 2);

    // And contending, they never overlap. Holds sometimes outlive their lease (takeovers).
    let history = History::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut workers = Vec::new();
    for (name, locks) in &managers {
        for hold in [1000, 20] {
            workers.push(actix_rt::spawn(take_turns(
                name.to_string(),
                locks.clone(),
                history.clone(),
                "shared",
                ttl,
                Duration::from_millis(hold),
                deadline,
            )));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let summary = history.assert_ok();
    for (name, _) in &managers {
        assert!(
            history.records().iter().any(|r| r.manager == *name),
            "{name} never got the lock: {summary:?}"
        );
    }
}

#[actix_rt::test]
async fn status_shows_what_is_held_and_hides_lock_ids() {
    let config = fast_config("status").owner("report-writer").host("host-7");
    let locks = manager(&config).await;
    let first = locks.send(Lock::new("alpha")).await.unwrap().unwrap();
    let second = locks.send(Lock::new("beta")).await.unwrap().unwrap();
    let freed = locks.send(Lock::new("gamma")).await.unwrap().unwrap();
    locks
        .send(Unlock::new(freed.lock_id.clone()))
        .await
        .unwrap()
        .unwrap();

    let alpha = locks
        .send(Status::new("alpha"))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(alpha.owner.as_deref(), Some("report-writer"));
    assert_eq!(alpha.host.as_deref(), Some("host-7"));
    assert_eq!(alpha.fence, first.fence);
    assert_eq!(alpha.created_at, Some(first.granted_at));
    assert_eq!(alpha.expires_at, Some(first.expires_at));
    assert!(alpha.live);
    assert!(locks
        .send(Status::new("gamma"))
        .await
        .unwrap()
        .unwrap()
        .is_none());
    assert!(locks
        .send(Status::new("never"))
        .await
        .unwrap()
        .unwrap()
        .is_none());
    let bad = locks.send(Status::new("")).await.unwrap();
    assert!(matches!(bad, Err(LockError::InvalidResourceId { .. })));

    let all = locks.send(ListHolds).await.unwrap().unwrap();
    let names: Vec<&str> = all.iter().map(|h| h.resource_id.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    let shown = format!("{all:?}");
    for id in [&first.lock_id, &second.lock_id, &freed.lock_id] {
        assert!(!shown.contains(id.as_str()), "a lock id is shown: {shown}");
    }
}

#[actix_rt::test]
async fn a_dropped_guard_frees_its_resource() {
    let config = fast_config("guard");
    let locks = manager(&config).await;
    let other = manager(&config).await;
    {
        let guard = LockGuard::acquire(&locks, Acquire::new("scoped"))
            .await
            .unwrap();
        let refused = other.send(Lock::new("scoped")).await.unwrap();
        assert!(matches!(refused, Err(LockError::AlreadyLocked { .. })));
        assert!(guard.grant().fence > 0);
    }
    let next = other
        .send(Acquire::new("scoped").timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(
        next.is_ok(),
        "the dropped guard did not free the resource: {next:?}"
    );

    let guard = LockGuard::lock(&locks, Lock::new("told")).await.unwrap();
    assert_eq!(guard.unlock().await.unwrap(), UnlockOutcome::Released);
    assert!(other.send(Lock::new("told")).await.unwrap().is_ok());
}

#[actix_rt::test]
async fn a_downstream_store_refuses_a_stale_holders_write_by_its_fence() {
    let config = fast_config("fenced_store").ttl(Duration::from_millis(300));
    let slow = manager(&config).await;
    let fast = manager(&config).await;
    let invoices = support::server::client()
        .await
        .database(&config.database)
        .collection::<mongodb::bson::Document>(&format!("{}_invoices", config.name));
    invoices
        .insert_one(doc! { "_id": 42, "status": "open", "fence": 0_i64 })
        .await
        .unwrap();
    let write = |fence: i64, status: &'static str| {
        let invoices = invoices.clone();
        async move {
            invoices
                .update_one(
                    doc! { "_id": 42, "fence": { "$lte": fence } },
                    doc! { "$set": { "status": status, "fence": fence } },
                )
                .await
                .unwrap()
                .matched_count
                == 1
        }
    };

    let stale = slow.send(Lock::new("invoice-42")).await.unwrap().unwrap();
    // The slow holder pauses past its lease; the fast one takes over and writes.
    let current = fast
        .send(Acquire::new("invoice-42").timeout(Duration::from_secs(3)))
        .await
        .unwrap()
        .unwrap();
    assert!(write(current.fence, "paid").await);

    assert!(
        !write(stale.fence, "cancelled").await,
        "the store took a write from a holder whose lease had passed on"
    );
    let record = invoices
        .find_one(doc! { "_id": 42 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.get_str("status").unwrap(), "paid");
}

/// A kept-alive hold still held when its manager closes: the holder is told
/// `LostReason::Closing` as the close begins, before the release, and told nothing of a hold it
/// had unlocked.
#[actix_rt::test]
async fn a_kept_alive_hold_released_at_close_tells_its_holder_closing() {
    let config = fast_config("closing_told");
    let locks = manager(&config).await;
    let losses = LossCollector::default();
    let keep_alive = || losses.keep_alive();
    let held = locks
        .send(Lock::new("held").keep_alive(keep_alive()))
        .await
        .unwrap()
        .unwrap();
    let unlocked = locks
        .send(Lock::new("unlocked").keep_alive(keep_alive()))
        .await
        .unwrap()
        .unwrap();
    locks
        .send(Unlock::new(unlocked.lock_id))
        .await
        .unwrap()
        .unwrap();
    let report = locks.send(actix_mongo_lock::Close).await.unwrap();
    assert_eq!(report.released, 1);
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let losses = losses.losses();
    let [(_, lost)] = &losses[..] else {
        panic!("expected exactly one loss, got {losses:?}");
    };
    assert_eq!(lost.reason, LostReason::Closing);
    assert_eq!(lost.lock_id, held.lock_id);
    assert_eq!(lost.fence, held.fence);
}

/// A hold kept alive with `end_when_granting_stops` ends at `StopGranting`: its holder is told
/// `LostReason::Closing`, then it is released, so another manager is granted the resource
/// long before the lease would have ended; a hold kept alive without it stays held.
#[actix_rt::test]
async fn a_hold_kept_alive_until_granting_stops_is_released_at_stop_granting() {
    let config = fast_config("end_at_stop").ttl(Duration::from_secs(30));
    let locks = manager(&config).await;
    let other = manager(&config).await;
    let losses = LossCollector::default();
    let ending = locks
        .send(Lock::new("office").keep_alive(losses.keep_alive().end_when_granting_stops()))
        .await
        .unwrap()
        .unwrap();
    let staying = locks
        .send(Lock::new("job").keep_alive(losses.keep_alive()))
        .await
        .unwrap()
        .unwrap();

    locks.send(actix_mongo_lock::StopGranting).await.unwrap();
    let (_, lost) = losses
        .first_told("told at StopGranting", Duration::from_secs(5))
        .await;
    assert_eq!(lost.reason, LostReason::Closing);
    assert_eq!(lost.lock_id, ending.lock_id);
    let taken = other
        .send(Acquire::new("office").timeout(Duration::from_secs(5)))
        .await
        .unwrap()
        .expect("the office was released, not left to its 30 s lease");
    assert!(taken.fence > ending.fence);
    assert!(
        other.send(Lock::new("job")).await.unwrap().is_err(),
        "the other hold is still held"
    );
    assert_eq!(losses.losses().len(), 1, "{:?}", losses.losses());
    locks
        .send(Unlock::new(staying.lock_id))
        .await
        .unwrap()
        .unwrap();
    locks.send(actix_mongo_lock::Close).await.unwrap();
    other.send(actix_mongo_lock::Close).await.unwrap();
}
