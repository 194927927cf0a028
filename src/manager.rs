//! `LockManager`: the actor applications send `Lock`, `Acquire`, `Unlock` and `Close` to.
//!
//! The actor itself only accepts messages: each handler takes a drain token, builds a future and
//! returns at once, so a slow Acquire never holds up the Unlock queued behind it. The futures
//! share one `Core` (the store, the server clock, the drain, and what this manager knows
//! locally) through an `Rc`: they all run on the manager's arbiter, one at a time, so plain
//! cells suffice and no lock is held across an await.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use mongodb::Client;
use tracing::Instrument;

use crate::clock::ServerClock;
use crate::config::LockConfig;
use crate::drain::{Drain, InFlight};
use crate::error::LockError;
use crate::local::{LocalHolds, LocalWaiters, Place};
use crate::messages::{
    Acquire, Close, Lock, LockGrant, LockId, Polling, ResourceId, Unlock, UnlockOutcome,
};
use crate::purger::{Purger, StopPurger};
use crate::reply::{Caller, Reply};
use crate::store::{is_transient, MongoStore};

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

struct Core {
    config: LockConfig,
    store: MongoStore,
    clock: Rc<ServerClock>,
    drain: Rc<Drain>,
    holds: Rc<LocalHolds>,
    waiters: Rc<LocalWaiters>,
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

    /// Stopped without `Close` (every `Addr` dropped): the drain still runs. Messages in flight
    /// are detached futures that finish and answer; waits end with `Closing`.
    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.core.drain.begin_close();
        if let Some(purger) = self.purger.take() {
            purger.do_send(StopPurger);
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

impl Handler<Close> for LockManager {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Close, _: &mut Self::Context) -> Self::Result {
        let drain = Rc::clone(&self.core.drain);
        let purger = self.purger.take();
        Box::pin(
            async move {
                drain.begin_close();
                drain.idle().await;
                // The first Close stops the purger; any other waits for it to finish.
                if let Some(purger) = purger {
                    if purger.send(StopPurger).await.is_err() {
                        tracing::debug!("purger had already stopped");
                    }
                    drain.finish_close();
                }
                drain.closed().await;
                tracing::info!("lock manager closed");
            }
            .instrument(tracing::info_span!("close")),
        )
    }
}

impl Core {
    async fn lock(self: &Rc<Self>, msg: Lock, caller: &Caller) -> Result<LockGrant, LockError> {
        let resource = ResourceId::new(msg.resource_id)?;
        let lock_id = LockId::generate();
        tracing::Span::current().record("lock_id", tracing::field::debug(&lock_id));
        match self.attempt(&resource, &lock_id).await {
            Ok(Some(grant)) => Ok(self.deliver(grant, caller)),
            Ok(None) => Err(LockError::AlreadyLocked {
                resource_id: resource.to_string(),
            }),
            Err(e) => Err(self.abandon(lock_id, e)),
        }
    }

    async fn acquire(
        self: &Rc<Self>,
        msg: Acquire,
        caller: &Caller,
    ) -> Result<LockGrant, LockError> {
        let resource = ResourceId::new(msg.resource_id)?;
        let lock_id = LockId::generate();
        tracing::Span::current().record("lock_id", tracing::field::debug(&lock_id));
        let budget = msg.timeout.unwrap_or_else(|| self.config.acquire_budget());
        let wait = Wait {
            deadline: Instant::now() + budget,
            caller,
        };
        let result = match msg.polling {
            Polling::Fixed => self.acquire_fixed(&resource, &lock_id, &wait).await,
            Polling::Adaptive => self.acquire_adaptive(&resource, &lock_id, &wait).await,
        };
        match result {
            Ok(grant) => Ok(self.deliver(grant, caller)),
            Err(WaitEnd::Error(e)) => Err(self.abandon(lock_id, e)),
            Err(WaitEnd::OutOfTime { retries }) => Err(match msg.timeout {
                None => LockError::AcquireMaxRetries {
                    resource_id: resource.to_string(),
                    retries,
                },
                Some(waited) => LockError::AcquireTimeout {
                    resource_id: resource.to_string(),
                    waited,
                },
            }),
        }
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
            if let Some(grant) = self.attempt_tolerant(resource, lock_id).await? {
                return Ok(grant);
            }
            if retries == self.config.acquire_max_retries {
                return Err(WaitEnd::OutOfTime { retries });
            }
            retries += 1;
            self.pause(self.config.acquire_period, None, wait).await?;
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
        let mut place: Option<Place> = None;
        let mut backoff = Backoff::new(self.config.acquire_period);
        let mut retries: u32 = 0;
        loop {
            // A newcomer goes straight to the database only when nobody here waits before it.
            let first_in_line = match &place {
                Some(place) => place.is_head(),
                None => !self.waiters.is_waited_for(resource),
            };
            let held_here = self.holds.live_lease(resource, self.clock.now());
            if first_in_line && held_here.is_none() {
                if let Some(grant) = self.attempt_tolerant(resource, lock_id).await? {
                    // Leaving the queue wakes the next waiter, which sees the hold and waits.
                    drop(place);
                    return Ok(grant);
                }
                retries += 1;
            }
            let place = place.get_or_insert_with(|| self.waiters.join(resource));
            let pause = match held_here {
                // Held through this manager: its Unlock wakes us; otherwise its lease ends.
                Some(expires_at) => self.clock.until(expires_at),
                None if place.is_head() => backoff.next_pause(),
                None => wait.remaining(),
            };
            self.pause(pause, Some(place), wait)
                .await
                .map_err(|end| match end {
                    WaitEnd::OutOfTime { .. } => WaitEnd::OutOfTime {
                        retries: retries.saturating_sub(1),
                    },
                    other => other,
                })?;
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

    /// An attempt inside a wait: a transient database error counts as "not yet".
    async fn attempt_tolerant(
        &self,
        resource: &ResourceId,
        lock_id: &LockId,
    ) -> Result<Option<LockGrant>, WaitEnd> {
        match self.attempt(resource, lock_id).await {
            Ok(grant) => Ok(grant),
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "grant attempt failed; retrying within the wait budget");
                Ok(None)
            }
            Err(e) => Err(WaitEnd::Error(e)),
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

    /// Hands a grant to its caller, or releases it at once if the caller has gone away.
    fn deliver(self: &Rc<Self>, grant: LockGrant, caller: &Caller) -> LockGrant {
        if caller.is_gone() {
            tracing::debug!("caller left before the grant; releasing it");
            self.release_in_background(grant.lock_id.clone());
        }
        grant
    }

    /// After a failed grant whose outcome is unknown (the reply may have been lost), releases
    /// the lock id in case the grant was made, so nothing is held until its lease ends.
    fn abandon(self: &Rc<Self>, lock_id: LockId, error: LockError) -> LockError {
        if is_transient(&error) {
            self.release_in_background(lock_id);
        }
        error
    }

    fn release_in_background(self: &Rc<Self>, lock_id: LockId) {
        let core = Rc::clone(self);
        let token: InFlight = self.drain.extend();
        actix_rt::spawn(
            async move {
                if let Err(e) = core.unlock(&lock_id).await {
                    tracing::warn!(error = %e, "could not release an abandoned lock id; its lease will end it");
                }
                drop(token);
            }
            .in_current_span(),
        );
    }

    async fn unlock(&self, lock_id: &LockId) -> Result<UnlockOutcome, LockError> {
        let mut retries = 0;
        loop {
            match self.store.release(lock_id).await {
                Ok(true) => {
                    if let Some(hold) = self.holds.remove(lock_id) {
                        self.waiters.wake_head(&hold.resource_id);
                    }
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

/// The limits of one Acquire's wait.
struct Wait<'a> {
    deadline: Instant,
    caller: &'a Caller,
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

/// Pauses between the probes of a waiter whose resource is held elsewhere: short at first (a
/// release often comes soon), doubling up to `acquire_period`, each with random jitter so
/// waiters in different processes do not probe in step.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: (max / 16).max(Duration::from_millis(1)).min(max),
            max,
        }
    }

    fn next_pause(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Between half and all of `base`; the randomness of a v4 UUID serves as jitter.
        let fraction = f64::from(uuid::Uuid::new_v4().as_u128() as u16) / f64::from(u16::MAX);
        base.mul_f64(0.5 + fraction / 2.0)
    }
}
