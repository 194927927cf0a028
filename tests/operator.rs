//! The operator's side (issue 24), against the real server: the line of waiting managers in
//! `Status` and `ListHolds`, and a revocation that names the fence, so it ends exactly that hold
//! and never a later one.

mod support;

use std::time::{Duration, Instant, SystemTime};

use actix_mongo_lock::{
    Acquire, ListHolds, Lock, LockError, LostReason, Renew, Revoke, RevokeOutcome, Status, Unlock,
    UnlockOutcome,
};
use mongodb::bson::{doc, DateTime};
use support::losses::LossCollector;
use support::poll::eventually;
use support::server::{collection, fast_config, manager, snapshot, unlocked};

/// A revocation by the live hold's fence releases it, tells its kept-alive holder `Revoked`
/// with the operator's reason within a third of the lease plus `request_timeout`, and the
/// resource is granted again, with a higher fence.
#[actix_rt::test]
async fn a_revocation_ends_the_hold_with_that_fence_and_tells_its_holder_why() {
    let ttl = Duration::from_secs(3);
    let config = fast_config("revoke").ttl(ttl).owner("stuck-worker");
    let holder = manager(&config).await;
    let operator = manager(&config.clone().owner("operator")).await;
    let losses = LossCollector::default();
    let grant = holder
        .send(Lock::new("ledger").keep_alive(losses.keep_alive()))
        .await
        .unwrap()
        .unwrap();
    let status = operator.send(Status::new("ledger")).await.unwrap().unwrap();
    let fence = status.expect("held").fence;
    assert_eq!(fence, grant.fence, "Status shows the fence to revoke");

    let revoked_at = Instant::now();
    let outcome = operator
        .send(Revoke::new("ledger", fence).reason("stuck since 03:00 (OPS-19)"))
        .await
        .unwrap()
        .unwrap();
    let RevokeOutcome::Revoked {
        owner,
        host,
        shared,
        ..
    } = outcome
    else {
        panic!("expected the hold revoked, got {outcome:?}");
    };
    assert_eq!(owner.as_deref(), Some("stuck-worker"));
    assert_eq!(host, Some(config.host.clone()));
    assert!(!shared);
    // Retired, not released: it ends with its lease, and nobody is granted before the holder
    // is told.
    let retired = operator.send(Status::new("ledger")).await.unwrap().unwrap();
    let retired = retired.expect("the hold stands until its lease ends");
    assert!(retired.revoked && retired.fence == fence, "{retired:?}");
    assert!(matches!(
        operator.send(Lock::new("ledger")).await.unwrap(),
        Err(LockError::AlreadyLocked { .. })
    ));

    let bound = ttl / 3 + config.request_timeout;
    let (told_at, lost) = losses.first_told("the holder is told", bound * 2).await;
    assert_eq!(lost.reason, LostReason::Revoked);
    assert_eq!(
        lost.revoked_because.as_deref(),
        Some("stuck since 03:00 (OPS-19)")
    );
    assert_eq!(lost.fence, fence);
    assert!(
        told_at.duration_since(revoked_at) <= bound,
        "told {:?} after the revocation, more than ttl/3 + request_timeout = {bound:?}",
        told_at.duration_since(revoked_at)
    );
    assert_eq!(losses.losses().len(), 1, "told once");

    // The revoked holder's own calls see it gone; the resource goes on with a higher fence.
    assert!(matches!(
        holder
            .send(Renew::new(grant.lock_id.clone()))
            .await
            .unwrap(),
        Err(LockError::LockLost)
    ));
    assert_eq!(
        unlocked(&holder, Unlock::new(grant.lock_id)).await,
        UnlockOutcome::NotHeld
    );
    // The next holder is granted once the retired lease has ended, and only after the
    // revoked holder was told.
    let next = operator
        .send(Acquire::new("ledger").timeout(ttl * 2))
        .await
        .unwrap()
        .unwrap();
    assert!(next.fence > fence);
    let granted_at = Instant::now();
    assert!(
        granted_at > told_at,
        "granted only after the holder was told"
    );
    assert!(
        granted_at.duration_since(revoked_at) <= ttl + Duration::from_secs(2),
        "the retired hold ended with its lease: {:?}",
        granted_at.duration_since(revoked_at)
    );
}

/// A revocation naming a fence that is not the live hold's (an earlier holder's, or one not
/// drawn yet) changes nothing in the database, byte for byte, and the holder keeps its hold.
#[actix_rt::test]
async fn a_stale_fence_revokes_nothing_and_writes_nothing() {
    let config = fast_config("revoke_stale");
    let locks = manager(&config).await;
    let first = locks.send(Lock::new("ledger")).await.unwrap().unwrap();
    locks
        .send(Unlock::new(first.lock_id))
        .await
        .unwrap()
        .unwrap();
    let second = locks.send(Lock::new("ledger")).await.unwrap().unwrap();
    assert!(second.fence > first.fence);
    let before = snapshot(&config).await;

    for fence in [first.fence, second.fence + 1, i64::MAX] {
        let outcome = locks
            .send(Revoke::new("ledger", fence))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, RevokeOutcome::NotHeld, "fence {fence}");
    }
    let outcome = locks
        .send(Revoke::new("never-held", 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RevokeOutcome::NotHeld);
    assert_eq!(snapshot(&config).await, before, "nothing was written");
    assert!(locks
        .send(Renew::new(second.lock_id))
        .await
        .unwrap()
        .is_ok());
}

/// A revocation that cannot name a hold is refused with a typed error and writes nothing.
#[actix_rt::test]
async fn a_bad_revocation_is_refused_and_writes_nothing() {
    let config = fast_config("revoke_bad");
    let locks = manager(&config).await;
    let grant = locks.send(Lock::new("ledger")).await.unwrap().unwrap();
    let before = snapshot(&config).await;

    for fence in [0, -1, i64::MIN] {
        let refused = locks.send(Revoke::new("ledger", fence)).await.unwrap();
        assert!(
            matches!(refused, Err(LockError::InvalidRevoke { .. })),
            "fence {fence}: {refused:?}"
        );
    }
    let long = "x".repeat(513);
    let refused = locks
        .send(Revoke::new("ledger", grant.fence).reason(long))
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(LockError::InvalidRevoke { .. })),
        "{refused:?}"
    );
    let refused = locks.send(Revoke::new("", grant.fence)).await.unwrap();
    assert!(
        matches!(refused, Err(LockError::InvalidResourceId { .. })),
        "{refused:?}"
    );
    assert_eq!(snapshot(&config).await, before, "nothing was written");
}

/// Revoking one shared hold by its fence ends that reader only; the other keeps its permit.
#[actix_rt::test]
async fn a_revocation_of_a_shared_hold_ends_that_reader_only() {
    let ttl = Duration::from_secs(3);
    let config = fast_config("revoke_shared").ttl(ttl);
    let locks = manager(&config).await;
    let losses = LossCollector::default();
    let doomed = locks
        .send(Lock::shared("catalog").keep_alive(losses.keep_alive()))
        .await
        .unwrap()
        .unwrap();
    let kept = locks.send(Lock::shared("catalog")).await.unwrap().unwrap();
    assert_ne!(doomed.fence, kept.fence);

    let outcome = locks
        .send(Revoke::new("catalog", doomed.fence))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, RevokeOutcome::Revoked { shared: true, .. }),
        "{outcome:?}"
    );
    let holds = locks.send(ListHolds).await.unwrap().unwrap();
    let revoked: Vec<(i64, bool)> = holds
        .iter()
        .map(|hold| (hold.fence, hold.revoked))
        .collect();
    assert_eq!(
        revoked,
        vec![(doomed.fence, true), (kept.fence, false)],
        "the revoked reader stands, retired, until its lease ends; the other is untouched"
    );
    assert!(locks.send(Renew::new(kept.lock_id)).await.unwrap().is_ok());

    let (_, lost) = losses.first_told("the revoked reader is told", ttl).await;
    assert_eq!(lost.reason, LostReason::Revoked);
    assert_eq!(lost.fence, doomed.fence);
    assert!(matches!(
        locks.send(Renew::new(doomed.lock_id)).await.unwrap(),
        Err(LockError::LockLost)
    ));
}

/// A hold written by a Go client (square/mongo-lock's shape: no fence of its own) is never
/// revoked by the document's fence, which an earlier grant of this crate drew.
#[actix_rt::test]
async fn a_go_clients_hold_is_not_revoked_by_an_earlier_grants_fence() {
    let config = fast_config("revoke_go");
    let locks = manager(&config).await;
    let ours = locks.send(Lock::new("ledger")).await.unwrap().unwrap();
    locks
        .send(Unlock::new(ours.lock_id))
        .await
        .unwrap()
        .unwrap();
    // A Go client takes it: `exclusive` written whole, as square/mongo-lock's XLock does.
    let now = DateTime::now();
    let expires = DateTime::from_millis(now.timestamp_millis() + 60_000);
    collection(&config)
        .await
        .update_one(
            doc! { "resource": format!("{}-ledger", config.name) },
            doc! { "$set": { "exclusive": {
                "lockId": "go-client-lock", "owner": "go", "host": "elsewhere",
                "comment": null, "createdAt": now, "renewedAt": null,
                "expiresAt": expires, "acquired": true,
            } } },
        )
        .await
        .unwrap();
    let before = snapshot(&config).await;

    let outcome = locks
        .send(Revoke::new("ledger", ours.fence))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RevokeOutcome::NotHeld);
    assert_eq!(snapshot(&config).await, before, "the Go hold is untouched");
}

/// `Status` and `ListHolds` show the line of managers waiting for a held resource, in order,
/// each named `owner@host/id`, and serialise it.
#[actix_rt::test]
async fn status_shows_the_managers_waiting_in_line() {
    let config = fast_config("line_status").ttl(Duration::from_secs(20));
    let holder = manager(&config.clone().owner("holder")).await;
    let grant = holder.send(Lock::new("press")).await.unwrap().unwrap();
    let mut waiting = Vec::new();
    for name in ["first-waiter", "second-waiter"] {
        let waiter = manager(&config.clone().owner(name)).await;
        let acquire = waiter.send(Acquire::new("press").timeout(Duration::from_secs(30)));
        waiting.push((waiter.clone(), actix_rt::spawn(acquire)));
        // The second joins after the first has its place.
        let prefix = format!("{name}@{}/", config.host);
        eventually("the waiter takes a place", Duration::from_secs(10), || {
            let holder = holder.clone();
            let prefix = prefix.clone();
            async move {
                let status = holder.send(Status::new("press")).await.ok()?.ok()??;
                let places = status.line.turn.iter().chain(&status.line.waiting);
                places
                    .filter(|place| place.starts_with(&prefix))
                    .count()
                    .eq(&1)
                    .then_some(())
            }
        })
        .await;
    }
    let status = holder
        .send(Status::new("press"))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let places: Vec<&String> = status
        .line
        .turn
        .iter()
        .chain(&status.line.waiting)
        .collect();
    assert_eq!(places.len(), 2, "{:?}", status.line);
    assert!(places[0].starts_with("first-waiter@"), "{places:?}");
    assert!(places[1].starts_with("second-waiter@"), "{places:?}");
    assert_eq!(status.line.turn.is_some(), status.line.turn_until.is_some());
    // Each place has the time it was taken, in the order of the line.
    let since: Vec<SystemTime> = places
        .iter()
        .map(|place| {
            *status
                .line
                .since
                .get(*place)
                .unwrap_or_else(|| panic!("no time for {place}: {:?}", status.line))
        })
        .collect();
    assert!(since[0] <= since[1], "{:?}", status.line);
    assert!(
        since[0] >= grant.granted_at,
        "{:?} vs {grant:?}",
        status.line
    );
    let listed = holder.send(ListHolds).await.unwrap().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].line, status.line);
    let json = serde_json::to_value(&status).unwrap();
    let json_places: Vec<&str> = json["line"]["turn"]
        .as_str()
        .into_iter()
        .chain(
            json["line"]["waiting"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str()),
        )
        .collect();
    assert_eq!(
        json_places,
        places.iter().map(|p| p.as_str()).collect::<Vec<_>>()
    );
    for (place, at) in places.iter().zip(&since) {
        assert_eq!(
            json["line"]["since"][place.as_str()],
            actix_mongo_lock::rfc3339(*at),
            "{json}"
        );
    }

    // Served in that order once the holder lets go.
    holder
        .send(Unlock::new(grant.lock_id))
        .await
        .unwrap()
        .unwrap();
    let (first, first_wait) = waiting.remove(0);
    let first_grant = first_wait.await.unwrap().unwrap().unwrap();
    first
        .send(Unlock::new(first_grant.lock_id))
        .await
        .unwrap()
        .unwrap();
    let (second, second_wait) = waiting.remove(0);
    let second_grant = second_wait.await.unwrap().unwrap().unwrap();
    assert!(second_grant.fence > first_grant.fence);
    second
        .send(Unlock::new(second_grant.lock_id))
        .await
        .unwrap()
        .unwrap();
    // With nobody waiting, the times of places are gone from the document too.
    let stored = snapshot(&config).await;
    assert_eq!(stored.len(), 1);
    let left = stored[0].get_document("since").map(|since| since.len());
    assert!(left.is_err() || left == Ok(0), "{:?}", stored[0]);
}
