//! Served in turn across processes: the line of waiting managers.
//!
//! Inside one manager, waiters are served in arrival order (`local.rs`). Across managers, a
//! release used to go to whichever manager asked first, and that was nearly always the
//! releasing manager's own next waiter, woken at once, while a waiter in another process
//! learned of the release a round trip later: one process could keep a resource for as long
//! as it had waiters. So managers line up in the resource's document (the store's
//! [`LineView`]): a manager whose waiter was refused takes one place at the end of the line,
//! whatever the number of its waiters; the first in line gets the turn, and while a turn is
//! live no other manager is granted the resource. A grant ends the granted manager's place and
//! hands the turn to the next in line, so while k managers wait, each is granted within k
//! turns. A manager with more waiters of its own may keep the turn through a grant, for its
//! next waiter, up to [`turn_streak`](crate::LockConfig::turn_streak) grants in a row: the
//! cohort locks' trade (Dice, Marathe and Shavit, "Lock Cohorting", PPoPP 2012), where a
//! hand-off inside a process costs a wake-up and one between processes a round trip through
//! the database. So a turn is up to `turn_streak` grants, and a waiter elsewhere waits at most
//! that many holds per manager ahead of it. The turn holder renews its turn at every safety probe; a turn not renewed
//! lapses after [`TURN_LIFE`](crate::store::TURN_LIFE) (a killed process), and then anyone may
//! be granted and the turn goes on down the line.
//!
//! Every manager here is one place: order inside it is the local queue's. Go clients and
//! [`Polling::Fixed`](crate::Polling::Fixed) waits take no place; Go clients, which know
//! nothing of the line, may also be granted out of turn.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use crate::error::LockError;
use crate::messages::ResourceId;
use crate::store::{InLine, LineView, TurnAfter, TURN_LIFE};

use super::Core;

/// This manager's places in lines, and what it last saw of each line.
#[derive(Debug)]
pub(crate) struct Lines {
    /// This manager's name in every line: unique per manager.
    manager: String,
    /// The lines seen here, by resource, as last seen; kept while this manager has a place
    /// in them or waiters for them.
    seen: RefCell<HashMap<ResourceId, LineView>>,
    /// By resource: the grants in a row through which this manager has kept the turn.
    kept: RefCell<HashMap<ResourceId, u32>>,
}

impl Lines {
    pub(crate) fn new() -> Self {
        Lines {
            manager: uuid::Uuid::new_v4().simple().to_string(),
            seen: RefCell::default(),
            kept: RefCell::default(),
        }
    }

    pub(crate) fn manager(&self) -> &str {
        &self.manager
    }

    /// The next manager in `resource`'s line after this one, as last seen.
    fn next(&self, resource: &ResourceId) -> Option<String> {
        self.seen
            .borrow()
            .get(resource)
            .and_then(|view| view.next_after(&self.manager).map(str::to_owned))
    }

    fn has_turn(&self, resource: &ResourceId) -> bool {
        self.seen
            .borrow()
            .get(resource)
            .is_some_and(|view| view.is_turn_of(&self.manager))
    }

    /// Whether a look at `resource`'s line may only read it: this manager's place there, as
    /// last seen, is sure (it is in the line behind a live turn, or has the turn with more than
    /// half of [`TURN_LIFE`] left).
    fn may_only_read(&self, resource: &ResourceId, now: SystemTime) -> bool {
        let seen = self.seen.borrow();
        let Some(view) = seen.get(resource) else {
            return false;
        };
        match &view.turn {
            Some((manager, until)) if *manager == self.manager => {
                until.duration_since(now).unwrap_or_default() > TURN_LIFE / 2
            }
            Some((_, until)) => *until > now && view.line.contains(&self.manager),
            None => false,
        }
    }

    /// Keeps `view` as the last seen of `resource`'s line.
    fn remember(&self, resource: &ResourceId, view: LineView) {
        self.seen.borrow_mut().insert(resource.clone(), view);
    }

    /// Records that this manager asked for a place in `resource`'s line.
    fn count_in(&self, resource: &ResourceId) {
        let mut seen = self.seen.borrow_mut();
        let view = seen.entry(resource.clone()).or_default();
        if !view.has_place_of(&self.manager) {
            view.line.push(self.manager.clone());
        }
    }

    fn is_in_line(&self, resource: &ResourceId) -> bool {
        self.seen
            .borrow()
            .get(resource)
            .is_some_and(|view| view.has_place_of(&self.manager))
    }
}

impl Core {
    /// Who a grant is for, in its line: this manager, and whose turn it is then.
    pub(super) fn in_line<'a>(&'a self, then: TurnAfter<'a>) -> InLine<'a> {
        InLine {
            manager: self.lines.manager(),
            then,
        }
    }

    /// Whether a grant of `resource` here may keep the turn for this manager's next waiter:
    /// another waiter of its own waits besides the one granted (`queued`: the grant is for one
    /// in the queue), and the turn has not yet been kept through `turn_streak - 1` grants in a
    /// row.
    pub(super) fn may_keep_turn(&self, resource: &ResourceId, queued: bool) -> bool {
        let others = self
            .waiters
            .count(resource)
            .saturating_sub(usize::from(queued));
        let kept = self.lines.kept.borrow().get(resource).copied().unwrap_or(0);
        others > 0 && kept + 1 < self.config.turn_streak
    }

    /// The next in `resource`'s line after this manager, as last seen here.
    pub(super) fn next_in_line(&self, resource: &ResourceId) -> Option<String> {
        self.lines.next(resource)
    }

    /// After a grant here: the line as the grant left it. If managers wait in line and the turn
    /// went to nobody (the line grew since this manager last saw it), the turn goes to the first
    /// of them now, before the grant is handed over: otherwise this manager's next waiter would
    /// be granted again at the release, ahead of them. A failure here costs only the order.
    ///
    /// The pass shares the grant's `request_timeout`, counted from `sent` (when the grant was
    /// sent): a grant is answered within that bound, passed on or not; if it is cut off, the
    /// next manager to look at the line settles it.
    ///
    /// A grant that kept the turn (`kept`) for a next waiter who has left meanwhile (`queued`:
    /// the grant was for a waiter in the queue) hands the turn on at once, in the background.
    pub(super) async fn after_grant(
        self: &Rc<Self>,
        resource: &ResourceId,
        view: LineView,
        sent: Instant,
        kept: bool,
        queued: bool,
    ) {
        if kept {
            *self
                .lines
                .kept
                .borrow_mut()
                .entry(resource.clone())
                .or_default() += 1;
        } else {
            self.lines.kept.borrow_mut().remove(resource);
        }
        if kept && self.waiters.count(resource) <= usize::from(queued) {
            let next = view.next_after(self.lines.manager()).map(str::to_owned);
            self.lines.seen.borrow_mut().remove(resource);
            self.lines.kept.borrow_mut().remove(resource);
            self.leave_line_in_background(resource, next);
            return;
        }
        let view = if view.unserved_first().is_some() {
            let deadline = sent + self.config.request_timeout;
            let settle = self.settle(resource, view.clone());
            tokio::time::timeout_at(deadline.into(), settle)
                .await
                .unwrap_or(view)
        } else {
            view
        };
        // The turn went to another manager while more waiters wait here: this manager lines
        // up again at once, not only when its next waiter is refused after the release (by
        // then a third manager, or the next, may have been granted ahead of them).
        let line_up = !kept
            && self.waiters.count(resource) > usize::from(queued)
            && (view.turn.is_some() || !view.line.is_empty())
            && !view.is_turn_of(self.lines.manager());
        if self.waiters.is_waited(resource) {
            self.lines.remember(resource, view);
        } else {
            self.lines.seen.borrow_mut().remove(resource);
        }
        if line_up {
            self.line_up_in_background(resource);
        }
    }

    /// Takes a place at the end of `resource`'s line, never the turn (this manager holds the
    /// resource: taking a turn nobody has would serve its next waiter next, out of turn). One
    /// request, within `request_timeout`, in the background (Close waits for it). If it fails,
    /// the next waiter here lines up when it is refused.
    fn line_up_in_background(self: &Rc<Self>, resource: &ResourceId) {
        let core = Rc::clone(self);
        let resource = resource.clone();
        self.lines.count_in(&resource);
        self.in_background(async move {
            let lined_up = core
                .store
                .line_up(&resource, core.lines.manager(), core.clock.now())
                .await;
            match lined_up {
                Ok(Some(view)) if core.waiters.is_waited(&resource) => {
                    // The line-up may land after the other manager's grant, which then found
                    // nobody in line and gave the turn to nobody: the first in line gets it
                    // now, unless that is this manager still holding.
                    let first_holds = view.unserved_first() == Some(core.lines.manager())
                        && core.holds.live_lease(&resource, core.clock.now()).is_some();
                    let view = if first_holds {
                        view
                    } else {
                        core.settle(&resource, view).await
                    };
                    core.lines.remember(&resource, view);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "could not line up again"),
            }
        });
    }

    /// Takes (or keeps) this manager's place in `resource`'s line, renewing its turn if it has
    /// it, and answers the line and the hold as they stand (`None`: the resource has no
    /// document, so it is free).
    ///
    /// Most looks only read: while this manager's place is known and its turn (if it has it)
    /// has more than half its life left, one `find`, and a write only if the line turns out to
    /// need one (the place gone, the turn nobody's). A waiting manager thus writes about once
    /// every half [`TURN_LIFE`] (its turn's renewal), not at every look: a server's primary
    /// takes reads more easily, and a write wakes every change stream on the collection.
    pub(super) async fn visit_line(
        &self,
        resource: &ResourceId,
    ) -> Result<Option<LineView>, LockError> {
        let now = self.clock.now();
        let has_turn = self.lines.has_turn(resource);
        if self.lines.may_only_read(resource, now) {
            let view = self.store.read_line(resource, now).await?;
            match view {
                Some(view) if view.has_place_of(self.lines.manager()) && view.turn.is_some() => {
                    self.lines.remember(resource, view.clone());
                    return Ok(Some(view));
                }
                // Free, with no line at all: nothing to join.
                None => return Ok(None),
                Some(_) => {}
            }
        }
        // From the moment it asks, this manager counts itself in line: a look cut off on its way
        // may still have taken the place, which leaving must then give up.
        self.lines.count_in(resource);
        let Some(view) = self
            .store
            .join_line(resource, self.lines.manager(), has_turn, self.clock.now())
            .await?
        else {
            return Ok(None);
        };
        let view = self.settle(resource, view).await;
        self.lines.remember(resource, view.clone());
        Ok(Some(view))
    }

    /// A line whose turn is nobody's while managers wait in it gives the turn to its first.
    async fn settle(&self, resource: &ResourceId, view: LineView) -> LineView {
        let Some(first) = view.unserved_first() else {
            return view;
        };
        match self
            .store
            .pass_turn(resource, first, self.clock.now())
            .await
        {
            Ok(Some(passed)) => passed,
            // Someone else settled it first: their turn is live, for all this manager knows.
            Ok(None) => view,
            Err(e) => {
                tracing::debug!(error = %e, "could not pass the turn on");
                view
            }
        }
    }

    /// After a wait here ended without a grant: if it was the last wait here for `resource`
    /// and this manager has (or may have) a place in its line, leaves the line, handing its turn
    /// on if it has it. One request, within `request_timeout`, in the background: the Acquire's
    /// answer does not wait for it (Close does). If it fails, the place is skipped when its turn
    /// comes, and a turn lapses on its own.
    pub(super) fn leave_line_if_unwaited(self: &Rc<Self>, resource: &ResourceId) {
        if self.waiters.is_waited(resource) {
            return;
        }
        let in_line = self.lines.is_in_line(resource);
        let next = self.lines.next(resource);
        self.lines.seen.borrow_mut().remove(resource);
        self.lines.kept.borrow_mut().remove(resource);
        if in_line {
            self.leave_line_in_background(resource, next);
        }
    }

    /// Takes this manager out of `resource`'s line, handing its turn (if it has it) to `next`:
    /// one request, within `request_timeout`, in the background (Close waits for it).
    fn leave_line_in_background(self: &Rc<Self>, resource: &ResourceId, next: Option<String>) {
        let core = Rc::clone(self);
        let resource = resource.clone();
        self.in_background(async move {
            let left = core
                .store
                .leave_line(
                    &resource,
                    core.lines.manager(),
                    next.as_deref(),
                    core.clock.now(),
                )
                .await;
            if let Err(e) = left {
                tracing::debug!(error = %e, "could not leave the line; the place will be skipped");
            }
        });
    }
}
