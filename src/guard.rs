//! `LockGuard`: a hold tied to a scope, for callers who prefer scope to messages.
//!
//! The guard unlocks when told (`unlock().await`, which reports the outcome) and, if dropped
//! while still held, sends the `Unlock` itself. Release on drop has limits in async code, which
//! is why `unlock().await` is the way to end a hold you care about:
//!
//! - `Drop` cannot await, so the release is sent (`do_send`) and not waited for: the caller
//!   does not learn whether it worked, and code right after the drop may still see the hold.
//! - If the arbiter running the manager is stopped right after the drop (the System stopping),
//!   the message may never be handled; the lease then ends the hold (or `Close`, which releases
//!   every hold still held by the manager).
//! - A future cancelled at an `.await` drops its guard there, which releases the hold: usually
//!   what you want, but it happens wherever the cancellation lands.

use actix::{Addr, Handler, Message};

use crate::error::LockError;
use crate::manager::LockManager;
use crate::messages::{Acquire, Lock, LockGrant, Unlock, UnlockOutcome};

/// A hold that is released when the guard is dropped.
///
/// ```no_run
/// # async fn demo(manager: actix::Addr<actix_mongo_lock::LockManager>) -> Result<(), actix_mongo_lock::LockError> {
/// use actix_mongo_lock::{Acquire, LockGuard};
///
/// let guard = LockGuard::acquire(&manager, Acquire::new("report-2026")).await?;
/// println!("writing with fence {}", guard.grant().fence);
/// guard.unlock().await?; // or let it drop: the Unlock is then sent for you
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LockGuard {
    manager: Addr<LockManager>,
    grant: Option<LockGrant>,
}

impl LockGuard {
    /// Sends `request` and guards the grant.
    pub async fn acquire(manager: &Addr<LockManager>, request: Acquire) -> Result<Self, LockError> {
        Self::request(manager, request).await
    }

    /// Sends `request` (one attempt) and guards the grant.
    pub async fn lock(manager: &Addr<LockManager>, request: Lock) -> Result<Self, LockError> {
        Self::request(manager, request).await
    }

    async fn request<M>(manager: &Addr<LockManager>, request: M) -> Result<Self, LockError>
    where
        M: Message<Result = Result<LockGrant, LockError>> + Send + 'static,
        LockManager: Handler<M>,
    {
        let grant = manager
            .send(request)
            .await
            .map_err(|_| LockError::ManagerStopped)??;
        Ok(Self::new(manager.clone(), grant))
    }

    /// Guards a grant obtained from `manager`.
    pub fn new(manager: Addr<LockManager>, grant: LockGrant) -> Self {
        LockGuard {
            manager,
            grant: Some(grant),
        }
    }

    /// The guarded grant (its `fence` is what downstream stores should check).
    pub fn grant(&self) -> &LockGrant {
        self.grant
            .as_ref()
            .expect("a LockGuard holds its grant until it is consumed")
    }

    /// Releases the hold and waits for the outcome.
    pub async fn unlock(mut self) -> Result<UnlockOutcome, LockError> {
        let grant = self
            .grant
            .take()
            .expect("a LockGuard holds its grant until it is consumed");
        self.manager
            .send(Unlock::new(grant.lock_id))
            .await
            .map_err(|_| LockError::ManagerStopped)?
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            tracing::debug!(resource = %grant.resource_id, "guard dropped while held; sending Unlock");
            self.manager.do_send(Unlock::new(grant.lock_id));
        }
    }
}
