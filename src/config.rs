//! `LockConfig`: every tunable of a [`LockManager`](crate::LockManager) in one place.
//!
//! The defaults are those of dplock (ONS dp-mongodb's Go lock package): a 30 s lease, a purge
//! every 5 minutes, Acquire retrying every 250 ms up to 10 times, Unlock retrying every 5 ms up
//! to 100 times. Each field says what it trades off, so a change is a decision rather than a
//! guess.

use std::fmt;
use std::time::Duration;

use mongodb::options::{Acknowledgment, WriteConcern};

use crate::clock::LocalClock;
use crate::error::LockError;

/// dplock's `TTL`: the lease of every grant.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// dplock's `PurgerPeriod`: time between purges of expired holds.
pub const DEFAULT_PURGER_PERIOD: Duration = Duration::from_secs(5 * 60);
/// dplock's `AcquirePeriod`: pause between Acquire attempts.
pub const DEFAULT_ACQUIRE_PERIOD: Duration = Duration::from_millis(250);
/// dplock's `AcquireMaxRetries`: Acquire attempts after the first.
pub const DEFAULT_ACQUIRE_MAX_RETRIES: u32 = 10;
/// dplock's `UnlockPeriod`: pause between Unlock retries.
pub const DEFAULT_UNLOCK_PERIOD: Duration = Duration::from_millis(5);
/// dplock's `UnlockMaxRetries`: Unlock retries after the first attempt.
pub const DEFAULT_UNLOCK_MAX_RETRIES: u32 = 100;

/// The default bound on every single database request; see [`LockConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The default bound on `Close`; see [`LockConfig::close_timeout`].
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The default [`LockConfig::turn_streak`]: a manager may serve up to 3 of its own waiters in a
/// row while other managers wait in line.
pub const DEFAULT_TURN_STREAK: u32 = 3;
/// The shortest lease: shorter ones would expire before the grant's reply arrives.
pub const MIN_TTL: Duration = Duration::from_millis(10);
/// The longest lease: one year. "Forever" is not a lease; a dead holder would keep the resource.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The longest lock family name: it becomes part of a collection name.
const MAX_NAME_LEN: usize = 64;

/// Configuration of one [`LockManager`](crate::LockManager).
///
/// Made with [`LockConfig::new`] and the builder methods. The fields can be read (and set), but
/// the struct is `#[non_exhaustive]`: new settings come as new fields with defaults, so no code
/// outside the crate builds it as a struct literal, and adding one breaks nobody:
///
/// ```compile_fail,E0639
/// use actix_mongo_lock::LockConfig;
/// let config = LockConfig { owner: "me".into(), ..LockConfig::new("orders") };
/// ```
///
/// ```
/// use std::time::Duration;
/// use actix_mongo_lock::LockConfig;
///
/// let config = LockConfig::new("orders")
///     .database("billing")
///     .ttl(Duration::from_secs(10))
///     .owner("invoice-worker");
/// assert_eq!(config.collection_name(), "orders_locks");
/// assert_eq!(config.acquire_max_retries, 10);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct LockConfig {
    /// The lock family. The collection is `<name>_locks` and every stored resource is
    /// `<name>-<resource_id>`, as in dplock. Managers that must exclude each other share it.
    pub name: String,
    /// Database holding the lock collection. Default `"locks"`.
    pub database: String,
    /// Lease of every grant. Default 30 s. Shorter frees the locks of a crashed holder sooner;
    /// longer tolerates longer pauses of a live holder (GC, network) before it loses its lock.
    pub ttl: Duration,
    /// Time between purges of expired holds by the manager's purger. Default 5 min.
    /// Expired holds are taken over by the next grant anyway; purging keeps the collection tidy
    /// and `Status` honest.
    pub purger_period: Duration,
    /// Paces a waiting Acquire. Default 250 ms. With fixed polling, the pause between two
    /// attempts; with adaptive polling (the default), the pauses are fractions of it: see
    /// [`Polling::Adaptive`](crate::Polling::Adaptive). Shorter answers sooner, costs more
    /// database requests while waiting. Not zero.
    pub acquire_period: Duration,
    /// Acquire attempts after the first before `AcquireMaxRetries`. Default 10, so Acquire
    /// waits about `acquire_period * acquire_max_retries` = 2.5 s by default.
    pub acquire_max_retries: u32,
    /// Pause between Unlock retries after a database error. Default 5 ms.
    pub unlock_period: Duration,
    /// Unlock retries after the first attempt before `UnlockMaxRetries`. Default 100. The hold
    /// then lives until its lease ends.
    pub unlock_max_retries: u32,
    /// The longest the manager waits for any one database request (a grant attempt, a release,
    /// a renewal, a read). Default 5 s. A request not answered by then counts as failed with its
    /// outcome unknown: a grant that may have landed is released in the background. `Unlock`
    /// answers within it (retrying inside it), and `Status`, `ListHolds`, `Renew` and `Lock`
    /// answer [`LockError::Unavailable`] after it when the database is gone. Shorter tells
    /// callers sooner that the database is down; longer tolerates a slower database.
    pub request_timeout: Duration,
    /// The longest `Close` takes. Default 5 s. Close first waits for the messages in flight,
    /// then releases the holds still held; a purge in progress is abandoned (it only tidies up).
    /// Holds it could not release by then end with their leases, and its report counts them.
    pub close_timeout: Duration,
    /// How many grants in a row a manager may make on one resource while other managers wait
    /// in its line: after a grant, while it has more waiters of its own, it keeps the turn for
    /// them (without a database round trip across processes) up to this many grants, then hands
    /// the turn to the next manager in line. Default 3 ([`DEFAULT_TURN_STREAK`]). 1 is strict
    /// turns, manager after manager: fairest, but every grant under contention between
    /// processes is then a hand-off between processes, the slowest kind. Larger trades a waiter
    /// elsewhere's wait (at most this many holds per manager ahead of it) for throughput.
    /// Not zero.
    pub turn_streak: u32,
    /// Who holds, stored with every grant (square/mongo-lock's `owner`). Default: the process
    /// name and id.
    pub owner: String,
    /// Where the holder runs, stored with every grant. Default: the machine's hostname.
    pub host: String,
    /// The local clock. Default [`std::time::SystemTime::now`]. Leases are computed on the server's clock:
    /// the manager measures the offset between this clock and the server's, so a skewed local
    /// clock neither steals a live lock nor keeps a dead one. Replaceable so tests can skew it.
    pub clock: LocalClock,
    /// The write concern of every write to the lock collection: grants, releases, renewals,
    /// purges, the line of waiting managers, index creation. Default
    /// `Some(WriteConcern::majority())`, `{w: "majority"}` without `j` or `wtimeout`, on every
    /// server and whatever the client's URI asks for.
    ///
    /// On a replica set a grant acknowledged by the primary alone (`w: 1`) can be rolled back
    /// at a failover: the new primary never saw it and grants the resource again, with the same
    /// fence, while the first holder goes on working. A majority-acknowledged write survives
    /// any failover, so with the default a grant, a release or a renewal that was answered
    /// stays answered. The cost: every write waits until a majority of the set has it (on a
    /// healthy set a round trip from the primary to its nearest secondary), and while no
    /// majority of the data-bearing members can acknowledge (a primary-secondary-arbiter set
    /// with its secondary down, secondaries far behind) writes are not acknowledged, so
    /// `Lock`, `Acquire`, `Unlock` and `Renew` answer [`LockError::Unavailable`] after
    /// `request_timeout` instead of granting what a failover could take back. On a standalone
    /// MongoDB `w: "majority"` waits for the journal when journaling runs, so a grant survives
    /// a crash of the server too. No `wtimeout` and no `j`: every request is already bounded by
    /// [`request_timeout`](Self::request_timeout), and a write whose write concern timed out
    /// is not undone (its outcome is as unknown as an unanswered one); with `w: "majority"`
    /// MongoDB waits for the journal on a majority unless the set was configured not to
    /// (`writeConcernMajorityJournalDefault: false`).
    ///
    /// `Some(other)` sends `other` instead, as it is (`WriteConcern::nodes(1)` trades the
    /// failover guarantee for latency). `None` sends what the client's own options or URI ask
    /// for (`w=...`), or nothing, which leaves it to the server's default. An unacknowledged
    /// write concern (`w: 0`) is refused by [`validate`](Self::validate): a lock must know
    /// whether it was granted.
    pub write_concern: Option<WriteConcern>,
    /// Starts a manager on a server known not to keep a lock safe. Default `false`: a manager
    /// refuses to start with [`LockError::UnsafeServer`] on one (FerretDB 1.x, which was
    /// measured losing concurrent updates; see `docs/compatibility.md`), before it writes
    /// anything. For tests only (for instance to run the atomicity probe, `tests/atomicity.rs`,
    /// through the crate on such a server): `true` starts anyway, with a warning in the log,
    /// and mutual exclusion and fences are then only as good as that server.
    pub allow_unsafe_server: bool,
}

impl LockConfig {
    /// A configuration with dplock's defaults for the lock family `name`.
    pub fn new(name: impl Into<String>) -> Self {
        LockConfig {
            name: name.into(),
            database: "locks".to_owned(),
            ttl: DEFAULT_TTL,
            purger_period: DEFAULT_PURGER_PERIOD,
            acquire_period: DEFAULT_ACQUIRE_PERIOD,
            acquire_max_retries: DEFAULT_ACQUIRE_MAX_RETRIES,
            unlock_period: DEFAULT_UNLOCK_PERIOD,
            unlock_max_retries: DEFAULT_UNLOCK_MAX_RETRIES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            turn_streak: DEFAULT_TURN_STREAK,
            owner: default_owner(),
            host: default_host(),
            clock: LocalClock::system(),
            write_concern: Some(WriteConcern::majority()),
            allow_unsafe_server: false,
        }
    }

    /// Sets [`database`](Self::database).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = database.into();
        self
    }

    /// Sets [`ttl`](Self::ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets [`purger_period`](Self::purger_period).
    pub fn purger_period(mut self, period: Duration) -> Self {
        self.purger_period = period;
        self
    }

    /// Sets [`acquire_period`](Self::acquire_period) and
    /// [`acquire_max_retries`](Self::acquire_max_retries).
    pub fn acquire_retries(mut self, period: Duration, max_retries: u32) -> Self {
        self.acquire_period = period;
        self.acquire_max_retries = max_retries;
        self
    }

    /// Sets [`unlock_period`](Self::unlock_period) and
    /// [`unlock_max_retries`](Self::unlock_max_retries).
    pub fn unlock_retries(mut self, period: Duration, max_retries: u32) -> Self {
        self.unlock_period = period;
        self.unlock_max_retries = max_retries;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`close_timeout`](Self::close_timeout).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Sets [`turn_streak`](Self::turn_streak).
    pub fn turn_streak(mut self, grants: u32) -> Self {
        self.turn_streak = grants;
        self
    }

    /// Sets [`owner`](Self::owner).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Sets [`host`](Self::host).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Sets [`clock`](Self::clock).
    pub fn clock(mut self, clock: LocalClock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets [`write_concern`](Self::write_concern): a write concern, or `None` for the
    /// client's own.
    ///
    /// ```
    /// use actix_mongo_lock::{LockConfig, WriteConcern};
    ///
    /// let config = LockConfig::new("orders");
    /// assert_eq!(config.write_concern, Some(WriteConcern::majority()));
    /// let faster = config.clone().write_concern(WriteConcern::nodes(1));
    /// assert_eq!(faster.write_concern, Some(WriteConcern::nodes(1)));
    /// let the_clients = config.write_concern(None);
    /// assert_eq!(the_clients.write_concern, None);
    /// ```
    pub fn write_concern(mut self, write_concern: impl Into<Option<WriteConcern>>) -> Self {
        self.write_concern = write_concern.into();
        self
    }

    /// Sets [`allow_unsafe_server`](Self::allow_unsafe_server). For tests only.
    pub fn allow_unsafe_server(mut self, allow: bool) -> Self {
        self.allow_unsafe_server = allow;
        self
    }

    /// The collection the locks live in: `<name>_locks`.
    pub fn collection_name(&self) -> String {
        format!("{}_locks", self.name)
    }

    /// The acquire wait budget dplock implies: `acquire_period * acquire_max_retries`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use actix_mongo_lock::LockConfig;
    ///
    /// assert_eq!(LockConfig::new("orders").acquire_budget(), Duration::from_millis(2500));
    /// ```
    pub fn acquire_budget(&self) -> Duration {
        self.acquire_period.saturating_mul(self.acquire_max_retries)
    }

    /// Checks the configuration; [`LockManager::with_client`](crate::LockManager::with_client)
    /// and [`LockManager::connect`](crate::LockManager::connect) call it.
    pub fn validate(&self) -> Result<(), LockError> {
        let invalid = |reason: String| Err(LockError::InvalidConfig { reason });
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return invalid(format!(
                "name must be 1 to {MAX_NAME_LEN} bytes, got {}",
                self.name.len()
            ));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return invalid(format!(
                "name {:?} may hold only ASCII letters, digits, '_' and '-'",
                self.name
            ));
        }
        if self.database.is_empty()
            || self
                .database
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'))
        {
            return invalid(format!("database {:?} is not a valid name", self.database));
        }
        check_ttl(self.ttl)?;
        if self.request_timeout.is_zero() {
            return invalid("request_timeout must not be zero".to_owned());
        }
        if self.close_timeout.is_zero() {
            return invalid("close_timeout must not be zero".to_owned());
        }
        if self.purger_period.is_zero() {
            return invalid("purger_period must not be zero".to_owned());
        }
        if self.acquire_period.is_zero() {
            return invalid("acquire_period must not be zero".to_owned());
        }
        if self.turn_streak == 0 {
            return invalid("turn_streak must be at least 1".to_owned());
        }
        if let Some(write_concern) = &self.write_concern {
            if write_concern.w == Some(Acknowledgment::Nodes(0)) {
                return invalid(format!(
                    "write_concern {write_concern:?} is unacknowledged: a grant must be \
                     acknowledged to be known"
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for LockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockConfig")
            .field("name", &self.name)
            .field("database", &self.database)
            .field("ttl", &self.ttl)
            .field("purger_period", &self.purger_period)
            .field("acquire_period", &self.acquire_period)
            .field("acquire_max_retries", &self.acquire_max_retries)
            .field("unlock_period", &self.unlock_period)
            .field("unlock_max_retries", &self.unlock_max_retries)
            .field("request_timeout", &self.request_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("turn_streak", &self.turn_streak)
            .field("owner", &self.owner)
            .field("host", &self.host)
            .field("write_concern", &self.write_concern)
            .field("allow_unsafe_server", &self.allow_unsafe_server)
            .finish_non_exhaustive()
    }
}

/// Checks a lease, from the configuration or a request: [`MIN_TTL`] to [`MAX_TTL`].
pub(crate) fn check_ttl(ttl: Duration) -> Result<(), LockError> {
    if (MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Ok(());
    }
    Err(LockError::InvalidConfig {
        reason: format!("ttl must be from {MIN_TTL:?} to {MAX_TTL:?} (one year), got {ttl:?}"),
    })
}

fn default_owner() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "actix-mongo-lock".to_owned());
    format!("{exe}:{}", std::process::id())
}

fn default_host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::LockConfig;
    use crate::error::LockError;

    fn refused(config: LockConfig, mentions: &str) {
        match config.validate() {
            Err(LockError::InvalidConfig { reason }) => {
                assert!(reason.contains(mentions), "{reason:?} lacks {mentions:?}")
            }
            other => panic!("{config:?} answered {other:?}"),
        }
    }

    #[test]
    fn the_defaults_are_valid_and_dplocks() {
        let config = LockConfig::new("orders");
        assert!(config.validate().is_ok());
        assert_eq!(config.ttl, Duration::from_secs(30));
        assert_eq!(config.purger_period, Duration::from_secs(300));
        assert_eq!(config.acquire_period, Duration::from_millis(250));
        assert_eq!(config.acquire_max_retries, 10);
        assert_eq!(config.unlock_period, Duration::from_millis(5));
        assert_eq!(config.unlock_max_retries, 100);
        assert_eq!(config.acquire_budget(), Duration::from_millis(2500));
        assert!(!config.allow_unsafe_server, "unsafe servers are refused");
    }

    #[test]
    fn the_bounds_the_turn_streak_and_the_longest_lease_are_what_the_docs_say() {
        let config = LockConfig::new("orders");
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(config.close_timeout, Duration::from_secs(5));
        assert_eq!(config.turn_streak, 3);
        assert_eq!(config.database, "locks");
        let year = Duration::from_secs(365 * 24 * 60 * 60);
        assert!(LockConfig::new("orders").ttl(year).validate().is_ok());
        refused(
            LockConfig::new("orders").ttl(year + Duration::from_millis(1)),
            "ttl",
        );
    }

    #[test]
    fn names_are_checked() {
        refused(LockConfig::new(""), "name");
        refused(LockConfig::new("a".repeat(65)), "name");
        assert!(LockConfig::new("a".repeat(64)).validate().is_ok());
        for bad in ["orders.v2", "a b", "naïve", "x$"] {
            refused(LockConfig::new(bad), "name");
        }
        assert!(LockConfig::new("Orders_v2-eu").validate().is_ok());
        for bad in ["", "a.b", "a/b", "a b", "a$", "a\"b", "a\0b", "a\\b"] {
            refused(LockConfig::new("orders").database(bad), "database");
        }
    }

    #[test]
    fn durations_are_checked() {
        refused(
            LockConfig::new("orders").ttl(Duration::from_millis(9)),
            "ttl",
        );
        assert!(LockConfig::new("orders")
            .ttl(Duration::from_millis(10))
            .validate()
            .is_ok());
        refused(
            LockConfig::new("orders").purger_period(Duration::ZERO),
            "purger_period",
        );
        refused(
            LockConfig::new("orders").acquire_retries(Duration::ZERO, 3),
            "acquire_period",
        );
        let no_retries = LockConfig::new("orders")
            .acquire_retries(Duration::from_millis(1), 0)
            .unlock_retries(Duration::ZERO, 0);
        assert!(no_retries.validate().is_ok(), "retries may be zero");
    }

    #[test]
    fn the_write_concern_is_majority_by_default_and_must_be_acknowledged() {
        use mongodb::options::WriteConcern;
        let config = LockConfig::new("orders");
        assert_eq!(config.write_concern, Some(WriteConcern::majority()));
        refused(
            LockConfig::new("orders").write_concern(WriteConcern::nodes(0)),
            "unacknowledged",
        );
        for acknowledged in [
            Some(WriteConcern::nodes(1)),
            Some(WriteConcern::custom("dc-aware")),
            Some(WriteConcern::builder().journal(true).build()),
            None,
        ] {
            let config = LockConfig::new("orders").write_concern(acknowledged.clone());
            assert!(config.validate().is_ok(), "{acknowledged:?}");
        }
    }

    #[test]
    fn a_turn_streak_is_at_least_one_grant() {
        refused(LockConfig::new("orders").turn_streak(0), "turn_streak");
        assert!(LockConfig::new("orders").turn_streak(1).validate().is_ok());
    }
}
