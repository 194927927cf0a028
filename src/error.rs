//! `LockError`: every way a lock request can fail, and what the caller can do about each.
//!
//! Few and named, like etcd's `ErrLocked` and dplock's `ErrAcquireMaxRetries`: a caller matches
//! on the variant, never on a message.

use std::time::Duration;

/// The error of every [`LockManager`](crate::LockManager) message.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// `Lock`: someone holds a live lease on the resource. Try again later, or send `Acquire`.
    #[error("resource {resource_id:?} is already locked")]
    AlreadyLocked {
        /// The resource asked for.
        resource_id: String,
    },

    /// `Acquire` with the configured budget: the resource stayed held for the whole budget of
    /// `acquire_max_retries` pauses of `acquire_period` (dplock's `ErrAcquireMaxRetries`). Try
    /// again later or raise the budget in `LockConfig`.
    #[error("cannot acquire lock on {resource_id:?}: still held when the maximum number of retries ({max_retries}) was reached after {waited:?}")]
    AcquireMaxRetries {
        /// The resource asked for.
        resource_id: String,
        /// The configured maximum, `LockConfig::acquire_max_retries`.
        max_retries: u32,
        /// How long the request waited.
        waited: Duration,
    },

    /// `Acquire` with a caller-set deadline: the resource stayed held until it passed.
    #[error("cannot acquire lock on {resource_id:?} within {waited:?}")]
    AcquireTimeout {
        /// The resource asked for.
        resource_id: String,
        /// How long the request waited.
        waited: Duration,
    },

    /// `Unlock`: the database kept failing through every retry, or did not answer within
    /// `LockConfig::request_timeout` (dplock's `ErrUnlockMaxRetries`). The release is
    /// unconfirmed: the manager keeps trying in the background until the lease would have ended
    /// anyway, and nothing else is affected.
    #[error("cannot unlock after {retries} retries: {last_error}")]
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

    /// The manager is closing or closed (dplock's `ErrMongoDbClosing`). Start a new manager.
    #[error("lock manager is closing")]
    Closing,

    /// The resource id is empty, longer than 512 bytes or holds a NUL byte. Nothing was written.
    #[error("invalid resource id: {reason}")]
    InvalidResourceId {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The text is not a lock id this crate issues. Nothing was written.
    #[error("invalid lock id: {reason}")]
    InvalidLockId {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The configuration cannot work; see [`LockConfig::validate`](crate::LockConfig::validate).
    #[error("invalid lock configuration: {reason}")]
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },

    /// A lock document does not have the expected shape (written by something else?).
    #[error("unexpected lock document: {reason}")]
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
    Unavailable {
        /// How long the request waited.
        waited: Duration,
        /// The last database error seen (or the request that was not answered in time).
        last_error: String,
    },

    /// The database refused the request or failed while answering it. Transient ones
    /// ([`is_transient`](Self::is_transient)) may be retried.
    #[error("database error: {0}")]
    Database(#[from] mongodb::error::Error),
}

impl LockError {
    /// Someone else holds the resource (`AlreadyLocked`, `AcquireTimeout`,
    /// `AcquireMaxRetries`): the lock service works and said no. An HTTP service answers 409.
    ///
    /// ```
    /// use actix_mongo_lock::LockError;
    /// let busy = LockError::AlreadyLocked { resource_id: "report-7".into() };
    /// assert!(busy.is_busy() && !busy.is_unavailable());
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
            LockError::Database(e) => database_error_is_transient(e),
            _ => false,
        }
    }

    /// Sending the same request again later may succeed: the resource was busy, or the database
    /// was unreachable or failed transiently. `false` for bad input, a lost lock, a closing
    /// manager (start a new one) and errors in the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            LockError::Closing | LockError::ManagerStopped => false,
            LockError::Database(e) => database_error_is_transient(e),
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
            LockError::Database(e) => database_error_is_transient(e),
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
