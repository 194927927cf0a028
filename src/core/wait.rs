//! `Acquire`: waiting for a resource held by someone else, within a budget.
//!
//! Two pollings share one wait ([`Wait`]: the resource and the lock id, the deadline, the
//! caller, how many retries were made, whether an attempt's outcome is unknown): dplock's fixed
//! polling, and the adaptive one, in which only the head of this manager's local queue probes:
//! woken by a release here, or, for a resource held elsewhere, as `watch.rs` decides (a release
//! stream, else growing pauses).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::LockError;
use crate::local::Place;
use crate::messages::{Acquire, LockGrant, LockId, Polling, ResourceId};
use crate::reply::Caller;

use super::grant::new_request;
use super::watch::RemoteWait;
use super::Core;

impl Core {
    pub(crate) async fn acquire(
        self: &Rc<Self>,
        msg: Acquire,
        caller: &Caller,
    ) -> Result<LockGrant, LockError> {
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
            deadline: deadline_after(started, budget),
            caller,
            ttl,
            retries: Cell::new(0),
            uncertain: Cell::new(false),
            attempts: Cell::new(0),
            answered: Cell::new(false),
            last_try_lost: Cell::new(false),
            last_error: RefCell::new(None),
            queued: matches!(msg.polling, Polling::Adaptive),
        };
        let result = match msg.polling {
            Polling::Fixed => self.acquire_fixed(&wait).await,
            Polling::Adaptive => self.acquire_adaptive(&wait).await,
        };
        let result = match result {
            Ok(grant) => return self.deliver(grant, caller, msg.keep_alive),
            Err(WaitEnd::Error(e)) => e,
            // Attempts were made and none reached the server: down, not busy.
            Err(WaitEnd::OutOfTime) if wait.attempts.get() > 0 && !wait.answered.get() => {
                LockError::Unavailable {
                    waited: started.elapsed(),
                    last_error: wait.last_error.take().unwrap_or_default(),
                }
            }
            Err(WaitEnd::OutOfTime) => match msg.timeout {
                None => LockError::AcquireMaxRetries {
                    resource_id: wait.resource.to_string(),
                    max_retries: self.config.acquire_max_retries,
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
            wait.count_retry();
            self.pause(self.config.acquire_period, None, wait).await?;
        }
    }

    /// Waits in this manager's queue for the resource: only the head probes the database;
    /// while this manager itself holds the resource, only every [`SAFETY_PROBE`] (a release here
    /// wakes the head at once, but a release through another manager, by a lock id handed there,
    /// is seen only by asking). For a resource held elsewhere the head also keeps this manager's
    /// place in the resource's line (`line.rs`, `watch.rs`): woken by a release it tries at
    /// once; woken by its timer it looks at the line first, and tries only if the resource is
    /// free and its turn (or nobody's). Every probe after the first counts as a retry.
    async fn acquire_adaptive(self: &Rc<Self>, wait: &Wait<'_>) -> Result<LockGrant, WaitEnd> {
        // Take a place in line before the first probe, so arrival order is grant order.
        let place = self.waiters.join(&wait.resource);
        let mut remote = RemoteWait::new(self.config.acquire_period);
        let mut probed = false;
        let mut safety_probe_at = Instant::now() + SAFETY_PROBE;
        // Whether the head's next probe is a grant attempt, or a look at the line first.
        let mut try_next = true;
        loop {
            let held_here = self.holds.live_lease(&wait.resource, self.clock.now());
            let due = held_here.is_none() || Instant::now() >= safety_probe_at;
            if place.is_head() && due && (try_next || held_here.is_some()) {
                if probed {
                    wait.count_retry();
                }
                probed = true;
                safety_probe_at = Instant::now() + SAFETY_PROBE;
                if let Some(grant) = self.attempt_tolerant(wait).await? {
                    // Leaving the line wakes the next waiter, which sees the hold and waits.
                    drop(place);
                    return Ok(grant);
                }
            }
            let held_here = self.holds.live_lease(&wait.resource, self.clock.now());
            let pause = match held_here {
                // Held through this manager: its Unlock wakes us; otherwise its lease ends, or
                // the safety probe finds it released elsewhere.
                Some(expires_at) => self
                    .clock
                    .until(expires_at)
                    .min(safety_probe_at.saturating_duration_since(Instant::now())),
                None if place.is_head() => {
                    self.remote_pause(&wait.resource, &mut remote, wait.deadline)
                        .await
                }
                None => wait.remaining(),
            };
            let woken = self.pause(pause, Some(&place), wait).await?;
            // A try whose answer was lost is repeated as it was (the same lock id finds its own
            // hold), not replaced by a look at the line, which would see the hold and wait.
            try_next = woken == Woken::Told || remote.looks_grantable() || wait.last_try_lost.get();
        }
    }

    /// An attempt inside a wait. The first one always runs to its answer (bounded by
    /// `request_timeout`), whatever the budget: the budget bounds the waiting, not the first
    /// try, so even a zero timeout is granted a free resource. Later ones are cut off at the
    /// wait's deadline. A transient database error counts as "not yet"; it, or a cut-off, leaves
    /// the attempt's outcome unknown, which the wait remembers so that a wait ending without a
    /// grant releases the lock id after all.
    async fn attempt_tolerant(
        self: &Rc<Self>,
        wait: &Wait<'_>,
    ) -> Result<Option<LockGrant>, WaitEnd> {
        let first = wait.attempts.get() == 0;
        wait.attempts.set(wait.attempts.get() + 1);
        let attempt = self.attempt(&wait.resource, &wait.lock_id, wait.ttl, wait.queued);
        let answer = if first {
            Ok(attempt.await)
        } else {
            tokio::time::timeout_at(wait.deadline.into(), attempt).await
        };
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
                Err(WaitEnd::OutOfTime)
            }
        }
    }

    /// Sleeps up to `pause`, waking early when this waiter is told to try, and ending the wait
    /// when the deadline passes, the manager closes or the caller leaves. A pause that reaches
    /// the deadline ends the wait there: a try sent at the deadline would be cut off at once,
    /// leaving a grant whose outcome nobody learns.
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
            told_to_try = woken => Ok(if told_to_try { Woken::Told } else { Woken::Timer }),
            () = self.drain.granting_ended() => Err(WaitEnd::Error(LockError::Closing)),
            () = wait.caller.gone() => Err(WaitEnd::Error(LockError::Closing)),
        }
    }
}

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

/// One Acquire's wait: what it waits for, its limits and what it has seen so far.
struct Wait<'a> {
    resource: ResourceId,
    /// The id a grant will carry, the same for every attempt of this wait.
    lock_id: LockId,
    deadline: Instant,
    caller: &'a Caller,
    /// The lease of the grant the wait asks for.
    ttl: Duration,
    /// Retries made after the first attempt.
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
    /// Whether the wait has a place in this manager's queue (adaptive polling does; dplock's
    /// fixed polling does not).
    queued: bool,
}

impl Wait<'_> {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn count_retry(&self) {
        self.retries.set(self.retries.get() + 1);
    }
}

/// How a pause ended: its time was up (or the waiter was told to look again), or it was told to
/// try (a release here or in the release stream, or it became the head of the local queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Woken {
    Timer,
    Told,
}

/// Why a wait ended without a grant.
enum WaitEnd {
    OutOfTime,
    Error(LockError),
}
