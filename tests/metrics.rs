//! Metrics (feature `metrics`, on by default), read from a recorder installed by the test as an
//! application installs its exporter: the wait histogram agrees with the callers' own timings,
//! and grants, refusals, holds, losses and requests are counted as they happen.

mod support;

use std::time::{Duration, Instant};

use actix_mongo_lock::{Acquire, Lock, Revoke, Unlock};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::losses::LossCollector;
use support::server::{fast_config, manager};

/// One recorded metric: its name, its labels, its value.
type Metric = (String, Vec<(String, String)>, DebugValue);

/// One metric's value in `snapshot`, by name and labels (the family's among them).
fn value<'a>(
    snapshot: &'a [Metric],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(key, have, _)| {
            key == name
                && labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        })
        .map(|(_, _, value)| value)
}

fn taken(snapshotter: &Snapshotter) -> Vec<Metric> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

fn counter(value: Option<&DebugValue>) -> u64 {
    match value {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("expected a counter, got {other:?}"),
    }
}

fn seconds(value: Option<&DebugValue>) -> Vec<f64> {
    match value {
        Some(DebugValue::Histogram(values)) => {
            let mut values: Vec<f64> = values.iter().map(|v| v.into_inner()).collect();
            values.sort_by(f64::total_cmp);
            values
        }
        other => panic!("expected a histogram, got {other:?}"),
    }
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(values: &[f64], q: f64) -> f64 {
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// 30 Acquires each wait 60-300 ms for a holder in another manager; the histogram's p50 and p99
/// are within 5 % of what the callers measured themselves (send to answer).
#[actix_rt::test]
async fn the_wait_histogram_agrees_with_the_callers_own_timings_within_5_percent() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let config = fast_config("metrics_wait");
    let holder = manager(&config).await;
    let waiter = manager(&config).await;
    let rounds = 30_u64;
    let mut measured = Vec::new();
    for round in 0..rounds {
        let grant = holder.send(Lock::new("press")).await.unwrap().unwrap();
        let hold_for = Duration::from_millis(60 + (round * 37) % 240);
        let unlocker = holder.clone();
        actix_rt::spawn(async move {
            actix_rt::time::sleep(hold_for).await;
            unlocker
                .send(Unlock::new(grant.lock_id))
                .await
                .unwrap()
                .unwrap();
        });
        let sent = Instant::now();
        let served = waiter
            .send(Acquire::new("press").timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        measured.push(sent.elapsed().as_secs_f64());
        waiter
            .send(Unlock::new(served.lock_id))
            .await
            .unwrap()
            .unwrap();
    }
    measured.sort_by(f64::total_cmp);

    let snapshot = taken(&snapshotter);
    let family = ("family", config.name.as_str());
    let recorded = seconds(value(
        &snapshot,
        "amlock_acquire_wait_seconds",
        &[family, ("outcome", "granted")],
    ));
    assert_eq!(recorded.len(), rounds as usize);
    for q in [0.5, 0.99] {
        let (ours, theirs) = (quantile(&recorded, q), quantile(&measured, q));
        assert!(
            (ours - theirs).abs() <= 0.05 * theirs,
            "p{}: recorded {ours:.4} s, measured {theirs:.4} s",
            q * 100.0
        );
    }
    let grants = |via| {
        counter(value(
            &snapshot,
            "amlock_grants_total",
            &[family, ("via", via), ("mode", "exclusive")],
        ))
    };
    assert_eq!((grants("lock"), grants("acquire")), (rounds, rounds));
    let holds = seconds(value(
        &snapshot,
        "amlock_hold_seconds",
        &[family, ("mode", "exclusive")],
    ));
    assert_eq!(holds.len(), 2 * rounds as usize, "every hold ended here");
    assert!(
        holds.iter().any(|held| *held >= 0.3 - 0.02),
        "the longest holds last ~300 ms: {holds:?}"
    );
    assert!(
        counter(value(
            &snapshot,
            "amlock_requests_total",
            &[family, ("request", "grant")]
        )) >= 2 * rounds
    );
    assert!(
        counter(value(
            &snapshot,
            "amlock_requests_total",
            &[family, ("request", "release")]
        )) >= 2 * rounds
    );
}

/// A refused Lock and a revoked kept-alive hold are counted, by mode and by reason.
#[actix_rt::test]
async fn refusals_and_lost_leases_are_counted_by_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let ttl = Duration::from_secs(3);
    let config = fast_config("metrics_counts").ttl(ttl);
    let locks = manager(&config).await;
    let losses = LossCollector::default();
    let grant = locks
        .send(Lock::new("ledger").keep_alive(losses.keep_alive()))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        assert!(locks.send(Lock::new("ledger")).await.unwrap().is_err());
    }
    locks
        .send(Revoke::new("ledger", grant.fence))
        .await
        .unwrap()
        .unwrap();
    losses.first_told("the holder is told", ttl).await;

    let snapshot = taken(&snapshotter);
    let family = ("family", config.name.as_str());
    assert_eq!(
        counter(value(
            &snapshot,
            "amlock_refusals_total",
            &[family, ("mode", "exclusive")]
        )),
        3
    );
    assert_eq!(
        counter(value(
            &snapshot,
            "amlock_lease_lost_total",
            &[family, ("reason", "revoked")]
        )),
        1
    );
    assert!(value(
        &snapshot,
        "amlock_lease_lost_total",
        &[family, ("reason", "gone")]
    )
    .is_none());
}
