//! The messages a [`LockManager`](crate::LockManager) answers, and the typed values they carry.
//!
//! Messages are small structs, as in the actix examples; each names its reply type. Resource
//! ids travel as plain strings and are checked by the manager, so bad input comes back as
//! [`LockError::InvalidResourceId`] instead of being impossible to send.

use std::fmt;
use std::time::{Duration, SystemTime};

use actix::{Message, Recipient};
use tracing::Span;

use crate::error::LockError;

/// The longest resource id, in bytes.
pub const MAX_RESOURCE_ID_LEN: usize = 512;

/// A checked resource id: 1 to 512 bytes of UTF-8 without NUL.
///
/// ```
/// use actix_mongo_lock::{LockError, ResourceId};
///
/// assert_eq!(ResourceId::new("invoice-42").unwrap().as_str(), "invoice-42");
/// assert!(matches!(ResourceId::new(""), Err(LockError::InvalidResourceId { .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(transparent))]
pub struct ResourceId(String);

impl ResourceId {
    /// Checks `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, LockError> {
        let id = id.into();
        let reason = if id.is_empty() {
            "it is empty"
        } else if id.len() > MAX_RESOURCE_ID_LEN {
            "it is longer than 512 bytes"
        } else if id.contains('\0') {
            "it holds a NUL byte"
        } else {
            return Ok(ResourceId(id));
        };
        Err(LockError::InvalidResourceId { reason })
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of one hold: a random UUID v4, unguessable, so only the holder can release it.
///
/// Knowing a lock id is the right to unlock; keep it out of logs you share.
///
/// ```
/// use actix_mongo_lock::{LockError, LockId};
///
/// let id = LockId::generate();
/// assert_eq!(LockId::parse(&id.to_string()).unwrap(), id);
/// assert!(matches!(LockId::parse("1234"), Err(LockError::InvalidLockId { .. })));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockId(String);

impl LockId {
    /// A fresh random id.
    pub fn generate() -> Self {
        LockId(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    /// Parses an id previously issued by this crate (a lowercase hyphenated UUID v4).
    pub fn parse(text: &str) -> Result<Self, LockError> {
        let invalid = |reason| Err(LockError::InvalidLockId { reason });
        let Ok(uuid) = uuid::Uuid::try_parse(text) else {
            return invalid("it is not a UUID");
        };
        if uuid.get_version_num() != 4 {
            return invalid("it is not a version 4 UUID");
        }
        let canonical = uuid.hyphenated().to_string();
        if canonical != text {
            return invalid("it is not in lowercase hyphenated form");
        }
        Ok(LockId(canonical))
    }

    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Debug hides most of the id: a log line must not hand out the right to unlock.
impl fmt::Debug for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockId({}…)", &self.0[..8])
    }
}

/// A granted hold.
///
/// With the `serde` feature (on by default) it serialises without its lock id: knowing the id
/// is the right to unlock, so it never leaves the process by accident. Times serialise as serde
/// does `SystemTime` (`{secs_since_epoch, nanos_since_epoch}`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LockGrant {
    /// The id that releases (and renews) this hold.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub lock_id: LockId,
    /// The resource held.
    pub resource_id: ResourceId,
    /// Fencing token: strictly increasing per resource across every grant, release, expiry and
    /// purge. Pass it to a downstream store so it can refuse writes from a holder whose lease
    /// already went to someone with a higher fence.
    pub fence: i64,
    /// When the grant was made, on the server's clock.
    pub granted_at: SystemTime,
    /// When the lease ends unless renewed, on the server's clock.
    pub expires_at: SystemTime,
}

/// What an [`Unlock`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum UnlockOutcome {
    /// The hold with that id was released.
    Released,
    /// No hold has that id (never issued, already released, or its expired lease was purged or
    /// taken over). Nothing changed.
    NotHeld,
    /// The hold is gone, but whether this Unlock released it is unknown: a try's reply was lost
    /// (the connection dropped) and the retry found nothing. Either that try released the hold,
    /// or the hold had already ended. Only after database errors; treat as released unless you
    /// must be certain, and then as [`NotHeld`](Self::NotHeld).
    Unconfirmed,
}

/// One attempt to lock a resource; [`LockError::AlreadyLocked`] if it is held.
///
/// ```no_run
/// # async fn demo(manager: actix::Addr<actix_mongo_lock::LockManager>) -> Result<(), Box<dyn std::error::Error>> {
/// use actix_mongo_lock::Lock;
/// let grant = manager.send(Lock::new("invoice-42")).await??;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<LockGrant, LockError>")]
pub struct Lock {
    /// The resource to lock.
    pub resource_id: String,
    /// Renew the lease every TTL/3 until unlocked; see [`KeepAlive`].
    pub keep_alive: Option<KeepAlive>,
    /// The lease of this grant; `None` uses `LockConfig::ttl`.
    pub ttl: Option<Duration>,
    /// The sender's span when the message was made: the manager's span is its child.
    pub(crate) span: Span,
}

impl Lock {
    /// Lock `resource_id`.
    pub fn new(resource_id: impl Into<String>) -> Self {
        Lock {
            resource_id: resource_id.into(),
            keep_alive: None,
            ttl: None,
            span: Span::current(),
        }
    }
}

/// The options `Lock` and `Acquire` share, as both ask for a grant.
macro_rules! grant_options {
    ($message:ident) => {
        impl $message {
            /// Grant this hold a lease of `ttl` instead of `LockConfig::ttl` (renewals extend it
            /// by `ttl` too): for work that takes longer, or shorter, than the family's usual.
            /// From 10 ms to a year; otherwise the answer is [`LockError::InvalidConfig`] and
            /// nothing is written.
            pub fn ttl(mut self, ttl: Duration) -> Self {
                self.ttl = Some(ttl);
                self
            }

            /// Renew the lease every TTL/3 until unlocked; see [`KeepAlive`].
            pub fn keep_alive(mut self, keep_alive: KeepAlive) -> Self {
                self.keep_alive = Some(keep_alive);
                self
            }
        }
    };
}

grant_options!(Lock);
grant_options!(Acquire);

/// How an [`Acquire`] waits for a resource held by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Polling {
    /// Only the oldest waiter of a resource in this manager asks the database. A release through
    /// this manager wakes it at once; a release elsewhere wakes it through the manager's change
    /// stream of releases where the server has change streams, and a lease that ends wakes it
    /// at its stored end. Without a stream it retries after pauses growing from a tenth of
    /// `acquire_period` to `acquire_period`, with up to 40 % jitter. The default.
    #[default]
    Adaptive,
    /// dplock's behaviour: a retry every `acquire_period`, `acquire_max_retries` times.
    Fixed,
}

/// Lock a resource, waiting while it is held.
///
/// By default it waits up to `acquire_period * acquire_max_retries` (2.5 s) and then answers
/// [`LockError::AcquireMaxRetries`]; [`Acquire::timeout`] sets another budget for this request.
/// How it waits, and how often it asks the database meanwhile: see [`Polling`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<LockGrant, LockError>")]
pub struct Acquire {
    /// The resource to lock.
    pub resource_id: String,
    /// How long to wait at most; `None` uses the configured retry budget.
    pub timeout: Option<Duration>,
    /// How to wait.
    pub polling: Polling,
    /// Renew the lease until unlocked; see [`KeepAlive`].
    pub keep_alive: Option<KeepAlive>,
    /// The lease of this grant; `None` uses `LockConfig::ttl`.
    pub ttl: Option<Duration>,
    /// The sender's span when the message was made: the manager's span is its child.
    pub(crate) span: Span,
}

impl Acquire {
    /// Acquire `resource_id` with the configured budget and adaptive waiting.
    pub fn new(resource_id: impl Into<String>) -> Self {
        Acquire {
            resource_id: resource_id.into(),
            timeout: None,
            polling: Polling::default(),
            keep_alive: None,
            ttl: None,
            span: Span::current(),
        }
    }

    /// Wait at most `timeout`, then answer [`LockError::AcquireTimeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Wait as dplock does: retry every `acquire_period`, `acquire_max_retries` times.
    pub fn fixed_polling(mut self) -> Self {
        self.polling = Polling::Fixed;
        self
    }
}

/// Release the hold with exactly this id. Unknown or stale ids change nothing.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<UnlockOutcome, LockError>")]
pub struct Unlock {
    /// The id from the [`LockGrant`].
    pub lock_id: LockId,
    /// The sender's span when the message was made: the manager's span is its child.
    pub(crate) span: Span,
}

impl Unlock {
    /// Release `lock_id`.
    pub fn new(lock_id: LockId) -> Self {
        Unlock {
            lock_id,
            span: Span::current(),
        }
    }
}

/// Phase 1 of a shutdown: stop granting, let running work finish. New `Lock` and `Acquire`
/// answer [`LockError::Closing`] and waiting Acquires end with it (so a peer manager can take the
/// resources they waited for), while `Unlock`, `Renew`, `Status`, `ListHolds`, keep-alive and
/// guards keep working. Answers at once. Send [`Close`] when the running work is done.
///
/// ```no_run
/// # async fn demo(manager: actix::Addr<actix_mongo_lock::LockManager>) -> Result<(), actix::MailboxError> {
/// use actix_mongo_lock::{Close, StopGranting};
/// manager.send(StopGranting).await?;   // on SIGTERM
/// // ... running requests finish and unlock ...
/// let report = manager.send(Close).await?;
/// assert_eq!(report.unreleased, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopGranting;

/// Phase 2 of a shutdown, the drain: every accepted message is answered, waiting Acquires end
/// with [`LockError::Closing`], the holds still held here are released and the purger stops (a
/// purge in progress is abandoned); then `Close` answers with a [`CloseReport`]. It answers within
/// `LockConfig::close_timeout` even when the database is gone; holds it could not release end
/// with their leases. The actor stays alive and answers every later message `Closing`; sending
/// `Close` again waits for the same drain.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "CloseReport")]
pub struct Close;

/// What [`Close`] did with the holds still held by its manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CloseReport {
    /// Holds released (the server confirmed each).
    pub released: usize,
    /// Holds not released by the close timeout (the database was slow or gone): they end with
    /// their leases.
    pub unreleased: usize,
}

/// Keep-alive for one grant: the manager renews the lease every TTL/3 until the hold is unlocked
/// (or the manager closes), and tells `notify` at once if the hold is lost.
///
/// The loss is told when the server answers that the hold is gone (it expired, was purged or
/// taken over), or when renewals keep failing and less than one renewal interval of the lease is
/// left: the holder hears of it before anyone else can be granted the resource, so it can stop
/// in time. Keep-alive stops after telling.
///
/// ```
/// use actix::prelude::*;
/// use actix_mongo_lock::{Acquire, KeepAlive, LeaseLost};
///
/// struct Worker;
/// impl Actor for Worker {
///     type Context = Context<Self>;
/// }
/// impl Handler<LeaseLost> for Worker {
///     type Result = ();
///     fn handle(&mut self, lost: LeaseLost, _: &mut Context<Self>) {
///         // Stop writing to the resource: someone else may hold it now.
///         eprintln!("lost {} ({:?})", lost.resource_id, lost.reason);
///     }
/// }
///
/// # #[actix_rt::main] async fn main() {
/// let worker = Worker.start();
/// let request = Acquire::new("report").keep_alive(KeepAlive::notify(worker.recipient()));
/// # let _ = request; }
/// ```
#[derive(Debug, Clone, Default)]
pub struct KeepAlive {
    pub(crate) notify: Option<Recipient<LeaseLost>>,
}

impl KeepAlive {
    /// Renew, and log a loss (no one is told).
    pub fn silent() -> Self {
        KeepAlive { notify: None }
    }

    /// Renew, and send [`LeaseLost`] to `recipient` if the hold is lost.
    pub fn notify(recipient: Recipient<LeaseLost>) -> Self {
        KeepAlive {
            notify: Some(recipient),
        }
    }
}

/// Sent to a [`KeepAlive`] recipient when a kept-alive hold is lost.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub struct LeaseLost {
    /// The lost hold's id (unlocking it now changes nothing).
    pub lock_id: LockId,
    /// The resource.
    pub resource_id: ResourceId,
    /// The lost hold's fencing token.
    pub fence: i64,
    /// Why.
    pub reason: LostReason,
}

/// Why a kept-alive hold was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// The server answered that the hold is gone: it expired, was purged or taken over.
    Gone,
    /// Renewals kept failing (the database is unreachable) and the lease is about to end.
    Unreachable,
}

/// Extend the lease of a live hold by the configured TTL, from now. Answers
/// [`LockError::LockLost`] if the hold is not live any more; an expired hold is never revived.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<LockGrant, LockError>")]
pub struct Renew {
    /// The id from the [`LockGrant`].
    pub lock_id: LockId,
    /// The sender's span when the message was made: the manager's span is its child.
    pub(crate) span: Span,
}

impl Renew {
    /// Renew `lock_id`.
    pub fn new(lock_id: LockId) -> Self {
        Renew {
            lock_id,
            span: Span::current(),
        }
    }
}

/// Who holds a resource, since when, until when. Never the lock id: knowing it lets one unlock.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<HoldStatus>, LockError>")]
pub struct Status {
    /// The resource to look at.
    pub resource_id: String,
    /// The sender's span when the message was made: the manager's span is its child.
    pub(crate) span: Span,
}

impl Status {
    /// Look at `resource_id`.
    pub fn new(resource_id: impl Into<String>) -> Self {
        Status {
            resource_id: resource_id.into(),
            span: Span::current(),
        }
    }
}

/// Every hold recorded in the lock family's collection (live ones, and expired ones the purger
/// has not cleared yet), ordered by resource.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<HoldStatus>, LockError>")]
pub struct ListHolds;

/// A hold as [`Status`] and [`ListHolds`] show it (and, with the `serde` feature, serialise it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HoldStatus {
    /// The resource held.
    pub resource_id: ResourceId,
    /// Who holds it (`LockConfig::owner` of the granting manager).
    pub owner: Option<String>,
    /// Where the holder runs (`LockConfig::host`).
    pub host: Option<String>,
    /// When it was granted (server clock).
    pub created_at: Option<SystemTime>,
    /// When it was last renewed, if ever.
    pub renewed_at: Option<SystemTime>,
    /// When its lease ends unless renewed.
    pub expires_at: Option<SystemTime>,
    /// Its fencing token.
    pub fence: i64,
    /// Whether the lease was live when read (server clock).
    pub live: bool,
}
