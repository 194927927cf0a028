//! `AwaitReleased`, the wait of phase 1 of a shutdown: it answers once every hold granted by its
//! manager has ended (unlocked, released by a guard, found lost, released by `Close`, or past
//! its lease) and not while one is still held; at once when none is; within its timeout, with
//! the number still held, when they never end; and the same with the database gone, since it
//! makes no database request. Each test states its bound and allows a generous margin over it.
//!
//! ```sh
//! scripts/with-mongo cargo test --test await_released
//! ```

mod support;

use std::time::{Duration, Instant, SystemTime};

use actix::{Addr, MailboxError};
use actix_mongo_lock::{
    AwaitReleased, Close, KeepAlive, Lock, LockConfig, LockError, LockGuard, LockManager,
    ReleasedReport, Renew, StopGranting, Unlock, UnlockOutcome,
};
use mongodb::bson::doc;
use support::proxy::{manager_through, to_the_server};
use support::server::{collection, fast_config, manager, stored_hold};
use tokio::task::JoinHandle;

/// Slack over a stated bound, for a shared, noisy machine.
const MARGIN: Duration = Duration::from_secs(2);
/// "At once": no database request and nothing to wait for, so far less than this.
const AT_ONCE: Duration = Duration::from_secs(1);
/// How long a wait must stay unanswered to count as still waiting.
const STILL_WAITING: Duration = Duration::from_millis(300);

/// Sends `AwaitReleased::within(timeout)` in the background.
fn await_released(
    locks: &Addr<LockManager>,
    timeout: Duration,
) -> JoinHandle<Result<ReleasedReport, MailboxError>> {
    actix_rt::spawn(locks.send(AwaitReleased::within(timeout)))
}

/// Asserts that `wait` has not answered after `STILL_WAITING` more.
async fn still_waiting(wait: &JoinHandle<Result<ReleasedReport, MailboxError>>, while_: &str) {
    actix_rt::time::sleep(STILL_WAITING).await;
    assert!(!wait.is_finished(), "AwaitReleased answered while {while_}");
}

/// Awaits `wait`, asserting it answers within `bound` plus the margin; answers the report and
/// how long it took from now.
async fn answered_within(
    wait: JoinHandle<Result<ReleasedReport, MailboxError>>,
    bound: Duration,
) -> (ReleasedReport, Duration) {
    let started = Instant::now();
    let report = tokio::time::timeout(bound + MARGIN, wait)
        .await
        .unwrap_or_else(|_| panic!("AwaitReleased did not answer within {bound:?}"))
        .expect("the wait's task")
        .expect("AwaitReleased is answered");
    (report, started.elapsed())
}

#[actix_rt::test]
async fn it_answers_once_the_last_hold_here_ends_and_not_while_one_is_still_held() {
    let config = fast_config("await_last");
    let locks = manager(&config).await;
    let unlocked = locks.send(Lock::new("unlocked")).await.unwrap().unwrap();
    let lost = locks.send(Lock::new("lost")).await.unwrap().unwrap();
    let guarded = LockGuard::lock(&locks, Lock::new("guarded"))
        .await
        .expect("a guarded hold");
    locks.send(StopGranting).await.unwrap();

    let wait = await_released(&locks, Duration::from_secs(30));
    still_waiting(&wait, "three holds were held").await;

    let outcome = locks.send(Unlock::new(unlocked.lock_id)).await.unwrap();
    assert_eq!(outcome.unwrap(), UnlockOutcome::Released);
    still_waiting(&wait, "two holds were held").await;

    // Lost: its document is gone (as after a takeover), and a Renew finds that out.
    collection(&config)
        .await
        .delete_one(doc! { "resource": format!("{}-lost", config.name) })
        .await
        .expect("delete the lost hold's document");
    let renewed = locks.send(Renew::new(lost.lock_id)).await.unwrap();
    assert!(matches!(renewed, Err(LockError::LockLost)), "{renewed:?}");
    still_waiting(&wait, "the guarded hold was held").await;

    // Dropping the guard sends its Unlock: the last hold here ends, and the wait answers.
    drop(guarded);
    let (report, took) = answered_within(wait, Duration::ZERO).await;
    assert_eq!(report.still_held, 0, "{report:?}");
    assert!(report.all_released());
    assert!(
        report.waited >= 3 * STILL_WAITING,
        "it says it waited {:?}, less than the test kept it waiting",
        report.waited
    );
    println!("answered {took:?} after the guard was dropped");
    for resource in ["unlocked", "guarded"] {
        assert!(
            stored_hold(&config, resource).await.is_none(),
            "{resource} is still held in the database after the wait answered"
        );
    }
}

#[actix_rt::test]
async fn it_answers_at_once_when_no_hold_granted_here_is_held() {
    let config = fast_config("await_none");
    let locks = manager(&config).await;
    let elsewhere = manager(&config).await;
    // Held by another manager: not this one's to wait for.
    elsewhere.send(Lock::new("theirs")).await.unwrap().unwrap();
    let mine = locks.send(Lock::new("mine")).await.unwrap().unwrap();
    locks
        .send(Unlock::new(mine.lock_id))
        .await
        .unwrap()
        .unwrap();

    for (what, timeout) in [
        ("while granting", Duration::from_secs(30)),
        ("with a timeout meaning forever", Duration::MAX),
    ] {
        let (report, took) = answered_within(await_released(&locks, timeout), Duration::ZERO).await;
        assert_eq!(report.still_held, 0, "{what}: {report:?}");
        assert!(took < AT_ONCE, "{what}: answered after {took:?}");
    }
    locks.send(StopGranting).await.unwrap();
    let (report, took) = answered_within(
        await_released(&locks, Duration::from_secs(30)),
        Duration::ZERO,
    )
    .await;
    assert_eq!(report.still_held, 0, "after StopGranting: {report:?}");
    assert!(
        took < AT_ONCE,
        "after StopGranting: answered after {took:?}"
    );
}

#[actix_rt::test]
async fn it_answers_within_its_timeout_and_counts_the_holds_never_released() {
    let config = fast_config("await_timeout").ttl(Duration::from_secs(60));
    let locks = manager(&config).await;
    for resource in ["a", "b"] {
        locks.send(Lock::new(resource)).await.unwrap().unwrap();
    }
    // A 1.5 s lease renewed every 500 ms: it outlives its first lease, and goes on counting.
    locks
        .send(
            Lock::new("kept")
                .ttl(Duration::from_millis(1500))
                .keep_alive(KeepAlive::silent()),
        )
        .await
        .unwrap()
        .unwrap();
    locks.send(StopGranting).await.unwrap();

    let timeout = Duration::from_millis(2500);
    let started = Instant::now();
    let (report, _) = answered_within(await_released(&locks, timeout), timeout).await;
    let took = started.elapsed();
    assert!(
        took >= timeout,
        "answered after {took:?}, before its timeout"
    );
    assert_eq!(report.still_held, 3, "{report:?}");
    assert!(!report.all_released());
    assert!(report.waited >= timeout, "{report:?}");
    for resource in ["a", "b", "kept"] {
        assert!(
            stored_hold(&config, resource).await.is_some(),
            "{resource}: the wait released it; it must change nothing"
        );
    }
    let closed = locks.send(Close).await.unwrap();
    assert_eq!((closed.released, closed.unreleased), (3, 0), "{closed:?}");
}

#[actix_rt::test]
async fn a_close_ends_a_wait_in_progress_and_its_releases_count_as_ends() {
    let config = fast_config("await_close");
    let locks = manager(&config).await;
    locks.send(Lock::new("held")).await.unwrap().unwrap();
    let wait = await_released(&locks, Duration::from_secs(30));
    still_waiting(&wait, "a hold was held").await;

    // Close does not wait for the wait (it would take its whole timeout); it releases the hold.
    let started = Instant::now();
    let closed = locks.send(Close).await.unwrap();
    assert!(
        started.elapsed() < config.close_timeout,
        "Close waited for AwaitReleased: {:?}",
        started.elapsed()
    );
    assert_eq!((closed.released, closed.unreleased), (1, 0), "{closed:?}");
    let (report, _) = answered_within(wait, Duration::ZERO).await;
    assert_eq!(report.still_held, 0, "{report:?}");
    // After Close, at once.
    let (report, took) = answered_within(
        await_released(&locks, Duration::from_secs(30)),
        Duration::ZERO,
    )
    .await;
    assert_eq!(report.still_held, 0, "{report:?}");
    assert!(took < AT_ONCE, "after Close: answered after {took:?}");
}

fn gone_config(prefix: &str) -> LockConfig {
    fast_config(prefix)
        .ttl(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(1))
        .close_timeout(Duration::from_secs(2))
}

/// With the server black-holed, an Unlock cannot be confirmed, so its hold is still held: the
/// wait lasts its timeout and says so. Close then cannot release it either, and a wait after
/// Close answers at once with it still counted.
#[actix_rt::test]
async fn with_the_database_gone_an_unconfirmed_unlock_counts_as_held_until_the_timeout() {
    let proxy = to_the_server().await;
    let config = gone_config("await_gone_held");
    let locks = manager_through(&proxy, &config).await;
    let grant = locks.send(Lock::new("a")).await.unwrap().unwrap();
    locks.send(StopGranting).await.unwrap();

    proxy.black_hole();
    let unlocked = locks.send(Unlock::new(grant.lock_id)).await.unwrap();
    assert!(
        matches!(unlocked, Err(LockError::UnlockMaxRetries { .. })),
        "{unlocked:?}"
    );
    let timeout = Duration::from_secs(2);
    let started = Instant::now();
    let (report, _) = answered_within(await_released(&locks, timeout), timeout).await;
    let took = started.elapsed();
    assert!(
        took >= timeout,
        "answered after {took:?}, before its timeout"
    );
    assert_eq!(report.still_held, 1, "{report:?}");

    let closed = locks.send(Close).await.unwrap();
    assert_eq!(closed.unreleased, 1, "{closed:?}");
    let (report, took) = answered_within(await_released(&locks, timeout), Duration::ZERO).await;
    assert_eq!(report.still_held, 1, "after Close: {report:?}");
    assert!(took < AT_ONCE, "after Close: answered after {took:?}");
    proxy.restore();
}

/// With the server black-holed, a manager with nothing held answers at once, and one whose only
/// hold is never unlocked answers when that hold's lease ends: neither needs the database.
#[actix_rt::test]
async fn with_the_database_gone_it_answers_at_once_with_nothing_held_and_when_the_last_lease_ends()
{
    let proxy = to_the_server().await;
    let config = gone_config("await_gone_lease");
    let idle = manager_through(&proxy, &config).await;
    let short = manager_through(&proxy, &config).await;
    let done = idle.send(Lock::new("done")).await.unwrap().unwrap();
    idle.send(Unlock::new(done.lock_id)).await.unwrap().unwrap();
    let lease = Duration::from_millis(1500);
    let granted = Instant::now();
    let grant = short
        .send(Lock::new("short").ttl(lease))
        .await
        .unwrap()
        .unwrap();

    proxy.black_hole();
    let long = Duration::from_secs(20);
    let (report, took) = answered_within(await_released(&idle, long), Duration::ZERO).await;
    assert_eq!(report.still_held, 0, "{report:?}");
    assert!(took < AT_ONCE, "nothing held: answered after {took:?}");

    let (report, _) = answered_within(await_released(&short, long), lease).await;
    let since_grant = granted.elapsed();
    assert_eq!(report.still_held, 0, "{report:?}");
    assert!(
        SystemTime::now() + Duration::from_millis(100) >= grant.expires_at,
        "answered before the lease ended ({:?} after the grant)",
        since_grant
    );
    assert!(
        since_grant <= lease + MARGIN,
        "answered {since_grant:?} after the grant; the lease was {lease:?}"
    );
    proxy.restore();
}
