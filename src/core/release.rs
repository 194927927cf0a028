//! Every end of a hold granted here: `Unlock`, the one bookkeeping step each end goes through
//! ([`Core::forget_hold`]), releasing grants nobody was given, and releasing all at `Close`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::drain::InFlight;
use crate::error::LockError;
use crate::messages::{LockId, UnlockOutcome};
use crate::store::is_transient;

use super::Core;

impl Core {
    pub(crate) async fn unlock(&self, lock_id: &LockId) -> Result<UnlockOutcome, LockError> {
        let mut retries = 0;
        loop {
            match self.store.release(lock_id).await {
                Ok(released) => {
                    self.forget_hold(lock_id);
                    let outcome = match (released, retries) {
                        (true, _) => UnlockOutcome::Released,
                        (false, 0) => UnlockOutcome::NotHeld,
                        // A retry that finds nothing after a try whose reply was lost: that try
                        // may have released the hold, or the hold had ended before. Say so.
                        (false, _) => UnlockOutcome::Unconfirmed,
                    };
                    tracing::debug!(?outcome, "unlocked");
                    return Ok(outcome);
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

    /// Forgets a hold that ended (released here, found gone, expired or lost) and hands its
    /// resource to the next local waiter; `true` if this manager still had it. Every end of a
    /// local hold goes through here.
    pub(crate) fn forget_hold(&self, lock_id: &LockId) -> bool {
        let Some(hold) = self.holds.remove(lock_id) else {
            return false;
        };
        self.waiters.wake_head(&hold.resource_id);
        true
    }

    /// After a `Lock` or an `Acquire` that ended without a grant: if an attempt's outcome is
    /// unknown (`uncertain`: its reply was lost, or it was cut off and may still land),
    /// releases `lock_id` in case the grant was made.
    pub(super) fn release_if_uncertain(self: &Rc<Self>, lock_id: LockId, uncertain: bool) {
        if uncertain {
            self.release_until_gone(lock_id);
        }
    }

    /// Releases `lock_id` in the background, trying again with growing pauses until a release
    /// succeeds or a lease granted now would have ended anyway: a grant whose request is still
    /// on its way can land after the first try. While closing, one more try and done.
    pub(super) fn release_until_gone(self: &Rc<Self>, lock_id: LockId) {
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

    /// At Close: releases every hold granted here and not yet unlocked, so a process that shuts
    /// down frees its resources now instead of when their leases end. One attempt each.
    pub(super) async fn release_all_local(&self) {
        let lock_ids = self.holds.lock_ids();
        let releases = lock_ids.iter().map(|lock_id| self.store.release(lock_id));
        for (lock_id, result) in lock_ids
            .iter()
            .zip(futures::future::join_all(releases).await)
        {
            self.forget_hold(lock_id);
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
