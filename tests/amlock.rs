//! The `amlock` command-line tool (feature `cli`), run as an operator runs it, against the real
//! test server: `list`, `status`, `revoke` and `watch`, in text and JSON, and its errors.

mod support;

use std::time::{Duration, Instant};

use actix_mongo_lock::{Acquire, Lock, LockConfig, LostReason, Status, Unlock};
use serde_json::Value;
use support::contender::crate_binary;
use support::losses::LossCollector;
use support::poll::eventually;
use support::server::{fast_config, manager, snapshot, uri};

/// What one run of the tool printed, and how it ended.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `amlock` on `config`'s lock family with `args`.
async fn amlock(config: &LockConfig, args: &[&str]) -> Ran {
    let mut all = vec![
        "--uri",
        &uri(),
        "--family",
        &config.name,
        "--database",
        &config.database,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    run(&all).await
}

/// The tool, built before a test sets anything up (the first build takes a while).
fn tool() -> String {
    crate_binary("amlock", "cli")
}

async fn run(args: &[String]) -> Ran {
    let output = tokio::process::Command::new(tool())
        .args(args)
        .env_remove("MONGODB_URI")
        .kill_on_drop(true)
        .output()
        .await
        .expect("amlock runs");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `amlock watch --json --every-ms EVERY --for-s 6` on `config`'s family while `locks`
/// holds `press` for `hold_for` (taken 2 s in, once the tool has made its first look with
/// nothing held); the events it printed, and the grant's fence.
async fn watched(
    config: &LockConfig,
    locks: &actix::Addr<actix_mongo_lock::LockManager>,
    every_ms: &str,
    hold_for: Duration,
) -> (Vec<Value>, i64) {
    let (config_for_tool, every_ms) = (config.clone(), every_ms.to_owned());
    let watching = actix_rt::spawn(async move {
        let args = ["watch", "--json", "--every-ms", &every_ms, "--for-s", "6"];
        amlock(&config_for_tool, &args).await
    });
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let grant = locks.send(Lock::new("press")).await.unwrap().unwrap();
    actix_rt::time::sleep(hold_for).await;
    locks
        .send(Unlock::new(grant.lock_id))
        .await
        .unwrap()
        .unwrap();
    let ran = watching.await.unwrap();
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let events = ran
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("one JSON event per line"))
        .collect();
    (events, grant.fence)
}

/// `list` and `status` show each hold with its fence and holder, and the managers waiting.
#[actix_rt::test]
async fn list_and_status_show_the_holds_and_who_waits_in_text_and_json() {
    tool();
    let config = fast_config("amlock_list").ttl(Duration::from_secs(20));
    let holder = manager(&config.clone().owner("holder")).await;
    let waiter = manager(&config.clone().owner("waiter")).await;
    let grant = holder.send(Lock::new("press")).await.unwrap().unwrap();
    let shared = holder.send(Lock::shared("catalog")).await.unwrap().unwrap();
    let waiting =
        actix_rt::spawn(waiter.send(Acquire::new("press").timeout(Duration::from_secs(30))));
    eventually("the waiter takes a place", Duration::from_secs(10), || {
        let holder = holder.clone();
        async move {
            let status = holder.send(Status::new("press")).await.ok()?.ok()??;
            (status.line.turn.is_some() || !status.line.waiting.is_empty()).then_some(())
        }
    })
    .await;

    let listed = amlock(&config, &["list", "--json"]).await;
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let holds: Value = serde_json::from_str(listed.stdout.trim()).expect("one JSON array");
    let holds = holds.as_array().expect("an array");
    assert_eq!(holds.len(), 2, "{holds:?}");
    let press = holds
        .iter()
        .find(|h| h["resource_id"] == "press")
        .expect("press listed");
    assert_eq!(press["fence"], grant.fence);
    assert_eq!(press["owner"], "holder");
    assert_eq!(press["shared"], false);
    let in_line = press["line"]["turn"]
        .as_str()
        .or_else(|| press["line"]["waiting"][0].as_str())
        .unwrap_or_else(|| panic!("someone in line: {press}"));
    assert!(in_line.starts_with("waiter@"), "{in_line}");
    let catalog = holds
        .iter()
        .find(|h| h["resource_id"] == "catalog")
        .expect("catalog listed");
    assert_eq!(catalog["fence"], shared.fence);
    assert_eq!(catalog["shared"], true);

    let status = amlock(&config, &["status", "press"]).await;
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let row = status.stdout.lines().nth(1).expect("a header and a row");
    assert!(row.starts_with("press "), "{row}");
    assert!(row.contains(&format!(" {} ", grant.fence)), "{row}");
    assert!(
        row.contains("exclusive") && row.contains("holder@"),
        "{row}"
    );
    assert!(row.contains("waiter@"), "the line is shown: {row}");
    let free = amlock(&config, &["status", "nothing-here"]).await;
    assert_eq!(free.code, Some(0), "{}", free.stderr);
    assert_eq!(free.stdout.trim(), "nothing-here: not held");

    holder
        .send(Unlock::new(grant.lock_id))
        .await
        .unwrap()
        .unwrap();
    let served = waiting.await.unwrap().unwrap().unwrap();
    waiter
        .send(Unlock::new(served.lock_id))
        .await
        .unwrap()
        .unwrap();
}

/// `revoke` with a stale fence exits 3 and writes nothing; with the live hold's fence it ends
/// that hold, and the holder's keep-alive is told `Revoked` with the reason given.
#[actix_rt::test]
async fn revoke_ends_exactly_the_hold_with_that_fence() {
    tool();
    let ttl = Duration::from_secs(3);
    let config = fast_config("amlock_revoke").ttl(ttl);
    let holder = manager(&config.clone().owner("stuck")).await;
    let losses = LossCollector::default();
    let grant = holder
        .send(Lock::new("ledger").keep_alive(losses.keep_alive()))
        .await
        .unwrap()
        .unwrap();
    let before = snapshot(&config).await;

    let stale = (grant.fence + 1).to_string();
    let refused = amlock(&config, &["revoke", "ledger", "--fence", &stale]).await;
    assert_eq!(
        refused.code,
        Some(3),
        "{} {}",
        refused.stdout,
        refused.stderr
    );
    assert!(
        refused.stdout.contains("nothing changed"),
        "{}",
        refused.stdout
    );
    assert_eq!(
        snapshot(&config).await,
        before,
        "a stale fence writes nothing"
    );

    let fence = grant.fence.to_string();
    let revoked = amlock(
        &config,
        &[
            "revoke", "ledger", "--fence", &fence, "--reason", "OPS-19", "--json",
        ],
    )
    .await;
    assert_eq!(revoked.code, Some(0), "{}", revoked.stderr);
    let outcome: Value = serde_json::from_str(revoked.stdout.trim()).expect("JSON");
    assert_eq!(outcome["outcome"], "revoked");
    assert_eq!(outcome["owner"], "stuck");
    let retired = holder.send(Status::new("ledger")).await.unwrap().unwrap();
    assert!(
        retired.is_some_and(|hold| hold.revoked),
        "retired until its lease ends"
    );
    let (_, lost) = losses.first_told("the holder is told", ttl).await;
    assert_eq!(lost.reason, LostReason::Revoked);
    assert_eq!(lost.revoked_because.as_deref(), Some("OPS-19"));
}

/// `watch` prints a line per change: the hold granted, then released.
#[actix_rt::test]
async fn watch_prints_each_grant_and_release() {
    tool();
    let config = fast_config("amlock_watch");
    let locks = manager(&config).await;
    let (events, fence) = watched(&config, &locks, "100", Duration::from_secs(1)).await;
    let events: Vec<(String, i64)> = events
        .iter()
        .map(|event| {
            assert_eq!(event["hold"]["resource_id"], "press", "{event}");
            (
                event["event"].as_str().unwrap().to_owned(),
                event["hold"]["fence"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            ("granted".to_owned(), fence),
            ("released".to_owned(), fence)
        ]
    );
}

/// Bad input and a missing or unreachable database end with exit code 1 and a message, the
/// unreachable one within the request bound it was given.
#[actix_rt::test]
async fn bad_input_and_an_unreachable_database_exit_with_a_message() {
    let config = fast_config("amlock_bad");
    let zero = amlock(&config, &["revoke", "ledger", "--fence", "0"]).await;
    assert_eq!(zero.code, Some(1));
    assert!(
        zero.stderr.contains("invalid revocation"),
        "{}",
        zero.stderr
    );

    let no_uri = run(&["--family".to_owned(), "x".to_owned(), "list".to_owned()]).await;
    assert_eq!(no_uri.code, Some(1));
    assert!(no_uri.stderr.contains("MONGODB_URI"), "{}", no_uri.stderr);

    let usage = amlock(&config, &["revoke", "ledger"]).await;
    assert_eq!(usage.code, Some(2), "a missing --fence is a usage error");

    // Nothing listens on port 9 of the loopback: refused at once; the tool gives up within its
    // request bound, not the driver's 30 s server selection.
    let started = Instant::now();
    let gone = run(&[
        "--uri".to_owned(),
        "mongodb://127.0.0.1:9/?directConnection=true".to_owned(),
        "--family".to_owned(),
        "x".to_owned(),
        "--request-timeout-ms".to_owned(),
        "1000".to_owned(),
        "list".to_owned(),
    ])
    .await;
    let took = started.elapsed();
    assert_eq!(gone.code, Some(1), "{}", gone.stdout);
    assert!(gone.stderr.contains("unavailable"), "{}", gone.stderr);
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
}

/// Where the server has change streams (its `hello` names a replica set: SecantusDB, MongoDB's
/// replica sets), `watch` sees a grant and its release as they land, though it looks only every
/// minute; on a server without them (nx-27017, a standalone) only its looks see changes, so
/// within those seconds it prints nothing.
#[actix_rt::test]
async fn watch_follows_the_change_stream_where_the_server_has_one() {
    tool();
    let hello = support::server::client()
        .await
        .database("admin")
        .run_command(mongodb::bson::doc! { "hello": 1 })
        .await
        .expect("hello");
    let streams = hello.get_str("setName").is_ok();
    let config = fast_config("amlock_stream");
    let locks = manager(&config).await;
    let (events, _) = watched(&config, &locks, "60000", Duration::from_millis(500)).await;
    let events: Vec<String> = events
        .iter()
        .map(|event| event["event"].as_str().unwrap().to_owned())
        .collect();
    if streams {
        assert_eq!(events, ["granted", "released"], "told by the stream");
    } else {
        assert!(events.is_empty(), "no stream, no look yet: {events:?}");
    }
}
