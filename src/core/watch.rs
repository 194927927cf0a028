//! Waiting for a resource held in another process: woken by the database, not by polling.
//!
//! A waiter in this manager learns of a release through this manager at once (`local.rs`); a
//! release by another process it could only learn of by asking. Where the server has change
//! streams, [`ReleaseWatch`] keeps ONE stream per manager, filtered on the server down to this
//! collection's releases, open while some waiter here waits for a resource held elsewhere, and
//! each release it reports wakes the head of that resource's local queue, which then tries
//! once. Otherwise the head only looks at the resource's line (`line.rs`: one request that also
//! keeps its manager's place there and reads when the hold ends): when the holder's lease ends
//! (an expiry produces no event), when another manager's turn would lapse, and as a slow safety
//! net for a missed event; it tries only when the look finds the resource free and the turn its
//! own or nobody's. Where there is no stream (a standalone server, or one whose stream keeps
//! failing), the looks come after pauses that grow from a short first one to `acquire_period`
//! ([`Backoff`]).
//!
//! The stream lives in a task of its own, so no waiter owns it: the first waiter that needs it
//! starts it, and it closes itself 3 s after the last one left if no other came (at once when
//! the manager closes). A failed stream is opened again after its last event (its resume
//! token), so nothing in between is lost; on each opening every watched head is told to look
//! once, to cover a release that happened before the stream saw it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mongodb::change_stream::event::ResumeToken;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::drain::Drain;
use crate::local::LocalWaiters;
use crate::messages::ResourceId;
use crate::store::TURN_LIFE;
use crate::store::{is_unsupported_stream, MongoStore, ReleaseEvent};

use super::Core;

/// The safety probe of a waiter whose stream works, at the least: a missed event costs at most
/// this much. Longer when `acquire_period` is (4 periods), never shorter.
const SAFETY_PROBE: Duration = Duration::from_secs(1);
/// A probe right after the holder's lease ends must find it ended: the grant's "expired" test is
/// a strict `$lt`, so the waiter wakes just after the stored instant.
const AFTER_EXPIRY: Duration = Duration::from_millis(5);
/// The longest pause after an attempt that the line said would be granted and was refused: the
/// hold's end as read and the server's verdict can differ briefly (nx-27017 compares dates by
/// the whole second), so the waiter looks again soon, if no sooner than its fall-back pause.
const LOOK_AGAIN: Duration = Duration::from_millis(250);
/// Consecutive failures to open or keep a stream before waiters fall back to probing.
const FAILURES_BEFORE_FALLBACK: u32 = 3;
/// A stream that ran this long before failing counts as having worked.
const STREAM_SERVED: Duration = Duration::from_secs(10);
/// How long the stream stays open after its last waiter left: under continuing contention the
/// next wait finds it open instead of paying for a new one (and the probe that covers the
/// opening).
const LINGER: Duration = Duration::from_secs(3);
/// How long a manager whose stream kept failing probes before it tries a stream again.
const FALLBACK_COOLDOWN: Duration = Duration::from_secs(60);

/// The one release stream of a manager and the resources its waiters watch.
pub(crate) struct ReleaseWatch {
    store: MongoStore,
    waiters: Rc<LocalWaiters>,
    drain: Rc<Drain>,
    /// Resources held elsewhere and waited for here, with how many waits watch each.
    watched: RefCell<HashMap<ResourceId, usize>>,
    /// The watched resources by their document's `_id`, as the waits' looks learned them: the
    /// stream names a released document by it.
    documents: RefCell<HashMap<String, ResourceId>>,
    /// The last watch left: the stream's task checks whether to close.
    emptied: Notify,
    state: Cell<StreamState>,
    /// Whether the server can have change streams at all; asked once.
    supported: Cell<Option<bool>>,
    /// Whether the fall-back has been logged at info (once per manager).
    told_fallback: Cell<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamState {
    /// No task runs.
    Idle,
    /// A task runs; its stream is not (yet, or no longer) open.
    Opening,
    /// The stream is open: releases reach the waiters.
    Streaming,
    /// No stream: waiters probe. With a time, the task tries again then.
    Fallback(Option<Instant>),
}

/// One wait's interest in a resource's releases. Dropping it ends the interest.
pub(crate) struct Watching {
    watch: Rc<ReleaseWatch>,
    resource: ResourceId,
}

impl ReleaseWatch {
    pub(crate) fn new(store: MongoStore, waiters: Rc<LocalWaiters>, drain: Rc<Drain>) -> Rc<Self> {
        Rc::new(ReleaseWatch {
            store,
            waiters,
            drain,
            watched: RefCell::default(),
            documents: RefCell::default(),
            emptied: Notify::new(),
            state: Cell::new(StreamState::Idle),
            supported: Cell::new(None),
            told_fallback: Cell::new(false),
        })
    }

    /// Starts watching `resource`'s releases, opening the stream if none is open.
    pub(crate) fn watch(self: &Rc<Self>, resource: &ResourceId) -> Watching {
        *self
            .watched
            .borrow_mut()
            .entry(resource.clone())
            .or_default() += 1;
        let state = self.state.get();
        let retry_due = matches!(state, StreamState::Fallback(Some(at)) if Instant::now() >= at);
        if state == StreamState::Idle || retry_due {
            self.state.set(StreamState::Opening);
            let span = tracing::debug_span!("release_watch");
            actix_rt::spawn(Rc::clone(self).run().instrument(span));
        }
        Watching {
            watch: Rc::clone(self),
            resource: resource.clone(),
        }
    }

    /// Whether releases elsewhere reach the waiters now.
    pub(crate) fn streaming(&self) -> bool {
        self.state.get() == StreamState::Streaming
    }

    /// The stream's task: opens the stream, hands each release to the head of its resource's
    /// local queue, opens it again where it failed, and ends when nobody watches, the manager
    /// closes, or the server has no streams to give.
    async fn run(self: Rc<Self>) {
        let mut streamed = false;
        match self.stream_while_watched(&mut streamed).await {
            Ok(()) => self.state.set(StreamState::Idle),
            Err(reason) => {
                self.fall_back(reason);
                if streamed {
                    // Waiters that paused expecting an event probe again now.
                    self.wake_watched();
                }
            }
        }
    }

    /// Runs streams until nobody watches (`Ok`) or until waiters must probe instead (`Err`,
    /// saying why; the state then says whether to try again later). Sets `streamed` once a
    /// stream has opened.
    async fn stream_while_watched(&self, streamed: &mut bool) -> Result<(), FallbackReason> {
        if self.supported.get().is_none() {
            match self.store.change_streams_supported().await {
                Ok(supported) => self.supported.set(Some(supported)),
                Err(e) => {
                    tracing::debug!(error = %e, "could not ask the server about change streams");
                    return Err(FallbackReason::Failing);
                }
            }
        }
        if self.supported.get() == Some(false) {
            return Err(FallbackReason::Unsupported);
        }
        let mut resume: Option<ResumeToken> = None;
        let mut after_invalidation = false;
        let mut failures = 0;
        while !self.is_unwatched() && !self.drain.is_closing() {
            let opened = self
                .store
                .watch_releases(resume.clone(), after_invalidation)
                .await;
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(e) if is_unsupported_stream(&e) => return Err(FallbackReason::Unsupported),
                Err(e) => {
                    failures += 1;
                    tracing::debug!(error = %e, failures, "could not open the release stream");
                    if failures >= FAILURES_BEFORE_FALLBACK {
                        return Err(FallbackReason::Failing);
                    }
                    self.pause_before_retry(failures).await;
                    continue;
                }
            };
            self.state.set(StreamState::Streaming);
            *streamed = true;
            tracing::debug!(resumed = resume.is_some(), "release stream open");
            // A release between a waiter's refused probe and this moment was not streamed.
            self.wake_watched();
            after_invalidation = false;
            let opened_at = Instant::now();
            let mut unwatched_since: Option<Instant> = None;
            loop {
                unwatched_since = match unwatched_since {
                    _ if !self.is_unwatched() => None,
                    Some(since) => Some(since),
                    None => Some(Instant::now()),
                };
                let linger_ends = async {
                    match unwatched_since {
                        Some(since) => tokio::time::sleep_until((since + LINGER).into()).await,
                        None => std::future::pending().await,
                    }
                };
                let event = tokio::select! {
                    event = stream.next() => event,
                    () = self.emptied.notified() => continue,
                    () = linger_ends => {
                        if self.is_unwatched() { return Ok(()); }
                        continue;
                    }
                    () = self.drain.closing() => return Ok(()),
                };
                resume = stream.resume_token().or(resume);
                match event {
                    Ok(ReleaseEvent::Released(resource)) => {
                        tracing::trace!(%resource, "release seen");
                        failures = 0;
                        self.waiters.wake_head(&resource);
                    }
                    Ok(ReleaseEvent::ReleasedDocument(document)) => {
                        failures = 0;
                        let resource = self.documents.borrow().get(&document).cloned();
                        match resource {
                            Some(resource) => self.waiters.wake_head(&resource),
                            // Perhaps a watched resource whose document no look has read yet.
                            None => self.wake_unknown_documents(),
                        }
                    }
                    Ok(ReleaseEvent::Unknown) => {
                        failures = 0;
                        self.wake_watched();
                    }
                    Ok(ReleaseEvent::Invalidated) => {
                        tracing::debug!("release stream invalidated; starting after it");
                        after_invalidation = true;
                        break;
                    }
                    Err(e) => {
                        // Failures count "in a row": a stream that served a while starts afresh.
                        if opened_at.elapsed() >= STREAM_SERVED {
                            failures = 0;
                        }
                        failures += 1;
                        tracing::debug!(error = %e, failures, "release stream failed; resuming");
                        break;
                    }
                }
            }
            self.state.set(StreamState::Opening);
            if failures >= FAILURES_BEFORE_FALLBACK {
                return Err(FallbackReason::Failing);
            }
            self.pause_before_retry(failures).await;
        }
        Ok(())
    }

    fn fall_back(&self, reason: FallbackReason) {
        let retry_at = match reason {
            FallbackReason::Unsupported => None,
            FallbackReason::Failing => Some(Instant::now() + FALLBACK_COOLDOWN),
        };
        self.state.set(StreamState::Fallback(retry_at));
        if self.told_fallback.replace(true) {
            tracing::debug!(?reason, "waiting by probing");
        } else {
            tracing::info!(
                ?reason,
                "no change stream of releases; waiters for resources held elsewhere probe instead"
            );
        }
    }

    /// A short pause before opening a stream again, growing with the failures; cut short when
    /// the manager closes.
    async fn pause_before_retry(&self, failures: u32) {
        let pause = Duration::from_millis(50) * failures;
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = self.drain.closing() => {}
        }
    }

    fn is_unwatched(&self) -> bool {
        self.watched.borrow().is_empty()
    }

    /// Tells the heads of the watched resources whose document is not known here yet to look
    /// again: a release of an unknown document may be theirs.
    fn wake_unknown_documents(&self) {
        let known: Vec<ResourceId> = self.documents.borrow().values().cloned().collect();
        let unknown: Vec<ResourceId> = self
            .watched
            .borrow()
            .keys()
            .filter(|resource| !known.contains(resource))
            .cloned()
            .collect();
        for resource in &unknown {
            self.waiters.nudge_head(resource);
        }
    }

    /// Tells the heads of every watched resource to look again (a release may have gone
    /// unseen while no stream was open).
    fn wake_watched(&self) {
        let resources: Vec<ResourceId> = self.watched.borrow().keys().cloned().collect();
        for resource in &resources {
            self.waiters.nudge_head(resource);
        }
    }
}

/// Why waiters probe instead of being told.
#[derive(Clone, Copy, Debug)]
enum FallbackReason {
    /// The server cannot have change streams (a standalone server): probe for good.
    Unsupported,
    /// The stream failed again and again: probe for a while, then try again.
    Failing,
}

impl Watching {
    /// Records the `_id` of the watched resource's document, as a look read it.
    pub(super) fn learn_document(&self, document: Option<&str>) {
        let mut documents = self.watch.documents.borrow_mut();
        documents.retain(|_, resource| *resource != self.resource);
        if let Some(document) = document {
            documents.insert(document.to_owned(), self.resource.clone());
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut watched = self.watch.watched.borrow_mut();
        if let Some(count) = watched.get_mut(&self.resource) {
            *count -= 1;
            if *count == 0 {
                watched.remove(&self.resource);
                self.watch
                    .documents
                    .borrow_mut()
                    .retain(|_, resource| *resource != self.resource);
            }
        }
        if watched.is_empty() {
            self.watch.emptied.notify_one();
        }
    }
}

/// How the head of a local queue waits for a resource held elsewhere: its interest in the
/// release stream, whether the line last looked grantable to it, and its fall-back pauses.
pub(super) struct RemoteWait {
    watching: Option<Watching>,
    grantable: bool,
    backoff: Backoff,
    safety_probe: Duration,
    /// The resource's fence at the last look.
    last_fence: Option<i64>,
}

impl RemoteWait {
    pub(super) fn new(acquire_period: Duration) -> Self {
        RemoteWait {
            watching: None,
            grantable: false,
            backoff: Backoff::new(acquire_period),
            safety_probe: SAFETY_PROBE.max(acquire_period.saturating_mul(4)),
            last_fence: None,
        }
    }

    /// Whether the last look at the line found the resource free and nobody else's turn: then
    /// the next probe is a grant attempt.
    pub(super) fn looks_grantable(&self) -> bool {
        self.grantable
    }
}

impl Core {
    /// After a refused attempt, or when a pause ends by its timer, for a resource held
    /// elsewhere: takes or keeps this manager's place in the resource's line (renewing its turn
    /// if it has it; `line.rs`), and answers how long to wait before the next probe. Zero if the
    /// resource is free and the turn is nobody else's. With the stream working, until the
    /// holder's lease ends (an expiry produces no event) or another manager's turn lapses, or
    /// the safety probe, whichever is first: a release wakes the waiter sooner. Without, the
    /// next fall-back pause, and the look at the line is the probe. Either way at most half a
    /// [`TURN_LIFE`] while the turn is this manager's, so the next look renews it in time.
    ///
    /// The look is cut off at the wait's `deadline`, as later attempts are: the wait then ends.
    pub(super) async fn remote_pause(
        &self,
        resource: &ResourceId,
        wait: &mut RemoteWait,
        deadline: Instant,
    ) -> Duration {
        if wait.watching.is_none() {
            wait.watching = Some(self.release_watch.watch(resource));
        }
        // An attempt made because the line looked grantable was refused (a server that
        // compares dates by the whole second, a grant elsewhere in between): the next one waits
        // a fall-back pause, so a line that keeps looking grantable is not probed in a loop.
        let refused_when_grantable = std::mem::take(&mut wait.grantable);
        let look = tokio::time::timeout_at(deadline.into(), self.visit_line(resource)).await;
        let view = match look {
            Ok(Ok(view)) => view,
            Err(_) => return Duration::ZERO,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not look at the line");
                return wait.backoff.next_pause().min(wait.safety_probe);
            }
        };
        if let Some(watching) = &wait.watching {
            watching.learn_document(view.as_ref().and_then(|seen| seen.document.as_deref()));
        }
        // No document: nothing holds the resource.
        wait.grantable = view
            .as_ref()
            .is_none_or(|view| view.grantable_to(self.lines.manager()));
        let Some(view) = view.filter(|_| !wait.grantable) else {
            return if refused_when_grantable {
                wait.backoff.next_pause().min(LOOK_AGAIN)
            } else {
                Duration::ZERO
            };
        };
        let ends = view
            .held_until
            .or(view.turn.as_ref().map(|(_, until)| *until));
        let until_end = ends.map(|at| self.clock.until(at) + AFTER_EXPIRY);
        // Without a stream: while this manager is next to be granted and the resource has been
        // granted since the last look, the holds are short and the next release is near, so
        // the pauses start again from the first; otherwise they keep growing.
        let handed_on = wait.last_fence.is_some() && view.fence != wait.last_fence;
        wait.last_fence = view.fence;
        let pause = if self.release_watch.streaming() {
            until_end
                .unwrap_or(wait.safety_probe)
                .min(wait.safety_probe)
        } else {
            if handed_on && view.is_next(self.lines.manager()) {
                wait.backoff.restart();
            }
            wait.backoff.next_pause()
        };
        // The manager whose turn it is looks at least every half turn, so the look renews it
        // before it lapses, whatever `acquire_period` makes the safety probe and the fall-back
        // pauses (a turn that lapsed is anyone's).
        let renew_within = if view.is_turn_of(self.lines.manager()) {
            TURN_LIFE / 2
        } else {
            Duration::MAX
        };
        pause
            .min(until_end.unwrap_or(Duration::MAX))
            .min(renew_within)
    }
}

/// The fall-back pauses of [`Polling::Adaptive`](crate::Polling::Adaptive) for a resource held
/// elsewhere: a tenth of `acquire_period` first, doubling up to `acquire_period`, each with
/// jitter of up to +40 % (never shorter, so the rates below are ceilings). A default wait (2.5 s
/// at 250 ms) thus sends at most 14 probes, and a long one at most one per `acquire_period`,
/// unless the pauses [`restart`](Backoff::restart): only for the manager next to be granted,
/// when the resource changed hands since its last look (`remote_pause`).
pub(super) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(acquire_period: Duration) -> Self {
        Backoff {
            first: acquire_period / 10,
            next: acquire_period / 10,
            max: acquire_period,
        }
    }

    /// The next pause is the first, short one again.
    pub(super) fn restart(&mut self) {
        self.next = self.first;
    }

    pub(super) fn next_pause(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // The randomness of a v4 UUID serves as jitter.
        let fraction = f64::from(uuid::Uuid::new_v4().as_u128() as u16) / f64::from(u16::MAX);
        base.mul_f64(1.0 + 0.4 * fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probes a wait of `budget` sends: one at once, then one after each pause that ends
    /// before the deadline, and one at the deadline.
    fn probes_within(budget: Duration, backoff: &mut Backoff) -> u32 {
        let mut elapsed = Duration::ZERO;
        let mut probes = 1;
        loop {
            elapsed += backoff.next_pause();
            probes += 1;
            if elapsed >= budget {
                return probes;
            }
        }
    }

    #[test]
    fn a_restart_makes_the_next_pause_the_first_again() {
        let period = Duration::from_millis(250);
        let mut backoff = Backoff::new(period);
        for _ in 0..6 {
            backoff.next_pause();
        }
        backoff.restart();
        let first = backoff.next_pause();
        let second = backoff.next_pause();
        assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(35));
        assert!(second >= Duration::from_millis(50) && second <= Duration::from_millis(70));
    }

    #[test]
    fn the_pauses_grow_from_a_tenth_to_the_acquire_period() {
        let period = Duration::from_millis(250);
        let mut backoff = Backoff::new(period);
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.next_pause()).collect();
        let bases = [25, 50, 100, 200, 250, 250, 250, 250];
        for (pause, base) in pauses.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *pause >= base && *pause <= base.mul_f64(1.4),
                "{pause:?} is not within the jitter of {base:?}"
            );
        }
    }

    #[test]
    fn a_default_wait_sends_at_most_fifteen_probes() {
        for _ in 0..1000 {
            let mut backoff = Backoff::new(Duration::from_millis(250));
            let probes = probes_within(Duration::from_millis(2500), &mut backoff);
            assert!(probes <= 15, "{probes} probes in a default wait");
        }
    }

    #[test]
    fn a_long_wait_sends_at_most_four_probes_a_second_at_the_default_period() {
        let mut backoff = Backoff::new(Duration::from_millis(250));
        let probes = probes_within(Duration::from_secs(60), &mut backoff);
        assert!(probes <= 4 * 60 + 1, "{probes} probes in a minute");
    }
}
