//! The drain: one place that says "closing", one place that waits for in-flight work.
//!
//! Every message the manager accepts takes an [`InFlight`] token before its handler returns, so
//! a `Close` that arrives later in the mailbox always sees it. Closing flips the state, which
//! wakes everything waiting on [`Drain::closing`] (Acquire waits, Unlock retries), refuses new
//! tokens, and then waits until the last token is dropped, as mini-redis's shutdown waits for
//! the last sender.

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::{watch, Notify};

use crate::error::LockError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
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
        if *self.state.borrow() != State::Open {
            return Err(LockError::Closing);
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(InFlight(Rc::clone(self)))
    }

    /// Whether closing has begun.
    pub(crate) fn is_closing(&self) -> bool {
        *self.state.borrow() != State::Open
    }

    /// Resolves once closing begins (at once if it has).
    pub(crate) async fn closing(&self) {
        let mut state = self.state.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = state.wait_for(|s| *s != State::Open).await;
    }

    /// Begins closing: refuses new messages and wakes every waiter. Idempotent.
    pub(crate) fn begin_close(&self) {
        self.state.send_if_modified(|s| {
            let opened = *s == State::Open;
            if opened {
                *s = State::Closing;
            }
            opened
        });
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
        let mut state = self.state.subscribe();
        let _ = state.wait_for(|s| *s == State::Closed).await;
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
