//! Leader election: instances of a small scheduler, each its own process with its own
//! `LockManager`, campaign for one office; the leader runs the job, and when it dies another
//! takes over with a higher term.
//!
//! ```text
//! scripts/with-mongo cargo run --example leader                  # the demo: three instances, kills
//! scripts/with-mongo sh -c 'cargo run -q --example leader -- --who a &
//!                           cargo run -q --example leader -- --who b; wait'
//! ```
//!
//! Without `--who` (the demo) it starts three instances of itself
//! (`a`, `b`, `c`) as child processes and prints what they say. Once one leads and has run the
//! job a few times, the demo kills it (SIGKILL: it is told nothing, and its successor is elected
//! once its lease has ended); then it stops the next leader with SIGTERM (it closes its manager,
//! which deposes it and releases the office at once); then it stops the last one.
//!
//! An instance (`--who NAME`, in the lock family `--family` of the database `--database`,
//! `leader_demo` in `locks` by default) prints one line per event, for people and for
//! `tests/election.rs`, with times in Unix milliseconds:
//!
//! ```text
//! ELECTED <who> <term> <at_ms> <lease_until_ms>
//! JOB <who> <term> <n> <at_ms>
//! DEPOSED <who> <term> <reason> <at_ms>
//! CLOSED <who> <at_ms>
//! ```
//!
//! On SIGTERM or Ctrl-C an instance sends `Close` to its manager: the elector is told
//! `Deposed { Closing }`, the office is released, and the instance exits. The server is
//! `MONGODB_URI`; tracing logs go to stderr when `RUST_LOG` is set.

#[path = "support/flags.rs"]
mod flags;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_mongo_lock::election::{Deposed, Elected, Elector};
use actix_mongo_lock::{Close, LockConfig, LockManager};

const USAGE: &str = "usage: leader (the demo) | leader --who NAME [--family NAME] \
                     [--database NAME] [--ttl-ms N] [--job-ms N]";
/// The office every instance campaigns for.
const OFFICE: &str = "scheduler";

struct Args {
    who: Option<String>,
    family: String,
    database: String,
    ttl: Duration,
    job_every: Duration,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// The scheduler of one instance: it runs the job while it leads.
struct Scheduler {
    who: String,
    job_every: Duration,
    /// The term it leads in, and the job's timer.
    leading: Option<(i64, SpawnHandle)>,
    jobs: u64,
}

impl Actor for Scheduler {
    type Context = Context<Self>;
}

impl Handler<Elected> for Scheduler {
    type Result = ();
    fn handle(&mut self, elected: Elected, ctx: &mut Context<Self>) {
        println!(
            "ELECTED {} {} {} {}",
            self.who,
            elected.term,
            now_ms(),
            ms(elected.lease_until)
        );
        let term = elected.term;
        let timer = ctx.run_interval(self.job_every, move |scheduler, _| {
            scheduler.jobs += 1;
            println!(
                "JOB {} {term} {} {}",
                scheduler.who,
                scheduler.jobs,
                now_ms()
            );
        });
        self.leading = Some((term, timer));
    }
}

impl Handler<Deposed> for Scheduler {
    type Result = ();
    fn handle(&mut self, deposed: Deposed, ctx: &mut Context<Self>) {
        // Stop the job before anything else: a successor may be elected next.
        if let Some((_, timer)) = self.leading.take() {
            ctx.cancel_future(timer);
        }
        println!(
            "DEPOSED {} {} {:?} {}",
            self.who,
            deposed.term,
            deposed.reason,
            now_ms()
        );
    }
}

/// One instance: a manager, a scheduler and its elector, until SIGTERM or Ctrl-C.
async fn instance(args: Args, who: String) -> Result<(), String> {
    let uri = std::env::var("MONGODB_URI").map_err(|_| {
        "MONGODB_URI is not set: run `scripts/with-mongo cargo run --example leader`".to_owned()
    })?;
    let config = LockConfig::new(args.family)
        .database(args.database)
        .ttl(args.ttl)
        .owner(who.clone());
    let manager = LockManager::connect(&uri, config)
        .await
        .map_err(|e| format!("cannot start a lock manager: {e}"))?;
    let scheduler = Scheduler {
        who: who.clone(),
        job_every: args.job_every,
        leading: None,
        jobs: 0,
    }
    .start();
    let _elector = Elector::new(manager.clone(), OFFICE, &scheduler)
        .map_err(|e| e.to_string())?
        .start();
    let mut terminate =
        actix_rt::signal::unix::signal(actix_rt::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = actix_rt::signal::ctrl_c() => {}
    }
    let report = manager
        .send(Close)
        .await
        .map_err(|e| format!("the manager stopped: {e}"))?;
    // Let the scheduler print what it was told before the process ends.
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    println!("CLOSED {who} {} (released {})", now_ms(), report.released);
    Ok(())
}

/// A child instance and its lines, read on a thread of its own.
fn spawn_instance(who: &str, lines: mpsc::Sender<String>) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--who", who, "--ttl-ms", "3000", "--job-ms", "500"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start instance {who}: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    Ok(child)
}

/// Prints lines from `lines` until one starts with `ELECTED` and `until` more jobs of that
/// leader have run; returns who leads. Gives up after `within`.
fn watch_until_leader(
    lines: &mpsc::Receiver<String>,
    jobs: usize,
    within: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut leader: Option<String> = None;
    let mut seen_jobs = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        println!("  {line}");
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["ELECTED", who, ..] => leader = Some((*who).to_owned()),
            ["JOB", who, ..] if leader.as_deref() == Some(*who) => seen_jobs += 1,
            _ => {}
        }
        if seen_jobs >= jobs {
            return leader.ok_or_else(|| "no leader".to_owned());
        }
    }
    Err(format!("no leader ran {jobs} jobs within {within:?}"))
}

fn demo() -> Result<(), String> {
    let (tx, lines) = mpsc::channel();
    let mut children: Vec<(String, Child)> = Vec::new();
    for who in ["a", "b", "c"] {
        children.push((who.to_owned(), spawn_instance(who, tx.clone())?));
    }
    drop(tx);
    println!("three instances of the scheduler campaign for the office {OFFICE:?}");
    let within = Duration::from_secs(20);
    let first = watch_until_leader(&lines, 3, within)?;
    println!("-- killing the leader, {first}, with SIGKILL: its successor waits out its lease");
    let (_, child) = children
        .iter_mut()
        .find(|(who, _)| *who == first)
        .expect("a child");
    child.kill().map_err(|e| e.to_string())?;
    let _ = child.wait();
    let second = watch_until_leader(&lines, 3, within)?;
    println!("-- stopping the leader, {second}, with SIGTERM: it closes and hands over at once");
    terminate(&mut children, &second)?;
    let third = watch_until_leader(&lines, 2, within)?;
    println!("-- stopping the last one, {third}");
    terminate(&mut children, &third)?;
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        println!("  {line}");
    }
    println!("each leader ran the job alone, each term higher than the last");
    Ok(())
}

/// Sends SIGTERM to the instance `who` and waits for it to exit.
fn terminate(children: &mut [(String, Child)], who: &str) -> Result<(), String> {
    let (_, child) = children
        .iter_mut()
        .find(|(name, _)| name == who)
        .ok_or_else(|| format!("no instance {who}"))?;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if !status.success() {
        return Err(format!("kill -TERM {who} failed"));
    }
    child.wait().map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let args = flags::read("leader", USAGE, |flags| {
        Ok(Args {
            who: flags.text("--who"),
            family: flags
                .text("--family")
                .unwrap_or_else(|| "leader_demo".to_owned()),
            database: flags
                .text("--database")
                .unwrap_or_else(|| "locks".to_owned()),
            ttl: Duration::from_millis(flags.number("--ttl-ms", 3000)?),
            job_every: Duration::from_millis(flags.number("--job-ms", 500)?),
        })
    });
    let outcome = match args.who.clone() {
        Some(who) => actix_rt::System::new().block_on(instance(args, who)),
        None => demo(),
    };
    if let Err(e) = outcome {
        eprintln!("leader: {e}");
        std::process::exit(1);
    }
}
