//! Extending a hold's lease: `Renew`, and keep-alive, which renews every TTL/3 until the hold is
//! unlocked and tells the holder at once when the hold is lost.
//!
//! The rule that makes the keep-alive signal useful: the holder is told *before* anyone else can
//! be granted the resource. The server answering "not live" is a loss at once. A renewal that
//! fails (the database unreachable, or too slow: each try is bounded by the renewal interval) is
//! retried; once less than one renewal interval of the lease is left, the hold is declared lost,
//! while the lease still stands. After telling, keep-alive stops renewing: a holder told of a
//! loss must never find the hold alive again.

use std::rc::Rc;
use std::time::Duration;

use actix::Recipient;
use tracing::Instrument;

use crate::error::LockError;
use crate::line::LineView;
use crate::local::LocalHold;
use crate::messages::{KeepAlive, LeaseLost, LockGrant, LockId, LostReason};

use super::Core;

impl Core {
    /// Extends a live hold's lease by its TTL (the one it was granted with here, else the
    /// configured one); `LockLost` if it is not live.
    pub(crate) async fn renew(&self, lock_id: &LockId) -> Result<LockGrant, LockError> {
        let hold = self.holds.get(lock_id);
        let ttl = hold.as_ref().map_or(self.config.ttl, |hold| hold.ttl);
        let renewed = self.renew_in_store(lock_id, hold.as_ref(), ttl).await?;
        match renewed {
            // Answered after the renewed lease had ended (a stalled server): not live.
            Some((grant, _)) if grant.expires_at <= self.clock.now() => {
                self.forget_hold(lock_id);
                tracing::debug!("renewal answered after its lease had ended");
                Err(LockError::LockLost)
            }
            Some((grant, line)) => {
                self.holds.extend(lock_id, grant.expires_at, line);
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

    /// One renewal of `lock_id` by `ttl` in the database: as the exclusive or shared hold
    /// `hold` granted here, or, for a lock id granted elsewhere, as an exclusive hold and then
    /// as a shared one. `None`: not live. An exclusive renewal also answers the resource's line
    /// as it found it, for the hold's release to name whom it wakes.
    async fn renew_in_store(
        &self,
        lock_id: &LockId,
        hold: Option<&LocalHold>,
        ttl: Duration,
    ) -> Result<Option<(LockGrant, Option<LineView>)>, LockError> {
        let now = self.clock.now();
        let seen = |renewed: Option<(LockGrant, LineView)>| {
            renewed.map(|(grant, line)| (grant, Some(line)))
        };
        let shared = |renewed: Option<LockGrant>| renewed.map(|grant| (grant, None));
        match hold {
            Some(hold) if hold.shared => self
                .store
                .renew_shared(lock_id, Some(&hold.resource_id), now, ttl)
                .await
                .map(shared),
            Some(hold) => self
                .store
                .renew(
                    lock_id,
                    Some((&hold.resource_id, hold.granted_at)),
                    now,
                    ttl,
                )
                .await
                .map(seen),
            None => match self.store.renew(lock_id, None, now, ttl).await? {
                Some(renewed) => Ok(seen(Some(renewed))),
                None => self
                    .store
                    .renew_shared(lock_id, None, now, ttl)
                    .await
                    .map(shared),
            },
        }
    }

    /// Keeps `grant` alive in the background until it is unlocked, lost, or the manager closes.
    pub(super) fn keep_alive(self: &Rc<Self>, grant: LockGrant, keep_alive: KeepAlive) {
        let span = tracing::info_span!("keep_alive", resource = %grant.resource_id, lock_id = ?grant.lock_id);
        actix_rt::spawn(renew_until_lost(Rc::clone(self), grant, keep_alive).instrument(span));
    }
}

async fn renew_until_lost(core: Rc<Core>, grant: LockGrant, keep_alive: KeepAlive) {
    let Some(ttl) = core.holds.get(&grant.lock_id).map(|hold| hold.ttl) else {
        return; // unlocked already
    };
    let interval = ttl / 3;
    let mut expires_at = grant.expires_at;
    let mut pause = interval;
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = core.drain.closing() => {
                // Close releases every hold still held here: its holder must stop now.
                if core.holds.get(&grant.lock_id).is_some() {
                    tell(&core, &keep_alive.notify, &grant, LostReason::Closing);
                }
                return;
            }
            () = core.drain.granting_ended(), if keep_alive.end_when_granting_stops => {
                // Told first, released after: nobody else is granted before the holder knows.
                // (Close stops granting too, and releases every hold itself.)
                if core.holds.get(&grant.lock_id).is_some() {
                    tell(&core, &keep_alive.notify, &grant, LostReason::Closing);
                    if core.drain.is_closing() {
                        return;
                    }
                    let (released, lock_id) = (Rc::clone(&core), grant.lock_id.clone());
                    core.in_background(async move {
                        if let Err(e) = released.unlock(&lock_id).await {
                            tracing::warn!(error = %e, "could not release a hold as granting stopped");
                        }
                    });
                }
                return;
            }
        }
        let Some(hold) = core.holds.get(&grant.lock_id) else {
            return; // unlocked, or lost through a Renew message
        };
        // Never past the last safe moment (one interval before the lease ends): a renewal that
        // hangs there must leave time to tell the holder before anyone else can be granted.
        let safe_for = core.clock.until(expires_at).saturating_sub(interval);
        let renewal = tokio::time::timeout(
            interval.min(safe_for),
            core.renew_in_store(&grant.lock_id, Some(&hold), ttl),
        )
        .await;
        match renewal {
            Ok(Ok(Some((renewed, line)))) => {
                expires_at = renewed.expires_at;
                core.holds.extend(&grant.lock_id, expires_at, line);
                pause = interval;
                tracing::trace!("lease renewed");
            }
            Ok(Ok(None)) => {
                // Unlocked while the renewal was on its way: not a loss.
                if core.forget_hold(&grant.lock_id) {
                    let (reason, because) = core.why_gone(&grant).await;
                    send_lost(&core, &keep_alive.notify, &grant, reason, because);
                }
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
            Err(_) => tracing::warn!(?interval, "lease renewal timed out; retrying"),
        }
        let left = core.clock.until(expires_at);
        if left <= interval {
            if core.holds.get(&grant.lock_id).is_some() {
                tell(&core, &keep_alive.notify, &grant, LostReason::Unreachable);
            }
            return;
        }
        // After a failure, try again soon, but never later than the last safe moment.
        pause = pause
            .min((left - interval) / 2)
            .max(interval / 8)
            .min(left - interval);
    }
}

impl Core {
    /// Why the server found `grant`'s hold gone: revoked by an operator, with the reason given
    /// (one read), or else `Gone` (an expiry, a purge or a takeover, or a read that failed: the
    /// hold is gone either way, and the holder is told at once, not after retries).
    async fn why_gone(&self, grant: &LockGrant) -> (LostReason, Option<String>) {
        match self.store.revocation(&grant.resource_id, grant.fence).await {
            Ok(Some(because)) => (LostReason::Revoked, Some(because)),
            Ok(None) => (LostReason::Gone, None),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read whether the hold was revoked");
                (LostReason::Gone, None)
            }
        }
    }
}

fn tell(core: &Core, notify: &Option<Recipient<LeaseLost>>, grant: &LockGrant, reason: LostReason) {
    send_lost(core, notify, grant, reason, None);
}

fn send_lost(
    core: &Core,
    notify: &Option<Recipient<LeaseLost>>,
    grant: &LockGrant,
    reason: LostReason,
    revoked_because: Option<String>,
) {
    tracing::warn!(?reason, ?revoked_because, "lease lost");
    crate::metrics::lease_lost(&core.config.name, crate::metrics::reason(reason));
    if let Some(recipient) = notify {
        recipient.do_send(LeaseLost {
            lock_id: grant.lock_id.clone(),
            resource_id: grant.resource_id.clone(),
            fence: grant.fence,
            reason,
            revoked_because,
        });
    }
}
