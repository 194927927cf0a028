//! Readers and writers of one resource from two processes, for 20 s, through kills and dropped
//! connections: shared holds and semaphores keep their rules when processes die holding them
//! and the network fails under them.
//!
//! Two `lock-contender` processes (tests/tools/lock-contender.rs), each with 4 readers
//! (`Acquire::shared(..).max_holders(3)`) and 1 writer (`Acquire`), contend for one resource
//! through a fault proxy that drops every connection every 2 s. Twice, a process is killed
//! (SIGKILL) the moment it prints a grant, so it dies holding, and a fresh process takes its
//! place. Every grant any of them saw goes into one history (tests/support/history.rs), which
//! must show no writer overlapping anyone, never more than 3 shared holders, and fences rising
//! in grant order, the grants of the killed processes included (each printed as it was made).
//!
//! ```sh
//! scripts/with-mongo cargo test --test readers_writers -- --nocapture
//! MONGO_SERVER=secantus scripts/with-mongo cargo test --test readers_writers -- --nocapture
//! ```

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_mongo_lock::LockConfig;
use mongodb::bson::Document;

use support::contender::{lines_of, Contender, ContenderRun};
use support::history::History;
use support::proxy::{upstream_from_env, FaultProxy};
use support::server::{stored, stored_fence, unique_name};
use tokio::sync::mpsc;

/// The lease of every hold, shared or exclusive.
const TTL: Duration = Duration::from_secs(3);
/// The semaphore's limit: fewer than the 8 readers, so it is reached.
const LIMIT: u32 = 3;
/// The whole run.
const RUN: Duration = Duration::from_secs(20);
/// How often the proxy drops every connection.
const DROP_EVERY: Duration = Duration::from_secs(2);
/// When, into the run, each kill is due (of the second process, then of the first). The
/// first 8 s are the steady state the writers' waits are judged on.
const KILLS_AT: [Duration; 2] = [Duration::from_secs(8), Duration::from_secs(14)];
/// An exclusive waiter's safety probe while a hold it cannot see end is live: it looks at
/// least this often (docs/guide.md, "Shared holds and semaphores").
const SAFETY_PROBE: Duration = Duration::from_secs(1);
/// How long a manager killed while the turn in the line is its own holds the line up after
/// the leases live at its turn's last renewal end (docs/guide.md, "How waiting works across
/// processes"): a killed process that had a writer waiting may have had the turn. A turn given
/// while the resource is held outlives the lease by 1 s, but a release that names the killed
/// manager (a surviving reader's) renews its turn for 5 s from then.
const KILLED_TURN: Duration = Duration::from_secs(5);

/// A running contender: its stdout as it comes (and what was read of it), its stderr read on
/// a thread of its own.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn start(name: &str, process: &str, seconds: u64, uri: &str) -> Running {
        let contender = Contender {
            name: name.to_owned(),
            process: process.to_owned(),
            workers: 5,
            resources: 1,
            seconds,
            ttl_ms: TTL.as_millis() as u64,
            hold_ms: 50,
        };
        let limit = LIMIT.to_string();
        let mut child = contender.spawn_with(
            uri,
            &[
                ("--readers", "4"),
                ("--max-holders", &limit),
                ("--grant-lines", "1"),
                ("--timeout-ms", "15000"),
            ],
        );
        let lines = lines_of(&mut child);
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Kills the process (SIGKILL) as soon as it prints its next grant, so it dies holding;
    /// answers when it was killed. Every line read on the way is kept.
    async fn kill_holding(&mut self, who: &str) -> SystemTime {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        let within = Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let granted = line.starts_with("GRANT");
                    self.seen.push(line);
                    if granted {
                        break;
                    }
                }
                Ok(None) => panic!("{who} ended before its next grant"),
                Err(_) => panic!("{who} was granted nothing within {within:?}"),
            }
        }
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("kill -9 {who}: {e}"));
        SystemTime::now()
    }

    /// Waits for the process to end (it was killed, or ran out its seconds) and parses all it
    /// printed.
    async fn finish(mut self) -> (ContenderRun, std::process::ExitStatus) {
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        let status = self.child.wait().expect("the contender ends");
        let stderr = self.stderr.join().expect("stderr is read");
        (ContenderRun::parse(&self.seen.join("\n"), &stderr), status)
    }
}

/// The lease ends of the holds stored in `document`, by resource and fence: each shared
/// hold's, and the exclusive hold's if one is taken (its fence is the document's: no grant is
/// made beside it).
fn stored_lease_ends(resource: &str, document: &Document) -> BTreeMap<(String, i64), SystemTime> {
    let mut ends = BTreeMap::new();
    let shared = document.get_document("shared").ok();
    for entry in shared
        .and_then(|shared| shared.get_array("locks").ok())
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.as_document())
    {
        let fence = entry
            .get("fence")
            .and_then(|f| f.as_i64().or_else(|| f.as_i32().map(i64::from)))
            .expect("a shared hold's fence");
        let end = entry.get_datetime("expiresAt").expect("its lease end");
        ends.insert((resource.to_owned(), fence), end.to_system_time());
    }
    let exclusive = document
        .get_document("exclusive")
        .expect("an exclusive sub-document");
    if exclusive.get_bool("acquired") == Ok(true) {
        let end = exclusive.get_datetime("expiresAt").expect("its lease end");
        ends.insert(
            (resource.to_owned(), stored_fence(document)),
            end.to_system_time(),
        );
    }
    ends
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `q`-quantile (0 to 1) of `values`, sorted in place.
fn quantile(values: &mut [u64], q: f64) -> u64 {
    values.sort_unstable();
    let index = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[index.min(values.len() - 1)]
}

#[test]
fn eight_readers_and_two_writers_in_two_processes_keep_the_mode_rules_through_kills_and_dropped_connections(
) {
    // Built (or found up to date) before the clock starts: a build blocks this thread.
    support::contender::binary();
    actix_rt::System::new().block_on(async {
        let proxy = FaultProxy::start(upstream_from_env())
            .await
            .expect("the fault proxy starts");
        let uri = proxy.uri_from_env();
        let name = unique_name("readers_writers");
        let config = LockConfig::new(&name).database("actix_mongo_lock_tests");
        let mut lease_ends = BTreeMap::new();
        let started = Instant::now();
        let run_s = RUN.as_secs();
        let mut running = vec![
            Running::start(&name, "p1", run_s, &uri),
            Running::start(&name, "p2", run_s, &uri),
        ];
        let dropping = {
            let proxy = proxy.clone();
            actix_rt::spawn(async move {
                let mut drops = 0_u32;
                while started.elapsed() + DROP_EVERY < RUN {
                    actix_rt::time::sleep(DROP_EVERY).await;
                    proxy.drop_connections();
                    drops += 1;
                }
                drops
            })
        };
        let mut kills = Vec::new();
        let mut finished = Vec::new();
        for (k, at) in KILLS_AT.into_iter().enumerate() {
            actix_rt::time::sleep(at.saturating_sub(started.elapsed())).await;
            // The second process first, then the first (each slot's current process).
            let slot = 1 - k;
            let killed = running[slot].kill_holding(&format!("slot {slot}")).await;
            // Read at once (directly, not through the proxy): the killed holds are stored
            // until their leases end.
            let document = stored(&config, "r0").await.expect("the resource is stored");
            lease_ends.extend(stored_lease_ends("r0", &document));
            let left = RUN.saturating_sub(started.elapsed()).as_secs().max(1);
            let fresh = Running::start(&name, &format!("p{}-after-kill-{k}", slot + 1), left, &uri);
            let victim = std::mem::replace(&mut running[slot], fresh);
            let (run, status) = victim.finish().await;
            assert!(!status.success(), "the victim was not killed: {status}");
            kills.push((killed, run.clone()));
            finished.push(run);
        }
        for process in running {
            let (run, status) = process.finish().await;
            assert!(
                status.success(),
                "a contender failed ({status}): {}",
                run.stderr
            );
            assert!(run.done.is_some(), "a contender did not finish: {run:?}");
            finished.push(run);
        }
        let drops = dropping.await.expect("the dropping task");

        // The mode rules, on every grant seen, the killed processes' last ones included.
        let history = History::new().with_max_holders(LIMIT as usize);
        finished
            .iter()
            .for_each(|run| run.record_with_leases(&history, &lease_ends));
        let summary = history.assert_ok();
        let holds: Vec<_> = finished.iter().flat_map(|run| &run.holds).collect();
        let (shared, exclusive) = (
            holds.iter().filter(|h| h.shared).count(),
            holds.iter().filter(|h| !h.shared).count(),
        );
        let failed: usize = finished
            .iter()
            .map(|run| run.stderr.matches("acquire failed").count())
            .sum();

        // Every kill landed on a hold, and its permits came back: a writer, who needs every
        // permit back, was granted within the longest lease, the 5 s a killed manager's turn
        // holds the line up, and one safety probe, from the kill.
        let mut after_lease_ends = Vec::new();
        for (k, (killed, run)) in kills.iter().enumerate() {
            let unfinished = run.unfinished();
            assert!(
                !unfinished.is_empty(),
                "kill {k} landed on no hold: {run:?}"
            );
            let killed_ms = unix_ms(*killed);
            let lease_end = unfinished
                .iter()
                .map(|g| {
                    let stored = lease_ends.get(&(g.resource.clone(), g.fence));
                    unix_ms(*stored.expect("the killed hold was stored at the kill"))
                })
                .max()
                .expect("a hold");
            let writer = finished
                .iter()
                .flat_map(|run| &run.grants)
                .filter(|g| !g.shared && g.granted_ms > killed_ms)
                .map(|g| g.granted_ms)
                .min()
                .expect("a writer was granted after the kill");
            // The killed manager may have had the turn, last renewed just before the kill to
            // cover every lease then live (TTL at most), or by a release for 5 s; then one safety
            // probe.
            let margin = Duration::from_secs(3);
            let bound = killed_ms + (TTL + KILLED_TURN + SAFETY_PROBE + margin).as_millis() as u64;
            let late = writer as i64 - lease_end as i64;
            after_lease_ends.push(late);
            eprintln!(
                "kill {k}: {} hold(s) held at the kill ({}); the next writer granted {} ms after \
                 the kill, {late} ms after the last of their leases ended, as stored (bound: the \
                 kill + {TTL:?} + {KILLED_TURN:?} + {SAFETY_PROBE:?} + {margin:?} margin)",
                unfinished.len(),
                unfinished
                    .iter()
                    .map(|g| if g.shared { "shared" } else { "exclusive" })
                    .collect::<Vec<_>>()
                    .join(", "),
                writer - killed_ms,
            );
            assert!(
                writer <= bound,
                "kill {k}: the next writer was granted {} ms after the kill, {late} ms after the \
                 killed holds' leases ended",
                writer - killed_ms,
            );
        }

        // A waiting writer is granted within one reader lease of current holds plus 1 s, at
        // p99, while readers keep arriving: judged on the steady state before the first kill
        // (a kill's own bound is above), reported for the whole run.
        let first_kill = unix_ms(kills[0].0);
        let waits = |steady: bool| -> Vec<u64> {
            finished
                .iter()
                .flat_map(|run| &run.grants)
                .filter(|g| !g.shared && (!steady || g.granted_ms < first_kill))
                .map(|g| g.granted_ms - g.requested_ms)
                .collect()
        };
        let (mut steady, mut all) = (waits(true), waits(false));
        assert!(
            steady.len() >= 5,
            "writers were granted {steady:?} before the first kill"
        );
        let (p50, p99) = (quantile(&mut steady, 0.5), quantile(&mut steady, 0.99));
        let (all_p50, all_p99) = (quantile(&mut all, 0.5), quantile(&mut all, 0.99));
        eprintln!(
            "readers and writers: {} holds ({shared} shared, {exclusive} exclusive) in {:?}; \
             {drops} connection drops; {failed} Acquires failed on a dropped connection; writer \
             waits before the first kill, {} grants: p50 {p50} ms, p99 {p99} ms; over the whole \
             run, {} grants: p50 {all_p50} ms, p99 {all_p99} ms; the next writer after each \
             kill, ms after the killed leases (as stored) ended: {after_lease_ends:?}; {summary:?}",
            summary.holds,
            started.elapsed(),
            steady.len(),
            all.len(),
        );
        assert!(
            shared >= 50 && exclusive >= 10,
            "{shared} shared and {exclusive} exclusive holds: a side was starved"
        );
        for process in ["p1", "p2"] {
            let of = |shared: bool| {
                holds
                    .iter()
                    .filter(|h| h.process.starts_with(process) && h.shared == shared)
                    .count()
            };
            assert!(
                of(true) >= 10 && of(false) >= 3,
                "{process}'s processes had {} shared and {} exclusive holds: starved",
                of(true),
                of(false)
            );
        }
        let target = (TTL + Duration::from_secs(1)).as_millis() as u64;
        assert!(
            p99 <= target,
            "writer wait p99 {p99} ms before the first kill, over one reader lease + 1 s \
             ({target} ms)"
        );
    });
}
