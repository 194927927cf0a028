//! Every end of a hold granted here: `Unlock`, the one bookkeeping step each end goes through
//! ([`Core::forget_hold`]), waiting for every hold to end (`AwaitReleased`), releasing grants
//! nobody was given, and releasing all at `Close`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::LockError;
use crate::messages::{LockId, ReleasedReport, UnlockOutcome};
use crate::reply::Caller;
use crate::store::HoldKind;

use super::Core;

/// The longest pause between two tries to release a grant whose outcome is unknown while the
/// manager closes: Close waits for them.
const CLOSING_PAUSE: Duration = Duration::from_millis(100);

impl Core {
    /// Releases `lock_id`, retrying transient failures every `unlock_period` up to
    /// `unlock_max_retries` times, all within one `request_timeout`: the answer never waits
    /// longer. When no try was confirmed by then, the answer is `UnlockMaxRetries` and the release
    /// goes on in the background until the lease would have ended anyway.
    pub(crate) async fn unlock(
        self: &Rc<Self>,
        lock_id: &LockId,
    ) -> Result<UnlockOutcome, LockError> {
        let retries = Cell::new(0);
        let last_error = RefCell::new(String::new());
        let tries = self.unlock_tries(lock_id, &retries, &last_error);
        match tokio::time::timeout(self.config.request_timeout, tries).await {
            Ok(answer) => answer,
            Err(_) => {
                let last_error = match last_error.take() {
                    e if e.is_empty() => format!(
                        "no answer from the database within {:?}",
                        self.config.request_timeout
                    ),
                    e => e,
                };
                let error = LockError::UnlockMaxRetries {
                    retries: retries.get(),
                    last_error,
                };
                tracing::warn!(%error, "unlock unconfirmed; releasing in the background");
                let ttl = self.holds.get(lock_id).map_or(self.config.ttl, |h| h.ttl);
                self.release_until_gone(lock_id.clone(), ttl);
                Err(error)
            }
        }
    }

    async fn unlock_tries(
        self: &Rc<Self>,
        lock_id: &LockId,
        retries: &Cell<u32>,
        last_error: &RefCell<String>,
    ) -> Result<UnlockOutcome, LockError> {
        loop {
            let retried = retries.get();
            match self.release(lock_id).await {
                Ok(released) => {
                    self.forget_hold(lock_id);
                    let outcome = match (released, retried) {
                        (true, _) => UnlockOutcome::Released,
                        (false, 0) => UnlockOutcome::NotHeld,
                        // A retry that finds nothing after a try whose reply was lost: that try
                        // may have released the hold, or the hold had ended before. Say so.
                        (false, _) => UnlockOutcome::Unconfirmed,
                    };
                    tracing::debug!(?outcome, "unlocked");
                    return Ok(outcome);
                }
                Err(e) if e.outcome_unknown() && retried < self.config.unlock_max_retries => {
                    tracing::debug!(error = %e, retries = retried, "unlock failed; retrying");
                    *last_error.borrow_mut() = e.to_string();
                    retries.set(retried + 1);
                    tokio::select! {
                        () = tokio::time::sleep(self.config.unlock_period) => {}
                        () = self.drain.closing() => return Err(LockError::Closing),
                    }
                }
                Err(e) if e.outcome_unknown() => {
                    let error = LockError::UnlockMaxRetries {
                        retries: retried,
                        last_error: e.to_string(),
                    };
                    tracing::error!(%error, "giving up on unlock; the lease will end the hold");
                    return Err(error);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One release of `lock_id` (`MongoStore::release`), naming whom it wakes from the line as
    /// this manager last saw it: since the hold's grant, or since a look by one of its waiters.
    /// A lock id granted elsewhere is looked up first.
    ///
    /// A shared hold granted here is released as one (`MongoStore::release_shared`); a lock id
    /// not granted here is tried as an exclusive hold, then as a shared one.
    async fn release(&self, lock_id: &LockId) -> Result<bool, LockError> {
        let hold = self.holds.get(lock_id);
        let now = self.clock.now();
        if let Some(hold) = hold.as_ref().filter(|hold| hold.shared) {
            return self
                .store
                .release_shared(lock_id, Some(&hold.resource_id), now)
                .await;
        }
        let granted_here = hold.is_some();
        let known = hold.map(|hold| {
            let view = self.lines.view(&hold.resource_id).unwrap_or(hold.line);
            (hold.resource_id, view)
        });
        let released = self
            .store
            .release(
                lock_id,
                known.as_ref().map(|(resource, view)| (resource, view)),
                now,
            )
            .await?;
        if released || granted_here {
            return Ok(released);
        }
        self.store.release_shared(lock_id, None, now).await
    }

    /// For [`Unlock::shared`](crate::Unlock::shared): [`LockError::NotShared`] if `lock_id`
    /// is an exclusive hold (granted here, or found so in the database: one `find`, or two for
    /// a lock id held nowhere). Writes nothing.
    pub(crate) async fn check_shared(&self, lock_id: &LockId) -> Result<(), LockError> {
        let exclusive = match self.holds.get(lock_id) {
            Some(hold) => !hold.shared,
            None => self.store.hold_kind(lock_id).await? == HoldKind::Exclusive,
        };
        if exclusive {
            return Err(LockError::NotShared);
        }
        Ok(())
    }

    /// Forgets a hold that ended (released here, found gone, expired or lost) and hands its
    /// resource to the next local waiter; `true` if this manager still had it. Every end of a
    /// local hold goes through here.
    pub(crate) fn forget_hold(&self, lock_id: &LockId) -> bool {
        let Some(hold) = self.holds.remove(lock_id) else {
            return false;
        };
        let held = self
            .clock
            .now()
            .duration_since(hold.granted_at)
            .unwrap_or_default();
        crate::metrics::held(&self.config.name, held, crate::metrics::mode(hold.shared));
        self.waiters.wake_head(&hold.resource_id);
        true
    }

    /// `AwaitReleased`: waits until no hold granted here is live (each ended through
    /// [`forget_hold`](Self::forget_hold), or its lease is over), `timeout` has passed, a
    /// `Close` has finished, or the caller left. Makes no database request.
    pub(crate) async fn await_released(
        &self,
        timeout: Duration,
        caller: &Caller,
    ) -> ReleasedReport {
        let started = Instant::now();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let ended = self.holds.ended();
            // None when no hold is live.
            let Some(first_end) = self.holds.live_at(self.clock.now()).1 else {
                break;
            };
            tokio::select! {
                () = ended => {}
                () = tokio::time::sleep(self.clock.until(first_end)) => {}
                () = &mut deadline => break,
                () = self.drain.closed() => break,
                () = caller.gone() => break,
            }
        }
        let report = ReleasedReport {
            still_held: self.holds.live_at(self.clock.now()).0,
            waited: started.elapsed(),
        };
        if report.all_released() {
            tracing::info!(waited = ?report.waited, "every hold granted here has ended");
        } else {
            tracing::warn!(
                still_held = report.still_held,
                waited = ?report.waited,
                "holds granted here still held at the end of the wait"
            );
        }
        report
    }

    /// After a `Lock` or an `Acquire` that ended without a grant: if an attempt's outcome is
    /// unknown (`uncertain`: its reply was lost, or it was cut off and may still land),
    /// releases `lock_id` in case the grant was made.
    pub(super) fn release_if_uncertain(
        self: &Rc<Self>,
        lock_id: LockId,
        ttl: Duration,
        uncertain: bool,
    ) {
        if uncertain {
            self.release_until_gone(lock_id, ttl);
        }
    }

    /// Releases `lock_id` in the background, trying again with growing pauses until a release
    /// succeeds or a lease of `ttl` granted now would have ended anyway: a grant whose request
    /// is still on its way can land after the first try. While closing, it goes on trying, at
    /// most [`CLOSING_PAUSE`] apart, while such a grant may still land: until `request_timeout`
    /// from now (a request the server holds up longer than that is past the bound of every
    /// request of this manager), and no longer than the lease. Close waits for it within
    /// `close_timeout`, so a grant held up by the server that lands after the Acquire gave up
    /// is released before Close answers.
    pub(super) fn release_until_gone(self: &Rc<Self>, lock_id: LockId, ttl: Duration) {
        let core = Rc::clone(self);
        let until = Instant::now() + ttl;
        let may_land_until = (Instant::now() + self.config.request_timeout).min(until);
        self.in_background(async move {
            let mut pause = Duration::from_millis(50);
            loop {
                match core.release(&lock_id).await {
                    Ok(true) => {
                        core.forget_hold(&lock_id);
                        tracing::debug!("released a hold nobody was given");
                        break;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "release failed; trying again"),
                }
                let now = Instant::now();
                let closing = core.drain.is_closing();
                if now >= until || (closing && now >= may_land_until) {
                    break;
                }
                if closing {
                    tokio::time::sleep(pause.min(CLOSING_PAUSE)).await;
                } else {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = core.drain.closing() => {}
                    }
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        });
    }

    /// At Close: releases every hold granted here and not yet unlocked, so a process that shuts
    /// down frees its resources now instead of when their leases end. One attempt each, all at
    /// once; a hold counts as released only when the server confirmed it, and is forgotten
    /// either way (an unconfirmed one ends with its lease). The caller bounds the time: holds
    /// whose release is cut off stay in the local record, so they count as unreleased.
    pub(super) async fn release_all_local(&self) {
        let lock_ids = self.holds.lock_ids();
        let releases = lock_ids.iter().map(|lock_id| async move {
            match self.release(lock_id).await {
                Ok(_) => {
                    // Released now, or already gone: either way nothing is held any more.
                    self.forget_hold(lock_id);
                    self.count_released_at_close();
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?lock_id, "could not release a hold at close; its lease will end it");
                }
            }
        });
        futures::future::join_all(releases).await;
    }
}
