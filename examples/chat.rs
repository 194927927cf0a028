//! The chat of contending workers: six worker actors share a microphone and a whiteboard
//! through one `LockManager`, and say who holds what as they go.
//!
//! ```text
//! scripts/with-mongo cargo run --example chat
//! scripts/with-mongo sh -c 'cargo run -q --example chat -- --process-name east &
//!                           cargo run -q --example chat -- --process-name west; wait'
//! ```
//!
//! Four workers wait their turn with `Acquire`; two ask once with `Lock` and, when refused, come
//! back later. After `--seconds` (15 by default), or on Ctrl-C, the room sends `Close`, the
//! manager's own drain: waiting Acquires end with `Closing`, holds still held are released, and
//! every later message answers `Closing`. So each worker simply leaves at its next answer: the
//! room needs no shutdown signal of its own.
//!
//! Then a summary per worker, and a check over every hold this process saw that no thing was
//! held by two workers at once; the exit status is 1 if one was. Two chat processes on one
//! server share the lock family `chat` and contend with each other; `--process-name` tells
//! their workers apart. Tracing logs go to stderr when `RUST_LOG` is set.

#[path = "support/flags.rs"]
mod flags;
#[path = "support/split_mix.rs"]
mod split_mix;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Display;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_mongo_lock::{
    Acquire, Close, Lock, LockConfig, LockError, LockManager, Unlock, UnlockOutcome,
};
use split_mix::SplitMix64;
use tokio::sync::oneshot;

const USAGE: &str = "usage: chat [--seconds N] [--process-name NAME]";
/// The lock family every chat process shares, so that two of them contend.
const FAMILY: &str = "chat";
/// The lease of every grant: far longer than any hold, and short enough that a chat killed
/// while holding frees its things within seconds.
const LEASE: Duration = Duration::from_secs(5);
/// How long a worker's `Acquire` waits before it gives up for this turn.
const PATIENCE: Duration = Duration::from_secs(3);
/// The things to contend for, and what a holder does with each.
const THINGS: [(&str, &str); 2] = [("microphone", "speaks"), ("whiteboard", "draws")];
/// The workers; every third one asks with `Lock`, the others with `Acquire`.
const NAMES: [&str; 6] = ["ada", "grace", "alan", "barbara", "edsger", "radia"];

/// What the workers share: who holds what (as far as this process knows) and every hold, for
/// the check at the end. One arbiter runs every worker, so plain cells suffice.
struct Room {
    opened: Instant,
    holders: RefCell<HashMap<&'static str, String>>,
    holds: RefCell<Vec<Hold>>,
}

impl Room {
    /// Prints one line: seconds since the room opened, who, what.
    fn say(&self, who: &str, what: impl Display) {
        let at = self.opened.elapsed().as_secs_f64();
        println!("{at:6.2} s  {who:<12}  {what}");
    }

    fn holder(&self, thing: &str) -> String {
        let holders = self.holders.borrow();
        holders
            .get(thing)
            .cloned()
            .unwrap_or_else(|| "someone".to_owned())
    }

    /// Forgets `who` as the holder of `thing`, unless the next holder is already known.
    fn hands_back(&self, thing: &str, who: &str) {
        let mut holders = self.holders.borrow_mut();
        if holders.get(thing).is_some_and(|holder| holder == who) {
            holders.remove(thing);
        }
    }
}

/// One hold as its worker saw it: from the grant's reply (the server granted no later) until
/// the release was sent (the server released no later), or until the lease could end.
struct Hold {
    thing: &'static str,
    worker: String,
    fence: i64,
    from: Instant,
    /// `None` when the hold was released by `Close`: no grant here comes after that.
    until: Option<Instant>,
}

/// What one turn came to.
enum Turn {
    Held { waited: Duration, held: Duration },
    Refused,
    Closed,
}

/// What one worker did over the run.
#[derive(Default)]
struct Tally {
    grants: u32,
    refused: u32,
    longest_wait: Duration,
    held: Duration,
}

/// A worker: an actor taking turns (think, ask, hold, hand back) until the manager closes.
struct Worker {
    name: String,
    uses_lock: bool,
    manager: Addr<LockManager>,
    room: Rc<Room>,
    rng: SplitMix64,
    tally: Tally,
    report: Option<oneshot::Sender<Tally>>,
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.next_turn(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(report) = self.report.take() {
            let _ = report.send(std::mem::take(&mut self.tally));
        }
    }
}

impl Worker {
    fn next_turn(&mut self, ctx: &mut Context<Self>) {
        let thing = self.rng.between(0, THINGS.len() as u64 - 1) as usize;
        let think = self.rng.millis(300, 1500);
        let hold = self.rng.millis(200, 800);
        let turn = take_turn(
            self.name.clone(),
            self.uses_lock,
            self.manager.clone(),
            Rc::clone(&self.room),
            THINGS[thing],
            think,
            hold,
        );
        ctx.wait(turn.into_actor(self).map(|turn, worker, ctx| {
            match turn {
                Turn::Held { waited, held } => {
                    worker.tally.grants += 1;
                    worker.tally.longest_wait = worker.tally.longest_wait.max(waited);
                    worker.tally.held += held;
                }
                Turn::Refused => worker.tally.refused += 1,
                Turn::Closed => return ctx.stop(),
            }
            worker.next_turn(ctx);
        }));
    }
}

/// One turn: think, ask for `thing`, use it for `hold`, hand it back.
async fn take_turn(
    me: String,
    uses_lock: bool,
    manager: Addr<LockManager>,
    room: Rc<Room>,
    (thing, activity): (&'static str, &str),
    think: Duration,
    hold: Duration,
) -> Turn {
    actix_rt::time::sleep(think).await;
    let asked = Instant::now();
    let answer = if uses_lock {
        manager.send(Lock::new(thing)).await
    } else {
        if room.holders.borrow().contains_key(thing) {
            room.say(
                &me,
                format_args!("waits for the {thing} ({} has it)", room.holder(thing)),
            );
        }
        manager.send(Acquire::new(thing).timeout(PATIENCE)).await
    };
    let grant = match answer {
        Ok(Ok(grant)) => grant,
        Ok(Err(LockError::AlreadyLocked { .. })) => {
            let holder = room.holder(thing);
            room.say(
                &me,
                format_args!("finds the {thing} taken ({holder} has it), comes back later"),
            );
            return Turn::Refused;
        }
        Ok(Err(LockError::Closing)) => {
            room.say(
                &me,
                format_args!("asked for the {thing}, is answered Closing, leaves"),
            );
            return Turn::Closed;
        }
        Ok(Err(e)) => {
            room.say(&me, format_args!("does not get the {thing}: {e}"));
            return Turn::Refused;
        }
        Err(e) => {
            room.say(&me, format_args!("cannot reach the manager ({e}), leaves"));
            return Turn::Closed;
        }
    };

    let from = Instant::now();
    room.holders.borrow_mut().insert(thing, me.clone());
    let fence = grant.fence;
    room.say(
        &me,
        format_args!(
            "takes the {thing} (fence {fence}), {activity} for {} ms",
            hold.as_millis()
        ),
    );
    actix_rt::time::sleep(hold).await;
    let sent = Instant::now();
    let released = manager.send(Unlock::new(grant.lock_id)).await;
    room.hands_back(thing, &me);
    let until = match released {
        Ok(Ok(UnlockOutcome::Released | UnlockOutcome::Unconfirmed)) => {
            room.say(&me, format_args!("hands back the {thing}"));
            Some(sent)
        }
        Ok(Ok(UnlockOutcome::NotHeld)) => {
            room.say(
                &me,
                format_args!("finds the lease on the {thing} had run out"),
            );
            // The lease began no earlier than the request, so it ran at least until this.
            Some(sent.min(asked + LEASE))
        }
        Ok(Err(LockError::Closing)) => {
            room.say(
                &me,
                format_args!("hands back the {thing}: Close has released it already"),
            );
            None
        }
        Ok(Err(e)) => {
            room.say(
                &me,
                format_args!("cannot hand back the {thing} ({e}); the lease will end it"),
            );
            None
        }
        Err(e) => {
            room.say(
                &me,
                format_args!("cannot reach the manager ({e}); the lease will end the hold"),
            );
            None
        }
    };
    room.holds.borrow_mut().push(Hold {
        thing,
        worker: me,
        fence,
        from,
        until,
    });
    Turn::Held {
        waited: from - asked,
        held: sent - from,
    }
}

/// Holds of one thing that overlapped. Sorted by their start, a thing's holds overlap somewhere
/// exactly when two neighbours do, so neighbours are all there is to compare.
fn overlaps(holds: &mut [Hold]) -> Vec<(&Hold, &Hold)> {
    holds.sort_by_key(|h| (h.thing, h.from));
    holds
        .windows(2)
        .filter(|pair| {
            pair[0].thing == pair[1].thing && pair[0].until.is_none_or(|until| pair[1].from < until)
        })
        .map(|pair| (&pair[0], &pair[1]))
        .collect()
}

#[actix_rt::main]
async fn main() {
    let (seconds, process) = flags::read("chat", USAGE, |flags| {
        Ok((flags.number("--seconds", 15)?, flags.text("--process-name")))
    });
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let Ok(uri) = std::env::var("MONGODB_URI") else {
        eprintln!(
            "chat: MONGODB_URI is not set: run `scripts/with-mongo cargo run --example chat`"
        );
        std::process::exit(2);
    };
    let mut config = LockConfig::new(FAMILY).ttl(LEASE);
    if let Some(process) = &process {
        config = config.owner(format!("chat:{process}"));
    }
    let manager = match LockManager::connect(&uri, config).await {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("chat: cannot open the room: {e}");
            std::process::exit(1);
        }
    };

    let room = Rc::new(Room {
        opened: Instant::now(),
        holders: RefCell::default(),
        holds: RefCell::default(),
    });
    let named = |name: &str| match &process {
        Some(process) => format!("{process}/{name}"),
        None => name.to_owned(),
    };
    room.say(
        &named("room"),
        format_args!("opens for {seconds} s; leases of {} s", LEASE.as_secs()),
    );
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos().into());
    let mut seeds = SplitMix64(seed);
    let mut reports = Vec::new();
    for (index, name) in NAMES.iter().enumerate() {
        let (report, reported) = oneshot::channel();
        let uses_lock = index % 3 == 2;
        let name = named(name);
        room.say(
            &name,
            if uses_lock {
                "asks with Lock, once"
            } else {
                "asks with Acquire, and waits"
            },
        );
        Worker {
            name: name.clone(),
            uses_lock,
            manager: manager.clone(),
            room: Rc::clone(&room),
            rng: SplitMix64(seeds.next_u64()),
            tally: Tally::default(),
            report: Some(report),
        }
        .start();
        reports.push((name, uses_lock, reported));
    }

    let interrupted = tokio::select! {
        () = actix_rt::time::sleep(Duration::from_secs(seconds)) => false,
        signal = actix_rt::signal::ctrl_c() => signal.is_ok(),
    };
    let why = if interrupted { "Ctrl-C" } else { "time is up" };
    room.say(&named("room"), format_args!("{why}: sends Close"));
    // Close answers once every message in flight is answered and every hold is released. Each
    // worker then leaves at its next answer: within one think and one hold (2.3 s at most).
    if manager.send(Close).await.is_err() {
        eprintln!("chat: the manager had stopped already");
    }
    room.say(
        &named("room"),
        "is closed: every message answered, every hold released",
    );

    println!(
        "\n{:<12}  {:<9}  {:>6}  {:>7}  {:>12}  {:>9}",
        "worker", "asks with", "grants", "refused", "longest wait", "time held"
    );
    let mut total = Tally::default();
    for (name, uses_lock, reported) in reports {
        let tally = reported.await.unwrap_or_default();
        let asks_with = if uses_lock { "Lock" } else { "Acquire" };
        println!(
            "{name:<12}  {asks_with:<9}  {:>6}  {:>7}  {:>9} ms  {:>7.1} s",
            tally.grants,
            tally.refused,
            tally.longest_wait.as_millis(),
            tally.held.as_secs_f64()
        );
        total.grants += tally.grants;
        total.refused += tally.refused;
        total.longest_wait = total.longest_wait.max(tally.longest_wait);
        total.held += tally.held;
    }
    println!(
        "{:<12}  {:<9}  {:>6}  {:>7}  {:>9} ms  {:>7.1} s\n",
        "all",
        "",
        total.grants,
        total.refused,
        total.longest_wait.as_millis(),
        total.held.as_secs_f64()
    );

    let mut holds = room.holds.take();
    let found = overlaps(&mut holds);
    for (a, b) in &found {
        println!(
            "OVERLAP: {} and {} held the {} at once (fences {} and {})",
            a.worker, b.worker, a.thing, a.fence, b.fence
        );
    }
    if !found.is_empty() {
        std::process::exit(1);
    }
    println!(
        "no thing was held by two workers at once ({} holds checked)",
        holds.len()
    );
}
