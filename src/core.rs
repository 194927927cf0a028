//! `Core`: what a [`LockManager`](crate::LockManager)'s messages do, as futures.
//!
//! The actor only accepts messages; the work runs here, in futures that share one `Core`
//! through an `Rc`. They all run on the manager's arbiter, one at a time, so plain cells
//! suffice and no borrow is held across an await.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::clock::ServerClock;
use crate::config::LockConfig;
use crate::drain::{Drain, InFlight};
use crate::error::LockError;
use crate::local::{LocalHolds, LocalWaiters, Place};
use crate::messages::{
    Acquire, HoldStatus, KeepAlive, Lock, LockGrant, LockId, Polling, ResourceId, UnlockOutcome,
};
use crate::reply::Caller;
use crate::store::{is_transient, MongoStore};

/// The state every message's future shares.
pub(crate) struct Core {
    pub(crate) config: LockConfig,
    pub(crate) store: MongoStore,
    pub(crate) clock: Rc<ServerClock>,
    pub(crate) drain: Rc<Drain>,
    pub(crate) holds: Rc<LocalHolds>,
    pub(crate) waiters: Rc<LocalWaiters>,
}

impl Core {
    pub(crate) async fn lock(
        self: &Rc<Self>,
        msg: Lock,
        caller: &Caller,
    ) -> Result<LockGrant, LockError> {
        let resource = ResourceId::new(msg.resource_id)?;
        let lock_id = LockId::generate();
        tracing::Span::current().record("lock_id", tracing::field::debug(&lock_id));
        match self.attempt(&resource, &lock_id).await {
            Ok(Some(grant)) => self.deliver(grant, caller, msg.keep_alive),
            Ok(None) => Err(LockError::AlreadyLocked {
                resource_id: resource.to_string(),
            }),
            Err(e) => Err(self.abandon(lock_id, e)),
        }
    }

    pub(crate) async fn acquire(
        self: &Rc<Self>,
        msg: Acquire,
        caller: &Caller,
    ) -> Result<LockGrant, LockError> {
        let resource = ResourceId::new(msg.resource_id)?;
        let lock_id = LockId::generate();
        tracing::Span::current().record("lock_id", tracing::field::debug(&lock_id));
        // The seed's fixed polling counts tries; its deadline only leaves room for the last one.
        let budget = match (msg.timeout, msg.polling) {
            (Some(timeout), _) => timeout,
            (None, Polling::Adaptive) => self.config.acquire_budget(),
            (None, Polling::Fixed) => self.config.acquire_budget() + self.config.acquire_period,
        };
        let wait = Wait {
            deadline: Instant::now() + budget,
            caller,
            uncertain: Cell::new(false),
        };
        let result = match msg.polling {
            Polling::Fixed => self.acquire_fixed(&resource, &lock_id, &wait).await,
            Polling::Adaptive => self.acquire_adaptive(&resource, &lock_id, &wait).await,
        };
        let result = match result {
            Ok(grant) => return self.deliver(grant, caller, msg.keep_alive),
            Err(WaitEnd::Error(e)) => e,
            Err(WaitEnd::OutOfTime { retries }) => match msg.timeout {
                None => LockError::AcquireMaxRetries {
                    resource_id: resource.to_string(),
                    retries,
                },
                Some(waited) => LockError::AcquireTimeout {
                    resource_id: resource.to_string(),
                    waited,
                },
            },
        };
        if wait.uncertain.get() {
            self.release_until_gone(lock_id);
        }
        Err(result)
    }

    /// The seed's Acquire: a try every `acquire_period`, `acquire_max_retries` times after the
    /// first.
    async fn acquire_fixed(
        &self,
        resource: &ResourceId,
        lock_id: &LockId,
        wait: &Wait<'_>,
    ) -> Result<LockGrant, WaitEnd> {
        let mut retries = 0;
        loop {
            let attempt = self.attempt_tolerant(resource, lock_id, wait).await;
            if let Some(grant) = attempt.map_err(|end| end.with_retries(retries))? {
                return Ok(grant);
            }
            if retries == self.config.acquire_max_retries {
                return Err(WaitEnd::OutOfTime { retries });
            }
            retries += 1;
            self.pause(self.config.acquire_period, None, wait)
                .await
                .map_err(|end| end.with_retries(retries))?;
        }
    }

    /// Waits in this manager's queue for `resource`: only the head probes the database, and not
    /// while this manager itself holds the resource; a release here wakes the head at once.
    async fn acquire_adaptive(
        &self,
        resource: &ResourceId,
        lock_id: &LockId,
        wait: &Wait<'_>,
    ) -> Result<LockGrant, WaitEnd> {
        // Take a place in line before the first probe, so arrival order is grant order.
        let place = self.waiters.join(resource);
        let mut backoff = Backoff::new(self.config.acquire_period);
        let mut retries: u32 = 0;
        loop {
            let held_here = self.holds.live_lease(resource, self.clock.now());
            if place.is_head() && held_here.is_none() {
                let attempt = self.attempt_tolerant(resource, lock_id, wait).await;
                if let Some(grant) = attempt.map_err(|end| end.with_retries(retries))? {
                    // Leaving the line wakes the next waiter, which sees the hold and waits.
                    drop(place);
                    return Ok(grant);
                }
                retries += 1;
            }
            let pause = match held_here {
                // Held through this manager: its Unlock wakes us; otherwise its lease ends.
                Some(expires_at) => self.clock.until(expires_at),
                None if place.is_head() => backoff.next_pause(),
                None => wait.remaining(),
            };
            self.pause(pause, Some(&place), wait)
                .await
                .map_err(|end| end.with_retries(retries.saturating_sub(1)))?;
        }
    }

    /// One grant attempt, recording the hold locally.
    async fn attempt(
        &self,
        resource: &ResourceId,
        lock_id: &LockId,
    ) -> Result<Option<LockGrant>, LockError> {
        let grant = self
            .store
            .grant(resource, lock_id, self.clock.now(), self.config.ttl)
            .await?;
        match &grant {
            Some(grant) => {
                self.holds.insert(grant);
                tracing::debug!(fence = grant.fence, "granted");
            }
            None => tracing::trace!("held by someone else"),
        }
        Ok(grant)
    }

    /// An attempt inside a wait, cut off at the wait's deadline. A transient database error
    /// counts as "not yet"; it, or a cut-off, leaves the attempt's outcome unknown, which the
    /// wait remembers so that a wait ending without a grant releases the lock id after all.
    async fn attempt_tolerant(
        &self,
        resource: &ResourceId,
        lock_id: &LockId,
        wait: &Wait<'_>,
    ) -> Result<Option<LockGrant>, WaitEnd> {
        let attempt = self.attempt(resource, lock_id);
        match tokio::time::timeout_at(wait.deadline.into(), attempt).await {
            Ok(Ok(grant)) => Ok(grant),
            Ok(Err(e)) if is_transient(&e) => {
                wait.uncertain.set(true);
                tracing::warn!(error = %e, "grant attempt failed; retrying within the wait budget");
                Ok(None)
            }
            Ok(Err(e)) => Err(WaitEnd::Error(e)),
            Err(_) => {
                wait.uncertain.set(true);
                Err(WaitEnd::OutOfTime { retries: 0 })
            }
        }
    }

    /// Sleeps up to `pause`, waking early when this waiter is told to try, and ending the wait
    /// when the deadline passes, the manager closes or the caller leaves.
    async fn pause(
        &self,
        pause: Duration,
        place: Option<&Place>,
        wait: &Wait<'_>,
    ) -> Result<(), WaitEnd> {
        let remaining = wait.remaining();
        if remaining.is_zero() {
            return Err(WaitEnd::OutOfTime { retries: 0 });
        }
        let woken = async {
            match place {
                Some(place) => place.woken().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause.min(remaining)) => Ok(()),
            () = woken => Ok(()),
            () = self.drain.closing() => Err(WaitEnd::Error(LockError::Closing)),
            () = wait.caller.gone() => Err(WaitEnd::Error(LockError::Closing)),
        }
    }

    /// Hands a grant to its caller (starting its keep-alive if asked), or releases it at once
    /// if the caller has gone away or the manager is closing.
    fn deliver(
        self: &Rc<Self>,
        grant: LockGrant,
        caller: &Caller,
        keep_alive: Option<KeepAlive>,
    ) -> Result<LockGrant, LockError> {
        if self.drain.is_closing() {
            // Close releases what is held here; a grant made meanwhile must not look alive.
            tracing::debug!("granted while closing; releasing it");
            self.release_until_gone(grant.lock_id);
            return Err(LockError::Closing);
        }
        if caller.is_gone() {
            tracing::debug!("caller left before the grant; releasing it");
            self.release_until_gone(grant.lock_id.clone());
        } else if let Some(keep_alive) = keep_alive {
            actix_rt::spawn(crate::lease::keep_alive(
                Rc::clone(self),
                grant.clone(),
                keep_alive,
            ));
        }
        Ok(grant)
    }

    /// After a failed grant whose outcome is unknown (the reply may have been lost, or the
    /// request may still land), releases the lock id in case the grant was made.
    fn abandon(self: &Rc<Self>, lock_id: LockId, error: LockError) -> LockError {
        if is_transient(&error) {
            self.release_until_gone(lock_id);
        }
        error
    }

    /// Releases `lock_id` in the background, trying again with growing pauses until a release
    /// succeeds or a lease granted now would have ended anyway: a grant whose request is still
    /// on its way can land after the first try. While closing, one more try and done.
    fn release_until_gone(self: &Rc<Self>, lock_id: LockId) {
        let core = Rc::clone(self);
        let token: InFlight = self.drain.extend();
        let until = Instant::now() + self.config.ttl;
        actix_rt::spawn(
            async move {
                let mut pause = Duration::from_millis(50);
                loop {
                    match core.store.release(&lock_id).await {
                        Ok(true) => {
                            core.forget_hold(&lock_id);
                            tracing::debug!("released a hold nobody was given");
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => tracing::debug!(error = %e, "release failed; trying again"),
                    }
                    if Instant::now() >= until || core.drain.is_closing() {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = core.drain.closing() => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                drop(token);
            }
            .in_current_span(),
        );
    }

    pub(crate) async fn unlock(&self, lock_id: &LockId) -> Result<UnlockOutcome, LockError> {
        let mut retries = 0;
        loop {
            match self.store.release(lock_id).await {
                // A retry that finds nothing after an attempt whose reply was lost: that
                // attempt may have released the hold, or the hold had ended before. Say so.
                Ok(false) if retries > 0 => {
                    self.forget_hold(lock_id);
                    tracing::debug!("released, unconfirmed: a try's reply was lost");
                    return Ok(UnlockOutcome::Unconfirmed);
                }
                Ok(true) => {
                    self.forget_hold(lock_id);
                    tracing::debug!("released");
                    return Ok(UnlockOutcome::Released);
                }
                Ok(false) => {
                    self.holds.remove(lock_id);
                    tracing::debug!("no hold with this id");
                    return Ok(UnlockOutcome::NotHeld);
                }
                Err(e) if is_transient(&e) && retries < self.config.unlock_max_retries => {
                    tracing::debug!(error = %e, retries, "unlock failed; retrying");
                    retries += 1;
                    tokio::select! {
                        () = tokio::time::sleep(self.config.unlock_period) => {}
                        () = self.drain.closing() => return Err(LockError::Closing),
                    }
                }
                Err(e) if is_transient(&e) => {
                    let error = LockError::UnlockMaxRetries {
                        retries,
                        last_error: e.to_string(),
                    };
                    tracing::error!(%error, "giving up on unlock; the lease will end the hold");
                    return Err(error);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Core {
    /// Forgets a hold that ended (released here, or found gone) and hands its resource to the
    /// next local waiter; `true` if this manager still had it.
    pub(crate) fn forget_hold(&self, lock_id: &LockId) -> bool {
        let Some(hold) = self.holds.remove(lock_id) else {
            return false;
        };
        self.waiters.wake_head(&hold.resource_id);
        true
    }

    /// Extends a live hold's lease by the TTL; `LockLost` if it is not live.
    pub(crate) async fn renew(&self, lock_id: &LockId) -> Result<LockGrant, LockError> {
        let created_at = self.holds.get(lock_id).map(|hold| hold.granted_at);
        let renewed = self
            .store
            .renew(lock_id, created_at, self.clock.now(), self.config.ttl)
            .await?;
        match renewed {
            Some(grant) => {
                self.holds.extend(lock_id, grant.expires_at);
                tracing::debug!("renewed");
                Ok(grant)
            }
            None => {
                self.forget_hold(lock_id);
                tracing::debug!("renewal refused: the hold is not live");
                Err(LockError::LockLost)
            }
        }
    }

    pub(crate) async fn status(
        &self,
        resource_id: String,
    ) -> Result<Option<HoldStatus>, LockError> {
        let resource = ResourceId::new(resource_id)?;
        self.store.status(&resource, self.clock.now()).await
    }

    pub(crate) async fn list_holds(&self) -> Result<Vec<HoldStatus>, LockError> {
        self.store.list_holds(self.clock.now()).await
    }

    /// At Close: releases every hold granted here and not yet unlocked, so a process that shuts
    /// down frees its resources now instead of when their leases end. One attempt each.
    pub(crate) async fn release_all_local(&self) {
        let lock_ids = self.holds.lock_ids();
        let releases = lock_ids.iter().map(|lock_id| self.store.release(lock_id));
        for (lock_id, result) in lock_ids
            .iter()
            .zip(futures::future::join_all(releases).await)
        {
            self.holds.remove(lock_id);
            if let Err(e) = result {
                tracing::warn!(error = %e, ?lock_id, "could not release a hold at close; its lease will end it");
            }
        }
        if !lock_ids.is_empty() {
            tracing::info!(
                released = lock_ids.len(),
                "released the holds still held at close"
            );
        }
    }
}

/// The limits of one Acquire's wait.
struct Wait<'a> {
    deadline: Instant,
    caller: &'a Caller,
    /// Whether an attempt's outcome is unknown (its reply was lost or cut off).
    uncertain: Cell<bool>,
}

impl Wait<'_> {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Why a wait ended without a grant.
enum WaitEnd {
    OutOfTime { retries: u32 },
    Error(LockError),
}

impl WaitEnd {
    /// Fills in how many retries were made, for an end by time.
    fn with_retries(self, retries: u32) -> Self {
        match self {
            WaitEnd::OutOfTime { .. } => WaitEnd::OutOfTime { retries },
            other => other,
        }
    }
}

/// Pauses between the probes of a waiter whose resource is held elsewhere: half of
/// `acquire_period / 10` first (a release often comes soon), then `acquire_period / 10` (25 ms by
/// default), each stretched by a random 0.9 to 1.3 so waiters in different processes do not probe
/// in step. A waiting manager so probes a resource at most about 36 times a second on average
/// (the seed's fixed polling: 4). Waiting on a hold of this same manager does not probe at all:
/// its release wakes the waiter.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(acquire_period: Duration) -> Self {
        let max = acquire_period / 10;
        Backoff { next: max / 2, max }
    }

    fn next_pause(&mut self) -> Duration {
        let base = self.next;
        self.next = self.max;
        // The randomness of a v4 UUID serves as jitter.
        let fraction = f64::from(uuid::Uuid::new_v4().as_u128() as u16) / f64::from(u16::MAX);
        base.mul_f64(0.9 + 0.4 * fraction)
    }
}
