//! `Lock`, and what every grant goes through: one attempt at the database, recorded locally,
//! and the hand-over to the caller (or a release when nobody is left to take it).

use std::rc::Rc;
use std::time::Duration;

use crate::config::check_ttl;

use crate::error::LockError;
use crate::messages::{KeepAlive, Lock, LockGrant, LockId, ResourceId};
use crate::reply::Caller;
use crate::store::TurnAfter;

use super::Core;

impl Core {
    pub(crate) async fn lock(
        self: &Rc<Self>,
        msg: Lock,
        caller: &Caller,
    ) -> Result<LockGrant, LockError> {
        let (resource, lock_id) = new_request(msg.resource_id)?;
        let ttl = self.lease(msg.ttl)?;
        match self.attempt(&resource, &lock_id, ttl, false).await {
            Ok(Some(grant)) => self.deliver(grant, caller, msg.keep_alive),
            Ok(None) => Err(LockError::AlreadyLocked {
                resource_id: resource.to_string(),
            }),
            Err(e) => {
                // A transient error may have lost the reply of a grant that was made.
                self.release_if_uncertain(lock_id, ttl, e.outcome_unknown());
                Err(e)
            }
        }
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
        let sent = std::time::Instant::now();
        let keep = self.may_keep_turn(resource, queued);
        let pass_to = if keep {
            None
        } else {
            self.next_in_line(resource)
        };
        let then = if keep {
            TurnAfter::Keep
        } else {
            TurnAfter::Pass(pass_to.as_deref())
        };
        let answer = self
            .store
            .grant(
                resource,
                lock_id,
                self.clock.now(),
                ttl,
                &self.in_line(then),
            )
            .await?;
        let Some((grant, line)) = answer else {
            tracing::trace!("held by someone else");
            return Ok(None);
        };
        if grant.expires_at <= self.clock.now() {
            // The answer came after the lease it grants had ended (a stalled server): the
            // resource may be someone else's already. Not a grant; the caller releases it.
            return Err(LockError::Unavailable {
                waited: sent.elapsed(),
                last_error: "the grant arrived after its lease had ended".to_owned(),
            });
        }
        self.holds.insert(&grant, ttl);
        tracing::debug!(fence = grant.fence, "granted");
        self.after_grant(resource, line, sent, keep, queued).await;
        Ok(Some(grant))
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
