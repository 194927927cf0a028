//! Two managers on one collection never both hold a resource: in one process, and in two.
//! Every hold is recorded and the history checker proves exclusion and fence order.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_mongo_lock::{Acquire, Unlock, UnlockOutcome};
use support::history::History;
use support::server::{fast_config, manager, uri};

#[actix_rt::test]
async fn two_managers_in_one_process_never_both_hold_a_resource() {
    let config = fast_config("two_managers").acquire_retries(Duration::from_millis(20), 100);
    let managers = [manager(&config).await, manager(&config).await];
    let history = History::new();
    let deadline = Instant::now() + Duration::from_secs(2);

    let mut workers = Vec::new();
    for (m, locks) in managers.iter().enumerate() {
        for _ in 0..4 {
            let (locks, history, ttl) = (locks.clone(), history.clone(), config.ttl);
            workers.push(actix_rt::spawn(async move {
                while Instant::now() < deadline {
                    let requested = SystemTime::now();
                    let Ok(grant) = locks.send(Acquire::new("shared")).await.unwrap() else {
                        continue;
                    };
                    let id = history.granted(
                        &format!("m{m}"),
                        "shared",
                        grant.fence,
                        requested,
                        SystemTime::now(),
                        requested + ttl,
                    );
                    actix_rt::time::sleep(Duration::from_millis(2)).await;
                    let sent = SystemTime::now();
                    let outcome = locks.send(Unlock::new(grant.lock_id)).await.unwrap();
                    assert_eq!(outcome.unwrap(), UnlockOutcome::Released);
                    history.released(id, sent, SystemTime::now());
                }
            }));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }

    let summary = history.assert_ok();
    let per_manager = |m: &str| history.records().iter().filter(|r| r.manager == m).count();
    assert!(summary.holds >= 10, "too little contention: {summary:?}");
    assert!(
        per_manager("m0") > 0 && per_manager("m1") > 0,
        "one manager never got the lock: {summary:?}"
    );
}

#[actix_rt::test]
async fn two_processes_never_both_hold_a_resource() {
    let name = support::server::unique_name("two_processes");
    let contender = env!("CARGO_BIN_EXE_lock-contender");
    let children: Vec<_> = ["p1", "p2"]
        .iter()
        .map(|process| {
            std::process::Command::new(contender)
                .args(["--name", &name, "--process", process])
                .args(["--workers", "3", "--resources", "1", "--seconds", "3"])
                .env("MONGODB_URI", uri())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start lock-contender")
        })
        .collect();

    let history = History::new();
    let mut grants_per_process = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("lock-contender runs");
        assert!(output.status.success(), "lock-contender failed: {output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        grants_per_process.push(record_holds(&history, &stdout));
    }

    let summary = history.assert_ok();
    assert!(
        grants_per_process.iter().all(|&grants| grants > 0),
        "a process never got the lock: {grants_per_process:?}, {summary:?}"
    );
}

/// Feeds lock-contender's `HOLD` lines into `history`; returns how many there were.
fn record_holds(history: &History, stdout: &str) -> usize {
    let at = |ms: &str| UNIX_EPOCH + Duration::from_millis(ms.parse().unwrap());
    let mut holds = 0;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&"HOLD") {
            continue;
        }
        let [_, process, resource, fence, requested, granted, expires, sent, replied, outcome] =
            fields[..]
        else {
            panic!("malformed line: {line}");
        };
        let id = history.granted(
            process,
            resource,
            fence.parse().unwrap(),
            at(requested),
            at(granted),
            at(expires),
        );
        match outcome {
            "released" => history.released(id, at(sent), at(replied)),
            _ => history.lost(id, at(sent)),
        }
        holds += 1;
    }
    holds
}
