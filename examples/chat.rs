//! The chat of contending workers: a room in which worker actors take turns with shared things
//! (the microphone, the whiteboard, ...) through one `LockManager`, and say what they do as they
//! do it.
//!
//! ```text
//! scripts/with-mongo cargo run --example chat
//! scripts/with-mongo cargo run --example chat -- --workers 8 --resources 3 --seconds 30 --seed 7
//! scripts/with-mongo sh -c 'cargo run -q --example chat -- --process-name east &
//!                           cargo run -q --example chat -- --process-name west; wait'
//! ```
//!
//! Each worker is an actix actor holding the manager's `Addr`. Most ask with `Acquire` and wait
//! their turn; every third one asks with `Lock` once and, when refused, comes back a little
//! later. The second worker daydreams now and then: she keeps a thing longer than its 2 s lease,
//! so the room shows what an expired lease looks like (her successor's fence is higher, and her
//! late `Unlock` answers `NotHeld`). Two chat processes on one server share the lock family
//! `chat` and contend with each other; `--process-name` prefixes their workers' names.
//!
//! At the end (or on Ctrl-C) the holders hand back what they hold, `Close` drains the manager,
//! and a summary per worker follows, with a check, from every grant and release this process
//! saw, that no thing was held by two workers at once. The exit status is 1 if one was.
//! Tracing logs go to stderr, only when `RUST_LOG` is set.

#[path = "support/split_mix.rs"]
mod split_mix;

use split_mix::SplitMix64;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_mongo_lock::{
    Acquire, Close, Lock, LockConfig, LockError, LockGrant, LockManager, Unlock, UnlockOutcome,
};
use tokio::sync::{watch, Notify};

/// The lock family every chat process shares, so that two of them contend.
const FAMILY: &str = "chat";
/// The lease of every grant: short, so that a daydream outlasts it.
const LEASE: Duration = Duration::from_secs(2);
/// How long an `Acquire` waits before its worker gives up.
const PATIENCE: Duration = Duration::from_secs(4);
/// An `Acquire` not answered within this is announced as a wait.
const WAITING_NOTICE: Duration = Duration::from_millis(30);
/// How long a refused `Lock` worker keeps coming back before it gives up for this turn.
const LOCK_TRIES: usize = 3;
/// How long the room waits, once the time is up, for holders to hand back what they hold.
const HAND_BACK_GRACE: Duration = Duration::from_millis(1500);
/// How long the room waits, after `Close`, for every worker to finish its turn.
const LEAVE_GRACE: Duration = Duration::from_secs(3);

/// The things to contend for: id, how the room names it, what a holder does with it.
const THINGS: [(&str, &str, &str); 6] = [
    ("microphone", "the microphone", "speaks"),
    ("whiteboard", "the whiteboard", "draws"),
    ("projector", "the projector", "presents"),
    ("kettle", "the kettle", "makes tea"),
    ("piano", "the piano", "plays"),
    ("window-seat", "the window seat", "reads"),
];

/// The workers' names and possessive pronouns.
const PEOPLE: [(&str, &str); 12] = [
    ("ada", "her"),
    ("grace", "her"),
    ("alan", "his"),
    ("barbara", "her"),
    ("edsger", "his"),
    ("radia", "her"),
    ("ken", "his"),
    ("frances", "her"),
    ("dennis", "his"),
    ("margaret", "her"),
    ("leslie", "his"),
    ("niklaus", "his"),
];

struct Args {
    workers: usize,
    resources: usize,
    seconds: u64,
    process_name: Option<String>,
    seed: u64,
}

const USAGE: &str =
    "usage: chat [--workers N] [--resources N] [--seconds N] [--process-name NAME] [--seed N]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workers: 6,
        resources: 2,
        seconds: 20,
        process_name: None,
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos().into()),
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
            "--workers" => args.workers = number()? as usize,
            "--resources" => args.resources = number()? as usize,
            "--seconds" => args.seconds = number()?,
            "--seed" => args.seed = number()?,
            "--process-name" => args.process_name = Some(value.clone()),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if args.workers == 0 || args.resources == 0 {
        return Err("--workers and --resources must be at least 1".to_owned());
    }
    Ok(args)
}

/// One thing in the room.
#[derive(Clone)]
struct Thing {
    id: String,
    name: String,
    activity: String,
}

fn things(count: usize) -> Vec<Thing> {
    (0..count)
        .map(|i| match THINGS.get(i) {
            Some((id, name, activity)) => Thing {
                id: (*id).to_owned(),
                name: (*name).to_owned(),
                activity: (*activity).to_owned(),
            },
            None => Thing {
                id: format!("table-{}", i + 1),
                name: format!("table {}", i + 1),
                activity: "works".to_owned(),
            },
        })
        .collect()
}

/// How a worker asks for a thing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Manner {
    /// `Acquire`: waits its turn.
    Waits,
    /// `Acquire`, and every third hold lasts longer than the lease.
    Daydreams,
    /// `Lock`: asks once, and when refused comes back later.
    Polite,
}

impl fmt::Display for Manner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Manner::Waits => "Acquire",
            Manner::Daydreams => "Acquire, daydreams",
            Manner::Polite => "Lock, backs off",
        })
    }
}

/// Who a worker is.
struct Identity {
    name: String,
    pronoun: &'static str,
    manner: Manner,
}

/// What one worker did over the run.
#[derive(Clone, Default)]
struct WorkerStats {
    grants: u32,
    refusals: u32,
    longest_wait: Duration,
    held: Duration,
    late_releases: u32,
}

impl WorkerStats {
    fn add(&mut self, other: &WorkerStats) {
        self.grants += other.grants;
        self.refusals += other.refusals;
        self.longest_wait = self.longest_wait.max(other.longest_wait);
        self.held += other.held;
        self.late_releases += other.late_releases;
    }
}

/// One grant, as this process saw it; what the overlap check reads.
struct HoldRecord {
    thing: usize,
    worker: String,
    fence: i64,
    /// When the server granted it and when its lease ends unless released, both on the server's
    /// clock as the manager computed them: the grant's filter compares exactly these values.
    granted_at: SystemTime,
    expires_at: SystemTime,
    /// When the grant's reply arrived here.
    reply: Instant,
    /// When the `Unlock` that released it was sent, if one answered `Released`: the server
    /// released it no earlier than that.
    release_sent: Option<Instant>,
}

/// What every worker shares: the clock of the room, the printer, the closing signal, and the
/// record of every hold. Everything runs on one arbiter, so plain cells suffice.
struct Room {
    label: String,
    workers: Vec<Rc<Identity>>,
    name_width: usize,
    things: Vec<Thing>,
    closing: watch::Sender<bool>,
    in_flight: Cell<usize>,
    holding: Cell<usize>,
    handed_back: Notify,
    holds: RefCell<Vec<HoldRecord>>,
    finished: RefCell<Vec<(usize, WorkerStats)>>,
    left: Notify,
}

impl Room {
    /// Prints one line: time, who, a verb padded to a column, the rest.
    fn say(&self, who: &str, verb: &str, rest: impl fmt::Display) {
        println!(
            "{}  {:<width$}  {:<8} {}",
            wall_clock(),
            who,
            verb,
            rest,
            width = self.name_width
        );
    }

    /// Prints a line from the room itself.
    fn announce(&self, text: impl fmt::Display) {
        println!(
            "{}  {:<width$}  {}",
            wall_clock(),
            self.label,
            text,
            width = self.name_width
        );
    }

    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once the room starts closing.
    async fn closes(&self) {
        let mut closing = self.closing.subscribe();
        // The sender lives in the room, which outlives every worker.
        let _ = closing.wait_for(|c| *c).await;
    }

    /// Sleeps for `pause`; `false` if the room started closing first.
    async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            () = actix_rt::time::sleep(pause) => true,
            () = self.closes() => false,
        }
    }

    /// Sends `msg` to the manager, counting it as in flight until it is answered.
    async fn ask<M>(&self, manager: &Addr<LockManager>, msg: M) -> Result<M::Result, MailboxError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        LockManager: Handler<M>,
    {
        let _in_flight = InFlight::enter(&self.in_flight);
        manager.send(msg).await
    }
}

/// Counts one message as in flight while it lives.
struct InFlight<'a>(&'a Cell<usize>);

impl<'a> InFlight<'a> {
    fn enter(count: &'a Cell<usize>) -> Self {
        count.set(count.get() + 1);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// What a worker means to do in one turn, drawn from its generator before the turn starts.
struct Plan {
    thing: usize,
    think: Duration,
    hold: Duration,
    daydream: bool,
    retry_pauses: [Duration; LOCK_TRIES],
}

/// A worker: an actor that takes turns until the room closes.
struct Worker {
    index: usize,
    identity: Rc<Identity>,
    rng: SplitMix64,
    manager: Addr<LockManager>,
    room: Rc<Room>,
    stats: WorkerStats,
}

impl Worker {
    fn plan(&mut self) -> Plan {
        let rng = &mut self.rng;
        let thing = rng.between(0, self.room.things.len() as u64 - 1) as usize;
        let think = rng.millis(200, 1500);
        let hold = rng.millis(200, 800);
        let retry_pauses = [(); LOCK_TRIES].map(|()| rng.millis(300, 700));
        // The daydreamer outlasts her lease on her second grant and every third after it: by
        // more than a second, since a server that compares dates by whole seconds may hand the
        // thing on up to 1 s after the lease ends.
        let daydream = self.identity.manner == Manner::Daydreams && self.stats.grants % 3 == 1;
        let hold = if daydream {
            LEASE + rng.millis(1200, 1800)
        } else {
            hold
        };
        Plan {
            thing,
            think,
            hold,
            daydream,
            retry_pauses,
        }
    }

    fn next_turn(&mut self, ctx: &mut Context<Self>) {
        if self.room.is_closing() {
            ctx.stop();
            return;
        }
        let plan = self.plan();
        let turn = take_turn(
            Rc::clone(&self.identity),
            self.manager.clone(),
            Rc::clone(&self.room),
            plan,
        );
        ctx.spawn(turn.into_actor(self).map(|done, worker, ctx| {
            worker.stats.add(&done);
            worker.next_turn(ctx);
        }));
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.next_turn(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.room
            .finished
            .borrow_mut()
            .push((self.index, self.stats.clone()));
        self.room.left.notify_waiters();
    }
}

/// One turn: think, ask for a thing, use it, hand it back.
async fn take_turn(
    me: Rc<Identity>,
    manager: Addr<LockManager>,
    room: Rc<Room>,
    plan: Plan,
) -> WorkerStats {
    let mut done = WorkerStats::default();
    if !room.pause(plan.think).await {
        return done;
    }
    let thing = &room.things[plan.thing];
    let asked = Instant::now();
    let grant = match me.manner {
        Manner::Waits | Manner::Daydreams => acquire(&me, &manager, &room, thing, &mut done).await,
        Manner::Polite => lock(&me, &manager, &room, thing, &plan, &mut done).await,
    };
    let Some(grant) = grant else { return done };
    let reply = Instant::now();
    let waited = reply - asked;
    done.grants += 1;
    done.longest_wait = waited;
    room.holding.set(room.holding.get() + 1);

    let after = if waited >= WAITING_NOTICE {
        format!(" after {} ms", waited.as_millis())
    } else {
        String::new()
    };
    if plan.daydream {
        room.say(
            &me.name,
            "took",
            format_args!(
                "{} (fence {}){after}, daydreams for {:.1} s (lease {} s)",
                thing.name,
                grant.fence,
                plan.hold.as_secs_f64(),
                LEASE.as_secs()
            ),
        );
    } else {
        room.say(
            &me.name,
            "took",
            format_args!(
                "{} (fence {}){after}, {} for {} ms",
                thing.name,
                grant.fence,
                thing.activity,
                plan.hold.as_millis()
            ),
        );
    }
    let finished = room.pause(plan.hold).await;
    if !finished {
        room.say(
            &me.name,
            "hands",
            format_args!("back {} early: the room is closing", thing.name),
        );
    } else if plan.daydream {
        room.say(
            &me.name,
            "wakes up",
            format_args!(
                "and hands back {}, {:.1} s after taking it",
                thing.name,
                reply.elapsed().as_secs_f64()
            ),
        );
    }
    release(&me, &manager, &room, plan.thing, grant, reply, &mut done).await;
    done
}

/// Asks with `Acquire`, announcing the wait if it is not answered at once.
async fn acquire(
    me: &Identity,
    manager: &Addr<LockManager>,
    room: &Room,
    thing: &Thing,
    done: &mut WorkerStats,
) -> Option<LockGrant> {
    let asked = Instant::now();
    let answer = room.ask(manager, Acquire::new(&thing.id).timeout(PATIENCE));
    tokio::pin!(answer);
    let answer = tokio::select! {
        answer = &mut answer => answer,
        () = actix_rt::time::sleep(WAITING_NOTICE) => {
            room.say(&me.name, "waiting", format_args!("for {}", thing.name));
            answer.await
        }
    };
    match answer {
        Ok(Ok(grant)) => Some(grant),
        Ok(Err(LockError::AcquireTimeout { .. } | LockError::AcquireMaxRetries { .. })) => {
            done.refusals += 1;
            room.say(
                &me.name,
                "gives up",
                format_args!(
                    "waiting for {} after {:.1} s",
                    thing.name,
                    asked.elapsed().as_secs_f64()
                ),
            );
            None
        }
        Ok(Err(LockError::Closing)) => {
            room.say(
                &me.name,
                "stops",
                format_args!("waiting for {}: the room is closing", thing.name),
            );
            None
        }
        Ok(Err(e)) => {
            room.say(
                &me.name,
                "fails",
                format_args!("to get {}: {e}", thing.name),
            );
            None
        }
        Err(e) => {
            room.say(&me.name, "fails", format_args!("to reach the manager: {e}"));
            None
        }
    }
}

/// Asks with `Lock`; when refused, says so and comes back later, a few times.
async fn lock(
    me: &Identity,
    manager: &Addr<LockManager>,
    room: &Room,
    thing: &Thing,
    plan: &Plan,
    done: &mut WorkerStats,
) -> Option<LockGrant> {
    for (attempt, pause) in plan.retry_pauses.iter().enumerate() {
        match room.ask(manager, Lock::new(&thing.id)).await {
            Ok(Ok(grant)) => return Some(grant),
            Ok(Err(LockError::AlreadyLocked { .. })) => {
                done.refusals += 1;
                if attempt + 1 == LOCK_TRIES {
                    room.say(
                        &me.name,
                        "finds",
                        format_args!("{} taken again, and leaves it for now", thing.name),
                    );
                    return None;
                }
                room.say(
                    &me.name,
                    "finds",
                    format_args!(
                        "{} taken, will try again in {} ms",
                        thing.name,
                        pause.as_millis()
                    ),
                );
                if !room.pause(*pause).await {
                    return None;
                }
            }
            Ok(Err(LockError::Closing)) => return None,
            Ok(Err(e)) => {
                room.say(
                    &me.name,
                    "fails",
                    format_args!("to get {}: {e}", thing.name),
                );
                return None;
            }
            Err(e) => {
                room.say(&me.name, "fails", format_args!("to reach the manager: {e}"));
                return None;
            }
        }
    }
    None
}

/// Hands a thing back with `Unlock` and records the hold for the overlap check.
async fn release(
    me: &Identity,
    manager: &Addr<LockManager>,
    room: &Room,
    thing_index: usize,
    grant: LockGrant,
    reply: Instant,
    done: &mut WorkerStats,
) {
    let thing = &room.things[thing_index];
    let lease = grant
        .expires_at
        .duration_since(grant.granted_at)
        .unwrap_or_default();
    let mut record = HoldRecord {
        thing: thing_index,
        worker: me.name.clone(),
        fence: grant.fence,
        granted_at: grant.granted_at,
        expires_at: grant.expires_at,
        reply,
        release_sent: None,
    };
    let sent = Instant::now();
    let answer = room.ask(manager, Unlock::new(grant.lock_id));
    // No longer holding once the Unlock is on its way: the room may close behind it. The
    // message is queued on the first poll below, before any other task runs.
    room.holding.set(room.holding.get() - 1);
    if room.holding.get() == 0 {
        room.handed_back.notify_waiters();
    }
    let answer = answer.await;
    let answered = Instant::now();
    // Roughly: from the grant's reply to the release's, or to the lease's end.
    done.held += (answered - reply).min(lease);
    match answer {
        Ok(Ok(UnlockOutcome::Released)) => {
            record.release_sent = Some(sent);
            if answered - reply > lease {
                room.say(
                    &me.name,
                    "released",
                    format_args!(
                        "{} after {} lease had run out: nobody had taken it meanwhile",
                        thing.name, me.pronoun
                    ),
                );
            } else {
                room.say(&me.name, "released", &thing.name);
            }
        }
        Ok(Ok(UnlockOutcome::NotHeld)) => {
            done.late_releases += 1;
            room.announce(format_args!(
                "{}'s lease on {} (fence {}) had run out; {} release changed nothing",
                me.name, thing.name, record.fence, me.pronoun
            ));
        }
        Ok(Ok(UnlockOutcome::Unconfirmed)) => {
            record.release_sent = Some(sent);
            room.announce(format_args!(
                "{}'s release of {} met a dropped connection; the retry found it already free",
                me.name, thing.name
            ));
        }
        Ok(Err(LockError::Closing)) => room.announce(format_args!(
            "{}'s release of {} came after closing began; Close releases what is still held",
            me.name, thing.name
        )),
        Ok(Err(e)) => room.announce(format_args!(
            "{} could not release {} ({e}); {} lease of {} s ends the hold",
            me.name,
            thing.name,
            me.pronoun,
            lease.as_secs()
        )),
        Err(e) => room.announce(format_args!(
            "{} could not reach the manager to release {} ({e}); {} lease ends the hold",
            me.name, thing.name, me.pronoun
        )),
    }
    room.holds.borrow_mut().push(record);
}

/// The holds of one thing that were live at once: a hold is live from its grant until its
/// release or the end of its lease, whichever comes first.
///
/// Holds are taken in grant order (the server's clock, then reply order). A later hold `b`
/// overlaps an earlier `a` if `b` was granted while `a`'s lease was live (`b.granted_at <=
/// a.expires_at`: the grant's own filter takes over a lease only when `expiresAt < now`) and
/// before `a` was released (`b`'s reply came before `a`'s `Unlock` was even sent). A correct
/// manager never does both; a manager that grants a live, unreleased hold always does.
fn overlaps(holds: &mut [HoldRecord]) -> Vec<(usize, usize)> {
    holds.sort_by_key(|h| (h.thing, h.granted_at, h.reply));
    let mut found = Vec::new();
    for (i, a) in holds.iter().enumerate() {
        for (j, b) in holds.iter().enumerate().skip(i + 1) {
            if b.thing != a.thing || b.granted_at > a.expires_at {
                break;
            }
            if a.release_sent.is_none_or(|sent| b.reply < sent) {
                found.push((i, j));
            }
        }
    }
    found
}

/// The wall clock as `HH:MM:SS.mmm`, UTC.
fn wall_clock() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        since_epoch.subsec_millis()
    )
}

/// `count` and `noun`, plural when it is not one.
fn counted(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[actix_rt::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("chat: {e}");
            std::process::exit(2);
        }
    };
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
    let prefixed = |name: &str| match &args.process_name {
        Some(process) => format!("{process}/{name}"),
        None => name.to_owned(),
    };
    let mut config = LockConfig::new(FAMILY).ttl(LEASE);
    if let Some(process) = &args.process_name {
        config = config.owner(format!("chat:{process}"));
    }
    let manager = match LockManager::connect(&uri, config).await {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("chat: cannot open the room: {e}");
            std::process::exit(1);
        }
    };

    let identities: Vec<Rc<Identity>> = (0..args.workers)
        .map(|i| {
            let (name, pronoun) = match PEOPLE.get(i) {
                Some((name, pronoun)) => ((*name).to_owned(), *pronoun),
                None => (format!("worker{}", i + 1), "their"),
            };
            let manner = match i {
                1 => Manner::Daydreams,
                i if i % 3 == 2 => Manner::Polite,
                _ => Manner::Waits,
            };
            Rc::new(Identity {
                name: prefixed(&name),
                pronoun,
                manner,
            })
        })
        .collect();
    let label = prefixed("room");
    let name_width = identities
        .iter()
        .map(|w| w.name.len())
        .chain([label.len()])
        .max()
        .unwrap_or_default();
    let room = Rc::new(Room {
        label,
        workers: identities.clone(),
        name_width,
        things: things(args.resources),
        closing: watch::Sender::new(false),
        in_flight: Cell::new(0),
        holding: Cell::new(0),
        handed_back: Notify::new(),
        holds: RefCell::default(),
        finished: RefCell::default(),
        left: Notify::new(),
    });

    let names_of = |manner: Manner| {
        room.workers
            .iter()
            .filter(|w| w.manner == manner)
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    room.announce(format_args!(
        "opens (times UTC): {}, {} ({}), {} s, leases of {} s, seed {}",
        counted(args.workers, "worker"),
        counted(args.resources, "thing"),
        room.things
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        args.seconds,
        LEASE.as_secs(),
        args.seed
    ));
    for (manner, habit) in [
        (Manner::Waits, "waiting their turn (Acquire)"),
        (
            Manner::Daydreams,
            "waiting their turn (Acquire), and now and then daydreaming past the lease",
        ),
        (
            Manner::Polite,
            "asking once, and coming back later when refused (Lock)",
        ),
    ] {
        let names = names_of(manner);
        if !names.is_empty() {
            room.announce(format_args!("{habit}: {names}"));
        }
    }

    let mut seeds = SplitMix64(args.seed);
    let workers = identities.len();
    for (index, identity) in identities.into_iter().enumerate() {
        Worker {
            index,
            identity,
            rng: SplitMix64(seeds.next_u64()),
            manager: manager.clone(),
            room: Rc::clone(&room),
            stats: WorkerStats::default(),
        }
        .start();
    }

    let interrupted = tokio::select! {
        () = actix_rt::time::sleep(Duration::from_secs(args.seconds)) => false,
        signal = actix_rt::signal::ctrl_c() => signal.is_ok(),
    };
    room.announce(if interrupted {
        "Ctrl-C: everyone hands back what they hold"
    } else {
        "time is up: everyone hands back what they hold"
    });
    room.closing.send_replace(true);
    // Close as soon as the last holder's Unlock is queued: it is answered, and so is every
    // Acquire still waiting (with `Closing`), instead of handing each thing on once more.
    let handed_back = room.handed_back.notified();
    if room.holding.get() > 0 {
        let _ = actix_rt::time::timeout(HAND_BACK_GRACE, handed_back).await;
    }
    let in_flight = room.in_flight.get();
    let _ = manager.send(Close).await;
    // Close returns once every reply is sent; give the workers a moment to read theirs.
    let settle = Instant::now() + Duration::from_millis(500);
    while room.in_flight.get() > 0 && Instant::now() < settle {
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let unanswered = room.in_flight.get();
    if unanswered == 0 {
        room.announce(format_args!(
            "closing the room: {} in flight answered",
            counted(in_flight, "message")
        ));
    } else {
        room.announce(format_args!(
            "closing the room: {} in flight, {unanswered} still unanswered",
            counted(in_flight, "message")
        ));
    }
    let leave = Instant::now() + LEAVE_GRACE;
    while room.finished.borrow().len() < workers && Instant::now() < leave {
        let left = room.left.notified();
        tokio::select! {
            () = left => {}
            () = actix_rt::time::sleep(Duration::from_millis(50)) => {}
        }
    }

    print_summary(&room, workers);
    let mut holds = std::mem::take(&mut *room.holds.borrow_mut());
    let found = overlaps(&mut holds);
    let things_held: BTreeSet<usize> = holds.iter().map(|h| h.thing).collect();
    if found.is_empty() {
        println!(
            "no resource was held by two at once ({} of {} checked)",
            counted(holds.len(), "hold"),
            counted(things_held.len(), "thing")
        );
        return;
    }
    for (i, j) in &found {
        let (a, b) = (&holds[*i], &holds[*j]);
        println!(
            "OVERLAP: {} was held by {} (fence {}) and {} (fence {}) at once",
            room.things[a.thing].name, a.worker, a.fence, b.worker, b.fence
        );
    }
    std::process::exit(1);
}

fn print_summary(room: &Room, workers: usize) {
    let mut finished = room.finished.borrow().clone();
    finished.sort_by_key(|(index, _)| *index);
    let width = room.name_width.max("worker".len());
    println!();
    println!(
        "{:<width$}  {:<18}  {:>6}  {:>8}  {:>12}  {:>9}  {:>13}",
        "worker", "asks with", "grants", "refusals", "longest wait", "time held", "late releases"
    );
    let mut total = WorkerStats::default();
    for (index, stats) in &finished {
        let worker = &room.workers[*index];
        println!(
            "{:<width$}  {:<18}  {:>6}  {:>8}  {:>9} ms  {:>9}  {:>13}",
            worker.name,
            worker.manner.to_string(),
            stats.grants,
            stats.refusals,
            stats.longest_wait.as_millis(),
            seconds(stats.held),
            stats.late_releases
        );
        total.add(stats);
    }
    println!(
        "{:<width$}  {:<18}  {:>6}  {:>8}  {:>9} ms  {:>9}  {:>13}",
        "all",
        "",
        total.grants,
        total.refusals,
        total.longest_wait.as_millis(),
        seconds(total.held),
        total.late_releases
    );
    if finished.len() < workers {
        println!(
            "{} workers had not finished their turn when the room closed",
            workers - finished.len()
        );
    }
}
