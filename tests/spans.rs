//! The manager's spans are children of the caller's: a message carries the sender's current
//! span, so the log lines of a request's lock work group under the request. Alone in its test
//! binary, with the process-wide subscriber, since `tracing` caches per call site whether anyone
//! listens, and tests on other threads would race that cache.
//!
//! ```sh
//! scripts/with-mongo cargo test --test spans
//! ```

mod support;

use std::sync::{Arc, Mutex};

use actix_mongo_lock::{Lock, Unlock};
use support::server::{fast_config, manager};

/// Each new span's name and its parent's name.
type SpanParents = Vec<(String, Option<String>)>;

/// A `tracing` layer that records, for every span the library opens, the name of its parent.
#[derive(Clone, Default)]
struct Parents(Arc<Mutex<SpanParents>>);

impl<S> tracing_subscriber::Layer<S> for Parents
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let span = ctx.span(id).expect("a new span is registered");
        let parent = span.parent().map(|p| p.name().to_owned());
        self.0
            .lock()
            .unwrap()
            .push((span.name().to_owned(), parent));
    }
}

#[actix_rt::test]
async fn the_managers_spans_are_children_of_the_callers_span() {
    use tracing_subscriber::layer::SubscriberExt;
    let parents = Parents::default();
    let subscriber = tracing_subscriber::registry().with(parents.clone());
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber here");

    let locks = manager(&fast_config("spans")).await;
    let request = tracing::info_span!("http_request", path = "/reports/7");
    let grant = {
        let _entered = request.enter();
        locks.send(Lock::new("report-7"))
    }
    .await
    .unwrap()
    .unwrap();
    let unlock = {
        let _entered = request.enter();
        locks.send(Unlock::new(grant.lock_id))
    };
    unlock.await.unwrap().unwrap();

    let seen = parents.0.lock().unwrap().clone();
    for name in ["lock", "unlock"] {
        let parent = seen
            .iter()
            .find(|(span, _)| span == name)
            .unwrap_or_else(|| panic!("no {name} span among {seen:?}"))
            .1
            .clone();
        assert_eq!(parent.as_deref(), Some("http_request"), "{name}: {seen:?}");
    }
}
