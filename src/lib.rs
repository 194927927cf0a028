//! # actix-mongo-lock
//!
//! A distributed lock manager for [actix](https://actix.rs) applications, backed by MongoDB.
//! Many processes, each running a [`LockManager`] actor, coordinate through one MongoDB
//! collection: a resource is held by at most one of them at a time, every hold has a lease
//! (30 s by default) and a fencing token, and each manager's child purger actor clears expired
//! holds.
//!
//! It grows from ONS dp-mongodb's `dplock` (over square/mongo-lock), keeping its semantics,
//! defaults and document schema, so Go and Rust services can contend for the same resources.
//!
//! ## Quick start
//!
//! ```no_run
//! use actix_mongo_lock::{Acquire, Close, Lock, LockConfig, LockError, LockManager, Unlock};
//!
//! #[actix_rt::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let uri = std::env::var("MONGODB_URI")?;
//!     let manager = LockManager::connect(&uri, LockConfig::new("invoices")).await?;
//!
//!     // Wait (up to 2.5 s by default) until the resource is free.
//!     let grant = manager.send(Acquire::new("invoice-42")).await??;
//!
//!     // One try: someone else holds it now.
//!     let refused = manager.send(Lock::new("invoice-42")).await?;
//!     assert!(matches!(refused, Err(LockError::AlreadyLocked { .. })));
//!
//!     manager.send(Unlock::new(grant.lock_id)).await??;
//!     manager.send(Close).await?; // answers every message in flight, releases what is held, stops the purger
//!     Ok(())
//! }
//! ```
//!
//! Every message but the three of a shutdown answers `Result<_, LockError>`; the outer
//! `Result` of `send` is actix's mailbox error. The shutdown's cannot fail: [`StopGranting`]
//! (phase 1: no more grants) answers `()`, [`AwaitReleased`] (phase 1's wait, until every hold
//! granted here has ended, within its timeout) a [`ReleasedReport`], and [`Close`] (phase 2, the
//! drain) a [`CloseReport`]:
//!
//! ```no_run
//! # async fn demo(manager: actix::Addr<actix_mongo_lock::LockManager>) -> Result<(), actix::MailboxError> {
//! use std::time::Duration;
//! use actix_mongo_lock::{AwaitReleased, Close, StopGranting};
//!
//! manager.send(StopGranting).await?; // on SIGTERM: running work goes on
//! let released = manager.send(AwaitReleased::within(Duration::from_secs(10))).await?;
//! let closed = manager.send(Close).await?; // releases what is still held
//! assert_eq!((released.still_held, closed.unreleased), (0, 0));
//! # Ok(()) }
//! ```
//!
//! See `docs/guide.md` for configuration, errors and shutdown.

#![warn(missing_docs)]

mod clock;
mod config;
mod core;
mod drain;
pub mod election;
mod error;
mod guard;
mod line;
mod local;
mod manager;
mod messages;
pub mod metrics;
mod purger;
mod reply;
mod server;
mod store;

pub use clock::LocalClock;
pub use config::{
    LockConfig, DEFAULT_ACQUIRE_MAX_RETRIES, DEFAULT_ACQUIRE_PERIOD, DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_PURGER_PERIOD, DEFAULT_REQUEST_TIMEOUT, DEFAULT_TTL, DEFAULT_TURN_STREAK,
    DEFAULT_UNLOCK_MAX_RETRIES, DEFAULT_UNLOCK_PERIOD, MAX_TTL, MIN_TTL,
};
pub use error::{DatabaseError, LockError};
pub use guard::LockGuard;
pub use manager::LockManager;
#[cfg(feature = "serde")]
pub use messages::rfc3339;
pub use messages::{
    Acquire, AwaitReleased, Close, CloseReport, HoldMode, HoldStatus, KeepAlive, LeaseLost,
    LineStatus, ListHolds, Lock, LockGrant, LockId, LostReason, Polling, ReleasedReport, Renew,
    ResourceId, Revoke, RevokeOutcome, Status, StopGranting, Unlock, UnlockOutcome,
    MAX_RESOURCE_ID_LEN,
};
/// The driver's write concern, for [`LockConfig::write_concern`].
pub use mongodb::options::WriteConcern;
pub use reply::Reply;
