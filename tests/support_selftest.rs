//! Self-tests of the reliability suite's support code (tests/support/): the history checker on
//! synthetic histories, and the fault proxy against a local echo server and, in one test,
//! between the MongoDB driver and the server in MONGODB_URI.
//!
//! Run with `scripts/with-mongo cargo test --test support_selftest`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mongodb::bson::doc;
use mongodb::error::ErrorKind;
use mongodb::options::ClientOptions;
use mongodb::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::history::{History, ViolationKind};
use support::poll::until;
use support::proxy::{parse_upstream, proxied_uri, upstream_from_env, FaultProxy};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------------------------
// History checker
// ---------------------------------------------------------------------------------------------

/// A fixed base time plus `ms` milliseconds, for synthetic histories.
fn at(base: SystemTime, ms: u64) -> SystemTime {
    base + Duration::from_millis(ms)
}

#[test]
fn history_clean_sequential_history_passes() {
    let base = SystemTime::now();
    let h = History::new();
    // a: [100, 200) released; b: [210, 300) released; c on another resource overlaps a.
    let a = h.granted("m1", "r", 1, at(base, 90), at(base, 100), at(base, 5_000));
    h.released(a, at(base, 200), at(base, 205));
    let b = h.granted("m2", "r", 2, at(base, 201), at(base, 210), at(base, 5_100));
    h.released(b, at(base, 300), at(base, 302));
    let c = h.granted(
        "m3",
        "other",
        1,
        at(base, 95),
        at(base, 150),
        at(base, 5_000),
    );
    h.lost(c, at(base, 400));
    let d = h.granted("m1", "r", 3, at(base, 299), at(base, 310), at(base, 900));
    let _ = d; // never released: its lease ran out

    let summary = h.assert_ok();
    assert_eq!(summary.holds, 4);
    assert_eq!(summary.resources, 2);
    assert_eq!(summary.released, 2);
    assert_eq!(summary.lost, 1);
    assert_eq!(summary.ran_out, 1);
    assert_eq!(summary.per_resource["r"], 3);
    assert_eq!(summary.per_resource["other"], 1);
}

#[test]
fn history_overlapping_holds_fail_and_message_names_both() {
    let base = SystemTime::now();
    let h = History::new();
    let a = h.granted(
        "alpha",
        "res-1",
        1,
        at(base, 0),
        at(base, 10),
        at(base, 5_000),
    );
    let b = h.granted(
        "beta",
        "res-1",
        2,
        at(base, 50),
        at(base, 60),
        at(base, 5_000),
    );
    h.released(a, at(base, 100), at(base, 110));
    h.released(b, at(base, 200), at(base, 210));

    let err = h.check().expect_err("overlapping holds must fail");
    assert!(err.has(ViolationKind::Overlap), "{err}");
    assert_eq!(err.list.len(), 1, "{err}");
    let msg = err.to_string();
    for needle in [
        "Overlap",
        "hold #0",
        "hold #1",
        "\"alpha\"",
        "\"beta\"",
        "\"res-1\"",
        "fence=1",
        "fence=2",
    ] {
        assert!(msg.contains(needle), "message lacks {needle:?}:\n{msg}");
    }

    let panic = std::panic::catch_unwind(|| h.assert_ok()).expect_err("assert_ok must panic");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        text.contains("\"alpha\"") && text.contains("\"beta\""),
        "panic message lacks the pair:\n{text}"
    );
}

#[test]
fn history_successor_granted_before_release_was_sent_fails() {
    let base = SystemTime::now();
    let h = History::new();
    let a = h.granted("m1", "r", 1, at(base, 0), at(base, 10), at(base, 5_000));
    // b holds the grant at 150 while a only starts releasing at 200: a definite double grant.
    let b = h.granted("m2", "r", 2, at(base, 100), at(base, 150), at(base, 5_000));
    h.released(a, at(base, 200), at(base, 210));
    h.released(b, at(base, 300), at(base, 310));
    let err = h.check().expect_err("must fail");
    assert!(err.has(ViolationKind::Overlap), "{err}");
}

#[test]
fn history_equal_fences_fail() {
    let base = SystemTime::now();
    let h = History::new();
    let a = h.granted("m1", "r", 7, at(base, 0), at(base, 10), at(base, 5_000));
    h.released(a, at(base, 100), at(base, 110));
    let b = h.granted("m2", "r", 7, at(base, 120), at(base, 130), at(base, 5_000));
    h.released(b, at(base, 200), at(base, 210));
    // The same fence on another resource is fine.
    h.granted("m3", "s", 7, at(base, 0), at(base, 10), at(base, 50));
    let err = h.check().expect_err("equal fences must fail");
    assert!(err.has(ViolationKind::DuplicateFence), "{err}");
    assert_eq!(err.list.len(), 1, "{err}");
    assert!(err.to_string().contains("same fence 7"), "{err}");
}

#[test]
fn history_lower_fence_after_a_certain_earlier_grant_fails() {
    let base = SystemTime::now();
    let h = History::new();
    let a = h.granted("m1", "r", 5, at(base, 0), at(base, 10), at(base, 5_000));
    h.released(a, at(base, 100), at(base, 110));
    let b = h.granted("m2", "r", 4, at(base, 120), at(base, 130), at(base, 5_000));
    h.released(b, at(base, 200), at(base, 210));
    let err = h.check().expect_err("a decreasing fence must fail");
    assert!(err.has(ViolationKind::FenceOrder), "{err}");
    assert!(!err.has(ViolationKind::Overlap), "{err}");
    assert!(err.to_string().contains("fence 5 is not below 4"), "{err}");
}

/// A shared hold of `manager` on "r" with `fence`, granted at `from` ms and released at `to`.
fn shared(h: &History, base: SystemTime, manager: &str, fence: i64, from: u64, to: u64) {
    let id = h.granted_mode(
        manager,
        "r",
        fence,
        at(base, from - 5),
        at(base, from),
        at(base, 5_000),
        true,
    );
    h.released(id, at(base, to), at(base, to + 2));
}

#[test]
fn history_shared_holds_may_overlap_up_to_their_limit() {
    let base = SystemTime::now();
    let h = History::new().with_max_holders(2);
    shared(&h, base, "m1", 1, 10, 100);
    shared(&h, base, "m2", 2, 20, 110);
    // Granted as the first ended: two at once, never three.
    shared(&h, base, "m3", 3, 100, 200);
    let summary = h.assert_ok();
    assert_eq!(summary.holds, 3);
}

#[test]
fn history_a_shared_hold_beside_an_exclusive_one_fails() {
    let base = SystemTime::now();
    let h = History::new();
    shared(&h, base, "reader", 1, 10, 100);
    let w = h.granted(
        "writer",
        "r",
        2,
        at(base, 40),
        at(base, 50),
        at(base, 5_000),
    );
    h.released(w, at(base, 150), at(base, 160));
    let err = h.check().expect_err("a writer beside a reader must fail");
    assert!(err.has(ViolationKind::Overlap), "{err}");
    assert!(err.to_string().contains("shared=true"), "{err}");
}

#[test]
fn history_more_shared_holds_than_the_limit_fail_and_name_the_one_over() {
    let base = SystemTime::now();
    let h = History::new().with_max_holders(2);
    shared(&h, base, "m1", 1, 10, 100);
    shared(&h, base, "m2", 2, 20, 100);
    shared(&h, base, "m3", 3, 30, 100);
    let err = h.check().expect_err("three at once, limit 2, must fail");
    assert!(err.has(ViolationKind::TooManyHolders), "{err}");
    assert_eq!(err.list.len(), 1, "{err}");
    assert!(err.to_string().contains("hold #2"), "{err}");
    assert!(!err.has(ViolationKind::Overlap), "{err}");
    // Without a limit, any number of shared holds may overlap.
    let unlimited = History::new();
    for (fence, manager) in [(1, "m1"), (2, "m2"), (3, "m3")] {
        shared(&unlimited, base, manager, fence, 10 + fence as u64, 100);
    }
    unlimited.assert_ok();
}

#[test]
fn history_grants_with_overlapping_windows_only_need_distinct_fences() {
    // Two requests in flight at once. b's reply came first (fence 1, a lease that ran out at
    // 45); a (fence 2) was granted after that, just before its reply at 50. Neither grant
    // window certainly precedes the other, so only distinct fences are required.
    let base = SystemTime::now();
    let h = History::new();
    let a = h.granted("m1", "r", 2, at(base, 0), at(base, 50), at(base, 5_000));
    h.released(a, at(base, 60), at(base, 70));
    let b = h.granted("m2", "r", 1, at(base, 10), at(base, 40), at(base, 45));
    let _ = b;
    h.assert_ok();
}

#[test]
fn history_expired_lease_then_takeover_passes() {
    let base = SystemTime::now();
    let h = History::new();
    // a's lease ends at 1_000 and a never releases; b takes over at 1_050.
    let a = h.granted("m1", "r", 1, at(base, 0), at(base, 10), at(base, 1_000));
    let b = h.granted(
        "m2",
        "r",
        2,
        at(base, 900),
        at(base, 1_050),
        at(base, 2_000),
    );
    h.released(b, at(base, 1_500), at(base, 1_510));
    // a only learns later that it lost the lock (its Unlock changed nothing).
    h.lost(a, at(base, 1_700));
    let summary = h.assert_ok();
    assert_eq!(summary.lost, 1);

    // Taking over while b's lease is live (b releases only at 1_500) is a violation, though.
    h.granted(
        "m3",
        "r",
        3,
        at(base, 1_200),
        at(base, 1_250),
        at(base, 3_000),
    );
    let err = h.check().expect_err("takeover before expiry must fail");
    assert!(err.has(ViolationKind::Overlap), "{err}");
}

#[test]
fn history_successor_granted_before_release_reply_recorded_passes() {
    let base = SystemTime::now();
    let h = History::new();
    let a = h.granted("m1", "r", 1, at(base, 0), at(base, 10), at(base, 5_000));
    // a sends Unlock at 100; the server releases at ~101 and grants b at ~102; b's grant reply
    // (103) arrives before a's Unlock reply (120).
    let b = h.granted("m2", "r", 2, at(base, 50), at(base, 103), at(base, 5_050));
    h.released(a, at(base, 100), at(base, 120));
    h.released(b, at(base, 200), at(base, 210));
    h.assert_ok();
}

#[test]
fn history_extension_moves_the_lease_end() {
    let base = SystemTime::now();
    let h = History::new();
    let a = h.granted("m1", "r", 1, at(base, 0), at(base, 10), at(base, 1_000));
    h.extended(a, at(base, 3_000));
    h.granted(
        "m2",
        "r",
        2,
        at(base, 1_100),
        at(base, 1_200),
        at(base, 4_000),
    );
    let err = h
        .check()
        .expect_err("takeover of an extended lease must fail");
    assert!(err.has(ViolationKind::Overlap), "{err}");
}

#[test]
fn history_tolerance_absorbs_jitter_only() {
    let base = SystemTime::now();
    // b is granted 3 ms before a's lease ends by our clock (say the server's clock runs ahead).
    let record = |h: &History| {
        h.granted("m1", "r", 1, at(base, 0), at(base, 10), at(base, 1_000));
        h.granted("m2", "r", 2, at(base, 990), at(base, 997), at(base, 2_000));
    };
    let strict = History::new();
    record(&strict);
    assert!(strict.check().is_err());
    let tolerant = History::new().with_tolerance(Duration::from_millis(5));
    record(&tolerant);
    tolerant.assert_ok();
    // 50 ms of overlap is no jitter.
    tolerant.granted("m3", "s", 1, at(base, 0), at(base, 10), at(base, 1_000));
    tolerant.granted("m4", "s", 2, at(base, 900), at(base, 950), at(base, 2_000));
    assert!(tolerant.check().is_err());
}

#[test]
fn history_is_shared_across_threads() {
    let h = History::new();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let resource = format!("r{t}");
                    let fence = i as i64 + 1;
                    let requested = SystemTime::now();
                    let granted = SystemTime::now();
                    let id = h.granted(
                        &format!("m{t}"),
                        &resource,
                        fence,
                        requested,
                        granted,
                        granted + Duration::from_secs(30),
                    );
                    let sent = SystemTime::now();
                    h.released(id, sent, SystemTime::now());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let summary = h.assert_ok();
    assert_eq!(summary.holds, 100);
    assert_eq!(summary.resources, 4);
    assert_eq!(summary.released, 100);
    assert_eq!(h.len(), 100);
}

// ---------------------------------------------------------------------------------------------
// Fault proxy against a local echo server
// ---------------------------------------------------------------------------------------------

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(5);

/// A TCP echo server on 127.0.0.1:0; it lives as long as the test's runtime.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = tokio::time::timeout(LONG, TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect to the proxy timed out")
        .expect("connect to the proxy failed");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `msg` and reads the same number of bytes back, failing the test after `LONG`.
async fn echo(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.expect("write to the proxy");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(LONG, stream.read_exact(&mut back))
        .await
        .expect("no echo within 5 s")
        .expect("reading the echo failed");
    assert_eq!(back, msg);
}

/// Whether the connection is closed (read gives EOF or an error) within `within`.
async fn closes_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn proxy_passes_through() {
    init_tracing();
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    assert!(proxy.local_addr().ip().is_loopback());
    assert_eq!(
        proxy.uri(),
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true",
            proxy.local_addr().port()
        )
    );
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    echo(&mut a, b"hello").await;
    echo(&mut b, b"world").await;
    // A large message crosses several chunks.
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    echo(&mut a, &big).await;
    assert_eq!(proxy.connections_opened(), 2);
    assert_eq!(proxy.open_connections(), 2);
    drop(a);
    until("one connection to close", LONG, || {
        proxy.open_connections() == 1
    })
    .await;
}

#[actix_rt::test]
async fn proxy_works_on_the_actix_runtime() {
    init_tracing();
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut a = connect(&proxy).await;
    echo(&mut a, b"on actix").await;
    proxy.drop_connections();
    assert!(closes_within(&mut a, LONG).await);
    let mut b = connect(&proxy).await;
    echo(&mut b, b"again").await;
}

#[tokio::test]
async fn proxy_latency_delays_each_direction() {
    init_tracing();
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut a = connect(&proxy).await;
    echo(&mut a, b"warm").await;

    let delay = Duration::from_millis(200);
    proxy.add_latency(delay);
    let started = Instant::now();
    echo(&mut a, b"slow").await;
    let took = started.elapsed();
    // Request and reply are each delayed.
    assert!(
        took >= 2 * delay,
        "round trip took {took:?}, expected >= {:?}",
        2 * delay
    );

    proxy.pass_through();
    let started = Instant::now();
    echo(&mut a, b"fast").await;
    assert!(
        started.elapsed() < delay,
        "latency not removed: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn proxy_drop_connections_closes_open_connections() {
    init_tracing();
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    echo(&mut a, b"before").await;
    echo(&mut b, b"before").await;

    // Both connections sit idle in read when the fault hits.
    proxy.drop_connections();
    assert!(closes_within(&mut a, LONG).await, "a not closed");
    assert!(closes_within(&mut b, LONG).await, "b not closed");
    until("no open connection", LONG, || proxy.open_connections() == 0).await;

    // New connections are still accepted.
    let mut c = connect(&proxy).await;
    echo(&mut c, b"after").await;
    assert_eq!(proxy.connections_opened(), 3);
}

#[tokio::test]
async fn proxy_black_hole_delivers_nothing_until_restore() {
    init_tracing();
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut old = connect(&proxy).await;
    echo(&mut old, b"before").await;

    proxy.black_hole();
    let mut buf = [0u8; 64];
    old.write_all(b"into the void").await.unwrap();
    assert!(
        tokio::time::timeout(SHORT, old.read(&mut buf))
            .await
            .is_err(),
        "an old connection got a reply through the black hole"
    );
    // New connections are accepted but get nothing either.
    let mut new = connect(&proxy).await;
    new.write_all(b"anyone?").await.unwrap();
    assert!(
        tokio::time::timeout(SHORT, new.read(&mut buf))
            .await
            .is_err(),
        "a new connection got a reply through the black hole"
    );
    assert_eq!(proxy.open_connections(), 2);

    // Restore closes the black-holed connections without delivering the held bytes...
    proxy.restore();
    assert!(
        closes_within(&mut old, LONG).await,
        "old connection not closed"
    );
    assert!(
        closes_within(&mut new, LONG).await,
        "new connection not closed"
    );
    // ...and new connections work again.
    let mut after = connect(&proxy).await;
    echo(&mut after, b"after").await;
}

#[tokio::test]
async fn proxy_refuse_new_keeps_open_connections_working() {
    init_tracing();
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut old = connect(&proxy).await;
    echo(&mut old, b"before").await;

    proxy.refuse_new();
    // The kernel may complete the handshake, but the proxy closes the connection at once.
    match TcpStream::connect(proxy.local_addr()).await {
        Err(_) => {}
        Ok(mut refused) => {
            let _ = refused.write_all(b"let me in").await;
            assert!(
                closes_within(&mut refused, LONG).await,
                "refused connection stayed open"
            );
        }
    }
    until("the refusal to be counted", LONG, || {
        proxy.connections_refused() == 1
    })
    .await;
    echo(&mut old, b"still here").await;
    assert_eq!(proxy.connections_opened(), 1);

    proxy.restore();
    let mut after = connect(&proxy).await;
    echo(&mut after, b"after").await;
    echo(&mut old, b"old too").await;
}

#[tokio::test]
async fn proxy_drop_stops_listener_and_connections() {
    init_tracing();
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let addr = proxy.local_addr();
    let mut a = connect(&proxy).await;
    echo(&mut a, b"hi").await;
    let clone = proxy.clone();
    drop(proxy);
    // A clone keeps it running.
    echo(&mut a, b"still").await;
    drop(clone);
    assert!(
        closes_within(&mut a, LONG).await,
        "connection outlived the proxy"
    );
    let deadline = Instant::now() + LONG;
    loop {
        match TcpStream::connect(addr).await {
            Err(_) => break,
            Ok(mut s) => assert!(
                closes_within(&mut s, SHORT).await,
                "a dropped proxy still serves connections"
            ),
        }
        assert!(Instant::now() < deadline, "listener still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn parse_upstream_reads_mongodb_uris() {
    let addr = |s: &str| parse_upstream(s).unwrap().to_string();
    assert_eq!(
        addr("mongodb://127.0.0.1:35799/?directConnection=true"),
        "127.0.0.1:35799"
    );
    assert_eq!(
        addr("mongodb://user:p%40ss@127.0.0.1:4000/admin"),
        "127.0.0.1:4000"
    );
    assert_eq!(
        addr("mongodb://127.0.0.1:4001,127.0.0.1:4002/?replicaSet=rs"),
        "127.0.0.1:4001"
    );
    assert_eq!(addr("mongodb://127.0.0.1"), "127.0.0.1:27017");
    assert_eq!(addr("mongodb://[::1]:4003/"), "[::1]:4003");
    assert!(parse_upstream("mongodb+srv://cluster.example/").is_err());
    assert!(parse_upstream("http://127.0.0.1:1/").is_err());

    let proxy: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(
        proxied_uri(
            "mongodb://u:pw@127.0.0.1:4000/admin?authSource=admin",
            proxy
        )
        .unwrap(),
        "mongodb://u:pw@127.0.0.1:9/admin?authSource=admin&directConnection=true"
    );
    assert_eq!(
        proxied_uri(
            "mongodb://127.0.0.1:4000/?directConnection=false&w=1",
            proxy
        )
        .unwrap(),
        "mongodb://127.0.0.1:9/?w=1&directConnection=true"
    );
    assert_eq!(
        proxied_uri("mongodb://127.0.0.1:4000", proxy).unwrap(),
        "mongodb://127.0.0.1:9/?directConnection=true"
    );
}

// ---------------------------------------------------------------------------------------------
// Fault proxy between the MongoDB driver and the server in MONGODB_URI
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_between_driver_and_mongodb() {
    init_tracing();
    let proxy = FaultProxy::start(upstream_from_env()).await.unwrap();
    let mut options = ClientOptions::parse(proxy.uri_from_env()).await.unwrap();
    options.app_name = Some("support-selftest".into());
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(1));
    options.heartbeat_freq = Some(Duration::from_millis(500));
    let client = Client::with_options(options).unwrap();
    let admin = client.database("admin");
    let ping = || async {
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(15),
            admin.run_command(doc! { "ping": 1 }),
        )
        .await
        .expect("ping hung for 15 s");
        (result, started.elapsed())
    };

    // Through a healthy proxy.
    let (result, _) = ping().await;
    result.expect("ping through the proxy");
    assert!(proxy.connections_opened() >= 1);

    // Cut every connection. The driver does not retry a plain command, so the first one may
    // still run on a cut pooled connection and fail with a network error (it then clears the
    // pool); the one after it must succeed on a new connection.
    let opened = proxy.connections_opened();
    proxy.drop_connections();
    let (result, _) = ping().await;
    if let Err(e) = result {
        assert!(
            matches!(
                *e.kind,
                ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
            ),
            "first ping after drop_connections failed with a non-network error: {e}"
        );
        tracing::info!(%e, "first ping after drop_connections hit a cut connection");
        let (result, _) = ping().await;
        result.expect("second ping after drop_connections");
    }
    assert!(
        proxy.connections_opened() > opened,
        "the driver did not reconnect"
    );

    // Black hole: the command fails within a few seconds instead of hanging.
    proxy.black_hole();
    let (result, took) = ping().await;
    let err = result.expect_err("ping through a black hole succeeded");
    tracing::info!(?took, %err, "ping through the black hole failed as expected");
    assert!(took < Duration::from_secs(10), "failing took {took:?}");

    // Restore: commands succeed again (the driver may need a heartbeat to rediscover).
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ping().await.0 {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no ping succeeded after restore: {e}"
                );
                tracing::info!(%e, "ping after restore failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
