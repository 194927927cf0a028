//! The line of waiting managers: its model and its rules, with no I/O.
//!
//! Inside one manager, waiters for a resource are served in arrival order (`local.rs`). Across
//! managers, the resource's document keeps a line ([`LineView`]): `turn: {manager, until,
//! next}` names the manager to be granted next, `line: [manager, ...]` those after it, one
//! place per manager. While a turn is live no other manager is granted the resource. A grant
//! hands the turn to the next in line, or keeps it for the granted manager's own next waiter,
//! up to [`turn_streak`](crate::LockConfig::turn_streak) grants in a row (the trade of cohort
//! locks: a hand-off inside a process costs a wake-up, one between processes a round trip).
//!
//! A release wakes one manager, not all: every write of this crate that ends a hold or moves
//! the turn without a grant writes the whole `turn` (a release renews the turn of the manager
//! it names, [`Successor`]), and each manager's change stream lets through only the events whose
//! `turn` names it, as the turn's holder or as its `next`. The holder of the turn tries at once;
//! its `next` learns when that turn ends, so a killed holder of the turn holds up the line no
//! longer than [`TURN_LIFE`]. Grants write the turn too but wake nobody: the new holder of the
//! turn learns of it at its next look, which its timers bring before the turn could lapse.
//!
//! Everything here is a pure function of what a manager knows: the last [`LineView`] of a line,
//! its own waiters and holds, the stream's state ([`Stream`]) and the time. [`next_step`] tells
//! the head of a local queue what to do next ([`Step`]); [`turn_after_grant`], [`after_grant`],
//! [`after_wait`] and [`successor`] decide the line's bookkeeping around a grant, a wait that
//! ends, and a release. The callers carry the steps out: `core/wait.rs` the loop, `store.rs`
//! the requests, `core/watch.rs` the stream. [`Lines`] is a manager's memory of the lines it
//! is in.
//!
//! Go clients (dplock over square/mongo-lock) and [`Polling::Fixed`](crate::Polling::Fixed)
//! waits take no place; Go clients, which know nothing of the line, may be granted out of turn.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::messages::ResourceId;

/// How long a turn stays someone's after the resource became free (a release, or the hold's
/// lease end) if its holder does not take it: the time a killed manager holds up the line.
/// The same for every manager of a lock family, since a manager gives the turn to another with
/// this life and the other must act within it.
pub(crate) const TURN_LIFE: Duration = Duration::from_secs(5);

/// How long a turn given while the resource is held outlives the hold's lease: the time its
/// holder has to take the resource once the lease ends (it looks just after the end, timed by
/// the lease it read), and what a killed holder of the turn adds to a lease it waited for. One
/// safety probe's worth, so readers and writers waiting behind a killed manager's turn are
/// served within the killed holds' lease plus one safety probe. The same for every manager of a
/// lock family.
pub(crate) const TURN_GRACE: Duration = Duration::from_secs(1);

/// How far ahead of now a turn renewed while the resource is held covers the hold: a turn given
/// while a hold lasts lives until the hold's lease ends (plus [`TURN_GRACE`]), so its holder need
/// not renew it while it waits; this caps that for a hold with a very long lease or none
/// (square/mongo-lock's), which the turn's holder then renews once per this.
pub(crate) const TURN_AHEAD: Duration = Duration::from_secs(60);

/// A look right after a lease ends must find it ended: the grant's "expired" test is a strict
/// `$lt`, so a waiter wakes just after the stored instant.
pub(crate) const AFTER_EXPIRY: Duration = Duration::from_millis(5);

/// The longest pause after an attempt that the line said would be granted and was refused:
/// the hold's end as read and the server's verdict can differ briefly (nx-27017 compares dates
/// by the whole second), so the waiter looks again soon, if no sooner than its fall-back pause.
pub(crate) const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// How often a manager further back in line than the holder of the turn and its `next` looks,
/// with a working stream: the stream tells it when its turn comes, so this only covers two
/// managers in a row killed in line (the second one is the only one told of the first's end).
pub(crate) const FAR_BACK_LOOK: Duration = Duration::from_secs(10);

/// A manager's turn in a resource's line, as stored: `until` is the server-clock instant it
/// lapses at, `next` the manager told when it ends (the first in line after it, as the writer
/// knew the line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Turn {
    pub(crate) manager: String,
    pub(crate) until: SystemTime,
    pub(crate) next: Option<String>,
}

impl Turn {
    pub(crate) fn is_live(&self, now: SystemTime) -> bool {
        self.until > now
    }
}

/// A resource's line and hold, as one answer of the store (or an event since) showed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LineView {
    /// When the hold ends, or `None` if the resource is free.
    pub(crate) held_until: Option<SystemTime>,
    /// The turn as stored (live or lapsed); `None` is nobody's.
    pub(crate) turn: Option<Turn>,
    /// The managers waiting after the turn, in arrival order.
    pub(crate) line: Vec<String>,
    /// The resource's fence: it rises with every grant of this crate, so a change between two
    /// looks says the resource is being handed on.
    pub(crate) fence: Option<i64>,
    /// The document's `_id`, as a key: the stream names documents by it.
    pub(crate) document: Option<String>,
    /// Shared holds whose leases ended are still counted: an exclusive grant must drop them
    /// first (`MongoStore::drop_expired_shared`).
    pub(crate) expired_shared: bool,
}

impl LineView {
    /// The turn, if it is live at `now`.
    pub(crate) fn live_turn(&self, now: SystemTime) -> Option<&Turn> {
        self.turn.as_ref().filter(|turn| turn.is_live(now))
    }

    /// Whether the live turn is `manager`'s.
    pub(crate) fn is_turn_of(&self, manager: &str, now: SystemTime) -> bool {
        self.live_turn(now)
            .is_some_and(|turn| turn.manager == manager)
    }

    /// Whether `manager` may be granted the resource now: it is free and nobody else's turn is
    /// live.
    pub(crate) fn grantable_to(&self, manager: &str, now: SystemTime) -> bool {
        self.is_free(now)
            && self
                .live_turn(now)
                .is_none_or(|turn| turn.manager == manager)
    }

    fn is_free(&self, now: SystemTime) -> bool {
        self.held_until.is_none_or(|until| until <= now)
    }

    /// The first in line while the turn is nobody's: the turn should be theirs.
    pub(crate) fn unserved_first(&self, now: SystemTime) -> Option<&str> {
        self.line
            .first()
            .filter(|_| self.live_turn(now).is_none())
            .map(String::as_str)
    }

    /// Whether `manager` has a place: the live turn, or one in the line.
    pub(crate) fn has_place_of(&self, manager: &str, now: SystemTime) -> bool {
        self.is_turn_of(manager, now) || self.line.iter().any(|m| m == manager)
    }

    /// Where `manager` stands: 0 for the live turn (or the first in line when the turn is
    /// nobody's), 1 for the first in line behind a live turn, and so on; `None` without a place.
    pub(crate) fn position(&self, manager: &str, now: SystemTime) -> Option<usize> {
        if self.is_turn_of(manager, now) {
            return Some(0);
        }
        let at = self.line.iter().position(|m| m == manager)?;
        Some(if self.live_turn(now).is_some() {
            at + 1
        } else {
            at
        })
    }

    /// The first in line other than `manager`.
    pub(crate) fn next_after(&self, manager: &str) -> Option<&str> {
        self.line.iter().map(String::as_str).find(|m| *m != manager)
    }

    /// The first in line other than `first` and `manager`: whom a turn given to `first` names
    /// as its `next`.
    fn next_after_both(&self, first: &str, manager: &str) -> Option<&str> {
        self.line
            .iter()
            .map(String::as_str)
            .find(|m| *m != first && *m != manager)
    }
}

/// When a turn given or renewed at `now` lapses, for a resource held until `held_until`: the
/// hold's end (capped at [`TURN_AHEAD`]) plus [`TURN_GRACE`], so the turn's holder need not renew
/// it while it waits for the hold to end; for a free resource, [`TURN_LIFE`] from now.
pub(crate) fn turn_until(now: SystemTime, held_until: Option<SystemTime>) -> SystemTime {
    let ahead = held_until
        .and_then(|until| until.duration_since(now).ok())
        .unwrap_or_default()
        .min(TURN_AHEAD);
    if ahead.is_zero() {
        now + TURN_LIFE
    } else {
        now + ahead + TURN_GRACE
    }
}

/// How long before its turn lapses its holder renews it (or, looking, joins rather than reads):
/// half the grace a turn has past the hold it waits for.
const RENEW_BEFORE: Duration = Duration::from_millis(TURN_GRACE.as_millis() as u64 / 2);

/// The turn `to` is given (or renews) by a write of `me` at `now`, on the line as `view` shows
/// it: until [`turn_until`] the hold ends, naming as its `next` the first in line after both.
pub(crate) fn handed_turn(view: &LineView, to: &str, me: &str, now: SystemTime) -> Turn {
    Turn {
        manager: to.to_owned(),
        until: turn_until(now, view.held_until),
        next: view.next_after_both(to, me).map(str::to_owned),
    }
}

/// Whose turn it is after a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TurnAfter {
    /// The turn goes to this manager (the first in line, as last seen), naming the one after
    /// it as its `next`; or, with `to: None`, to nobody.
    Pass {
        to: Option<String>,
        next: Option<String>,
    },
    /// The granted manager keeps the turn, for its own next waiter: until the lease ends, plus
    /// [`TURN_GRACE`]. A manager that has nobody left to use it hands it on
    /// ([`after_grant`]); a killed one blocks the line no longer than its lease.
    Keep { next: Option<String> },
}

/// Whose turn it is after a grant by `me`, which last saw the line as `seen`: `me` keeps it if
/// `waiting_besides` more of its own waiters wait and it has kept the turn through fewer than
/// `turn_streak - 1` grants in a row (`kept`); else it goes to the first in line.
pub(crate) fn turn_after_grant(
    me: &str,
    seen: Option<&LineView>,
    waiting_besides: usize,
    kept: u32,
    turn_streak: u32,
) -> TurnAfter {
    let next = seen.and_then(|view| view.next_after(me));
    if waiting_besides > 0 && kept + 1 < turn_streak {
        return TurnAfter::Keep {
            next: next.map(str::to_owned),
        };
    }
    TurnAfter::Pass {
        to: next.map(str::to_owned),
        next: next
            .and_then(|to| seen.and_then(|view| view.next_after_both(to, me)))
            .map(str::to_owned),
    }
}

/// What a manager does about a line after one of its grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AfterGrant {
    /// Leave the line at once, handing the turn on as this (or to nobody): the turn was kept
    /// for a waiter who has left meanwhile.
    pub(crate) leave: Option<Option<Turn>>,
    /// Give the turn, as this, to the first in line before the grant is handed over: the grant
    /// found managers in line and gave the turn to nobody (the line grew since this manager
    /// last saw it), and the next release here would otherwise serve this manager's next
    /// waiter ahead of them.
    pub(crate) settle: Option<Turn>,
    /// Take a place at the end of the line at once (never the turn): the turn went to another
    /// manager while more waiters wait here, who would otherwise line up only when refused
    /// after the release, by when a third manager may have been granted ahead of them.
    pub(crate) line_up: bool,
    /// Keep the line as the grant left it: more waiters wait here.
    pub(crate) remember: bool,
}

/// After a grant by `me` that left the line as `view`: `kept` says the grant kept the turn,
/// `waiting_besides` how many of this manager's waiters wait for the resource besides the
/// one granted.
pub(crate) fn after_grant(
    me: &str,
    view: &LineView,
    kept: bool,
    waiting_besides: usize,
    now: SystemTime,
) -> AfterGrant {
    if kept && waiting_besides == 0 {
        return AfterGrant {
            leave: Some(view.next_after(me).map(|to| handed_turn(view, to, me, now))),
            ..AfterGrant::default()
        };
    }
    let settle = view
        .unserved_first(now)
        .map(|first| handed_turn(view, first, me, now));
    let line_up = !kept
        && waiting_besides > 0
        && (view.live_turn(now).is_some() || !view.line.is_empty())
        && !view.is_turn_of(me, now);
    AfterGrant {
        leave: None,
        settle,
        line_up,
        remember: waiting_besides > 0,
    }
}

/// Whether `me`, whose queue's head waits for a shared hold and was just refused, takes a
/// place in the line of waiting managers now: `exclusive_behind` exclusive waiters wait
/// behind that head here, and `me` has no place (as last `seen`). A shared waiter takes no
/// place for itself: a manager of readers alone would keep a turn while its readers keep
/// coming, and hold every writer elsewhere off. But the exclusive waiters behind it would line
/// up only once it is granted, and while another manager's readers keep the resource (each
/// release there hands a permit to its own next reader at once), that may be never: the
/// manager takes its place for them, and its turn (writer priority) lets its shared head be
/// granted, then them.
pub(crate) fn shared_head_lines_up(
    me: &str,
    seen: Option<&LineView>,
    exclusive_behind: usize,
    now: SystemTime,
) -> bool {
    exclusive_behind > 0 && seen.is_none_or(|view| !view.has_place_of(me, now))
}

/// After `me` took a place at the end of a line while it holds the resource or not
/// (`holds_it`), which the answer showed as `view`: the turn to give if the turn is nobody's.
/// The line-up may land after another manager's grant, which then found nobody in line and
/// gave the turn to nobody; the first in line gets it now, unless that is `me` still holding
/// (its next waiter would then be served next, out of turn).
pub(crate) fn after_line_up(
    me: &str,
    view: &LineView,
    holds_it: bool,
    now: SystemTime,
) -> Option<Turn> {
    let first = view.unserved_first(now)?;
    (!(first == me && holds_it)).then(|| handed_turn(view, first, me, now))
}

/// After the last wait of `me` for a resource ended without a grant: how to hand the turn on
/// as `me` leaves the line (`Some(None)`: to nobody), or `None` if `me` has no place to leave
/// (as far as it knows: it may have asked for one, `counted_in`).
pub(crate) fn after_wait(
    me: &str,
    seen: Option<&LineView>,
    counted_in: bool,
    now: SystemTime,
) -> Option<Option<Turn>> {
    let view = seen?;
    let in_line = counted_in || view.turn.as_ref().is_some_and(|t| t.manager == me);
    in_line.then(|| view.next_after(me).map(|to| handed_turn(view, to, me, now)))
}

/// Whom a release wakes: the store writes the turn whole with the release, on the condition
/// that the line still stands as guessed here, so the change event names exactly that manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Successor {
    /// The turn is this manager's (live or lapsed): the release renews it for [`TURN_LIFE`],
    /// naming `next` as the one told when it ends.
    Turn {
        manager: String,
        next: Option<String>,
    },
    /// The turn is nobody's, and `first` is the first in line (or nobody is): the release gives
    /// it the turn, naming `next`.
    Nobody {
        first: Option<String>,
        next: Option<String>,
    },
}

impl Successor {
    /// The manager the release names as the one told when the turn ends.
    pub(crate) fn next(&self) -> Option<&str> {
        match self {
            Successor::Turn { next, .. } | Successor::Nobody { next, .. } => next.as_deref(),
        }
    }
}

/// Whom a release of a hold wakes, from the line as last seen (`None`: never seen; the store
/// then reads it first).
pub(crate) fn successor(view: &LineView, now: SystemTime) -> Successor {
    match view.live_turn(now) {
        Some(turn) => Successor::Turn {
            manager: turn.manager.clone(),
            next: view.next_after(&turn.manager).map(str::to_owned),
        },
        None => {
            let first = view.line.first().cloned();
            let next = first
                .as_deref()
                .and_then(|first| view.next_after(first))
                .map(str::to_owned);
            Successor::Nobody { first, next }
        }
    }
}

/// Whether a manager's waiters learn of releases elsewhere by a change stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Open: every release and turn meant for this manager reaches it.
    Streaming,
    /// Not (yet, or no longer) open, or never to be: its waiters probe.
    Probing,
}

/// Why the head of a local queue decides now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Its wait has just begun.
    Arrived,
    /// Its try was refused: the resource is held, or another manager's turn is live.
    Refused,
    /// Its try's answer was lost: the same try is repeated (the same lock id finds its own
    /// grant), not replaced by a look, which would see the grant and wait.
    TryLost,
    /// Told to try: a release here, a release that names this manager, or it became the head.
    Told,
    /// Its look at the line was answered ([`Waiting::view`] is fresh).
    Looked,
    /// Its look failed (the database did not answer).
    LookFailed,
    /// Its pause ended by its timer.
    Timer,
    /// Told to look: a release may have gone unseen (a stream opened, or named a document
    /// whose resource is not known here).
    Nudged,
    /// Told that the line changed: an event updated [`Waiting::view`].
    Changed,
}

/// What the head of a local queue knows when it decides ([`next_step`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Waiting<'a> {
    /// This manager's name in every line.
    pub(crate) me: &'a str,
    /// The line as last seen, if ever (a look that found no document leaves `None`).
    pub(crate) view: Option<&'a LineView>,
    /// Why it decides now.
    pub(crate) woken: Woken,
    /// When this manager's own live hold on the resource ends, if it has one.
    pub(crate) held_here: Option<SystemTime>,
    /// How long until the safety probe of a resource held here is due: anyone with the lock
    /// id may release it through another manager, which nothing here sees.
    pub(crate) safety_probe_in: Duration,
    pub(crate) stream: Stream,
    /// The last try was made because the line looked grantable, and was refused.
    pub(crate) refused_when_grantable: bool,
    /// The resource's fence rose between this manager's last two looks: it is being handed on.
    pub(crate) handed_on: bool,
    /// How often the resource was granted between those two looks, if it was.
    pub(crate) grant_every: Option<Duration>,
    pub(crate) acquire_period: Duration,
    /// The server's clock now.
    pub(crate) now: SystemTime,
}

/// What the head of a local queue does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A grant attempt.
    Try,
    /// A look at the line: one request that answers the line and the hold.
    Look(Look),
    /// Wait to be woken, at most this long.
    Pause(Pause),
}

/// The kinds of look at a line, each one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Look {
    /// Only read: this manager's place is known.
    Read,
    /// Take the turn if it is nobody's, else a place at the end of the line (unless it has one).
    Join,
    /// Renew this manager's turn so it covers the hold: it would lapse before the hold ends.
    Renew,
    /// Give a turn that is nobody's to this manager, the first in line.
    Settle,
}

/// How long a pause lasts at most; every pause also ends when the head is woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pause {
    /// This long.
    For(Duration),
    /// The fall-back's next pause ([`Backoff`]), restarted from the first if `restart`, and no
    /// longer than `at_most`.
    Backoff { restart: bool, at_most: Duration },
}

/// What the head of a local queue does next: the rules of waiting, in one place.
///
/// - While this manager holds the resource, it sleeps until that hold ends (a release here
///   wakes it) or the safety probe is due, even when it has just arrived.
/// - The first try, a try whose answer was lost, and a try it was told to make go at once.
/// - Otherwise it looks before it tries: a refused try, a pause that ended by its timer and a
///   nudge lead to a look (a read if its place is known); a look or an event shows whether the
///   resource is free and the turn its own or nobody's, and only then does it try.
/// - With a working stream, a manager sleeps until it is told, or until a moment it already
///   knows: the holder of the turn until the hold's lease ends (an expiry produces no event) or
///   its turn needs renewing; the first behind the turn until the turn lapses; the rest for
///   [`FAR_BACK_LOOK`].
/// - Without one, the manager next to be granted and the one after it probe after the
///   fall-back's short pauses (starting again from the first while the resource changes
///   hands), and the rest look about when they will be next after the turn's holder, at the
///   pace the resource has been granted, and at least once per `acquire_period` per place ahead.
pub(crate) fn next_step(w: &Waiting<'_>) -> Step {
    if let Some(ends) = w.held_here {
        if w.safety_probe_in.is_zero() {
            return Step::Try;
        }
        let until_end = ends.duration_since(w.now).unwrap_or_default();
        return Step::Pause(Pause::For(until_end.min(w.safety_probe_in)));
    }
    match w.woken {
        Woken::Arrived | Woken::TryLost | Woken::Told => return Step::Try,
        Woken::Refused | Woken::Timer | Woken::Nudged => return Step::Look(look_kind(w)),
        Woken::LookFailed => {
            return Step::Pause(Pause::Backoff {
                restart: false,
                at_most: safety_probe(w.acquire_period),
            })
        }
        Woken::Looked | Woken::Changed => {}
    }
    let Some(view) = w.view else {
        // The look found no document: nothing holds the resource.
        return grantable(w);
    };
    let now = w.now;
    if view.grantable_to(w.me, now) {
        return grantable(w);
    }
    if !view.has_place_of(w.me, now) {
        return Step::Look(Look::Join);
    }
    if view.unserved_first(now).is_some() {
        return Step::Look(if view.line.first().is_some_and(|m| m == w.me) {
            Look::Join
        } else {
            Look::Settle
        });
    }
    let position = view.position(w.me, now).unwrap_or(usize::MAX);
    let turn = view.live_turn(now);
    if position == 0 {
        // The holder of the turn, the resource held: renew the turn if it would lapse before
        // the hold ends, else wake when the hold ends or the turn needs renewing.
        let renew_at = turn.map(|turn| turn.until - RENEW_BEFORE);
        let held_until = view.held_until.unwrap_or(now);
        if renew_at.is_some_and(|at| at <= now && at < held_until) {
            return Step::Look(Look::Renew);
        }
        let lease_end = until(now, held_until) + AFTER_EXPIRY;
        let renewal = renew_at.map_or(Duration::MAX, |at| until(now, at));
        let wake = lease_end.min(renewal);
        return Step::Pause(match w.stream {
            Stream::Streaming => Pause::For(wake),
            Stream::Probing => Pause::Backoff {
                restart: w.handed_on,
                at_most: wake,
            },
        });
    }
    // Behind the turn: the first one wakes when the turn would lapse, to take it then.
    let lapse = turn.map_or(Duration::ZERO, |turn| until(now, turn.until) + AFTER_EXPIRY);
    let told_of_lapse =
        position == 1 || turn.is_some_and(|turn| turn.next.as_deref() == Some(w.me));
    let far_back = match w.stream {
        Stream::Streaming => FAR_BACK_LOOK,
        Stream::Probing => {
            let places = u32::try_from(position).unwrap_or(u32::MAX);
            let slowest = w.acquire_period.saturating_mul(places);
            if position == 1 {
                // Next after the turn's holder: as quick as it once the resource moves.
                return Step::Pause(Pause::Backoff {
                    restart: w.handed_on,
                    at_most: lapse.min(slowest),
                });
            }
            // Further back: look again about when this manager will be first behind the turn,
            // at the pace the resource has been changing hands, within a tenth of
            // acquire_period and one acquire_period per place ahead.
            w.grant_every.map_or(slowest, |every| {
                every
                    .saturating_mul(places - 1)
                    .clamp(w.acquire_period / 10, slowest)
            })
        }
    };
    Step::Pause(Pause::For(if told_of_lapse {
        lapse.min(far_back)
    } else {
        far_back
    }))
}

/// The resource looks free to this manager: try, unless a try made on that ground was just
/// refused (the server's verdict and the view can differ briefly), then look again soon.
fn grantable(w: &Waiting<'_>) -> Step {
    if w.refused_when_grantable {
        Step::Pause(Pause::Backoff {
            restart: false,
            at_most: LOOK_AGAIN,
        })
    } else {
        Step::Try
    }
}

/// Which look: a read while this manager's place is known (in the line, or its own turn with
/// more than half its life left), else a join, which keeps or takes the place. What a read
/// shows (a turn that lapsed, the place gone) leads to the write it needs.
fn look_kind(w: &Waiting<'_>) -> Look {
    let Some(view) = w.view else {
        return Look::Join;
    };
    match view.live_turn(w.now) {
        Some(turn) if turn.manager == w.me => {
            if until(w.now, turn.until) > RENEW_BEFORE {
                Look::Read
            } else {
                Look::Join
            }
        }
        _ if view.line.iter().any(|m| m == w.me) => Look::Read,
        _ => Look::Join,
    }
}

/// The safety probe of a waiter whose look failed: 1 s, or 4 `acquire_period`s if longer.
pub(crate) fn safety_probe(acquire_period: Duration) -> Duration {
    Duration::from_secs(1).max(acquire_period.saturating_mul(4))
}

fn until(now: SystemTime, at: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or_default()
}

/// What a change event of a manager's stream says about one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LineEvent {
    /// A write of this crate moved the turn without a grant (a release, a join, a leave, a
    /// settle, a renewal); `released`: it was a release, so the resource is free.
    Turn { turn: Option<Turn>, released: bool },
    /// A release that names no turn: a Go client's unlock or purge, or this crate's purge.
    Released,
}

impl LineView {
    /// Takes in `event`, and says how the head of this manager's queue for the resource
    /// should be woken (`me` is this manager).
    pub(crate) fn apply(&mut self, event: &LineEvent, me: &str) -> Woken {
        match event {
            LineEvent::Turn { turn, released } => {
                if *released {
                    self.held_until = None;
                }
                if let Some(turn) = turn {
                    // The event's `next` is the line as the writer saw it (a grant's answer,
                    // fresh at that grant): whoever stands before it here was served or left.
                    if turn.manager == me || turn.next.as_deref() == Some(me) {
                        match &turn.next {
                            Some(next) => match self.line.iter().position(|m| m == next) {
                                Some(at) => drop(self.line.drain(..at)),
                                None => self.line = vec![next.clone()],
                            },
                            None => self.line.clear(),
                        }
                    }
                    self.line.retain(|m| *m != turn.manager);
                }
                self.turn = turn.clone();
                Woken::Changed
            }
            LineEvent::Released => {
                self.held_until = None;
                Woken::Changed
            }
        }
    }
}

/// A manager's memory of the lines it waits in.
#[derive(Debug)]
pub(crate) struct Lines {
    /// This manager's name in every line: unique per manager.
    manager: String,
    /// The lines seen here, by resource, as last seen; kept while this manager has a place in
    /// them or waiters for them.
    seen: RefCell<HashMap<ResourceId, Seen>>,
    /// By resource: the grants in a row through which this manager has kept the turn.
    kept: RefCell<HashMap<ResourceId, u32>>,
}

/// One line as last seen here, and whether this manager asked for a place in it (a look cut
/// off on its way may still have taken one, which leaving must then give up).
#[derive(Clone, Debug, Default)]
struct Seen {
    view: LineView,
    counted_in: bool,
    /// How many events this manager's stream brought about the line: a look answered after an
    /// event that came while it was on its way may have read the line before that event's
    /// write, and must not hide it.
    events: u64,
}

impl Lines {
    /// The memory of a manager whose config names `owner` and `host`: its name in every line
    /// is `owner@host/id`, with an id of its own, so an operator reading a line
    /// ([`LineStatus`](crate::LineStatus)) sees who waits.
    pub(crate) fn new(owner: &str, host: &str) -> Self {
        Lines {
            manager: format!("{owner}@{host}/{}", uuid::Uuid::new_v4().simple()),
            seen: RefCell::default(),
            kept: RefCell::default(),
        }
    }

    /// This manager's name in every line.
    pub(crate) fn manager(&self) -> &str {
        &self.manager
    }

    /// `resource`'s line as last seen here.
    pub(crate) fn view(&self, resource: &ResourceId) -> Option<LineView> {
        self.seen
            .borrow()
            .get(resource)
            .map(|seen| seen.view.clone())
    }

    /// Keeps `view` as the last seen of `resource`'s line.
    pub(crate) fn remember(&self, resource: &ResourceId, view: LineView) {
        let mut seen = self.seen.borrow_mut();
        let entry = seen.entry(resource.clone()).or_default();
        entry.view = view;
    }

    /// Where the events about `resource`'s line stand, for [`Lines::remember_look`].
    pub(crate) fn mark(&self, resource: &ResourceId) -> u64 {
        self.seen
            .borrow()
            .get(resource)
            .map_or(0, |seen| seen.events)
    }

    /// Keeps a look's answer as the last seen of `resource`'s line; `false` if an event about
    /// the line came while the look was on its way (after `mark`): the answer may predate it,
    /// so the line must be looked at again.
    pub(crate) fn remember_look(&self, resource: &ResourceId, view: LineView, mark: u64) -> bool {
        let mut seen = self.seen.borrow_mut();
        let entry = seen.entry(resource.clone()).or_default();
        entry.view = view;
        entry.events == mark
    }

    /// Records that this manager asked for a place in `resource`'s line.
    pub(crate) fn count_in(&self, resource: &ResourceId) {
        self.seen
            .borrow_mut()
            .entry(resource.clone())
            .or_default()
            .counted_in = true;
    }

    /// Takes in an event about `resource`'s line, if this manager knows the line: how to wake
    /// the head of its queue.
    pub(crate) fn apply(&self, resource: &ResourceId, event: &LineEvent) -> Option<Woken> {
        let mut seen = self.seen.borrow_mut();
        let entry = seen.get_mut(resource)?;
        entry.events += 1;
        Some(entry.view.apply(event, &self.manager))
    }

    /// Forgets `resource`'s line and the turns kept in it; answers how to hand the turn on if
    /// this manager leaves it ([`after_wait`]).
    pub(crate) fn forget(&self, resource: &ResourceId, now: SystemTime) -> Option<Option<Turn>> {
        self.kept.borrow_mut().remove(resource);
        let seen = self.seen.borrow_mut().remove(resource)?;
        after_wait(&self.manager, Some(&seen.view), seen.counted_in, now)
    }

    /// The grants in a row through which this manager has kept `resource`'s turn.
    pub(crate) fn kept(&self, resource: &ResourceId) -> u32 {
        self.kept.borrow().get(resource).copied().unwrap_or(0)
    }

    /// Counts a grant that kept the turn (`kept`), or starts the count again.
    pub(crate) fn count_kept(&self, resource: &ResourceId, kept: bool) {
        let mut counts = self.kept.borrow_mut();
        if kept {
            *counts.entry(resource.clone()).or_default() += 1;
        } else {
            counts.remove(resource);
        }
    }
}

/// The fall-back pauses of [`Polling::Adaptive`](crate::Polling::Adaptive) for the manager next
/// to be granted a resource held elsewhere: a tenth of `acquire_period` first, doubling up to
/// `acquire_period`, each with jitter of up to +40 % (never shorter, so the rates below are
/// ceilings). A default wait (2.5 s at 250 ms) thus sends at most 15 probes, and a long one at
/// most one per `acquire_period`, unless the pauses [`restart`](Backoff::restart): only while the
/// resource changes hands since the last look ([`Pause::Backoff`]).
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(acquire_period: Duration) -> Self {
        Backoff {
            first: acquire_period / 10,
            next: acquire_period / 10,
            max: acquire_period,
        }
    }

    /// The next pause is the first, short one again.
    pub(crate) fn restart(&mut self) {
        self.next = self.first;
    }

    /// The next pause; `jitter` in `[0, 1]` adds up to 40 % to it.
    pub(crate) fn next_pause(&mut self, jitter: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(1.0 + 0.4 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me";
    const PERIOD: Duration = Duration::from_millis(250);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn turn(manager: &str, until: SystemTime) -> Option<Turn> {
        Some(Turn {
            manager: manager.to_owned(),
            until,
            next: None,
        })
    }

    fn line(managers: &[&str]) -> Vec<String> {
        managers.iter().map(|m| (*m).to_owned()).collect()
    }

    /// A resource held until `held_until` (or free), with `turn` and `line`.
    fn view(held_until: Option<u64>, turn: Option<Turn>, waiting: &[&str]) -> LineView {
        LineView {
            held_until: held_until.map(at),
            turn,
            line: line(waiting),
            fence: Some(7),
            document: Some("id".to_owned()),
            expired_shared: false,
        }
    }

    fn waiting<'a>(view: Option<&'a LineView>, woken: Woken, stream: Stream) -> Waiting<'a> {
        Waiting {
            me: ME,
            view,
            woken,
            held_here: None,
            safety_probe_in: Duration::from_secs(1),
            stream,
            refused_when_grantable: false,
            handed_on: false,
            grant_every: None,
            acquire_period: PERIOD,
            now: at(0),
        }
    }

    fn streaming(view: &LineView) -> Step {
        next_step(&waiting(Some(view), Woken::Looked, Stream::Streaming))
    }

    fn probing(view: &LineView) -> Step {
        next_step(&waiting(Some(view), Woken::Looked, Stream::Probing))
    }

    fn pause(secs: f64) -> Step {
        Step::Pause(Pause::For(Duration::from_secs_f64(secs)))
    }

    #[test]
    fn a_head_that_arrives_while_its_manager_holds_the_resource_waits_for_that_hold() {
        let held = view(Some(30), None, &[]);
        let mut w = waiting(Some(&held), Woken::Arrived, Stream::Streaming);
        w.held_here = Some(at(10));
        assert_eq!(next_step(&w), pause(1.0));
    }

    #[test]
    fn the_first_try_and_a_lost_try_go_at_once_whatever_the_line() {
        let held = view(Some(30), turn("other", at(35)), &[ME]);
        for woken in [Woken::Arrived, Woken::TryLost] {
            for stream in [Stream::Streaming, Stream::Probing] {
                assert_eq!(
                    next_step(&waiting(Some(&held), woken, stream)),
                    Step::Try,
                    "{woken:?} {stream:?}"
                );
            }
        }
    }

    #[test]
    fn a_resource_held_here_is_waited_for_until_its_lease_ends_or_the_safety_probe() {
        let held = view(Some(30), None, &[]);
        let mut w = waiting(Some(&held), Woken::Refused, Stream::Streaming);
        w.held_here = Some(at(10));
        assert_eq!(
            next_step(&w),
            pause(1.0),
            "the safety probe comes before the lease end"
        );
        w.held_here = Some(at(0) + Duration::from_millis(300));
        assert_eq!(next_step(&w), pause(0.3), "the lease end comes first");
        w.safety_probe_in = Duration::ZERO;
        assert_eq!(
            next_step(&w),
            Step::Try,
            "a safety probe that is due is a try"
        );
        w.woken = Woken::Told;
        w.safety_probe_in = Duration::from_secs(1);
        assert_eq!(
            next_step(&w),
            pause(0.3),
            "told while still held here: the hold is not over"
        );
    }

    #[test]
    fn told_to_try_it_tries() {
        let held = view(Some(30), turn("other", at(35)), &[ME]);
        assert_eq!(
            next_step(&waiting(Some(&held), Woken::Told, Stream::Streaming)),
            Step::Try
        );
    }

    #[test]
    fn a_refusal_a_timer_and_a_nudge_lead_to_a_look_a_read_while_the_place_is_sure() {
        let behind = view(Some(30), turn("other", at(35)), &[ME]);
        let own_turn = view(Some(30), turn(ME, at(35)), &[]);
        let lapsing_turn = view(Some(30), turn(ME, at(0) + Duration::from_millis(400)), &[]);
        let lapsed_turn = view(Some(30), turn("other", at(0)), &[ME]);
        let not_in_line = view(Some(30), turn("other", at(35)), &[]);
        for woken in [Woken::Refused, Woken::Timer, Woken::Nudged] {
            let look = |v: Option<&LineView>| next_step(&waiting(v, woken, Stream::Streaming));
            assert_eq!(look(Some(&behind)), Step::Look(Look::Read));
            assert_eq!(look(Some(&own_turn)), Step::Look(Look::Read));
            assert_eq!(
                look(Some(&lapsing_turn)),
                Step::Look(Look::Join),
                "under half its life left: the join renews it"
            );
            assert_eq!(
                look(Some(&lapsed_turn)),
                Step::Look(Look::Read),
                "in line: a read shows what the lapse needs"
            );
            assert_eq!(look(Some(&not_in_line)), Step::Look(Look::Join));
            assert_eq!(look(None), Step::Look(Look::Join), "never seen");
        }
    }

    #[test]
    fn a_failed_look_waits_a_fall_back_pause_up_to_the_safety_probe() {
        let behind = view(Some(30), turn("other", at(35)), &[ME]);
        assert_eq!(
            next_step(&waiting(
                Some(&behind),
                Woken::LookFailed,
                Stream::Streaming
            )),
            Step::Pause(Pause::Backoff {
                restart: false,
                at_most: Duration::from_secs(1)
            })
        );
        assert_eq!(
            safety_probe(Duration::from_secs(5)),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn a_free_resource_whose_turn_is_its_own_or_nobodys_is_tried() {
        for free in [
            view(None, None, &[]),
            view(None, turn(ME, at(5)), &["other"]),
            view(None, turn("other", at(0)), &[]),
            view(Some(0), None, &[]),
        ] {
            assert_eq!(streaming(&free), Step::Try, "{free:?}");
            assert_eq!(probing(&free), Step::Try, "{free:?}");
        }
        assert_eq!(
            next_step(&waiting(None, Woken::Looked, Stream::Streaming)),
            Step::Try,
            "no document: free"
        );
    }

    #[test]
    fn a_refused_try_on_a_grantable_line_looks_again_soon_instead_of_trying() {
        let free = view(None, None, &[]);
        let mut w = waiting(Some(&free), Woken::Looked, Stream::Streaming);
        w.refused_when_grantable = true;
        assert_eq!(
            next_step(&w),
            Step::Pause(Pause::Backoff {
                restart: false,
                at_most: LOOK_AGAIN
            })
        );
    }

    #[test]
    fn a_free_resource_in_another_managers_live_turn_is_not_tried() {
        let free = view(None, turn("other", at(5)), &[ME]);
        assert_eq!(
            streaming(&free),
            pause(5.005),
            "first behind the turn: wakes as it lapses"
        );
    }

    #[test]
    fn without_a_place_it_joins() {
        let held = view(Some(30), turn("other", at(35)), &["third"]);
        assert_eq!(streaming(&held), Step::Look(Look::Join));
        assert_eq!(probing(&held), Step::Look(Look::Join));
    }

    #[test]
    fn a_turn_that_is_nobodys_goes_to_the_first_in_line() {
        let first = view(Some(30), None, &[ME, "other"]);
        assert_eq!(
            streaming(&first),
            Step::Look(Look::Join),
            "the first takes it"
        );
        let second = view(Some(30), turn("gone", at(0)), &["other", ME]);
        assert_eq!(
            streaming(&second),
            Step::Look(Look::Settle),
            "anyone else gives it to the first"
        );
    }

    #[test]
    fn the_holder_of_the_turn_sleeps_until_the_hold_ends_with_a_stream() {
        let own = view(Some(30), turn(ME, at(35)), &["other"]);
        assert_eq!(streaming(&own), pause(30.005));
    }

    #[test]
    fn the_holder_of_the_turn_probes_with_the_fall_back_without_a_stream() {
        let own = view(Some(30), turn(ME, at(35)), &["other"]);
        assert_eq!(
            probing(&own),
            Step::Pause(Pause::Backoff {
                restart: false,
                at_most: Duration::from_secs_f64(30.005)
            })
        );
        let mut w = waiting(Some(&own), Woken::Looked, Stream::Probing);
        w.handed_on = true;
        assert_eq!(
            next_step(&w),
            Step::Pause(Pause::Backoff {
                restart: true,
                at_most: Duration::from_secs_f64(30.005)
            }),
            "the resource changed hands since the last look: the pauses start again"
        );
    }

    #[test]
    fn a_turn_that_would_lapse_before_the_hold_ends_is_renewed_when_half_its_grace_is_left() {
        let young = view(Some(30), turn(ME, at(5)), &[]);
        assert_eq!(
            streaming(&young),
            pause(4.5),
            "wakes when half the grace is left"
        );
        let due = view(Some(30), turn(ME, at(0) + Duration::from_millis(400)), &[]);
        assert_eq!(streaming(&due), Step::Look(Look::Renew));
        assert_eq!(probing(&due), Step::Look(Look::Renew));
        let covers = view(Some(2), turn(ME, at(6)), &[]);
        assert_eq!(
            streaming(&covers),
            pause(2.005),
            "the hold ends first: the lease end wakes it, no renewal"
        );
    }

    #[test]
    fn the_first_behind_the_turn_wakes_as_the_turn_lapses_the_rest_far_later() {
        let first = view(Some(30), turn("other", at(35)), &[ME, "third"]);
        assert_eq!(
            streaming(&first),
            pause(10.0),
            "capped by the far-back look"
        );
        let first_soon = view(Some(30), turn("other", at(3)), &[ME, "third"]);
        assert_eq!(streaming(&first_soon), pause(3.005));
        let third = view(Some(30), turn("other", at(3)), &["second", ME]);
        assert_eq!(streaming(&third), pause(10.0));
        let mut named = turn("other", at(3));
        if let Some(turn) = named.as_mut() {
            turn.next = Some(ME.to_owned());
        }
        let named_next = view(Some(30), named, &["second", ME]);
        assert_eq!(
            streaming(&named_next),
            pause(3.005),
            "named as the turn's next: told of its end"
        );
    }

    #[test]
    fn without_a_stream_the_first_behind_the_turn_probes_with_the_fall_back() {
        let second = view(Some(30), turn("other", at(35)), &[ME]);
        assert_eq!(
            probing(&second),
            Step::Pause(Pause::Backoff {
                restart: false,
                at_most: PERIOD
            })
        );
        let mut w = waiting(Some(&second), Woken::Looked, Stream::Probing);
        w.handed_on = true;
        assert_eq!(
            next_step(&w),
            Step::Pause(Pause::Backoff {
                restart: true,
                at_most: PERIOD
            }),
            "the resource changes hands: quick again"
        );
        let soon = view(Some(30), turn("other", at(0) + PERIOD / 5), &[ME]);
        assert_eq!(
            probing(&soon),
            Step::Pause(Pause::Backoff {
                restart: false,
                at_most: PERIOD / 5 + AFTER_EXPIRY
            }),
            "no later than the turn's lapse"
        );
    }

    #[test]
    fn without_a_stream_managers_further_back_look_when_they_will_be_next() {
        let fourth = view(Some(30), turn("other", at(35)), &["b", "c", ME]);
        assert_eq!(
            probing(&fourth),
            pause(0.75),
            "nothing granted lately: an acquire_period per place ahead"
        );
        let mut w = waiting(Some(&fourth), Woken::Looked, Stream::Probing);
        w.grant_every = Some(Duration::from_millis(70));
        assert_eq!(
            next_step(&w),
            pause(0.14),
            "granted every 70 ms: first behind the turn in two grants"
        );
        w.grant_every = Some(Duration::from_millis(1));
        assert_eq!(
            next_step(&w),
            pause(0.025),
            "never under a tenth of acquire_period"
        );
        w.grant_every = Some(Duration::from_secs(2));
        assert_eq!(
            next_step(&w),
            pause(0.75),
            "never over a period per place ahead"
        );
    }

    #[test]
    fn a_turn_given_while_held_covers_the_hold_up_to_a_minute_ahead() {
        assert_eq!(turn_until(at(0), None), at(5));
        assert_eq!(
            turn_until(at(0), Some(at(0) - Duration::from_secs(3))),
            at(5)
        );
        assert_eq!(turn_until(at(0), Some(at(30))), at(31));
        assert_eq!(turn_until(at(0), Some(at(3600))), at(61));
    }

    #[test]
    fn a_refused_shared_head_lines_up_only_for_exclusive_waiters_behind_it_and_only_once() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let live = Turn {
            manager: "me".to_owned(),
            until: now + Duration::from_secs(5),
            next: None,
        };
        let in_line = LineView {
            line: vec!["other".to_owned(), "me".to_owned()],
            ..LineView::default()
        };
        let my_turn = LineView {
            turn: Some(live.clone()),
            ..LineView::default()
        };
        let lapsed_turn = LineView {
            turn: Some(Turn {
                until: now - Duration::from_secs(1),
                ..live
            }),
            ..LineView::default()
        };
        let elsewhere = LineView {
            line: vec!["other".to_owned()],
            ..LineView::default()
        };
        let cases: [(&str, Option<&LineView>, usize, bool); 7] = [
            ("readers alone take no place", None, 0, false),
            (
                "readers alone, a line elsewhere",
                Some(&elsewhere),
                0,
                false,
            ),
            ("a writer behind, never seen", None, 1, true),
            ("a writer behind, others in line", Some(&elsewhere), 2, true),
            ("a writer behind, in line already", Some(&in_line), 1, false),
            (
                "a writer behind, the turn is mine",
                Some(&my_turn),
                1,
                false,
            ),
            (
                "a writer behind, my turn lapsed",
                Some(&lapsed_turn),
                1,
                true,
            ),
        ];
        for (case, seen, behind, expected) in cases {
            assert_eq!(
                shared_head_lines_up("me", seen, behind, now),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn a_grant_keeps_the_turn_for_local_waiters_up_to_the_streak_then_passes_it() {
        let seen = view(Some(30), turn(ME, at(35)), &[ME, "b", "c"]);
        assert_eq!(
            turn_after_grant(ME, Some(&seen), 1, 0, 3),
            TurnAfter::Keep {
                next: Some("b".to_owned())
            }
        );
        assert_eq!(
            turn_after_grant(ME, Some(&seen), 1, 2, 3),
            TurnAfter::Pass {
                to: Some("b".to_owned()),
                next: Some("c".to_owned())
            },
            "the streak is used up"
        );
        assert_eq!(
            turn_after_grant(ME, Some(&seen), 0, 0, 3),
            TurnAfter::Pass {
                to: Some("b".to_owned()),
                next: Some("c".to_owned())
            },
            "nobody left here to keep it for"
        );
        assert_eq!(
            turn_after_grant(ME, None, 0, 0, 3),
            TurnAfter::Pass {
                to: None,
                next: None
            }
        );
        assert_eq!(
            turn_after_grant(ME, Some(&seen), 4, 0, 1),
            TurnAfter::Pass {
                to: Some("b".to_owned()),
                next: Some("c".to_owned())
            },
            "a streak of 1 is strict turns"
        );
    }

    #[test]
    fn after_a_grant_a_kept_turn_nobody_uses_is_handed_on() {
        let after = view(Some(30), turn(ME, at(30)), &["b", "c"]);
        assert_eq!(
            after_grant(ME, &after, true, 0, at(0)),
            AfterGrant {
                leave: Some(Some(Turn {
                    manager: "b".to_owned(),
                    until: at(31),
                    next: Some("c".to_owned())
                })),
                ..AfterGrant::default()
            },
            "handed on for as long as the hold lasts, naming the one after"
        );
    }

    #[test]
    fn after_a_grant_an_unserved_line_is_settled_and_waiters_here_line_up_again() {
        let unserved = view(Some(30), None, &["b"]);
        assert_eq!(
            after_grant(ME, &unserved, false, 2, at(0)),
            AfterGrant {
                leave: None,
                settle: Some(Turn {
                    manager: "b".to_owned(),
                    until: at(31),
                    next: None
                }),
                line_up: true,
                remember: true
            }
        );
        let passed = view(Some(30), turn("b", at(35)), &[]);
        assert_eq!(
            after_grant(ME, &passed, false, 0, at(0)),
            AfterGrant::default(),
            "nobody waits here: nothing to do"
        );
        let kept = view(Some(30), turn(ME, at(30)), &["b"]);
        assert_eq!(
            after_grant(ME, &kept, true, 1, at(0)),
            AfterGrant {
                remember: true,
                ..AfterGrant::default()
            },
            "the turn kept for a waiter here: no line-up"
        );
        let alone = view(Some(30), None, &[]);
        assert_eq!(
            after_grant(ME, &alone, false, 1, at(0)),
            AfterGrant {
                remember: true,
                ..AfterGrant::default()
            },
            "nobody else waits: no line to join"
        );
    }

    #[test]
    fn after_a_line_up_the_first_in_line_gets_a_turn_nobody_has_unless_it_is_the_holder() {
        let unserved = view(Some(30), None, &["b", ME]);
        assert_eq!(
            after_line_up(ME, &unserved, true, at(0)).map(|turn| turn.manager),
            Some("b".to_owned())
        );
        let self_first = view(Some(30), None, &[ME]);
        assert_eq!(after_line_up(ME, &self_first, true, at(0)), None);
        assert_eq!(
            after_line_up(ME, &self_first, false, at(0)).map(|turn| turn.manager),
            Some(ME.to_owned())
        );
        let served = view(Some(30), turn("b", at(35)), &[ME]);
        assert_eq!(after_line_up(ME, &served, true, at(0)), None);
    }

    #[test]
    fn the_last_wait_that_ends_leaves_the_line_handing_the_turn_on() {
        let own_turn = view(Some(30), turn(ME, at(35)), &["b"]);
        assert_eq!(
            after_wait(ME, Some(&own_turn), false, at(0)),
            Some(Some(Turn {
                manager: "b".to_owned(),
                until: at(31),
                next: None
            }))
        );
        let in_line = view(Some(30), turn("b", at(35)), &[ME]);
        assert_eq!(after_wait(ME, Some(&in_line), true, at(0)), Some(None));
        let outside = view(Some(30), turn("b", at(35)), &[]);
        assert_eq!(after_wait(ME, Some(&outside), false, at(0)), None);
        assert_eq!(
            after_wait(ME, None, true, at(0)),
            None,
            "nothing seen, nothing to leave"
        );
    }

    #[test]
    fn a_release_names_the_holder_of_the_turn_or_gives_a_nobodys_turn_to_the_first() {
        let live = view(Some(30), turn("b", at(35)), &["c", "d"]);
        assert_eq!(
            successor(&live, at(0)),
            Successor::Turn {
                manager: "b".to_owned(),
                next: Some("c".to_owned())
            }
        );
        let lapsed = view(Some(30), turn("b", at(0)), &["c", "d"]);
        assert_eq!(
            successor(&lapsed, at(0)),
            Successor::Nobody {
                first: Some("c".to_owned()),
                next: Some("d".to_owned())
            }
        );
        let empty = view(Some(30), None, &[]);
        assert_eq!(
            successor(&empty, at(0)),
            Successor::Nobody {
                first: None,
                next: None
            }
        );
        assert_eq!(successor(&live, at(0)).next(), Some("c"));
    }

    #[test]
    fn an_event_naming_this_manager_updates_the_view_and_asks_for_a_decision() {
        let mut seen = view(Some(30), turn("b", at(35)), &["c", ME]);
        let woken = seen.apply(
            &LineEvent::Turn {
                turn: Some(Turn {
                    manager: ME.to_owned(),
                    until: at(5),
                    next: Some("c".to_owned()),
                }),
                released: true,
            },
            ME,
        );
        assert_eq!(woken, Woken::Changed);
        assert_eq!(seen.held_until, None, "released");
        assert!(seen.is_turn_of(ME, at(0)));
        assert_eq!(seen.line, line(&["c"]));
        assert_eq!(
            turn_after_grant(ME, Some(&seen), 0, 0, 3),
            TurnAfter::Pass {
                to: Some("c".to_owned()),
                next: None
            },
            "its grant passes the turn to the event's next"
        );
        assert_eq!(
            next_step(&waiting(Some(&seen), woken, Stream::Streaming)),
            Step::Try,
            "a release that names this manager is tried at once"
        );
    }

    #[test]
    fn an_event_naming_this_manager_next_makes_it_first_behind_the_turn() {
        let mut seen = view(Some(30), turn("a", at(35)), &["b", "c", ME]);
        seen.apply(
            &LineEvent::Turn {
                turn: Some(Turn {
                    manager: "b".to_owned(),
                    until: at(5),
                    next: Some(ME.to_owned()),
                }),
                released: true,
            },
            ME,
        );
        assert_eq!(
            seen.line,
            line(&[ME]),
            "b, and c before this manager, were served or left"
        );
        assert_eq!(
            next_step(&waiting(Some(&seen), Woken::Changed, Stream::Streaming)),
            pause(5.005),
            "not its turn: it wakes when b's would lapse"
        );
    }

    #[test]
    fn an_event_naming_a_next_this_manager_never_saw_replaces_its_stale_line() {
        let mut seen = view(Some(30), turn("a", at(35)), &["a", "b", ME]);
        seen.apply(
            &LineEvent::Turn {
                turn: Some(Turn {
                    manager: ME.to_owned(),
                    until: at(5),
                    next: Some("late".to_owned()),
                }),
                released: true,
            },
            ME,
        );
        assert_eq!(seen.line, line(&["late"]));
        seen.apply(
            &LineEvent::Turn {
                turn: Some(Turn {
                    manager: ME.to_owned(),
                    until: at(5),
                    next: None,
                }),
                released: true,
            },
            ME,
        );
        assert!(
            seen.line.is_empty(),
            "the writer saw nobody after this manager"
        );
    }

    #[test]
    fn a_release_naming_no_turn_frees_the_resource_for_whoever_is_next() {
        let mut next = view(Some(30), turn(ME, at(35)), &["b"]);
        next.apply(&LineEvent::Released, ME);
        assert_eq!(
            next_step(&waiting(Some(&next), Woken::Changed, Stream::Streaming)),
            Step::Try
        );
        let mut behind = view(Some(30), turn("b", at(35)), &[ME]);
        behind.apply(&LineEvent::Released, ME);
        assert!(
            matches!(
                next_step(&waiting(Some(&behind), Woken::Changed, Stream::Streaming)),
                Step::Pause(_)
            ),
            "another manager's turn: no request"
        );
    }

    #[test]
    fn lines_remember_what_was_seen_and_who_to_hand_the_turn_to_on_leaving() {
        let lines = Lines::new("tests", "here");
        let me = lines.manager().to_owned();
        let resource = ResourceId::new("r").expect("a valid id");
        assert_eq!(lines.forget(&resource, at(0)), None);
        lines.count_in(&resource);
        let mut seen = view(Some(30), turn(&me, at(35)), &["b"]);
        seen.fence = Some(3);
        lines.remember(&resource, seen.clone());
        assert_eq!(lines.view(&resource), Some(seen.clone()));
        let mark = lines.mark(&resource);
        assert!(lines.remember_look(&resource, seen.clone(), mark));
        lines.apply(&resource, &LineEvent::Released);
        assert!(
            !lines.remember_look(&resource, seen.clone(), mark),
            "an event came while the look was on its way"
        );
        assert_eq!(lines.view(&resource), Some(seen));
        lines.count_kept(&resource, true);
        lines.count_kept(&resource, true);
        assert_eq!(lines.kept(&resource), 2);
        assert_eq!(
            lines
                .forget(&resource, at(0))
                .map(|leave| leave.map(|turn| turn.manager)),
            Some(Some("b".to_owned()))
        );
        assert_eq!(lines.kept(&resource), 0);
        assert_eq!(lines.view(&resource), None);
    }

    /// Probes a wait of `budget` sends: one at once, then one after each pause that ends
    /// before the deadline, and one at the deadline.
    fn probes_within(budget: Duration, backoff: &mut Backoff, jitter: f64) -> u32 {
        let mut elapsed = Duration::ZERO;
        let mut probes = 1;
        loop {
            elapsed += backoff.next_pause(jitter);
            probes += 1;
            if elapsed >= budget {
                return probes;
            }
        }
    }

    #[test]
    fn a_restart_makes_the_next_pause_the_first_again() {
        let mut backoff = Backoff::new(PERIOD);
        for _ in 0..6 {
            backoff.next_pause(0.5);
        }
        backoff.restart();
        assert_eq!(backoff.next_pause(0.0), Duration::from_millis(25));
        assert_eq!(backoff.next_pause(1.0), Duration::from_millis(70));
    }

    #[test]
    fn the_pauses_grow_from_a_tenth_to_the_acquire_period() {
        let mut backoff = Backoff::new(PERIOD);
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.next_pause(0.0)).collect();
        let bases = [25, 50, 100, 200, 250, 250, 250, 250].map(Duration::from_millis);
        assert_eq!(pauses, bases);
        let mut backoff = Backoff::new(PERIOD);
        assert_eq!(
            backoff.next_pause(1.0),
            Duration::from_millis(35),
            "jitter adds up to 40 %"
        );
    }

    #[test]
    fn a_default_wait_sends_at_most_fifteen_probes() {
        for jitter in [0.0, 0.5, 1.0] {
            let mut backoff = Backoff::new(PERIOD);
            let probes = probes_within(Duration::from_millis(2500), &mut backoff, jitter);
            assert!(probes <= 15, "{probes} probes in a default wait");
        }
    }

    #[test]
    fn a_long_wait_sends_at_most_four_probes_a_second_at_the_default_period() {
        let mut backoff = Backoff::new(PERIOD);
        // Without jitter (the most probes): the four short first pauses, then one per period.
        let probes = probes_within(Duration::from_secs(60), &mut backoff, 0.0);
        assert!(probes <= 4 * 60 + 4, "{probes} probes in a minute");
    }
}
