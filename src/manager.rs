//! `LockManager`: the actor applications send `Lock`, `Acquire`, `Unlock` and `Close` to.
//!
//! The actor itself only accepts messages: each handler takes a drain token, builds a future and
//! returns at once, so a slow Acquire never holds up the Unlock queued behind it. The futures
//! share one `Core` (the store, the server clock, the drain, and what this manager knows
//! locally) through an `Rc`: they all run on the manager's arbiter, one at a time, so plain
//! cells suffice and no lock is held across an await. The manager's child `Purger` shares
//! nothing with it and reports each purge with a message.

use std::rc::Rc;

use actix::prelude::*;
use mongodb::Client;
use tracing::Instrument;

use crate::config::LockConfig;
use crate::core::Core;
use crate::error::{DriverResult, LockError};
use crate::messages::{
    Acquire, AwaitReleased, Close, CloseReport, HoldStatus, ListHolds, Lock, LockGrant,
    ReleasedReport, Renew, Revoke, RevokeOutcome, Status, StopGranting, Unlock, UnlockOutcome,
};
use crate::purger::{Purged, Purger};
use crate::reply::{Caller, Reply};

/// The lock manager actor. Start one per process (or per lock family) with
/// [`LockManager::connect`] or [`LockManager::with_client`] and talk to it through its `Addr`.
///
/// ```no_run
/// use actix_mongo_lock::{Acquire, Close, LockConfig, LockManager, Unlock};
///
/// #[actix_rt::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let manager = LockManager::connect("mongodb://127.0.0.1:27017", LockConfig::new("orders")).await?;
///     let grant = manager.send(Acquire::new("order-42")).await??;
///     // ... work on order 42, passing grant.fence to the stores you write ...
///     manager.send(Unlock::new(grant.lock_id)).await??;
///     manager.send(Close).await?;
///     Ok(())
/// }
/// ```
pub struct LockManager {
    core: Rc<Core>,
    purger: Option<Addr<Purger>>,
}

impl LockManager {
    /// Checks `config`, asks the server what it is (`buildInfo`), creates the collection's
    /// indexes, measures the server's clock and starts the manager (and its purger) on the
    /// current arbiter.
    ///
    /// Fails with [`LockError::InvalidConfig`] before touching the database; with
    /// [`LockError::UnsafeServer`] on a server known not to keep a lock safe, before anything
    /// is written; with [`LockError::Unavailable`] when the server does not answer one of those
    /// requests within `LockConfig::request_timeout` (5 s by default, so a server that is gone
    /// is reported then, not after the driver's 30 s server selection); or with
    /// [`LockError::Database`] when the driver gives up sooner (a shorter server selection
    /// timeout) or the server refuses a request (an unsatisfiable write concern).
    pub async fn with_client(client: Client, config: LockConfig) -> Result<Addr<Self>, LockError> {
        let core = Core::open(client, config).await?;
        Ok(LockManager { core, purger: None }.start())
    }

    /// Closes every manager in `managers` (the drain of [`Close`]), then stops the actix
    /// System: the way to stop a System without dropping answers. Stopping the System
    /// directly ends the arbiters with whatever is in flight.
    ///
    /// ```no_run
    /// # async fn demo(manager: actix::Addr<actix_mongo_lock::LockManager>) {
    /// use actix_mongo_lock::LockManager;
    /// LockManager::close_and_stop_system([&manager]).await;
    /// # }
    /// ```
    pub async fn close_and_stop_system<'a>(managers: impl IntoIterator<Item = &'a Addr<Self>>) {
        let closes = managers.into_iter().map(|manager| manager.send(Close));
        for closed in futures::future::join_all(closes).await {
            if closed.is_err() {
                tracing::debug!("a manager had already stopped");
            }
        }
        System::current().stop();
    }

    /// Connects to `uri` with the official driver, then starts as
    /// [`with_client`](Self::with_client) does.
    pub async fn connect(uri: &str, config: LockConfig) -> Result<Addr<Self>, LockError> {
        config.validate()?;
        let client = Client::with_uri_str(uri).await.db()?;
        Self::with_client(client, config).await
    }
}

impl Actor for LockManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let parent = ctx.address().downgrade().recipient();
        self.purger = Some(self.core.purger(parent).start());
    }

    /// Stopped without `Close` (every `Addr` dropped): the drain still runs, detached. Messages
    /// in flight are futures of their own that finish and answer; waits end with `Closing`.
    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Some(purger) = self.purger.take() {
            let core = Rc::clone(&self.core);
            actix_rt::spawn(async move {
                core.close(Some(purger)).await;
            });
        }
        Running::Stop
    }
}

/// What a message asks of the manager, for the drain: a grant (refused once granting ended),
/// or anything else (refused once closing began).
#[derive(Clone, Copy)]
enum Asks {
    Grant,
    Other,
}

/// Runs a handler's work with a drain token, or answers `Closing` when none is given.
fn accept<T: 'static, F>(
    core: &Rc<Core>,
    asks: Asks,
    span: tracing::Span,
    work: impl FnOnce(Rc<Core>, Rc<Caller>) -> F,
) -> Reply<Result<T, LockError>>
where
    F: std::future::Future<Output = Result<T, LockError>> + 'static,
{
    let entered = match asks {
        Asks::Grant => core.enter_to_grant(),
        Asks::Other => core.enter(),
    };
    let token = match entered {
        Ok(token) => token,
        Err(e) => return Reply::ready(Err(e)),
    };
    let caller = Rc::new(Caller::default());
    let work = work(Rc::clone(core), Rc::clone(&caller));
    Reply::new(
        caller,
        async move {
            let answer = work.await;
            drop(token);
            answer
        }
        .instrument(span),
    )
}

impl Handler<Lock> for LockManager {
    type Result = Reply<Result<LockGrant, LockError>>;

    fn handle(&mut self, msg: Lock, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(parent: &msg.span, "lock", resource = %msg.resource_id, lock_id = tracing::field::Empty);
        accept(&self.core, Asks::Grant, span, |core, caller| async move {
            core.lock(msg, &caller).await
        })
    }
}

impl Handler<Acquire> for LockManager {
    type Result = Reply<Result<LockGrant, LockError>>;

    fn handle(&mut self, msg: Acquire, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(parent: &msg.span, "acquire", resource = %msg.resource_id, lock_id = tracing::field::Empty);
        accept(&self.core, Asks::Grant, span, |core, caller| async move {
            core.acquire(msg, &caller).await
        })
    }
}

impl Handler<Unlock> for LockManager {
    type Result = Reply<Result<UnlockOutcome, LockError>>;

    fn handle(&mut self, msg: Unlock, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(parent: &msg.span, "unlock", lock_id = ?msg.lock_id);
        accept(&self.core, Asks::Other, span, |core, _| async move {
            if msg.shared_only {
                core.check_shared(&msg.lock_id).await?;
            }
            core.unlock(&msg.lock_id).await
        })
    }
}

impl Handler<Renew> for LockManager {
    type Result = Reply<Result<LockGrant, LockError>>;

    fn handle(&mut self, msg: Renew, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(parent: &msg.span, "renew", lock_id = ?msg.lock_id);
        accept(&self.core, Asks::Other, span, |core, _| async move {
            core.renew(&msg.lock_id).await
        })
    }
}

impl Handler<Status> for LockManager {
    type Result = Reply<Result<Option<HoldStatus>, LockError>>;

    fn handle(&mut self, msg: Status, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(parent: &msg.span, "status", resource = %msg.resource_id);
        accept(&self.core, Asks::Other, span, |core, _| async move {
            core.status(msg.resource_id).await
        })
    }
}

impl Handler<ListHolds> for LockManager {
    type Result = Reply<Result<Vec<HoldStatus>, LockError>>;

    fn handle(&mut self, _: ListHolds, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!("list_holds");
        accept(&self.core, Asks::Other, span, |core, _| async move {
            core.list_holds().await
        })
    }
}

impl Handler<Revoke> for LockManager {
    type Result = Reply<Result<RevokeOutcome, LockError>>;

    fn handle(&mut self, msg: Revoke, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(parent: &msg.span, "revoke", resource = %msg.resource_id, fence = msg.fence);
        accept(&self.core, Asks::Other, span, |core, _| async move {
            core.revoke(msg.resource_id, msg.fence, msg.reason).await
        })
    }
}

impl Handler<StopGranting> for LockManager {
    type Result = ();

    fn handle(&mut self, _: StopGranting, _: &mut Self::Context) {
        self.core.stop_granting();
    }
}

/// Takes no drain token: `Close` does not wait for it, and it ends when `Close` has finished.
impl Handler<AwaitReleased> for LockManager {
    type Result = Reply<ReleasedReport>;

    fn handle(&mut self, msg: AwaitReleased, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(parent: &msg.span, "await_released", timeout = ?msg.timeout);
        let core = Rc::clone(&self.core);
        let caller = Rc::new(Caller::default());
        let waiting = Rc::clone(&caller);
        Reply::new(
            caller,
            async move { core.await_released(msg.timeout, &waiting).await }.instrument(span),
        )
    }
}

impl Handler<Close> for LockManager {
    type Result = ResponseFuture<CloseReport>;

    fn handle(&mut self, _: Close, _: &mut Self::Context) -> Self::Result {
        let core = Rc::clone(&self.core);
        let purger = self.purger.take();
        Box::pin(async move { core.close(purger).await }.instrument(tracing::info_span!("close")))
    }
}

impl Handler<Purged> for LockManager {
    type Result = ();

    fn handle(&mut self, purged: Purged, _: &mut Self::Context) {
        self.core.adopt_purge(purged.offset, purged.now);
    }
}
