//! Leader election across processes, through faults: three instances of `examples/leader.rs`,
//! each its own process on a fault proxy of its own, campaign for one office. Round after
//! round the leader is killed (SIGKILL, replaced by a fresh process), stopped (SIGTERM: it
//! closes, and is replaced), or cut off from the database (its proxy black-holed, then
//! restored). From every line they printed, and the lease ends stored at each kill:
//!
//! - never two leaderships at once: each leader is elected only after the one before was told
//!   `Deposed` (or, killed, after its stored lease ended);
//! - every term is higher than the one before;
//! - a stopped leader was told `Closing`, a cut-off one `LeaseLost(Unreachable)`;
//! - failover after a kill within the lease + 1 s safety probe (plus a margin for a loaded
//!   machine), after a SIGTERM within 1 s + margin; both reported as p50 / p99;
//! - an `Observer` in the test's process (looking every second, its default) sees "nobody" or
//!   the successor within the lease + 1 s (+ margin) of every kill.
//!
//! ```sh
//! scripts/with-mongo cargo test --test election_processes -- --nocapture
//! ELECTION_ROUNDS=200 MONGO_SERVER=secantus scripts/with-mongo cargo test --test election_processes -- --nocapture
//! ```
//!
//! By default it runs 6 rounds (two of each fault); the figures in docs/benchmarks.md are of
//! 24 and 200.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_mongo_lock::election::Observer;
use actix_mongo_lock::LockConfig;
use support::contender::example_binary;
use support::leaders::LeaderLog;
use support::proxy::{upstream_from_env, FaultProxy};
use support::server::{stored, unique_name};
use tokio::sync::mpsc;

/// The lease of a leadership.
const TTL: Duration = Duration::from_secs(2);
/// The rounds run by default (`ELECTION_ROUNDS` sets another number): two of each fault. Few,
/// because every killed or cut-off instance leaves its change stream open on the server until
/// the server times it out, and SecantusDB slows every write per open stream, for the tests
/// that run after this one on the same server; the long runs are by hand.
const ROUNDS: usize = 6;
/// How long a round may take to show its new leader.
const ROUND_WITHIN: Duration = Duration::from_secs(20);
/// A margin for a loaded machine on every failover bound.
const MARGIN: Duration = Duration::from_secs(3);
/// The database of the tests' lock families.
const DATABASE: &str = "actix_mongo_lock_tests";
/// The office the instances campaign for (the example's).
const OFFICE: &str = "scheduler";

/// One line an instance printed, split into its fields.
#[derive(Clone, Debug)]
struct Line {
    fields: Vec<String>,
}

impl Line {
    fn kind(&self) -> &str {
        &self.fields[0]
    }
    fn who(&self) -> &str {
        &self.fields[1]
    }
    fn number(&self, at: usize) -> u64 {
        self.fields[at]
            .parse()
            .unwrap_or_else(|_| panic!("field {at} of {:?}", self.fields))
    }
}

/// What happened to a leadership's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Term,
    Cut,
}

/// One leadership: its term, who, when it was told `Elected`, and how it ended.
#[derive(Clone, Debug)]
struct Leadership {
    term: u64,
    who: String,
    elected_ms: u64,
    /// When it was told `Deposed`, and why; or, for a killed leader, its stored lease end.
    ended_ms: Option<u64>,
    deposed: Option<String>,
    fault: Option<(Fault, u64)>,
}

struct Fleet {
    binary: String,
    family: String,
    proxies: Vec<FaultProxy>,
    children: Vec<Option<(String, Child)>>,
    spawned: usize,
    lines: mpsc::UnboundedSender<Line>,
}

impl Fleet {
    /// Starts an instance on `slot`, named after the slot and how many were started.
    fn spawn(&mut self, slot: usize) {
        self.spawned += 1;
        let who = format!("{}{}", ["a", "b", "c"][slot], self.spawned);
        let mut child = Command::new(&self.binary)
            .args([
                "--who",
                &who,
                "--family",
                &self.family,
                "--database",
                DATABASE,
                "--ttl-ms",
                &TTL.as_millis().to_string(),
                "--job-ms",
                "1000",
            ])
            .env("MONGODB_URI", self.proxies[slot].uri_from_env())
            .stdout(Stdio::piped())
            .stderr(match std::env::var("ELECTION_LOGS") {
                // A directory for each instance's log (with RUST_LOG set), to debug a failure.
                Ok(dir) => Stdio::from(
                    std::fs::File::create(format!("{dir}/{who}.log")).expect("a log file"),
                ),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .expect("start an instance");
        let stdout = child.stdout.take().expect("piped");
        let lines = self.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let fields = line.split_whitespace().map(str::to_owned).collect();
                if lines.send(Line { fields }).is_err() {
                    break;
                }
            }
        });
        self.children[slot] = Some((who, child));
    }

    fn slot_of(&self, who: &str) -> usize {
        self.children
            .iter()
            .position(|c| c.as_ref().is_some_and(|(name, _)| name == who))
            .unwrap_or_else(|| panic!("no instance {who}"))
    }

    fn kill(&mut self, slot: usize) {
        if let Some((_, mut child)) = self.children[slot].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits, without blocking the test's thread, for the instance to exit:
    /// its Close goes through the proxies, which run on this thread.
    async fn terminate(&mut self, slot: usize) {
        if let Some((who, mut child)) = self.children[slot].take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -TERM failed");
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while child.try_wait().expect("the instance's status").is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{who} did not exit within 15 s of SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Drop for Fleet {
    /// A test that fails midway leaves no instance running.
    fn drop(&mut self) {
        for slot in 0..self.children.len() {
            self.kill(slot);
        }
    }
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn quantile(values: &mut [u64], q: f64) -> u64 {
    values.sort_unstable();
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[at]
}

/// Reads lines into `all` until the next `ELECTED` of a term above `after`; returns it.
async fn next_elected(
    lines: &mut mpsc::UnboundedReceiver<Line>,
    all: &mut Vec<Line>,
    after: u64,
) -> Line {
    let deadline = tokio::time::Instant::now() + ROUND_WITHIN;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no leader within {ROUND_WITHIN:?}: {all:?}"))
            .expect("instances print");
        all.push(line.clone());
        if line.kind() == "ELECTED" && line.number(2) > after {
            return line;
        }
    }
}

#[actix_rt::test]
async fn leaders_killed_stopped_and_cut_off_among_three_processes_never_overlap() {
    let rounds: usize = std::env::var("ELECTION_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ROUNDS);
    let binary = example_binary("leader");
    let family = unique_name("elect_procs");
    let config = LockConfig::new(family.clone()).database(DATABASE);
    let (tx, mut lines) = mpsc::unbounded_channel();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(FaultProxy::start(upstream_from_env()).await.unwrap());
    }
    let mut fleet = Fleet {
        binary,
        family: family.clone(),
        proxies,
        children: vec![None, None, None],
        spawned: 0,
        lines: tx,
    };
    for slot in 0..3 {
        fleet.spawn(slot);
    }
    let observed = LeaderLog::default();
    let watching = support::server::manager(&config).await;
    let _observer = Observer::new(
        watching.clone(),
        OFFICE,
        observed.clone().start().recipient(),
    )
    .expect("a valid office")
    .start();

    let mut all = Vec::new();
    let mut faults: BTreeMap<u64, (Fault, u64)> = BTreeMap::new();
    let mut lease_end_at_kill: BTreeMap<u64, u64> = BTreeMap::new();
    let mut cut: Option<usize> = None;
    let mut leader = next_elected(&mut lines, &mut all, 0).await;
    for round in 0..rounds {
        let term = leader.number(2);
        let slot = fleet.slot_of(leader.who());
        // A cut from the round before is lifted once its successor leads; the cut instance
        // campaigns again.
        if let Some(was) = cut.take() {
            fleet.proxies[was].pass_through();
        }
        let fault = [Fault::Kill, Fault::Term, Fault::Cut][round % 3];
        let at = now_ms();
        match fault {
            Fault::Kill => {
                fleet.kill(slot);
                // Its last renewal may still be on its way: read the lease end once it landed.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let document = stored(&config, OFFICE)
                    .await
                    .expect("the office's document");
                let exclusive = document.get_document("exclusive").expect("exclusive");
                let fence = document
                    .get_i64("fence")
                    .unwrap_or_else(|_| i64::from(document.get_i32("fence").expect("a fence")))
                    as u64;
                if fence == term && exclusive.get_bool("acquired") == Ok(true) {
                    let end = exclusive.get_datetime("expiresAt").expect("a lease end");
                    lease_end_at_kill.insert(term, end.timestamp_millis() as u64);
                }
                fleet.spawn(slot);
            }
            Fault::Term => {
                fleet.terminate(slot).await;
                fleet.spawn(slot);
            }
            Fault::Cut => {
                fleet.proxies[slot].black_hole();
                cut = Some(slot);
            }
        }
        faults.insert(term, (fault, at));
        leader = next_elected(&mut lines, &mut all, term).await;
    }
    for slot in 0..3 {
        fleet.proxies[slot].pass_through();
        fleet.terminate(slot).await;
    }
    while let Ok(line) = lines.try_recv() {
        all.push(line);
    }

    // Every leadership, in the order elected.
    let mut leaderships: Vec<Leadership> = Vec::new();
    for line in &all {
        match line.kind() {
            "ELECTED" => leaderships.push(Leadership {
                term: line.number(2),
                who: line.who().to_owned(),
                elected_ms: line.number(3),
                ended_ms: None,
                deposed: None,
                fault: faults.get(&line.number(2)).copied(),
            }),
            "DEPOSED" => {
                let term = line.number(2);
                let leadership = leaderships
                    .iter_mut()
                    .find(|l| l.term == term && l.who == line.who())
                    .unwrap_or_else(|| panic!("deposed from no leadership: {line:?}"));
                leadership.ended_ms = Some(line.number(4));
                leadership.deposed = Some(line.fields[3].clone());
            }
            _ => {}
        }
    }
    for leadership in &mut leaderships {
        if leadership.ended_ms.is_none() {
            leadership.ended_ms = lease_end_at_kill.get(&leadership.term).copied();
        }
    }
    for l in &leaderships {
        eprintln!(
            "term {} {} elected {} ended {:?} ({:?}) fault {:?}",
            l.term,
            l.who,
            l.elected_ms,
            l.ended_ms.map(|e| e as i64 - l.elected_ms as i64),
            l.deposed,
            l.fault.map(|(f, at)| (f, at as i64 - l.elected_ms as i64)),
        );
    }
    assert!(
        leaderships.len() > rounds,
        "{} leaderships in {rounds} rounds",
        leaderships.len()
    );
    let (mut after_kill, mut after_term) = (Vec::new(), Vec::new());
    for pair in leaderships.windows(2) {
        let (before, next) = (&pair[0], &pair[1]);
        assert!(
            next.term > before.term,
            "term {} after term {}",
            next.term,
            before.term
        );
        let ended = before
            .ended_ms
            .unwrap_or_else(|| panic!("a leadership that never ended: {before:?}"));
        assert!(
            next.elected_ms >= ended,
            "two leaders at once: {next:?} elected {} ms before {before:?} ended",
            ended - next.elected_ms
        );
        let Some((fault, at)) = before.fault else {
            continue;
        };
        let failover = next.elected_ms.saturating_sub(at);
        match fault {
            Fault::Kill => {
                assert_eq!(before.deposed, None, "a killed leader spoke: {before:?}");
                let bound = TTL + Duration::from_secs(1) + MARGIN;
                assert!(
                    failover <= bound.as_millis() as u64,
                    "after a kill, the next leader came {failover} ms later (bound {bound:?})"
                );
                after_kill.push(failover);
            }
            Fault::Term => {
                assert_eq!(before.deposed.as_deref(), Some("Closing"), "{before:?}");
                let bound = Duration::from_secs(1) + MARGIN;
                assert!(
                    failover <= bound.as_millis() as u64,
                    "after a SIGTERM, the next leader came {failover} ms later (bound {bound:?})"
                );
                after_term.push(failover);
            }
            Fault::Cut => {
                assert_eq!(
                    before.deposed.as_deref(),
                    Some("LeaseLost(Unreachable)"),
                    "{before:?}"
                );
            }
        }
    }
    assert!(!after_kill.is_empty() && !after_term.is_empty());

    // After every kill the observer saw nobody, or a later term, within the lease and one look
    // (1 s), plus the margin.
    let seen: Vec<(u64, Option<u64>)> = observed
        .seen()
        .into_iter()
        .map(|(when, leader)| (unix_ms(when), leader.map(|leader| leader.term as u64)))
        .collect();
    let mut observed_after_kill = Vec::new();
    for (term, (fault, at)) in &faults {
        if *fault != Fault::Kill {
            continue;
        }
        let saw = seen
            .iter()
            .find(|(when, leading)| *when >= *at && leading.is_none_or(|t| t > *term))
            .map(|(when, _)| when - at)
            .unwrap_or_else(|| panic!("the observer never saw term {term} end: {seen:?}"));
        let bound = TTL + Duration::from_secs(1) + MARGIN;
        assert!(
            saw <= bound.as_millis() as u64,
            "the observer saw term {term} end {saw} ms after the kill (bound {bound:?})"
        );
        observed_after_kill.push(saw);
    }
    eprintln!(
        "{rounds} rounds, {} leaderships; failover after SIGKILL p50 {} ms p99 {} ms (lease \
         {TTL:?}), after SIGTERM p50 {} ms p99 {} ms; the observer saw a killed leader's term \
         end p50 {} ms p99 {} ms after the kill",
        leaderships.len(),
        quantile(&mut after_kill.clone(), 0.5),
        quantile(&mut after_kill, 0.99),
        quantile(&mut after_term.clone(), 0.5),
        quantile(&mut after_term, 0.99),
        quantile(&mut observed_after_kill.clone(), 0.5),
        quantile(&mut observed_after_kill, 0.99),
    );
}
