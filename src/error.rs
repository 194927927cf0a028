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

    /// `Acquire`: the resource stayed held for the whole wait budget (dplock's
    /// `ErrAcquireMaxRetries`). Try again later or raise the budget in `LockConfig`.
    #[error("cannot acquire lock on {resource_id:?}, maximum number of retries ({retries}) has been reached")]
    AcquireMaxRetries {
        /// The resource asked for.
        resource_id: String,
        /// Retries made after the first attempt.
        retries: u32,
    },

    /// `Acquire` with a caller-set deadline: the resource stayed held until it passed.
    #[error("cannot acquire lock on {resource_id:?} within {waited:?}")]
    AcquireTimeout {
        /// The resource asked for.
        resource_id: String,
        /// How long the request waited.
        waited: Duration,
    },

    /// `Unlock`: the database kept failing through every retry (dplock's
    /// `ErrUnlockMaxRetries`). The hold ends when its lease does; nothing else is affected.
    #[error("cannot unlock, maximum number of retries ({retries}) has been reached: {last_error}")]
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

    /// The database could not be reached or refused the request. Transient ones may be retried.
    #[error("database error: {0}")]
    Database(#[from] mongodb::error::Error),
}
