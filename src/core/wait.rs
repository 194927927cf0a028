//! `Acquire`: waiting for a resource held by someone else, within a budget.
//!
//! Two pollings share one wait ([`Wait`]: the resource and the lock id, the deadline, the
//! caller, whether an attempt's outcome is unknown): dplock's fixed polling, and the adaptive
//! one, in which only the head of this manager's local queue acts. The head's loop carries out
//! the steps that [`line::next_step`] decides (try, look at the line, pause); the requests that
//! keep this manager's place in a line (looks, lining up, leaving, settling a turn) are here
//! too, each one request bounded by `request_timeout`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::LockError;
use crate::line::{self, Backoff, LineView, Look, Pause, Step, Stream, Turn, Waiting, Woken};
use crate::local::Place;
use crate::messages::{Acquire, LockGrant, LockId, Polling, ResourceId};
use crate::reply::Caller;

use super::grant::new_request;
use super::watch::Watching;
use super::Core;

impl Core {
    pub(crate) async fn acquire(
        self: &Rc<Self>,
        msg: Acquire,
        caller: &Caller,
    ) -> Result<LockGrant, LockError> {
        let arrived = Instant::now();
        let mode = crate::metrics::mode(msg.mode.is_shared());
        let answer = self.wait_for_grant(msg, caller).await;
        let outcome = match &answer {
            Ok(_) => {
                crate::metrics::granted(&self.config.name, "acquire", mode);
                "granted"
            }
            Err(LockError::AcquireTimeout { .. } | LockError::AcquireMaxRetries { .. }) => {
                "timeout"
            }
            Err(LockError::Unavailable { .. }) => "unavailable",
            Err(LockError::Closing) => "closing",
            Err(_) => "error",
        };
        crate::metrics::acquire_waited(&self.config.name, arrived.elapsed(), outcome);
        answer
    }

    async fn wait_for_grant(
        self: &Rc<Self>,
        msg: Acquire,
        caller: &Caller,
    ) -> Result<LockGrant, LockError> {
        let limit = msg.mode.checked_limit()?;
        let (resource, lock_id) = new_request(msg.resource_id)?;
        let ttl = self.lease(msg.ttl)?;
        // dplock's fixed polling counts tries; its deadline only leaves room for the last one.
        let budget = match (msg.timeout, msg.polling) {
            (Some(timeout), _) => timeout,
            (None, Polling::Adaptive) => self.config.acquire_budget(),
            (None, Polling::Fixed) => self
                .config
                .acquire_budget()
                .saturating_add(self.config.acquire_period),
        };
        let started = Instant::now();
        let wait = Wait {
            resource,
            lock_id,
            started,
            deadline: deadline_after(started, budget),
            caller,
            ttl,
            retries: Cell::new(0),
            uncertain: Cell::new(false),
            attempts: Cell::new(0),
            answered: Cell::new(false),
            last_try_lost: Cell::new(false),
            last_error: RefCell::new(None),
            unreachable: Cell::new(false),
            queued: matches!(msg.polling, Polling::Adaptive),
            shared: msg.mode.is_shared(),
            limit,
        };
        let result = match msg.polling {
            Polling::Fixed => self.acquire_fixed(&wait).await,
            Polling::Adaptive => self.acquire_adaptive(&wait).await,
        };
        let result = match result {
            Ok(grant) => return self.deliver(grant, caller, msg.keep_alive),
            Err(WaitEnd::Error(e)) => e,
            // Attempts were made and none reached the server, or (a waiter behind the head)
            // none of the requests of this manager's queue for the resource: down, not busy.
            Err(WaitEnd::OutOfTime)
                if wait.unreachable.get() || (wait.attempts.get() > 0 && !wait.answered.get()) =>
            {
                LockError::Unavailable {
                    waited: started.elapsed(),
                    last_error: wait.last_error.take().unwrap_or_default(),
                }
            }
            Err(WaitEnd::OutOfTime) => match msg.timeout {
                None => LockError::AcquireMaxRetries {
                    resource_id: wait.resource.to_string(),
                    max_retries: self.config.acquire_max_retries,
                    budget: self.config.acquire_budget(),
                    attempts: wait.attempts.get(),
                    waited: started.elapsed(),
                },
                Some(waited) => LockError::AcquireTimeout {
                    resource_id: wait.resource.to_string(),
                    waited,
                },
            },
        };
        self.leave_line_if_unwaited(&wait.resource);
        self.release_if_uncertain(wait.lock_id, ttl, wait.uncertain.get());
        Err(result)
    }

    /// dplock's Acquire: a try every `acquire_period`, `acquire_max_retries` times after the
    /// first. A retry counts from the moment it is decided, before its pause.
    async fn acquire_fixed(self: &Rc<Self>, wait: &Wait<'_>) -> Result<LockGrant, WaitEnd> {
        loop {
            if let Some(grant) = self.attempt_tolerant(wait).await? {
                return Ok(grant);
            }
            if wait.retries.get() == self.config.acquire_max_retries {
                return Err(WaitEnd::OutOfTime);
            }
            wait.retries.set(wait.retries.get() + 1);
            self.pause(self.config.acquire_period, None, wait).await?;
        }
    }

    /// Waits in this manager's queue for the resource. Only the head acts: it asks
    /// [`line::next_step`] what to do, from what it knows (the line as last seen, kept fresh
    /// by the release stream; whether this manager holds the resource; the stream's state; why
    /// it was woken), and does it: a grant attempt, a look at the line, or a pause that a
    /// release here, an event of the stream, its deadline, the manager's closing or the
    /// caller's leaving can cut short.
    async fn acquire_adaptive(self: &Rc<Self>, wait: &Wait<'_>) -> Result<LockGrant, WaitEnd> {
        // Take a place in line before the first try, so arrival order is grant order.
        let place = self.waiters.join_as(&wait.resource, wait.shared);
        let waited = if wait.shared {
            self.wait_shared(wait, &place).await
        } else {
            self.wait_in_queue(wait, &place).await
        };
        if matches!(waited, Err(WaitEnd::OutOfTime)) {
            // Read before the place is given up: the queue's record goes with its last waiter.
            let contact = self.waiters.contact(&wait.resource);
            if let Some(error) = contact.unreachable_since(wait.started) {
                wait.unreachable.set(true);
                wait.last_error
                    .borrow_mut()
                    .get_or_insert_with(|| error.to_owned());
            }
        }
        waited
    }

    /// [`Core::acquire_adaptive`]'s loop, with `place` in the queue.
    async fn wait_in_queue(
        self: &Rc<Self>,
        wait: &Wait<'_>,
        place: &Place,
    ) -> Result<LockGrant, WaitEnd> {
        let mut head = Head::new(self.config.acquire_period);
        let mut woken = Woken::Arrived;
        loop {
            if !place.is_head() {
                woken = self.pause(wait.remaining(), Some(place), wait).await?;
                continue;
            }
            let now = self.clock.now();
            let held_here = self.holds.live_lease(&wait.resource, now);
            let view = self.lines.view(&wait.resource);
            let step = line::next_step(&Waiting {
                me: self.lines.manager(),
                view: view.as_ref(),
                woken,
                held_here,
                safety_probe_in: head
                    .safety_probe_at
                    .saturating_duration_since(Instant::now()),
                stream: if self.release_watch.streaming() {
                    Stream::Streaming
                } else {
                    Stream::Probing
                },
                refused_when_grantable: head.refused_when_grantable,
                handed_on: head.handed_on,
                grant_every: head.grant_every,
                acquire_period: self.config.acquire_period,
                now,
            });
            tracing::trace!(?woken, ?step, "waiting");
            match step {
                Step::Try => {
                    let on_a_grantable_line = matches!(woken, Woken::Looked | Woken::Changed);
                    head.safety_probe_at = Instant::now() + SAFETY_PROBE;
                    if let Some(grant) = self.attempt_tolerant(wait).await? {
                        // Leaving the queue (as this returns) wakes the next waiter, which sees
                        // the hold and waits.
                        return Ok(grant);
                    }
                    head.refused_when_grantable = on_a_grantable_line;
                    woken = if wait.last_try_lost.get() {
                        Woken::TryLost
                    } else {
                        Woken::Refused
                    };
                }
                Step::Look(look) => {
                    if held_here.is_none() && head.watching.is_none() {
                        head.watching = Some(self.release_watch.watch(&wait.resource));
                    }
                    let looked = tokio::time::timeout_at(
                        wait.deadline.into(),
                        self.look(&wait.resource, look),
                    )
                    .await
                    .map_err(|_| WaitEnd::OutOfTime)?;
                    self.waiters.record_contact(
                        &wait.resource,
                        looked.as_ref().err().map(ToString::to_string),
                    );
                    woken = match looked {
                        Ok((view, fresh)) => {
                            head.saw(&view);
                            if let Some(watching) = &head.watching {
                                watching.learn_document(view.document.as_deref());
                            }
                            if fresh {
                                Woken::Looked
                            } else {
                                Woken::Nudged
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "could not look at the line");
                            Woken::LookFailed
                        }
                    };
                }
                Step::Pause(pause) => {
                    let length = head.length(pause);
                    woken = self.pause(length, Some(place), wait).await?;
                    head.refused_when_grantable = false;
                }
            }
        }
    }

    /// [`Core::acquire_adaptive`]'s loop for a shared hold, with `place` in the queue. A
    /// shared waiter takes no place in the line of waiting managers for itself (that line is of
    /// exclusive waiters, and a shared grant yields to it), only for exclusive waiters behind it
    /// here ([`line::shared_head_lines_up`]): the head tries, and after a refusal pauses as
    /// [`Backoff`] says (from a tenth of `acquire_period` to `acquire_period`, with jitter), or
    /// until a hold here ends.
    async fn wait_shared(
        self: &Rc<Self>,
        wait: &Wait<'_>,
        place: &Place,
    ) -> Result<LockGrant, WaitEnd> {
        let mut backoff = Backoff::new(self.config.acquire_period);
        loop {
            if !place.is_head() {
                self.pause(wait.remaining(), Some(place), wait).await?;
                continue;
            }
            if let Some(grant) = self.attempt_tolerant(wait).await? {
                return Ok(grant);
            }
            let view = self.lines.view(&wait.resource);
            let behind = self.waiters.count(&wait.resource);
            let me = self.lines.manager();
            if line::shared_head_lines_up(me, view.as_ref(), behind, self.clock.now()) {
                // For the exclusive waiters behind this head, cut off at the deadline as every
                // look is; a failure costs only the order.
                let joined = tokio::time::timeout_at(
                    wait.deadline.into(),
                    self.look(&wait.resource, Look::Join),
                )
                .await
                .map_err(|_| WaitEnd::OutOfTime)?;
                self.waiters.record_contact(
                    &wait.resource,
                    joined.as_ref().err().map(ToString::to_string),
                );
                if let Err(e) = joined {
                    tracing::debug!(error = %e, "could not line up for the writers behind");
                }
            }
            let pause = backoff.next_pause(jitter());
            if !matches!(self.pause(pause, Some(place), wait).await?, Woken::Timer) {
                backoff.restart();
            }
        }
    }

    /// An attempt inside a wait, cut off at the wait's deadline; the first one gets
    /// [`FIRST_TRY`] (or `request_timeout`, if shorter) at least, whatever the budget: the
    /// budget bounds the waiting, so even a zero timeout is granted a free resource, and a
    /// database that is gone is reported within that, not after a whole `request_timeout`. A
    /// transient database error counts as "not yet"; it, or a cut-off, leaves the attempt's
    /// outcome unknown, which the wait remembers so that a wait ending without a grant releases
    /// the lock id after all.
    async fn attempt_tolerant(
        self: &Rc<Self>,
        wait: &Wait<'_>,
    ) -> Result<Option<LockGrant>, WaitEnd> {
        let first = wait.attempts.get() == 0;
        wait.attempts.set(wait.attempts.get() + 1);
        let attempt = async {
            if wait.shared {
                self.attempt_shared(
                    &wait.resource,
                    &wait.lock_id,
                    wait.ttl,
                    wait.limit,
                    wait.queued,
                )
                .await
            } else {
                self.attempt(&wait.resource, &wait.lock_id, wait.ttl, wait.queued)
                    .await
            }
        };
        let cut_off = if first {
            wait.deadline
                .max(Instant::now() + FIRST_TRY.min(self.config.request_timeout))
        } else {
            wait.deadline
        };
        let answer = tokio::time::timeout_at(cut_off.into(), attempt).await;
        if wait.queued {
            let failure = match &answer {
                Ok(Err(e)) if e.outcome_unknown() => Some(e.to_string()),
                Ok(_) => None,
                Err(_) => Some("no answer from the database before the wait's deadline".to_owned()),
            };
            self.waiters.record_contact(&wait.resource, failure);
        }
        match answer {
            Ok(Ok(grant)) => {
                wait.answered.set(true);
                wait.last_try_lost.set(false);
                Ok(grant)
            }
            Ok(Err(e)) if e.outcome_unknown() => {
                wait.uncertain.set(true);
                wait.last_try_lost.set(true);
                tracing::warn!(error = %e, "grant attempt failed; retrying within the wait budget");
                *wait.last_error.borrow_mut() = Some(e.to_string());
                Ok(None)
            }
            Ok(Err(e)) => Err(WaitEnd::Error(e)),
            Err(_) => {
                wait.uncertain.set(true);
                wait.last_error
                    .borrow_mut()
                    .get_or_insert_with(|| "no answer from the database in time".to_owned());
                Err(WaitEnd::OutOfTime)
            }
        }
    }

    /// Sleeps up to `pause`, waking early when this waiter is woken (and answering why), and
    /// ending the wait when the deadline passes, the manager closes or the caller leaves. A
    /// pause that reaches the deadline ends the wait there: a try sent at the deadline would be
    /// cut off at once, leaving a grant whose outcome nobody learns.
    async fn pause(
        &self,
        pause: Duration,
        place: Option<&Place>,
        wait: &Wait<'_>,
    ) -> Result<Woken, WaitEnd> {
        let remaining = wait.remaining();
        if remaining.is_zero() {
            return Err(WaitEnd::OutOfTime);
        }
        let woken = async {
            match place {
                Some(place) => place.woken().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause.min(remaining)) => {
                if pause >= remaining { Err(WaitEnd::OutOfTime) } else { Ok(Woken::Timer) }
            }
            why = woken => Ok(why),
            () = self.drain.granting_ended() => Err(WaitEnd::Error(LockError::Closing)),
            () = wait.caller.gone() => Err(WaitEnd::Error(LockError::Closing)),
        }
    }

    /// One look at `resource`'s line, of the kind [`line::next_step`] asked for; answers the
    /// line as it then stands (free if the resource has no document), kept as last seen, and
    /// whether it is fresh: no event about the line came while the look was on its way (else
    /// the answer may predate the event, and the line is looked at again).
    async fn look(&self, resource: &ResourceId, look: Look) -> Result<(LineView, bool), LockError> {
        let now = self.clock.now();
        let me = self.lines.manager();
        let mark = self.lines.mark(resource);
        let seen = self.lines.view(resource).unwrap_or_default();
        let view = match look {
            Look::Read => self.store.read_line(resource, now).await?,
            Look::Join | Look::Renew => {
                // From the moment it asks, this manager counts itself in line: a look cut off
                // on its way may still have taken the place, which leaving must then give up.
                self.lines.count_in(resource);
                let turn = line::handed_turn(&seen, me, me, now);
                let renew = seen.turn.as_ref().is_some_and(|turn| turn.manager == me);
                self.store.join_line(resource, &turn, renew, now).await?
            }
            Look::Settle => match seen.unserved_first(now) {
                Some(first) => {
                    let turn = line::handed_turn(&seen, first, me, now);
                    match self.store.pass_turn(resource, &turn, now).await? {
                        Some(passed) => Some(passed),
                        // Someone else settled it first: see whose turn it is now.
                        None => self.store.read_line(resource, now).await?,
                    }
                }
                None => self.store.read_line(resource, now).await?,
            },
        };
        let view = view.unwrap_or_default();
        let fresh = self.lines.remember_look(resource, view.clone(), mark);
        Ok((view, fresh))
    }

    /// Gives a turn that is nobody's to `turn.manager`, the first in line; answers the line as
    /// it then stands, or `view` if someone else settled it first or the request failed.
    pub(super) async fn settle(
        &self,
        resource: &ResourceId,
        turn: &Turn,
        view: LineView,
    ) -> LineView {
        match self.store.pass_turn(resource, turn, self.clock.now()).await {
            Ok(Some(passed)) => passed,
            Ok(None) => view,
            Err(e) => {
                tracing::debug!(error = %e, "could not pass the turn on");
                view
            }
        }
    }

    /// Takes a place at the end of `resource`'s line, never the turn (this manager holds the
    /// resource: taking a turn nobody has would serve its next waiter next, out of turn). One
    /// request, within `request_timeout`, in the background (Close waits for it). If it fails,
    /// the next waiter here lines up when it is refused.
    pub(super) fn line_up_in_background(self: &Rc<Self>, resource: &ResourceId) {
        let core = Rc::clone(self);
        let resource = resource.clone();
        self.lines.count_in(&resource);
        self.in_background(async move {
            let lined_up = core
                .store
                .line_up(&resource, core.lines.manager(), core.clock.now())
                .await;
            match lined_up {
                Ok(Some(view)) if core.waiters.is_waited_exclusive(&resource) => {
                    let now = core.clock.now();
                    let holds_it = core.holds.live_lease(&resource, now).is_some();
                    let view = match line::after_line_up(core.lines.manager(), &view, holds_it, now)
                    {
                        Some(turn) => core.settle(&resource, &turn, view).await,
                        None => view,
                    };
                    core.lines.remember(&resource, view);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "could not line up again"),
            }
        });
    }

    /// After a wait here ended without a grant: if it was the last wait here for `resource`
    /// and this manager has (or may have) a place in its line, leaves the line, handing its turn
    /// on if it has it, in the background: the Acquire's answer does not wait for it (Close
    /// does). See [`leave_line_in_background`](Self::leave_line_in_background).
    pub(super) fn leave_line_if_unwaited(self: &Rc<Self>, resource: &ResourceId) {
        if self.waiters.is_waited_exclusive(resource) {
            return;
        }
        if let Some(pass_to) = self.lines.forget(resource, self.clock.now()) {
            self.leave_line_in_background(resource, pass_to);
        }
    }

    /// Takes this manager out of `resource`'s line, handing its turn (if it has it) on as
    /// `pass_to`, in the background (Close waits for it). Each try is one request within
    /// `request_timeout`; a try that fails with an unknown outcome (a cut, a timeout) is made
    /// again with growing pauses (50 ms doubling to 1 s), up to [`LEAVE_TRIES`] tries, since a
    /// place left behind is skipped only once its turn lapses, and a turn left
    /// behind holds every other manager up until then (the hold's lease and
    /// [`TURN_LIFE`](crate::line::TURN_LIFE) more). It gives up once a wait for the resource
    /// begins here again (that wait keeps the place), when the manager closes, or after a
    /// lease and a turn's life, when the place no longer matters.
    pub(super) fn leave_line_in_background(
        self: &Rc<Self>,
        resource: &ResourceId,
        pass_to: Option<Turn>,
    ) {
        let core = Rc::clone(self);
        let resource = resource.clone();
        let until = Instant::now() + self.config.ttl + line::TURN_LIFE;
        self.in_background(async move {
            let mut pause = Duration::from_millis(50);
            let mut tries = 0;
            loop {
                let left = core
                    .store
                    .leave_line(&resource, core.lines.manager(), pass_to.as_ref())
                    .await;
                let Err(e) = left else {
                    break;
                };
                tries += 1;
                // Only a try whose request may not have reached the database is made again (a
                // cut, a timeout), and a few times at most: a hot document is not to be
                // written over and over.
                let again = e.outcome_unknown()
                    && tries < LEAVE_TRIES
                    && Instant::now() < until
                    && !core.drain.is_closing()
                    && !core.waiters.is_waited(&resource);
                if !again {
                    tracing::debug!(error = %e, "could not leave the line; the place will be skipped");
                    break;
                }
                tracing::debug!(error = %e, "could not leave the line; trying again");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = core.drain.closing() => {}
                }
                if core.waiters.is_waited(&resource) {
                    break;
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        });
    }
}

/// How many times at most a manager tries to leave a line ([`Core::leave_line_in_background`]).
const LEAVE_TRIES: u32 = 8;

/// The least time the first attempt of a wait gets, whatever the wait's budget (unless the
/// `request_timeout` is shorter): a healthy database answers far sooner, and a wait of a zero
/// budget still makes one complete attempt.
const FIRST_TRY: Duration = Duration::from_secs(1);

/// How often a waiter whose resource is held by its own manager asks the database anyway: a
/// release made through another manager (anyone with the lock id may unlock) is not seen here.
const SAFETY_PROBE: Duration = Duration::from_secs(1);

/// "Forever", for a deadline that would not fit in an `Instant` (`Duration::MAX`).
const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `budget` after `start`, saturating at [`FOREVER`].
fn deadline_after(start: Instant, budget: Duration) -> Instant {
    start
        .checked_add(budget.min(FOREVER))
        .unwrap_or(start + FOREVER)
}

/// What the head of a local queue keeps between its steps.
struct Head {
    /// Its interest in the release stream, from its first look on.
    watching: Option<Watching>,
    backoff: Backoff,
    /// The resource's fence at the last look and when it was seen; whether it rose at the
    /// look after, and how often the resource was granted in between.
    last_fence: Option<(i64, Instant)>,
    handed_on: bool,
    grant_every: Option<Duration>,
    /// The last try was made because the line looked grantable, and was refused; until the
    /// next pause.
    refused_when_grantable: bool,
    /// When the safety probe of a resource held here is due.
    safety_probe_at: Instant,
}

impl Head {
    fn new(acquire_period: Duration) -> Self {
        Head {
            watching: None,
            backoff: Backoff::new(acquire_period),
            last_fence: None,
            handed_on: false,
            grant_every: None,
            refused_when_grantable: false,
            safety_probe_at: Instant::now() + SAFETY_PROBE,
        }
    }

    /// Takes in a look's answer.
    fn saw(&mut self, view: &LineView) {
        let seen = view.fence.map(|fence| (fence, Instant::now()));
        let (rose, every) = match (self.last_fence, seen) {
            (Some((before, then)), Some((fence, now))) if fence > before => {
                let grants = u32::try_from(fence - before).unwrap_or(u32::MAX);
                (true, Some((now - then) / grants))
            }
            (Some(_), Some(_)) | (None, _) => (false, None),
            (Some(_), None) => (true, None),
        };
        self.handed_on = rose;
        self.grant_every = every;
        self.last_fence = seen;
    }

    /// How long `pause` lasts.
    fn length(&mut self, pause: Pause) -> Duration {
        match pause {
            Pause::For(length) => length,
            Pause::Backoff { restart, at_most } => {
                if restart {
                    self.backoff.restart();
                }
                self.backoff.next_pause(jitter()).min(at_most)
            }
        }
    }
}

/// A jitter in [0, 1] for a [`Backoff`] pause: the randomness of a v4 UUID.
fn jitter() -> f64 {
    f64::from(uuid::Uuid::new_v4().as_u128() as u16) / f64::from(u16::MAX)
}

/// One Acquire's wait: what it waits for, its limits and what it has seen so far.
struct Wait<'a> {
    resource: ResourceId,
    /// The id a grant will carry, the same for every attempt of this wait.
    lock_id: LockId,
    started: Instant,
    deadline: Instant,
    caller: &'a Caller,
    /// The lease of the grant the wait asks for.
    ttl: Duration,
    /// Retries made after the first attempt (fixed polling).
    retries: Cell<u32>,
    /// Whether an attempt's outcome is unknown (its reply was lost or cut off).
    uncertain: Cell<bool>,
    /// Attempts sent to the database.
    attempts: Cell<u32>,
    /// Whether any attempt was answered by the server (granted or refused).
    answered: Cell<bool>,
    /// Whether the last attempt's answer was lost (a database error that leaves its outcome
    /// unknown).
    last_try_lost: Cell<bool>,
    /// The last database error an attempt met.
    last_error: RefCell<Option<String>>,
    /// No request of this manager's queue for the resource reached the database during the
    /// wait, and one failed: down, not busy.
    unreachable: Cell<bool>,
    /// Whether the wait has a place in this manager's queue (adaptive polling does; dplock's
    /// fixed polling does not).
    queued: bool,
    /// Whether the wait is for a shared hold, and of at most how many.
    shared: bool,
    limit: Option<u32>,
}

impl Wait<'_> {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Why a wait ended without a grant.
enum WaitEnd {
    OutOfTime,
    Error(LockError),
}
