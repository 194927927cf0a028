//! Fairness across processes: lock-contender processes (tests/tools/lock-contender.rs) wait for the
//! same resources, and no process may take a resource again and again while a waiter in another
//! process is kept waiting. Waiters in one process are served in turn by their manager; these
//! tests check the turns between processes, which share nothing but the database.
//!
//! A process "had a waiter" at a grant when one of its workers had sent an Acquire at or before
//! the grant's time and was not granted (or refused) yet, read from the contenders' `ASK`, `HOLD`
//! and `REFUSED` lines. Grants are ordered by fence, which rises in grant order.
//!
//! The tests run one at a time (each loads the machine and the server with its processes, and
//! the figures it prints should be its own), on whatever server the suite runs on:
//!
//! ```sh
//! scripts/with-mongo cargo test --test fair_turns -- --nocapture
//! MONGO_SERVER=secantus scripts/with-mongo cargo test --test fair_turns -- --nocapture
//! ```

mod support;

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_mongo_lock::{Acquire, Lock, LockConfig, LockError, Status, Unlock, UnlockOutcome};
use support::contender::{line_starting, lines_of, Contender, ContenderRun, HoldLine};
use support::history::History;
use support::poll::eventually;
use support::server::{manager, unique_name, uri};
use tokio::sync::mpsc;

/// Held by the test that runs: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding it poisons it; the next one may still run.
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

/// Runs the contenders to the end and parses what each printed; panics if one failed or
/// reported an Acquire that ended in an error rather than a grant or a refusal.
fn run_all(contenders: &[(Contender, Vec<(&str, &str)>)]) -> Vec<ContenderRun> {
    let uri = uri();
    // Every child's output is read at once: a child blocked on a full pipe would stall all
    // its workers (one thread) and lose its turns.
    let readers: Vec<_> = contenders
        .iter()
        .map(|(contender, more)| {
            let child = contender.spawn_with(&uri, more);
            std::thread::spawn(move || child.wait_with_output())
        })
        .collect();
    readers
        .into_iter()
        .zip(contenders)
        .map(|(reader, (contender, _))| {
            let output = reader
                .join()
                .expect("the reader thread")
                .expect("the contender runs");
            let (stdout, stderr) = (
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
            assert!(
                output.status.success(),
                "{} failed: {}\n{stderr}",
                contender.process,
                output.status
            );
            let run = ContenderRun::parse(&stdout, &stderr);
            assert!(
                !stderr.contains("lock-contender:"),
                "{}: an Acquire or Unlock failed:\n{stderr}",
                contender.process
            );
            assert!(run.done.is_some(), "{} never finished", contender.process);
            run
        })
        .collect()
}

/// A span in which a worker of `process` waited: from its Acquire to the answer.
struct Wait<'a> {
    process: &'a str,
    from_ms: u64,
    until_ms: u64,
}

/// Fairness figures of one resource's grants.
#[derive(Debug)]
struct Turns {
    /// Grants per process.
    grants: BTreeMap<String, usize>,
    /// The most grants in a row to one process, each made while another process had a waiter.
    longest_streak: usize,
    /// The longest any one Acquire waited, granted or refused, per process.
    longest_wait_ms: BTreeMap<String, u64>,
}

fn turns(runs: &[ContenderRun], resource: &str) -> Turns {
    let mut holds: Vec<&HoldLine> = runs
        .iter()
        .flat_map(|run| &run.holds)
        .filter(|h| h.resource == resource)
        .collect();
    holds.sort_by_key(|h| h.fence);
    let mut waits: Vec<Wait> = holds
        .iter()
        .map(|h| Wait {
            process: &h.process,
            from_ms: h.requested_ms,
            until_ms: h.granted_ms,
        })
        .collect();
    waits.extend(
        runs.iter()
            .flat_map(|run| &run.refused)
            .filter(|r| r.resource == resource)
            .map(|r| Wait {
                process: &r.process,
                from_ms: r.requested_ms,
                until_ms: r.answered_ms,
            }),
    );
    let mut grants = BTreeMap::new();
    let mut longest_wait_ms = BTreeMap::new();
    for wait in &waits {
        let longest = longest_wait_ms.entry(wait.process.to_owned()).or_insert(0);
        *longest = (*longest).max(wait.until_ms - wait.from_ms);
    }
    let (mut streak, mut longest_streak) = (0, 0);
    let mut previous: Option<&str> = None;
    for hold in &holds {
        *grants.entry(hold.process.clone()).or_insert(0) += 1;
        let other_waiting = waits.iter().any(|w| {
            w.process != hold.process
                && w.from_ms <= hold.granted_ms
                && w.until_ms > hold.granted_ms
        });
        streak = match (other_waiting, previous == Some(hold.process.as_str())) {
            (false, _) => 0,
            (true, true) => streak + 1,
            (true, false) => 1,
        };
        longest_streak = longest_streak.max(streak);
        previous = Some(&hold.process);
    }
    Turns {
        grants,
        longest_streak,
        longest_wait_ms,
    }
}

/// Every hold of every run into one history: no two holds of a resource overlapped.
fn assert_exclusive(runs: &[ContenderRun]) {
    let history = History::new();
    for run in runs {
        run.record(&history);
    }
    history.assert_ok();
}

#[test]
fn two_processes_contending_for_one_resource_take_turns() {
    let _one = one_at_a_time();
    let name = unique_name("take_turns");
    let contender = |process: &str| Contender {
        name: name.clone(),
        process: process.to_owned(),
        workers: 4,
        resources: 1,
        seconds: 12,
        ttl_ms: 10_000,
        hold_ms: 10,
    };
    // A waiter kept out waits up to 5 s, then asks again at once: its waits are near
    // continuous, and the run ends within 12 + 5 s.
    let more = vec![("--timeout-ms", "5000")];
    let runs = run_all(&[(contender("p1"), more.clone()), (contender("p2"), more)]);
    assert_exclusive(&runs);
    let turns = turns(&runs, "r0");
    let total: usize = turns.grants.values().sum();
    let refused: Vec<usize> = runs.iter().map(|run| run.refused.len()).collect();
    eprintln!(
        "take turns: {total} grants {:?}, longest streak while the other process waited {}, \
         longest wait (ms) {:?}, Acquires refused after 5 s per process {refused:?}",
        turns.grants, turns.longest_streak, turns.longest_wait_ms
    );
    assert!(total >= 20, "too few grants to judge: {turns:?}");
    for process in ["p1", "p2"] {
        let share = turns.grants.get(process).copied().unwrap_or(0) as f64 / total as f64;
        assert!(
            (0.4..=0.6).contains(&share),
            "{process} got {:.0} % of the grants, outside 40-60 %: {turns:?}",
            share * 100.0
        );
    }
    assert!(
        turns.longest_streak <= 4,
        "one process took the resource {} times in a row while the other had a waiter: {turns:?}",
        turns.longest_streak
    );
}

/// The configuration of the tests that kill a contender: its managers' leases (a minute) end
/// no wait by themselves.
fn minute_leases(name: &str) -> LockConfig {
    LockConfig::new(name)
        .database("actix_mongo_lock_tests")
        .ttl(Duration::from_secs(60))
}

/// A contender's flags for one Acquire per worker, waiting up to a minute, announced by an
/// `ASK` line.
const ONE_LONG_ACQUIRE: [(&str, &str); 3] = [
    ("--timeout-ms", "60000"),
    ("--requests", "1"),
    ("--ask-lines", "1"),
];

/// Kills `child` (`kill -9`), waits for it to be gone, and checks from what it printed
/// meanwhile that `who` had released nothing: when it was killed.
fn kill_before_any_release(
    child: &mut Child,
    lines: &mut mpsc::UnboundedReceiver<String>,
    who: &str,
) -> SystemTime {
    child
        .kill()
        .unwrap_or_else(|e| panic!("kill -9 {who}: {e}"));
    child
        .wait()
        .unwrap_or_else(|e| panic!("{who} is gone: {e}"));
    let killed = SystemTime::now();
    while let Ok(line) = lines.try_recv() {
        assert!(
            !line.starts_with("HOLD"),
            "{who} had a hold end before it was killed: {line}"
        );
    }
    killed
}

#[test]
fn a_waiter_killed_in_line_does_not_hold_up_the_next() {
    let _one = one_at_a_time();
    // Built before any manager runs: a build blocks this thread, and with it every manager's
    // timers (run alone, `cargo test --test fair_turns` has not built the examples).
    support::contender::binary();
    let name = unique_name("killed_in_line");
    let config = minute_leases(&name);
    // One Acquire each, waiting up to a minute: only the holder's release can end B's and C's
    // waits, and C's ends only if B's place in line does not outlive B.
    let waiter = |process: &str| Contender {
        name: name.clone(),
        process: process.to_owned(),
        workers: 1,
        resources: 1,
        seconds: 1,
        ttl_ms: 10_000,
        hold_ms: 5,
    };
    let more = ONE_LONG_ACQUIRE;
    actix_rt::System::new().block_on(async {
        let holder = manager(&config).await;
        let grant = holder
            .send(Lock::new("r0"))
            .await
            .expect("the holder's manager answers")
            .expect("the resource is free");

        let mut b = waiter("b").spawn_with(&uri(), &more);
        let mut b_lines = lines_of(&mut b);
        line_starting(&mut b_lines, "ASK", Duration::from_secs(20), "B's Acquire").await;
        // Long enough for B's first attempt to be refused and B to wait in line.
        actix_rt::time::sleep(Duration::from_secs(1)).await;
        let mut c = waiter("c").spawn_with(&uri(), &more);
        let mut c_lines = lines_of(&mut c);
        line_starting(&mut c_lines, "ASK", Duration::from_secs(20), "C's Acquire").await;
        actix_rt::time::sleep(Duration::from_secs(1)).await;

        let killed = unix_ms(kill_before_any_release(&mut b, &mut b_lines, "B"));
        let released_at = unix_ms(SystemTime::now());
        let released = Instant::now();
        let outcome = holder
            .send(Unlock::new(grant.lock_id))
            .await
            .expect("the holder's manager answers")
            .expect("Unlock");
        assert_eq!(outcome, UnlockOutcome::Released);

        let bound = Duration::from_secs(15);
        let hold = line_starting(
            &mut c_lines,
            "HOLD",
            bound + Duration::from_secs(5),
            "C's grant after the holder released and B was killed",
        )
        .await;
        let waited = released.elapsed();
        let run = ContenderRun::parse(&hold, "");
        let [c_hold] = &run.holds[..] else {
            panic!("one HOLD line: {hold}")
        };
        eprintln!(
            "killed in line: C asked {} ms before B was killed and was granted {} ms after the \
             release (seen by the test after {waited:?})",
            killed - c_hold.requested_ms,
            c_hold.granted_ms.saturating_sub(released_at)
        );
        assert!(
            c_hold.requested_ms < killed,
            "C was waiting already: {c_hold:?}"
        );
        assert!(
            c_hold.granted_ms.saturating_sub(released_at) <= bound.as_millis() as u64,
            "C was granted {} ms after the release, over {bound:?}: B's place held up the line",
            c_hold.granted_ms - released_at
        );
        let status = tokio::task::spawn_blocking(move || c.wait())
            .await
            .expect("wait for C")
            .expect("C ends");
        assert!(status.success(), "C: {status}");
    });
}

#[test]
fn a_holder_killed_while_keeping_the_turn_holds_up_the_line_no_longer_than_its_lease() {
    let _one = one_at_a_time();
    // Built before any manager runs: a build blocks this thread, and with it every manager's
    // timers (run alone, `cargo test --test fair_turns` has not built the examples).
    support::contender::binary();
    let name = unique_name("killed_keeper");
    let config = minute_leases(&name);
    // K: two workers, each holding for a minute on a lease of 8 s. Both wait in K while the
    // test holds; at the test's release K is granted for one while the other still waits, so
    // K keeps the turn for it (turn_streak 3), and then K is killed holding it.
    let lease = Duration::from_secs(8);
    let keeper = Contender {
        name: name.clone(),
        process: "k".to_owned(),
        workers: 2,
        resources: 1,
        seconds: 1,
        ttl_ms: lease.as_millis() as u64,
        hold_ms: 60_000,
    };
    let more = ONE_LONG_ACQUIRE;
    actix_rt::System::new().block_on(async {
        let waiter = manager(&config).await;
        let first = waiter
            .send(Lock::new("r0"))
            .await
            .expect("the waiter's manager answers")
            .expect("r0 is free");
        let mut k = keeper.spawn_with(&uri(), &more);
        let mut k_lines = lines_of(&mut k);
        for _ in 0..2 {
            line_starting(&mut k_lines, "ASK", Duration::from_secs(20), "K's Acquires").await;
        }
        // Long enough for K's tries to be refused and K to wait in line.
        actix_rt::time::sleep(Duration::from_secs(1)).await;
        waiter
            .send(Unlock::new(first.lock_id))
            .await
            .expect("the waiter's manager answers")
            .expect("Unlock");
        let held = eventually("K holds r0", Duration::from_secs(10), || {
            let waiter = waiter.clone();
            async move {
                waiter
                    .send(Status::new("r0"))
                    .await
                    .expect("the waiter's manager answers")
                    .expect("Status")
                    .filter(|hold| hold.live)
            }
        })
        .await;
        let lease_ends = held.expires_at.expect("a live hold has a lease end");
        let acquire =
            actix_rt::spawn(waiter.send(Acquire::new("r0").timeout(Duration::from_secs(40))));
        actix_rt::time::sleep(Duration::from_secs(1)).await;

        let killed = kill_before_any_release(&mut k, &mut k_lines, "K");
        let grant = acquire
            .await
            .expect("the Acquire task")
            .expect("the waiter's manager answers")
            .expect("the waiter is granted once K's lease ends");
        let answered = SystemTime::now();
        // The kept turn lasts as long as K's lease; then the waiter's probing (the safety probe
        // at least once a second) finds both ended.
        let bound = lease_ends + Duration::from_secs(3);
        eprintln!(
            "killed keeper: K killed {:?} before its lease ended; the waiter was granted {:?} \
             after it ended",
            lease_ends.duration_since(killed).unwrap_or_default(),
            answered.duration_since(lease_ends).unwrap_or_default()
        );
        assert!(
            grant.granted_at >= lease_ends,
            "granted at {:?}, before K's lease ended at {lease_ends:?}",
            grant.granted_at
        );
        assert!(
            answered <= bound,
            "granted {:?} after K's lease ended: K's turn or place held up the line",
            answered.duration_since(lease_ends).unwrap_or_default()
        );
        waiter
            .send(Unlock::new(grant.lock_id))
            .await
            .expect("the waiter's manager answers")
            .expect("Unlock");
    });
}

#[test]
fn every_resource_is_served_by_both_of_two_instances() {
    let _one = one_at_a_time();
    let name = unique_name("both_instances");
    let contender = |process: &str| Contender {
        name: name.clone(),
        process: process.to_owned(),
        workers: 8,
        resources: 3,
        // 100 Acquires per worker, unless 20 s pass first.
        seconds: 20,
        ttl_ms: 10_000,
        hold_ms: 10,
    };
    let more = vec![("--timeout-ms", "2000"), ("--requests", "100")];
    let runs = run_all(&[(contender("p1"), more.clone()), (contender("p2"), more)]);
    assert_exclusive(&runs);
    let mut served: BTreeMap<(String, String), usize> = BTreeMap::new();
    for hold in runs.iter().flat_map(|run| &run.holds) {
        *served
            .entry((hold.resource.clone(), hold.process.clone()))
            .or_insert(0) += 1;
    }
    for (run, process) in runs.iter().zip(["p1", "p2"]) {
        eprintln!(
            "two instances: {process} asked {} times, was granted {} and timed out {} times \
             (2 s each)",
            run.holds.len() + run.refused.len(),
            run.holds.len(),
            run.refused.len()
        );
    }
    eprintln!("two instances: grants per (resource, process) {served:?}");
    for resource in ["r0", "r1", "r2"] {
        for process in ["p1", "p2"] {
            assert!(
                served.contains_key(&(resource.to_owned(), process.to_owned())),
                "{resource} was never granted to {process}: {served:?}"
            );
        }
    }
}

/// One grant in [`streaks_of`]: which manager, its fence, and when its Acquire was sent and
/// granted (ms since the run began).
struct Granted {
    manager: usize,
    fence: i64,
    requested_ms: u128,
    granted_ms: u128,
}

/// Two managers with `turn_streak(streak)` in this process (two places in the line, as two
/// processes would be), 3 workers each taking turns on one resource for `run`: every grant.
async fn grants_of_two_managers(streak: u32, run: Duration) -> Vec<Granted> {
    let config = LockConfig::new(unique_name("streak"))
        .database("actix_mongo_lock_tests")
        .ttl(Duration::from_secs(10))
        .turn_streak(streak);
    let managers = [manager(&config).await, manager(&config).await];
    let started = Instant::now();
    let deadline = started + run;
    let grants = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut workers = Vec::new();
    for (index, locks) in managers.iter().enumerate() {
        for _ in 0..3 {
            let (locks, grants) = (locks.clone(), grants.clone());
            workers.push(actix_rt::spawn(async move {
                while Instant::now() < deadline {
                    let requested_ms = started.elapsed().as_millis();
                    let acquire = Acquire::new("r0").timeout(Duration::from_secs(10));
                    let grant = locks
                        .send(acquire)
                        .await
                        .expect("answers")
                        .expect("granted");
                    grants.borrow_mut().push(Granted {
                        manager: index,
                        fence: grant.fence,
                        requested_ms,
                        granted_ms: started.elapsed().as_millis(),
                    });
                    actix_rt::time::sleep(Duration::from_millis(3)).await;
                    let unlocked = locks.send(Unlock::new(grant.lock_id)).await;
                    assert_eq!(
                        unlocked.expect("answers").expect("Unlock"),
                        UnlockOutcome::Released
                    );
                }
            }));
        }
    }
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    let mut grants = grants.take();
    grants.sort_by_key(|g| g.fence);
    grants
}

/// How long after a manager's first waiter was sent (while none of its others waited) the
/// manager surely has its place in line: the waiter's first try is refused and its first look
/// takes the place, two round trips (a few ms here). Before that, the manager is not in line
/// yet, and a grant elsewhere is not out of turn. Once in line, a manager keeps its place for
/// as long as any of its waiters waits.
const LINED_UP_MS: u128 = 50;

/// The first second: both managers start their waits, line up for the first time and open
/// their release streams. Turns are judged after it (the multi-process test above judges the
/// whole run, against a looser bound).
const WARM_UP_MS: u128 = 1_000;

/// Since when `manager` had Acquires waiting without a break at `at` (ms into the run): the
/// start of the stretch of overlapping waits (each from its request to its grant) that spans
/// `at`, or `None` if none of its Acquires waited then.
fn waiting_since(grants: &[Granted], manager: usize, at: u128) -> Option<u128> {
    let mut waits: Vec<(u128, u128)> = grants
        .iter()
        .filter(|g| g.manager == manager)
        .map(|g| (g.requested_ms, g.granted_ms))
        .collect();
    waits.sort_unstable();
    let mut stretch: Option<(u128, u128)> = None;
    for (from, to) in waits {
        stretch = match stretch {
            Some((start, end)) if from <= end => Some((start, end.max(to))),
            Some((start, end)) if start <= at && at < end => return Some(start),
            _ => Some((from, to)),
        };
    }
    stretch.and_then(|(start, end)| (start <= at && at < end).then_some(start))
}

/// The longest run of grants in a row (by fence) to one manager after [`WARM_UP_MS`], each
/// made while the other manager was in line: it had Acquires waiting without a break since
/// [`LINED_UP_MS`] or more before the grant, and still after it.
fn longest_streak(grants: &[Granted]) -> usize {
    let (mut streak, mut longest) = (0, 0);
    let mut previous = None;
    for grant in grants.iter().filter(|g| g.granted_ms >= WARM_UP_MS) {
        let other_waiting = waiting_since(grants, 1 - grant.manager, grant.granted_ms)
            .is_some_and(|since| since + LINED_UP_MS <= grant.granted_ms);
        streak = match (other_waiting, previous == Some(grant.manager)) {
            (false, _) => 0,
            (true, true) => streak + 1,
            (true, false) => 1,
        };
        longest = longest.max(streak);
        previous = Some(grant.manager);
    }
    longest
}

#[test]
fn a_manager_keeps_the_turn_for_turn_streak_grants_in_a_row_and_one_more_at_most() {
    let _one = one_at_a_time();
    actix_rt::System::new().block_on(async {
        for streak in [1, 3] {
            let grants = grants_of_two_managers(streak, Duration::from_secs(3)).await;
            let longest = longest_streak(&grants);
            let fences: Vec<i64> = grants.iter().map(|g| g.fence).collect();
            let by_manager = |m: usize| grants.iter().filter(|g| g.manager == m).count();
            eprintln!(
                "turn_streak {streak}: {} grants ({} and {}), longest streak while the other \
                 waited {longest}",
                grants.len(),
                by_manager(0),
                by_manager(1)
            );
            assert!(grants.len() >= 20, "too few grants to judge: {fences:?}");
            // A manager takes a place in line once a try of its is refused: two managers that
            // keep winning their release races alternately are both out of line (the turn
            // nobody's) until one wins twice, and then turns begin (docs/guide.md).
            assert!(
                longest <= streak as usize + 1,
                "turn_streak {streak}, but one manager was granted {longest} times in a row \
                 while the other waited"
            );
            // Each keeps the turn for as long as it may: with 3 waiters each, always.
            assert!(
                longest >= streak as usize,
                "turn_streak {streak}: no manager kept the turn that long ({longest})"
            );
        }
    });
}

/// A manager that kept the turn for its next waiter hands it on when that waiter gives up:
/// the manager next in line is granted at the release, not when the kept turn would lapse
/// (the end of the hold's 30 s lease).
#[test]
fn a_kept_turn_goes_on_when_the_waiter_it_was_kept_for_leaves() {
    let _one = one_at_a_time();
    actix_rt::System::new().block_on(async {
        let config = LockConfig::new(unique_name("kept_turn"))
            .database("actix_mongo_lock_tests")
            .ttl(Duration::from_secs(30));
        let (a, b, c) = (
            manager(&config).await,
            manager(&config).await,
            manager(&config).await,
        );
        let waiting = |locks: &actix::Addr<actix_mongo_lock::LockManager>, timeout: u64| {
            let locks = locks.clone();
            actix_rt::spawn(async move {
                let acquire = Acquire::new("r0").timeout(Duration::from_millis(timeout));
                let answer = locks.send(acquire).await.expect("the manager answers");
                (answer, Instant::now())
            })
        };
        let first = b.send(Lock::new("r0")).await.unwrap().expect("free");
        // A's W1 and W2 wait (A takes the turn), then C waits in line behind A.
        let w1 = waiting(&a, 20_000);
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        let w2 = waiting(&a, 1_500);
        actix_rt::time::sleep(Duration::from_millis(400)).await;
        let c_waits = waiting(&c, 20_000);
        actix_rt::time::sleep(Duration::from_millis(400)).await;
        b.send(Unlock::new(first.lock_id))
            .await
            .unwrap()
            .expect("Unlock");
        // W1 is granted, and A keeps the turn for W2, which waits still, then gives up.
        let w1_grant = w1.await.unwrap().0.expect("W1 is granted at B's release");
        let (w2_answer, _) = w2.await.unwrap();
        assert!(
            matches!(w2_answer, Err(LockError::AcquireTimeout { .. })),
            "W2 gives up while W1 holds: {w2_answer:?}"
        );
        let released = Instant::now();
        a.send(Unlock::new(w1_grant.lock_id))
            .await
            .unwrap()
            .expect("Unlock");
        let (c_grant, c_at) = c_waits.await.unwrap();
        let c_grant = c_grant.expect("C is granted after W1's release");
        let after = c_at.saturating_duration_since(released);
        eprintln!("C was granted {after:?} after W1's release");
        assert!(c_grant.fence > w1_grant.fence);
        // The kept turn would have lapsed with W1's lease, 30 s after its grant.
        assert!(
            after <= Duration::from_secs(5),
            "C was granted {after:?} after the release: the kept turn was not handed on"
        );
    });
}
