//! Time as the server sees it.
//!
//! Leases are compared on the server (the grant's filter takes over a hold whose `expiresAt` is
//! strictly before `now`, a `$lt`), but `now` is sent by the client, because the update forms
//! that read the server's own clock (`$$NOW`) are not available on every server this crate
//! supports. So each manager measures how far the server's clock (`hello`'s `localTime`) is from
//! its own, at start and at every purge, and writes every date on the server's clock. A manager
//! whose clock is 10 s fast then neither takes a live lock (it does not think leases ended
//! early) nor keeps a dead one.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::LockError;

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
#[derive(Debug, Clone)]
pub(crate) struct ServerClock {
    local: LocalClock,
    offset: Cell<ClockOffset>,
}

impl ServerClock {
    /// Measures the offset once; `read_server` reads the server's clock (one round trip).
    pub(crate) async fn measure(
        local: LocalClock,
        read_server: impl Future<Output = Result<SystemTime, LockError>>,
    ) -> Result<Self, LockError> {
        let clock = ServerClock {
            local,
            offset: Cell::new(ClockOffset::default()),
        };
        clock.resync(read_server).await?;
        Ok(clock)
    }

    /// Measures the offset again: the server's reading is taken as made halfway through the
    /// round trip of `read_server` (a future does nothing until awaited, so the round trip
    /// starts here).
    pub(crate) async fn resync(
        &self,
        read_server: impl Future<Output = Result<SystemTime, LockError>>,
    ) -> Result<(), LockError> {
        let sent = Instant::now();
        let local_sent = self.local.now();
        let server = read_server.await?;
        let offset = ClockOffset::between(local_sent + sent.elapsed() / 2, server);
        tracing::debug!(?offset, "server clock offset measured");
        self.offset.set(offset);
        Ok(())
    }

    /// The last measured offset.
    pub(crate) fn offset(&self) -> ClockOffset {
        self.offset.get()
    }

    /// Adopts an offset measured elsewhere (by the purger).
    pub(crate) fn set_offset(&self, offset: ClockOffset) {
        self.offset.set(offset);
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

/// The difference between the server's clock and the local one: server = local + offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ClockOffset {
    ahead: Duration,
    behind: Duration,
}

impl ClockOffset {
    /// The offset that turns `local` into `server`.
    pub(crate) fn between(local: SystemTime, server: SystemTime) -> Self {
        match server.duration_since(local) {
            Ok(ahead) => ClockOffset {
                ahead,
                behind: Duration::ZERO,
            },
            Err(e) => ClockOffset {
                ahead: Duration::ZERO,
                behind: e.duration(),
            },
        }
    }

    /// The server's time for a local reading.
    pub(crate) fn server_time(&self, local: SystemTime) -> SystemTime {
        local + self.ahead - self.behind
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{ClockOffset, LocalClock, ServerClock};

    #[test]
    fn an_offset_turns_a_local_reading_into_the_servers() {
        let local = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for server in [
            local + Duration::from_millis(10_250),
            local - Duration::from_millis(10_250),
            local,
        ] {
            let offset = ClockOffset::between(local, server);
            assert_eq!(offset.server_time(local), server);
            let later = local + Duration::from_secs(7);
            assert_eq!(offset.server_time(later), server + Duration::from_secs(7));
        }
        assert_eq!(ClockOffset::between(local, local), ClockOffset::default());
    }

    #[actix_rt::test]
    async fn a_server_clock_corrects_a_skewed_local_clock() {
        let skew = Duration::from_secs(10);
        let fast = LocalClock::skewed(skew, true);
        let clock = ServerClock::measure(fast, async { Ok(SystemTime::now()) })
            .await
            .expect("the reading succeeds");
        let error = match clock.now().duration_since(SystemTime::now()) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        assert!(error < Duration::from_secs(1), "off by {error:?}");
        let in_a_minute = clock.now() + Duration::from_secs(60);
        assert!(clock.until(in_a_minute) > Duration::from_secs(59));
        assert_eq!(
            clock.until(SystemTime::now() - Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
