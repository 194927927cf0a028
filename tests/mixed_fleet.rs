//! Mixed fleets: the seed's own Go `dplock` (ONS dp-mongodb v3.13.0 over square/mongo-lock,
//! built from interop/go) and this crate contending for the same resources on one server.
//!
//! The crate keeps dplock's schema so Go and Rust services can share a lock family; these tests
//! run the Go code to prove it, and show where the two cannot agree (dplock's lock ids can
//! collide; its leases are stamped on the Go client's clock). They need Go, so they are behind
//! the `go-interop` feature and run only through `scripts/mixed-fleet`, which builds the Go peer
//! and sets `DPLOCK_PEER`. They need SecantusDB or MongoDB: square/mongo-lock's flat `$or` and
//! `$lte` are answered wrongly by nx-27017 (docs/compatibility.md), so every test asserts it is
//! not running there.
//!
//! The Go peer (`dplock-peer serve`) answers one line per command; its times are Unix
//! milliseconds on its own clock, which on this machine is the test's clock too.

#![cfg(feature = "go-interop")]

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::Addr;
use actix_mongo_lock::{
    Acquire, ListHolds, LocalClock, Lock, LockConfig, LockError, LockManager, Status, Unlock,
    UnlockOutcome,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use support::contender::{Contender, ContenderRun};
use support::history::History;
use support::server::{manager, snapshot, stored, stored_shared, unique_name, unlocked, uri};

/// dplock's TTL: a constant 30 s, written by the Go client from its own clock.
const DPLOCK_TTL: Duration = Duration::from_secs(30);
/// How long any one Go peer command may take before the test fails (dplock's Acquire gives up
/// after 10 polls of 250 ms).
const PEER_ANSWER_BOUND: Duration = Duration::from_secs(30);
/// The bound on a waiter's grant after the holder's release: a few polling periods of either
/// side (250 ms) with a generous margin for a loaded machine. Measured gaps are printed.
const HAND_OFF_BOUND: Duration = Duration::from_secs(2);

/// Fails the test unless the server is one where square/mongo-lock's queries are exact.
fn assert_fair_server() {
    let server = std::env::var("MONGO_SERVER").unwrap_or_default();
    assert!(
        server == "secantus" || server == "external",
        "the mixed-fleet tests run on SecantusDB or a real MongoDB (MONGO_SERVER=secantus or \
         external), not {server:?}: run them as `scripts/mixed-fleet`"
    );
}

/// The Go peer binary `scripts/mixed-fleet` built.
fn peer_binary() -> String {
    std::env::var("DPLOCK_PEER").unwrap_or_else(|_| {
        panic!("DPLOCK_PEER is not set: run the mixed-fleet tests as `scripts/mixed-fleet`")
    })
}

fn at_ms(field: &str) -> SystemTime {
    let ms: u64 = field
        .parse()
        .unwrap_or_else(|e| panic!("bad time {field:?} from the Go peer: {e}"));
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A lock family shared by both sides: collection `<name>_locks`, resources `<name>-<id>`, in
/// the database the Go peer and `lock-contender` use. Defaults are the seed's (TTL 30 s).
fn shared_config(prefix: &str) -> LockConfig {
    LockConfig::new(unique_name(prefix))
        .database("actix_mongo_lock_tests")
        .owner(format!("rust-{prefix}"))
        .host("rust-host")
}

/// What a Go `lock` or `acquire` answered; a grant with the Go clock before and after the call.
#[derive(Debug)]
enum GoLock {
    Locked {
        lock_id: String,
        before: SystemTime,
        after: SystemTime,
    },
    Refused,
}

impl GoLock {
    #[track_caller]
    fn locked(self) -> (String, SystemTime, SystemTime) {
        match self {
            GoLock::Locked {
                lock_id,
                before,
                after,
            } => (lock_id, before, after),
            other => panic!("the Go peer did not get the lock: {other:?}"),
        }
    }
}

/// One `dplock-peer serve`: a dplock.Lock opened as an ONS service opens it, driven line by
/// line. Killed when dropped, so a failing test leaves no process behind.
struct GoPeer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr_path: std::path::PathBuf,
}

impl GoPeer {
    /// Starts a peer on `family`; with `fixed_time_id`, every lock id it makes ends in that
    /// number (dplock.GenerateTimeID replaced, as dplock's own tests do).
    async fn start(family: &str, fixed_time_id: Option<u32>) -> GoPeer {
        let stderr_path = std::env::temp_dir().join(format!(
            "dplock-peer-{family}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("create the peer's log file");
        let mut command = Command::new(peer_binary());
        command.args(["serve", "--family", family]);
        if let Some(id) = fixed_time_id {
            command.args(["--fixed-time-id", &id.to_string()]);
        }
        let mut child = command
            .env("MONGODB_URI", uri())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start dplock-peer");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut peer = GoPeer {
            child,
            stdin,
            lines,
            stderr_path,
        };
        let ready = peer.read_answer("start").await;
        assert_eq!(ready, ["READY"], "the Go peer did not start");
        peer
    }

    async fn read_answer(&mut self, command: &str) -> Vec<String> {
        let line = tokio::time::timeout(PEER_ANSWER_BOUND, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the Go peer did not answer {command:?} within 30 s"))
            .expect("read the Go peer's answer");
        let Some(line) = line else {
            let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            panic!("the Go peer exited before answering {command:?}; its log:\n{stderr}");
        };
        let fields: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert!(
            fields.first().map(String::as_str) != Some("ERROR"),
            "the Go peer failed {command:?}: {line}"
        );
        fields
    }

    async fn ask(&mut self, command: &str) -> Vec<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to the Go peer");
        self.stdin.flush().await.expect("write to the Go peer");
        self.read_answer(command).await
    }

    async fn take(&mut self, verb: &str, resource: &str) -> GoLock {
        let answer = self.ask(&format!("{verb} {resource}")).await;
        match &answer[..] {
            [word, lock_id, before, after] if word == "LOCKED" => GoLock::Locked {
                lock_id: lock_id.clone(),
                before: at_ms(before),
                after: at_ms(after),
            },
            [word, _, _] if word == "REFUSED" => GoLock::Refused,
            other => panic!("unexpected answer to {verb}: {other:?}"),
        }
    }

    /// dplock's `Lock`: one attempt.
    async fn lock(&mut self, resource: &str) -> GoLock {
        self.take("lock", resource).await
    }

    /// dplock's `Acquire`: polls every 250 ms, 10 times.
    async fn acquire(&mut self, resource: &str) -> GoLock {
        self.take("acquire", resource).await
    }

    /// square/mongo-lock's `SLock` under dplock: a shared hold of dplock's TTL, one of at most
    /// `limit` (negative: no limit).
    async fn slock(&mut self, resource: &str, limit: i32) -> GoLock {
        self.take("slock", &format!("{resource} {limit}")).await
    }

    /// dplock's `Unlock`; returns the Go clock before and after it.
    async fn unlock(&mut self, lock_id: &str) -> (SystemTime, SystemTime) {
        let answer = self.ask(&format!("unlock {lock_id}")).await;
        match &answer[..] {
            [word, before, after] if word == "UNLOCKED" => (at_ms(before), at_ms(after)),
            other => panic!("unexpected answer to unlock: {other:?}"),
        }
    }

    /// One pass of the purger dplock.New started; returns the lock ids it released.
    async fn purge(&mut self) -> Vec<String> {
        let answer = self.ask("purge").await;
        assert_eq!(
            answer.first().map(String::as_str),
            Some("PURGED"),
            "{answer:?}"
        );
        let count: usize = answer[1].parse().expect("purge count");
        let ids = answer[2..].to_vec();
        assert_eq!(ids.len(), count, "{answer:?}");
        ids
    }

    /// dplock's `Close`, then the connection's; waits for the process to exit.
    async fn close(mut self) {
        assert_eq!(self.ask("close").await, ["CLOSED"]);
        let status = tokio::time::timeout(PEER_ANSWER_BOUND, self.child.wait())
            .await
            .expect("the Go peer exits within 30 s of close")
            .expect("wait for the Go peer");
        assert!(status.success(), "the Go peer exited with {status}");
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

async fn rust_lock(
    locks: &Addr<LockManager>,
    resource: &str,
) -> Result<actix_mongo_lock::LockGrant, LockError> {
    locks
        .send(Lock::new(resource))
        .await
        .expect("manager answers")
}

async fn rust_status(
    locks: &Addr<LockManager>,
    resource: &str,
) -> Option<actix_mongo_lock::HoldStatus> {
    locks
        .send(Status::new(resource))
        .await
        .expect("manager answers")
        .expect("status")
}

// ---------------------------------------------------------------------------------------------
// The fleet
// ---------------------------------------------------------------------------------------------

/// One hold of the fleet, from either side, with the times its holder saw.
#[derive(Clone)]
struct FleetHold {
    process: String,
    resource: String,
    requested: SystemTime,
    granted: SystemTime,
    lease_expires: SystemTime,
    release_sent: SystemTime,
    /// `Some` when the release was confirmed (Go's Unlock returns nothing: it retries errors,
    /// so its return is taken as the release), `None` for a Rust Unlock that changed nothing.
    released: Option<SystemTime>,
    /// A shared hold (Go's `SLock`, Rust's `Acquire::shared`).
    shared: bool,
}

/// What one `dplock-peer contend` printed.
struct GoRun {
    holds: Vec<(FleetHold, String)>,
    grants: u64,
    refusals: u64,
    failures: u64,
}

fn parse_go_run(stdout: &str) -> GoRun {
    let mut run = GoRun {
        holds: Vec::new(),
        grants: 0,
        refusals: 0,
        failures: 0,
    };
    let mut done = false;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.first() {
            Some(&"DPLOCK-HOLD") => {
                let shared = fields.len() == 10 && fields[9] == "shared";
                let hold = if shared { &fields[..9] } else { &fields[..] };
                let &[_, process, resource, lock_id, requested, granted, expires, sent, released] =
                    hold
                else {
                    panic!("malformed DPLOCK-HOLD line: {line}");
                };
                run.holds.push((
                    FleetHold {
                        process: process.to_owned(),
                        resource: resource.to_owned(),
                        requested: at_ms(requested),
                        granted: at_ms(granted),
                        lease_expires: at_ms(expires),
                        release_sent: at_ms(sent),
                        released: Some(at_ms(released)),
                        shared,
                    },
                    lock_id.to_owned(),
                ));
            }
            Some(&"DPLOCK-DONE") => {
                let [_, _, grants, refusals, failures] = fields[..] else {
                    panic!("malformed DPLOCK-DONE line: {line}");
                };
                run.grants = grants.parse().expect("grants");
                run.refusals = refusals.parse().expect("refusals");
                run.failures = failures.parse().expect("failures");
                done = true;
            }
            _ => {}
        }
    }
    assert!(
        done,
        "a Go contender printed no DPLOCK-DONE line:\n{stdout}"
    );
    run
}

/// No hold of `config`'s family is left: no exclusive hold, no shared one.
async fn assert_nothing_held(config: &LockConfig) {
    for document in snapshot(config).await {
        let exclusive = document.get_document("exclusive").expect("exclusive");
        assert_eq!(
            exclusive.get_bool("acquired"),
            Ok(false),
            "left held: {document}"
        );
        let shared = document.get_document("shared").ok();
        let count = shared.and_then(|shared| shared.get("count").cloned());
        assert!(
            count.is_none() || stored_shared(&document).1 == 0,
            "shared holds left: {document}"
        );
    }
}

/// Starts `dplock-peer contend` for `family` as `process` for `seconds`, with `more` flags.
fn go_contender(family: &str, process: &str, seconds: u64, more: &[&str]) -> std::process::Child {
    std::process::Command::new(peer_binary())
        .args(["contend", "--family", family, "--process", process])
        .args(["--seconds", &seconds.to_string()])
        .args(more)
        .env("MONGODB_URI", uri())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dplock-peer contend")
}

/// Waits for a Go contender to end, and parses what it printed; panics if it failed.
async fn go_run_of(child: std::process::Child) -> GoRun {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait for a Go contender");
    assert!(
        output.status.success(),
        "a Go contender failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    parse_go_run(&String::from_utf8_lossy(&output.stdout))
}

/// Waits for a Rust contender to end, and parses what it printed; panics if it failed.
async fn rust_run_of(child: std::process::Child) -> ContenderRun {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait for a Rust contender");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "a Rust contender failed: {}\n{stderr}",
        output.status
    );
    ContenderRun::parse(&String::from_utf8_lossy(&output.stdout), &stderr)
}

/// A Rust contender's holds as fleet holds.
fn rust_fleet_holds(run: &ContenderRun) -> Vec<FleetHold> {
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    run.holds
        .iter()
        .map(|h| FleetHold {
            process: h.process.clone(),
            resource: h.resource.clone(),
            requested: at(h.requested_ms),
            granted: at(h.granted_ms),
            lease_expires: at(h.lease_expires_ms),
            release_sent: at(h.release_sent_ms),
            released: (h.outcome == "released").then(|| at(h.released_ms)),
            shared: h.shared,
        })
        .collect()
}

/// `history` with every hold of `fleet` (sorted by resource and grant) in it, each with a
/// stand-in fence in grant order per resource: dplock writes no fence, so the fence rules hold
/// by construction and the mode rules (overlaps, holders over a limit) decide.
fn cross_language_history(fleet: &mut [FleetHold], history: History) -> History {
    fleet.sort_by_key(|h| (h.resource.clone(), h.granted));
    let mut rank: BTreeMap<String, i64> = BTreeMap::new();
    for h in fleet.iter() {
        let fence = rank.entry(h.resource.clone()).or_default();
        *fence += 1;
        let id = history.granted_mode(
            &h.process,
            &h.resource,
            *fence,
            h.requested,
            h.granted,
            h.lease_expires,
            h.shared,
        );
        match h.released {
            Some(released) => history.released(id, h.release_sent, released),
            None => history.lost(id, h.release_sent),
        }
    }
    history
}

/// Two Go processes (dplock, 4 goroutines each) and two Rust processes (`lock-contender`, 4
/// workers each) take turns on 3 resources of one lock family for 20 s. The history checker
/// proves that no two holds of a resource overlapped, whoever held them.
///
/// dplock never writes the fence, so the cross-language check gives every hold a stand-in
/// fence in grant order (which makes the fence rules hold by construction and leaves the overlap
/// rule, the one that matters across languages); the Rust holds alone are then checked with
/// their real fences, which must still rise strictly although Go grants came in between.
#[actix_rt::test]
async fn two_go_and_two_rust_processes_never_hold_a_resource_at_once() {
    assert_fair_server();
    let family = unique_name("fleet");
    let seconds = 20;
    let go_names = ["go1", "go2"];
    let rust_names = ["rust1", "rust2"];
    // The crate creates the family's indexes first: a Rust manager cannot yet start on indexes
    // dplock created (`rust_manager_starts_on_a_lock_family_whose_indexes_dplock_created`).
    let config = LockConfig::new(&family).database("actix_mongo_lock_tests");
    drop(manager(&config).await);

    let go_children: Vec<_> = go_names
        .iter()
        .map(|process| {
            go_contender(
                &family,
                process,
                seconds,
                &["--workers", "4", "--resources", "3", "--hold-ms", "5"],
            )
        })
        .collect();
    let mut rust_children = Vec::new();
    for process in rust_names {
        let contender = Contender {
            name: family.clone(),
            process: process.to_owned(),
            workers: 4,
            resources: 3,
            seconds,
            ttl_ms: DPLOCK_TTL.as_millis() as u64,
            hold_ms: 5,
        };
        // Acquires that wait as long as the run: one that gave up with its attempt in flight
        // may be granted after its manager's last release try at Close, and that grant, told
        // to nobody, stays held until its lease ends, which the check below would take for a
        // hold left behind (seen once in CI, with 5 Acquires given up).
        rust_children.push(contender.spawn_with(&uri(), &[("--timeout-ms", "25000")]));
    }

    let mut go_runs = Vec::new();
    for child in go_children {
        go_runs.push(go_run_of(child).await);
    }
    let mut rust_runs = Vec::new();
    for child in rust_children {
        rust_runs.push(rust_run_of(child).await);
    }

    // Every hold is counted: each process printed one line per grant it reported.
    for (name, run) in go_names.iter().zip(&go_runs) {
        assert_eq!(run.failures, 0, "{name}: dplock calls failed");
        assert_eq!(
            run.holds.len() as u64,
            run.grants,
            "{name}: holds printed != grants"
        );
    }
    for (name, run) in rust_names.iter().zip(&rust_runs) {
        let (grants, _) = run.done.expect("a Rust contender printed no DONE line");
        assert_eq!(
            run.holds.len() as u64,
            grants,
            "{name}: holds printed != grants"
        );
    }

    let mut fleet: Vec<FleetHold> = Vec::new();
    let mut go_lock_ids = std::collections::HashSet::new();
    for run in &go_runs {
        for (hold, lock_id) in &run.holds {
            go_lock_ids.insert(lock_id.clone());
            fleet.push(hold.clone());
        }
    }
    let go_holds = fleet.len();
    rust_runs
        .iter()
        .for_each(|run| fleet.extend(rust_fleet_holds(run)));
    let rust_holds = fleet.len() - go_holds;

    // Across languages: stand-in fences in grant order per resource; the overlap rule decides.
    let summary = cross_language_history(&mut fleet, History::new()).check();

    // Rust alone: real fences, strictly rising in grant order.
    let rust_history = History::new();
    for run in &rust_runs {
        run.record(&rust_history);
    }
    let rust_fences = rust_history.check();

    let per_process = |process: &str| fleet.iter().filter(|h| h.process == process).count();
    println!(
        "mixed fleet, {seconds} s, 3 resources: Go (dplock) holds {go_holds} (go1 {}, go2 {}; \
         refusals {}), Rust holds {rust_holds} (rust1 {}, rust2 {}; refusals {}), distinct Go lock \
         ids {}, overlaps across languages: {}, Rust fence violations: {}",
        per_process("go1"),
        per_process("go2"),
        go_runs.iter().map(|r| r.refusals).sum::<u64>(),
        per_process("rust1"),
        per_process("rust2"),
        rust_runs
            .iter()
            .map(|r| r.done.map_or(0, |d| d.1))
            .sum::<u64>(),
        go_lock_ids.len(),
        summary.as_ref().map_or_else(|v| v.list.len(), |_| 0),
        rust_fences.as_ref().map_or_else(|v| v.list.len(), |_| 0),
    );
    if let Err(violations) = summary {
        panic!("Go and Rust holds overlapped:\n{violations}");
    }
    if let Err(violations) = rust_fences {
        panic!("Rust fences did not rise across Go grants:\n{violations}");
    }
    for process in go_names.iter().chain(&rust_names) {
        assert!(per_process(process) > 0, "{process} never got a lock");
    }

    // Everything was released: no hold is left in the collection.
    assert_nothing_held(&config).await;
}

/// Readers and writers of both languages on one resource for 15 s: a Go process (2 goroutines
/// taking square/mongo-lock's `SLock`, at most 3 holders, and 1 taking dplock's exclusive
/// `Acquire`) and a Rust process (`lock-contender`: 2 workers taking
/// `Acquire::shared(..).max_holders(3)` and 1 taking `Acquire`). One history of every hold, with
/// the mode rules: no exclusive hold beside any other hold and never more than 3 shared holders
/// at once, whichever side held them.
#[actix_rt::test]
async fn go_and_rust_readers_and_writers_keep_the_mode_rules_on_one_resource() {
    assert_fair_server();
    let family = unique_name("fleet_modes");
    let seconds = 15;
    let config = LockConfig::new(&family).database("actix_mongo_lock_tests");
    drop(manager(&config).await);
    let go = go_contender(
        &family,
        "go",
        seconds,
        &[
            "--workers",
            "3",
            "--resources",
            "1",
            "--hold-ms",
            "20",
            "--readers",
            "2",
            "--max-holders",
            "3",
        ],
    );
    let rust = Contender {
        name: family.clone(),
        process: "rust".to_owned(),
        workers: 3,
        resources: 1,
        seconds,
        ttl_ms: DPLOCK_TTL.as_millis() as u64,
        hold_ms: 20,
    }
    .spawn_with(
        &uri(),
        &[
            ("--readers", "2"),
            ("--max-holders", "3"),
            ("--timeout-ms", "20000"),
        ],
    );
    let go_run = go_run_of(go).await;
    let rust_run = rust_run_of(rust).await;
    assert_eq!(go_run.failures, 0, "dplock calls failed");
    let mut fleet: Vec<FleetHold> = go_run.holds.iter().map(|(h, _)| h.clone()).collect();
    fleet.extend(rust_fleet_holds(&rust_run));
    let count = |process: &str, shared: bool| {
        fleet
            .iter()
            .filter(|h| h.process == process && h.shared == shared)
            .count()
    };
    let [go_shared, go_exclusive, rust_shared, rust_exclusive] =
        [("go", true), ("go", false), ("rust", true), ("rust", false)].map(|(p, s)| count(p, s));
    let checked = cross_language_history(&mut fleet, History::new().with_max_holders(3)).check();
    println!(
        "mixed modes, {seconds} s, 1 resource, at most 3 shared holders: Go SLock {go_shared}, \
         Go exclusive {go_exclusive} (refusals {}), Rust shared {rust_shared}, Rust exclusive \
         {rust_exclusive}; violations of the mode rules: {}",
        go_run.refusals,
        checked.as_ref().map_or_else(|v| v.list.len(), |_| 0),
    );
    if let Err(violations) = checked {
        panic!("the mode rules broke across languages:\n{violations}");
    }
    assert!(
        go_shared > 0 && rust_shared > 0,
        "a side's readers never held: Go {go_shared}, Rust {rust_shared}"
    );
    assert!(
        go_exclusive + rust_exclusive > 0,
        "no writer ever held: the mode rules were not put to the test"
    );
    assert_nothing_held(&config).await;
}

// ---------------------------------------------------------------------------------------------
// Cross-language cases
// ---------------------------------------------------------------------------------------------

/// A Go hold refuses a Rust `Lock` and keeps a Rust `Acquire` waiting; the `Acquire` is granted
/// soon after the Go `Unlock`, never before it.
#[actix_rt::test]
async fn go_hold_blocks_rust_lock_and_rust_acquire_follows_go_unlock() {
    assert_fair_server();
    let config = shared_config("go_blocks");
    let locks = manager(&config).await;
    let mut go = GoPeer::start(&config.name, None).await;

    let (go_id, _, _) = go.lock("r").await.locked();
    assert!(
        matches!(
            rust_lock(&locks, "r").await,
            Err(LockError::AlreadyLocked { .. })
        ),
        "a Rust Lock was granted while Go held the resource"
    );

    let waiter = actix_rt::spawn({
        let locks = locks.clone();
        async move {
            let grant = locks
                .send(Acquire::new("r").timeout(Duration::from_secs(10)))
                .await
                .expect("manager answers");
            (grant, SystemTime::now())
        }
    });
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiter.is_finished(),
        "the Rust Acquire ended while Go held the resource"
    );

    let (unlock_sent, unlock_done) = go.unlock(&go_id).await;
    let (grant, granted) = waiter.await.expect("join");
    let grant = grant.expect("the Rust Acquire is granted after Go's Unlock");
    assert!(
        granted >= unlock_sent,
        "granted before Go's Unlock was sent"
    );
    let gap = granted.duration_since(unlock_done).unwrap_or_default();
    println!("Rust Acquire granted {gap:?} after the Go Unlock returned");
    assert!(
        gap < HAND_OFF_BOUND,
        "Rust Acquire took {gap:?} after the Go Unlock"
    );

    assert_eq!(
        locks
            .send(Unlock::new(grant.lock_id))
            .await
            .unwrap()
            .unwrap(),
        UnlockOutcome::Released
    );
    go.close().await;
}

/// A Rust hold refuses a Go `Lock` and keeps a Go `Acquire` polling; the Go `Acquire` gets the
/// resource within dplock's polling (every 250 ms) after the Rust `Unlock`, never before it.
#[actix_rt::test]
async fn rust_hold_blocks_go_lock_and_go_acquire_follows_rust_unlock() {
    assert_fair_server();
    let config = shared_config("rust_blocks");
    let locks = manager(&config).await;
    let mut go = GoPeer::start(&config.name, None).await;

    let grant = rust_lock(&locks, "r")
        .await
        .expect("Rust locks a free resource");
    assert!(
        matches!(go.lock("r").await, GoLock::Refused),
        "a Go Lock was granted while Rust held the resource"
    );

    let release = async {
        actix_rt::time::sleep(Duration::from_millis(700)).await;
        let sent = SystemTime::now();
        let outcome = locks
            .send(Unlock::new(grant.lock_id.clone()))
            .await
            .unwrap();
        assert_eq!(outcome.unwrap(), UnlockOutcome::Released);
        (sent, SystemTime::now())
    };
    let (go_answer, (unlock_sent, unlock_done)) = tokio::join!(go.acquire("r"), release);
    let (go_id, go_before, go_after) = go_answer.locked();
    assert!(
        go_after >= unlock_sent,
        "Go acquired before Rust's Unlock was sent"
    );
    let waited = go_after.duration_since(go_before).unwrap_or_default();
    let gap = go_after.duration_since(unlock_done).unwrap_or_default();
    println!("Go Acquire waited {waited:?}, granted {gap:?} after the Rust Unlock returned");
    assert!(
        gap < HAND_OFF_BOUND,
        "Go Acquire took {gap:?} after the Rust Unlock"
    );

    go.unlock(&go_id).await;
    assert_eq!(rust_status(&locks, "r").await, None);
    go.close().await;
}

/// A Go hold whose 30 s lease ran out is taken over by Rust, with a fence above every fence
/// before; the Go holder's late `Unlock` then leaves the Rust hold alone. Takes about 31 s:
/// dplock's TTL is a constant.
#[actix_rt::test]
async fn expired_go_hold_is_taken_over_by_rust_with_a_higher_fence() {
    assert_fair_server();
    let config = shared_config("go_expires");
    let locks = manager(&config).await;
    let mut go = GoPeer::start(&config.name, None).await;

    let mut fences = Vec::new();
    for _ in 0..3 {
        let grant = rust_lock(&locks, "r").await.expect("free");
        fences.push(grant.fence);
        locks
            .send(Unlock::new(grant.lock_id))
            .await
            .unwrap()
            .unwrap();
    }
    let (go_id, _, _) = go.lock("r").await.locked();
    let go_hold = rust_status(&locks, "r")
        .await
        .expect("Rust sees the Go hold");
    assert!(go_hold.live);
    assert_eq!(go_hold.fence, fences[2], "a Go grant changed the fence");
    let go_expires = go_hold.expires_at.expect("a Go hold has an expiry");

    let takeover = locks
        .send(Acquire::new("r").timeout(DPLOCK_TTL + Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("Rust takes over the expired Go hold");
    assert!(
        takeover.granted_at > go_expires,
        "taken over at {:?}, before the Go lease ended at {go_expires:?}",
        takeover.granted_at
    );
    assert!(
        fences.iter().all(|&f| takeover.fence > f),
        "takeover fence {} not above {fences:?}",
        takeover.fence
    );

    go.unlock(&go_id).await;
    let after = rust_status(&locks, "r")
        .await
        .expect("the Rust hold survives");
    assert_eq!(after.owner.as_deref(), Some(config.owner.as_str()));
    assert_eq!(after.fence, takeover.fence);
    assert!(after.live);
    assert_eq!(
        locks
            .send(Unlock::new(takeover.lock_id))
            .await
            .unwrap()
            .unwrap(),
        UnlockOutcome::Released
    );
    go.close().await;
}

/// A Go purger pass (the one dplock.New starts, every 5 minutes) clears an expired Rust hold and
/// leaves a live one; the fence keeps rising across the purge.
#[actix_rt::test]
async fn go_purger_clears_an_expired_rust_hold_and_fences_keep_rising() {
    assert_fair_server();
    let short = shared_config("go_purges").ttl(Duration::from_secs(1));
    let long = short.clone().ttl(DPLOCK_TTL);
    let short_locks = manager(&short).await;
    let long_locks = manager(&long).await;
    // Started before the Rust hold expires: dplock.New purges once at start, and this test
    // wants the purge to be the explicit pass below.
    let mut go = GoPeer::start(&short.name, None).await;

    let expiring = rust_lock(&short_locks, "r").await.expect("free");
    let live = rust_lock(&long_locks, "other").await.expect("free");
    actix_rt::time::sleep(Duration::from_millis(1500)).await;

    let purged = go.purge().await;
    assert_eq!(
        purged,
        [expiring.lock_id.to_string()],
        "the Go purger cleared the wrong holds"
    );
    assert_eq!(rust_status(&short_locks, "r").await, None);
    let other = rust_status(&long_locks, "other")
        .await
        .expect("the live hold survives");
    assert!(other.live);
    assert_eq!(other.fence, live.fence);

    assert_eq!(
        short_locks
            .send(Unlock::new(expiring.lock_id))
            .await
            .unwrap()
            .unwrap(),
        UnlockOutcome::NotHeld
    );
    let next = rust_lock(&short_locks, "r")
        .await
        .expect("free after the purge");
    assert_eq!(
        next.fence,
        expiring.fence + 1,
        "the purge broke the fence sequence"
    );
    let document = stored(&short, "r").await.expect("the document is kept");
    let stored_fence = match document.get("fence") {
        Some(mongodb::bson::Bson::Int64(f)) => Some(*f),
        Some(mongodb::bson::Bson::Int32(f)) => Some(i64::from(*f)),
        _ => None,
    };
    assert_eq!(stored_fence, Some(next.fence));

    short_locks
        .send(Unlock::new(next.lock_id))
        .await
        .unwrap()
        .unwrap();
    long_locks
        .send(Unlock::new(live.lock_id))
        .await
        .unwrap()
        .unwrap();
    go.close().await;
}

/// Rust `Status` and `ListHolds` show Go holds as dplock wrote them: no owner and no host
/// (dplock passes neither), created on the Go clock, a 30 s lease, no fence of their own.
#[actix_rt::test]
async fn rust_status_and_list_holds_show_go_holds_truthfully() {
    assert_fair_server();
    let config = shared_config("go_status");
    let locks = manager(&config).await;
    let mut go = GoPeer::start(&config.name, None).await;

    let (id_a, before, after) = go.lock("a").await.locked();
    go.lock("b").await.locked();
    let rust = rust_lock(&locks, "c").await.expect("free");

    let a = rust_status(&locks, "a")
        .await
        .expect("Rust sees the Go hold");
    assert_eq!(a.resource_id.as_str(), "a");
    assert_eq!((a.owner.as_deref(), a.host.as_deref()), (None, None));
    let created = a.created_at.expect("createdAt");
    assert!(
        created >= before && created <= after + Duration::from_millis(1),
        "createdAt {created:?} outside the Go call [{before:?}, {after:?}]"
    );
    assert_eq!(a.expires_at, Some(created + DPLOCK_TTL));
    assert_eq!(a.renewed_at, None);
    assert_eq!(a.fence, 0, "a document only Go wrote has no fence");
    assert!(a.live);

    let holds = locks.send(ListHolds).await.unwrap().expect("list holds");
    let seen: Vec<(&str, Option<&str>, Option<&str>)> = holds
        .iter()
        .map(|h| {
            (
                h.resource_id.as_str(),
                h.owner.as_deref(),
                h.host.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("a", None, None),
            ("b", None, None),
            ("c", Some(config.owner.as_str()), Some("rust-host")),
        ]
    );
    assert!(holds.iter().all(|h| h.live));

    go.unlock(&id_a).await;
    assert_eq!(rust_status(&locks, "a").await, None);
    let left: Vec<String> = locks
        .send(ListHolds)
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(|h| h.resource_id.as_str().to_owned())
        .collect();
    assert_eq!(left, ["b", "c"]);
    locks
        .send(Unlock::new(rust.lock_id))
        .await
        .unwrap()
        .unwrap();
    go.close().await;
}

/// Go's `Unlock` of lock ids it never held, dplock-shaped or not, changes nothing: a Rust hold's
/// id is a random UUID no dplock id can equal.
#[actix_rt::test]
async fn go_unlock_of_a_lock_id_it_never_held_leaves_a_rust_hold_alone() {
    assert_fair_server();
    let config = shared_config("go_stray_unlock");
    let locks = manager(&config).await;
    let mut go = GoPeer::start(&config.name, None).await;

    let grant = rust_lock(&locks, "r").await.expect("free");
    let before = snapshot(&config).await;
    for stray in [
        format!("{}-r-0", config.name),
        format!("{}-r-123456789", config.name),
        format!("{}-other-5", config.name),
        "r".to_owned(),
        uuid::Uuid::new_v4().hyphenated().to_string(),
    ] {
        go.unlock(&stray).await;
    }
    assert_eq!(
        snapshot(&config).await,
        before,
        "a stray Go Unlock changed the collection"
    );
    let status = rust_status(&locks, "r")
        .await
        .expect("the Rust hold survives");
    assert_eq!(status.fence, grant.fence);
    assert_eq!(
        locks
            .send(Unlock::new(grant.lock_id))
            .await
            .unwrap()
            .unwrap(),
        UnlockOutcome::Released
    );
    go.close().await;
}

/// Where the schemas cannot agree, 1: dplock's lock ids are `<family>-<resource>-<n>`, with `n`
/// the nanosecond within the current second of the Go clock, so two grants of one resource can
/// get the same id (1 in 10^9 per pair with a nanosecond clock, far likelier with a coarse one).
/// Forced here as dplock's own tests force it. Then the first holder's repeated Unlock (a retry,
/// or a late one) releases the second holder's hold, and a Rust `Lock` is granted while that Go
/// holder still believes it holds the resource. Rust ids are random UUIDs: the second Go
/// holder's own Unlock no longer touches anything, so the Rust hold survives it.
#[actix_rt::test]
async fn colliding_dplock_lock_ids_let_a_stale_go_unlock_release_another_go_hold() {
    assert_fair_server();
    let config = shared_config("go_collide");
    let locks = manager(&config).await;
    let mut first = GoPeer::start(&config.name, Some(424_242)).await;
    let mut second = GoPeer::start(&config.name, Some(424_242)).await;

    let (first_id, _, _) = first.lock("r").await.locked();
    first.unlock(&first_id).await;
    let (second_id, _, _) = second.lock("r").await.locked();
    assert_eq!(first_id, second_id, "the forced lock ids differ");
    assert_eq!(first_id, format!("{}-r-424242", config.name));

    first.unlock(&first_id).await;
    let rust = rust_lock(&locks, "r")
        .await
        .expect("the stale Go Unlock released the second Go hold, so Rust is granted");
    // The second Go holder never unlocked: two holders now. Its own Unlock misses the Rust hold.
    second.unlock(&second_id).await;
    let status = rust_status(&locks, "r")
        .await
        .expect("the Rust hold survives");
    assert_eq!(status.owner.as_deref(), Some(config.owner.as_str()));
    assert_eq!(status.fence, rust.fence);

    locks
        .send(Unlock::new(rust.lock_id))
        .await
        .unwrap()
        .unwrap();
    first.close().await;
    second.close().await;
}

/// Where the schemas cannot agree, 2: dplock stamps `createdAt` and `expiresAt` on the Go
/// client's clock (square/mongo-lock's `time.Now()`), and compares expiries with it too; this
/// crate works on the server's clock, measured through `hello`. A Rust manager whose own clock
/// runs a minute ahead still sees the Go hold live and cannot take it; a Go client whose clock
/// is off shifts its own leases, and its view of everyone's, by its skew (documented; a Go
/// process's clock cannot be skewed from here).
#[actix_rt::test]
async fn go_leases_follow_the_go_clock_and_a_skewed_rust_clock_cannot_end_them_early() {
    assert_fair_server();
    let config = shared_config("go_clock").clock(LocalClock::skewed(Duration::from_secs(60), true));
    let locks = manager(&config).await;
    let mut go = GoPeer::start(&config.name, None).await;

    let (go_id, before, after) = go.lock("r").await.locked();
    let status = rust_status(&locks, "r")
        .await
        .expect("Rust sees the Go hold");
    let created = status.created_at.expect("createdAt");
    assert!(
        created >= before && created <= after + Duration::from_millis(1),
        "createdAt {created:?} is not the Go clock during the call [{before:?}, {after:?}]"
    );
    assert_eq!(status.expires_at, Some(created + DPLOCK_TTL));
    assert!(
        status.live,
        "a skewed Rust clock saw a live Go hold as expired"
    );
    assert!(
        matches!(
            rust_lock(&locks, "r").await,
            Err(LockError::AlreadyLocked { .. })
        ),
        "a Rust manager with a clock 60 s ahead took a live Go hold"
    );

    go.unlock(&go_id).await;
    let grant = rust_lock(&locks, "r")
        .await
        .expect("free after the Go Unlock");
    locks
        .send(Unlock::new(grant.lock_id))
        .await
        .unwrap()
        .unwrap();
    go.close().await;
}

/// dplock creates its indexes first in a family Go services already use: its unique `resource`
/// index is also sparse (and SecantusDB records `background: false`). A Rust manager started
/// there must accept that index rather than fail on `createIndexes` with code 86
/// (IndexKeySpecsConflict), or a Rust service cannot join a Go fleet at all.
#[actix_rt::test]
async fn rust_manager_starts_on_a_lock_family_whose_indexes_dplock_created() {
    assert_fair_server();
    let config = shared_config("go_indexes_first");
    let mut go = GoPeer::start(&config.name, None).await;
    let (go_id, _, _) = go.lock("r").await.locked();

    let locks = LockManager::with_client(support::server::client().await, config.clone())
        .await
        .unwrap_or_else(|e| panic!("a Rust manager cannot start on dplock's indexes: {e}"));
    assert!(
        matches!(
            rust_lock(&locks, "r").await,
            Err(LockError::AlreadyLocked { .. })
        ),
        "a Rust Lock was granted while Go held the resource"
    );
    go.unlock(&go_id).await;
    let grant = rust_lock(&locks, "r")
        .await
        .expect("free after the Go Unlock");
    locks
        .send(Unlock::new(grant.lock_id))
        .await
        .unwrap()
        .unwrap();
    go.close().await;
}

// ---------------------------------------------------------------------------------------------
// Shared holds of both sides
// ---------------------------------------------------------------------------------------------

/// square/mongo-lock's `SLock` holders and this crate's shared holders share one document:
/// each side's shared hold stands beside the other's, each side's exclusive request is refused
/// while either side's shared hold is live (and each side's shared request while either side's
/// exclusive hold is), and a limit of holders counts both sides' holds.
#[actix_rt::test]
async fn go_and_rust_shared_holders_share_one_document_and_keep_writers_out() {
    assert_fair_server();
    let config = shared_config("shared_mix");
    let locks = manager(&config).await;
    let mut go = GoPeer::start(&config.name, None).await;

    let (go_reader, _, _) = go.slock("doc", -1).await.locked();
    let rust_reader = locks
        .send(Lock::shared("doc"))
        .await
        .unwrap()
        .expect("a Rust shared hold beside a Go one");
    let document = stored(&config, "doc").await.expect("stored");
    let mut both = vec![go_reader.clone(), rust_reader.lock_id.to_string()];
    both.sort();
    assert_eq!(stored_shared(&document), (both, 2));
    let status = rust_status(&locks, "doc").await.expect("held");
    assert!(status.shared && status.shared_holders == 2, "{status:?}");
    assert!(matches!(
        rust_lock(&locks, "doc").await,
        Err(LockError::AlreadyLocked { .. })
    ));
    assert!(matches!(go.lock("doc").await, GoLock::Refused));

    go.unlock(&go_reader).await;
    let document = stored(&config, "doc").await.expect("stored");
    assert_eq!(
        stored_shared(&document),
        (vec![rust_reader.lock_id.to_string()], 1)
    );
    assert!(matches!(go.lock("doc").await, GoLock::Refused));
    assert_eq!(
        locks
            .send(Unlock::new(rust_reader.lock_id))
            .await
            .unwrap()
            .unwrap(),
        UnlockOutcome::Released
    );

    let (go_writer, _, _) = go.lock("doc").await.locked();
    let refused = locks.send(Lock::shared("doc")).await.unwrap();
    assert!(
        matches!(refused, Err(LockError::AlreadyLocked { .. })),
        "a Rust shared Lock beside a Go exclusive hold answered {refused:?}"
    );
    go.unlock(&go_writer).await;
    let writer = rust_lock(&locks, "doc").await.expect("free again");
    assert!(matches!(go.slock("doc", -1).await, GoLock::Refused));
    unlocked(&locks, Unlock::new(writer.lock_id)).await;

    // One limit of two holders, counted over both sides.
    let (go_permit, _, _) = go.slock("pool", 2).await.locked();
    let rust_permit = locks
        .send(Lock::shared("pool").max_holders(2))
        .await
        .unwrap()
        .expect("the second of two permits");
    assert!(matches!(go.slock("pool", 2).await, GoLock::Refused));
    let full = locks
        .send(Lock::shared("pool").max_holders(2))
        .await
        .unwrap();
    assert!(
        matches!(full, Err(LockError::AlreadyLocked { .. })),
        "{full:?}"
    );
    go.unlock(&go_permit).await;
    let again = locks
        .send(Lock::shared("pool").max_holders(2))
        .await
        .unwrap()
        .expect("the permit Go returned");
    assert!(again.fence > rust_permit.fence);
    let document = stored(&config, "pool").await.expect("stored");
    assert_eq!(stored_shared(&document).1, 2);
    go.close().await;
}
