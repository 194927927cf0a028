//! Server-side faults, injected by SecantusDB itself: what each one does to Lock, Acquire,
//! Unlock, Renew, keep-alive and the purge, who retries it, and that nothing is lost.
//!
//! SecantusDB only: every test is named `secantus_...` and first asserts it runs there
//! (`MONGO_SERVER=secantus` and a replica-set `hello`), so on nx-27017 it fails loudly. Run:
//!
//! ```sh
//! MONGO_SERVER=secantus scripts/with-mongo cargo test --features failpoint-tests --test server_faults -- --nocapture
//! ```
//!
//! Each row test arms one `failCommand` failpoint (tests/support/failpoint.rs) for one cell at a
//! time: the fault hits the command that operation sends (`findAndModify` for Lock, Acquire,
//! Renew and keep-alive, `update` for Unlock and the purge), once (`times: 1`; the block row's
//! keep-alive cell blocks every renewal), and only the client of that cell's manager (the
//! failpoint's `appName`). For every cell the test asserts the caller's answer, who retried (the
//! driver re-sends the same `txnNumber`; the library sends a new operation) and, for an injected
//! code, whether the server labelled it `RetryableWriteError`; and the invariants: the answer
//! comes within [`ANSWER_BOUND`], the stored hold is the caller's exactly when the caller was
//! told it holds, a hold nobody was told of is gone within its lease, and fences rise strictly
//! (how many a fault burnt is part of the expected outcome). The expected outcomes follow from three facts, not from a list of observed
//! answers: whether the fault lets the write apply, whether the server labels the error
//! `RetryableWriteError` (the driver's only reason to retry a server error), and where the
//! library retries (Acquire, Unlock, keep-alive and the next purge do; Lock and Renew do not).
//! Each cell prints its row of the table in docs/reliability.md.
//!
//! SecantusDB keeps one failpoint at a time, so the tests take turns (`failpoint::SERIAL`).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use actix_mongo_lock::{
    Acquire, KeepAlive, LeaseLost, Lock, LockConfig, LockError, LockGrant, LockManager, LostReason,
    Renew, Unlock, UnlockOutcome,
};
use mongodb::bson::{doc, Bson, DateTime};
use support::failpoint::{
    arm, arm_always, assert_secantus, off, recorded_client, step_down, Commands, Ended, Fault,
    SERIAL,
};
use support::proxy::{upstream_from_env, FaultProxy};
use support::server::{collection, stored, unique_name, uri};

/// Every message is answered within this, whatever the fault (the longest one lasts 2 s).
const ANSWER_BOUND: Duration = Duration::from_secs(10);
/// The lease of the cells: keep-alive renews every second, and a renewal the driver retries
/// after a heartbeat (500 ms) fits in that interval with room for a loaded machine.
const LEASE: Duration = Duration::from_secs(3);
/// The purger's period in the purge cells.
const PURGER_PERIOD: Duration = Duration::from_millis(250);
/// The one resource of every cell (each cell has its own lock family).
const R: &str = "r";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Lock,
    Acquire,
    Unlock,
    Renew,
    KeepAlive,
    Purge,
}

impl Op {
    const ALL: [Op; 6] = [
        Op::Lock,
        Op::Acquire,
        Op::Unlock,
        Op::Renew,
        Op::KeepAlive,
        Op::Purge,
    ];

    /// The command the operation sends, and the failpoint targets.
    fn command(self) -> &'static str {
        match self {
            Op::Unlock | Op::Purge => "update",
            _ => "findAndModify",
        }
    }
}

/// A row's fault.
#[derive(Clone, Copy, Debug)]
enum Injected {
    CloseConnection,
    Code(i32),
    WriteConcernError(i32),
    /// Holds the command for longer than the lease before running it.
    Block(Duration),
}

impl Injected {
    fn fault(self, op: Op) -> Fault {
        let commands = [op.command()];
        match self {
            Injected::CloseConnection => Fault::close_connection(&commands),
            Injected::Code(code) => Fault::error(&commands, code),
            Injected::WriteConcernError(code) => Fault::write_concern_error(&commands, code),
            Injected::Block(block) => Fault::block(&commands, block),
        }
    }

    /// What the fault does to a write, and whether the driver retries it.
    fn class(self) -> Class {
        match self {
            // A network error: the driver labels it RetryableWriteError itself.
            Injected::CloseConnection => Class::DriverRetries,
            // The codes SecantusDB (like mongod 4.4+) labels RetryableWriteError on a write
            // that carries a txnNumber.
            Injected::Code(6 | 89 | 91 | 189 | 10107 | 11600) => Class::DriverRetries,
            Injected::Code(_) => Class::LibraryRetries,
            Injected::WriteConcernError(_) => Class::AppliedButFailed,
            Injected::Block(_) => Class::AppliedLate,
        }
    }
}

/// What a fault does to a write: the facts the expected outcomes follow from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Not applied; the driver retries a retryable write once (same txnNumber), which succeeds.
    /// A multi-document update (the purge) is not a retryable write: no retry, no label.
    DriverRetries,
    /// Not applied; no label, so the driver hands the error to the library.
    LibraryRetries,
    /// Applied, then answered with a writeConcernError and no label: an error for a write that
    /// happened. The driver does not retry.
    AppliedButFailed,
    /// Applied after the block, which outlasts the lease: the answer comes late and the lease it
    /// carries is already over.
    AppliedLate,
}

/// Who retried a cell's faulted command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetriedBy {
    Nobody,
    /// The same txnNumber sent again.
    Driver,
    /// A new operation: the library's retry (or, for the purge, the next purge).
    Library,
}

/// What one cell observed.
#[derive(Debug)]
struct Cell {
    answer: String,
    retried_by: RetriedBy,
    /// Fences no caller was ever told of.
    burnt: i64,
    took: Duration,
    /// The labels of the first server error the faulted command met, if it met one.
    labels: Option<Vec<String>>,
}

/// The expected answer, retrier and burnt fences of `op` under `injected`, from its class.
fn expected(injected: Injected, op: Op) -> (String, RetriedBy, i64) {
    use Class::*;
    use RetriedBy::*;
    let error = match injected {
        Injected::Code(code) | Injected::WriteConcernError(code) => format!("Database({code})"),
        _ => "Database(network)".to_owned(),
    };
    let (answer, retried_by, burnt) = match (injected.class(), op) {
        // The purge's updateMany carries no txnNumber: the next purge is the only retry.
        (AppliedButFailed, Op::Purge) => ("cleared by purge 1", Nobody, 0),
        (AppliedLate, Op::Purge) => ("cleared by purge 1", Nobody, 0),
        (_, Op::Purge) => ("cleared by purge 2", Library, 0),
        (DriverRetries, Op::Lock | Op::Acquire) => ("granted", Driver, 0),
        (DriverRetries, Op::Unlock) => ("Released", Driver, 0),
        (DriverRetries, Op::Renew) => ("renewed", Driver, 0),
        (DriverRetries, Op::KeepAlive) => ("kept", Driver, 0),
        (LibraryRetries, Op::Lock) => ("Database", Nobody, 0),
        (LibraryRetries, Op::Acquire) => ("granted", Library, 0),
        (LibraryRetries, Op::Unlock) => ("Released", Library, 0),
        (LibraryRetries, Op::Renew) => ("Database", Nobody, 0),
        (LibraryRetries, Op::KeepAlive) => ("kept", Library, 0),
        // Applied: the background release of the failed Lock frees the resource, but its
        // fence was taken; the Acquire's retry re-grants its own hold with the next fence.
        (AppliedButFailed, Op::Lock) => ("Database", Nobody, 1),
        (AppliedButFailed, Op::Acquire) => ("granted", Library, 1),
        (AppliedButFailed, Op::Unlock) => ("Unconfirmed", Library, 0),
        (AppliedButFailed, Op::Renew) => ("Database, lease extended", Nobody, 0),
        (AppliedButFailed, Op::KeepAlive) => ("kept", Library, 0),
        // A grant or renewal is bounded by its lease: cut off when the lease would end on the
        // way, answered Unavailable (Lock, Renew), and the late grant is released; the
        // Acquire's next attempt, after the block, is granted.
        (AppliedLate, Op::Lock | Op::Renew) => ("Unavailable", Nobody, 0),
        (AppliedLate, Op::Acquire) => ("granted", Library, 0),
        (AppliedLate, Op::Unlock) => ("Released", Nobody, 0),
        // The renewal is cut off after one renewal interval, leaving less than one interval of
        // the lease: the holder is told at once, and nothing is retried.
        (AppliedLate, Op::KeepAlive) => {
            ("LeaseLost(Unreachable) before the lease ended", Nobody, 0)
        }
    };
    let answer = match (answer, injected) {
        ("Database", _) => error,
        ("Database, lease extended", _) => format!("{error}, lease extended"),
        ("cleared by purge 1", Injected::WriteConcernError(code)) => {
            format!("cleared by purge 1 (reported as failed: writeConcernError {code})")
        }
        (answer, _) => answer.to_owned(),
    };
    (answer, retried_by, burnt)
}

/// One cell's manager: its own lock family, and a client named after the cell whose commands
/// are recorded.
struct Setup {
    app: String,
    config: LockConfig,
    locks: Addr<LockManager>,
    commands: Commands,
}

impl Setup {
    async fn new(row: &str, op: Op, lease: Duration) -> Setup {
        let config = LockConfig::new(unique_name(&format!("{row}_{op:?}")))
            .database("actix_mongo_lock_tests")
            .ttl(lease)
            .purger_period(if op == Op::Purge {
                PURGER_PERIOD
            } else {
                Duration::from_secs(300)
            })
            .acquire_retries(Duration::from_millis(50), 10)
            .unlock_retries(Duration::from_millis(5), 3);
        let setup = Setup::with_config(config).await;
        // The purger purges once at start; its `update` must not count as the cell's.
        eventually("the first purge", ANSWER_BOUND, || async {
            let purges = setup.commands.named("update");
            purges
                .iter()
                .any(|c| c.ended != Ended::Pending)
                .then_some(())
        })
        .await;
        setup
    }

    async fn with_config(config: LockConfig) -> Setup {
        let app = config.name.clone();
        let (client, commands) = recorded_client(&uri(), &app).await;
        let locks = LockManager::with_client(client, config.clone())
            .await
            .unwrap_or_else(|e| panic!("start a manager on {}: {e}", uri()));
        Setup {
            app,
            config,
            locks,
            commands,
        }
    }

    /// Who retried the faulted command: the driver if it sent one txnNumber twice, the library
    /// if more than one operation was sent (a txnNumber each, or none for the purge).
    fn retried_by(&self, op: Op) -> RetriedBy {
        debug_assert!(op != Op::Purge, "the purge cell counts its purges itself");
        let sent = self.commands.named(op.command());
        let mut numbers: Vec<_> = sent.iter().map(|c| c.retry_key()).collect();
        let sends = numbers.len();
        numbers.dedup();
        let operations = if numbers.iter().all(Option::is_none) {
            sends
        } else {
            numbers.len()
        };
        if operations < sends {
            RetriedBy::Driver
        } else if operations > 1 {
            RetriedBy::Library
        } else {
            RetriedBy::Nobody
        }
    }

    /// The labels of the first server error (one with a code) `op`'s command met.
    fn first_error_labels(&self, op: Op) -> Option<Vec<String>> {
        self.commands
            .named(op.command())
            .into_iter()
            .find_map(|c| match c.ended {
                Ended::Failed {
                    code: Some(_),
                    labels,
                } => Some(labels),
                _ => None,
            })
    }

    /// After the cell: the resource must be free (or its lease over) within one lease (and a
    /// second for polling), so no hold nobody was told of outlives its lease, and a new grant
    /// must get a fence above every one seen. Returns the fences nobody was told of.
    async fn settle(&self, told: &[i64]) -> i64 {
        let lease = self.config.ttl;
        eventually(
            "the resource is free again",
            lease + Duration::from_secs(1),
            || async {
                match live_hold(&self.config).await {
                    None => Some(()),
                    Some(_) => None,
                }
            },
        )
        .await;
        let grant = answered(self.locks.send(Lock::new(R)))
            .await
            .expect("a Lock after the fault is granted");
        let mut fences = told.to_vec();
        fences.push(grant.fence);
        assert!(
            fences.windows(2).all(|w| w[0] < w[1]),
            "fences are not strictly increasing: {fences:?}"
        );
        let released = answered(self.locks.send(Unlock::new(grant.lock_id))).await;
        assert_eq!(released.ok(), Some(UnlockOutcome::Released));
        grant.fence - fences.len() as i64
    }
}

/// The live hold stored for `R`: its lock id, fence and lease end.
async fn live_hold(config: &LockConfig) -> Option<(String, i64, SystemTime)> {
    let (lock_id, fence, expires_at) = stored_hold(config).await?;
    (expires_at > SystemTime::now()).then_some((lock_id, fence, expires_at))
}

/// The hold stored for `R`, live or not: its lock id, fence and lease end.
async fn stored_hold(config: &LockConfig) -> Option<(String, i64, SystemTime)> {
    let document = stored(config, R).await?;
    let exclusive = document.get_document("exclusive").ok()?;
    if exclusive.get("acquired") != Some(&Bson::Boolean(true)) {
        return None;
    }
    let fence = match document.get("fence") {
        Some(Bson::Int64(f)) => *f,
        Some(Bson::Int32(f)) => i64::from(*f),
        other => panic!("fence is {other:?}"),
    };
    Some((
        exclusive.get_str("lockId").ok()?.to_owned(),
        fence,
        exclusive.get_datetime("expiresAt").ok()?.to_system_time(),
    ))
}

/// The answer to a message, which must come within [`ANSWER_BOUND`].
async fn answered<T, M>(request: actix::dev::Request<LockManager, M>) -> T
where
    M: actix::Message<Result = T> + Send + 'static,
    T: Send + 'static,
    LockManager: Handler<M>,
{
    tokio::time::timeout(ANSWER_BOUND, request)
        .await
        .unwrap_or_else(|_| panic!("no answer within {ANSWER_BOUND:?}"))
        .expect("the manager is running")
}

/// Polls `check` every 10 ms until it yields a value; panics after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A caller's error, for the table: the variant, and the server's code for a database error.
fn describe(e: &LockError) -> String {
    match e {
        LockError::Database(e) => match e.code() {
            Some(code) => format!("Database({code})"),
            None => "Database(network)".to_owned(),
        },
        other => format!("{other:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// A grant's answer for the table, noting a lease that was over when the answer arrived.
fn granted(word: &str, grant: &LockGrant) -> String {
    if grant.expires_at <= SystemTime::now() {
        format!("{word}, lease over on arrival")
    } else {
        word.to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// The cells
// ---------------------------------------------------------------------------------------------

/// Lock or Acquire (5 s) of a free resource under the fault.
async fn grant_cell(row: &str, injected: Injected, lease: Duration, op: Op) -> Cell {
    let cell = Setup::new(row, op, lease).await;
    cell.commands.clear();
    arm(&cell.app, 1, &injected.fault(op)).await;
    let sent = Instant::now();
    let answer = match op {
        Op::Lock => answered(cell.locks.send(Lock::new(R))).await,
        _ => {
            answered(
                cell.locks
                    .send(Acquire::new(R).timeout(Duration::from_secs(5))),
            )
            .await
        }
    };
    let took = sent.elapsed();
    off().await;
    let mut told = Vec::new();
    let answer = match answer {
        Ok(grant) => {
            let stored = stored_hold(&cell.config).await;
            assert_eq!(
                stored.as_ref().map(|h| (h.0.as_str(), h.1)),
                Some((grant.lock_id.as_str(), grant.fence)),
                "the caller was granted a hold the server does not store"
            );
            told.push(grant.fence);
            let answer = granted("granted", &grant);
            answered(cell.locks.send(Unlock::new(grant.lock_id)))
                .await
                .ok();
            answer
        }
        Err(e) => describe(&e),
    };
    let retried_by = cell.retried_by(op);
    let labels = cell.first_error_labels(op);
    let burnt = cell.settle(&told).await;
    Cell {
        answer,
        retried_by,
        burnt,
        took,
        labels,
    }
}

async fn unlock_cell(row: &str, injected: Injected, lease: Duration) -> Cell {
    let cell = Setup::new(row, Op::Unlock, lease).await;
    let grant = answered(cell.locks.send(Lock::new(R)))
        .await
        .expect("granted");
    cell.commands.clear();
    arm(&cell.app, 1, &injected.fault(Op::Unlock)).await;
    let sent = Instant::now();
    let answer = answered(cell.locks.send(Unlock::new(grant.lock_id.clone()))).await;
    let took = sent.elapsed();
    off().await;
    let answer = match answer {
        Ok(outcome) => {
            assert_eq!(
                live_hold(&cell.config).await,
                None,
                "Unlock answered {outcome:?} but the hold is still live"
            );
            format!("{outcome:?}")
        }
        Err(e) => {
            // The hold may stay until its lease ends, never longer.
            if let Some((_, _, expires_at)) = stored_hold(&cell.config).await {
                assert!(
                    expires_at <= grant.expires_at,
                    "a failed Unlock extended the lease"
                );
            }
            describe(&e)
        }
    };
    let retried_by = cell.retried_by(Op::Unlock);
    let labels = cell.first_error_labels(Op::Unlock);
    let burnt = cell.settle(&[grant.fence]).await;
    Cell {
        answer,
        retried_by,
        burnt,
        took,
        labels,
    }
}

async fn renew_cell(row: &str, injected: Injected, lease: Duration) -> Cell {
    let cell = Setup::new(row, Op::Renew, lease).await;
    let grant = answered(cell.locks.send(Lock::new(R)))
        .await
        .expect("granted");
    cell.commands.clear();
    arm(&cell.app, 1, &injected.fault(Op::Renew)).await;
    let sent = Instant::now();
    let answer = answered(cell.locks.send(Renew::new(grant.lock_id.clone()))).await;
    let took = sent.elapsed();
    off().await;
    let stored = stored_hold(&cell.config).await;
    let answer = match answer {
        Ok(renewed) => {
            assert_eq!(renewed.fence, grant.fence, "a renewal changed the fence");
            assert_eq!(
                stored.map(|h| (h.0, h.2)),
                Some((grant.lock_id.to_string(), renewed.expires_at)),
                "the stored lease is not the one Renew answered"
            );
            granted("renewed", &renewed)
        }
        Err(e) => {
            // A failed renewal is not a loss: the caller still holds the hold it had.
            let (lock_id, _, expires_at) = stored.expect("the hold is still stored");
            assert_eq!(lock_id, grant.lock_id.as_str());
            if expires_at > grant.expires_at {
                format!("{}, lease extended", describe(&e))
            } else {
                describe(&e)
            }
        }
    };
    let released = answered(cell.locks.send(Unlock::new(grant.lock_id))).await;
    assert!(released.is_ok(), "the holder cannot unlock: {released:?}");
    let retried_by = cell.retried_by(Op::Renew);
    let labels = cell.first_error_labels(Op::Renew);
    let burnt = cell.settle(&[grant.fence]).await;
    Cell {
        answer,
        retried_by,
        burnt,
        took,
        labels,
    }
}

/// Collects the keep-alive's loss signals, with when each arrived.
#[derive(Clone, Default)]
struct Losses(Arc<Mutex<Vec<(LeaseLost, SystemTime)>>>);

impl Actor for Losses {
    type Context = Context<Self>;
}

impl Handler<LeaseLost> for Losses {
    type Result = ();

    fn handle(&mut self, lost: LeaseLost, _: &mut Context<Self>) {
        self.0.lock().unwrap().push((lost, SystemTime::now()));
    }
}

impl Losses {
    fn first(&self) -> Option<(LeaseLost, SystemTime)> {
        self.0.lock().unwrap().first().cloned()
    }
}

async fn keep_alive_cell(row: &str, injected: Injected, lease: Duration) -> Cell {
    let cell = Setup::new(row, Op::KeepAlive, lease).await;
    let losses = Losses::default();
    let notify = KeepAlive::notify(losses.clone().start().recipient());
    let grant = answered(cell.locks.send(Lock::new(R).keep_alive(notify)))
        .await
        .expect("granted");
    cell.commands.clear();
    let fault = injected.fault(Op::KeepAlive);
    match injected {
        // Every renewal blocks, as a server stalled for longer than the lease would.
        Injected::Block(_) => arm_always(&cell.app, &fault).await,
        _ => arm(&cell.app, 1, &fault).await,
    }
    let armed = Instant::now();
    // Until a renewal succeeds after the fault (a reply without a writeConcernError that
    // extended the stored lease), or the holder is told of a loss.
    let answer = eventually("keep-alive ends the fault", lease * 2, || async {
        if let Some((lost, at)) = losses.first() {
            assert_eq!(lost.lock_id, grant.lock_id);
            let before = if at < grant.expires_at {
                "before"
            } else {
                "AFTER"
            };
            return Some(format!(
                "LeaseLost({:?}) {before} the lease ended",
                lost.reason
            ));
        }
        let renewed = cell.commands.named("findAndModify").iter().any(|c| {
            c.ended
                == Ended::Succeeded {
                    write_concern_error: None,
                }
        });
        let extended =
            matches!(stored_hold(&cell.config).await, Some((_, _, e)) if e > grant.expires_at);
        (renewed && extended).then(|| "kept".to_owned())
    })
    .await;
    let took = armed.elapsed();
    off().await;
    if let Some((lost, at)) = losses.first() {
        assert_eq!(lost.reason, LostReason::Unreachable);
        assert!(
            at < grant.expires_at,
            "the holder was told of the loss only after its lease ended"
        );
    }
    // Unlock ends the keep-alive (NotHeld once the lease is over); no renewal may revive it.
    answered(cell.locks.send(Unlock::new(grant.lock_id)))
        .await
        .expect("Unlock answers");
    let retried_by = cell.retried_by(Op::KeepAlive);
    let labels = cell.first_error_labels(Op::KeepAlive);
    let burnt = cell.settle(&[grant.fence]).await;
    Cell {
        answer,
        retried_by,
        burnt,
        took,
        labels,
    }
}

/// Writes an expired hold of `R` as a crashed holder would leave it, fence 1.
async fn plant_expired_hold(config: &LockConfig, expires_at: SystemTime) {
    let at = DateTime::from_system_time(expires_at);
    collection(config)
        .await
        .insert_one(doc! {
            "resource": format!("{}-{R}", config.name),
            "exclusive": {
                "lockId": uuid::Uuid::new_v4().hyphenated().to_string(),
                "owner": "crashed", "host": "gone", "comment": Bson::Null,
                "createdAt": at, "renewedAt": Bson::Null, "expiresAt": at, "acquired": true,
            },
            "shared": { "count": 0, "locks": [] },
            "fence": 1_i64,
        })
        .await
        .expect("plant an expired hold");
}

async fn purge_cell(row: &str, injected: Injected, lease: Duration) -> Cell {
    let config = LockConfig::new(unique_name(&format!("{row}_purge")))
        .database("actix_mongo_lock_tests")
        .ttl(lease)
        .purger_period(PURGER_PERIOD);
    // Armed before the manager starts, so its first purge meets the fault.
    arm(&config.name, 1, &injected.fault(Op::Purge)).await;
    plant_expired_hold(&config, SystemTime::now() - Duration::from_secs(60)).await;
    let started = Instant::now();
    let cell = Setup::with_config(config).await;
    eventually(
        "the purge clears the expired hold",
        ANSWER_BOUND,
        || async { stored_hold(&cell.config).await.is_none().then_some(()) },
    )
    .await;
    let took = started.elapsed();
    off().await;
    let purges = cell.commands.named("update");
    let labels = cell.first_error_labels(Op::Purge);
    assert!(
        purges.iter().all(|c| c.txn_number.is_none()),
        "a purge was sent as a retryable write"
    );
    // The purge that cleared it: the last one sent by the time it was seen cleared, less one
    // if that one is still on its way.
    let clearing = purges
        .iter()
        .position(|c| match &c.ended {
            Ended::Succeeded { .. } => true,
            Ended::Pending => true,
            Ended::Failed { .. } => false,
        })
        .map_or(purges.len(), |i| i + 1);
    let answer = match purges.first().map(|c| &c.ended) {
        Some(Ended::Succeeded {
            write_concern_error: Some(code),
        }) => format!("cleared by purge 1 (reported as failed: writeConcernError {code})"),
        _ => format!("cleared by purge {clearing}"),
    };
    // The driver never retries a purge (asserted above); a purge after a failed one is the
    // purger's next period.
    let retried_by = if clearing > 1 {
        RetriedBy::Library
    } else {
        RetriedBy::Nobody
    };
    let burnt = cell.settle(&[1]).await;
    Cell {
        answer,
        retried_by,
        burnt,
        took,
        labels,
    }
}

/// Runs the six cells of a row one after the other (the failpoint is server-wide) and checks
/// each against the expected outcome of the row's class.
async fn row(name: &str, injected: Injected, lease: Duration) {
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let class = injected.class();
    let mut failures = Vec::new();
    for op in Op::ALL {
        let cell = match op {
            Op::Lock | Op::Acquire => grant_cell(name, injected, lease, op).await,
            Op::Unlock => unlock_cell(name, injected, lease).await,
            Op::Renew => renew_cell(name, injected, lease).await,
            Op::KeepAlive => keep_alive_cell(name, injected, lease).await,
            Op::Purge => purge_cell(name, injected, lease).await,
        };
        let (answer, retried_by, burnt) = expected(injected, op);
        eprintln!(
            "| {name} | {op:?} | {} | {:?} | {} | {:.0?} | {:?} |",
            cell.answer, cell.retried_by, cell.burnt, cell.took, cell.labels
        );
        // Why the driver retried or not: the server labels an injected code
        // RetryableWriteError on a retryable write only (never on the purge's updateMany).
        if let Injected::Code(_) = injected {
            let labelled = cell
                .labels
                .as_ref()
                .map(|labels| labels.iter().any(|l| l == "RetryableWriteError"));
            let expect_label = class == Class::DriverRetries && op != Op::Purge;
            if labelled != Some(expect_label) {
                failures.push(format!(
                    "{op:?}: the server error's labels are {:?}, expected RetryableWriteError: {expect_label}",
                    cell.labels
                ));
            }
        }
        if cell.answer != answer || cell.retried_by != retried_by || cell.burnt != burnt {
            failures.push(format!(
                "{op:?}: expected ({answer:?}, {retried_by:?}, {burnt} burnt), saw {cell:?}"
            ));
        }
    }
    off().await;
    assert!(failures.is_empty(), "{name} ({class:?}): {failures:#?}");
}

#[actix_rt::test]
async fn secantus_close_connection_is_retried_by_the_driver_and_loses_nothing() {
    row("closeConnection", Injected::CloseConnection, LEASE).await;
}

#[actix_rt::test]
async fn secantus_write_conflict_112_is_retried_by_the_library_where_it_retries() {
    row("WriteConflict_112", Injected::Code(112), LEASE).await;
}

#[actix_rt::test]
async fn secantus_shutdown_in_progress_91_is_retried_by_the_driver() {
    row("ShutdownInProgress_91", Injected::Code(91), LEASE).await;
}

#[actix_rt::test]
async fn secantus_primary_stepped_down_189_is_retried_by_the_driver() {
    row("PrimarySteppedDown_189", Injected::Code(189), LEASE).await;
}

#[actix_rt::test]
async fn secantus_not_writable_primary_10107_is_retried_by_the_driver() {
    row("NotWritablePrimary_10107", Injected::Code(10107), LEASE).await;
}

#[actix_rt::test]
async fn secantus_interrupted_at_shutdown_11600_is_retried_by_the_driver() {
    row("InterruptedAtShutdown_11600", Injected::Code(11600), LEASE).await;
}

#[actix_rt::test]
async fn secantus_host_unreachable_6_is_retried_by_the_driver() {
    row("HostUnreachable_6", Injected::Code(6), LEASE).await;
}

#[actix_rt::test]
async fn secantus_network_timeout_89_is_retried_by_the_driver() {
    row("NetworkTimeout_89", Injected::Code(89), LEASE).await;
}

#[actix_rt::test]
async fn secantus_max_time_ms_expired_50_is_retried_by_the_library_where_it_retries() {
    row("MaxTimeMSExpired_50", Injected::Code(50), LEASE).await;
}

#[actix_rt::test]
async fn secantus_write_concern_error_64_was_applied_and_loses_nothing() {
    row(
        "writeConcernError_64",
        Injected::WriteConcernError(64),
        LEASE,
    )
    .await;
}

#[actix_rt::test]
async fn secantus_write_concern_error_100_was_applied_and_loses_nothing() {
    row(
        "writeConcernError_100",
        Injected::WriteConcernError(100),
        LEASE,
    )
    .await;
}

/// The block outlasts the lease: 1.8 s against 1.2 s (keep-alive renews every 400 ms).
#[actix_rt::test]
async fn secantus_a_command_blocked_longer_than_the_lease_never_extends_a_hold_past_it() {
    row(
        "blockConnection",
        Injected::Block(Duration::from_millis(1800)),
        Duration::from_millis(1200),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// A real step-down: every write answers 10107 for 2 s, with no RetryableWriteError label
// ---------------------------------------------------------------------------------------------

/// SecantusDB's step-down answers writes with 10107 and, unlike mongod 4.4+, no
/// `RetryableWriteError` label, so the driver hands every one to the library; with a direct
/// connection the driver keeps sending writes to the stepped-down node. All six operations run
/// at once during one 2 s step-down.
#[actix_rt::test]
async fn secantus_a_real_step_down_of_2_s_is_retried_by_the_library_where_it_retries() {
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let lock = Setup::new("stepdown", Op::Lock, LEASE).await;
    let acquire = Setup::new("stepdown", Op::Acquire, LEASE).await;
    let unlock = Setup::new("stepdown", Op::Unlock, LEASE).await;
    let renew = Setup::new("stepdown", Op::Renew, LEASE).await;
    // A 6 s lease renews every 2 s: the first renewal falls inside the step-down, a retry after
    // it.
    let keep_alive = Setup::new("stepdown", Op::KeepAlive, Duration::from_secs(6)).await;
    let purge = Setup::new("stepdown", Op::Purge, LEASE).await;
    let held = answered(unlock.locks.send(Lock::new(R)))
        .await
        .expect("granted");
    let renewed = answered(renew.locks.send(Lock::new(R)))
        .await
        .expect("granted");
    let losses = Losses::default();
    let notify = KeepAlive::notify(losses.clone().start().recipient());
    let kept = answered(keep_alive.locks.send(Lock::new(R).keep_alive(notify)))
        .await
        .expect("granted");
    // The keep-alive's first renewal (2 s after its grant) falls in the middle of the step-down.
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    for setup in [&lock, &acquire, &unlock, &renew, &keep_alive, &purge] {
        setup.commands.clear();
    }
    // Live when planted, expired inside the step-down.
    plant_expired_hold(
        &purge.config,
        SystemTime::now() + Duration::from_millis(600),
    )
    .await;

    step_down(2).await;
    let stepped = Instant::now();
    let window_end = SystemTime::now() + Duration::from_secs(2);
    let (locked, acquired, unlocked, renewal, _, _) = futures::join!(
        answered(lock.locks.send(Lock::new(R))),
        answered(
            acquire
                .locks
                .send(Acquire::new(R).timeout(Duration::from_secs(5)))
        ),
        answered(unlock.locks.send(Unlock::new(held.lock_id.clone()))),
        answered(renew.locks.send(Renew::new(renewed.lock_id.clone()))),
        eventually(
            "keep-alive renews after the step-down",
            ANSWER_BOUND,
            || async {
                let extended = matches!(
                    stored_hold(&keep_alive.config).await,
                    Some((_, _, e)) if e > kept.expires_at
                );
                extended.then_some(())
            }
        ),
        eventually(
            "the purge clears the hold after the step-down",
            ANSWER_BOUND,
            || async { stored_hold(&purge.config).await.is_none().then_some(()) }
        ),
    );
    let all_done = stepped.elapsed();

    let not_primary = |answer: &Result<_, LockError>| matches!(answer, Err(e) if describe(e) == "Database(10107)");
    assert!(
        not_primary(&locked),
        "Lock during the step-down: {locked:?}"
    );
    assert_eq!(lock.retried_by(Op::Lock), RetriedBy::Nobody);
    let acquired = acquired.expect("Acquire retries through the step-down");
    assert!(SystemTime::now() >= window_end - Duration::from_millis(100));
    assert_eq!(acquire.retried_by(Op::Acquire), RetriedBy::Library);
    // Unlock gives up (3 retries 5 ms apart) long before the step-down ends; the hold stays
    // until its lease ends, not longer.
    assert!(
        matches!(unlocked, Err(LockError::UnlockMaxRetries { .. })),
        "Unlock during the step-down: {unlocked:?}"
    );
    let (_, _, stays_until) = stored_hold(&unlock.config).await.expect("still held");
    assert_eq!(stays_until, held.expires_at);
    assert!(
        not_primary(&renewal),
        "Renew during the step-down: {renewal:?}"
    );
    assert!(losses.first().is_none(), "keep-alive lost its hold");
    assert_eq!(keep_alive.retried_by(Op::KeepAlive), RetriedBy::Library);
    let purges = purge.commands.named("update");
    assert!(
        purges.iter().any(|c| matches!(
            &c.ended,
            Ended::Failed {
                code: Some(10107),
                ..
            }
        )),
        "no purge met the step-down: {purges:?}"
    );
    eprintln!(
        "| replSetStepDown 2 s | Lock: {} | Acquire: granted after {:?} | Unlock: UnlockMaxRetries \
         | Renew: {} | keep-alive: kept | purge: cleared after {} purges | all answered {all_done:.1?} after the step-down |",
        describe(locked.as_ref().unwrap_err()),
        acquired.granted_at.duration_since(window_end - Duration::from_secs(2)).unwrap_or_default(),
        describe(renewal.as_ref().unwrap_err()),
        purges.len(),
    );

    answered(acquire.locks.send(Unlock::new(acquired.lock_id.clone())))
        .await
        .expect("unlock");
    answered(renew.locks.send(Unlock::new(renewed.lock_id)))
        .await
        .expect("unlock");
    answered(keep_alive.locks.send(Unlock::new(kept.lock_id)))
        .await
        .expect("unlock");
    assert_eq!(lock.settle(&[]).await, 0);
    assert_eq!(acquire.settle(&[acquired.fence]).await, 0);
    assert_eq!(unlock.settle(&[held.fence]).await, 0);
    assert_eq!(renew.settle(&[renewed.fence]).await, 0);
    assert_eq!(keep_alive.settle(&[kept.fence]).await, 0);
    assert_eq!(purge.settle(&[1]).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Retried writes and fences
// ---------------------------------------------------------------------------------------------

/// A manager whose client goes through `proxy`, named (and recorded) after its lock family.
async fn through_proxy(proxy: &FaultProxy, prefix: &str) -> Setup {
    let config = LockConfig::new(unique_name(prefix))
        .database("actix_mongo_lock_tests")
        .ttl(Duration::from_secs(30))
        .acquire_retries(Duration::from_millis(50), 10);
    let app = config.name.clone();
    let (client, commands) = recorded_client(&proxy.uri(), &app).await;
    let locks = LockManager::with_client(client, config.clone())
        .await
        .expect("start a manager through the proxy");
    commands.clear();
    Setup {
        app,
        config,
        locks,
        commands,
    }
}

/// Sends `request` with 250 ms of latency each way and cuts the connection as soon as the
/// server has stored the grant, so the reply of an applied write is lost. Returns the stored
/// lock id and fence.
async fn lose_the_grant_reply(proxy: &FaultProxy, config: &LockConfig) -> (String, i64) {
    let (lock_id, fence, _) = eventually("the grant reaches the server", ANSWER_BOUND, || {
        stored_hold(config)
    })
    .await;
    proxy.add_latency(Duration::ZERO);
    proxy.drop_connections();
    (lock_id, fence)
}

/// A write's identity in the server's retryable-write record: its session and txnNumber.
type RetryKey = Option<(Option<String>, i64)>;

/// The grants (upsert `findAndModify` commands; a look at the line is not one) a manager sent,
/// as (its retryable-write identity, how it ended).
fn grants_sent(commands: &Commands) -> Vec<(RetryKey, Ended)> {
    commands
        .named("findAndModify")
        .into_iter()
        .filter(|c| c.upsert)
        .map(|c| (c.retry_key(), c.ended))
        .collect()
}

/// The driver re-sends a write whose reply was lost with the same txnNumber, and the server
/// answers it from its record of the first execution: no second `$inc` of the fence.
#[actix_rt::test]
async fn secantus_a_lost_grant_reply_is_resent_with_its_txn_number_and_answered_from_the_first_write(
) {
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let proxy = FaultProxy::start(upstream_from_env()).await.expect("proxy");
    let cell = through_proxy(&proxy, "lost_reply_driver").await;
    proxy.add_latency(Duration::from_millis(250));
    let answer = actix_rt::spawn(cell.locks.send(Lock::new(R)));
    let (stored_id, stored_fence) = lose_the_grant_reply(&proxy, &cell.config).await;
    let grant = tokio::time::timeout(ANSWER_BOUND, answer)
        .await
        .expect("answered in time")
        .unwrap()
        .unwrap()
        .expect("the driver's retry is answered with the first grant");
    assert_eq!(
        (grant.lock_id.as_str(), grant.fence),
        (stored_id.as_str(), 1)
    );
    assert_eq!(stored_fence, 1);
    assert_eq!(
        stored_hold(&cell.config).await.map(|h| h.1),
        Some(1),
        "the re-sent write incremented the fence again"
    );
    let sent = grants_sent(&cell.commands);
    assert_eq!(sent.len(), 2, "one write and the driver's retry: {sent:?}");
    assert!(
        sent[0].0.is_some(),
        "the grant was not sent as a retryable write"
    );
    assert_eq!(sent[0].0, sent[1].0, "the retry is another write");
    assert!(
        matches!(sent[0].1, Ended::Failed { code: None, .. }),
        "the first write did not fail with a network error: {sent:?}"
    );
    assert!(matches!(
        sent[1].1,
        Ended::Succeeded {
            write_concern_error: None
        }
    ));
    let released = answered(cell.locks.send(Unlock::new(grant.lock_id.clone()))).await;
    assert_eq!(released.ok(), Some(UnlockOutcome::Released));
    assert_eq!(cell.settle(&[grant.fence]).await, 0, "a fence was burnt");
}

/// The driver retries once. When its retry fails too (here the failpoint closes the retry's
/// connection before it runs), the Acquire's own retry sends the grant again as a NEW write
/// with the same lock id: the filter recognises the caller's own hold and the `$inc` takes the
/// next fence. The fence of the first write is never told to anyone: a gap.
#[actix_rt::test]
async fn secantus_after_the_driver_gives_up_an_acquire_retries_with_its_lock_id_and_takes_the_next_fence(
) {
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let proxy = FaultProxy::start(upstream_from_env()).await.expect("proxy");
    let cell = through_proxy(&proxy, "lost_reply_library").await;
    proxy.add_latency(Duration::from_millis(250));
    let answer = actix_rt::spawn(
        cell.locks
            .send(Acquire::new(R).timeout(Duration::from_secs(5))),
    );
    let (stored_id, _, _) = eventually("the grant reaches the server", ANSWER_BOUND, || {
        stored_hold(&cell.config)
    })
    .await;
    arm(&cell.app, 1, &Fault::close_connection(&["findAndModify"])).await;
    let (_, stored_fence) = lose_the_grant_reply(&proxy, &cell.config).await;
    let grant = tokio::time::timeout(ANSWER_BOUND, answer)
        .await
        .expect("answered in time")
        .unwrap()
        .unwrap()
        .expect("the Acquire's retry is granted");
    off().await;
    assert_eq!(stored_fence, 1);
    assert_eq!(
        grant.lock_id.as_str(),
        stored_id,
        "the retry took another lock id"
    );
    assert_eq!(grant.fence, 2, "the library's retry takes the next fence");
    let sent = grants_sent(&cell.commands);
    assert_eq!(
        sent.len(),
        3,
        "write, driver's retry, library's retry: {sent:?}"
    );
    assert_eq!(sent[0].0, sent[1].0, "the driver's retry is another write");
    assert_ne!(
        sent[1].0, sent[2].0,
        "the library's retry is the same write"
    );
    assert!(matches!(sent[1].1, Ended::Failed { code: None, .. }));
    let released = answered(cell.locks.send(Unlock::new(grant.lock_id.clone()))).await;
    assert_eq!(released.ok(), Some(UnlockOutcome::Released));
    assert_eq!(
        cell.settle(&[grant.fence]).await,
        1,
        "fence 1 was told to no one"
    );
}

/// A Lock makes one attempt: when the driver gives up on a write that was applied, the Lock
/// answers the error and releases its lock id in the background. The resource is free at once
/// and the fence that write took is told to no one.
#[actix_rt::test]
async fn secantus_a_lock_whose_grant_reply_is_lost_twice_frees_the_resource_and_burns_one_fence() {
    assert_secantus().await;
    let _serial = SERIAL.lock().await;
    let proxy = FaultProxy::start(upstream_from_env()).await.expect("proxy");
    let cell = through_proxy(&proxy, "lost_reply_lock").await;
    proxy.add_latency(Duration::from_millis(250));
    let answer = actix_rt::spawn(cell.locks.send(Lock::new(R)));
    eventually("the grant reaches the server", ANSWER_BOUND, || {
        stored_hold(&cell.config)
    })
    .await;
    arm(&cell.app, 1, &Fault::close_connection(&["findAndModify"])).await;
    lose_the_grant_reply(&proxy, &cell.config).await;
    let answer = tokio::time::timeout(ANSWER_BOUND, answer)
        .await
        .expect("answered in time")
        .unwrap()
        .unwrap();
    off().await;
    assert!(
        matches!(&answer, Err(e) if describe(e) == "Database(network)"),
        "{answer:?}"
    );
    assert_eq!(cell.settle(&[]).await, 1, "fence 1 was told to no one");
}
