//! `Lock`, and what every grant goes through: one attempt at the database, recorded locally,
//! and the hand-over to the caller (or a release when nobody is left to take it).

use std::rc::Rc;

use crate::error::LockError;
use crate::messages::{KeepAlive, Lock, LockGrant, LockId, ResourceId};
use crate::reply::Caller;
use crate::store::is_transient;

use super::Core;

impl Core {
    pub(crate) async fn lock(
        self: &Rc<Self>,
        msg: Lock,
        caller: &Caller,
    ) -> Result<LockGrant, LockError> {
        let (resource, lock_id) = new_request(msg.resource_id)?;
        match self.attempt(&resource, &lock_id).await {
            Ok(Some(grant)) => self.deliver(grant, caller, msg.keep_alive),
            Ok(None) => Err(LockError::AlreadyLocked {
                resource_id: resource.to_string(),
            }),
            Err(e) => {
                // A transient error may have lost the reply of a grant that was made.
                self.release_if_uncertain(lock_id, is_transient(&e));
                Err(e)
            }
        }
    }

    /// One grant attempt, recording the hold locally.
    pub(super) async fn attempt(
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

    /// Hands a grant to its caller (starting its keep-alive if asked), or releases it at once
    /// if the caller has gone away or the manager is closing.
    pub(super) fn deliver(
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
