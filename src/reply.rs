//! `Reply`: how a manager handler answers without blocking its mailbox, while knowing whether
//! anyone still waits for the answer.
//!
//! actix's `ResponseFuture` runs the handler's future detached and sends its output; it never
//! tells the future that the caller dropped its `send` (a timeout, a cancelled task). A lock
//! manager needs to know: an Acquire whose caller left should leave its queue instead of taking
//! a lock nobody will release. So `Reply` watches the reply channel and raises [`Caller::gone`],
//! but still runs the future to its end, so every accepted message finishes its work (and its
//! drain token) whatever the caller does.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use actix::dev::{MessageResponse, OneshotSender};
use actix::{Actor, Message};
use tokio::sync::Notify;

/// Whether the sender of a message still waits for its reply.
#[derive(Debug, Default)]
pub(crate) struct Caller {
    gone: Cell<bool>,
    left: Notify,
}

impl Caller {
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.get()
    }

    /// Resolves when the caller stops waiting for the reply.
    pub(crate) async fn gone(&self) {
        loop {
            let left = self.left.notified();
            if self.gone.get() {
                return;
            }
            left.await;
        }
    }

    fn leave(&self) {
        self.gone.set(true);
        self.left.notify_waiters();
    }
}

/// The reply to a [`LockManager`](crate::LockManager) message: a future run on the manager's
/// arbiter whose output is sent to the caller. Obtained through `Addr::send`; not built by hand.
pub struct Reply<T> {
    work: Pin<Box<dyn Future<Output = T>>>,
    caller: Rc<Caller>,
}

impl<T: 'static> Reply<T> {
    /// Runs `work`, which may watch `caller`.
    pub(crate) fn new(caller: Rc<Caller>, work: impl Future<Output = T> + 'static) -> Self {
        Reply {
            work: Box::pin(work),
            caller,
        }
    }

    /// Answers at once.
    pub(crate) fn ready(value: T) -> Self {
        Reply::new(Rc::default(), std::future::ready(value))
    }
}

impl<A, M> MessageResponse<A, M> for Reply<M::Result>
where
    A: Actor,
    M: Message,
    M::Result: 'static,
{
    fn handle(self, _: &mut A::Context, tx: Option<OneshotSender<M::Result>>) {
        let Reply { mut work, caller } = self;
        actix_rt::spawn(async move {
            let Some(mut tx) = tx else {
                // `do_send`: nobody will read the answer.
                caller.leave();
                work.await;
                return;
            };
            let output = tokio::select! {
                output = &mut work => output,
                () = tx.closed() => {
                    caller.leave();
                    work.await
                }
            };
            // The caller may have left after the work finished; then there is nobody to tell.
            let _ = tx.send(output);
        });
    }
}
