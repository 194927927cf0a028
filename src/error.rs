//! `LockError`: every way a lock request can fail, and what the caller can do about each.
//!
//! Few and named, like etcd's `ErrLocked` and dplock's `ErrAcquireMaxRetries`: a caller matches
//! on the variant, never on a message.

use std::fmt;
use std::time::Duration;

/// The error of every [`LockManager`](crate::LockManager) message.
///
/// New variants, and new fields of a variant, may come: match with a `_` arm and `..` in
/// struct patterns. The variants are made by the crate only:
///
/// ```compile_fail,E0639
/// use actix_mongo_lock::LockError;
/// let made = LockError::AlreadyLocked { resource_id: "report-7".into() };
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// `Lock`: someone holds a live lease on the resource, or another manager's turn in the
    /// resource's line of waiting managers is live (it is about to be granted there). Nothing
    /// was written. Try again later, or send `Acquire`.
    #[error("resource {resource_id:?} is already locked")]
    #[non_exhaustive]
    AlreadyLocked {
        /// The resource asked for.
        resource_id: String,
    },

    /// `Acquire` without a caller-set deadline: the resource stayed held for the whole
    /// configured wait budget, `acquire_max_retries` × `acquire_period` (2.5 s by default). The
    /// name is dplock's `ErrAcquireMaxRetries`, where the budget was that many retries. With
    /// fixed polling it still is; with adaptive polling (the default) the budget is a time, and
    /// the manager made `attempts` tries in it, fewer or more than `max_retries` (a change
    /// stream or a line of waiting managers saves tries; a hand-off within this process makes
    /// none). Try again later, or give the request its own deadline with `Acquire::timeout`.
    #[error("cannot acquire lock on {resource_id:?}: still held when the wait budget of {budget:?} ({max_retries} retries x acquire_period) ran out, after {attempts} attempts")]
    #[non_exhaustive]
    AcquireMaxRetries {
        /// The resource asked for.
        resource_id: String,
        /// The configured maximum, `LockConfig::acquire_max_retries`.
        max_retries: u32,
        /// The wait budget it stands for, [`LockConfig::acquire_budget`](crate::LockConfig::acquire_budget).
        budget: Duration,
        /// The tries this request made at the database.
        attempts: u32,
        /// How long the request waited.
        waited: Duration,
    },

    /// `Acquire` with a caller-set deadline: the resource stayed held until it passed.
    #[error("cannot acquire lock on {resource_id:?} within {waited:?}")]
    #[non_exhaustive]
    AcquireTimeout {
        /// The resource asked for.
        resource_id: String,
        /// How long the request waited.
        waited: Duration,
    },

    /// `Unlock`: the database kept failing through every retry (`unlock_max_retries`, every
    /// `unlock_period`), or did not answer within `LockConfig::request_timeout`, which bounds
    /// the retries together (dplock's `ErrUnlockMaxRetries`). The release is unconfirmed and
    /// nothing else is affected. Cut off by `request_timeout`, the manager goes on releasing in
    /// the background until the lease would have ended anyway; with its retries spent, it
    /// leaves the hold to its lease.
    #[error("cannot unlock after {retries} retries: {last_error}")]
    #[non_exhaustive]
    UnlockMaxRetries {
        /// Retries made after the first attempt.
        retries: u32,
        /// The last database error seen.
        last_error: String,
    },

    /// `Renew`: the hold is no longer live (it expired, was purged, released or taken over).
    /// The caller must stop acting as the holder.
    #[error("lock is lost: it expired, was released or was taken over")]
    LockLost,

    /// The manager is closing or closed (dplock's `ErrMongoDbClosing`), or stopped granting
    /// (`StopGranting`: new `Lock` and `Acquire` answer this, and Acquires still waiting end
    /// with it). Start a new manager if the process is not shutting down.
    #[error("lock manager is closing")]
    Closing,

    /// The resource id is empty, longer than 512 bytes or holds a NUL byte. Nothing was written.
    #[error("invalid resource id: {reason}")]
    #[non_exhaustive]
    InvalidResourceId {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The text is not a lock id this crate issues. Nothing was written.
    #[error("invalid lock id: {reason}")]
    #[non_exhaustive]
    InvalidLockId {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The configuration cannot work; see [`LockConfig::validate`](crate::LockConfig::validate).
    #[error("invalid lock configuration: {reason}")]
    #[non_exhaustive]
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },

    /// The server is one this crate knows cannot keep a lock safe: its `buildInfo` names
    /// FerretDB 1.x, which was measured losing concurrent updates (docs/compatibility.md).
    /// Returned by [`LockManager::connect`](crate::LockManager::connect) and
    /// [`LockManager::with_client`](crate::LockManager::with_client) before anything is written:
    /// the manager did not start and the collection was not touched. Point the manager at
    /// MongoDB, or at a server that passes the atomicity probe (`tests/atomicity.rs`).
    /// [`LockConfig::allow_unsafe_server`](crate::LockConfig::allow_unsafe_server) starts it
    /// anyway, for tests only. Not transient: the same server refuses again.
    #[error("refusing to lock on {server}: {reason}")]
    #[non_exhaustive]
    UnsafeServer {
        /// The server, as its `buildInfo` names it (for instance `FerretDB v1.24.0`).
        server: String,
        /// What is known to go wrong on it.
        reason: String,
    },

    /// A lock document does not have the expected shape (written by something else?).
    #[error("unexpected lock document: {reason}")]
    #[non_exhaustive]
    CorruptDocument {
        /// What is wrong with it.
        reason: String,
    },

    /// The manager actor is gone (its `Addr` could not deliver the message). Start a new one.
    #[error("lock manager has stopped")]
    ManagerStopped,

    /// The database could not be reached, or did not answer within
    /// `LockConfig::request_timeout`, for the whole request or wait: the lock service is down,
    /// not busy (an HTTP service answers 503, not 409). Whether a write landed is unknown; the
    /// manager releases a grant that may have landed. Try again later.
    #[error("lock service unavailable after {waited:?}: {last_error}")]
    #[non_exhaustive]
    Unavailable {
        /// How long the request waited.
        waited: Duration,
        /// The last database error seen (or the request that was not answered in time).
        last_error: String,
    },

    /// The database refused the request or failed while answering it. Transient ones
    /// ([`is_transient`](Self::is_transient)) may be retried. [`DatabaseError`] tells the
    /// server's error code and labels; the driver's own error is its
    /// [`source`](std::error::Error::source).
    #[error("database error: {0}")]
    Database(DatabaseError),

    /// A shared request asked for a limit of holders that cannot be granted
    /// ([`max_holders`](crate::Lock::max_holders) of 0). Nothing was written.
    #[error("invalid limit of shared holders: {max_holders}")]
    #[non_exhaustive]
    InvalidMaxHolders {
        /// The limit asked for.
        max_holders: u32,
    },

    /// A shared request's limit of holders differs from the one the resource's live shared
    /// holds were granted under. Nothing was written; ask with the stored limit, or wait until
    /// the shared holds have ended.
    #[error(
        "resource {resource_id:?} is shared by at most {stored} holders; asked for {requested:?}"
    )]
    #[non_exhaustive]
    MaxHoldersMismatch {
        /// The resource.
        resource_id: String,
        /// The limit stored with the live shared holds.
        stored: u32,
        /// The limit asked for (`None`: no limit).
        requested: Option<u32>,
    },

    /// [`Unlock::shared`](crate::Unlock::shared) named an exclusive hold. Nothing was written.
    #[error("the hold is exclusive, not shared")]
    NotShared,

    /// A [`Revoke`](crate::Revoke) that cannot name a hold: a fence below 1 (grants draw 1 and
    /// up) or a reason longer than 512 bytes. Nothing was written.
    #[error("invalid revocation: {reason}")]
    #[non_exhaustive]
    InvalidRevoke {
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A failure the database (or the driver, on the way to it) reported.
///
/// Its own type, not the driver's: the `mongodb` crate's major version is not part of this
/// crate's API, so a driver upgrade does not break code that matches on [`LockError`]. What a
/// caller decides on is here ([`code`](Self::code), [`has_label`](Self::has_label),
/// [`is_transient`](Self::is_transient)); the driver's error, with every detail it has, is the
/// [`source`](std::error::Error::source), for logs.
#[derive(Debug, Clone)]
pub struct DatabaseError(mongodb::error::Error);

impl DatabaseError {
    /// The server's error code, if the server answered with one: a command error, a write error
    /// or a write concern error (for instance 11000 DuplicateKey, 10107 NotWritablePrimary,
    /// 100 UnsatisfiableWriteConcern). `None` for network errors, timeouts and errors the
    /// driver raised itself.
    ///
    /// ```
    /// use actix_mongo_lock::LockError;
    /// fn is_not_primary(e: &LockError) -> bool {
    ///     matches!(e, LockError::Database(d) if d.code() == Some(10107))
    /// }
    /// ```
    pub fn code(&self) -> Option<i32> {
        server_code(&self.0)
    }

    /// Whether the error carries `label` (for instance `RetryableWriteError`,
    /// `TransientTransactionError`).
    pub fn has_label(&self, label: &str) -> bool {
        self.0.contains_label(label)
    }

    /// Whether the request failed on the way: the connection dropped, or no server could be
    /// selected. Its write may or may not have landed.
    pub fn is_network(&self) -> bool {
        use mongodb::error::ErrorKind;
        matches!(
            self.0.kind.as_ref(),
            ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
                | ErrorKind::ServerSelection { .. }
        )
    }

    /// Whether sending the request again may succeed: everything but errors in the request
    /// itself (invalid arguments, authentication, BSON that cannot be written or read).
    pub fn is_transient(&self) -> bool {
        database_error_is_transient(&self.0)
    }
}

impl fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for DatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl LockError {
    /// Someone else holds the resource (`AlreadyLocked`, `AcquireTimeout`,
    /// `AcquireMaxRetries`): the lock service works and said no. An HTTP service answers 409.
    ///
    /// ```
    /// use actix_mongo_lock::LockError;
    /// // The HTTP status an actix-web handler answers a failed lock request with.
    /// fn status(e: &LockError) -> u16 {
    ///     if e.is_busy() {
    ///         409
    ///     } else if e.is_unavailable() {
    ///         503
    ///     } else {
    ///         500
    ///     }
    /// }
    /// assert_eq!(status(&LockError::ManagerStopped), 503);
    /// assert_eq!(status(&LockError::LockLost), 500);
    /// ```
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            LockError::AlreadyLocked { .. }
                | LockError::AcquireTimeout { .. }
                | LockError::AcquireMaxRetries { .. }
        )
    }

    /// The lock service cannot answer now: the database is unreachable or slow (`Unavailable`,
    /// transient `Database` errors, an unconfirmed `UnlockMaxRetries`), or this manager is
    /// shutting down (`Closing`, `ManagerStopped`). An HTTP service answers 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            LockError::Unavailable { .. }
            | LockError::UnlockMaxRetries { .. }
            | LockError::Closing
            | LockError::ManagerStopped => true,
            LockError::Database(e) => e.is_transient(),
            _ => false,
        }
    }

    /// Sending the same request again later may succeed: the resource was busy, or the database
    /// was unreachable or failed transiently. `false` for bad input, a lost lock, a closing
    /// manager (start a new one) and errors in the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            LockError::Closing | LockError::ManagerStopped => false,
            LockError::Database(e) => e.is_transient(),
            other => other.is_busy() || other.is_unavailable(),
        }
    }
}

impl LockError {
    /// Whether the request that failed with this error may have been applied, and may succeed
    /// if sent again: the database was unreachable, did not answer in time, or failed
    /// transiently (everything but errors in the request itself). A grant that failed so is
    /// released in the background, and a wait or an Unlock tries again.
    pub(crate) fn outcome_unknown(&self) -> bool {
        match self {
            LockError::Unavailable { .. } => true,
            LockError::Database(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Whether retrying a request that failed with `e` may succeed: everything but errors in the
/// request itself.
fn database_error_is_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    !matches!(
        e.kind.as_ref(),
        ErrorKind::InvalidArgument { .. }
            | ErrorKind::Authentication { .. }
            | ErrorKind::BsonSerialization(_)
            | ErrorKind::BsonDeserialization(_)
    )
}

/// The manager's mailbox could not deliver the message or its answer: the manager stopped.
/// Lets `addr.send(message).await??` work in a function returning `Result<_, LockError>`.
impl From<actix::MailboxError> for LockError {
    fn from(_: actix::MailboxError) -> Self {
        LockError::ManagerStopped
    }
}

impl LockError {
    /// The driver's error `e` as a [`LockError::Database`].
    pub(crate) fn database(e: mongodb::error::Error) -> Self {
        LockError::Database(DatabaseError(e))
    }
}

/// `.db()?` on a driver call: its error as a [`LockError::Database`]. Not a `From` impl, so the
/// driver's error type stays out of the public API.
pub(crate) trait DriverResult<T> {
    fn db(self) -> Result<T, LockError>;
}

impl<T> DriverResult<T> for Result<T, mongodb::error::Error> {
    fn db(self) -> Result<T, LockError> {
        self.map_err(LockError::database)
    }
}

/// The server's error code in the driver's error `e`: a command error, a write error or a write
/// concern error.
pub(crate) fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}
