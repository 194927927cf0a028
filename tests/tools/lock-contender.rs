//! `lock-contender`: workers in one process contending for a few resources through one
//! `LockManager`, printing every hold they saw as a line a checker can read.
//!
//! A test tool, not part of the published crate's binaries: it is built as the example
//! `lock-contender` (`cargo build --example lock-contender`), which `cargo install` never
//! installs; the tests build it themselves (tests/support/contender.rs).
//!
//! The multi-process tests and the soak start several of these against one server and check,
//! from all their lines together, that no two holds of a resource overlapped and that fences
//! rose in grant order. Each line:
//!
//! ```text
//! HOLD <process> <resource> <fence> <requested_ms> <granted_ms> <lease_expires_ms> <release_sent_ms> <released_ms> <released|notheld|error>
//! ```
//!
//! with times in Unix milliseconds; the last line is `DONE <process> <grants> <refusals>`.
//! For an Acquire that ran out of time a worker prints
//! `REFUSED <process> <resource> <requested_ms> <answered_ms>`, so a checker knows who was
//! waiting when (fairness); with `--ask-lines 1` it also prints
//! `ASK <process> <resource> <requested_ms>` before each Acquire, so a test knows a worker is
//! waiting (off by default: a reader that drains the output late must not see it fill sooner).
//! With `--readers N`, the first N workers take shared holds (`Acquire::shared`, at most
//! `--max-holders` at once when given) and their `HOLD` lines end with one more field,
//! `shared`. With `--grant-lines 1` every worker prints, as soon as it is granted,
//! `GRANT <process> <resource> <fence> <requested_ms> <granted_ms> <lease_expires_ms> <exclusive|shared>`,
//! so a checker knows of the holds a killed process never got to print a `HOLD` line for.

//!
//! ```text
//! lock-contender --name soak --process p1 --workers 8 --resources 4 --seconds 10 [--ttl-ms 2000] [--hold-ms 5]
//!                [--timeout-ms N] [--requests N] [--ask-lines 0|1]
//!                [--readers N] [--max-holders N] [--grant-lines 0|1]
//! ```
//! `--timeout-ms` is each Acquire's deadline (by default the configured retry budget, 2.5 s);
//! `--requests` stops each worker after that many Acquires (by default only `--seconds` does).
//! The server is `MONGODB_URI`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_mongo_lock::{
    Acquire, Close, HoldMode, LockConfig, LockError, LockManager, Unlock, UnlockOutcome,
};

#[path = "../../examples/support/flags.rs"]
mod flags;

const USAGE: &str = "usage: lock-contender [--name FAMILY] [--process NAME] [--workers N] \
                     [--resources N] [--seconds N] [--ttl-ms N] [--hold-ms N] \
                     [--timeout-ms N] [--requests N] [--ask-lines 0|1] \
                     [--readers N] [--max-holders N] [--grant-lines 0|1]";

struct Args {
    name: String,
    process: String,
    workers: usize,
    resources: usize,
    seconds: u64,
    ttl_ms: u64,
    hold_ms: u64,
    /// 0: the configured retry budget.
    timeout_ms: u64,
    /// 0: no limit but `seconds`.
    requests: u64,
    ask_lines: bool,
    /// How many of the workers take shared holds.
    readers: usize,
    /// 0: no limit on shared holders.
    max_holders: u32,
    grant_lines: bool,
}

fn parse_args() -> Args {
    flags::read("lock-contender", USAGE, |flags| {
        Ok(Args {
            name: flags
                .text("--name")
                .unwrap_or_else(|| "contender".to_owned()),
            process: flags
                .text("--process")
                .unwrap_or_else(|| format!("pid{}", std::process::id())),
            workers: flags.number("--workers", 4)? as usize,
            resources: flags.number("--resources", 1)? as usize,
            seconds: flags.number("--seconds", 3)?,
            ttl_ms: flags.number("--ttl-ms", 2000)?,
            hold_ms: flags.number("--hold-ms", 5)?,
            timeout_ms: flags.number("--timeout-ms", 0)?,
            requests: flags.number("--requests", 0)?,
            ask_lines: flags.number("--ask-lines", 0)? == 1,
            readers: flags.number("--readers", 0)? as usize,
            max_holders: u32::try_from(flags.number("--max-holders", 0)?)
                .map_err(|_| "--max-holders is too large".to_owned())?,
            grant_lines: flags.number("--grant-lines", 0)? == 1,
        })
    })
}

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[actix_rt::main]
async fn main() {
    let args = parse_args();
    // With RUST_LOG set, the library's logs go to stderr (for debugging a test's run).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let Ok(uri) = std::env::var("MONGODB_URI") else {
        eprintln!("lock-contender: MONGODB_URI is not set");
        std::process::exit(2);
    };
    let config = LockConfig::new(&args.name)
        .database("actix_mongo_lock_tests")
        .owner(&args.process)
        .ttl(Duration::from_millis(args.ttl_ms));
    let manager = match LockManager::connect(&uri, config).await {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("lock-contender: cannot start a manager: {e}");
            std::process::exit(1);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let grants = Rc::new(Cell::new(0u64));
    let refusals = Rc::new(Cell::new(0u64));
    let mut workers = Vec::new();
    for worker in 0..args.workers {
        let manager = manager.clone();
        let process = args.process.clone();
        let (grants, refusals) = (Rc::clone(&grants), Rc::clone(&refusals));
        let (resources, hold, ttl, timeout, requests, ask_lines, grant_lines) = (
            args.resources,
            Duration::from_millis(args.hold_ms),
            Duration::from_millis(args.ttl_ms),
            Duration::from_millis(args.timeout_ms),
            args.requests,
            args.ask_lines,
            args.grant_lines,
        );
        let mode = if worker < args.readers {
            HoldMode::Shared {
                max_holders: (args.max_holders > 0).then_some(args.max_holders),
            }
        } else {
            HoldMode::Exclusive
        };
        let (mode_name, hold_suffix) = if worker < args.readers {
            ("shared", " shared")
        } else {
            ("exclusive", "")
        };
        workers.push(actix_rt::spawn(async move {
            let mut turn = worker;
            let mut asked = 0;
            while Instant::now() < deadline && (requests == 0 || asked < requests) {
                asked += 1;
                let resource = format!("r{}", turn % resources);
                turn += 1;
                let requested = SystemTime::now();
                if ask_lines {
                    println!("ASK {process} {resource} {}", unix_ms(requested));
                }
                let mut acquire = Acquire::new(&resource).with_mode(mode);
                if !timeout.is_zero() {
                    acquire = acquire.timeout(timeout);
                }
                let grant = match manager.send(acquire).await {
                    Ok(Ok(grant)) => grant,
                    Ok(Err(
                        LockError::AcquireMaxRetries { .. } | LockError::AcquireTimeout { .. },
                    )) => {
                        refusals.set(refusals.get() + 1);
                        println!(
                            "REFUSED {process} {resource} {} {}",
                            unix_ms(requested),
                            unix_ms(SystemTime::now())
                        );
                        continue;
                    }
                    Ok(Err(e)) => {
                        eprintln!("lock-contender: acquire failed: {e}");
                        continue;
                    }
                    Err(e) => {
                        eprintln!("lock-contender: manager gone: {e}");
                        return;
                    }
                };
                let granted = SystemTime::now();
                grants.set(grants.get() + 1);
                if grant_lines {
                    println!(
                        "GRANT {process} {resource} {} {} {} {} {mode_name}",
                        grant.fence,
                        unix_ms(requested),
                        unix_ms(granted),
                        unix_ms(requested + ttl),
                    );
                }
                actix_rt::time::sleep(hold).await;
                let release_sent = SystemTime::now();
                let outcome = match manager.send(Unlock::new(grant.lock_id)).await {
                    Ok(Ok(UnlockOutcome::Released)) => "released",
                    Ok(Ok(UnlockOutcome::NotHeld)) => "notheld",
                    Ok(Ok(UnlockOutcome::Unconfirmed)) => "unconfirmed",
                    _ => "error",
                };
                let released = SystemTime::now();
                println!(
                    "HOLD {process} {resource} {} {} {} {} {} {} {outcome}{hold_suffix}",
                    grant.fence,
                    unix_ms(requested),
                    unix_ms(granted),
                    unix_ms(requested + ttl),
                    unix_ms(release_sent),
                    unix_ms(released),
                );
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let _ = manager.send(Close).await;
    println!("DONE {} {} {}", args.process, grants.get(), refusals.get());
}
