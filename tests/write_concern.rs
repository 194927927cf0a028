//! Every write a manager makes carries its write concern: `{w: "majority"}` by default, on every
//! server, whatever the client's URI asks for; `LockConfig::write_concern` overrides it, and
//! reads carry none. Read from the commands the driver sends (command monitoring), so what is
//! asserted is what the server is asked for.
//!
//! What the servers do with it is pinned here too: SecantusDB applies a write concern as
//! MongoDB does (an unsatisfiable one fails the write's acknowledgement, so a manager asking
//! for one does not start), nx-27017 accepts any write concern and ignores it.
//!
//! ```sh
//! scripts/with-mongo cargo test --test write_concern
//! MONGO_SERVER=secantus scripts/with-mongo cargo test --test write_concern
//! ```

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use actix_mongo_lock::{
    Acquire, Lock, LockConfig, LockError, LockManager, Renew, Unlock, UnlockOutcome, WriteConcern,
};
use mongodb::bson::{doc, Bson, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{Acknowledgment, ClientOptions};
use mongodb::Client;
use support::server::{client, fast_config, manager, uri};

/// The commands that write, as the driver names them.
const WRITES: [&str; 5] = [
    "findAndModify",
    "update",
    "insert",
    "delete",
    "createIndexes",
];

/// One command a monitored client sent: its name, its `writeConcern` if it carried one,
/// whether it is an update of many documents (a purge), and whether it is an `aggregate`
/// opening a change stream.
#[derive(Clone, Debug)]
struct Sent {
    name: String,
    write_concern: Option<Document>,
    multi: bool,
    change_stream: bool,
}

/// What a monitored client sent.
#[derive(Clone, Default)]
struct Monitor(Arc<Mutex<Vec<Sent>>>);

impl Monitor {
    fn sent(&self) -> Vec<Sent> {
        self.0.lock().unwrap().clone()
    }

    fn writes(&self) -> Vec<Sent> {
        self.sent()
            .into_iter()
            .filter(|s| WRITES.contains(&s.name.as_str()))
            .collect()
    }

    fn reads(&self) -> Vec<Sent> {
        self.sent()
            .into_iter()
            .filter(|s| !WRITES.contains(&s.name.as_str()))
            .collect()
    }
}

/// A client of the test server whose every command is recorded, with `write_concern` as the
/// client's own (what a `w=...` in the URI sets).
async fn monitored_client(write_concern: Option<WriteConcern>) -> (Client, Monitor) {
    let monitor = Monitor::default();
    let seen = monitor.clone();
    let mut options = ClientOptions::parse(uri()).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.write_concern = write_concern;
    options.command_event_handler = Some(EventHandler::callback(move |event| {
        if let CommandEvent::Started(started) = event {
            let multi = started
                .command
                .get_array("updates")
                .ok()
                .and_then(|updates| updates.first())
                .and_then(Bson::as_document)
                .is_some_and(|update| update.get_bool("multi") == Ok(true));
            let change_stream = started.command_name == "aggregate"
                && started
                    .command
                    .get_array("pipeline")
                    .ok()
                    .and_then(|pipeline| pipeline.first())
                    .and_then(Bson::as_document)
                    .is_some_and(|stage| stage.contains_key("$changeStream"));
            seen.0.lock().unwrap().push(Sent {
                name: started.command_name.clone(),
                write_concern: started.command.get_document("writeConcern").ok().cloned(),
                multi,
                change_stream,
            });
        }
    }));
    (Client::with_options(options).unwrap(), monitor)
}

/// A manager on `client`; panics if it cannot start.
async fn manager_on(client: Client, config: &LockConfig) -> Addr<LockManager> {
    LockManager::with_client(client, config.clone())
        .await
        .unwrap_or_else(|e| panic!("cannot start a lock manager on {}: {e}", uri()))
}

/// Makes `locks` send every kind of write a manager makes: a grant (Lock), a renewal, a release
/// (Unlock), an Acquire that waits for a hold of `other` (so it joins the resource's line and is
/// served when `other` releases), and purges (the configuration's short `purger_period`).
async fn every_kind_of_write(locks: &Addr<LockManager>, other: &Addr<LockManager>) {
    let grant = locks.send(Lock::new("own")).await.unwrap().unwrap();
    locks
        .send(Renew::new(grant.lock_id.clone()))
        .await
        .unwrap()
        .expect("Renew of a live hold");
    let released = locks.send(Unlock::new(grant.lock_id)).await.unwrap();
    assert_eq!(released.unwrap(), UnlockOutcome::Released);

    let held = other.send(Lock::new("contended")).await.unwrap().unwrap();
    let waiting =
        actix_rt::spawn(locks.send(Acquire::new("contended").timeout(Duration::from_secs(20))));
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    other
        .send(Unlock::new(held.lock_id))
        .await
        .unwrap()
        .unwrap();
    let served = waiting
        .await
        .unwrap()
        .unwrap()
        .expect("the Acquire is served");
    locks
        .send(Unlock::new(served.lock_id))
        .await
        .unwrap()
        .unwrap();
    // Purges run every purger_period (100 ms here): a few of them.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
}

/// Asserts that `monitor` saw grants, releases or line updates, purges and index creation, each
/// carrying exactly `expected` as its write concern (`None`: no `writeConcern` field), and that
/// no read carried one, but for one the driver adds: the `aggregate` that opens a change stream
/// (SecantusDB) carries the collection's write concern, which the driver (3.9) passes on to
/// every `aggregate` and the server ignores for a pipeline that writes nothing. It is pinned
/// as `expected` too, so a driver that stops sending it shows here.
fn assert_every_write_carries(monitor: &Monitor, expected: Option<Document>) {
    let writes = monitor.writes();
    for name in ["findAndModify", "update", "createIndexes"] {
        assert!(
            writes.iter().any(|w| w.name == name),
            "no {name} among {writes:?}"
        );
    }
    assert!(
        writes.iter().any(|w| w.name == "update" && w.multi),
        "no purge (an update of many documents) among {writes:?}"
    );
    for write in &writes {
        assert_eq!(write.write_concern, expected, "{write:?}");
    }
    let reads = monitor.reads();
    for name in ["buildInfo", "hello", "find"] {
        assert!(
            reads.iter().any(|r| r.name == name),
            "no {name} among {reads:?}"
        );
    }
    for read in reads {
        if read.change_stream {
            assert_eq!(read.write_concern, expected, "{read:?}");
        } else {
            assert_eq!(read.write_concern, None, "a read carried one: {read:?}");
        }
    }
    let streams = monitor
        .reads()
        .into_iter()
        .filter(|r| r.change_stream)
        .count();
    match std::env::var("MONGO_SERVER").as_deref() {
        Ok("nx") => assert_eq!(streams, 0, "nx-27017 has no change streams"),
        Ok("secantus") => assert!(streams > 0, "the waiting Acquire opened no change stream"),
        _ => {}
    }
}

fn majority() -> Option<Document> {
    Some(doc! { "w": "majority" })
}

#[actix_rt::test]
async fn every_write_carries_majority_by_default_and_reads_carry_none() {
    let config = fast_config("wc_default").purger_period(Duration::from_millis(100));
    let (client, monitor) = monitored_client(None).await;
    let locks = manager_on(client, &config).await;
    let other = manager(&config).await;
    every_kind_of_write(&locks, &other).await;
    assert_every_write_carries(&monitor, majority());
}

#[actix_rt::test]
async fn the_default_majority_wins_over_the_clients_own_write_concern() {
    // A URI asking for `w=1` (or any other) does not weaken the lock collection's writes.
    let config = fast_config("wc_over_uri").purger_period(Duration::from_millis(100));
    let (client, monitor) = monitored_client(Some(WriteConcern::nodes(1))).await;
    let locks = manager_on(client, &config).await;
    let other = manager(&config).await;
    every_kind_of_write(&locks, &other).await;
    assert_every_write_carries(&monitor, majority());
}

#[actix_rt::test]
async fn an_overriding_write_concern_is_sent_as_it_is() {
    let chosen = WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .w_timeout(Duration::from_secs(3))
        .build();
    for (write_concern, expected) in [
        (WriteConcern::nodes(1), doc! { "w": 1 }),
        (
            chosen,
            doc! { "w": "majority", "wtimeout": 3000, "j": true },
        ),
    ] {
        let config = fast_config("wc_override")
            .purger_period(Duration::from_millis(100))
            .write_concern(write_concern);
        let (client, monitor) = monitored_client(None).await;
        let locks = manager_on(client, &config).await;
        let other = manager(&config).await;
        every_kind_of_write(&locks, &other).await;
        assert_every_write_carries(&monitor, Some(expected));
    }
}

#[actix_rt::test]
async fn none_leaves_the_write_concern_to_the_client() {
    // The client's own write concern is sent ...
    let config = fast_config("wc_client")
        .purger_period(Duration::from_millis(100))
        .write_concern(None);
    let (client, monitor) = monitored_client(Some(WriteConcern::nodes(1))).await;
    let locks = manager_on(client, &config).await;
    let other = manager(&config).await;
    every_kind_of_write(&locks, &other).await;
    assert_every_write_carries(&monitor, Some(doc! { "w": 1 }));

    // ... and a client without one sends none: the server's default applies.
    let (client, monitor) = monitored_client(None).await;
    let locks = manager_on(client, &config).await;
    every_kind_of_write(&locks, &other).await;
    assert_every_write_carries(&monitor, None);
}

#[actix_rt::test]
async fn an_unacknowledged_write_concern_is_refused_before_any_request() {
    let config = fast_config("wc_w0").write_concern(WriteConcern::nodes(0));
    let (client, monitor) = monitored_client(None).await;
    match LockManager::with_client(client, config).await {
        Err(LockError::InvalidConfig { reason, .. }) => {
            assert!(reason.contains("unacknowledged"), "{reason}")
        }
        other => panic!("w: 0 answered {:?}", other.map(|_| "a manager")),
    }
    assert!(monitor.sent().is_empty(), "sent {:?}", monitor.sent());
}

/// `w: 2` on the test servers, each a single member: SecantusDB (like MongoDB) cannot satisfy
/// it, so the first write (the index creation at start) answers a write concern error and the
/// manager does not start; nx-27017 ignores write concerns, so it starts and grants.
#[actix_rt::test]
async fn an_unsatisfiable_write_concern_stops_the_start_on_secantus_and_is_ignored_on_nx() {
    let config = fast_config("wc_unsatisfiable").write_concern(WriteConcern::nodes(2));
    let started = LockManager::with_client(client().await, config.clone()).await;
    match std::env::var("MONGO_SERVER").as_deref() {
        Ok("nx") => {
            let locks = started.expect("nx-27017 ignores the write concern");
            let grant = locks.send(Lock::new("r")).await.unwrap().unwrap();
            assert_eq!(grant.fence, 1);
        }
        Ok("secantus") => match started {
            Err(LockError::Database(e)) => assert_eq!(
                std::error::Error::source(&e)
                    .and_then(|driver| driver.downcast_ref::<mongodb::error::Error>())
                    .and_then(write_concern_error_code),
                Some(100),
                "UnsatisfiableWriteConcern expected: {e}"
            ),
            other => panic!(
                "w: 2 on one member answered {:?}",
                other.map(|_| "a manager")
            ),
        },
        // A real MongoDB: a replica set of two or more data-bearing members satisfies it, a
        // standalone does not; nothing to pin.
        _ => {}
    }
}

/// The code of a write concern error, if `e` is one.
fn write_concern_error_code(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// The servers' answers to write concerns, sent directly: `{w: "majority"}` is accepted by both
/// (SecantusDB is a single-member set, where a majority is the primary; nx-27017 is a standalone
/// that ignores write concerns, so even a mode no server knows is accepted there, while
/// SecantusDB, like MongoDB, answers it with a write concern error, 79 UnknownReplWriteConcern,
/// after applying the write).
#[actix_rt::test]
async fn the_servers_answer_write_concerns_as_pinned() {
    let db = client().await.database("actix_mongo_lock_tests");
    let name = support::server::unique_name("wc_raw");
    let insert = |write_concern: Document| {
        doc! { "insert": &name, "documents": [{ "x": 1 }], "writeConcern": write_concern }
    };
    // `run_command` answers the reply as it is: a write concern error is a field of an `ok: 1`
    // reply, beside the write's own answer.
    let reply = db
        .run_command(insert(doc! { "w": "majority" }))
        .await
        .unwrap();
    assert_eq!(reply.get("writeConcernError"), None, "{reply:?}");
    let reply = db
        .run_command(insert(doc! { "w": "noSuchMode" }))
        .await
        .unwrap();
    let code = reply
        .get_document("writeConcernError")
        .ok()
        .and_then(|e| e.get_i32("code").ok());
    match std::env::var("MONGO_SERVER").as_deref() {
        Ok("nx") => assert_eq!(code, None, "nx-27017 accepts any write concern: {reply:?}"),
        Ok("secantus") => assert_eq!(code, Some(79), "{reply:?}"),
        _ => {} // a real MongoDB: 79 on a replica set; a standalone's answer is not pinned
    }
    // Both inserts were applied: a write concern error does not undo the write.
    let stored = db
        .collection::<Document>(&name)
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(stored, 2);
    db.collection::<Document>(&name).drop().await.unwrap();
}
