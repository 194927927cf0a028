//! An actor that collects the `LeaseLost` messages a kept-alive holder is sent.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use actix_mongo_lock::{KeepAlive, LeaseLost};

use super::poll::eventually;

/// Collects the `LeaseLost` messages a holder is sent, with when they arrived.
#[derive(Clone, Default)]
pub struct LossCollector(Arc<Mutex<Vec<(Instant, LeaseLost)>>>);

impl Actor for LossCollector {
    type Context = Context<Self>;
}

impl Handler<LeaseLost> for LossCollector {
    type Result = ();

    fn handle(&mut self, lost: LeaseLost, _: &mut Context<Self>) {
        self.0.lock().unwrap().push((Instant::now(), lost));
    }
}

impl LossCollector {
    /// Every loss told so far.
    pub fn losses(&self) -> Vec<(Instant, LeaseLost)> {
        self.0.lock().unwrap().clone()
    }

    /// Keep-alive that tells this collector of a loss (each call starts one more collecting
    /// actor on the same record).
    pub fn keep_alive(&self) -> KeepAlive {
        KeepAlive::notify(self.clone().start().recipient())
    }

    /// The first loss told, once it is; panics, naming `what`, if none is within `within`.
    pub async fn first_told(
        &self,
        what: &str,
        within: std::time::Duration,
    ) -> (Instant, LeaseLost) {
        eventually(what, within, || {
            let first = self.losses().first().cloned();
            async move { first }
        })
        .await
    }
}
