//! An actor that collects the `LeaseLost` messages a kept-alive holder is sent.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use actix_mongo_lock::LeaseLost;

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
}
