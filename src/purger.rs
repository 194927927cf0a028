//! `Purger`: the manager's child actor that clears expired holds.
//!
//! It purges once when started and then every `purger_period`, one purge at a time (a tick that
//! comes while a purge is still running is skipped). A [`StopPurger`] abandons the purge in
//! progress: `Close` must answer within its deadline even when the database is gone, and a purge
//! only tidies up (expired holds are taken over by the next grant anyway; purging keeps the
//! collection and `Status` honest); each of its writes is atomic on its own. Each purge also
//! recreates the indexes if the collection lost them, and measures the server's clock again, so
//! a drifting local clock is corrected every period.
//!
//! The purger shares no state with its manager: it keeps its own copy of the server clock and
//! tells the manager what each purge found ([`Purged`]), which the manager adopts in its own
//! turn. A purge costs four requests: one `createIndexes` for the three indexes, `hello`, one
//! `updateMany` (exclusive holds) and one `find` (documents with shared holds), plus one write
//! per document that holds expired shared holds.

use std::time::{Duration, SystemTime};

use actix::prelude::*;
use actix::WeakRecipient;
use tracing::Instrument;

use crate::clock::{ClockOffset, ServerClock};
use crate::store::MongoStore;

/// Clears expired holds every `purger_period`. Started and stopped by the
/// [`LockManager`](crate::LockManager).
pub(crate) struct Purger {
    store: MongoStore,
    clock: ServerClock,
    period: Duration,
    parent: WeakRecipient<Purged>,
    /// The purge in progress, if any.
    purging: Option<SpawnHandle>,
}

/// Stops the purger, abandoning the purge in progress, if any.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopPurger;

/// What one purge found, for the manager: the server clock's offset as last measured, and that
/// every hold whose lease ended before `now` is gone.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Purged {
    pub(crate) offset: ClockOffset,
    pub(crate) now: SystemTime,
}

impl Purger {
    /// A purger of `store` every `period`, reporting to `parent` (weakly, so that the purger
    /// does not keep its manager alive).
    pub(crate) fn new(
        store: MongoStore,
        clock: ServerClock,
        period: Duration,
        parent: WeakRecipient<Purged>,
    ) -> Self {
        Purger {
            store,
            clock,
            period,
            parent,
            purging: None,
        }
    }

    fn purge(&mut self, ctx: &mut Context<Self>) {
        if self.purging.is_some() {
            tracing::debug!("the last purge is still running; this tick is left out");
            return;
        }
        let store = self.store.clone();
        let clock = self.clock.clone();
        let parent = self.parent.clone();
        let span = tracing::info_span!("purge", collection = store.collection_name());
        let purge = async move {
            // The indexes are what keeps one document per resource; recreate them if the
            // collection was dropped or restored under us (a no-op when they exist).
            if let Err(e) = store.ensure_indexes().await {
                tracing::warn!(error = %e, "could not ensure the lock indexes");
            }
            if let Err(e) = clock.resync(store.server_time()).await {
                tracing::warn!(error = %e, "could not read the server clock; keeping the last offset");
            }
            let now = clock.now();
            match store.purge_expired(now).await {
                Ok(purged) => tracing::debug!(purged, "purged expired holds"),
                Err(e) => tracing::warn!(error = %e, "purge failed; the next one will retry"),
            }
            let offset = clock.offset();
            if let Some(parent) = parent.upgrade() {
                parent.do_send(Purged { offset, now });
            }
            offset
        }
        .instrument(span);
        self.purging = Some(ctx.spawn(purge.into_actor(self).map(|offset, purger, _| {
            purger.clock.set_offset(offset);
            purger.purging = None;
        })));
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
        if let Some(purge) = self.purging.take() {
            tracing::debug!("abandoning the purge in progress");
            ctx.cancel_future(purge);
        }
        tracing::debug!("purger stopping");
        ctx.stop();
    }
}
