//! What this manager knows without asking the database: the holds it granted and who in this
//! process waits for what.
//!
//! This is what makes hand-off fast. A waiter whose resource is held by this very manager does
//! not poll the database: it waits for the Unlock that comes through here (or for the lease to
//! run out), and asks only once a second, for a release made through another manager. Local waiters queue per resource in arrival order, and only the head of a queue
//! ever probes the database, so however many callers wait on one resource, the manager sends at
//! most one probe for it at a time, and nobody is overtaken.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::line::{LineView, Woken};
use crate::messages::{LockGrant, LockId, ResourceId};

/// Holds granted through this manager and not yet released through it.
#[derive(Debug, Default)]
pub(crate) struct LocalHolds {
    by_lock: RefCell<HashMap<LockId, LocalHold>>,
    by_resource: RefCell<HashMap<ResourceId, LockId>>,
    /// Told whenever a hold leaves the record, however it ended: what `AwaitReleased` waits on.
    ended: Notify,
}

/// One hold granted through this manager.
#[derive(Debug, Clone)]
pub(crate) struct LocalHold {
    pub(crate) resource_id: ResourceId,
    pub(crate) granted_at: SystemTime,
    pub(crate) expires_at: SystemTime,
    /// The lease it was granted with (the request's, or the configured one): renewals extend
    /// it by as much.
    pub(crate) ttl: Duration,
    /// The resource's line as the grant left it: whom its release wakes, unless this manager
    /// has seen the line since.
    pub(crate) line: LineView,
    /// A shared hold: one of several on its resource, so it is not the resource's hold here
    /// ([`LocalHolds::live_lease`] does not count it).
    pub(crate) shared: bool,
}

impl LocalHolds {
    pub(crate) fn insert(&self, grant: &LockGrant, ttl: Duration, line: LineView) {
        let hold = LocalHold {
            resource_id: grant.resource_id.clone(),
            granted_at: grant.granted_at,
            expires_at: grant.expires_at,
            ttl,
            line,
            shared: grant.shared,
        };
        if grant.shared {
            self.by_lock
                .borrow_mut()
                .insert(grant.lock_id.clone(), hold);
            return;
        }
        if let Some(previous) = self
            .by_resource
            .borrow_mut()
            .insert(grant.resource_id.clone(), grant.lock_id.clone())
        {
            // An earlier hold of ours on this resource expired and was taken over.
            if self.by_lock.borrow_mut().remove(&previous).is_some() {
                self.ended.notify_waiters();
            }
        }
        self.by_lock
            .borrow_mut()
            .insert(grant.lock_id.clone(), hold);
    }

    pub(crate) fn get(&self, lock_id: &LockId) -> Option<LocalHold> {
        self.by_lock.borrow().get(lock_id).cloned()
    }

    /// A renewal of `lock_id` until `expires_at`, which saw the resource's line as `line`
    /// (an exclusive hold's: its release names whom it wakes from that).
    pub(crate) fn extend(&self, lock_id: &LockId, expires_at: SystemTime, line: Option<LineView>) {
        if let Some(hold) = self.by_lock.borrow_mut().get_mut(lock_id) {
            hold.expires_at = expires_at;
            if let Some(line) = line {
                hold.line = line;
            }
        }
    }

    /// The ids of every hold granted here and not yet released here.
    pub(crate) fn lock_ids(&self) -> Vec<LockId> {
        self.by_lock.borrow().keys().cloned().collect()
    }

    /// Forgets `lock_id`; returns its hold if this manager granted it.
    pub(crate) fn remove(&self, lock_id: &LockId) -> Option<LocalHold> {
        let hold = self.by_lock.borrow_mut().remove(lock_id)?;
        let mut by_resource = self.by_resource.borrow_mut();
        if by_resource.get(&hold.resource_id) == Some(lock_id) {
            by_resource.remove(&hold.resource_id);
        }
        self.ended.notify_waiters();
        Some(hold)
    }

    /// Resolves once a hold leaves the record after this call (not when it is called). Call it
    /// before looking at the holds, so that a hold ending in between still wakes the caller.
    pub(crate) fn ended(&self) -> Notified<'_> {
        self.ended.notified()
    }

    /// How many holds are live at `now` (their lease not over), and when the first of those
    /// leases ends.
    pub(crate) fn live_at(&self, now: SystemTime) -> (usize, Option<SystemTime>) {
        let by_lock = self.by_lock.borrow();
        let ends: Vec<SystemTime> = by_lock
            .values()
            .map(|hold| hold.expires_at)
            .filter(|&end| end > now)
            .collect();
        (ends.len(), ends.iter().min().copied())
    }

    /// When this manager's live hold on `resource` ends, if it has one at `now`.
    pub(crate) fn live_lease(&self, resource: &ResourceId, now: SystemTime) -> Option<SystemTime> {
        let lock_id = self.by_resource.borrow().get(resource).cloned()?;
        let expires_at = self.by_lock.borrow().get(&lock_id)?.expires_at;
        (expires_at > now).then_some(expires_at)
    }

    /// The holds whose lease ended at or before `now` (never unlocked by their holder).
    pub(crate) fn expired(&self, now: SystemTime) -> Vec<LockId> {
        self.by_lock
            .borrow()
            .iter()
            .filter(|(_, hold)| hold.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Per-resource FIFO queues of the Acquires waiting in this manager.
#[derive(Debug, Default)]
pub(crate) struct LocalWaiters {
    queues: RefCell<HashMap<ResourceId, VecDeque<Rc<Waiter>>>>,
    /// By resource, while its queue lasts: what the database did with the requests the queue's
    /// heads sent for it, so a waiter that never asked itself can tell "down" from "busy".
    contact: RefCell<HashMap<ResourceId, Contact>>,
    next_id: Cell<u64>,
}

/// When the database last answered a request of a queue's head for its resource, and when it
/// last failed to (with the error).
#[derive(Clone, Debug, Default)]
pub(crate) struct Contact {
    pub(crate) answered: Option<Instant>,
    pub(crate) failed: Option<(Instant, String)>,
}

impl Contact {
    /// The last error, if the database answered none of the requests sent since `since` and
    /// failed at least one: it is down, not the resource busy.
    pub(crate) fn unreachable_since(&self, since: Instant) -> Option<&str> {
        let answered = self.answered.is_some_and(|at| at >= since);
        match &self.failed {
            Some((at, error)) if *at >= since && !answered => Some(error),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    wake: Notify,
    /// Why it was woken: the strongest reason given since it last woke ([`Woken::Told`] to
    /// try, before [`Woken::Changed`], before [`Woken::Nudged`] to look).
    reason: Cell<Option<Woken>>,
    /// It waits for a shared hold: it takes no place in the line of waiting managers.
    shared: bool,
}

impl Waiter {
    fn wake(&self, why: Woken) {
        let strongest = match (self.reason.get(), why) {
            (Some(Woken::Told), _) | (_, Woken::Told) => Woken::Told,
            (Some(Woken::Changed), _) | (_, Woken::Changed) => Woken::Changed,
            _ => why,
        };
        self.reason.set(Some(strongest));
        self.wake.notify_one();
    }
}

/// A waiter's place in its resource's queue. Dropping it leaves the queue.
#[derive(Debug)]
pub(crate) struct Place {
    waiters: Rc<LocalWaiters>,
    resource: ResourceId,
    waiter: Rc<Waiter>,
}

impl LocalWaiters {
    /// Joins the back of `resource`'s queue.
    #[cfg(test)]
    pub(crate) fn join(self: &Rc<Self>, resource: &ResourceId) -> Place {
        self.join_as(resource, false)
    }

    /// Joins the back of `resource`'s queue, for a shared hold if `shared`.
    pub(crate) fn join_as(self: &Rc<Self>, resource: &ResourceId, shared: bool) -> Place {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let waiter = Rc::new(Waiter {
            id,
            wake: Notify::new(),
            reason: Cell::new(None),
            shared,
        });
        self.queues
            .borrow_mut()
            .entry(resource.clone())
            .or_default()
            .push_back(Rc::clone(&waiter));
        Place {
            waiters: Rc::clone(self),
            resource: resource.clone(),
            waiter,
        }
    }

    /// Whether any Acquire waits here for `resource`.
    pub(crate) fn is_waited(&self, resource: &ResourceId) -> bool {
        self.queues.borrow().contains_key(resource)
    }

    /// Records that the database answered a request for `resource` (a try, refused or granted,
    /// or a look), or failed to with `error`.
    pub(crate) fn record_contact(&self, resource: &ResourceId, failure: Option<String>) {
        if !self.is_waited(resource) {
            return;
        }
        let mut contact = self.contact.borrow_mut();
        let entry = contact.entry(resource.clone()).or_default();
        match failure {
            None => entry.answered = Some(Instant::now()),
            Some(error) => entry.failed = Some((Instant::now(), error)),
        }
    }

    /// What the database did with the requests sent for `resource` while its queue lasted.
    pub(crate) fn contact(&self, resource: &ResourceId) -> Contact {
        self.contact
            .borrow()
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }

    /// How many Acquires of an exclusive hold wait here for `resource`: those the line of
    /// waiting managers is for (shared waiters take no place in it).
    pub(crate) fn count(&self, resource: &ResourceId) -> usize {
        self.queues
            .borrow()
            .get(resource)
            .map_or(0, |queue| queue.iter().filter(|w| !w.shared).count())
    }

    /// Whether any Acquire of an exclusive hold waits here for `resource`: whether this
    /// manager needs its place in the resource's line.
    pub(crate) fn is_waited_exclusive(&self, resource: &ResourceId) -> bool {
        self.count(resource) > 0
    }

    /// Tells the oldest waiter for `resource` to try now.
    pub(crate) fn wake_head(&self, resource: &ResourceId) {
        self.tell_head(resource, Woken::Told);
    }

    /// Tells the oldest waiter for `resource` why to decide again: to try ([`Woken::Told`]),
    /// that its line changed ([`Woken::Changed`]), or to look ([`Woken::Nudged`]: the resource
    /// may have been released unseen, as when a release stream just opened).
    pub(crate) fn tell_head(&self, resource: &ResourceId, why: Woken) {
        if let Some(head) = self.queues.borrow().get(resource).and_then(|q| q.front()) {
            head.wake(why);
        }
    }
}

impl Place {
    /// Whether this waiter is the oldest for its resource (the only one that probes).
    pub(crate) fn is_head(&self) -> bool {
        self.waiters
            .queues
            .borrow()
            .get(&self.resource)
            .and_then(|q| q.front())
            .is_some_and(|head| head.id == self.waiter.id)
    }

    /// Resolves when this waiter is woken ([`LocalWaiters::tell_head`]; a waiter that becomes
    /// the head is told to try), answering why.
    pub(crate) async fn woken(&self) -> Woken {
        self.waiter.wake.notified().await;
        self.waiter.reason.take().unwrap_or(Woken::Told)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut queues = self.waiters.queues.borrow_mut();
        let Some(queue) = queues.get_mut(&self.resource) else {
            return;
        };
        let was_head = queue.front().is_some_and(|w| w.id == self.waiter.id);
        queue.retain(|w| w.id != self.waiter.id);
        match queue.front() {
            None => {
                queues.remove(&self.resource);
                self.waiters.contact.borrow_mut().remove(&self.resource);
            }
            // The new head decides for itself whether to probe or to wait for the holder.
            Some(next) if was_head => next.wake(Woken::Told),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::{Duration, SystemTime};

    use super::{LocalHolds, LocalWaiters};
    use crate::line::{LineView, Woken};
    use crate::messages::{LockGrant, LockId, ResourceId};

    const BOUND: Duration = Duration::from_secs(5);

    fn resource(name: &str) -> ResourceId {
        ResourceId::new(name).expect("a valid resource id")
    }

    fn grant(name: &str, expires_at: SystemTime) -> LockGrant {
        LockGrant {
            lock_id: LockId::generate(),
            resource_id: resource(name),
            fence: 1,
            granted_at: expires_at - Duration::from_secs(30),
            expires_at,
            shared: false,
        }
    }

    #[test]
    fn waiters_queue_in_arrival_order_per_resource() {
        let waiters = Rc::new(LocalWaiters::default());
        let first = waiters.join(&resource("a"));
        let second = waiters.join(&resource("a"));
        let third = waiters.join(&resource("a"));
        let elsewhere = waiters.join(&resource("b"));
        assert!(first.is_head());
        assert!(!second.is_head() && !third.is_head());
        assert!(elsewhere.is_head(), "queues are per resource");

        drop(second);
        assert!(first.is_head(), "leaving from the middle changes no head");
        drop(first);
        assert!(third.is_head());
        drop(third);
        assert!(
            waiters.queues.borrow().get(&resource("a")).is_none(),
            "empty queues go"
        );
    }

    #[actix_rt::test]
    async fn the_head_leaving_wakes_the_next_waiter() {
        let waiters = Rc::new(LocalWaiters::default());
        let head = waiters.join(&resource("a"));
        let next = waiters.join(&resource("a"));
        let early = tokio::time::timeout(Duration::from_millis(20), next.woken()).await;
        assert!(early.is_err(), "woken while not head");
        drop(head);
        tokio::time::timeout(BOUND, next.woken())
            .await
            .expect("the new head is woken");
    }

    #[actix_rt::test]
    async fn wake_head_wakes_only_the_oldest_waiter() {
        let waiters = Rc::new(LocalWaiters::default());
        let head = waiters.join(&resource("a"));
        let next = waiters.join(&resource("a"));
        waiters.wake_head(&resource("a"));
        let woken = tokio::time::timeout(BOUND, head.woken())
            .await
            .expect("the head is woken");
        assert_eq!(woken, Woken::Told);
        let early = tokio::time::timeout(Duration::from_millis(20), next.woken()).await;
        assert!(early.is_err(), "a waiter behind the head was woken");
    }

    #[actix_rt::test]
    async fn a_waiter_woken_twice_before_it_runs_learns_the_stronger_reason() {
        let waiters = Rc::new(LocalWaiters::default());
        let head = waiters.join(&resource("a"));
        for (first, then, strongest) in [
            (Woken::Nudged, Woken::Changed, Woken::Changed),
            (Woken::Changed, Woken::Nudged, Woken::Changed),
            (Woken::Told, Woken::Nudged, Woken::Told),
            (Woken::Nudged, Woken::Told, Woken::Told),
            (Woken::Nudged, Woken::Nudged, Woken::Nudged),
        ] {
            waiters.tell_head(&resource("a"), first);
            waiters.tell_head(&resource("a"), then);
            let woken = tokio::time::timeout(BOUND, head.woken())
                .await
                .expect("the head is woken");
            assert_eq!(woken, strongest, "{first:?} then {then:?}");
        }
    }

    #[test]
    fn a_queue_is_unreachable_only_if_nothing_it_sent_since_was_answered() {
        let waiters = Rc::new(LocalWaiters::default());
        let r = resource("a");
        let before = std::time::Instant::now();
        waiters.record_contact(&r, Some("lost".to_owned()));
        assert_eq!(
            waiters.contact(&r).failed,
            None,
            "nobody waits: nothing kept"
        );
        let place = waiters.join(&r);
        let since = std::time::Instant::now();
        assert_eq!(
            waiters.contact(&r).unreachable_since(since),
            None,
            "nothing sent"
        );
        waiters.record_contact(&r, Some("lost".to_owned()));
        assert_eq!(waiters.contact(&r).unreachable_since(since), Some("lost"));
        waiters.record_contact(&r, None);
        assert_eq!(
            waiters.contact(&r).unreachable_since(since),
            None,
            "an answer since: busy, not down"
        );
        waiters.record_contact(&r, Some("lost again".to_owned()));
        assert_eq!(waiters.contact(&r).unreachable_since(since), None);
        assert!(waiters.contact(&r).answered.is_some_and(|at| at >= before));
        drop(place);
        assert!(
            waiters.contact(&r).answered.is_none(),
            "forgotten with the queue"
        );
    }

    #[test]
    fn holds_know_their_live_lease_and_which_have_expired() {
        let holds = LocalHolds::default();
        let now = SystemTime::now();
        let live = grant("live", now + Duration::from_secs(10));
        let dead = grant("dead", now - Duration::from_secs(1));
        holds.insert(&live, Duration::from_secs(30), LineView::default());
        holds.insert(&dead, Duration::from_secs(30), LineView::default());
        assert_eq!(
            holds.live_lease(&resource("live"), now),
            Some(live.expires_at)
        );
        assert_eq!(holds.live_lease(&resource("dead"), now), None);
        assert_eq!(holds.expired(now), vec![dead.lock_id.clone()]);

        let later = now + Duration::from_secs(20);
        holds.extend(&live.lock_id, later, None);
        assert_eq!(holds.live_lease(&resource("live"), now), Some(later));

        assert!(holds.remove(&live.lock_id).is_some());
        assert!(holds.remove(&live.lock_id).is_none());
        assert_eq!(holds.live_lease(&resource("live"), now), None);
    }

    #[test]
    fn a_new_hold_on_a_resource_replaces_the_old_one() {
        let holds = LocalHolds::default();
        let now = SystemTime::now();
        let old = grant("a", now - Duration::from_secs(1));
        let new = grant("a", now + Duration::from_secs(10));
        holds.insert(&old, Duration::from_secs(30), LineView::default());
        holds.insert(&new, Duration::from_secs(30), LineView::default());
        assert!(holds.get(&old.lock_id).is_none());
        assert_eq!(holds.lock_ids(), vec![new.lock_id.clone()]);
        assert_eq!(holds.live_lease(&resource("a"), now), Some(new.expires_at));
    }

    #[actix_rt::test]
    async fn every_hold_leaving_the_record_wakes_ended_and_live_at_counts_unexpired_holds() {
        let holds = LocalHolds::default();
        let now = SystemTime::now();
        let first = grant("a", now + Duration::from_secs(10));
        let second = grant("b", now + Duration::from_secs(5));
        let expired = grant("c", now - Duration::from_secs(1));
        for hold in [&first, &second, &expired] {
            holds.insert(hold, Duration::from_secs(30), LineView::default());
        }
        assert_eq!(holds.live_at(now), (2, Some(second.expires_at)));

        let ended = holds.ended();
        tokio::pin!(ended);
        let early = tokio::time::timeout(Duration::from_millis(20), &mut ended).await;
        assert!(early.is_err(), "ended before any hold left");
        assert!(holds.remove(&second.lock_id).is_some());
        tokio::time::timeout(BOUND, ended)
            .await
            .expect("a removal wakes ended()");
        assert_eq!(holds.live_at(now), (1, Some(first.expires_at)));

        // A hold replaced by a newer one on its resource has ended too.
        let replaced = holds.ended();
        holds.insert(
            &grant("a", now + Duration::from_secs(20)),
            Duration::from_secs(30),
            LineView::default(),
        );
        tokio::time::timeout(BOUND, replaced)
            .await
            .expect("a replaced hold wakes ended()");

        // Forgetting an unknown id is no end.
        let nothing = holds.ended();
        assert!(holds.remove(&LockId::generate()).is_none());
        let early = tokio::time::timeout(Duration::from_millis(20), nothing).await;
        assert!(early.is_err(), "ended woke without a hold leaving");
        assert_eq!(holds.live_at(now + Duration::from_secs(30)), (0, None));
    }
}
