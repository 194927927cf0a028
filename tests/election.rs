//! Leader election (`actix_mongo_lock::election`): candidates in separate managers (each on a
//! client of its own, as separate processes would be) campaign for one office. One leads at a
//! time, the term is the grant's fence and rises with every leadership, a deposed leader is told
//! before its successor is elected, and a resignation, a closing manager and a leader cut off
//! from the database each hand the office on within their stated bounds.
//!
//! ```sh
//! scripts/with-mongo cargo test --test election
//! MONGO_SERVER=secantus scripts/with-mongo cargo test --test election
//! ```

mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_mongo_lock::election::{
    current_leader, Campaign, CurrentTerm, Deposed, DeposedReason, Elected, Elector, LeaderChanged,
    Observer, Resign,
};
use actix_mongo_lock::{
    AwaitReleased, Close, LockConfig, LockError, LockManager, LostReason, StopGranting,
};
use support::leaders::LeaderLog;
use support::poll::eventually;
use support::proxy::FaultProxy;
use support::server::{client_for, fast_config, manager, snapshot};

/// What a candidate was told.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Elected(i64),
    Deposed(i64, DeposedReason),
}

/// One thing a candidate was told, and when.
#[derive(Clone, Debug)]
struct Told {
    who: &'static str,
    at: Instant,
    event: Event,
}

type Log = Rc<RefCell<Vec<Told>>>;

/// A candidate that writes down what it is told.
struct Candidate {
    who: &'static str,
    log: Log,
}

impl Actor for Candidate {
    type Context = Context<Self>;
}

impl Handler<Elected> for Candidate {
    type Result = ();
    fn handle(&mut self, elected: Elected, _: &mut Context<Self>) {
        self.log.borrow_mut().push(Told {
            who: self.who,
            at: Instant::now(),
            event: Event::Elected(elected.term),
        });
    }
}

impl Handler<Deposed> for Candidate {
    type Result = ();
    fn handle(&mut self, deposed: Deposed, _: &mut Context<Self>) {
        self.log.borrow_mut().push(Told {
            who: self.who,
            at: Instant::now(),
            event: Event::Deposed(deposed.term, deposed.reason),
        });
    }
}

/// Starts an elector for `office` on `manager`, for a candidate named `who` writing to `log`.
fn candidate(
    manager: &Addr<LockManager>,
    office: &str,
    who: &'static str,
    log: &Log,
) -> Addr<Elector> {
    let candidate = Candidate {
        who,
        log: Rc::clone(log),
    }
    .start();
    Elector::new(manager.clone(), office, &candidate)
        .expect("a valid office")
        .start()
}

/// The `n`-th `Elected` in `log`, once it is there: who, its term, when.
async fn nth_elected(log: &Log, n: usize, within: Duration) -> (&'static str, i64, Instant) {
    eventually(&format!("election {n}"), within, || async {
        log.borrow()
            .iter()
            .filter_map(|told| match told.event {
                Event::Elected(term) => Some((told.who, term, told.at)),
                Event::Deposed(..) => None,
            })
            .nth(n)
    })
    .await
}

/// The `Deposed` told to `who` for `term`, if any: its reason, when.
fn deposed(log: &Log, who: &str, term: i64) -> Option<(DeposedReason, Instant)> {
    log.borrow().iter().find_map(|told| match told.event {
        Event::Deposed(t, reason) if told.who == who && t == term => Some((reason, told.at)),
        _ => None,
    })
}

/// Every leadership in `log`, in order: who, term, told elected, told deposed (if it was).
/// Panics if two overlap: a candidate told `Elected` while another's leadership was not yet
/// told `Deposed` (`killed` names leaders whose process was killed, told nothing).
fn assert_one_leader_at_a_time(log: &Log) {
    let log = log.borrow();
    let mut leading: Option<(&str, i64)> = None;
    for told in log.iter() {
        match told.event {
            Event::Elected(term) => {
                assert!(
                    leading.is_none(),
                    "{} elected (term {term}) while {leading:?} still led: {log:?}",
                    told.who
                );
                leading = Some((told.who, term));
            }
            Event::Deposed(term, _) => {
                assert_eq!(
                    leading,
                    Some((told.who, term)),
                    "a deposal of no leadership: {log:?}"
                );
                leading = None;
            }
        }
    }
}

/// Managers of one lock family, named by owner, each on a client of its own.
/// The second election, of "b", after "a" (leading in `term`) was told `Deposed { Closing }`
/// first, with a higher term: how long after `from` "b" was elected.
async fn b_elected_after_a_deposed_closing(log: &Log, term: i64, from: Instant) -> Duration {
    let (second, next_term, elected_at) = nth_elected(log, 1, Duration::from_secs(5)).await;
    let (reason, deposed_at) = deposed(log, "a", term).expect("the leader was told");
    assert_eq!(reason, DeposedReason::Closing);
    assert_eq!(second, "b");
    assert!(next_term > term);
    assert!(deposed_at <= elected_at);
    elected_at - from
}

async fn managers(config: &LockConfig, owners: &[&str]) -> Vec<Addr<LockManager>> {
    let mut started = Vec::new();
    for owner in owners {
        started.push(
            LockManager::with_client(
                client_for(&support::server::uri()).await,
                config.clone().owner(*owner),
            )
            .await
            .expect("start a manager"),
        );
    }
    started
}

#[actix_rt::test]
async fn one_of_three_candidates_leads_and_a_resignation_hands_the_office_on_with_a_higher_term() {
    let config = fast_config("elect_resign");
    let fleet = managers(&config, &["a", "b", "c"]).await;
    let log = Log::default();
    let electors = [
        candidate(&fleet[0], "scheduler", "a", &log),
        candidate(&fleet[1], "scheduler", "b", &log),
        candidate(&fleet[2], "scheduler", "c", &log),
    ];
    let (first, term, _) = nth_elected(&log, 0, Duration::from_secs(5)).await;
    // Nobody else is elected while the first leads.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(log.borrow().len(), 1, "{:?}", log.borrow());
    let observed = current_leader(&fleet[2], "scheduler")
        .await
        .unwrap()
        .expect("a leader");
    assert_eq!(
        (observed.owner.as_deref(), observed.term),
        (Some(first), term)
    );
    let index = ["a", "b", "c"].iter().position(|w| *w == first).unwrap();
    assert_eq!(electors[index].send(CurrentTerm).await.unwrap(), Some(term));

    // Resign: told first, then the release wakes the next in line at once.
    let resigned_at = Instant::now();
    assert!(electors[index].send(Resign).await.unwrap().unwrap());
    let (second, next_term, elected_at) = nth_elected(&log, 1, Duration::from_secs(5)).await;
    let (reason, deposed_at) = deposed(&log, first, term).expect("the leader was told");
    assert_eq!(reason, DeposedReason::Resigned);
    assert_ne!(second, first);
    assert!(next_term > term, "term {next_term} after term {term}");
    assert!(deposed_at <= elected_at);
    let hand_off = elected_at - resigned_at;
    eprintln!("resign -> next leader elected: {hand_off:?}");
    // The line hands on at once: well within a lease, a generous bound on a loaded machine.
    assert!(hand_off < Duration::from_secs(3), "{hand_off:?}");
    assert_eq!(electors[index].send(CurrentTerm).await.unwrap(), None);

    // The resigned candidate campaigns again only when told, and then waits its turn.
    electors[index].do_send(Campaign);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_one_leader_at_a_time(&log);
    for manager in &fleet {
        manager.send(Close).await.unwrap();
    }
    assert_one_leader_at_a_time(&log);
}

#[actix_rt::test]
async fn a_closing_manager_deposes_its_leader_before_the_successor_is_elected() {
    let config = fast_config("elect_close");
    let fleet = managers(&config, &["a", "b"]).await;
    let log = Log::default();
    let _a = candidate(&fleet[0], "office", "a", &log);
    let (_, term, _) = nth_elected(&log, 0, Duration::from_secs(5)).await;
    let _b = candidate(&fleet[1], "office", "b", &log);
    let (first, _, _) = log.borrow()[0].clone().into_leader();
    assert_eq!(first, "a");

    let closing = Instant::now();
    let report = fleet[0].send(Close).await.unwrap();
    assert_eq!(report.released, 1, "Close released the office: {report:?}");
    let handed_on = b_elected_after_a_deposed_closing(&log, term, closing).await;
    eprintln!("close -> next leader elected: {handed_on:?}");
    assert!(handed_on < Duration::from_secs(3));
    assert_one_leader_at_a_time(&log);
    fleet[1].send(Close).await.unwrap();
}

/// `StopGranting` (a SIGTERM's first step) hands the office on at once: the leader is told
/// `Deposed { Closing }`, its office is released, and the next candidate is elected long before
/// the lease would have ended, while the stopping manager still answers.
#[actix_rt::test]
async fn a_manager_that_stops_granting_hands_its_office_on_before_closing() {
    let config = fast_config("elect_stop").ttl(Duration::from_secs(20));
    let fleet = managers(&config, &["a", "b"]).await;
    let log = Log::default();
    let _a = candidate(&fleet[0], "office", "a", &log);
    let (_, term, _) = nth_elected(&log, 0, Duration::from_secs(5)).await;
    let _b = candidate(&fleet[1], "office", "b", &log);

    let stopping = Instant::now();
    fleet[0].send(StopGranting).await.unwrap();
    let handed_on = b_elected_after_a_deposed_closing(&log, term, stopping).await;
    eprintln!("stop granting -> next leader elected: {handed_on:?}");
    // The lease is 20 s: the office was released, not left to expire.
    assert!(handed_on < Duration::from_secs(5));
    let released = fleet[0]
        .send(AwaitReleased::within(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(released.still_held, 0, "{released:?}");
    let report = fleet[0].send(Close).await.unwrap();
    assert_eq!(report.released, 0, "nothing left for Close: {report:?}");
    assert_one_leader_at_a_time(&log);
    fleet[1].send(Close).await.unwrap();
}

#[actix_rt::test]
async fn a_leader_cut_off_from_the_database_is_deposed_while_its_lease_stands_then_replaced() {
    let ttl = Duration::from_millis(2400);
    let config = fast_config("elect_cut").ttl(ttl);
    let proxy = FaultProxy::start(support::proxy::upstream_from_env())
        .await
        .unwrap();
    let cut_off = LockManager::with_client(client_for(&proxy.uri()).await, config.clone())
        .await
        .unwrap();
    let log = Log::default();
    let _a = candidate(&cut_off, "office", "a", &log);
    let (_, term, _) = nth_elected(&log, 0, Duration::from_secs(5)).await;
    let other = manager(&config).await;
    let _b = candidate(&other, "office", "b", &log);

    proxy.black_hole();
    let cut_at = Instant::now();
    let (second, next_term, elected_at) =
        nth_elected(&log, 1, ttl * 2 + Duration::from_secs(5)).await;
    let (reason, deposed_at) = deposed(&log, "a", term).expect("the cut-off leader was told");
    assert_eq!(reason, DeposedReason::LeaseLost(LostReason::Unreachable));
    assert_eq!(second, "b");
    assert!(next_term > term);
    assert!(
        deposed_at < elected_at,
        "told {:?} after the successor was elected",
        deposed_at - elected_at
    );
    let failover = elected_at - cut_at;
    eprintln!(
        "cut -> leader told {:?}, successor elected {failover:?} (lease {ttl:?})",
        deposed_at - cut_at
    );
    // The last renewal before the cut left at most one lease; then one safety probe (1 s) and
    // a generous margin for a loaded machine.
    assert!(
        failover < ttl + Duration::from_secs(1) + Duration::from_secs(3),
        "{failover:?}"
    );
    assert_one_leader_at_a_time(&log);
    other.send(Close).await.unwrap();
}

#[actix_rt::test]
async fn an_observer_sees_the_leader_each_new_term_and_nobody() {
    let config = fast_config("elect_observe");
    let fleet = managers(&config, &["a", "watcher"]).await;
    let seen = LeaderLog::default();
    let watcher = seen.clone().start();
    let _observer = Observer::new(fleet[1].clone(), "office", watcher.recipient())
        .unwrap()
        .every(Duration::from_millis(100))
        .start();
    let within = Duration::from_secs(5);
    eventually("nobody leads, at first", within, || async {
        (seen.terms().first() == Some(&None)).then_some(())
    })
    .await;

    let log = Log::default();
    let elector = candidate(&fleet[0], "office", "a", &log);
    let (_, term, _) = nth_elected(&log, 0, within).await;
    eventually("the leader is seen", within, || async {
        (seen.terms().last() == Some(&Some((Some("a".to_owned()), term)))).then_some(())
    })
    .await;
    assert!(elector.send(Resign).await.unwrap().unwrap());
    eventually("nobody leads after the resignation", within, || async {
        (seen.terms().last() == Some(&None)).then_some(())
    })
    .await;
    elector.do_send(Campaign);
    let (_, next_term, _) = nth_elected(&log, 1, within).await;
    assert!(next_term > term);
    eventually("the new term is seen", within, || async {
        (seen.terms().last() == Some(&Some((Some("a".to_owned()), next_term)))).then_some(())
    })
    .await;
    // Told once per change: nobody, term, nobody, next term.
    assert_eq!(
        seen.terms(),
        vec![
            None,
            Some((Some("a".to_owned()), term)),
            None,
            Some((Some("a".to_owned()), next_term))
        ]
    );
    for manager in &fleet {
        manager.send(Close).await.unwrap();
    }
}

#[actix_rt::test]
async fn an_office_that_is_no_valid_resource_id_is_refused_and_nothing_is_written() {
    let config = fast_config("elect_bad");
    let locks = manager(&config).await;
    let log = Log::default();
    let candidate = Candidate {
        who: "a",
        log: Rc::clone(&log),
    }
    .start();
    for office in ["", "a\0b"] {
        let refused = Elector::new(locks.clone(), office, &candidate);
        assert!(
            matches!(refused, Err(LockError::InvalidResourceId { .. })),
            "{office:?}: {:?}",
            refused.err()
        );
        struct Sink;
        impl Actor for Sink {
            type Context = Context<Self>;
        }
        impl Handler<LeaderChanged> for Sink {
            type Result = ();
            fn handle(&mut self, _: LeaderChanged, _: &mut Context<Self>) {}
        }
        let observed = Observer::new(locks.clone(), office, Sink.start().recipient());
        assert!(matches!(
            observed.err(),
            Some(LockError::InvalidResourceId { .. })
        ));
    }
    assert!(snapshot(&config).await.is_empty(), "something was written");
    assert!(log.borrow().is_empty());
}

impl Told {
    /// Who was elected, with which term and when; panics if this is no election.
    fn into_leader(self) -> (&'static str, i64, Instant) {
        match self.event {
            Event::Elected(term) => (self.who, term, self.at),
            Event::Deposed(..) => panic!("not an election: {self:?}"),
        }
    }
}

/// An operator revokes the leadership by its term (the fence): the leader is told `Deposed`
/// with `LeaseLost(Revoked)` at its next renewal, before the other candidate is elected with a
/// higher term.
#[actix_rt::test]
async fn a_revoked_leadership_deposes_its_leader_before_the_next_is_elected() {
    let config = fast_config("elect_revoke").ttl(Duration::from_secs(3));
    let fleet = managers(&config, &["a", "b"]).await;
    let log = Log::default();
    let _electors = [
        candidate(&fleet[0], "cron", "a", &log),
        candidate(&fleet[1], "cron", "b", &log),
    ];
    let (first, term, _) = nth_elected(&log, 0, Duration::from_secs(5)).await;
    let outcome = fleet[1]
        .send(actix_mongo_lock::Revoke::new("cron", term).reason("wedged"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, actix_mongo_lock::RevokeOutcome::Revoked { .. }),
        "{outcome:?}"
    );
    let (second, next_term, elected_at) = nth_elected(&log, 1, Duration::from_secs(5)).await;
    let (reason, deposed_at) = deposed(&log, first, term).expect("the leader was told");
    assert_eq!(reason, DeposedReason::LeaseLost(LostReason::Revoked));
    assert!(
        deposed_at <= elected_at,
        "told before the successor: {:?}",
        log.borrow()
    );
    assert!(next_term > term);
    let _ = second;
    assert_one_leader_at_a_time(&log);
}
