//! `Purger`: the manager's child actor that clears expired holds.
//!
//! It purges once when started and then every `purger_period`. A purge blocks the purger's own
//! mailbox (`ctx.wait`), so a [`StopPurger`] sent during a purge is handled once that purge is
//! finished: stopping with the manager never cuts a purge in half. Expired holds are taken over
//! by the next grant anyway; purging keeps the collection and `Status` honest. Each purge also
//! measures the server's clock again, so a drifting local clock is corrected every period, and
//! recreates the indexes if the collection lost them.

use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tracing::Instrument;

use crate::clock::ServerClock;
use crate::local::LocalHolds;
use crate::store::MongoStore;

/// Clears expired holds every `purger_period`. Started and stopped by the
/// [`LockManager`](crate::LockManager); not constructed by applications.
pub struct Purger {
    store: MongoStore,
    clock: Rc<ServerClock>,
    holds: Rc<LocalHolds>,
    period: Duration,
}

/// Stops the purger after the purge in progress, if any.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopPurger;

impl Purger {
    pub(crate) fn new(
        store: MongoStore,
        clock: Rc<ServerClock>,
        holds: Rc<LocalHolds>,
        period: Duration,
    ) -> Self {
        Purger {
            store,
            clock,
            holds,
            period,
        }
    }

    fn purge(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let clock = Rc::clone(&self.clock);
        let holds = Rc::clone(&self.holds);
        let span = tracing::info_span!("purge", collection = store.collection_name());
        let purge = async move {
            // The indexes are what keeps one document per resource; recreate them if the
            // collection was dropped or restored under us (a no-op when they exist).
            if let Err(e) = store.ensure_indexes().await {
                tracing::warn!(error = %e, "could not ensure the lock indexes");
            }
            if let Err(e) = clock.resync(&store).await {
                tracing::warn!(error = %e, "could not read the server clock; keeping the last offset");
            }
            let now = clock.now();
            match store.purge_expired(now).await {
                Ok(purged) => tracing::debug!(purged, "purged expired holds"),
                Err(e) => tracing::warn!(error = %e, "purge failed; the next one will retry"),
            }
            holds.forget_expired(now);
        }
        .instrument(span);
        ctx.wait(purge.into_actor(self));
    }
}

impl Actor for Purger {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.purge(ctx);
        ctx.run_interval(self.period, Self::purge);
    }
}

impl Handler<StopPurger> for Purger {
    type Result = ();

    fn handle(&mut self, _: StopPurger, ctx: &mut Self::Context) {
        tracing::debug!("purger stopping");
        ctx.stop();
    }
}
