//! Time as the server sees it.
//!
//! Leases are compared on the server (`expiresAt <= now` in the grant's filter), but `now` is
//! sent by the client, because the update forms that read the server's own clock (`$$NOW`) are
//! not available on every server this crate supports. So each manager measures how far the
//! server's clock (`hello`'s `localTime`) is from its own, at start and at every purge, and
//! writes every date on the server's clock. A manager whose clock is 10 s fast then neither
//! takes a live lock (it does not think leases ended early) nor keeps a dead one.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::LockError;
use crate::store::{ClockOffset, MongoStore};

/// The local wall clock a manager reads; see [`LockConfig::clock`](crate::LockConfig::clock).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use actix_mongo_lock::LocalClock;
///
/// let fast = LocalClock::skewed(Duration::from_secs(10), true);
/// assert!(fast.now() > SystemTime::now() + Duration::from_secs(9));
/// ```
#[derive(Clone)]
pub struct LocalClock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl LocalClock {
    /// The system clock.
    pub fn system() -> Self {
        LocalClock(Arc::new(SystemTime::now))
    }

    /// The system clock, `by` ahead (`ahead = true`) or behind.
    pub fn skewed(by: Duration, ahead: bool) -> Self {
        LocalClock(Arc::new(move || {
            let now = SystemTime::now();
            if ahead {
                now + by
            } else {
                now - by
            }
        }))
    }

    /// Any clock.
    pub fn from_fn(f: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        LocalClock(Arc::new(f))
    }

    /// Reads the clock.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

/// The local clock corrected by the last measured offset to the server's.
#[derive(Debug)]
pub(crate) struct ServerClock {
    local: LocalClock,
    offset: Cell<ClockOffset>,
}

impl ServerClock {
    /// Measures the offset once.
    pub(crate) async fn measure(local: LocalClock, store: &MongoStore) -> Result<Self, LockError> {
        let clock = ServerClock {
            local,
            offset: Cell::new(ClockOffset::default()),
        };
        clock.resync(store).await?;
        Ok(clock)
    }

    /// Measures the offset again.
    pub(crate) async fn resync(&self, store: &MongoStore) -> Result<(), LockError> {
        let offset = store.server_clock_offset(|| self.local.now()).await?;
        tracing::debug!(?offset, "server clock offset measured");
        self.offset.set(offset);
        Ok(())
    }

    /// Now, on the server's clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.offset.get().server_time(self.local.now())
    }

    /// How long until `when` (on the server's clock); zero if it has passed.
    pub(crate) fn until(&self, when: SystemTime) -> Duration {
        when.duration_since(self.now()).unwrap_or(Duration::ZERO)
    }
}

impl std::fmt::Debug for LocalClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalClock")
    }
}
