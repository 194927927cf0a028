//! Waiting for a resource held in another process: told by the database, not by polling.
//!
//! A waiter in this manager learns of a release through this manager at once (`local.rs`); of a
//! release or a turn elsewhere it could only learn by asking. Where the server has change
//! streams, [`ReleaseWatch`] keeps ONE stream per manager, open while some waiter here waits
//! for a resource held elsewhere. The server filters it down to the events meant for this
//! manager (`MongoStore::watch_releases`): a release, a join, a leave, a settle or a renewal
//! whose turn names it as the turn's holder or as its `next`, and releases that name no turn
//! (Go clients', purges). Each event updates the manager's view of that line ([`Lines`]) and
//! wakes the head of the resource's local queue, which decides what to do with it
//! (`crate::line::next_step`): the holder of the turn of a released resource tries at once, its
//! `next` only learns when that turn ends. Releases meant for other managers never reach this
//! one, so a release costs the same however many managers wait.
//!
//! The stream lives in a task of its own, so no waiter owns it: the first waiter that needs it
//! starts it, and it closes itself 3 s after the last one left if no other came (at once when
//! the manager closes). A failed stream is opened again after its last event (its resume
//! token), so nothing in between is lost; on each opening every watched head is told to look
//! once, to cover what happened before the stream saw it. Where there is no stream (a
//! standalone server, or one whose stream keeps failing), waiters probe instead.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mongodb::change_stream::event::ResumeToken;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::drain::Drain;
use crate::line::{LineEvent, Lines, Woken};
use crate::local::LocalWaiters;
use crate::messages::ResourceId;
use crate::store::{is_unsupported_stream, MongoStore, StreamEvent};

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
    lines: Rc<Lines>,
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
    pub(crate) fn new(
        store: MongoStore,
        waiters: Rc<LocalWaiters>,
        lines: Rc<Lines>,
        drain: Rc<Drain>,
    ) -> Rc<Self> {
        Rc::new(ReleaseWatch {
            store,
            waiters,
            lines,
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
            self.set_state(StreamState::Opening);
            let span = tracing::debug_span!("release_watch");
            actix_rt::spawn(Rc::clone(self).run().instrument(span));
        }
        Watching {
            watch: Rc::clone(self),
            resource: resource.clone(),
        }
    }

    /// The stream's state, told to metrics (`amlock_stream_up`) as it changes.
    fn set_state(&self, state: StreamState) {
        let was = self.state.replace(state);
        if (was == StreamState::Streaming) != (state == StreamState::Streaming) {
            crate::metrics::stream_up(self.store.family(), state == StreamState::Streaming);
        }
    }

    /// Whether releases and turns meant for this manager reach its waiters now.
    pub(crate) fn streaming(&self) -> bool {
        self.state.get() == StreamState::Streaming
    }

    /// The stream's task: opens the stream, hands each event to the line it is about and to the
    /// head of that resource's local queue, opens it again where it failed, and ends when
    /// nobody watches, the manager closes, or the server has no streams to give.
    async fn run(self: Rc<Self>) {
        let mut streamed = false;
        match self.stream_while_watched(&mut streamed).await {
            Ok(()) => self.set_state(StreamState::Idle),
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
                .watch_releases(self.lines.manager(), resume.clone(), after_invalidation)
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
            self.set_state(StreamState::Streaming);
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
                    Ok(StreamEvent::Resource { resource, event }) => {
                        failures = 0;
                        self.tell(&resource, &event);
                    }
                    Ok(StreamEvent::Document { document, event }) => {
                        failures = 0;
                        let resource = self.documents.borrow().get(&document).cloned();
                        match resource {
                            Some(resource) => self.tell(&resource, &event),
                            // Perhaps a watched resource whose document no look has read yet.
                            None => self.wake_unknown_documents(),
                        }
                    }
                    Ok(StreamEvent::Unknown) => {
                        failures = 0;
                        self.wake_watched();
                    }
                    Ok(StreamEvent::Invalidated) => {
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
            self.set_state(StreamState::Opening);
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
        self.set_state(StreamState::Fallback(retry_at));
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

    /// Hands `event` to `resource`'s line as seen here and wakes the head of its queue (told to
    /// look, if this manager has not seen the line yet).
    fn tell(&self, resource: &ResourceId, event: &LineEvent) {
        tracing::trace!(%resource, ?event, "line event");
        let why = self.lines.apply(resource, event).unwrap_or(Woken::Nudged);
        self.waiters.tell_head(resource, why);
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
            self.waiters.tell_head(resource, Woken::Nudged);
        }
    }

    /// Tells the heads of every watched resource to look again (a release may have gone
    /// unseen while no stream was open).
    fn wake_watched(&self) {
        let resources: Vec<ResourceId> = self.watched.borrow().keys().cloned().collect();
        for resource in &resources {
            self.waiters.tell_head(resource, Woken::Nudged);
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
