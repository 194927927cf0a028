//! The drain: one place that says "closing", one place that waits for in-flight work.
//!
//! Every message the manager accepts takes an [`InFlight`] token before its handler returns, so
//! a `Close` that arrives later in the mailbox always sees it. A shutdown has two phases, each
//! a step of one state: `StopGranting` ends granting (new Lock and Acquire answer `Closing`, and
//! everything waiting on [`Drain::granting_ended`], the Acquire waits, wakes) while every other
//! message is still accepted; `Close` then flips to closing, which wakes what waits on
//! [`Drain::closing`] (Unlock retries, keep-alives), refuses new tokens, and waits until the
//! last token is dropped, as mini-redis's shutdown waits for the last sender.
//!
//! `AwaitReleased`, the wait between the two phases, is not counted here: it waits on the
//! holds granted here (`LocalHolds`), takes no token, and ends when the drain has [`closed`].
//!
//! [`closed`]: Drain::closed

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::{watch, Notify};

use crate::error::LockError;

/// The phases, in the order they come: a state never goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Open,
    NotGranting,
    Closing,
    Closed,
}

/// The manager's lifecycle and its count of in-flight messages.
#[derive(Debug)]
pub(crate) struct Drain {
    state: watch::Sender<State>,
    in_flight: Cell<usize>,
    idle: Notify,
}

/// Held by one accepted message until it is answered.
#[derive(Debug)]
pub(crate) struct InFlight(Rc<Drain>);

impl Drain {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Drain {
            state: watch::Sender::new(State::Open),
            in_flight: Cell::new(0),
            idle: Notify::new(),
        })
    }

    /// Accepts one message, or answers `Closing`.
    pub(crate) fn enter(self: &Rc<Self>) -> Result<InFlight, LockError> {
        if self.is_closing() {
            return Err(LockError::Closing);
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(InFlight(Rc::clone(self)))
    }

    /// Accepts one message that asks for a grant (`Lock`, `Acquire`), or answers `Closing`
    /// once granting has ended.
    pub(crate) fn enter_to_grant(self: &Rc<Self>) -> Result<InFlight, LockError> {
        if !self.is_granting() {
            return Err(LockError::Closing);
        }
        self.enter()
    }

    /// Whether grants are still handed out (neither `StopGranting` nor `Close` came).
    pub(crate) fn is_granting(&self) -> bool {
        *self.state.borrow() == State::Open
    }

    /// Whether closing has begun.
    pub(crate) fn is_closing(&self) -> bool {
        *self.state.borrow() >= State::Closing
    }

    /// Resolves once granting ends (at once if it has).
    pub(crate) async fn granting_ended(&self) {
        self.reached(State::NotGranting).await;
    }

    /// Resolves once closing begins (at once if it has).
    pub(crate) async fn closing(&self) {
        self.reached(State::Closing).await;
    }

    async fn reached(&self, phase: State) {
        let mut state = self.state.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = state.wait_for(|s| *s >= phase).await;
    }

    /// Moves on to `phase` unless the drain is there or past it already.
    fn advance(&self, phase: State) {
        self.state.send_if_modified(|s| {
            let behind = *s < phase;
            if behind {
                *s = phase;
            }
            behind
        });
    }

    /// Ends granting and wakes every Acquire waiting. Idempotent.
    pub(crate) fn stop_granting(&self) {
        self.advance(State::NotGranting);
    }

    /// Begins closing: refuses new messages and wakes every waiter. Idempotent.
    pub(crate) fn begin_close(&self) {
        self.advance(State::Closing);
    }

    /// Resolves when no accepted message is still in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.get() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Marks the drain finished (the purger has stopped too).
    pub(crate) fn finish_close(&self) {
        self.state.send_replace(State::Closed);
    }

    /// Resolves when the drain has finished.
    pub(crate) async fn closed(&self) {
        self.reached(State::Closed).await;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.0.in_flight.get() - 1;
        self.0.in_flight.set(left);
        if left == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Another token for work an accepted message leaves behind (a background release): the
    /// drain waits for it too. Given even while closing, since its message was accepted.
    pub(crate) fn extend(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(Rc::clone(self))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Drain;
    use crate::error::LockError;

    const BOUND: Duration = Duration::from_secs(5);

    #[actix_rt::test]
    async fn idle_waits_for_every_token_and_closing_refuses_new_ones() {
        let drain = Drain::new();
        let first = drain.enter().expect("open");
        let second = drain.enter().expect("open");
        drain.begin_close();
        assert!(drain.is_closing());
        assert!(matches!(drain.enter(), Err(LockError::Closing)));
        let background = drain.extend();

        let idle = drain.idle();
        tokio::pin!(idle);
        for token in [first, second] {
            drop(token);
            let early = tokio::time::timeout(Duration::from_millis(20), &mut idle).await;
            assert!(early.is_err(), "idle before every token was dropped");
        }
        drop(background);
        tokio::time::timeout(BOUND, idle)
            .await
            .expect("idle once the last token is dropped");
    }

    #[actix_rt::test]
    async fn closing_wakes_waiters_and_closed_waits_for_finish() {
        let drain = Drain::new();
        assert!(!drain.is_closing());
        let closing = drain.closing();
        let closed = drain.closed();
        tokio::pin!(closing, closed);
        drain.begin_close();
        drain.begin_close();
        tokio::time::timeout(BOUND, &mut closing)
            .await
            .expect("begin_close wakes closing()");
        let early = tokio::time::timeout(Duration::from_millis(20), &mut closed).await;
        assert!(early.is_err(), "closed before finish_close");
        drain.finish_close();
        tokio::time::timeout(BOUND, closed)
            .await
            .expect("finish_close wakes closed()");
        assert!(matches!(drain.enter(), Err(LockError::Closing)));
    }

    #[actix_rt::test]
    async fn an_idle_drain_is_idle_at_once() {
        let drain = Drain::new();
        drop(drain.enter().expect("open"));
        tokio::time::timeout(BOUND, drain.idle())
            .await
            .expect("no token in flight");
    }
}
