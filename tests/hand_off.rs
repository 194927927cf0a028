//! Fast hand-off, pinned by behaviour (the speed is measured in benches/lock_bench.rs): local
//! waiters are served in arrival order, a release here wakes the next waiter at once, callers
//! that leave are cleaned up, deadlines hold, and a manager's waiters share one probe.

mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_mongo_lock::{Acquire, Lock, LockError, LockManager, Unlock, UnlockOutcome};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use support::server::{fast_config, manager, uri};

#[actix_rt::test]
async fn local_waiters_are_served_in_arrival_order() {
    let config = fast_config("fifo").acquire_retries(Duration::from_millis(100), 100);
    let locks = manager(&config).await;
    let held = locks.send(Lock::new("queue")).await.unwrap().unwrap();

    let order: Rc<RefCell<Vec<usize>>> = Rc::default();
    let mut waiters = Vec::new();
    for arrival in 0..6 {
        let (locks, order) = (locks.clone(), Rc::clone(&order));
        waiters.push(actix_rt::spawn(async move {
            let grant = locks.send(Acquire::new("queue")).await.unwrap().unwrap();
            order.borrow_mut().push(arrival);
            locks
                .send(Unlock::new(grant.lock_id))
                .await
                .unwrap()
                .unwrap();
        }));
        // Let each Acquire reach the queue before the next is sent.
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    locks
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
    for waiter in waiters {
        waiter.await.unwrap();
    }

    assert_eq!(*order.borrow(), [0, 1, 2, 3, 4, 5]);
}

#[actix_rt::test]
async fn a_release_here_goes_to_a_local_waiter_without_waiting_out_the_acquire_period() {
    // Polling every 5 s would make the waiter wait seconds; the hand-off must not.
    let config = fast_config("wake").acquire_retries(Duration::from_secs(5), 10);
    let locks = manager(&config).await;
    let held = locks.send(Lock::new("baton")).await.unwrap().unwrap();
    let waiting = locks.send(
        Acquire::new("baton")
            .fixed_polling()
            .timeout(Duration::from_secs(60)),
    );
    let adaptive = locks.send(Acquire::new("baton"));
    actix_rt::time::sleep(Duration::from_millis(200)).await;

    let released = Instant::now();
    locks
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
    let next = adaptive
        .await
        .unwrap()
        .expect("the adaptive waiter is woken");
    let waited = released.elapsed();

    assert!(
        waited < Duration::from_secs(1),
        "the waiter took {waited:?}, as if it had polled"
    );
    assert!(next.fence > held.fence);
    locks
        .send(Unlock::new(next.lock_id))
        .await
        .unwrap()
        .unwrap();
    // The seed's fixed polling still works (and gets its turn at its next poll).
    assert!(waiting.await.unwrap().is_ok());
}

#[actix_rt::test]
async fn a_waiter_whose_caller_left_is_cleaned_up_and_takes_nothing() {
    let config = fast_config("abandoned").acquire_retries(Duration::from_millis(100), 100);
    let locks = manager(&config).await;
    let held = locks.send(Lock::new("chair")).await.unwrap().unwrap();

    // The first caller gives up after 100 ms: actix drops its reply channel.
    let impatient = locks
        .send(Acquire::new("chair"))
        .timeout(Duration::from_millis(100))
        .await;
    assert!(
        impatient.is_err(),
        "the impatient caller timed out: {impatient:?}"
    );
    let patient = locks.send(Acquire::new("chair"));
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    locks
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();

    let next = patient
        .await
        .unwrap()
        .expect("the patient waiter gets the lock, not the departed one");
    locks
        .send(Unlock::new(next.lock_id))
        .await
        .unwrap()
        .unwrap();
    // Nothing is left held by the departed waiter.
    let free = locks.send(Lock::new("chair")).await.unwrap();
    assert!(free.is_ok(), "the departed waiter left a hold: {free:?}");
}

#[actix_rt::test]
async fn the_deadline_of_an_acquire_is_honoured() {
    let config = fast_config("deadline");
    let holder = manager(&config).await;
    let locks = manager(&config).await;
    holder.send(Lock::new("gate")).await.unwrap().unwrap();

    let started = Instant::now();
    let timed = locks
        .send(Acquire::new("gate").timeout(Duration::from_millis(400)))
        .await
        .unwrap();
    let waited = started.elapsed();

    assert!(
        matches!(timed, Err(LockError::AcquireTimeout { .. })),
        "{timed:?}"
    );
    assert!(
        waited >= Duration::from_millis(400),
        "gave up early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1400),
        "overran its deadline: {waited:?}"
    );
}

#[actix_rt::test]
async fn many_local_waiters_share_one_probe_of_a_resource_held_elsewhere() {
    let config = fast_config("one_probe").acquire_retries(Duration::from_millis(250), 10);
    let holder = manager(&config).await;
    let held = holder.send(Lock::new("hot")).await.unwrap().unwrap();

    let probes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&probes);
    let mut options = ClientOptions::parse(uri()).await.unwrap();
    options.command_event_handler = Some(EventHandler::callback(move |event| {
        if let CommandEvent::Started(started) = event {
            if started.command_name == "findAndModify" {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }));
    let waiting = LockManager::with_client(mongodb::Client::with_options(options).unwrap(), config)
        .await
        .unwrap();

    let waiters: Vec<_> = (0..20)
        .map(|_| waiting.send(Acquire::new("hot").timeout(Duration::from_secs(5))))
        .collect();
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let during_wait = probes.load(Ordering::Relaxed);
    holder
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
    let mut granted = 0;
    for waiter in waiters {
        let grant = waiter
            .await
            .unwrap()
            .expect("every waiter is served in turn");
        granted += 1;
        let outcome = waiting.send(Unlock::new(grant.lock_id)).await.unwrap();
        assert_eq!(outcome.unwrap(), UnlockOutcome::Released);
    }

    assert_eq!(granted, 20);
    // One waiter probing: at most ~40 a second plus the first short tries. Twenty probing
    // independently would be hundreds.
    assert!(
        during_wait <= 60,
        "{during_wait} probes in one second for one resource"
    );
}
