//! SecantusDB's `failCommand` failpoint and a per-client record of the commands it sent, for the
//! server-side fault tests (tests/server_faults.rs).
//!
//! A failpoint is server-wide and SecantusDB keeps only ONE `failCommand` at a time (arming a
//! new one replaces the last), so the tests that arm one take [`SERIAL`] first. Each failpoint
//! names an `appName`, and the client under test sends that name in its handshake, so a
//! failpoint hits only that client: the admin client that arms it and the tests' direct reads
//! stay untouched. The [`Commands`] record shows what the driver did about a fault: a retry by
//! the driver re-sends the same `txnNumber`; a retry by the lock manager is a new operation with
//! a new one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::Client;

/// Held by every test that arms a failpoint or steps the server down: there is one failpoint
/// (and one primary) per server.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Panics unless the tests run against SecantusDB (`MONGO_SERVER=secantus` and a server whose
/// `hello` names a replica set): failpoints, retryable-write records and step-downs exist only
/// there.
pub async fn assert_secantus() {
    let server = std::env::var("MONGO_SERVER").unwrap_or_default();
    assert_eq!(
        server, "secantus",
        "these tests need SecantusDB's failpoints: run them as \
         `MONGO_SERVER=secantus scripts/with-mongo cargo test --test server_faults`"
    );
    let hello = super::server::client()
        .await
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .expect("hello");
    assert_eq!(
        hello.get_str("setName"),
        Ok("secantus"),
        "the server is not SecantusDB's replica-set primary: {hello:?}"
    );
}

/// What arms a failpoint: the `data` of `configureFailPoint: "failCommand"`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub data: Document,
}

impl Fault {
    /// Fails `commands` with `code` (labels computed by the server, as mongod does).
    pub fn error(commands: &[&str], code: i32) -> Fault {
        Fault {
            data: doc! { "failCommands": commands, "errorCode": code },
        }
    }

    /// Closes the connection before the command runs: nothing is applied, no reply.
    pub fn close_connection(commands: &[&str]) -> Fault {
        Fault {
            data: doc! { "failCommands": commands, "closeConnection": true },
        }
    }

    /// Runs the command, then answers with a `writeConcernError` of `code`: applied, yet an
    /// error to the driver.
    pub fn write_concern_error(commands: &[&str], code: i32) -> Fault {
        Fault {
            data: doc! {
                "failCommands": commands,
                "writeConcernError": { "code": code, "errmsg": "injected writeConcernError" },
            },
        }
    }

    /// Holds the command `block` before running it.
    pub fn block(commands: &[&str], block: Duration) -> Fault {
        Fault {
            data: doc! {
                "failCommands": commands,
                "blockConnection": true,
                "blockTimeMS": block.as_millis() as i64,
            },
        }
    }
}

/// Arms `fault` for the next `times` matching commands of clients named `app`.
pub async fn arm(app: &str, times: i32, fault: &Fault) {
    let mut data = fault.data.clone();
    data.insert("appName", app);
    configure(doc! { "times": times }, data).await;
}

/// Arms `fault` for every matching command of clients named `app` until [`off`].
pub async fn arm_always(app: &str, fault: &Fault) {
    let mut data = fault.data.clone();
    data.insert("appName", app);
    configure(Bson::String("alwaysOn".to_owned()), data).await;
}

/// Disarms the failpoint.
pub async fn off() {
    configure(Bson::String("off".to_owned()), doc! {}).await;
}

async fn configure(mode: impl Into<Bson>, data: Document) {
    let mode = mode.into();
    super::server::client()
        .await
        .database("admin")
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": mode.clone(), "data": data.clone() })
        .await
        .unwrap_or_else(|e| panic!("configureFailPoint {mode} {data}: {e}"));
}

/// Steps the server down for `seconds`: every write answers 10107 NotWritablePrimary until
/// then, reads still work.
pub async fn step_down(seconds: i32) {
    super::server::client()
        .await
        .database("admin")
        .run_command(doc! { "replSetStepDown": seconds, "force": true })
        .await
        .unwrap_or_else(|e| panic!("replSetStepDown {seconds}: {e}"));
}

/// How one command sent by a recorded client ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Ended {
    Pending,
    /// `ok: 1`; `write_concern_error` is the code of a `writeConcernError` in the reply.
    Succeeded {
        write_concern_error: Option<i32>,
    },
    /// A server error (with its code and labels) or a network error (code `None`).
    Failed {
        code: Option<i32>,
        labels: Vec<String>,
    },
}

/// One command a recorded client sent.
#[derive(Clone, Debug)]
pub struct Sent {
    pub name: String,
    pub request_id: i32,
    /// The retryable-write number, if the driver sent the command as a retryable write.
    pub txn_number: Option<i64>,
    /// The session (`lsid.id`) the command was sent in: a retryable write is identified by its
    /// session and txnNumber together (a network error discards the session, so the next
    /// operation may reuse the txnNumber in a new one).
    pub session: Option<String>,
    /// An upsert (a `findAndModify` that is a grant, not a look at the line).
    pub upsert: bool,
    pub ended: Ended,
}

impl Sent {
    /// What identifies the write to the server's retryable-write record, if it is one.
    pub fn retry_key(&self) -> Option<(Option<String>, i64)> {
        self.txn_number.map(|n| (self.session.clone(), n))
    }
}

/// Every command one client sent, in order, with how it ended.
#[derive(Clone, Debug, Default)]
pub struct Commands(Arc<Mutex<Vec<Sent>>>);

impl Commands {
    fn record(&self, event: CommandEvent) {
        let mut sent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut end = |request_id: i32, ended: Ended| {
            if let Some(command) = sent.iter_mut().rev().find(|c| c.request_id == request_id) {
                command.ended = ended;
            }
        };
        match event {
            CommandEvent::Started(e) => {
                let txn_number = match e.command.get("txnNumber") {
                    Some(Bson::Int64(n)) => Some(*n),
                    Some(Bson::Int32(n)) => Some(i64::from(*n)),
                    _ => None,
                };
                let session = e
                    .command
                    .get_document("lsid")
                    .ok()
                    .and_then(|lsid| lsid.get("id"))
                    .map(ToString::to_string);
                let upsert = e.command.get_bool("upsert") == Ok(true);
                sent.push(Sent {
                    name: e.command_name,
                    request_id: e.request_id,
                    txn_number,
                    session,
                    upsert,
                    ended: Ended::Pending,
                });
            }
            CommandEvent::Succeeded(e) => {
                let write_concern_error = e
                    .reply
                    .get_document("writeConcernError")
                    .ok()
                    .and_then(|w| w.get_i32("code").ok());
                end(
                    e.request_id,
                    Ended::Succeeded {
                        write_concern_error,
                    },
                );
            }
            CommandEvent::Failed(e) => {
                let code = server_code(&e.failure);
                let labels = e.failure.labels().iter().cloned().collect();
                end(e.request_id, Ended::Failed { code, labels });
            }
            _ => {}
        }
    }

    /// The commands named `name` sent so far.
    pub fn named(&self, name: &str) -> Vec<Sent> {
        let sent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        sent.iter().filter(|c| c.name == name).cloned().collect()
    }

    /// The names of the commands sent so far, in order.
    pub fn names(&self) -> Vec<String> {
        let sent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        sent.iter().map(|c| c.name.clone()).collect()
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The server error code of `e`, if the server answered with one.
pub fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// A client for `uri` that names itself `app` (so a failpoint can single it out) and records
/// every command it sends. It gives up on server selection after 5 s, like the other tests'
/// clients, and keeps the URI's retryable writes (on by default).
pub async fn recorded_client(uri: &str, app: &str) -> (Client, Commands) {
    let mut options = ClientOptions::parse(uri)
        .await
        .unwrap_or_else(|e| panic!("{uri:?} does not parse: {e}"));
    options.app_name = Some(app.to_owned());
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.heartbeat_freq = Some(Duration::from_millis(500));
    let commands = Commands::default();
    let recorder = commands.clone();
    options.command_event_handler =
        Some(EventHandler::callback(move |event| recorder.record(event)));
    let client = Client::with_options(options).expect("client options are valid");
    (client, commands)
}
