//! `Core`: what a [`LockManager`](crate::LockManager)'s messages do, as futures.
//!
//! The actor only accepts messages; the work runs here, in futures that share one `Core`
//! through an `Rc`. They all run on the manager's arbiter, one at a time, so plain cells
//! suffice and no borrow is held across an await. This file holds the state and its life
//! (opening, the drain, adopting a purge's findings, reading); the rooms beside it hold the
//! rest:
//!
//! - `grant.rs`: one grant attempt (`Lock`), the line's bookkeeping around it, and handing a
//!   grant to its caller;
//! - `wait.rs`: the `Acquire` wait and its two pollings: the loop that carries out the steps
//!   the line's rules (`crate::line`) decide, and the requests that keep a place in a line;
//! - `watch.rs`: the one change stream per manager that tells its waiters of releases and
//!   turns meant for them;
//! - `release.rs`: `Unlock`, every end of a local hold, `AwaitReleased`, releasing grants
//!   nobody was given;
//! - `lease.rs`: `Renew` and keep-alive.

mod grant;
mod lease;
mod release;
mod wait;
mod watch;

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::SystemTime;

use actix::{Addr, WeakRecipient};
use mongodb::Client;
use tracing::Instrument;

use crate::clock::{ClockOffset, ServerClock};
use crate::config::LockConfig;
use crate::drain::{Drain, InFlight};
use crate::error::LockError;
use crate::line::Lines;
use crate::local::{LocalHolds, LocalWaiters};
use crate::messages::{CloseReport, HoldStatus, ResourceId, RevokeOutcome};
use crate::purger::{Purged, Purger, StopPurger};
use crate::server::{self, Verdict};
use crate::store::MongoStore;

use self::watch::ReleaseWatch;

/// The longest reason a [`Revoke`](crate::Revoke) may give, in bytes.
const MAX_REVOKE_REASON_LEN: usize = 512;

/// The state every message's future shares.
pub(crate) struct Core {
    config: LockConfig,
    store: MongoStore,
    clock: ServerClock,
    drain: Rc<Drain>,
    holds: LocalHolds,
    waiters: Rc<LocalWaiters>,
    lines: Rc<Lines>,
    release_watch: Rc<ReleaseWatch>,
    /// What the drain did, for every `Close`'s answer.
    close_report: Cell<CloseReport>,
}

impl Core {
    /// Checks `config`, refuses a server known not to keep a lock safe (before anything is
    /// written), creates the collection's indexes and measures the server's clock.
    pub(crate) async fn open(client: Client, config: LockConfig) -> Result<Rc<Self>, LockError> {
        config.validate()?;
        let store = MongoStore::new(client, &config);
        let build_info = store.build_info().await?;
        store.know_server(&build_info);
        match server::judge(&build_info) {
            Verdict::Trusted { server } => tracing::debug!(server, "server"),
            Verdict::Unmeasured { server, note } => tracing::warn!(server, note),
            Verdict::Unsafe { server, reason } if config.allow_unsafe_server => tracing::warn!(
                server,
                reason,
                "starting on an unsafe server because allow_unsafe_server is set"
            ),
            Verdict::Unsafe { server, reason } => {
                tracing::error!(server, reason, "refusing to start on an unsafe server");
                return Err(LockError::UnsafeServer {
                    server,
                    reason: reason.to_owned(),
                });
            }
        }
        store.ensure_indexes().await?;
        let clock = ServerClock::measure(config.clock.clone(), store.server_time()).await?;
        tracing::info!(
            collection = store.collection_name(),
            "lock manager starting"
        );
        let drain = Drain::new();
        let waiters: Rc<LocalWaiters> = Rc::default();
        let lines = Rc::new(Lines::new(&config.owner, &config.host));
        let release_watch = ReleaseWatch::new(
            store.clone(),
            Rc::clone(&waiters),
            Rc::clone(&lines),
            Rc::clone(&drain),
        );
        Ok(Rc::new(Core {
            config,
            store,
            clock,
            drain,
            holds: LocalHolds::default(),
            waiters,
            lines,
            release_watch,
            close_report: Cell::default(),
        }))
    }

    /// Accepts one message (its token keeps the drain waiting until it is answered), or
    /// answers `Closing`.
    pub(crate) fn enter(&self) -> Result<InFlight, LockError> {
        self.drain.enter()
    }

    /// Accepts one message that asks for a grant, or answers `Closing` once granting ended.
    pub(crate) fn enter_to_grant(&self) -> Result<InFlight, LockError> {
        self.drain.enter_to_grant()
    }

    /// Phase 1 of a shutdown: no more grants; waiting Acquires end with `Closing`.
    pub(crate) fn stop_granting(&self) {
        if self.drain.is_granting() {
            tracing::info!("lock manager stops granting");
        }
        self.drain.stop_granting();
    }

    /// Runs `work` beside the messages, on this manager's arbiter and in the current span:
    /// work an accepted message leaves behind (a background release, leaving or joining a
    /// line). `Close` waits for it, as it waits for the messages.
    fn in_background(&self, work: impl Future<Output = ()> + 'static) {
        let token: InFlight = self.drain.extend();
        actix_rt::spawn(
            async move {
                work.await;
                drop(token);
            }
            .in_current_span(),
        );
    }

    /// This manager's purger, which reports each purge to `parent`.
    pub(crate) fn purger(&self, parent: WeakRecipient<Purged>) -> Purger {
        Purger::new(
            self.store.clone(),
            self.clock.clone(),
            self.config.purger_period,
            parent,
        )
    }

    /// Takes in what a purge found: the server clock's offset and that every hold whose lease
    /// ended before `now` is gone.
    pub(crate) fn adopt_purge(&self, offset: ClockOffset, now: SystemTime) {
        self.clock.set_offset(offset);
        for lock_id in self.holds.expired(now) {
            self.forget_hold(&lock_id);
        }
    }

    /// The drain. The first caller (holding the purger) stops the purger (abandoning a purge in
    /// progress), waits until every accepted message is answered and releases what is still
    /// held here, all within `close_timeout`; any other caller waits for it. Every request a
    /// message makes is bounded by `request_timeout`, so the messages still in flight when the
    /// deadline passes answer soon after, on their own.
    pub(crate) async fn close(&self, purger: Option<Addr<Purger>>) -> CloseReport {
        self.drain.begin_close();
        if let Some(purger) = purger {
            if purger.send(StopPurger).await.is_err() {
                tracing::debug!("purger had already stopped");
            }
            let drained = async {
                self.drain.idle().await;
                self.release_all_local().await;
            };
            if tokio::time::timeout(self.config.close_timeout, drained)
                .await
                .is_err()
            {
                tracing::warn!(
                    close_timeout = ?self.config.close_timeout,
                    "close timed out (the database is slow or gone)"
                );
            }
            let mut report = self.close_report.get();
            report.unreleased = self.holds.lock_ids().len();
            self.close_report.set(report);
            if report.unreleased > 0 {
                tracing::warn!(
                    unreleased = report.unreleased,
                    "holds not released at close; their leases will end them"
                );
            }
            self.drain.finish_close();
            tracing::info!(released = report.released, "lock manager closed");
        }
        self.drain.closed().await;
        self.close_report.get()
    }

    /// Counts one hold released at close.
    fn count_released_at_close(&self) {
        let mut report = self.close_report.get();
        report.released += 1;
        self.close_report.set(report);
    }

    pub(crate) async fn status(
        &self,
        resource_id: String,
    ) -> Result<Option<HoldStatus>, LockError> {
        let resource = ResourceId::new(resource_id)?;
        self.store.status(&resource, self.clock.now()).await
    }

    pub(crate) async fn list_holds(&self) -> Result<Vec<HoldStatus>, LockError> {
        self.store.list_holds(self.clock.now()).await
    }

    /// Ends `resource_id`'s live hold that drew `fence` ([`Revoke`](crate::Revoke)).
    pub(crate) async fn revoke(
        &self,
        resource_id: String,
        fence: i64,
        reason: String,
    ) -> Result<RevokeOutcome, LockError> {
        let resource = ResourceId::new(resource_id)?;
        if fence < 1 {
            return Err(LockError::InvalidRevoke {
                reason: "a fence is 1 or more",
            });
        }
        if reason.len() > MAX_REVOKE_REASON_LEN {
            return Err(LockError::InvalidRevoke {
                reason: "the reason is longer than 512 bytes",
            });
        }
        let revoked = self
            .store
            .revoke(&resource, fence, &reason, self.clock.now())
            .await?;
        Ok(match revoked {
            Some(hold) => {
                tracing::warn!(owner = ?hold.owner, host = ?hold.host, fence, %reason, "hold revoked");
                RevokeOutcome::Revoked {
                    owner: hold.owner,
                    host: hold.host,
                    shared: hold.shared,
                }
            }
            None => RevokeOutcome::NotHeld,
        })
    }
}
