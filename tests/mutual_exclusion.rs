//! Two managers on one collection never both hold a resource: in one process, and in two.
//! Every hold is recorded and the history checker proves exclusion and fence order.

mod support;

use std::time::{Duration, Instant, UNIX_EPOCH};

use support::history::History;
use support::server::{fast_config, manager, take_turns, uri};

#[actix_rt::test]
async fn two_managers_in_one_process_never_both_hold_a_resource() {
    let config = fast_config("two_managers").acquire_retries(Duration::from_millis(20), 100);
    let managers = [manager(&config).await, manager(&config).await];
    let history = History::new();
    let deadline = Instant::now() + Duration::from_secs(2);

    let mut workers = Vec::new();
    for (m, locks) in managers.iter().enumerate() {
        for _ in 0..4 {
            workers.push(actix_rt::spawn(take_turns(
                format!("m{m}"),
                locks.clone(),
                history.clone(),
                "shared",
                config.ttl,
                Duration::from_millis(2),
                deadline,
            )));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }

    let summary = history.assert_ok();
    assert_eq!(
        summary.lost, 0,
        "a hold was lost within its lease: {summary:?}"
    );
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
    let contender = &support::contender::binary();
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
