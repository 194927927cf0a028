//! `Lock`, and what every grant goes through: one attempt at the database, recorded locally,
//! the line's bookkeeping around it (`crate::line` decides whose turn follows and what the
//! line needs after), and the hand-over to the caller (or a release when nobody is left to take
//! it).

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::check_ttl;

use crate::error::LockError;
use crate::line::{self, LineView, TurnAfter};
use crate::messages::{KeepAlive, Lock, LockGrant, LockId, ResourceId};
use crate::reply::Caller;
use crate::store::SharedGrant;

use super::Core;

impl Core {
    pub(crate) async fn lock(
        self: &Rc<Self>,
        msg: Lock,
        caller: &Caller,
    ) -> Result<LockGrant, LockError> {
        let limit = msg.mode.checked_limit()?;
        let (resource, lock_id) = new_request(msg.resource_id)?;
        let ttl = self.lease(msg.ttl)?;
        let attempt = if msg.mode.is_shared() {
            self.attempt_shared(&resource, &lock_id, ttl, limit, false)
                .await
        } else {
            let deadline = Instant::now() + self.config.request_timeout.min(ttl);
            match self.attempt(&resource, &lock_id, ttl, false).await {
                Ok(None) => {
                    self.attempt_past_dead_readers(&resource, &lock_id, ttl, deadline)
                        .await
                }
                answered => answered,
            }
        };
        let mode = crate::metrics::mode(msg.mode.is_shared());
        match attempt {
            Ok(Some(grant)) => {
                let delivered = self.deliver(grant, caller, msg.keep_alive);
                if delivered.is_ok() {
                    crate::metrics::granted(&self.config.name, "lock", mode);
                }
                delivered
            }
            Ok(None) => {
                crate::metrics::refused(&self.config.name, mode);
                Err(LockError::AlreadyLocked {
                    resource_id: resource.to_string(),
                })
            }
            Err(e) => {
                // A transient error may have lost the reply of a grant that was made.
                self.release_if_uncertain(lock_id, ttl, e.outcome_unknown());
                Err(e)
            }
        }
    }

    /// After a `Lock` was refused: shared holds whose leases ended still count in the stored
    /// document (their holders died), and nothing else may have dropped them yet (a waiter
    /// does, the purger every few minutes), so one read looks for them; if it dropped any, the
    /// grant is tried once more. A refused `Lock` thus costs one read more, and a permit whose
    /// holder died is never what refuses it. All of it ends by `deadline`, the Lock's own
    /// bound (`request_timeout` or the lease, the shorter, from its first try): a look that
    /// does not finish in time leaves the refusal standing; a second try cut off may have been
    /// granted, so it answers `Unavailable`, and the caller releases it.
    async fn attempt_past_dead_readers(
        self: &Rc<Self>,
        resource: &ResourceId,
        lock_id: &LockId,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<Option<LockGrant>, LockError> {
        let left = || deadline.saturating_duration_since(Instant::now());
        let look = self.store.drop_expired_shared(resource, self.clock.now());
        match tokio::time::timeout(left(), look).await {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(dropped)) => tracing::debug!(dropped, "dropped expired shared holds; again"),
            Ok(Err(e)) => {
                // The grant was refused; that answer stands.
                tracing::debug!(error = %e, "could not look for expired shared holds");
                return Ok(None);
            }
            Err(_) => {
                tracing::debug!("no time left to look for expired shared holds");
                return Ok(None);
            }
        }
        let waited = self.config.request_timeout.min(ttl);
        tokio::time::timeout(left(), self.attempt(resource, lock_id, ttl, false))
            .await
            .unwrap_or_else(|_| {
                Err(LockError::Unavailable {
                    waited,
                    last_error: format!(
                        "grant: no answer from the database within the Lock's {waited:?}"
                    ),
                })
            })
    }

    /// The lease of a grant: the request's (checked as the configuration's is), or the
    /// configured one.
    pub(super) fn lease(&self, requested: Option<Duration>) -> Result<Duration, LockError> {
        match requested {
            Some(ttl) => check_ttl(ttl).map(|()| ttl),
            None => Ok(self.config.ttl),
        }
    }

    /// One grant attempt with a lease of `ttl`, recording the hold locally. `queued`: the
    /// attempt is for a waiter in this manager's queue (an Acquire), not a `Lock`.
    pub(super) async fn attempt(
        self: &Rc<Self>,
        resource: &ResourceId,
        lock_id: &LockId,
        ttl: Duration,
        queued: bool,
    ) -> Result<Option<LockGrant>, LockError> {
        if self
            .lines
            .view(resource)
            .is_some_and(|view| view.expired_shared)
        {
            // Shared holds whose leases ended still count: drop them, so the grant can be made.
            if let Err(e) = self
                .store
                .drop_expired_shared(resource, self.clock.now())
                .await
            {
                tracing::debug!(error = %e, "could not drop expired shared holds");
            }
        }
        let sent = Instant::now();
        let then = line::turn_after_grant(
            self.lines.manager(),
            self.lines.view(resource).as_ref(),
            self.waiting_besides(resource, queued),
            self.lines.kept(resource),
            self.config.turn_streak,
        );
        let answer = self
            .store
            .grant(
                resource,
                lock_id,
                self.clock.now(),
                ttl,
                self.lines.manager(),
                &then,
            )
            .await?;
        let Some((grant, view)) = answer else {
            tracing::trace!("held by someone else");
            return Ok(None);
        };
        self.arrived_in_time(&grant, sent)?;
        tracing::debug!(fence = grant.fence, "granted");
        let kept = matches!(then, TurnAfter::Keep { .. });
        let view = self.after_grant(resource, view, sent, kept, queued).await;
        self.holds.insert(&grant, ttl, view);
        Ok(Some(grant))
    }

    /// One shared grant attempt (of at most `limit` shared holds) with a lease of `ttl`,
    /// recording the hold locally. `Ok(None)`: held exclusively, a manager waits in line for an
    /// exclusive hold, or the limit is reached. `queued`: the attempt is for the head of this
    /// manager's queue, which may be granted in this manager's own turn (the queue keeps the
    /// order of this manager's waiters); a `Lock` may not.
    pub(super) async fn attempt_shared(
        &self,
        resource: &ResourceId,
        lock_id: &LockId,
        ttl: Duration,
        limit: Option<u32>,
        queued: bool,
    ) -> Result<Option<LockGrant>, LockError> {
        let sent = Instant::now();
        let in_turn_of = queued.then(|| self.lines.manager());
        let answer = self
            .store
            .grant_shared(resource, lock_id, self.clock.now(), ttl, limit, in_turn_of)
            .await?;
        match answer {
            SharedGrant::Granted(granted) => {
                let (grant, view) = *granted;
                self.arrived_in_time(&grant, sent)?;
                tracing::debug!(fence = grant.fence, "granted shared");
                self.holds.insert(&grant, ttl, view);
                Ok(Some(grant))
            }
            SharedGrant::Held | SharedGrant::Full => {
                tracing::trace!(?answer, "shared hold refused");
                Ok(None)
            }
            SharedGrant::Mismatch(stored) => Err(LockError::MaxHoldersMismatch {
                resource_id: resource.to_string(),
                stored,
                requested: limit,
            }),
        }
    }

    /// `Unavailable` if `grant`, asked at `sent`, was answered after its lease had ended (a
    /// stalled server): the resource may be someone else's already. Not a grant; the caller
    /// releases it.
    fn arrived_in_time(&self, grant: &LockGrant, sent: Instant) -> Result<(), LockError> {
        if grant.expires_at <= self.clock.now() {
            return Err(LockError::Unavailable {
                waited: sent.elapsed(),
                last_error: "the grant arrived after its lease had ended".to_owned(),
            });
        }
        Ok(())
    }

    /// How many Acquires wait here for `resource` besides the one a grant is for (`queued`:
    /// the grant is for one in the queue, not for a `Lock`).
    fn waiting_besides(&self, resource: &ResourceId, queued: bool) -> usize {
        self.waiters
            .count(resource)
            .saturating_sub(usize::from(queued))
    }

    /// After a grant here, the line as the grant left it (`view`): carries out what
    /// [`line::after_grant`] decides, and answers the line as it then stands. Settling a turn
    /// nobody has shares the grant's `request_timeout`, counted from `sent` (when the grant was
    /// sent): a grant is answered within that bound, settled or not; if it is cut off, the next
    /// manager to look at the line settles it. A failure here costs only the order.
    async fn after_grant(
        self: &Rc<Self>,
        resource: &ResourceId,
        view: LineView,
        sent: Instant,
        kept: bool,
        queued: bool,
    ) -> LineView {
        self.lines.count_kept(resource, kept);
        let now = self.clock.now();
        let plan = line::after_grant(
            self.lines.manager(),
            &view,
            kept,
            self.waiting_besides(resource, queued),
            now,
        );
        if let Some(pass_to) = plan.leave {
            self.lines.forget(resource, now);
            self.leave_line_in_background(resource, pass_to);
            return view;
        }
        let view = match plan.settle {
            Some(turn) => {
                let deadline = sent + self.config.request_timeout;
                let settle = self.settle(resource, &turn, view.clone());
                tokio::time::timeout_at(deadline.into(), settle)
                    .await
                    .unwrap_or(view)
            }
            None => view,
        };
        if plan.remember {
            self.lines.remember(resource, view.clone());
        } else {
            self.lines.forget(resource, now);
        }
        if plan.line_up {
            self.line_up_in_background(resource);
        }
        view
    }

    /// Hands a grant to its caller (starting its keep-alive if asked), or releases it at once
    /// if the caller has gone away or the manager is closing.
    pub(super) fn deliver(
        self: &Rc<Self>,
        grant: LockGrant,
        caller: &Caller,
        keep_alive: Option<KeepAlive>,
    ) -> Result<LockGrant, LockError> {
        let ttl = grant
            .expires_at
            .duration_since(grant.granted_at)
            .unwrap_or(self.config.ttl);
        if !self.drain.is_granting() {
            // Granting has ended (and Close releases what is held here): a grant made meanwhile
            // must not look alive.
            tracing::debug!("granted after granting ended; releasing it");
            self.release_until_gone(grant.lock_id, ttl);
            return Err(LockError::Closing);
        }
        if caller.is_gone() {
            tracing::debug!("caller left before the grant; releasing it");
            self.release_until_gone(grant.lock_id.clone(), ttl);
        } else if let Some(keep_alive) = keep_alive {
            self.keep_alive(grant.clone(), keep_alive);
        }
        Ok(grant)
    }
}

/// Checks a request's resource id and draws the lock id its grant will carry (recorded in the
/// request's span).
pub(super) fn new_request(resource_id: String) -> Result<(ResourceId, LockId), LockError> {
    let resource = ResourceId::new(resource_id)?;
    let lock_id = LockId::generate();
    tracing::Span::current().record("lock_id", tracing::field::debug(&lock_id));
    Ok((resource, lock_id))
}
