//! A manager refuses to start on a server known not to keep a lock safe (FerretDB 1.x, which
//! loses concurrent updates), before it writes anything, and starts on one only when told to.
//!
//! The test servers are not FerretDB, so the tests make one look like it: a loopback proxy
//! (`support::build_info_proxy`) merges FerretDB's fields into the server's `buildInfo` reply
//! and passes every other byte unchanged. Whatever the manager then does (or does not do) it
//! does on the real server. The test servers' own `buildInfo` answers are pinned too, so the
//! unit tests of the judgement (`src/server.rs`) use the shapes the servers really send.
//!
//! ```sh
//! scripts/with-mongo cargo test --test unsafe_server
//! MONGO_SERVER=secantus scripts/with-mongo cargo test --test unsafe_server
//! ```

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_mongo_lock::{Lock, LockConfig, LockError, LockManager, Unlock, UnlockOutcome};
use mongodb::bson::{doc, Bson, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use mongodb::Client;
use support::build_info_proxy::BuildInfoProxy;
use support::proxy::upstream_from_env;
use support::server::{client, fast_config};

/// FerretDB 1.24's own fields in its `buildInfo` answer (as the real server sent them, its list
/// of aggregation stages cut short).
fn ferretdb_1_24() -> Document {
    doc! {
        "ferretdbVersion": "v1.24.0",
        "ferretdbFeatures": { "aggregationStages": ["$count", "$group", "$match"] },
    }
}

/// A client through `proxy`, recording the name of every command it sends.
async fn client_through(proxy: &BuildInfoProxy) -> (Client, Arc<Mutex<Vec<String>>>) {
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&sent);
    let mut options = ClientOptions::parse(proxy.uri_from_env()).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.command_event_handler = Some(EventHandler::callback(move |event| {
        if let CommandEvent::Started(started) = event {
            seen.lock().unwrap().push(started.command_name.clone());
        }
    }));
    (Client::with_options(options).unwrap(), sent)
}

/// The collections of `config`'s database, read on the server directly.
async fn collections(config: &LockConfig) -> Vec<String> {
    client()
        .await
        .database(&config.database)
        .list_collection_names()
        .await
        .expect("list the collections")
}

#[actix_rt::test]
async fn a_server_named_ferretdb_1_is_refused_before_anything_is_written() {
    let proxy = BuildInfoProxy::start(upstream_from_env(), ferretdb_1_24())
        .await
        .unwrap();
    let config = fast_config("unsafe_refused");
    let (proxied, sent) = client_through(&proxy).await;
    let started = LockManager::with_client(proxied, config.clone()).await;
    let error = match started {
        Err(error) => error,
        Ok(_) => panic!("a manager started on FerretDB 1.24"),
    };
    match &error {
        LockError::UnsafeServer { server, reason, .. } => {
            assert_eq!(server, "FerretDB v1.24.0");
            assert!(reason.contains("concurrent updates"), "{reason}");
        }
        other => panic!("answered {other:?}"),
    }
    assert!(
        !error.is_transient() && !error.is_busy() && !error.is_unavailable(),
        "{error:?}"
    );
    assert_eq!(proxy.rewritten(), 1);
    // One request, buildInfo, and nothing else: no index, no hello, no write.
    assert_eq!(*sent.lock().unwrap(), ["buildInfo"]);
    assert!(
        !collections(&config)
            .await
            .contains(&config.collection_name()),
        "the refused start created {}",
        config.collection_name()
    );
}

#[actix_rt::test]
async fn allow_unsafe_server_starts_anyway_and_the_manager_works_through_the_proxy() {
    let proxy = BuildInfoProxy::start(upstream_from_env(), ferretdb_1_24())
        .await
        .unwrap();
    let config = fast_config("unsafe_allowed").allow_unsafe_server(true);
    let (proxied, _) = client_through(&proxy).await;
    let locks = LockManager::with_client(proxied, config.clone())
        .await
        .expect("allow_unsafe_server starts the manager");
    assert_eq!(proxy.rewritten(), 1);
    let grant = locks.send(Lock::new("r")).await.unwrap().unwrap();
    assert_eq!(grant.fence, 1);
    let refused = locks.send(Lock::new("r")).await.unwrap();
    assert!(
        matches!(refused, Err(LockError::AlreadyLocked { .. })),
        "{refused:?}"
    );
    let released = locks.send(Unlock::new(grant.lock_id)).await.unwrap();
    assert_eq!(released.unwrap(), UnlockOutcome::Released);
    assert!(collections(&config)
        .await
        .contains(&config.collection_name()));
}

#[actix_rt::test]
async fn a_server_named_ferretdb_2_is_not_refused() {
    // FerretDB 2.x is not measured: a manager starts on it (with a warning in the log).
    let proxy = BuildInfoProxy::start(
        upstream_from_env(),
        doc! { "ferretdb": { "version": "v2.7.0", "package": "docker" } },
    )
    .await
    .unwrap();
    let config = fast_config("ferretdb_2");
    let (proxied, _) = client_through(&proxy).await;
    let locks = LockManager::with_client(proxied, config)
        .await
        .expect("a manager starts on FerretDB 2");
    assert_eq!(proxy.rewritten(), 1);
    let grant = locks.send(Lock::new("r")).await.unwrap().unwrap();
    assert_eq!(grant.fence, 1);
}

/// The test servers' answers carry the marks the judgement reads, and no FerretDB field:
/// nx-27017 answers a `serverStatus`-like document with `process: "nx_27017"`, SecantusDB
/// MongoDB's fields and a `secantusVersion`.
#[actix_rt::test]
async fn the_test_servers_answer_build_info_as_the_unit_tests_assume() {
    let answer = client()
        .await
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await
        .expect("buildInfo");
    assert!(
        !answer.contains_key("ferretdbVersion") && !answer.contains_key("ferretdb"),
        "{answer:?}"
    );
    assert!(
        matches!(answer.get("version"), Some(Bson::String(_))),
        "{answer:?}"
    );
    match std::env::var("MONGO_SERVER").as_deref() {
        Ok("nx") => {
            assert_eq!(answer.get_str("process"), Ok("nx_27017"), "{answer:?}");
            assert_eq!(answer.get_str("version"), Ok("7.0.0"), "{answer:?}");
            assert!(!answer.contains_key("gitVersion"), "{answer:?}");
        }
        Ok("secantus") => {
            assert_eq!(
                answer.get_str("secantusVersion"),
                Ok("0.7.0b3"),
                "{answer:?}"
            );
            assert_eq!(answer.get_str("version"), Ok("8.2.11"), "{answer:?}");
            assert!(answer.contains_key("gitVersion"), "{answer:?}");
        }
        _ => {
            // A real MongoDB names neither.
            assert!(!answer.contains_key("secantusVersion"), "{answer:?}");
            assert!(answer.contains_key("gitVersion"), "{answer:?}");
        }
    }
    // And a manager starts on it.
    support::server::manager(&fast_config("trusted")).await;
}
