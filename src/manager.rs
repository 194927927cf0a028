//! `LockManager`: the actor applications send `Lock`, `Acquire`, `Unlock` and `Close` to.
//!
//! The actor itself only accepts messages: each handler takes a drain token, builds a future and
//! returns at once, so a slow Acquire never holds up the Unlock queued behind it. The futures
//! share one `Core` (the store, the server clock, the drain, and what this manager knows
//! locally) through an `Rc`: they all run on the manager's arbiter, one at a time, so plain
//! cells suffice and no lock is held across an await.

use std::rc::Rc;

use actix::prelude::*;
use mongodb::Client;
use tracing::Instrument;

use crate::clock::ServerClock;
use crate::config::LockConfig;
use crate::core::Core;
use crate::drain::Drain;
use crate::error::LockError;
use crate::messages::{
    Acquire, Close, HoldStatus, ListHolds, Lock, LockGrant, Renew, Status, Unlock, UnlockOutcome,
};
use crate::purger::{Purger, StopPurger};
use crate::reply::{Caller, Reply};
use crate::store::MongoStore;

/// The lock manager actor. Start one per process (or per lock family) with
/// [`LockManager::start`] and talk to it through its `Addr`.
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
    /// Checks `config`, creates the collection's indexes, measures the server's clock and starts
    /// the manager (and its purger) on the current arbiter.
    ///
    /// Fails with [`LockError::InvalidConfig`] before touching the database, or with
    /// [`LockError::Database`] when the server cannot be reached within the client's server
    /// selection timeout.
    pub async fn start(client: Client, config: LockConfig) -> Result<Addr<Self>, LockError> {
        config.validate()?;
        let store = MongoStore::new(client, &config);
        store.ensure_indexes().await?;
        let clock = Rc::new(ServerClock::measure(config.clock.clone(), &store).await?);
        tracing::info!(
            collection = store.collection_name(),
            "lock manager starting"
        );
        let core = Rc::new(Core {
            config,
            store,
            clock,
            drain: Drain::new(),
            holds: Rc::default(),
            waiters: Rc::default(),
        });
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

    /// Connects to `uri` with the official driver, then [`start`](Self::start)s.
    pub async fn connect(uri: &str, config: LockConfig) -> Result<Addr<Self>, LockError> {
        config.validate()?;
        let client = Client::with_uri_str(uri).await?;
        Self::start(client, config).await
    }
}

impl Actor for LockManager {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        let core = &self.core;
        self.purger = Some(
            Purger::new(
                core.store.clone(),
                Rc::clone(&core.clock),
                Rc::clone(&core.holds),
                core.config.purger_period,
            )
            .start(),
        );
    }

    /// Stopped without `Close` (every `Addr` dropped): the drain still runs, detached. Messages
    /// in flight are futures of their own that finish and answer; waits end with `Closing`.
    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Some(purger) = self.purger.take() {
            actix_rt::spawn(close(Rc::clone(&self.core), Some(purger)));
        }
        Running::Stop
    }
}

/// Runs a handler's work with a drain token, or answers `Closing` when none is given.
fn accept<T: 'static, F>(
    core: &Rc<Core>,
    span: tracing::Span,
    work: impl FnOnce(Rc<Core>, Rc<Caller>) -> F,
) -> Reply<Result<T, LockError>>
where
    F: std::future::Future<Output = Result<T, LockError>> + 'static,
{
    let token = match core.drain.enter() {
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
        let span = tracing::info_span!("lock", resource = %msg.resource_id, lock_id = tracing::field::Empty);
        accept(&self.core, span, |core, caller| async move {
            core.lock(msg, &caller).await
        })
    }
}

impl Handler<Acquire> for LockManager {
    type Result = Reply<Result<LockGrant, LockError>>;

    fn handle(&mut self, msg: Acquire, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!("acquire", resource = %msg.resource_id, lock_id = tracing::field::Empty);
        accept(&self.core, span, |core, caller| async move {
            core.acquire(msg, &caller).await
        })
    }
}

impl Handler<Unlock> for LockManager {
    type Result = Reply<Result<UnlockOutcome, LockError>>;

    fn handle(&mut self, msg: Unlock, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!("unlock", lock_id = ?msg.lock_id);
        accept(&self.core, span, |core, _| async move {
            core.unlock(&msg.lock_id).await
        })
    }
}

impl Handler<Renew> for LockManager {
    type Result = Reply<Result<LockGrant, LockError>>;

    fn handle(&mut self, msg: Renew, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!("renew", lock_id = ?msg.lock_id);
        accept(&self.core, span, |core, _| async move {
            core.renew(&msg.lock_id).await
        })
    }
}

impl Handler<Status> for LockManager {
    type Result = Reply<Result<Option<HoldStatus>, LockError>>;

    fn handle(&mut self, msg: Status, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!("status", resource = %msg.resource_id);
        accept(&self.core, span, |core, _| async move {
            core.status(msg.resource_id).await
        })
    }
}

impl Handler<ListHolds> for LockManager {
    type Result = Reply<Result<Vec<HoldStatus>, LockError>>;

    fn handle(&mut self, _: ListHolds, _: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!("list_holds");
        accept(&self.core, span, |core, _| async move {
            core.list_holds().await
        })
    }
}

impl Handler<Close> for LockManager {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Close, _: &mut Self::Context) -> Self::Result {
        Box::pin(
            close(Rc::clone(&self.core), self.purger.take())
                .instrument(tracing::info_span!("close")),
        )
    }
}

/// The drain. The first caller (holding the purger) releases what is still held here and stops
/// the purger once every accepted message is answered; any other caller waits for it.
async fn close(core: Rc<Core>, purger: Option<Addr<Purger>>) {
    core.drain.begin_close();
    core.drain.idle().await;
    if let Some(purger) = purger {
        core.release_all_local().await;
        if purger.send(StopPurger).await.is_err() {
            tracing::debug!("purger had already stopped");
        }
        core.drain.finish_close();
        tracing::info!("lock manager closed");
    }
    core.drain.closed().await;
}
