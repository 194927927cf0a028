//! Every message answers within a bound derived from the configuration when the database is
//! gone: the server stops answering (a black hole: connections stay open, nothing comes back)
//! or refuses connections, behind a client that keeps the driver's 30 s server selection timeout,
//! so the bounds shown are the library's, not the driver's. Each test states its bound, allows a
//! generous margin over it, and shows that "down" reads differently from "busy".
//!
//! ```sh
//! scripts/with-mongo cargo test --test database_gone
//! ```

mod support;

use std::time::{Duration, Instant};

use actix_mongo_lock::{
    Acquire, Close, ListHolds, Lock, LockConfig, LockError, LockManager, Renew, Revoke, Status,
    Unlock,
};
use mongodb::bson::doc;
use support::poll::eventually;
use support::proxy::{manager_through, to_the_server, FaultProxy};
use support::server::{client, fast_config, manager, stored_hold};

/// Slack over a stated bound, for a shared, noisy machine.
const MARGIN: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

fn config(prefix: &str) -> LockConfig {
    fast_config(prefix)
        .request_timeout(REQUEST_TIMEOUT)
        .close_timeout(Duration::from_secs(2))
}

/// Times `f`, asserting it answers within `bound` plus the margin.
async fn within<T>(what: &str, bound: Duration, f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let answer = f.await;
    let took = started.elapsed();
    assert!(
        took <= bound + MARGIN,
        "{what} answered after {took:?}; its bound is {bound:?}"
    );
    answer
}

/// Starting a manager asks the database first (`buildInfo`, then the indexes and the clock),
/// and each of those requests is bounded by `request_timeout`: with the server silent or
/// refusing connections, the start answers `Unavailable` within it, not after the driver's
/// 30 s server selection, and no manager is started.
#[actix_rt::test]
async fn a_start_with_the_database_gone_answers_unavailable_within_the_request_timeout() {
    let proxy = to_the_server().await;
    for (fault, make_it) in [
        ("silent", FaultProxy::black_hole as fn(&FaultProxy)),
        ("refusing connections", FaultProxy::refuse_new),
    ] {
        make_it(&proxy);
        let options = mongodb::options::ClientOptions::parse(proxy.uri())
            .await
            .expect("the proxy's URI parses");
        let client = mongodb::Client::with_options(options).expect("client options are valid");
        let started = within(
            &format!("a start with the server {fault}"),
            REQUEST_TIMEOUT,
            LockManager::with_client(client, config("gone_start")),
        )
        .await;
        proxy.restore();
        match started {
            Err(error @ LockError::Unavailable { .. }) => {
                assert!(error.is_unavailable() && !error.is_busy(), "{error:?}")
            }
            Err(other) => panic!("a start with the server {fault} answered {other:?}"),
            Ok(_) => panic!("a manager started with the server {fault}"),
        }
    }
}

#[actix_rt::test]
async fn an_unlock_answers_within_the_request_timeout_and_the_hold_is_released_once_the_server_is_back(
) {
    let proxy = to_the_server().await;
    // A lease long enough for the driver to find the server again after the black hole (it
    // notices at its next heartbeat) while the background release is still trying.
    let config = config("gone_unlock").ttl(Duration::from_secs(60));
    let locks = manager_through(&proxy, &config).await;
    let grant = locks.send(Lock::new("r")).await.unwrap().unwrap();

    proxy.black_hole();
    let answer = within(
        "Unlock with the server gone",
        REQUEST_TIMEOUT,
        locks.send(Unlock::new(grant.lock_id.clone())),
    )
    .await
    .unwrap();
    let error = answer.expect_err("an Unlock nobody could confirm is not a success");
    assert!(
        matches!(error, LockError::UnlockMaxRetries { .. }),
        "{error:?}"
    );
    assert!(error.is_unavailable() && !error.is_busy(), "{error:?}");

    // The manager keeps releasing in the background; the server gets the release when it is back.
    proxy.restore();
    eventually(
        "the background release once the server is back",
        Duration::from_secs(40),
        || async { stored_hold(&config, "r").await.is_none().then_some(()) },
    )
    .await;
}

#[actix_rt::test]
async fn status_list_holds_renew_and_lock_answer_unavailable_within_the_request_timeout() {
    let proxy = to_the_server().await;
    let config = config("gone_reads");
    let locks = manager_through(&proxy, &config).await;
    let grant = locks.send(Lock::new("held")).await.unwrap().unwrap();

    proxy.black_hole();
    let status = within("Status", REQUEST_TIMEOUT, locks.send(Status::new("held")))
        .await
        .unwrap();
    let list = within("ListHolds", REQUEST_TIMEOUT, locks.send(ListHolds))
        .await
        .unwrap();
    let renew = within(
        "Renew",
        REQUEST_TIMEOUT,
        locks.send(Renew::new(grant.lock_id.clone())),
    )
    .await
    .unwrap();
    let lock = within("Lock", REQUEST_TIMEOUT, locks.send(Lock::new("other")))
        .await
        .unwrap();
    proxy.restore();
    for (what, error) in [
        ("Status", status.map(|_| ()).unwrap_err()),
        ("ListHolds", list.map(|_| ()).unwrap_err()),
        ("Renew", renew.map(|_| ()).unwrap_err()),
        ("Lock", lock.map(|_| ()).unwrap_err()),
    ] {
        assert!(
            matches!(error, LockError::Unavailable { .. }),
            "{what} with the server gone answered {error:?}"
        );
        assert!(error.is_unavailable() && error.is_transient() && !error.is_busy());
    }
}

#[actix_rt::test]
async fn an_acquire_tells_a_database_that_is_down_from_a_resource_that_is_busy() {
    let proxy = to_the_server().await;
    let config = config("gone_acquire");
    let locks = manager_through(&proxy, &config).await;
    let held = locks.send(Lock::new("busy")).await.unwrap().unwrap();
    let budget = Duration::from_secs(1);

    let busy = within(
        "Acquire of a held resource",
        budget,
        locks.send(Acquire::new("busy").timeout(budget)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(busy, LockError::AcquireTimeout { .. }), "{busy:?}");
    assert!(busy.is_busy() && !busy.is_unavailable(), "{busy:?}");

    proxy.black_hole();
    // One attempt may take the whole request timeout before the budget is looked at again.
    let down = within(
        "Acquire with the server gone",
        budget + REQUEST_TIMEOUT,
        locks.send(Acquire::new("free").timeout(budget)),
    )
    .await
    .unwrap()
    .unwrap_err();
    proxy.restore();
    assert!(
        matches!(down, LockError::Unavailable { .. }),
        "an Acquire that never reached the server answered {down:?}"
    );
    assert!(down.is_unavailable() && !down.is_busy(), "{down:?}");
    locks
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
}

/// Acquires queued behind another for the same resource in one manager never ask the database
/// themselves; with the database gone they still answer `Unavailable`, not a timeout as if the
/// resource were busy, since no request of their queue reached the database during their wait.
/// With it up and the resource held, the same queue answers `AcquireTimeout`.
#[actix_rt::test]
async fn queued_acquires_tell_a_database_that_is_down_from_a_resource_that_is_busy() {
    let proxy = to_the_server().await;
    let config = config("gone_queued");
    let locks = manager_through(&proxy, &config).await;
    let budget = Duration::from_millis(1500);
    let queue = |resource: &'static str| {
        let locks = locks.clone();
        async move {
            let waits: Vec<_> = (0..6)
                .map(|_| actix_rt::spawn(locks.send(Acquire::new(resource).timeout(budget))))
                .collect();
            let mut answers = Vec::new();
            for wait in waits {
                answers.push(wait.await.unwrap().unwrap());
            }
            answers
        }
    };

    let held = locks.send(Lock::new("busy")).await.unwrap().unwrap();
    let busy = within(
        "six queued Acquires of a held resource",
        budget,
        queue("busy"),
    )
    .await;
    assert!(
        busy.iter()
            .all(|answer| matches!(answer, Err(LockError::AcquireTimeout { .. }))),
        "{busy:?}"
    );

    proxy.black_hole();
    let down = within(
        "six queued Acquires with the server gone",
        budget,
        queue("free"),
    )
    .await;
    proxy.restore();
    let unavailable = down
        .iter()
        .filter(|answer| matches!(answer, Err(LockError::Unavailable { .. })))
        .count();
    assert_eq!(
        unavailable,
        down.len(),
        "queued Acquires answered as if the resource were busy: {down:?}"
    );
    locks
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
}

/// An attempt that the database does not answer is cut off at the wait's deadline (the first
/// one gets 1 s at least): an Acquire with a 1 s budget answers `Unavailable` within about 1 s
/// when the database is gone, not after its 4 s `request_timeout`.
#[actix_rt::test]
async fn an_acquire_answers_unavailable_within_its_budget_not_its_request_timeout() {
    let proxy = to_the_server().await;
    let config = config("gone_budget").request_timeout(Duration::from_secs(4));
    let locks = manager_through(&proxy, &config).await;
    let budget = Duration::from_secs(1);
    proxy.black_hole();
    for (what, resource, timeout) in [
        ("an Acquire of 1 s", "free", budget),
        ("an Acquire of no time", "also-free", Duration::ZERO),
    ] {
        let answer = within(
            what,
            budget,
            locks.send(Acquire::new(resource).timeout(timeout)),
        )
        .await
        .unwrap();
        assert!(
            matches!(answer, Err(LockError::Unavailable { .. })),
            "{what} answered {answer:?}"
        );
    }
    proxy.restore();
}

/// A waiter for a resource held by another manager has a place in the resource's line, and
/// looks at the line while it waits. When the server goes silent mid-wait, a look under way is
/// cut at the wait's deadline and leaving the line does not hold up the answer: the Acquire
/// answers within its budget (`request_timeout` is long here, 4 s, so that a look or a leave
/// running past the deadline would show).
#[actix_rt::test]
async fn an_acquire_waiting_in_line_answers_within_its_bound_when_the_server_goes_silent() {
    const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
    let proxy = to_the_server().await;
    let config = config("gone_in_line").request_timeout(LONG_REQUEST_TIMEOUT);
    let holder = manager(&config).await;
    holder.send(Lock::new("held")).await.unwrap().unwrap();
    let waiting = manager_through(&proxy, &config).await;
    let budget = Duration::from_millis(1500);

    let started = Instant::now();
    let answer = actix_rt::spawn(waiting.send(Acquire::new("held").timeout(budget)));
    let locks = client()
        .await
        .database(&config.database)
        .collection::<mongodb::bson::Document>(&config.collection_name());
    eventually("the waiter takes a place in line", budget, || async {
        let stored = locks
            .find_one(doc! { "resource": format!("{}-held", config.name) })
            .await
            .unwrap()?;
        let turn = stored.get_document("turn").ok()?;
        (turn.get_str("manager").is_ok_and(|m| !m.is_empty())).then_some(())
    })
    .await;
    proxy.black_hole();
    let answer = answer.await.unwrap().unwrap();
    let took = started.elapsed();
    proxy.restore();
    let bound = budget;
    assert!(
        took <= bound + MARGIN,
        "the Acquire answered after {took:?}; its bound is {bound:?}"
    );
    assert!(
        matches!(answer, Err(LockError::AcquireTimeout { .. })),
        "{answer:?}"
    );
}

#[actix_rt::test]
async fn close_answers_within_its_timeout_with_holds_and_a_purge_in_progress_and_counts_only_real_releases(
) {
    let proxy = to_the_server().await;
    let config = config("gone_close").purger_period(Duration::from_millis(300));
    let close_timeout = config.close_timeout;
    let locks = manager_through(&proxy, &config).await;
    for r in ["a", "b", "c"] {
        locks.send(Lock::new(r)).await.unwrap().unwrap();
    }
    proxy.black_hole();
    // Let a purge start and hang in the black hole.
    actix_rt::time::sleep(Duration::from_millis(600)).await;

    let report = within("Close", close_timeout, locks.send(Close))
        .await
        .expect("Close is answered");
    proxy.restore();
    assert_eq!(
        (report.released, report.unreleased),
        (0, 3),
        "nothing could be released with the server gone: {report:?}"
    );
    for r in ["a", "b", "c"] {
        assert!(
            stored_hold(&config, r).await.is_some(),
            "{r}: the report said unreleased; the hold ends with its lease"
        );
    }
}

#[actix_rt::test]
async fn close_releases_what_it_can_and_reports_it_when_the_server_answers() {
    let proxy = to_the_server().await;
    let config = config("close_report");
    let locks = manager_through(&proxy, &config).await;
    for r in ["a", "b"] {
        locks.send(Lock::new(r)).await.unwrap().unwrap();
    }
    let report = locks.send(Close).await.expect("Close is answered");
    assert_eq!((report.released, report.unreleased), (2, 0), "{report:?}");
    for r in ["a", "b"] {
        assert!(stored_hold(&config, r).await.is_none(), "{r} still held");
    }
}

/// A revocation with the server gone answers `Unavailable` within the request timeout (its read
/// is not answered, so it writes nothing), and the hold is still the holder's, unrevoked, once
/// the server is back.
#[actix_rt::test]
async fn a_revocation_answers_unavailable_within_the_request_timeout_and_revokes_nothing() {
    let proxy = to_the_server().await;
    let config = config("gone_revoke").ttl(Duration::from_secs(60));
    let holder = manager(&config).await;
    let grant = holder.send(Lock::new("ledger")).await.unwrap().unwrap();
    let operator = manager_through(&proxy, &config).await;

    proxy.black_hole();
    let answer = within(
        "Revoke with the server gone",
        REQUEST_TIMEOUT,
        operator.send(Revoke::new("ledger", grant.fence)),
    )
    .await
    .unwrap();
    let error = answer.expect_err("a revocation nobody answered");
    assert!(matches!(error, LockError::Unavailable { .. }), "{error:?}");
    proxy.restore();

    let status = holder.send(Status::new("ledger")).await.unwrap().unwrap();
    let status = status.expect("still held");
    assert_eq!(status.fence, grant.fence);
    assert!(!status.revoked, "{status:?}");
    assert!(holder
        .send(Renew::new(grant.lock_id))
        .await
        .unwrap()
        .is_ok());
}
