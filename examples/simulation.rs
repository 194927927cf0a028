//! A multi-actor simulation that checks mutual exclusion and fencing from a recorded history.
//!
//! ```text
//! scripts/with-mongo cargo run --release --example simulation -- --actors 16 --resources 4 --operations 2000 --seed 1
//! ```
//!
//! M actix actors contend for K resources through `--managers` lock managers (2 by default,
//! each with its own MongoDB client, as two processes would have), for a fixed number of
//! operations in total. Every operation is a `Lock` or an `Acquire` of a random resource; a
//! grant is held for a few milliseconds and then released with `Unlock`. Each actor draws its
//! choices (resource, Lock or Acquire, think time, hold time) from its own seeded generator, the
//! same number of draws per operation whatever happens, so one seed gives every actor the same
//! sequence of choices on every run; the printed fingerprint of all choices shows it. Timing,
//! and so who wins each race, still varies between runs.
//!
//! Every grant is recorded as a document in `<family>_history`, in the lock collection's
//! database:
//!
//! ```text
//! { run, resource, fence, actor, manager, via: "lock"|"acquire",
//!   requested_us, start_us, end_us, outcome: "released"|"not_held"|"unconfirmed"|"error" }
//! ```
//!
//! with times in microseconds since the Unix epoch on this process's monotonic clock (violations
//! print them in milliseconds since the run started). A hold
//! counts from its grant's reply (`start_us`) until its `Unlock` was sent (`end_us`): the server
//! granted it no later than the first and released it no earlier than the second, so for a
//! correct lock manager the holds of one resource never overlap, even by a microsecond. (An
//! `Unlock` that answered `not_held` ends the hold at the earliest moment its lease could have
//! run out instead.) At the end the history of this run is read back from the database and
//! checked per resource: in order of start, no hold starts before an earlier one ended, and
//! fences strictly increase. Each failure of either is a violation; the exit status is 1 if
//! there is any.

// Shared with the chat, which also draws durations; this example uses only part of it.
#[allow(dead_code)]
#[path = "support/split_mix.rs"]
mod split_mix;

use split_mix::SplitMix64;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_mongo_lock::{
    Acquire, Close, Lock, LockConfig, LockError, LockManager, Unlock, UnlockOutcome,
};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::{Client, Collection};
use tokio::sync::oneshot;

/// The lock family; the history goes to `<FAMILY>_history`.
const FAMILY: &str = "simulation";
/// The lease of every grant: far longer than any hold, so no lease should run out.
const LEASE: Duration = Duration::from_secs(10);

struct Args {
    actors: usize,
    resources: usize,
    operations: usize,
    seed: u64,
    managers: usize,
}

const USAGE: &str =
    "usage: simulation [--actors M] [--resources K] [--operations N] [--seed S] [--managers N]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        actors: 16,
        resources: 4,
        operations: 2000,
        seed: 1,
        managers: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--actors" => args.actors = number()? as usize,
            "--resources" => args.resources = number()? as usize,
            "--operations" => args.operations = number()? as usize,
            "--seed" => args.seed = number()?,
            "--managers" => args.managers = number()? as usize,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if args.actors == 0 || args.resources == 0 || args.managers == 0 {
        return Err("--actors, --resources and --managers must be at least 1".to_owned());
    }
    Ok(args)
}

/// Maps this process's monotonic clock to microseconds since the Unix epoch, so that times in
/// the history order exactly as they happened here, whatever the wall clock does meanwhile.
#[derive(Clone, Copy)]
struct Timeline {
    origin: Instant,
    origin_us: i64,
}

impl Timeline {
    fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timeline {
            origin: Instant::now(),
            origin_us: since_epoch.as_micros() as i64,
        }
    }

    fn us(&self, at: Instant) -> i64 {
        self.origin_us + (at - self.origin).as_micros() as i64
    }
}

/// What one operation does, drawn before it starts.
struct Choice {
    resource: usize,
    acquire: bool,
    think: Duration,
    hold: Duration,
}

/// What one operation came to.
enum Outcome {
    /// Granted after `wait`, held, and released (or not: see `record`'s `outcome`).
    Granted {
        wait: Duration,
        record: Document,
        not_held: bool,
        unlock_failed: bool,
    },
    /// `Lock` answered `AlreadyLocked`.
    AlreadyLocked,
    /// `Acquire` ran out of time.
    OutOfTime,
    /// Any other error; printed where it happened.
    Failed,
}

/// Counts of one actor, or of all of them.
#[derive(Default)]
struct Tally {
    operations: u32,
    via_lock: u32,
    via_acquire: u32,
    grants: u32,
    refused_locks: u32,
    acquires_out_of_time: u32,
    not_held: u32,
    errors: u32,
    waits: Vec<Duration>,
    fingerprint: u64,
}

impl Tally {
    fn count(&mut self, via_acquire: bool, outcome: &Outcome) {
        self.operations += 1;
        if via_acquire {
            self.via_acquire += 1;
        } else {
            self.via_lock += 1;
        }
        match outcome {
            Outcome::Granted {
                wait,
                not_held,
                unlock_failed,
                ..
            } => {
                self.grants += 1;
                self.waits.push(*wait);
                self.not_held += u32::from(*not_held);
                self.errors += u32::from(*unlock_failed);
            }
            Outcome::AlreadyLocked => self.refused_locks += 1,
            Outcome::OutOfTime => self.acquires_out_of_time += 1,
            Outcome::Failed => self.errors += 1,
        }
    }

    fn add(&mut self, other: Tally) {
        self.operations += other.operations;
        self.via_lock += other.via_lock;
        self.via_acquire += other.via_acquire;
        self.grants += other.grants;
        self.refused_locks += other.refused_locks;
        self.acquires_out_of_time += other.acquires_out_of_time;
        self.not_held += other.not_held;
        self.errors += other.errors;
        self.waits.extend(other.waits);
        self.fingerprint = self.fingerprint.rotate_left(7) ^ other.fingerprint;
    }
}

/// One actor: performs its share of the operations, one after another, then writes its history.
struct Contender {
    index: usize,
    manager_index: usize,
    manager: Addr<LockManager>,
    resources: Rc<Vec<String>>,
    rng: SplitMix64,
    operations_left: usize,
    timeline: Timeline,
    run: String,
    history: Collection<Document>,
    records: Vec<Document>,
    tally: Tally,
    done: Option<oneshot::Sender<Tally>>,
}

impl Contender {
    fn choose(&mut self) -> Choice {
        let rng = &mut self.rng;
        let choice = Choice {
            resource: rng.between(0, self.resources.len() as u64 - 1) as usize,
            acquire: rng.between(0, 1) == 1,
            think: Duration::from_micros(rng.between(0, 3000)),
            hold: Duration::from_micros(rng.between(1000, 5000)),
        };
        self.tally.fingerprint = [
            choice.resource as u64,
            u64::from(choice.acquire),
            choice.think.as_micros() as u64,
            choice.hold.as_micros() as u64,
        ]
        .into_iter()
        .fold(self.tally.fingerprint, |f, v| {
            (f ^ v).wrapping_mul(0x0000_0100_0000_01B3)
        });
        choice
    }

    fn next_operation(&mut self, ctx: &mut Context<Self>) {
        if self.operations_left == 0 {
            self.finish(ctx);
            return;
        }
        self.operations_left -= 1;
        let choice = self.choose();
        let via_acquire = choice.acquire;
        let record = doc! {
            "run": &self.run,
            "actor": self.index as i64,
            "manager": self.manager_index as i64,
        };
        let operation = operate(
            self.manager.clone(),
            Rc::clone(&self.resources),
            choice,
            self.timeline,
            record,
        );
        ctx.spawn(
            operation
                .into_actor(self)
                .map(move |outcome, contender, ctx| {
                    contender.tally.count(via_acquire, &outcome);
                    if let Outcome::Granted { record, .. } = outcome {
                        contender.records.push(record);
                    }
                    contender.next_operation(ctx);
                }),
        );
    }

    /// Writes this actor's history in one request, then reports and stops.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        let records = std::mem::take(&mut self.records);
        let history = self.history.clone();
        let write = async move {
            if records.is_empty() {
                return Ok(());
            }
            history.insert_many(records).await.map(drop)
        };
        ctx.wait(write.into_actor(self).map(|written, contender, ctx| {
            if let Err(e) = written {
                eprintln!("simulation: could not write the history: {e}");
                contender.tally.errors += 1;
            }
            let tally = std::mem::take(&mut contender.tally);
            if let Some(done) = contender.done.take() {
                let _ = done.send(tally);
            }
            ctx.stop();
        }));
    }
}

impl Actor for Contender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.next_operation(ctx);
    }
}

/// One operation: think, ask, hold, release; a grant comes back with its history record.
async fn operate(
    manager: Addr<LockManager>,
    resources: Rc<Vec<String>>,
    choice: Choice,
    timeline: Timeline,
    mut record: Document,
) -> Outcome {
    actix_rt::time::sleep(choice.think).await;
    let resource = &resources[choice.resource];
    let requested = Instant::now();
    let answer = if choice.acquire {
        manager.send(Acquire::new(resource)).await
    } else {
        manager.send(Lock::new(resource)).await
    };
    let granted = Instant::now();
    let grant = match answer {
        Ok(Ok(grant)) => grant,
        Ok(Err(LockError::AlreadyLocked { .. })) => return Outcome::AlreadyLocked,
        Ok(Err(LockError::AcquireMaxRetries { .. } | LockError::AcquireTimeout { .. })) => {
            return Outcome::OutOfTime
        }
        Ok(Err(e)) => {
            eprintln!("simulation: {resource}: {e}");
            return Outcome::Failed;
        }
        Err(e) => {
            eprintln!("simulation: the manager is gone: {e}");
            return Outcome::Failed;
        }
    };
    actix_rt::time::sleep(choice.hold).await;
    let release_sent = Instant::now();
    let outcome = match manager.send(Unlock::new(grant.lock_id)).await {
        Ok(Ok(UnlockOutcome::Released)) => "released",
        Ok(Ok(UnlockOutcome::NotHeld)) => "not_held",
        Ok(Ok(UnlockOutcome::Unconfirmed)) => "unconfirmed",
        Ok(Err(e)) => {
            eprintln!("simulation: unlock of {resource}: {e}");
            "error"
        }
        Err(e) => {
            eprintln!("simulation: the manager is gone: {e}");
            "error"
        }
    };
    // Released: the server let go no earlier than the Unlock was sent. Otherwise the hold ended
    // when its lease did, which is no earlier than the request plus the lease.
    let end = match outcome {
        "released" => release_sent,
        _ => release_sent.min(requested + LEASE),
    };
    record.extend(doc! {
        "resource": resource,
        "fence": grant.fence,
        "via": if choice.acquire { "acquire" } else { "lock" },
        "requested_us": timeline.us(requested),
        "start_us": timeline.us(granted),
        "end_us": timeline.us(end),
        "outcome": outcome,
    });
    Outcome::Granted {
        wait: granted - requested,
        record,
        not_held: outcome == "not_held",
        unlock_failed: outcome == "error",
    }
}

/// One hold read back from the history.
struct Hold {
    actor: i64,
    fence: i64,
    start_us: i64,
    end_us: i64,
}

/// Reads this run's history back and counts violations of mutual exclusion and fence order.
async fn check_history(
    history: &Collection<Document>,
    run: &str,
    expected: u32,
    timeline: Timeline,
) -> Result<(usize, Vec<String>), mongodb::error::Error> {
    let at = |us: i64| format!("{:.3} ms", (us - timeline.origin_us) as f64 / 1000.0);
    let documents: Vec<Document> = history
        .find(doc! { "run": run })
        .await?
        .try_collect()
        .await?;
    let mut problems = Vec::new();
    let mut by_resource: BTreeMap<String, Vec<Hold>> = BTreeMap::new();
    for d in &documents {
        let field = |name: &str| d.get_i64(name).or_else(|_| d.get_i32(name).map(i64::from));
        match (
            d.get_str("resource"),
            field("actor"),
            field("fence"),
            field("start_us"),
            field("end_us"),
        ) {
            (Ok(resource), Ok(actor), Ok(fence), Ok(start_us), Ok(end_us)) => by_resource
                .entry(resource.to_owned())
                .or_default()
                .push(Hold {
                    actor,
                    fence,
                    start_us,
                    end_us,
                }),
            _ => problems.push(format!("malformed history document {d}")),
        }
    }
    if documents.len() != expected as usize {
        problems.push(format!(
            "the history holds {} grants, the actors saw {expected}",
            documents.len()
        ));
    }
    for (resource, holds) in &mut by_resource {
        holds.sort_by_key(|h| (h.start_us, h.fence));
        let mut latest: Option<&Hold> = None;
        for (previous, hold) in holds.iter().zip(holds.iter().skip(1)) {
            if hold.fence <= previous.fence {
                problems.push(format!(
                    "{resource}: fence {} (actor {}) was granted after fence {} (actor {})",
                    hold.fence, hold.actor, previous.fence, previous.actor
                ));
            }
        }
        for hold in holds.iter() {
            if let Some(earlier) = latest {
                if hold.start_us < earlier.end_us {
                    problems.push(format!(
                        "{resource}: actor {} (fence {}) held it from {} while actor {} (fence {}) held it until {}",
                        hold.actor,
                        hold.fence,
                        at(hold.start_us),
                        earlier.actor,
                        earlier.fence,
                        at(earlier.end_us)
                    ));
                }
            }
            if latest.is_none_or(|l| hold.end_us > l.end_us) {
                latest = Some(hold);
            }
        }
    }
    Ok((documents.len(), problems))
}

/// The nearest-rank percentile of sorted `waits`.
fn percentile(waits: &[Duration], percent: usize) -> Duration {
    if waits.is_empty() {
        return Duration::ZERO;
    }
    let rank = (waits.len() * percent).div_ceil(100).max(1);
    waits[rank - 1]
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[actix_rt::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("simulation: {e}");
            std::process::exit(2);
        }
    };
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match run(args).await {
        Ok(0) => {}
        Ok(_) => std::process::exit(1),
        Err(e) => {
            eprintln!("simulation: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs the simulation and prints its table; returns the number of violations.
async fn run(args: Args) -> Result<usize, Box<dyn std::error::Error>> {
    let uri = std::env::var("MONGODB_URI").map_err(|_| {
        "MONGODB_URI is not set: run `scripts/with-mongo cargo run --release --example simulation`"
    })?;
    let config = LockConfig::new(FAMILY).ttl(LEASE);
    let history: Collection<Document> = Client::with_uri_str(&uri)
        .await?
        .database(&config.database)
        .collection(&format!("{FAMILY}_history"));
    let mut managers = Vec::new();
    for _ in 0..args.managers {
        let client = Client::with_uri_str(&uri).await?;
        managers.push(LockManager::with_client(client, config.clone()).await?);
    }
    let run = uuid::Uuid::new_v4().to_string();
    let resources: Rc<Vec<String>> =
        Rc::new((0..args.resources).map(|r| format!("r{r}")).collect());
    println!(
        "simulation: actors {}, resources {}, operations {}, managers {}, seed {}, run {run}",
        args.actors, args.resources, args.operations, args.managers, args.seed
    );

    let timeline = Timeline::new();
    let started = Instant::now();
    let mut seeds = SplitMix64(args.seed);
    let mut reports = Vec::new();
    for index in 0..args.actors {
        let (done, report) = oneshot::channel();
        let share =
            args.operations / args.actors + usize::from(index < args.operations % args.actors);
        let manager_index = index % args.managers;
        Contender {
            index,
            manager_index,
            manager: managers[manager_index].clone(),
            resources: Rc::clone(&resources),
            rng: SplitMix64(seeds.next_u64()),
            operations_left: share,
            timeline,
            run: run.clone(),
            history: history.clone(),
            records: Vec::new(),
            tally: Tally::default(),
            done: Some(done),
        }
        .start();
        reports.push(report);
    }
    let mut total = Tally::default();
    for report in reports {
        total.add(report.await?);
    }
    let elapsed = started.elapsed();
    for manager in &managers {
        manager.send(Close).await?;
    }

    let (recorded, problems) = check_history(&history, &run, total.grants, timeline).await?;
    let violations = problems.len() + total.not_held as usize + total.errors as usize;
    total.waits.sort();
    let rows = [
        (
            "operations",
            format!("{}", total.operations),
            format!("Lock {}, Acquire {}", total.via_lock, total.via_acquire),
        ),
        (
            "grants",
            format!("{}", total.grants),
            format!("{recorded} recorded in {FAMILY}_history"),
        ),
        (
            "refusals",
            format!("{}", total.refused_locks + total.acquires_out_of_time),
            format!(
                "Lock AlreadyLocked {}, Acquire out of time {}",
                total.refused_locks, total.acquires_out_of_time
            ),
        ),
        (
            "wait p50",
            millis(percentile(&total.waits, 50)),
            "request to grant".to_owned(),
        ),
        (
            "wait p99",
            millis(percentile(&total.waits, 99)),
            format!(
                "max {}",
                millis(total.waits.last().copied().unwrap_or_default())
            ),
        ),
        (
            "lost holds",
            format!("{}", total.not_held),
            "Unlock answered NotHeld".to_owned(),
        ),
        ("errors", format!("{}", total.errors), String::new()),
        (
            "violations",
            format!("{violations}"),
            "overlaps, fence order, lost holds, errors".to_owned(),
        ),
        (
            "elapsed",
            format!("{:.1} s", elapsed.as_secs_f64()),
            format!(
                "{:.0} operations/s",
                f64::from(total.operations) / elapsed.as_secs_f64()
            ),
        ),
        (
            "choices",
            format!("{:016x}", total.fingerprint),
            "fingerprint: the same for the same seed and sizes".to_owned(),
        ),
    ];
    println!();
    for (name, value, note) in rows {
        println!("{name:<11} {value:>16}   {note}");
    }
    const SHOWN: usize = 20;
    for problem in problems.iter().take(SHOWN) {
        println!("VIOLATION: {problem}");
    }
    if problems.len() > SHOWN {
        println!("... and {} more", problems.len() - SHOWN);
    }
    Ok(violations)
}
