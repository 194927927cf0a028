//! Collects what an election `Observer` tells: every `LeaderChanged`, with when it came.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::SystemTime;

use actix::prelude::*;
use actix_mongo_lock::election::{Leader, LeaderChanged};

/// One change told: when, and who then led (`None`: nobody).
pub type Told = (SystemTime, Option<Leader>);

/// An actor that writes down each change an `Observer` tells it of; clones share the log.
#[derive(Clone, Default)]
pub struct LeaderLog(Rc<RefCell<Vec<Told>>>);

impl Actor for LeaderLog {
    type Context = Context<Self>;
}

impl Handler<LeaderChanged> for LeaderLog {
    type Result = ();

    fn handle(&mut self, changed: LeaderChanged, _: &mut Context<Self>) {
        self.0
            .borrow_mut()
            .push((SystemTime::now(), changed.leader));
    }
}

impl LeaderLog {
    /// Every change told so far: when, and who then led (`None`: nobody).
    pub fn seen(&self) -> Vec<Told> {
        self.0.borrow().clone()
    }

    /// Every change told so far, as the owner and term of who then led.
    pub fn terms(&self) -> Vec<Option<(Option<String>, i64)>> {
        self.seen()
            .into_iter()
            .map(|(_, leader)| leader.map(|leader| (leader.owner, leader.term)))
            .collect()
    }
}
