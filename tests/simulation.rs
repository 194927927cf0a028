//! A seeded multi-actor simulation, checked: actix actors contend for a few resources through
//! two lock managers (each with its own client, as two processes would have), each operation a
//! `Lock` or an `Acquire` of a random resource, held a few milliseconds, then `Unlock`. Every
//! hold goes into the history checker, which must find no overlap and fences rising in grant
//! order; no hold may be lost (leases are far longer than any hold) and no call may fail.
//!
//! ```sh
//! scripts/with-mongo cargo test --test simulation -- --nocapture
//! SIMULATION_OPERATIONS=5000 SIMULATION_SEED=7 scripts/with-mongo cargo test --release --test simulation -- --nocapture
//! ```
//!
//! Each actor draws its choices (resource, Lock or Acquire, think time, hold time) from its own
//! generator, seeded from `SIMULATION_SEED` (1 by default), the same draws per operation
//! whatever happens: one seed gives every actor the same choices on every run. Timing, and so
//! who wins each race, still varies between runs.

#[path = "../examples/support/split_mix.rs"]
mod split_mix;
mod support;

use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use actix_mongo_lock::{Acquire, Lock, LockError, LockManager, UnlockOutcome};
use split_mix::SplitMix64;
use support::history::History;
use support::server::{fast_config, hold_and_unlock, manager};
use tokio::sync::oneshot;

const ACTORS: usize = 16;
const RESOURCES: u64 = 4;
const MANAGERS: usize = 2;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |value| {
        value
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value:?} is not a number: {e}"))
    })
}

/// What one actor saw.
#[derive(Debug, Default)]
struct Tally {
    via_lock: u32,
    via_acquire: u32,
    grants: u32,
    refusals: u32,
    /// Answers other than a grant, a refusal or an Unlock that released: each one a failure.
    errors: Vec<String>,
}

/// One actor: its share of the operations, one after another, then it reports and stops.
struct Contender {
    name: String,
    manager: Addr<LockManager>,
    rng: SplitMix64,
    operations_left: u64,
    lease: Duration,
    history: History,
    tally: Tally,
    report: Option<oneshot::Sender<Tally>>,
}

impl Actor for Contender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.next_operation(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(report) = self.report.take() {
            let _ = report.send(std::mem::take(&mut self.tally));
        }
    }
}

impl Contender {
    fn next_operation(&mut self, ctx: &mut Context<Self>) {
        if self.operations_left == 0 {
            ctx.stop();
            return;
        }
        self.operations_left -= 1;
        let resource = format!("r{}", self.rng.between(0, RESOURCES - 1));
        let acquire = self.rng.between(0, 1) == 1;
        let think = self.rng.millis(0, 3);
        let hold = self.rng.millis(1, 5);
        if acquire {
            self.tally.via_acquire += 1;
        } else {
            self.tally.via_lock += 1;
        }
        let (name, manager, history, lease) = (
            self.name.clone(),
            self.manager.clone(),
            self.history.clone(),
            self.lease,
        );
        let operation = async move {
            actix_rt::time::sleep(think).await;
            let requested = SystemTime::now();
            let answer = if acquire {
                manager.send(Acquire::new(&resource)).await
            } else {
                manager.send(Lock::new(&resource)).await
            };
            let grant = match answer.expect("the manager answers") {
                Ok(grant) => grant,
                Err(LockError::AlreadyLocked { .. } | LockError::AcquireMaxRetries { .. }) => {
                    return Err(None)
                }
                Err(e) => return Err(Some(format!("{name} asking for {resource}: {e}"))),
            };
            let unlocked =
                hold_and_unlock(&name, &manager, &history, grant, requested, lease, hold).await;
            match unlocked {
                Ok(Ok(UnlockOutcome::Released)) => Ok(()),
                other => Err(Some(format!("{name} releasing {resource}: {other:?}"))),
            }
        };
        ctx.wait(operation.into_actor(self).map(|outcome, contender, ctx| {
            match outcome {
                Ok(()) => contender.tally.grants += 1,
                Err(None) => contender.tally.refusals += 1,
                Err(Some(error)) => contender.tally.errors.push(error),
            }
            contender.next_operation(ctx);
        }));
    }
}

#[actix_rt::test]
async fn a_seeded_simulation_of_many_actors_keeps_mutual_exclusion_and_fence_order() {
    let operations = env_number("SIMULATION_OPERATIONS", 600);
    let seed = env_number("SIMULATION_SEED", 1);
    let config = fast_config("simulation");
    let mut managers = Vec::new();
    for _ in 0..MANAGERS {
        managers.push(manager(&config).await);
    }
    let history = History::new();
    let started = Instant::now();
    let mut seeds = SplitMix64(seed);
    let mut reports = Vec::new();
    for index in 0..ACTORS {
        let (report, reported) = oneshot::channel();
        let share =
            operations / ACTORS as u64 + u64::from((index as u64) < operations % ACTORS as u64);
        Contender {
            name: format!("m{}a{index}", index % MANAGERS),
            manager: managers[index % MANAGERS].clone(),
            rng: SplitMix64(seeds.next_u64()),
            operations_left: share,
            lease: config.ttl,
            history: history.clone(),
            tally: Tally::default(),
            report: Some(report),
        }
        .start();
        reports.push(reported);
    }
    let mut total = Tally::default();
    for reported in reports {
        let tally = reported.await.expect("every actor reports");
        total.via_lock += tally.via_lock;
        total.via_acquire += tally.via_acquire;
        total.grants += tally.grants;
        total.refusals += tally.refusals;
        total.errors.extend(tally.errors);
    }
    eprintln!(
        "simulation: seed {seed}, {operations} operations (Lock {}, Acquire {}) by {ACTORS} actors \
         through {MANAGERS} managers on {RESOURCES} resources in {:.1} s: {} grants, {} refusals",
        total.via_lock,
        total.via_acquire,
        started.elapsed().as_secs_f64(),
        total.grants,
        total.refusals
    );

    assert!(total.errors.is_empty(), "calls failed: {:#?}", total.errors);
    let summary = history.assert_ok();
    assert_eq!(summary.holds, total.grants as usize, "{summary:?}");
    assert_eq!(
        summary.released, summary.holds,
        "every hold was released: {summary:?}"
    );
    assert!(total.via_lock > 0 && total.via_acquire > 0, "{total:?}");
    assert_eq!(
        u64::from(total.grants + total.refusals),
        operations,
        "every operation was answered: {total:?}"
    );
}
