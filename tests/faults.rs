//! Reliability under network faults: lock managers talk to the server THROUGH a fault-injecting
//! proxy (tests/support/proxy.rs) that cuts connections, refuses new ones, delays or black-holes
//! traffic while they Lock, Acquire and Unlock. Every call must answer with a result or a typed
//! error, no resource may ever be held twice (the history checker), and a grant whose outcome
//! the manager could not learn must not stay orphaned until its lease ends.
//!
//! Run with `scripts/with-mongo cargo test --test faults`.

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use actix_mongo_lock::{
    Acquire, KeepAlive, LeaseLost, Lock, LockConfig, LockError, LockGrant, LockId, LockManager,
    Renew, Unlock, UnlockOutcome,
};
use mongodb::options::ClientOptions;
use mongodb::Client;
use support::history::History;
use support::poll::{eventually, eventually_or_none};
use support::proxy::{to_the_server, FaultProxy};
use support::server::{fast_config, manager, stored, stored_fence, stored_hold, StoredHold};

/// A client through `proxy` that notices a dead or silent server fast: connections (and
/// heartbeats, whose timeout is the connect timeout) give up after 1 s and the server is checked
/// every 500 ms, so a black hole interrupts the operations stuck in it within about 1.5 s. An
/// operation waits up to `selection` for a reachable server (the driver's default is 30 s).
async fn client_through(proxy: &FaultProxy, selection: Duration) -> Client {
    let mut options = ClientOptions::parse(proxy.uri())
        .await
        .expect("the proxy's URI parses");
    options.connect_timeout = Some(Duration::from_secs(1));
    options.heartbeat_freq = Some(Duration::from_millis(500));
    options.server_selection_timeout = Some(selection);
    Client::with_options(options).expect("client options are valid")
}

/// A manager whose client goes through `proxy` (see [`client_through`]).
async fn manager_through(
    proxy: &FaultProxy,
    selection: Duration,
    config: &LockConfig,
) -> Addr<LockManager> {
    LockManager::with_client(client_through(proxy, selection).await, config.clone())
        .await
        .expect("start a manager through the proxy")
}

/// How long an operation waits for a reachable server, unless a test needs it shorter.
const SELECTION: Duration = Duration::from_secs(5);

/// Waits until the server stores a hold of `resource` and returns it.
async fn stored_grant(config: &LockConfig, resource: &str) -> (String, i64) {
    eventually(
        "the grant reaches the server",
        Duration::from_secs(5),
        || async {
            stored_hold(config, resource)
                .await
                .map(StoredHold::id_and_fence)
        },
    )
    .await
}

/// Cuts every connection through `proxy` and refuses new ones: the server is away.
fn take_server_away(proxy: &FaultProxy) {
    proxy.add_latency(Duration::ZERO);
    proxy.refuse_new();
    proxy.drop_connections();
}

// ---------------------------------------------------------------------------------------------
// Connection drops while calls are in flight, with the history checker
// ---------------------------------------------------------------------------------------------

/// What the chaos workers saw, by kind.
#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    answers: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn count(&mut self, kind: &'static str) {
        self.calls += 1;
        *self.answers.entry(kind).or_default() += 1;
    }
}

fn error_kind(e: &LockError) -> &'static str {
    match e {
        LockError::AlreadyLocked { .. } => "AlreadyLocked",
        LockError::AcquireMaxRetries { .. } => "AcquireMaxRetries",
        LockError::AcquireTimeout { .. } => "AcquireTimeout",
        LockError::UnlockMaxRetries { .. } => "UnlockMaxRetries",
        LockError::Database(_) => "Database",
        LockError::Unavailable { .. } => "Unavailable",
        other => panic!("a call under network faults answered an unexpected error: {other:?}"),
    }
}

#[actix_rt::test]
async fn connection_drops_during_lock_acquire_and_unlock_never_grant_a_resource_twice() {
    const RESOURCES: usize = 3;
    const WORKERS_PER_MANAGER: usize = 3;
    let chaos_for = Duration::from_secs(4);
    let config = fast_config("chaos")
        .ttl(Duration::from_secs(5))
        .acquire_retries(Duration::from_millis(20), 100)
        .unlock_retries(Duration::from_millis(20), 100);
    let proxies = [to_the_server().await, to_the_server().await];
    let managers = vec![
        ("a", manager_through(&proxies[0], SELECTION, &config).await),
        ("b", manager_through(&proxies[1], SELECTION, &config).await),
        ("direct", manager(&config).await),
    ];
    let history = History::new();
    let tally = Rc::new(RefCell::new(Tally::default()));
    let started = Instant::now();
    let deadline = started + chaos_for;

    let mut workers = Vec::new();
    for (name, locks) in &managers {
        for w in 0..WORKERS_PER_MANAGER {
            let (name, locks, history, tally) =
                (*name, locks.clone(), history.clone(), Rc::clone(&tally));
            let ttl = config.ttl;
            workers.push(actix_rt::spawn(async move {
                let mut turn = w;
                while Instant::now() < deadline {
                    let resource = format!("r{}", turn % RESOURCES);
                    turn += 1;
                    let requested = SystemTime::now();
                    let answer = if turn % 2 == 0 {
                        locks.send(Lock::new(&resource)).await
                    } else {
                        let acquire = Acquire::new(&resource).timeout(Duration::from_secs(1));
                        locks.send(acquire).await
                    };
                    let grant = match answer.expect("the manager answers every call") {
                        Ok(grant) => grant,
                        Err(e) => {
                            tally.borrow_mut().count(error_kind(&e));
                            continue;
                        }
                    };
                    tally.borrow_mut().count("granted");
                    assert_eq!(grant.resource_id.as_str(), resource);
                    let id = history.granted(
                        name,
                        &resource,
                        grant.fence,
                        requested,
                        SystemTime::now(),
                        requested + ttl,
                    );
                    actix_rt::time::sleep(Duration::from_millis(10)).await;
                    let sent = SystemTime::now();
                    let unlocked = locks.send(Unlock::new(grant.lock_id)).await;
                    match unlocked.expect("the manager answers every call") {
                        Ok(UnlockOutcome::Released) => {
                            tally.borrow_mut().count("Released");
                            history.released(id, sent, SystemTime::now());
                        }
                        Ok(UnlockOutcome::NotHeld) => {
                            tally.borrow_mut().count("NotHeld");
                            history.lost(id, sent);
                        }
                        Ok(_) => {
                            // Unconfirmed (or an outcome yet to come): not known released.
                            tally.borrow_mut().count("Unconfirmed");
                            history.lost(id, sent);
                        }
                        Err(e) => {
                            // The holder stopped relying on the hold when it sent the Unlock.
                            tally.borrow_mut().count(error_kind(&e));
                            history.lost(id, sent);
                        }
                    }
                }
            }));
        }
    }

    // The faults: every 150 ms one of them, on one proxy or both, while the workers run.
    let mut faults = BTreeMap::<&'static str, u64>::new();
    let mut round = 0usize;
    while Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(150)).await;
        let proxy = &proxies[round % 2];
        let fault = match round % 5 {
            0 | 2 => {
                proxy.drop_connections();
                "drop connections"
            }
            1 => {
                proxy.refuse_new();
                proxy.drop_connections();
                actix_rt::time::sleep(Duration::from_millis(300)).await;
                proxy.restore();
                "cut and refuse for 300 ms"
            }
            3 => {
                proxies.iter().for_each(FaultProxy::drop_connections);
                "drop connections on both proxies"
            }
            _ => {
                proxy.add_latency(Duration::from_millis(40));
                actix_rt::time::sleep(Duration::from_millis(200)).await;
                proxy.drop_connections();
                proxy.restore();
                "40 ms latency, then drop"
            }
        };
        *faults.entry(fault).or_default() += 1;
        round += 1;
    }
    proxies.iter().for_each(FaultProxy::restore);
    for worker in workers {
        worker.await.expect("no worker panicked");
    }
    let ran_for = started.elapsed();

    let summary = history.assert_ok();
    let tally = std::mem::take(&mut *tally.borrow_mut());
    let refused: u64 = proxies.iter().map(FaultProxy::connections_refused).sum();
    let opened: u64 = proxies.iter().map(FaultProxy::connections_opened).sum();
    eprintln!(
        "chaos: {} calls in {ran_for:.1?}, answers {:?}; faults injected {:?} \
         ({} in all, {opened} connections opened, {refused} refused); \
         history: {} holds, 0 violations",
        tally.calls,
        tally.answers,
        faults,
        faults.values().sum::<u64>(),
        summary.holds,
    );
    assert!(
        summary.holds >= 20,
        "too few grants to mean anything: {summary:?}"
    );
    // Each cut forces the driver to open new connections: proof that the faults bit.
    assert!(
        opened >= 10,
        "only {opened} connections were opened: the faults did not bite"
    );

    // Every resource is free again, or becomes free within a lease: nothing is stuck.
    let direct = &managers[2].1;
    for r in 0..RESOURCES {
        let acquire = Acquire::new(format!("r{r}")).timeout(config.ttl + Duration::from_secs(2));
        let grant = direct.send(acquire).await.unwrap().unwrap_or_else(|e| {
            panic!("r{r} is still held after the faults ended and a lease passed: {e}")
        });
        direct
            .send(Unlock::new(grant.lock_id))
            .await
            .unwrap()
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// A grant that reached the server but whose reply was lost; Unlock during an outage
// ---------------------------------------------------------------------------------------------

/// The Acquire's attempt reaches the server, its reply is cut off, and the server stays away
/// long enough for the driver's own retries to give up (300 ms server selection): the manager
/// retries with the same lock id once the server is back, and the store's grant filter
/// recognises the hold as the requester's own instead of waiting out its 30 s lease.
#[actix_rt::test]
async fn an_acquire_whose_grant_reply_was_lost_recognises_its_own_hold_when_it_retries() {
    let proxy = to_the_server().await;
    let config = fast_config("lost_acquire_reply")
        .ttl(Duration::from_secs(30))
        .acquire_retries(Duration::from_millis(50), 100);
    let locks = manager_through(&proxy, Duration::from_millis(300), &config).await;

    // Replies now take 250 ms through the proxy: long enough to cut one off after the server
    // has stored the grant, which we watch directly.
    proxy.add_latency(Duration::from_millis(250));
    let acquire = locks.send(Acquire::new("r").timeout(Duration::from_secs(10)));
    let answer = actix_rt::spawn(acquire);
    let (stored_id, stored_fence) = stored_grant(&config, "r").await;
    let cut = Instant::now();
    take_server_away(&proxy);
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !answer.is_finished(),
        "the Acquire answered while the server was away"
    );
    proxy.restore();

    let grant = answer
        .await
        .unwrap()
        .unwrap()
        .expect("the Acquire retries and gets its own hold");
    let took = cut.elapsed();
    assert_eq!(
        grant.lock_id.as_str(),
        stored_id,
        "the retry used another lock id"
    );
    assert_eq!(
        grant.fence,
        stored_fence + 1,
        "the retry re-granted its own hold, once"
    );
    assert!(
        took < Duration::from_secs(5),
        "the retry waited for the lease ({took:?}) instead of recognising its own hold"
    );
    assert_eq!(
        stored_hold(&config, "r")
            .await
            .map(StoredHold::id_and_fence),
        Some((stored_id, grant.fence))
    );
    assert!(proxy.connections_refused() > 0, "the server was never away");
    eprintln!(
        "lost Acquire reply: own hold recognised {took:?} after the cut (server away 1 s, \
         {} connections refused, lease 30 s)",
        proxy.connections_refused()
    );
}

#[actix_rt::test]
async fn a_lock_whose_grant_reply_was_lost_is_released_in_the_background_once_the_server_is_back() {
    let proxy = to_the_server().await;
    let config = fast_config("lost_lock_reply")
        .ttl(Duration::from_secs(30))
        .unlock_retries(Duration::from_millis(20), 100);
    let locks = manager_through(&proxy, Duration::from_millis(500), &config).await;
    let direct = manager(&config).await;

    proxy.add_latency(Duration::from_millis(250));
    let answer = actix_rt::spawn(locks.send(Lock::new("r")));
    let (stored_id, stored_fence) = stored_grant(&config, "r").await;
    take_server_away(&proxy);

    let answer = answer.await.unwrap().unwrap();
    assert!(
        matches!(
            answer,
            Err(LockError::Database(_) | LockError::Unavailable { .. })
        ),
        "a Lock whose reply was cut answered {answer:?}"
    );
    // The caller was told "failed", but the server holds the grant; the manager's background
    // release cannot get through while the server is away.
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stored_hold(&config, "r")
            .await
            .map(StoredHold::id_and_fence),
        Some((stored_id.clone(), stored_fence)),
        "the hold changed while the server was away"
    );

    let restored = Instant::now();
    proxy.restore();
    eventually(
        "the abandoned grant is released after the proxy restores",
        Duration::from_secs(5),
        || async { stored_hold(&config, "r").await.is_none().then_some(()) },
    )
    .await;
    let freed_after = restored.elapsed();
    let next = direct.send(Lock::new("r")).await.unwrap().unwrap();
    assert!(next.fence > stored_fence);
    assert!(proxy.connections_refused() > 0, "the server was never away");
    eprintln!(
        "lost Lock reply: abandoned grant released {freed_after:?} after the proxy restored \
         (lease 30 s, {} connections refused meanwhile)",
        proxy.connections_refused()
    );
}

#[actix_rt::test]
async fn an_unlock_retries_until_the_server_is_back_and_then_releases() {
    let proxy = to_the_server().await;
    let config = fast_config("unlock_retries")
        .ttl(Duration::from_secs(30))
        .unlock_retries(Duration::from_millis(20), 100);
    let locks = manager_through(&proxy, Duration::from_millis(500), &config).await;
    let grant = locks.send(Lock::new("r")).await.unwrap().unwrap();

    take_server_away(&proxy);
    let unlock = actix_rt::spawn(locks.send(Unlock::new(grant.lock_id.clone())));
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !unlock.is_finished(),
        "the Unlock answered while the server was away"
    );
    assert_eq!(
        stored_hold(&config, "r")
            .await
            .map(StoredHold::id_and_fence),
        Some((grant.lock_id.to_string(), grant.fence)),
        "released while the server was away?"
    );

    let restored = Instant::now();
    proxy.restore();
    let outcome = unlock.await.unwrap().unwrap();
    assert_eq!(
        outcome.expect("the Unlock's retries reach the server once it is back"),
        UnlockOutcome::Released
    );
    let took = restored.elapsed();
    assert_eq!(stored_hold(&config, "r").await, None);
    assert!(proxy.connections_refused() > 0, "the server was never away");
    eprintln!(
        "Unlock during a 1.5 s outage: released {took:?} after the proxy restored \
         ({} connections refused meanwhile)",
        proxy.connections_refused()
    );
}

/// The Unlock reaches the server and releases the hold, but its reply is cut off; the retry
/// (the driver's or the manager's, with the same lock id) then finds nothing. The documented
/// contract is "`Released`: the hold with that id was released; `NotHeld`: nothing changed",
/// and this Unlock did change something: it must not answer `NotHeld`, which tells the holder
/// its lease had already been lost (and, to a careful holder, that its critical section may
/// have overlapped someone else's).
#[actix_rt::test]
async fn an_unlock_whose_reply_was_lost_does_not_answer_that_nothing_changed() {
    let proxy = to_the_server().await;
    let config = fast_config("lost_unlock_reply")
        .ttl(Duration::from_secs(30))
        .unlock_retries(Duration::from_millis(20), 100);
    let locks = manager_through(&proxy, SELECTION, &config).await;
    let grant = locks.send(Lock::new("r")).await.unwrap().unwrap();

    proxy.add_latency(Duration::from_millis(250));
    let unlock = actix_rt::spawn(locks.send(Unlock::new(grant.lock_id.clone())));
    eventually(
        "the release reaches the server",
        Duration::from_secs(5),
        || async { stored_hold(&config, "r").await.is_none().then_some(()) },
    )
    .await;
    proxy.add_latency(Duration::ZERO);
    proxy.drop_connections();

    let outcome = unlock.await.unwrap().unwrap();
    assert!(
        !matches!(outcome, Ok(UnlockOutcome::NotHeld)),
        "the Unlock released the hold (the server shows it released), its reply was lost, and \
         it answered {outcome:?}: \"nothing changed, the hold was already gone\""
    );
}

// ---------------------------------------------------------------------------------------------
// Grants whose outcome the manager could not learn, and deadlines during an outage
// ---------------------------------------------------------------------------------------------

/// An Acquire whose attempt reached the server but whose reply was lost, and which then runs
/// out of time while the server stays away, must release that lock id as a failed Lock does:
/// otherwise the grant nobody was told of holds the resource until its lease ends.
#[actix_rt::test]
async fn an_acquire_that_gives_up_after_a_lost_grant_reply_leaves_no_hold_behind() {
    let proxy = to_the_server().await;
    let config = fast_config("acquire_gives_up")
        .ttl(Duration::from_secs(30))
        .acquire_retries(Duration::from_millis(50), 100)
        .unlock_retries(Duration::from_millis(20), 100);
    let locks = manager_through(&proxy, Duration::from_millis(300), &config).await;

    proxy.add_latency(Duration::from_millis(250));
    let acquire = Acquire::new("r").timeout(Duration::from_millis(1500));
    let answer = actix_rt::spawn(locks.send(acquire));
    let (stored_id, _) = stored_grant(&config, "r").await;
    take_server_away(&proxy);

    let answer = answer.await.unwrap().unwrap();
    assert!(
        matches!(
            answer,
            Err(LockError::Unavailable { .. } | LockError::AcquireTimeout { .. })
        ),
        "an Acquire that could not reach the server answered {answer:?}"
    );
    let restored = Instant::now();
    proxy.restore();
    let freed = eventually_or_none(Duration::from_secs(5), || async {
        stored_hold(&config, "r").await.is_none().then_some(())
    })
    .await;
    assert!(
        freed.is_some(),
        "the grant whose reply was lost (lock id {}…) still holds \"r\" {:?} after the proxy \
         restored: the Acquire gave up ({answer:?}) without releasing it, so it stays orphaned \
         until its lease ends (30 s)",
        &stored_id[..8],
        restored.elapsed()
    );
}

/// `Acquire::timeout` is the caller's deadline for waiting. While the server is unreachable each
/// attempt blocks in the driver's server selection (5 s here, 30 s by default); the Acquire must
/// still answer `Unavailable` once its deadline passes, not one selection timeout later: its
/// first attempt runs to its end, bounded by `request_timeout`, and later ones are cut off at
/// the deadline.
#[actix_rt::test]
async fn an_acquire_answers_by_its_deadline_while_the_server_is_unreachable() {
    let proxy = to_the_server().await;
    let request_timeout = Duration::from_millis(500);
    let config = fast_config("acquire_deadline")
        .acquire_retries(Duration::from_millis(50), 100)
        .request_timeout(request_timeout);
    let locks = manager_through(&proxy, SELECTION, &config).await;
    take_server_away(&proxy);

    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let answer = locks
        .send(Acquire::new("r").timeout(timeout))
        .await
        .unwrap();
    let took = started.elapsed();
    proxy.restore();
    assert!(
        matches!(answer, Err(LockError::Unavailable { .. })),
        "an Acquire that never reached the server answered {answer:?}"
    );
    assert!(
        took < timeout + request_timeout + Duration::from_millis(500),
        "an Acquire with a {timeout:?} deadline answered {answer:?} after {took:?}"
    );
}

/// A Lock request that is still on its way when the driver gives up on it (a heartbeat timed
/// out, so the driver interrupts the connection; its retries find no server within 500 ms)
/// reaches the server after the manager's background release already found nothing to
/// release. The grant then lands, and must not stay orphaned until its lease ends.
#[actix_rt::test]
async fn a_lock_request_that_lands_after_its_failure_was_reported_is_still_released() {
    let proxy = to_the_server().await;
    let config = fast_config("late_lock_request")
        .ttl(Duration::from_secs(30))
        .unlock_retries(Duration::from_millis(20), 100);
    let locks = manager_through(&proxy, Duration::from_millis(500), &config).await;

    // Every chunk now takes 6 s: the Lock request sits in the proxy, heartbeats time out (1 s),
    // the driver interrupts the Lock's connection and its retries find no server. The proxy
    // still delivers the request it holds when its time comes, as a slow network would.
    // (Once the manager's start-up work, the purger's first purge included, is done, and a
    // round trip has left a connection in the pool: the Lock must go out on a connection that
    // is already open, or it would wait for a handshake the latency holds up, and never be
    // sent at all.)
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let warm = locks
        .send(Lock::new("warm"))
        .await
        .unwrap()
        .expect("Lock before the fault");
    locks
        .send(Unlock::new(warm.lock_id))
        .await
        .unwrap()
        .expect("Unlock before the fault");
    let delay = Duration::from_secs(6);
    proxy.add_latency(delay);
    let sent = Instant::now();
    let answer = locks.send(Lock::new("r")).await.unwrap();
    let failed_after = sent.elapsed();
    assert!(
        matches!(
            answer,
            Err(LockError::Database(_) | LockError::Unavailable { .. })
        ),
        "the Lock answered {answer:?}"
    );
    assert!(
        failed_after < delay - Duration::from_secs(1),
        "the Lock failed only after {failed_after:?}, too close to its request's delivery"
    );
    // The network is fast again: the background release reaches the server at once, and
    // finds nothing yet.
    proxy.add_latency(Duration::ZERO);
    assert_eq!(stored_hold(&config, "r").await, None, "granted too early");

    // The delayed request lands at `sent + delay`. Its grant raises the fence, which stays
    // raised whether or not the hold is already released when this looks: a request that
    // never lands fails the test rather than passing it unchecked.
    let landed = eventually(
        "the delayed Lock request lands (the fence of \"r\" rises)",
        delay + Duration::from_secs(4),
        || async { stored(&config, "r").await.filter(|d| stored_fence(d) >= 1) },
    )
    .await;
    let landed_after = sent.elapsed();
    let late_id = landed
        .get_document("exclusive")
        .and_then(|exclusive| exclusive.get_str("lockId"))
        .unwrap_or("?")
        .to_owned();
    let freed = eventually_or_none(Duration::from_secs(5), || async {
        stored_hold(&config, "r").await.is_none().then_some(())
    })
    .await;
    assert!(
        freed.is_some(),
        "a Lock that answered {answer:?} after {failed_after:?} was granted on the server \
         {landed_after:?} after it was sent (lock id {}…), and still holds \"r\" 5 s later: \
         nothing releases it until its lease ends (30 s)",
        &late_id[..late_id.len().min(8)]
    );
}

// ---------------------------------------------------------------------------------------------
// A black hole longer than a lease
// ---------------------------------------------------------------------------------------------

/// Receives the keep-alive's loss signal.
struct LossListener(Rc<RefCell<Vec<(LeaseLost, Instant)>>>);

impl Actor for LossListener {
    type Context = Context<Self>;
}

impl Handler<LeaseLost> for LossListener {
    type Result = ();

    fn handle(&mut self, lost: LeaseLost, _: &mut Context<Self>) {
        self.0.borrow_mut().push((lost, Instant::now()));
    }
}

#[actix_rt::test]
async fn a_holder_cut_off_longer_than_its_lease_is_told_and_taken_over_only_after_the_lease() {
    let ttl = Duration::from_secs(3);
    let acquire_period = Duration::from_millis(100);
    let config = fast_config("black_hole")
        .ttl(ttl)
        .acquire_retries(acquire_period, 100);
    let proxy = to_the_server().await;
    let cut_off = manager_through(&proxy, SELECTION, &config).await;
    let healthy = manager(&config).await;
    let history = History::new();
    let told = Rc::new(RefCell::new(Vec::new()));
    let listener = LossListener(Rc::clone(&told)).start();

    let requested = SystemTime::now();
    let lock = Lock::new("r").keep_alive(KeepAlive::notify(listener.recipient()));
    let first: LockGrant = cut_off.send(lock).await.unwrap().unwrap();
    let first_id = history.granted(
        "cut-off",
        "r",
        first.fence,
        requested,
        SystemTime::now(),
        requested + ttl,
    );

    proxy.black_hole();
    let holed = Instant::now();
    // Cut off, the holder can neither renew nor reach the server at all.
    let renew = actix_rt::spawn(cut_off.send(Renew::new(first.lock_id.clone())));
    let other = actix_rt::spawn(cut_off.send(Lock::new("other")));

    // The healthy side waits for the lease to end (up to 1 s later on a server comparing dates
    // by whole seconds), and only then gets the resource.
    let requested = SystemTime::now();
    let second = healthy
        .send(Acquire::new("r").timeout(ttl + Duration::from_secs(4)))
        .await
        .unwrap()
        .expect("the healthy side takes over once the lease has ended");
    let taken_over = Instant::now();
    history.granted(
        "healthy",
        "r",
        second.fence,
        requested,
        SystemTime::now(),
        requested + ttl,
    );
    assert!(
        second.granted_at > first.expires_at,
        "taken over at {:?}, before the lease ended at {:?}",
        second.granted_at,
        first.expires_at
    );
    assert!(second.fence > first.fence, "fences out of order");
    // The lease ended at most `ttl` after the cut; the takeover follows within one acquire
    // period, plus up to 1 s on a server comparing dates by whole seconds, plus scheduling.
    let bound = ttl + acquire_period + Duration::from_secs(1) + Duration::from_millis(500);
    assert!(
        taken_over.duration_since(holed) < bound,
        "the takeover came {:?} after the cut (bound {bound:?})",
        taken_over.duration_since(holed)
    );

    // The cut-off holder was told of the loss, before the takeover.
    let (lost, told_at) = told
        .borrow()
        .first()
        .cloned()
        .expect("the cut-off holder was told its lease is lost");
    assert_eq!(lost.lock_id, first.lock_id);
    assert!(
        told_at <= taken_over,
        "told {:?} after the takeover",
        told_at.duration_since(taken_over)
    );
    history.lost(first_id, SystemTime::now() - told_at.elapsed());

    let renew = renew.await.unwrap().unwrap();
    assert!(
        matches!(
            renew,
            Err(LockError::Database(_) | LockError::Unavailable { .. } | LockError::LockLost)
        ),
        "Renew through a black hole answered {renew:?}"
    );
    let other = other.await.unwrap().unwrap();
    assert!(
        matches!(
            other,
            Err(LockError::Database(_) | LockError::Unavailable { .. })
        ),
        "Lock through a black hole answered {other:?}"
    );

    // The black hole outlives the lease, then lifts; the old holder's id releases nothing and
    // cannot be renewed, and the new holder keeps the resource. The lease began before the
    // cut, so the takeover can come a little less than `ttl` after it: the hole is kept open
    // until it has lasted longer than the lease.
    actix_rt::time::sleep_until((holed + ttl + Duration::from_millis(200)).into()).await;
    let holed_for = holed.elapsed();
    proxy.restore();
    let stale = unlock_when_reachable(&cut_off, &first.lock_id).await;
    assert_eq!(stale, UnlockOutcome::NotHeld);
    let renew = cut_off
        .send(Renew::new(first.lock_id.clone()))
        .await
        .unwrap();
    assert!(matches!(renew, Err(LockError::LockLost)), "{renew:?}");
    assert_eq!(
        stored_hold(&config, "r")
            .await
            .map(StoredHold::id_and_fence),
        Some((second.lock_id.to_string(), second.fence))
    );
    history.assert_ok();
    eprintln!(
        "black hole for {holed_for:?} (lease {ttl:?}): taken over {:?} after the cut, \
         fence {} -> {}, holder told ({:?}) {:?} before the takeover",
        taken_over.duration_since(holed),
        first.fence,
        second.fence,
        lost.reason,
        taken_over.duration_since(told_at),
    );
}

/// Unlocks `lock_id` once the manager reaches the server again (right after a fault lifts the
/// first attempts may still fail).
async fn unlock_when_reachable(locks: &Addr<LockManager>, lock_id: &LockId) -> UnlockOutcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match locks.send(Unlock::new(lock_id.clone())).await.unwrap() {
            Ok(outcome) => return outcome,
            Err(e) if Instant::now() < deadline => {
                eprintln!("unlock after the fault lifted: {e}; again");
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the manager never reached the server again: {e}"),
        }
    }
}

/// A waiter that gives up while its manager is cut off from the database cannot leave the line
/// then; it tries again once the database is back, so the turn it held goes on to the next
/// manager in line instead of holding it up after the release (until the turn lapsed, 5 s).
#[actix_rt::test]
async fn a_waiter_that_gives_up_while_cut_off_leaves_the_line_once_the_database_is_back() {
    let config = fast_config("leave_retry")
        .ttl(Duration::from_secs(30))
        .request_timeout(Duration::from_secs(1));
    let proxy = to_the_server().await;
    let cut = manager_through(&proxy, SELECTION, &config).await;
    let holder = manager(&config).await;
    let next = manager(&config).await;
    let held = holder.send(Lock::new("r")).await.unwrap().unwrap();

    // The cut-off manager waits first, so the turn is its own (renewed after 2.5 s to cover
    // the hold); the next one waits behind it.
    let asked = Instant::now();
    let gives_up = actix_rt::spawn(cut.send(Acquire::new("r").timeout(Duration::from_secs(4))));
    eventually("the first waiter has the turn", SELECTION, || async {
        let document = stored(&config, "r").await?;
        let turn = document.get_document("turn").ok()?;
        (!turn.get_str("manager").ok()?.is_empty()).then_some(())
    })
    .await;
    let waits = actix_rt::spawn(next.send(Acquire::new("r").timeout(Duration::from_secs(30))));
    actix_rt::time::sleep(Duration::from_secs(3).saturating_sub(asked.elapsed())).await;
    proxy.black_hole();
    let answer = gives_up.await.unwrap().unwrap();
    assert!(answer.is_err(), "granted while held: {answer:?}");
    // Its leave fails while cut off (within the 1 s request timeout); the database comes back.
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    proxy.pass_through();
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    // The turn is no longer the cut-off manager's: nobody's (the next waiter first in line),
    // or the next waiter's, handed on by the leave.
    let document = stored(&config, "r").await.expect("stored");
    let line = document
        .get_array("line")
        .map(|line| line.len())
        .unwrap_or(0);
    let turn = document.get_document("turn").expect("a turn");
    assert!(
        turn.get_str("manager") == Ok("") || line == 0,
        "the next waiter still waits in line behind the cut-off manager's turn: {document}"
    );

    let released = Instant::now();
    holder
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
    let granted = waits
        .await
        .unwrap()
        .unwrap()
        .expect("the next waiter is granted");
    let after = released.elapsed();
    eprintln!("the next waiter was granted {after:?} after the release");
    // The turn was handed on when the cut-off manager left: the release serves the next waiter
    // at once (2 s is generous; a turn left behind would hold it up for 5 s).
    assert!(
        after < Duration::from_secs(2),
        "granted {after:?} after the release"
    );
    next.send(Unlock::new(granted.lock_id))
        .await
        .unwrap()
        .unwrap();
}
