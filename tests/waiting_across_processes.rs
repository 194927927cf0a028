//! Waiting for a resource held by another manager (another process, as far as the waiter can
//! tell: separate managers on separate clients share nothing but the database).
//!
//! Every test runs on both servers and asserts what that server allows. On SecantusDB (a
//! replica-set primary with change streams and failpoints, `MONGO_SERVER=secantus`) a release
//! elsewhere reaches the waiter through the manager's one stream of releases, a lease that ends
//! wakes the waiter without an event, the stream survives a closed connection, and a stream that
//! keeps failing gives way to probing. On nx-27017 (no change streams, no failpoints) no stream
//! is tried and the waiter probes, with pauses that grow to `acquire_period`. What each manager
//! sends is counted with the driver's command monitoring. The time bounds are far above what the
//! stream needs and below what probing on the test's long `acquire_period` could reach.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use actix_mongo_lock::{Acquire, Lock, LockConfig, LockError, LockGrant, LockManager, Unlock};
use mongodb::bson::{doc, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use support::poll::until;
use support::server::{client, fast_config, manager, stored, stored_integer, unique_name, uri};

/// One command a monitored manager sent.
#[derive(Clone, Debug)]
struct Sent {
    at: Instant,
    name: String,
    /// An `aggregate` opening a change stream.
    stream: bool,
    /// A change stream opened after an earlier one's last event.
    resumed: bool,
}

/// The commands a manager's client sent, which change streams the server opened, and when a
/// stream's `getMore` brought events.
#[derive(Clone, Default)]
struct Monitor {
    sent: Arc<Mutex<Vec<Sent>>>,
    stream_requests: Arc<Mutex<HashSet<i32>>>,
    streams_opened: Arc<Mutex<u32>>,
    events_received: Arc<Mutex<Vec<Instant>>>,
}

impl Monitor {
    fn count(&self, name: &str, since: Instant) -> usize {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == name && s.at >= since)
            .count()
    }

    fn stream_attempts(&self) -> Vec<Sent> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.stream)
            .cloned()
            .collect()
    }

    fn streams_opened(&self) -> u32 {
        *self.streams_opened.lock().unwrap()
    }

    /// How many `getMore` answers of its stream brought events since `since`.
    fn events_since(&self, since: Instant) -> usize {
        self.events_received
            .lock()
            .unwrap()
            .iter()
            .filter(|at| **at >= since)
            .count()
    }

    /// Every command sent since `since`, by name.
    fn sent_since(&self, since: Instant) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= since)
            .map(|s| s.name.clone())
            .collect()
    }
}

/// A manager on a client of its own named `app_name` (so a failpoint can aim at it alone),
/// with every command it sends recorded.
async fn monitored_manager(config: &LockConfig, app_name: &str) -> (Addr<LockManager>, Monitor) {
    let monitor = Monitor::default();
    let seen = monitor.clone();
    let mut options = ClientOptions::parse(uri()).await.unwrap();
    options.app_name = Some(app_name.to_owned());
    options.command_event_handler = Some(EventHandler::callback(move |event| match event {
        CommandEvent::Started(started) => {
            let change_stream = started.command_name == "aggregate"
                && first_stage(&started.command).is_some_and(|s| s.contains_key("$changeStream"));
            let resumed = change_stream
                && first_stage(&started.command)
                    .and_then(|s| s.get_document("$changeStream").ok().cloned())
                    .is_some_and(|s| s.contains_key("resumeAfter") || s.contains_key("startAfter"));
            if change_stream {
                seen.stream_requests
                    .lock()
                    .unwrap()
                    .insert(started.request_id);
            }
            seen.sent.lock().unwrap().push(Sent {
                at: Instant::now(),
                name: started.command_name.clone(),
                stream: change_stream,
                resumed,
            });
        }
        CommandEvent::Succeeded(succeeded)
            if seen
                .stream_requests
                .lock()
                .unwrap()
                .contains(&succeeded.request_id) =>
        {
            *seen.streams_opened.lock().unwrap() += 1;
        }
        CommandEvent::Succeeded(succeeded) if succeeded.command_name == "getMore" => {
            let brought_events = succeeded
                .reply
                .get_document("cursor")
                .and_then(|cursor| cursor.get_array("nextBatch"))
                .is_ok_and(|batch| !batch.is_empty());
            if brought_events {
                seen.events_received.lock().unwrap().push(Instant::now());
            }
        }
        _ => {}
    }));
    let locks = LockManager::with_client(
        mongodb::Client::with_options(options).unwrap(),
        config.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot start a lock manager on {}: {e}", uri()));
    (locks, monitor)
}

/// Releases `held` through `holder` and waits for `acquire`'s grant: the grant, and the time
/// from the release to it.
async fn release_and_time_the_hand_off(
    holder: &Addr<LockManager>,
    held: &LockGrant,
    acquire: actix_rt::task::JoinHandle<Result<Result<LockGrant, LockError>, actix::MailboxError>>,
) -> (LockGrant, Duration) {
    let released = Instant::now();
    holder
        .send(Unlock::new(held.lock_id.clone()))
        .await
        .unwrap()
        .unwrap();
    let grant = acquire
        .await
        .unwrap()
        .unwrap()
        .expect("the waiter is granted");
    (grant, released.elapsed())
}

fn first_stage(command: &Document) -> Option<&Document> {
    command.get_array("pipeline").ok()?.first()?.as_document()
}

/// Whether the suite's server has change streams: nx-27017 (`MONGO_SERVER=nx`) has none;
/// SecantusDB and a real replica set do, which `hello` confirms (a `setName`).
async fn server_has_streams() -> bool {
    let hello = client()
        .await
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .expect("hello");
    let replica_set = hello.get_str("setName").is_ok();
    match std::env::var("MONGO_SERVER").as_deref() {
        Ok("nx") => {
            assert!(!replica_set, "nx-27017 answered hello as a replica set");
            false
        }
        _ => {
            assert!(
                replica_set,
                "the suite's server is not a replica set: {hello}"
            );
            true
        }
    }
}

/// The server has one `failCommand` failpoint, and setting it replaces what another test set:
/// the tests that use it take turns.
static FAILPOINT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sets the `failCommand` failpoint (each test aims it at its own client with `appName`).
async fn fail_command(mode: mongodb::bson::Bson, data: Document) {
    client()
        .await
        .database("admin")
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": mode, "data": data })
        .await
        .expect("configureFailPoint is enabled on SecantusDB");
}

async fn fail_command_off() {
    fail_command("off".into(), doc! {}).await;
}

/// A configuration whose probing would be slow: the fall-back's first pause is 6 s and the
/// safety probe 240 s, so a waiter granted within seconds of a release was told of it.
fn slow_probing(prefix: &str) -> LockConfig {
    fast_config(prefix)
        .ttl(Duration::from_secs(120))
        .acquire_retries(Duration::from_secs(60), 10)
}

#[actix_rt::test]
async fn a_release_elsewhere_wakes_the_waiter_through_the_stream_on_secantus_and_by_probing_on_nx()
{
    let streams = server_has_streams().await;
    let config = slow_probing("stream_wake");
    let holder = manager(&config).await;
    let held = holder.send(Lock::new("doc")).await.unwrap().unwrap();
    let (waiting, monitor) = monitored_manager(&config, &unique_name("wake")).await;

    let acquire =
        actix_rt::spawn(waiting.send(Acquire::new("doc").timeout(Duration::from_secs(60))));
    if streams {
        until("the release stream opens", Duration::from_secs(10), || {
            monitor.streams_opened() >= 1
        })
        .await;
    }
    actix_rt::time::sleep(Duration::from_millis(500)).await;

    let (grant, waited) = release_and_time_the_hand_off(&holder, &held, acquire).await;

    assert!(grant.fence > held.fence);
    if streams {
        // Probing, the next probe would come 6 s or more after the wait began.
        assert!(
            waited < Duration::from_secs(4),
            "the waiter took {waited:?} after the release, as if it had probed"
        );
        assert_eq!(
            monitor.stream_attempts().len(),
            1,
            "one stream, opened once"
        );
    } else {
        assert!(
            monitor.stream_attempts().is_empty(),
            "a stream was tried on a server without a replica set"
        );
        assert!(
            waited < Duration::from_secs(15),
            "the probing waiter took {waited:?}"
        );
    }
}

#[actix_rt::test]
async fn a_release_wakes_only_the_next_manager_in_line_and_waiting_costs_almost_nothing() {
    let streams = server_has_streams().await;
    let config = fast_config("wake_next")
        .ttl(Duration::from_secs(60))
        .acquire_retries(Duration::from_millis(250), 10);
    let holder = manager(&config).await;
    let held = holder.send(Lock::new("doc")).await.unwrap().unwrap();
    // Four managers line up in order: the first takes the turn, the second is its `next`.
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let (locks, monitor) = monitored_manager(&config, &unique_name("next")).await;
        let acquire =
            actix_rt::spawn(locks.send(Acquire::new("doc").timeout(Duration::from_secs(40))));
        waiting.push((locks, monitor, acquire));
        actix_rt::time::sleep(Duration::from_millis(300)).await;
    }
    if streams {
        until(
            "every release stream opens",
            Duration::from_secs(10),
            || {
                waiting
                    .iter()
                    .all(|(_, monitor, _)| monitor.streams_opened() >= 1)
            },
        )
        .await;
    }
    // Long enough for the first one's turn to be renewed to cover the hold.
    actix_rt::time::sleep(Duration::from_secs(4)).await;
    let window = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    let while_waiting: Vec<usize> = waiting
        .iter()
        .map(|(_, monitor, _)| monitor.sent_since(window).len())
        .collect();

    let released = Instant::now();
    holder
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
    let (first_locks, first_monitor, first) = waiting.remove(0);
    let grant = first
        .await
        .unwrap()
        .unwrap()
        .expect("the first in line is granted");
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let tries_after: Vec<usize> = waiting
        .iter()
        .map(|(_, monitor, _)| {
            monitor
                .sent_since(released)
                .iter()
                .filter(|name| *name == "findAndModify")
                .count()
        })
        .collect();
    let told: Vec<usize> = std::iter::once(&first_monitor)
        .chain(waiting.iter().map(|(_, monitor, _)| monitor))
        .map(|monitor| monitor.events_since(released))
        .collect();
    eprintln!(
        "commands in 5 s of waiting, by manager in line: {while_waiting:?}; streams told of the \
         release: {told:?}; grant attempts after it by the rest: {tries_after:?}"
    );

    assert!(
        tries_after.iter().all(|tries| *tries == 0),
        "a manager behind the next one tried at the release: {tries_after:?}"
    );
    if streams {
        // The release names the first as the holder of the turn and the second as its `next`;
        // the grant that follows reaches no stream.
        assert_eq!(
            told,
            [1, 1, 0, 0],
            "the streams that the release reached, in line order"
        );
        // An idle getMore every 5 s, a look every 10 s at most: at most 0.5 a second each.
        assert!(
            while_waiting.iter().all(|sent| *sent <= 3),
            "commands in 5 s while waiting: {while_waiting:?}"
        );
    } else {
        // Probing: the next one as fast as the fall-back's pauses, each one behind it one look
        // per acquire_period per place ahead of it at most.
        for (place, sent) in while_waiting.iter().enumerate().skip(1) {
            let most = 5_000 / (250 * place) + 1;
            assert!(
                *sent <= most,
                "the manager {place} places behind the turn sent {sent} in 5 s (at most {most})"
            );
        }
    }

    first_locks
        .send(Unlock::new(grant.lock_id))
        .await
        .unwrap()
        .unwrap();
    for (locks, _, acquire) in waiting {
        let grant = acquire
            .await
            .unwrap()
            .unwrap()
            .expect("every waiter is served");
        locks
            .send(Unlock::new(grant.lock_id))
            .await
            .unwrap()
            .unwrap();
    }
}

#[actix_rt::test]
async fn a_waiting_manager_probes_at_most_twice_a_second_per_resource_with_a_stream_four_times_without(
) {
    let streams = server_has_streams().await;
    // The defaults: acquire_period 250 ms, so the safety probe is 1 s.
    let config = fast_config("probe_rate")
        .ttl(Duration::from_secs(60))
        .acquire_retries(Duration::from_millis(250), 10);
    let holder = manager(&config).await;
    let held_a = holder.send(Lock::new("a")).await.unwrap().unwrap();
    let held_b = holder.send(Lock::new("b")).await.unwrap().unwrap();
    let (waiting, monitor) = monitored_manager(&config, &unique_name("rate")).await;

    let waits: Vec<_> = ["a", "a", "a", "b", "b", "b"]
        .into_iter()
        .map(|r| actix_rt::spawn(waiting.send(Acquire::new(r).timeout(Duration::from_secs(30)))))
        .collect();
    if streams {
        until("the release stream opens", Duration::from_secs(10), || {
            monitor.streams_opened() >= 1
        })
        .await;
    }
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let window_start = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    let probes = monitor.count("findAndModify", window_start) + monitor.count("find", window_start);
    let releasing = Instant::now();
    let closed_early = monitor.count("killCursors", window_start);

    holder
        .send(Unlock::new(held_a.lock_id))
        .await
        .unwrap()
        .unwrap();
    holder
        .send(Unlock::new(held_b.lock_id))
        .await
        .unwrap()
        .unwrap();
    for wait in waits {
        let grant = wait
            .await
            .unwrap()
            .unwrap()
            .expect("every waiter is served");
        waiting
            .send(Unlock::new(grant.lock_id))
            .await
            .unwrap()
            .unwrap();
    }

    if streams {
        // Two resources, 5 s: at most 2 requests a second each.
        assert!(probes <= 20, "{probes} requests in 5 s for two resources");
        assert_eq!(
            monitor.stream_attempts().len(),
            1,
            "one stream per manager, whatever the number of resources and waiters"
        );
        assert_eq!(closed_early, 0, "the stream closed while waiters needed it");
        until(
            "the stream closes when the last waiter leaves",
            Duration::from_secs(10),
            || monitor.count("killCursors", releasing) >= 1,
        )
        .await;
    } else {
        // Probing every 250-350 ms once the pauses have grown: at most 4 a second each.
        assert!(
            (20..=40).contains(&probes),
            "{probes} probes in 5 s for two resources"
        );
        assert!(monitor.stream_attempts().is_empty());
    }
}

#[actix_rt::test]
async fn a_stream_whose_connection_closes_resumes_after_its_last_event_on_secantus() {
    if !server_has_streams().await {
        // nx-27017 has neither streams nor failpoints: the waiter probes instead (the tests
        // above show it), and no stream is ever opened to be resumed.
        return assert_no_stream_is_tried().await;
    }
    let _failpoint = FAILPOINT.lock().await;
    let app = unique_name("resume");
    let config = slow_probing("stream_resume");
    let holder = manager(&config).await;
    let held = holder.send(Lock::new("doc")).await.unwrap().unwrap();
    let (waiting, monitor) = monitored_manager(&config, &app).await;

    let acquire =
        actix_rt::spawn(waiting.send(Acquire::new("doc").timeout(Duration::from_secs(60))));
    until("the release stream opens", Duration::from_secs(10), || {
        monitor.streams_opened() >= 1
    })
    .await;
    fail_command(
        doc! { "times": 1 }.into(),
        doc! { "failCommands": ["getMore"], "closeConnection": true, "appName": &app },
    )
    .await;
    until(
        "the stream is opened again after its last event",
        Duration::from_secs(10),
        || monitor.stream_attempts().iter().any(|s| s.resumed) && monitor.streams_opened() >= 2,
    )
    .await;
    fail_command_off().await;

    let (grant, waited) = release_and_time_the_hand_off(&holder, &held, acquire).await;

    assert!(grant.fence > held.fence);
    assert!(
        waited < Duration::from_secs(4),
        "the resumed stream did not tell the waiter: it took {waited:?}"
    );
}

#[actix_rt::test]
async fn a_stream_that_keeps_failing_gives_way_to_probing_on_secantus() {
    if !server_has_streams().await {
        return assert_no_stream_is_tried().await;
    }
    let _failpoint = FAILPOINT.lock().await;
    let app = unique_name("fallback");
    let config = fast_config("stream_fallback")
        .ttl(Duration::from_secs(60))
        .acquire_retries(Duration::from_millis(250), 10);
    let holder = manager(&config).await;
    let held = holder.send(Lock::new("doc")).await.unwrap().unwrap();
    // Every change stream this client opens fails, with an error that is not "unsupported".
    fail_command(
        "alwaysOn".into(),
        doc! { "failCommands": ["aggregate"], "errorCode": 2, "appName": &app },
    )
    .await;
    let (waiting, monitor) = monitored_manager(&config, &app).await;

    let acquire =
        actix_rt::spawn(waiting.send(Acquire::new("doc").timeout(Duration::from_secs(30))));
    until("three tries at a stream", Duration::from_secs(10), || {
        monitor.stream_attempts().len() >= 3
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let window_start = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    let probes = monitor.count("findAndModify", window_start) + monitor.count("find", window_start);
    let attempts = monitor.stream_attempts().len();
    fail_command_off().await;

    holder
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
    let grant = acquire.await.unwrap().unwrap();

    assert!(grant.is_ok(), "the probing waiter is granted: {grant:?}");
    assert_eq!(
        attempts, 3,
        "it stopped trying streams after three failures"
    );
    // Probing every 250-350 ms: 8 to 12 in 3 s; a waiter still relying on a stream would send
    // about 3.
    assert!(
        (6..=13).contains(&probes),
        "{probes} probes in 3 s of probing at a 250 ms period"
    );
}

#[actix_rt::test]
async fn a_manager_waiting_with_a_long_acquire_period_keeps_its_turn_live_through_the_hold() {
    // Pauses of 5 s and more between probes (the fall-back's grow to 5-7 s), against a turn
    // taken for 5 s: the manager renews it in time, once, to last until the holder's lease
    // ends (plus the turn's 1 s grace), and then needs to write nothing while it waits.
    let config = fast_config("turn_live")
        .ttl(Duration::from_secs(60))
        .acquire_retries(Duration::from_secs(5), 10);
    let holder = manager(&config).await;
    let held = holder.send(Lock::new("doc")).await.unwrap().unwrap();
    let waiting = manager(&config).await;
    let acquire =
        actix_rt::spawn(waiting.send(Acquire::new("doc").timeout(Duration::from_secs(40))));

    // Watched for 14 s, every 200 ms: once the waiting manager has the turn, it stays its own
    // and live (its `until`, server-clock milliseconds, never behind this machine's clock).
    let watched = Instant::now();
    let mut turn_of: Option<String> = None;
    let mut renewals = 0;
    let mut last_until = 0;
    while watched.elapsed() < Duration::from_secs(14) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let stored = stored(&config, "doc").await.expect("the held document");
        if let Ok(turn) = stored.get_document("turn") {
            let manager = turn.get_str("manager").unwrap_or_default().to_owned();
            let until = stored_integer(turn, "until");
            if !manager.is_empty() {
                if let Some(first) = &turn_of {
                    assert_eq!(&manager, first, "the turn changed hands with one waiter");
                }
                assert!(
                    until >= now_ms,
                    "the waiting manager's turn lapsed {} ms ago, {:?} into the wait",
                    now_ms - until,
                    watched.elapsed()
                );
                if until != last_until && last_until != 0 {
                    renewals += 1;
                }
                last_until = until;
                turn_of = Some(manager);
            }
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(turn_of.is_some(), "the waiting manager never took the turn");
    let lease_end_ms = held
        .expires_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (1..=2).contains(&renewals),
        "the turn was renewed {renewals} times in 14 s: it should be renewed once to cover the \
         hold"
    );
    assert!(
        last_until >= lease_end_ms && last_until <= lease_end_ms + 6_000,
        "the renewed turn lasts until {last_until}, not the hold's lease end {lease_end_ms} \
         plus 5 s"
    );

    let (grant, _) = release_and_time_the_hand_off(&holder, &held, acquire).await;
    assert!(grant.fence > held.fence);
}

#[actix_rt::test]
async fn a_lease_that_ends_wakes_the_waiter_without_an_event() {
    let streams = server_has_streams().await;
    // The holder never renews and nobody purges: its lease just ends, which the stream does not
    // report. The waiter's fall-back pauses (12 s at first) and safety probe (8 min) are long:
    // only the lease end it read from the line wakes it in time.
    let waiter_config = fast_config("expiry").acquire_retries(Duration::from_secs(120), 10);
    let holder_config = waiter_config.clone().ttl(Duration::from_secs(3));
    let holder = manager(&holder_config).await;
    let (waiting, monitor) = monitored_manager(&waiter_config, &unique_name("expiry")).await;
    let started = Instant::now();
    let held = holder.send(Lock::new("doc")).await.unwrap().unwrap();

    let grant = waiting
        .send(Acquire::new("doc").timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the waiter takes over the ended lease");
    let waited = started.elapsed();

    assert!(grant.fence > held.fence);
    assert!(
        grant.granted_at >= held.expires_at,
        "granted before the lease ended"
    );
    // nx-27017 compares dates by the whole second, so its takeover may come up to 1 s late.
    assert!(
        waited < Duration::from_secs(8),
        "the waiter took {waited:?} for a 3 s lease, as if it had waited for a probe"
    );
    if streams {
        assert_eq!(monitor.streams_opened(), 1, "the stream was open meanwhile");
    } else {
        assert!(monitor.stream_attempts().is_empty());
    }
}

#[actix_rt::test]
async fn a_default_wait_for_a_resource_held_elsewhere_probes_at_most_fifteen_times() {
    let streams = server_has_streams().await;
    let config = fast_config("default_wait")
        .ttl(Duration::from_secs(60))
        .acquire_retries(Duration::from_millis(250), 10);
    let holder = manager(&config).await;
    holder.send(Lock::new("doc")).await.unwrap().unwrap();
    let (waiting, monitor) = monitored_manager(&config, &unique_name("default")).await;

    let started = Instant::now();
    let refused = waiting.send(Acquire::new("doc")).await.unwrap();
    let ended = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(1)).await;

    assert!(
        matches!(refused, Err(LockError::AcquireMaxRetries { .. })),
        "{refused:?}"
    );
    // A probe is a try or a look at the line; most looks are reads.
    let probes = monitor.count("findAndModify", started) + monitor.count("find", started);
    let range = if streams { 1..=6 } else { 5..=15 };
    assert!(
        range.contains(&probes),
        "{probes} probes in a default 2.5 s wait (streams: {streams})"
    );
    assert_eq!(
        monitor.stream_attempts().is_empty(),
        !streams,
        "a stream is tried exactly where the server has them"
    );
    assert_eq!(
        monitor.count("findAndModify", ended) + monitor.count("find", ended),
        0,
        "nothing is sent after the wait ended"
    );
}

/// On a server without change streams: a manager waiting for a resource held elsewhere tries
/// no stream, and is granted by probing once it is released.
async fn assert_no_stream_is_tried() {
    let config = fast_config("no_stream").acquire_retries(Duration::from_millis(250), 10);
    let holder = manager(&config).await;
    let held = holder.send(Lock::new("doc")).await.unwrap().unwrap();
    let (waiting, monitor) = monitored_manager(&config, &unique_name("no_stream")).await;
    let acquire =
        actix_rt::spawn(waiting.send(Acquire::new("doc").timeout(Duration::from_secs(10))));
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    holder
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
    assert!(acquire.await.unwrap().unwrap().is_ok());
    assert!(monitor.stream_attempts().is_empty());
}

/// A kept-alive hold's renewal also reads the line: a manager that took the turn after the grant
/// is named by the holder's release in its one conditional write, with no read first (without
/// what the renewal saw, the grant's empty line would be guessed, the write would match
/// nothing, and the release would read the line and write again).
#[actix_rt::test]
async fn a_release_after_a_renewal_names_the_manager_that_lined_up_since_the_grant_in_one_write() {
    let config = fast_config("renewal_sees_line").ttl(Duration::from_secs(3));
    let (holder, monitor) = monitored_manager(&config, &unique_name("renewal-sees")).await;
    let grant = holder
        .send(Lock::new("baton").keep_alive(actix_mongo_lock::KeepAlive::silent()))
        .await
        .unwrap()
        .unwrap();
    let waiter = manager(&config).await;
    let waiting =
        actix_rt::spawn(waiter.send(Acquire::new("baton").timeout(Duration::from_secs(15))));
    support::poll::eventually(
        "the waiter takes the turn",
        Duration::from_secs(5),
        || async {
            stored(&config, "baton")
                .await
                .and_then(|stored| stored.get_document("turn").ok().cloned())
                .filter(|turn| !turn.get_str("manager").unwrap_or_default().is_empty())
        },
    )
    .await;
    let lined_up = Instant::now();
    // Renewals come every ttl / 3 = 1 s: wait for one after the waiter took the turn.
    until(
        "a renewal after the waiter lined up",
        Duration::from_secs(5),
        || monitor.count("findAndModify", lined_up) >= 1,
    )
    .await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;

    let releasing = Instant::now();
    holder
        .send(Unlock::new(grant.lock_id))
        .await
        .unwrap()
        .unwrap();
    let next = waiting
        .await
        .unwrap()
        .unwrap()
        .expect("the waiter is granted");
    assert!(next.fence > grant.fence);
    let sent = monitor.sent_since(releasing);
    assert_eq!(
        sent.iter().filter(|name| *name == "update").count(),
        1,
        "one conditional release: {sent:?}"
    );
    assert_eq!(
        sent.iter().filter(|name| *name == "find").count(),
        0,
        "no read of the line first: {sent:?}"
    );
}
