//! What this manager knows without asking the database: the holds it granted and who in this
//! process waits for what.
//!
//! This is what makes hand-off fast. A waiter whose resource is held by this very manager does
//! not poll the database: it waits for the Unlock that comes through here (or for the lease to
//! run out). Local waiters queue per resource in arrival order, and only the head of a queue
//! ever probes the database, so however many callers wait on one resource, the manager sends at
//! most one probe for it at a time, and nobody is overtaken.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::messages::{LockGrant, LockId, ResourceId};

/// Holds granted through this manager and not yet released through it.
#[derive(Debug, Default)]
pub(crate) struct LocalHolds {
    by_lock: RefCell<HashMap<LockId, LocalHold>>,
    by_resource: RefCell<HashMap<ResourceId, LockId>>,
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
}

impl LocalHolds {
    pub(crate) fn insert(&self, grant: &LockGrant, ttl: Duration) {
        let hold = LocalHold {
            resource_id: grant.resource_id.clone(),
            granted_at: grant.granted_at,
            expires_at: grant.expires_at,
            ttl,
        };
        if let Some(previous) = self
            .by_resource
            .borrow_mut()
            .insert(grant.resource_id.clone(), grant.lock_id.clone())
        {
            // An earlier hold of ours on this resource expired and was taken over.
            self.by_lock.borrow_mut().remove(&previous);
        }
        self.by_lock
            .borrow_mut()
            .insert(grant.lock_id.clone(), hold);
    }

    pub(crate) fn get(&self, lock_id: &LockId) -> Option<LocalHold> {
        self.by_lock.borrow().get(lock_id).cloned()
    }

    /// Records a renewed lease.
    pub(crate) fn extend(&self, lock_id: &LockId, expires_at: SystemTime) {
        if let Some(hold) = self.by_lock.borrow_mut().get_mut(lock_id) {
            hold.expires_at = expires_at;
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
        Some(hold)
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
    next_id: Cell<u64>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    wake: Notify,
    /// Told to look at the resource's line before trying (nothing says it was released).
    look_first: Cell<bool>,
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
    pub(crate) fn join(self: &Rc<Self>, resource: &ResourceId) -> Place {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let waiter = Rc::new(Waiter {
            id,
            wake: Notify::new(),
            look_first: Cell::new(false),
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

    /// How many Acquires wait here for `resource`.
    pub(crate) fn count(&self, resource: &ResourceId) -> usize {
        self.queues.borrow().get(resource).map_or(0, VecDeque::len)
    }

    /// Tells the oldest waiter for `resource` to try now.
    pub(crate) fn wake_head(&self, resource: &ResourceId) {
        if let Some(head) = self.queues.borrow().get(resource).and_then(|q| q.front()) {
            head.look_first.set(false);
            head.wake.notify_one();
        }
    }

    /// Tells the oldest waiter for `resource` to look again now: the resource may have been
    /// released unseen (a release stream just opened).
    pub(crate) fn nudge_head(&self, resource: &ResourceId) {
        if let Some(head) = self.queues.borrow().get(resource).and_then(|q| q.front()) {
            head.look_first.set(true);
            head.wake.notify_one();
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

    /// Resolves when this waiter is told to try: the resource was released here, or it became
    /// the head of its queue.
    /// Answers `true` if told to try, `false` if told only to look.
    pub(crate) async fn woken(&self) -> bool {
        self.waiter.wake.notified().await;
        !self.waiter.look_first.replace(false)
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
            }
            // The new head decides for itself whether to probe or to wait for the holder.
            Some(next) if was_head => next.wake.notify_one(),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::{Duration, SystemTime};

    use super::{LocalHolds, LocalWaiters};
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
        tokio::time::timeout(BOUND, head.woken())
            .await
            .expect("the head is woken");
        let early = tokio::time::timeout(Duration::from_millis(20), next.woken()).await;
        assert!(early.is_err(), "a waiter behind the head was woken");
    }

    #[test]
    fn holds_know_their_live_lease_and_which_have_expired() {
        let holds = LocalHolds::default();
        let now = SystemTime::now();
        let live = grant("live", now + Duration::from_secs(10));
        let dead = grant("dead", now - Duration::from_secs(1));
        holds.insert(&live, Duration::from_secs(30));
        holds.insert(&dead, Duration::from_secs(30));
        assert_eq!(
            holds.live_lease(&resource("live"), now),
            Some(live.expires_at)
        );
        assert_eq!(holds.live_lease(&resource("dead"), now), None);
        assert_eq!(holds.expired(now), vec![dead.lock_id.clone()]);

        let later = now + Duration::from_secs(20);
        holds.extend(&live.lock_id, later);
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
        holds.insert(&old, Duration::from_secs(30));
        holds.insert(&new, Duration::from_secs(30));
        assert!(holds.get(&old.lock_id).is_none());
        assert_eq!(holds.lock_ids(), vec![new.lock_id.clone()]);
        assert_eq!(holds.live_lease(&resource("a"), now), Some(new.expires_at));
    }
}
