//! The seed measured beside us: the Go `dplock` (interop/go, `dplock-peer bench`) and this crate
//! on the same server in the same run, each figure beside that side's own baseline round trip B
//! (the median `ping` through its own driver, taken interleaved with the lock samples).
//!
//! ```text
//! scripts/bench-dplock          # builds interop/go, starts SecantusDB, prints the table
//! ```
//!
//! Both sides run the same protocols: uncontended `Lock` and `Lock`+`Unlock` on one resource;
//! two takers handing one resource back and forth (Acquire, hold 20 ms, Unlock, then wait until
//! the other taker holds it, so every release is a hand-off to a waiter already waiting), in one
//! process and in two; 16 workers looping Acquire+Unlock on 1 resource and on 1,000. Needs Go:
//! behind the `go-interop` feature. The cross-process Rust takers are this binary again
//! (`--taker`).

use std::cell::RefCell;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::Addr;
use actix_mongo_lock::{Acquire, Close, Lock, LockConfig, LockManager, Unlock};
use mongodb::bson::{doc, Document};
use mongodb::{Client, Collection};

const DATABASE: &str = "actix_mongo_lock_bench";
const UNCONTENDED_SAMPLES: usize = 200;
const GRANTS_PER_TAKER: usize = 30;
const TAKER_HOLD: Duration = Duration::from_millis(20);
const TAKER_LIMIT: Duration = Duration::from_secs(30);
const THROUGHPUT_RUN: Duration = Duration::from_secs(5);

fn uri() -> String {
    std::env::var("MONGODB_URI").expect("MONGODB_URI is not set: run `scripts/bench-dplock`")
}

fn peer() -> String {
    std::env::var("DPLOCK_PEER").expect("DPLOCK_PEER is not set: run `scripts/bench-dplock`")
}

fn family(what: &str) -> String {
    format!(
        "vs_{what}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn config(family: &str) -> LockConfig {
    LockConfig::new(family).database(DATABASE)
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn median(samples: &mut [Duration]) -> Duration {
    percentile(samples, 0.5)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// Runs `dplock-peer bench` with `args`; returns its stdout lines.
fn go_bench(args: &[&str]) -> Vec<String> {
    let output = Command::new(peer())
        .arg("bench")
        .args(args)
        .env("MONGODB_URI", uri())
        .stderr(Stdio::null())
        .output()
        .expect("run dplock-peer bench");
    assert!(output.status.success(), "dplock-peer bench {args:?} failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Hand-off samples from takers' `EV G|R <taker> <unix_us>` lines: from each release to the
/// next grant, when another taker made it.
fn hand_offs(lines: &[String]) -> Vec<Duration> {
    let mut events: Vec<(u64, bool, String)> = lines
        .iter()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                ["EV", kind, taker, us] => Some((us.parse().ok()?, kind == "G", taker.to_owned())),
                _ => None,
            }
        })
        .collect();
    events.sort();
    let mut samples = Vec::new();
    let mut last_release: Option<(u64, String)> = None;
    for (us, grant, taker) in events {
        if !grant {
            last_release = Some((us, taker));
        } else if let Some((released, by)) = last_release.take() {
            if by != taker {
                samples.push(Duration::from_micros(us.saturating_sub(released)));
            }
        }
    }
    samples
}

/// One taker on `locks` (see the module docs); pushes its `EV` lines into `events`.
async fn taker(
    name: String,
    locks: Addr<LockManager>,
    collection: Collection<Document>,
    family: String,
    events: Rc<RefCell<Vec<String>>>,
) {
    let deadline = Instant::now() + TAKER_LIMIT;
    let mut grants = 0;
    while grants < GRANTS_PER_TAKER && Instant::now() < deadline {
        let Ok(Ok(grant)) = locks
            .send(Acquire::new("h").timeout(Duration::from_secs(10)))
            .await
        else {
            continue;
        };
        events
            .borrow_mut()
            .push(format!("EV G {name} {}", unix_us(SystemTime::now())));
        grants += 1;
        actix_rt::time::sleep(TAKER_HOLD).await;
        let lock_id = grant.lock_id.to_string();
        let _ = locks.send(Unlock::new(grant.lock_id)).await;
        events
            .borrow_mut()
            .push(format!("EV R {name} {}", unix_us(SystemTime::now())));
        let other = doc! {
            "resource": format!("{family}-h"),
            "exclusive.acquired": true,
            "exclusive.lockId": { "$ne": lock_id },
        };
        let wait = Instant::now() + Duration::from_secs(5);
        while Instant::now() < wait && Instant::now() < deadline {
            if let Ok(Some(_)) = collection.find_one(other.clone()).await {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn start(family: &str) -> (Addr<LockManager>, Collection<Document>) {
    let client = Client::with_uri_str(uri()).await.expect("client");
    let collection = client
        .database(DATABASE)
        .collection(&config(family).collection_name());
    let locks = LockManager::with_client(client, config(family))
        .await
        .expect("start a lock manager");
    (locks, collection)
}

/// `--taker NAME FAMILY`: one cross-process taker; prints its `EV` lines.
async fn child_taker(name: String, family: String) {
    let (locks, collection) = start(&family).await;
    let events = Rc::new(RefCell::new(Vec::new()));
    taker(name, locks.clone(), collection, family, events.clone()).await;
    let _ = locks.send(Close).await;
    for line in events.borrow().iter() {
        println!("{line}");
    }
}

/// Median `ping` and `Lock` and `Lock`+`Unlock` on a free resource, interleaved.
async fn rust_uncontended() -> (Duration, Duration, Duration) {
    let family = family("uncontended");
    let (locks, _) = start(&family).await;
    let client = Client::with_uri_str(uri()).await.expect("client");
    let database = client.database(DATABASE);
    let (mut pings, mut lock, mut pair) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..UNCONTENDED_SAMPLES {
        let start = Instant::now();
        database
            .run_command(doc! { "ping": 1 })
            .await
            .expect("ping");
        pings.push(start.elapsed());
        let start = Instant::now();
        let grant = locks.send(Lock::new("u")).await.unwrap().expect("free");
        lock.push(start.elapsed());
        locks
            .send(Unlock::new(grant.lock_id))
            .await
            .unwrap()
            .expect("unlock");
        pair.push(start.elapsed());
    }
    let _ = locks.send(Close).await;
    (median(&mut pings), median(&mut lock), median(&mut pair))
}

async fn rust_takers_one_process() -> Vec<Duration> {
    let family = family("takers1");
    let (locks, collection) = start(&family).await;
    let events = Rc::new(RefCell::new(Vec::new()));
    let tasks: Vec<_> = ["rust0", "rust1"]
        .into_iter()
        .map(|name| {
            actix_rt::spawn(taker(
                name.to_owned(),
                locks.clone(),
                collection.clone(),
                family.clone(),
                events.clone(),
            ))
        })
        .collect();
    for task in tasks {
        task.await.expect("taker");
    }
    let _ = locks.send(Close).await;
    let lines = events.borrow().clone();
    hand_offs(&lines)
}

fn rust_takers_two_processes() -> Vec<Duration> {
    let family = family("takers2");
    let me = std::env::current_exe().expect("own path");
    let children: Vec<_> = ["rustA", "rustB"]
        .iter()
        .map(|name| {
            Command::new(&me)
                .args(["--taker", name, &family])
                .env("MONGODB_URI", uri())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a taker")
        })
        .collect();
    let mut lines = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("taker runs");
        assert!(output.status.success(), "a Rust taker failed");
        lines.extend(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    hand_offs(&lines)
}

fn go_takers_two_processes() -> Vec<Duration> {
    let family = family("gotakers2");
    let n = GRANTS_PER_TAKER.to_string();
    let limit = TAKER_LIMIT.as_secs().to_string();
    let children: Vec<_> = ["goA", "goB"]
        .iter()
        .map(|name| {
            Command::new(peer())
                .args([
                    "bench",
                    "--measure",
                    "takers",
                    "--takers",
                    "1",
                    "--family",
                    &family,
                ])
                .args(["--name", name, "--n", &n, "--seconds", &limit])
                .env("MONGODB_URI", uri())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a Go taker")
        })
        .collect();
    let mut lines = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("Go taker runs");
        assert!(output.status.success(), "a Go taker failed");
        lines.extend(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    hand_offs(&lines)
}

/// 16 workers looping Acquire+Unlock on `resources` resources; grants per second.
async fn rust_throughput(resources: u64) -> f64 {
    let family = family("throughput");
    let (locks, _) = start(&family).await;
    let started = Instant::now();
    let deadline = started + THROUGHPUT_RUN;
    let tasks: Vec<_> = (0..16u64)
        .map(|worker| {
            let locks = locks.clone();
            actix_rt::spawn(async move {
                // xorshift: a cheap, seeded choice of resource per attempt.
                let mut state = worker * 0x9E37_79B9_7F4A_7C15 + 1;
                let mut grants = 0u64;
                while Instant::now() < deadline {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let resource = format!("t{}", state % resources);
                    if let Ok(Ok(grant)) = locks.send(Acquire::new(resource)).await {
                        let _ = locks.send(Unlock::new(grant.lock_id)).await;
                        grants += 1;
                    }
                }
                grants
            })
        })
        .collect();
    let mut grants = 0;
    for task in tasks {
        grants += task.await.expect("worker");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = locks.send(Close).await;
    grants as f64 / elapsed
}

fn go_throughput(resources: u64) -> f64 {
    let lines = go_bench(&[
        "--measure",
        "throughput",
        "--family",
        &family("gothroughput"),
        "--workers",
        "16",
        "--resources",
        &resources.to_string(),
        "--seconds",
        &THROUGHPUT_RUN.as_secs().to_string(),
    ]);
    let line = lines
        .iter()
        .find(|l| l.starts_with("THROUGHPUT "))
        .expect("a THROUGHPUT line");
    let fields: Vec<f64> = line[11..]
        .split_whitespace()
        .map(|f| f.parse().expect("number"))
        .collect();
    fields[0] / fields[1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[actix_rt::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--taker") {
        child_taker(args[i + 1].clone(), args[i + 2].clone()).await;
        return;
    }
    eprintln!("dplock_vs_rust against {}", uri());

    let go = go_bench(&[
        "--measure",
        "uncontended",
        "--family",
        &family("gouncontended"),
        "--n",
        &UNCONTENDED_SAMPLES.to_string(),
    ]);
    let go_line = go
        .iter()
        .find(|l| l.starts_with("UNCONTENDED "))
        .expect("an UNCONTENDED line");
    let us: Vec<u64> = go_line[12..]
        .split_whitespace()
        .map(|f| f.parse().expect("number"))
        .collect();
    let (go_b, go_lock, go_pair) = (
        Duration::from_micros(us[0]),
        Duration::from_micros(us[1]),
        Duration::from_micros(us[2]),
    );
    let (rust_b, rust_lock, rust_pair) = rust_uncontended().await;
    eprintln!("  uncontended done");

    let mut go_local = hand_offs(&go_bench(&[
        "--measure",
        "takers",
        "--takers",
        "2",
        "--family",
        &family("gotakers1"),
        "--n",
        &GRANTS_PER_TAKER.to_string(),
        "--seconds",
        &TAKER_LIMIT.as_secs().to_string(),
    ]));
    let mut rust_local = rust_takers_one_process().await;
    let mut go_cross = go_takers_two_processes();
    let mut rust_cross = rust_takers_two_processes();
    eprintln!("  hand-offs done");

    let go_one = go_throughput(1);
    let rust_one = rust_throughput(1).await;
    let go_many = go_throughput(1000);
    let rust_many = rust_throughput(1000).await;

    println!("\n| measure | dplock (Go) | ÷ B | actix-mongo-lock | ÷ B | Go ÷ Rust |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, go: Duration, rust: Duration| {
        println!(
            "| {name} | {:.3} ms | {:.2} | {:.3} ms | {:.2} | {:.2} |",
            ms(go),
            go.as_secs_f64() / go_b.as_secs_f64(),
            ms(rust),
            rust.as_secs_f64() / rust_b.as_secs_f64(),
            go.as_secs_f64() / rust.as_secs_f64(),
        );
    };
    println!(
        "| B: `ping` round trip, median | {:.3} ms | 1 | {:.3} ms | 1 | {:.2} |",
        ms(go_b),
        ms(rust_b),
        go_b.as_secs_f64() / rust_b.as_secs_f64()
    );
    row("`Lock`, uncontended, median", go_lock, rust_lock);
    row("`Lock`+`Unlock`, uncontended, median", go_pair, rust_pair);
    let (go_n, rust_n) = (go_local.len(), rust_local.len());
    row(
        &format!("hand-off in one process, p50 (n = {go_n} / {rust_n})"),
        median(&mut go_local),
        median(&mut rust_local),
    );
    row(
        "hand-off in one process, p99",
        percentile(&mut go_local, 0.99),
        percentile(&mut rust_local, 0.99),
    );
    let (go_n, rust_n) = (go_cross.len(), rust_cross.len());
    row(
        &format!("hand-off across processes, p50 (n = {go_n} / {rust_n})"),
        median(&mut go_cross),
        median(&mut rust_cross),
    );
    row(
        "hand-off across processes, p99",
        percentile(&mut go_cross, 0.99),
        percentile(&mut rust_cross, 0.99),
    );
    // Throughput against B: grants per round trip (grants/s x B).
    let per_b = |rate: f64, b: Duration| rate * b.as_secs_f64();
    for (name, go, rust) in [
        ("throughput, 16 workers, 1 resource", go_one, rust_one),
        (
            "throughput, 16 workers, 1,000 resources",
            go_many,
            rust_many,
        ),
    ] {
        println!(
            "| {name} | {go:.1} grants/s | {:.3} | {rust:.1} grants/s | {:.3} | {:.2} |",
            per_b(go, go_b),
            per_b(rust, rust_b),
            go / rust,
        );
    }
}
