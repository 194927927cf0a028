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
//! server share the lock family `chat` and contend with each other: `--process-name` names the
//! owner stored with their holds, which `Status` shows to the other process. Tracing logs go to
//! stderr when `RUST_LOG` is set.

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
    Acquire, Close, Lock, LockConfig, LockError, LockManager, Status, Unlock, UnlockOutcome,
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

    fn holder(&self, thing: &str) -> Option<String> {
        self.holders.borrow().get(thing).cloned()
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
/// the release was sent (the server released no earlier), or until the lease could end.
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

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.grants += other.grants;
        self.refused += other.refused;
        self.longest_wait = self.longest_wait.max(other.longest_wait);
        self.held += other.held;
    }
}

/// Who a worker is, and whom it talks to.
struct Seat {
    name: String,
    uses_lock: bool,
    manager: Addr<LockManager>,
    room: Rc<Room>,
}

/// A worker: an actor taking turns (think, ask, hold, hand back) until the manager closes.
struct Worker {
    seat: Rc<Seat>,
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
        let thing = THINGS[self.rng.between(0, THINGS.len() as u64 - 1) as usize];
        let (think, hold) = (self.rng.millis(300, 1500), self.rng.millis(200, 800));
        let turn = take_turn(Rc::clone(&self.seat), thing, think, hold);
        ctx.wait(turn.into_actor(self).map(|turn, worker, ctx| match turn {
            Turn::Closed => ctx.stop(),
            Turn::Refused => {
                worker.tally.refused += 1;
                worker.next_turn(ctx);
            }
            Turn::Held { waited, held } => {
                worker.tally.add(&Tally {
                    grants: 1,
                    refused: 0,
                    longest_wait: waited,
                    held,
                });
                worker.next_turn(ctx);
            }
        }));
    }
}

/// One turn: think, ask for `thing`, use it for `hold`, hand it back.
async fn take_turn(
    seat: Rc<Seat>,
    (thing, activity): (&'static str, &str),
    think: Duration,
    hold: Duration,
) -> Turn {
    let (me, room) = (&seat.name, &seat.room);
    actix_rt::time::sleep(think).await;
    let asked = Instant::now();
    let answer = if seat.uses_lock {
        seat.manager.send(Lock::new(thing)).await
    } else {
        if let Some(holder) = room.holder(thing) {
            room.say(me, format!("waits for the {thing} ({holder} has it)"));
        }
        seat.manager
            .send(Acquire::new(thing).timeout(PATIENCE))
            .await
    };
    // A mailbox error means the manager has stopped: as good as closed.
    let grant = match answer.unwrap_or(Err(LockError::ManagerStopped)) {
        Ok(grant) => grant,
        Err(LockError::AlreadyLocked { .. }) => {
            let holder = match room.holder(thing) {
                Some(holder) => holder,
                None => held_elsewhere(&seat.manager, thing).await,
            };
            room.say(
                me,
                format!("finds the {thing} taken ({holder} has it), comes back later"),
            );
            return Turn::Refused;
        }
        Err(e @ (LockError::Closing | LockError::ManagerStopped)) => {
            room.say(
                me,
                format!("asks for the {thing}, is answered {e:?}, leaves"),
            );
            return Turn::Closed;
        }
        Err(e) => {
            room.say(me, format!("does not get the {thing}: {e}"));
            return Turn::Refused;
        }
    };

    let from = Instant::now();
    room.holders.borrow_mut().insert(thing, me.clone());
    let fence = grant.fence;
    room.say(
        me,
        format!(
            "takes the {thing} (fence {fence}), {activity} for {} ms",
            hold.as_millis()
        ),
    );
    actix_rt::time::sleep(hold).await;
    let sent = Instant::now();
    let released = seat.manager.send(Unlock::new(grant.lock_id)).await;
    room.hands_back(thing, me);
    let until = match released.unwrap_or(Err(LockError::ManagerStopped)) {
        Ok(UnlockOutcome::NotHeld) => {
            room.say(me, format!("finds the lease on the {thing} had run out"));
            // The lease began no earlier than the request, so it ran at least until this.
            Some(sent.min(asked + LEASE))
        }
        // Released, or Unconfirmed (gone, whoever released it).
        Ok(_) => {
            room.say(me, format!("hands back the {thing}"));
            Some(sent)
        }
        Err(LockError::Closing) => {
            room.say(
                me,
                format!("hands back the {thing}: Close has released it already"),
            );
            None
        }
        Err(e) => {
            room.say(
                me,
                format!("cannot hand back the {thing} ({e}); the lease will end it"),
            );
            None
        }
    };
    let worker = me.clone();
    room.holds.borrow_mut().push(Hold {
        thing,
        worker,
        fence,
        from,
        until,
    });
    Turn::Held {
        waited: from - asked,
        held: sent - from,
    }
}

/// Who holds `thing` when no worker here does: `Status` shows the owner stored with the hold
/// (another chat's `--process-name`), never its lock id.
async fn held_elsewhere(manager: &Addr<LockManager>, thing: &str) -> String {
    match manager.send(Status::new(thing)).await {
        Ok(Ok(Some(hold))) if hold.live => hold.owner.unwrap_or_else(|| "someone".to_owned()),
        _ => "nobody now".to_owned(),
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
        config = config.owner(process);
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
    let lease = LEASE.as_secs();
    room.say(
        &named("room"),
        format!(
            "opens for {seconds} s, with the microphone and the whiteboard; leases of {lease} s"
        ),
    );
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos().into());
    let mut seeds = SplitMix64(seed);
    let mut reports = Vec::new();
    for (index, name) in NAMES.iter().enumerate() {
        let uses_lock = index % 3 == 2;
        let seat = Rc::new(Seat {
            name: named(name),
            uses_lock,
            manager: manager.clone(),
            room: Rc::clone(&room),
        });
        room.say(
            &seat.name,
            if uses_lock {
                "asks with Lock, once"
            } else {
                "asks with Acquire, and waits"
            },
        );
        let (report, reported) = oneshot::channel();
        reports.push((Rc::clone(&seat), reported));
        Worker {
            seat,
            rng: SplitMix64(seeds.next_u64()),
            tally: Tally::default(),
            report: Some(report),
        }
        .start();
    }

    let interrupted = tokio::select! {
        () = actix_rt::time::sleep(Duration::from_secs(seconds)) => false,
        signal = actix_rt::signal::ctrl_c() => signal.is_ok(),
    };
    let why = if interrupted { "Ctrl-C" } else { "time is up" };
    room.say(&named("room"), format!("{why}: sends Close"));
    // Close answers once every message in flight is answered and every hold is released. Each
    // worker then leaves at its next answer: within one think and one hold (2.3 s at most).
    if manager.send(Close).await.is_err() {
        eprintln!("chat: the manager had stopped already");
    }
    room.holders.borrow_mut().clear();
    room.say(
        &named("room"),
        "is closed: every message answered, every hold released",
    );
    let mut tallies = Vec::new();
    for (seat, reported) in reports {
        tallies.push((seat, reported.await.unwrap_or_default()));
    }

    let row = |name: &str, asks_with: &str, t: &Tally| {
        let (wait, held) = (t.longest_wait.as_millis(), t.held.as_secs_f64());
        println!(
            "{name:<12}  {asks_with:<9}  {:>6}  {:>7}  {wait:>9} ms  {held:>7.1} s",
            t.grants, t.refused
        );
    };
    println!(
        "\n{:<12}  {:<9}  grants  refused  longest wait  time held",
        "worker", "asks with"
    );
    let mut total = Tally::default();
    for (seat, tally) in &tallies {
        row(
            &seat.name,
            if seat.uses_lock { "Lock" } else { "Acquire" },
            tally,
        );
        total.add(tally);
    }
    row("all", "", &total);

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
        "\nno thing was held by two workers at once ({} holds checked)",
        holds.len()
    );
}
