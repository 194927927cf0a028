//! Server-side stalls longer than a lease (SecantusDB failpoints, so SecantusDB only, like
//! tests/server_faults.rs: every test is named `secantus_...` and asserts where it runs): a grant
//! or renewal is never answered after its lease ended, and Lock and Renew answer within the lease.
//!
//! ```sh
//! MONGO_SERVER=secantus scripts/with-mongo cargo test --features failpoint-tests --test lease_stall
//! ```
//!
//! The fault these pin (found by the fault table, fixed in the store and the core): a grant or renewal answered after its lease already ended. The store computes a
//! lease as "the local reading of the server clock when the request was SENT + TTL", and
//! nothing checked it when the reply arrived. A request held up longer than the lease (a stalled
//! server, a blocked connection, a long GC pause of the server) is applied late and answered as
//! a success whose lease is already over: Lock answers `Ok(grant)`, Renew answers `Ok(renewed)`.
//! Another manager may be granted the resource at that same moment, since the stored lease is
//! over too, and both callers then hold a grant of the same resource in hand.
//!
//! The same gap leaves Lock and Renew without a time bound of their own: each makes one attempt
//! with no deadline, so they wait as long as a stalled server holds the request (heartbeats on
//! their own connection keep answering, so the driver sees nothing wrong). A grant or renewal
//! that arrives after the lease is useless, so the lease is the natural bound.

mod support;

use std::time::{Duration, Instant, SystemTime};

use actix_mongo_lock::{Lock, LockConfig, LockGrant, LockManager, Renew};
use support::failpoint::{arm, assert_secantus, off, recorded_client, Fault, SERIAL};
use support::server::{manager, unique_name, uri};

const LEASE: Duration = Duration::from_millis(1200);
const BLOCK: Duration = Duration::from_millis(1800);

async fn blocked_manager(prefix: &str) -> (LockConfig, actix::Addr<LockManager>) {
    let config = LockConfig::new(unique_name(prefix))
        .database("actix_mongo_lock_tests")
        .ttl(LEASE);
    let (client, _) = recorded_client(&uri(), &config.name).await;
    let locks = LockManager::with_client(client, config.clone())
        .await
        .expect("start a manager");
    (config, locks)
}

/// What the two callers hold once the second one asked right after the first one's answer.
fn assert_not_both(first: &LockGrant, answered_at: SystemTime, second: Option<&LockGrant>) {
    assert!(
        first.expires_at > answered_at || second.is_none(),
        "two callers hold r at once: the first was answered a grant (fence {}) {:?} after its \
         lease had ended, and a second manager was granted r (fence {:?}) right after",
        first.fence,
        answered_at
            .duration_since(first.expires_at)
            .unwrap_or_default(),
        second.map(|g| g.fence),
    );
}

#[actix_rt::test]
async fn secantus_lock_never_answers_a_grant_whose_lease_ended_before_the_answer() {
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let (config, locks) = blocked_manager("bug_late_grant").await;
    arm(&config.name, 1, &Fault::block(&["findAndModify"], BLOCK)).await;
    let first = locks.send(Lock::new("r")).await.expect("manager runs");
    let answered_at = SystemTime::now();
    off().await;
    let other = manager(&config).await;
    let second = other.send(Lock::new("r")).await.expect("manager runs");
    if let Ok(first) = &first {
        assert_not_both(first, answered_at, second.as_ref().ok());
    }
}

#[actix_rt::test]
async fn secantus_renew_never_answers_a_lease_that_ended_before_the_answer() {
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let (config, locks) = blocked_manager("bug_late_renewal").await;
    let grant = locks
        .send(Lock::new("r"))
        .await
        .expect("manager runs")
        .expect("granted");
    arm(&config.name, 1, &Fault::block(&["findAndModify"], BLOCK)).await;
    let renewed = locks
        .send(Renew::new(grant.lock_id))
        .await
        .expect("manager runs");
    let answered_at = SystemTime::now();
    off().await;
    let other = manager(&config).await;
    let second = other.send(Lock::new("r")).await.expect("manager runs");
    if let Ok(renewed) = &renewed {
        assert_not_both(renewed, answered_at, second.as_ref().ok());
    }
}

/// A stall of 5 s, four leases: Lock must answer within its lease and a margin, not when the
/// server lets the request go.
#[actix_rt::test]
async fn secantus_lock_answers_within_its_lease_while_the_server_stalls_the_request() {
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let (config, locks) = blocked_manager("bug_stalled_lock").await;
    arm(
        &config.name,
        1,
        &Fault::block(&["findAndModify"], Duration::from_secs(5)),
    )
    .await;
    let sent = Instant::now();
    let answer = locks.send(Lock::new("r")).await.expect("manager runs");
    let took = sent.elapsed();
    off().await;
    assert!(
        took < LEASE * 2,
        "Lock answered {answer:?} only after {took:?}, with a lease of {LEASE:?}"
    );
}

/// The same for Renew.
#[actix_rt::test]
async fn secantus_renew_answers_within_the_lease_while_the_server_stalls_the_request() {
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let (config, locks) = blocked_manager("bug_stalled_renew").await;
    let grant = locks
        .send(Lock::new("r"))
        .await
        .expect("manager runs")
        .expect("granted");
    arm(
        &config.name,
        1,
        &Fault::block(&["findAndModify"], Duration::from_secs(5)),
    )
    .await;
    let sent = Instant::now();
    let answer = locks
        .send(Renew::new(grant.lock_id))
        .await
        .expect("manager runs");
    let took = sent.elapsed();
    off().await;
    assert!(
        took < LEASE * 2,
        "Renew answered {answer:?} only after {took:?}, with a lease of {LEASE:?}"
    );
}

/// An Acquire that gives up while its grant is held up by the server, then `Close` at once:
/// the grant lands after the Acquire answered, and after Close's first try to release it. Close
/// goes on trying while such a grant may still land (up to `request_timeout` after it was cut
/// off, within `close_timeout`), so no hold of this manager outlives it.
#[actix_rt::test]
async fn secantus_close_releases_a_grant_that_lands_after_the_acquire_gave_up() {
    use actix_mongo_lock::{Acquire, Close};
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let config = LockConfig::new(unique_name("late_grant_at_close"))
        .database("actix_mongo_lock_tests")
        .ttl(Duration::from_secs(30));
    let (client, _) = recorded_client(&uri(), &config.name).await;
    let locks = LockManager::with_client(client, config.clone())
        .await
        .expect("start a manager");
    let block = Duration::from_millis(1500);
    arm(&config.name, 1, &Fault::block(&["findAndModify"], block)).await;
    let sent = Instant::now();
    let given_up = locks
        .send(Acquire::new("r").timeout(Duration::from_millis(300)))
        .await
        .expect("manager runs");
    assert!(given_up.is_err(), "granted through the block: {given_up:?}");
    assert!(
        sent.elapsed() < block,
        "the Acquire answered only after the block: {:?}",
        sent.elapsed()
    );
    let report = locks.send(Close).await.expect("manager runs");
    let closed = sent.elapsed();
    off().await;
    // The held-up grant has landed by now (the block ended), and was released.
    tokio::time::sleep((block + Duration::from_millis(500)).saturating_sub(sent.elapsed())).await;
    let document = support::server::stored(&config, "r").await;
    let held = document
        .as_ref()
        .and_then(|d| d.get_document("exclusive").ok())
        .and_then(|e| e.get_bool("acquired").ok());
    assert_ne!(
        held,
        Some(true),
        "a hold outlived Close ({report:?}, closed {closed:?} after the Acquire was sent): \
         {document:?}"
    );
    assert!(
        closed < config.close_timeout + Duration::from_secs(2),
        "Close took {closed:?}"
    );
}
