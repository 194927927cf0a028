//! Waiting for a condition the test cannot be told about (a document reaching the server, a
//! connection closing): poll it every 10 ms, up to a stated bound.

use std::future::Future;
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_millis(10);

/// Polls `check` until it yields a value; `None` once `within` has passed without one.
pub async fn eventually_or_none<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Polls `check` until it yields a value; panics, naming `what`, once `within` has passed.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_or_none(within, check)
        .await
        .unwrap_or_else(|| panic!("{what}: not within {within:?}"))
}

/// Waits until `condition` holds; panics, naming `what`, once `within` has passed.
pub async fn until(what: &str, within: Duration, condition: impl Fn() -> bool) {
    eventually(what, within, || async { condition().then_some(()) }).await
}
