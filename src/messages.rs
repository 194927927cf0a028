//! The messages a [`LockManager`](crate::LockManager) answers, and the typed values they carry.
//!
//! Messages are small structs, as in the actix examples; each names its reply type. Resource
//! ids travel as plain strings and are checked by the manager, so bad input comes back as
//! [`LockError::InvalidResourceId`] instead of being impossible to send.

use std::collections::BTreeMap;
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
/// is the right to unlock, so it never leaves the process by accident. Times serialise as
/// RFC 3339 strings in UTC with milliseconds (`"2026-12-02T16:49:16.123Z"`), the precision
/// the database stores.
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
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::time"))]
    pub granted_at: SystemTime,
    /// When the lease ends unless renewed, on the server's clock.
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::time"))]
    pub expires_at: SystemTime,
    /// Whether this is a shared hold ([`Lock::shared`], [`Acquire::shared`]).
    pub shared: bool,
}

/// Whether a grant is the resource's only holder, or one of several.
///
/// See docs/guide.md, "Shared holds and semaphores".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HoldMode {
    /// The only holder: refused while any other hold, exclusive or shared, is live.
    #[default]
    Exclusive,
    /// One of several holders (square/mongo-lock's `SLock`): granted beside other shared holds,
    /// refused while an exclusive hold is live, while a manager waits in line for an exclusive
    /// hold, or while `max_holders` shared holds are live.
    Shared {
        /// At most this many shared holds at once (a counted semaphore); `None`: no limit.
        max_holders: Option<u32>,
    },
}

impl HoldMode {
    /// Whether this is [`HoldMode::Shared`].
    pub fn is_shared(&self) -> bool {
        matches!(self, HoldMode::Shared { .. })
    }

    /// The limit of holders of a shared request; [`LockError::InvalidMaxHolders`] for 0.
    pub(crate) fn checked_limit(&self) -> Result<Option<u32>, LockError> {
        match *self {
            HoldMode::Shared {
                max_holders: Some(0),
            } => Err(LockError::InvalidMaxHolders { max_holders: 0 }),
            HoldMode::Shared { max_holders } => Ok(max_holders),
            HoldMode::Exclusive => Ok(None),
        }
    }
}

/// What an [`Unlock`] did. New outcomes may come: match with a `_` arm.
///
/// ```compile_fail,E0004
/// use actix_mongo_lock::UnlockOutcome;
/// fn word(o: UnlockOutcome) -> &'static str {
///     match o {
///         UnlockOutcome::Released => "released",
///         UnlockOutcome::NotHeld => "not held",
///         UnlockOutcome::Unconfirmed => "unconfirmed",
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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

/// One attempt to lock a resource; [`LockError::AlreadyLocked`] if it is held, or if another
/// manager's turn in its line of waiting managers is live.
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
    /// Exclusive (the default) or shared.
    pub mode: HoldMode,
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
            mode: HoldMode::Exclusive,
            span: Span::current(),
        }
    }

    /// Take a shared hold of `resource_id`, beside other shared holds ([`HoldMode::Shared`]);
    /// [`LockError::AlreadyLocked`] if it cannot be granted now.
    pub fn shared(resource_id: impl Into<String>) -> Self {
        Lock::new(resource_id).with_mode(HoldMode::Shared { max_holders: None })
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

            /// Make this a shared hold, one of at most `n` at once on the resource (a counted
            /// semaphore, square/mongo-lock's `maxConcurrent`). Every shared holder of a resource
            /// must ask for the same limit while shared holds are live
            /// ([`LockError::MaxHoldersMismatch`]); 0 is [`LockError::InvalidMaxHolders`]. Both
            /// answers write nothing.
            pub fn max_holders(self, n: u32) -> Self {
                self.with_mode(HoldMode::Shared {
                    max_holders: Some(n),
                })
            }

            /// Exclusive or shared.
            pub fn with_mode(mut self, mode: HoldMode) -> Self {
                self.mode = mode;
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
    /// Only the oldest waiter of a resource in this manager asks the database, and managers
    /// wait in line for it, served in turn. A release through this manager wakes it at once; a
    /// release elsewhere wakes it through the manager's change stream where the server has
    /// change streams, if its manager's turn has come; a lease that ends wakes it at its stored
    /// end. Without a stream, the manager next to be granted (and the one after it) retries
    /// after pauses growing from a tenth of `acquire_period` to `acquire_period`, with up to
    /// 40 % jitter; one further back looks about when its turn nears, at least once per
    /// k × `acquire_period` when k places behind. The default.
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
    /// Exclusive (the default) or shared.
    pub mode: HoldMode,
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
            mode: HoldMode::Exclusive,
            span: Span::current(),
        }
    }

    /// Acquire a shared hold of `resource_id` ([`HoldMode::Shared`]), waiting while it cannot
    /// be granted: while an exclusive hold is live, a manager waits in line for one, or (with
    /// [`max_holders`](Self::max_holders)) the limit is reached.
    pub fn shared(resource_id: impl Into<String>) -> Self {
        Acquire::new(resource_id).with_mode(HoldMode::Shared { max_holders: None })
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
    /// Release only a shared hold: [`LockError::NotShared`] for an exclusive one.
    pub shared_only: bool,
    /// The sender's span when the message was made: the manager's span is its child.
    pub(crate) span: Span,
}

impl Unlock {
    /// Release `lock_id`, exclusive or shared.
    pub fn new(lock_id: LockId) -> Self {
        Unlock {
            lock_id,
            shared_only: false,
            span: Span::current(),
        }
    }

    /// Release the shared hold `lock_id`; [`LockError::NotShared`], with nothing written, if
    /// `lock_id` is an exclusive hold.
    pub fn shared(lock_id: LockId) -> Self {
        Unlock {
            shared_only: true,
            ..Unlock::new(lock_id)
        }
    }
}

/// Phase 1 of a shutdown: stop granting, let running work finish. New `Lock` and `Acquire`
/// answer [`LockError::Closing`] and waiting Acquires end with it (so a peer manager can take the
/// resources they waited for), while `Unlock`, `Renew`, `Status`, `ListHolds`, keep-alive and
/// guards keep working. Answers at once; [`AwaitReleased`] then waits until the running work
/// has unlocked, and [`Close`] comes last.
///
/// ```no_run
/// # async fn demo(manager: actix::Addr<actix_mongo_lock::LockManager>) -> Result<(), actix::MailboxError> {
/// use std::time::Duration;
/// use actix_mongo_lock::{AwaitReleased, Close, StopGranting};
/// manager.send(StopGranting).await?;   // on SIGTERM
/// // Running requests finish and unlock; wait for that, 10 s at most.
/// let released = manager.send(AwaitReleased::within(Duration::from_secs(10))).await?;
/// let report = manager.send(Close).await?;
/// assert_eq!(report.unreleased, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopGranting;

/// The wait of phase 1 of a shutdown: answers once no hold granted by this manager is held any
/// more, or when [`timeout`](Self::timeout) has passed, whichever comes first, with a
/// [`ReleasedReport`] that says how many were still held.
///
/// A hold ends when it is unlocked (by [`Unlock`], or by a [`LockGuard`](crate::LockGuard)
/// dropped or unlocked), found lost (a `Renew` or a keep-alive answered that it is gone),
/// released by [`Close`], or when its lease ends (by this manager's estimate of the server's
/// clock; a lease renewed by keep-alive goes on). Holds granted by other managers do not
/// count. A grant still on its way when [`StopGranting`] came is given to nobody and released
/// at once; it counts until that release is confirmed.
///
/// The bound: it answers within `timeout`, and no later than the end of a [`Close`] that runs
/// meanwhile (or at once after one). It makes no database request, so a database that is slow
/// or gone does not lengthen it; but then an `Unlock` cannot be confirmed, and its hold counts
/// as held until its lease ends, so the wait usually lasts its whole `timeout`. A caller that
/// stops waiting (its `send` dropped) ends it.
///
/// It changes nothing: it neither stops granting (send [`StopGranting`] first, or new grants
/// keep it waiting) nor releases anything, and `Close` does not wait for it.
///
/// ```no_run
/// # async fn demo(manager: actix::Addr<actix_mongo_lock::LockManager>) -> Result<(), actix::MailboxError> {
/// use std::time::Duration;
/// use actix_mongo_lock::{AwaitReleased, StopGranting};
/// manager.send(StopGranting).await?;
/// let released = manager.send(AwaitReleased::within(Duration::from_secs(10))).await?;
/// if released.still_held > 0 {
///     // Work still runs under those holds after 10 s: Close will release them under it.
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Message)]
#[rtype(result = "ReleasedReport")]
pub struct AwaitReleased {
    /// How long to wait at most. `Duration::MAX` waits until the holds end or `Close` has run.
    pub timeout: Duration,
    /// The sender's span when the message was made: the manager's span is its child.
    pub(crate) span: Span,
}

impl AwaitReleased {
    /// Wait at most `timeout` for the holds granted here to end.
    pub fn within(timeout: Duration) -> Self {
        AwaitReleased {
            timeout,
            span: Span::current(),
        }
    }
}

/// What [`AwaitReleased`] saw when it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReleasedReport {
    /// Holds granted here and still held when it answered: 0 when every one had ended; more
    /// when the timeout passed first, or a `Close` ended without releasing them (the database
    /// was gone).
    pub still_held: usize,
    /// How long it waited.
    pub waited: Duration,
}

impl ReleasedReport {
    /// Whether every hold granted here had ended (`still_held == 0`).
    pub fn all_released(&self) -> bool {
        self.still_held == 0
    }
}

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
    pub(crate) end_when_granting_stops: bool,
}

impl KeepAlive {
    /// Renew, and log a loss (no one is told).
    pub fn silent() -> Self {
        KeepAlive {
            notify: None,
            end_when_granting_stops: false,
        }
    }

    /// Renew, and send [`LeaseLost`] to `recipient` if the hold is lost.
    pub fn notify(recipient: Recipient<LeaseLost>) -> Self {
        KeepAlive {
            notify: Some(recipient),
            end_when_granting_stops: false,
        }
    }

    /// Also end the hold when its manager stops granting ([`StopGranting`]) instead of keeping
    /// it until it is unlocked: the holder is told [`LostReason::Closing`], then the hold is
    /// released (waking the next in line), within one `request_timeout`. For a hold that would
    /// otherwise never end on its own during a shutdown, as a leadership: an
    /// [`Elector`](crate::election::Elector) keeps its leadership so, so a shutting-down
    /// instance hands its office on at `StopGranting`, not only at `Close`.
    pub fn end_when_granting_stops(mut self) -> Self {
        self.end_when_granting_stops = true;
        self
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
    /// For [`LostReason::Revoked`]: the reason the operator gave ([`Revoke::reason`]).
    pub revoked_because: Option<String>,
}

/// Why a kept-alive hold was lost. New reasons may come: match with a `_` arm.
///
/// ```compile_fail,E0004
/// use actix_mongo_lock::LostReason;
/// fn word(r: LostReason) -> &'static str {
///     match r {
///         LostReason::Gone => "gone",
///         LostReason::Unreachable => "unreachable",
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The server answered that the hold is gone: it expired, was purged or taken over.
    Gone,
    /// Renewals kept failing (the database is unreachable) and the lease is about to end.
    Unreachable,
    /// The manager is closing: [`Close`] releases the hold (or, with the database gone, its
    /// lease ends it). Told as closing begins, before the release is sent; for a hold kept
    /// alive with [`KeepAlive::end_when_granting_stops`], already at [`StopGranting`].
    Closing,
    /// An operator revoked the hold by its fence ([`Revoke`]); [`LeaseLost::revoked_because`]
    /// says why. Told at the first renewal after the revocation: within a third of the lease
    /// plus `request_timeout`, before the lease ends (nobody else is granted before that).
    Revoked,
}

/// Extend the lease of a live hold to now plus its TTL: the lease it was granted with, if this
/// manager granted it (see [`Lock::ttl`]), else the configured one. Answers
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

/// End the hold of a resource that drew `fence`, whoever holds it, and only that hold: an
/// operator's tool for a holder that is stuck (alive, renewing, not working). A stale fence (the
/// hold ended, a later one drew a higher fence) changes nothing in the database.
///
/// The hold is retired, not released at once: from the revocation on nobody can renew or
/// unlock it, so it ends when its current lease does (at most one lease, `ttl`, later), and
/// nobody else is granted the resource before then. Its keep-alive tells its holder
/// [`LeaseLost`] with [`LostReason::Revoked`] at its next renewal (within a third of its lease
/// plus `request_timeout`), which is before the lease ends: the holder is told before anyone
/// else can be granted, as with every loss. A holder without keep-alive learns it when its
/// `Renew` answers [`LockError::LockLost`]; its `Unlock` answers [`UnlockOutcome::NotHeld`]. The
/// line of waiting managers is served when the lease ends, as after any expiry.
///
/// Revocable: every exclusive or shared hold this crate granted. Not a hold of a Go client
/// (dplock over square/mongo-lock), which draws no fence of its own.
///
/// Answers [`RevokeOutcome`]; [`LockError::InvalidRevoke`] for a fence below 1 or a reason
/// longer than 512 bytes, with nothing written. Two requests (one if the fence is stale).
///
/// ```
/// use actix_mongo_lock::Revoke;
/// let revoke = Revoke::new("report-7", 42).reason("stuck since 03:00, ticket OPS-19");
/// # let _ = revoke;
/// ```
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<RevokeOutcome, LockError>")]
pub struct Revoke {
    /// The resource.
    pub resource_id: String,
    /// The fence of the hold to end, as [`Status`] or [`ListHolds`] show it.
    pub fence: i64,
    /// Why, told to the holder. Default: "revoked by an operator".
    pub reason: String,
    /// The sender's span when the message was made: the manager's span is its child.
    pub(crate) span: Span,
}

impl Revoke {
    /// Revoke `resource_id`'s hold that drew `fence`.
    pub fn new(resource_id: impl Into<String>, fence: i64) -> Self {
        Revoke {
            resource_id: resource_id.into(),
            fence,
            reason: "revoked by an operator".to_owned(),
            span: Span::current(),
        }
    }

    /// Sets the reason told to the holder (at most 512 bytes).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
}

/// What a [`Revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "outcome", rename_all = "snake_case"))]
pub enum RevokeOutcome {
    /// The hold that drew the fence was live: it is retired, and ends when its lease does.
    #[non_exhaustive]
    Revoked {
        /// Who held it.
        owner: Option<String>,
        /// Where its holder runs.
        host: Option<String>,
        /// Whether it was a shared hold.
        shared: bool,
    },
    /// No live hold of the resource drew that fence (it ended, or never was): nothing was
    /// written.
    NotHeld,
}

/// Every hold recorded in the lock family's collection (live ones, and expired ones the purger
/// has not cleared yet), ordered by resource.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<HoldStatus>, LockError>")]
pub struct ListHolds;

/// A hold as [`Status`] and [`ListHolds`] show it (and, with the `serde` feature, serialise it:
/// times as RFC 3339 strings, an unknown time as `null`, never the lock id).
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
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::maybe_time"))]
    pub created_at: Option<SystemTime>,
    /// When it was last renewed, if ever.
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::maybe_time"))]
    pub renewed_at: Option<SystemTime>,
    /// When its lease ends unless renewed.
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::maybe_time"))]
    pub expires_at: Option<SystemTime>,
    /// Its fencing token.
    pub fence: i64,
    /// Whether the lease was live when read (server clock).
    pub live: bool,
    /// Whether this is a shared hold.
    pub shared: bool,
    /// How many shared holds of the resource were live when read (0 for an exclusive hold).
    /// [`Status`] answers one of them, the one whose lease ends last; [`ListHolds`] lists each.
    pub shared_holders: usize,
    /// The managers waiting for the resource, in order (the same for every hold of it).
    pub line: LineStatus,
    /// Whether an operator revoked it ([`Revoke`]): nobody can renew or unlock it any more, and
    /// it ends when its lease does.
    pub revoked: bool,
}

/// The line of managers waiting for a resource, as [`Status`] and [`ListHolds`] show it. A
/// manager is named `owner@host/id` (its [`LockConfig`](crate::LockConfig)'s `owner` and
/// `host`, and an id of its own); one place per manager, however many of its Acquires wait. Go
/// clients and [`Polling::Fixed`] waits take no place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LineStatus {
    /// The manager to be granted next, if its turn is live: no other manager is granted while
    /// it is.
    pub turn: Option<String>,
    /// When that turn lapses if its manager does not take it (server clock).
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::maybe_time"))]
    pub turn_until: Option<SystemTime>,
    /// The managers waiting after it, first first.
    pub waiting: Vec<String>,
    /// Since when each of them, the turn's manager included, has had its place (server
    /// clock): when it joined the line, kept while it waits, its turn included. A manager whose
    /// turn lapsed and which joins again starts anew; one that joined before this was recorded
    /// (an older version of the crate) has no entry.
    #[cfg_attr(feature = "serde", serde(serialize_with = "rfc3339::time_map"))]
    pub since: BTreeMap<String, SystemTime>,
}

/// `t` as the `serde` output writes times: an RFC 3339 string in UTC with three digits of
/// milliseconds (`2026-12-02T16:49:16.120Z`).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::from_millis(1_796_230_156_120);
/// assert_eq!(actix_mongo_lock::rfc3339(t), "2026-12-02T16:49:16.120Z");
/// ```
#[cfg(feature = "serde")]
pub fn rfc3339(t: SystemTime) -> String {
    rfc3339::format(t)
}

/// Times in the `serde` output: RFC 3339 strings in UTC, always with three digits of
/// milliseconds (`2026-12-02T16:49:16.120Z`), so they have one width and sort as text.
#[cfg(feature = "serde")]
mod rfc3339 {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub(super) fn time_map<S: serde::Serializer>(
        times: &std::collections::BTreeMap<String, SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(times.iter().map(|(key, t)| (key, format(*t))))
    }

    pub(super) fn maybe_time<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => time(t, s),
            None => s.serialize_none(),
        }
    }

    /// `t` to the millisecond, in the proleptic Gregorian calendar (years 0000 to 9999).
    pub(crate) fn format(t: SystemTime) -> String {
        let ms = match t.duration_since(UNIX_EPOCH) {
            Ok(after) => after.as_millis() as i64,
            Err(before) => -(before.duration().as_millis() as i64),
        };
        let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            ms_of_day / 3_600_000,
            ms_of_day / 60_000 % 60,
            ms_of_day / 1000 % 60,
            ms_of_day % 1000
        )
    }

    /// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
    fn civil_from_days(days: i64) -> (i64, i64, i64) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
        let month = if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        };
        (year_of_era + era * 400 + i64::from(month <= 2), month, day)
    }

    #[cfg(test)]
    mod tests {
        use std::time::{Duration, UNIX_EPOCH};

        use super::format;

        #[test]
        fn times_format_as_rfc_3339_with_three_digits_of_milliseconds() {
            for (ms, text) in [
                (0_i64, "1970-01-01T00:00:00.000Z"),
                (951_782_400_000, "2000-02-29T00:00:00.000Z"),
                (1_796_233_756_120, "2026-12-02T17:49:16.120Z"),
                (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
                (-1, "1969-12-31T23:59:59.999Z"),
            ] {
                let t = if ms >= 0 {
                    UNIX_EPOCH + Duration::from_millis(ms as u64)
                } else {
                    UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
                };
                assert_eq!(format(t), text, "{ms}");
            }
        }
    }
}
