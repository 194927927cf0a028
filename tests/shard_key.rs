//! On a collection sharded on `resource`, MongoDB before 7.1 refuses a single-document write
//! (`findAndModify`, `update` of one document) whose filter lacks the shard key. So every such
//! write the manager sends names its resource: grants, releases, renewals (by `Renew` and by
//! keep-alive), and the line's requests; for a lock id granted by another manager (an `Unlock` or
//! `Renew` of a lock id handed over), the manager first reads the hold by its lock id (a `find`,
//! which a sharded cluster answers from every shard) and then writes with its resource. Only the
//! purge, an update of many documents, goes without it, as sharded clusters allow. Every command
//! the manager sends is read through the driver's command monitoring.
//!
//! ```sh
//! scripts/with-mongo cargo test --test shard_key
//! ```

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_mongo_lock::{KeepAlive, Lock, LockManager, Renew, Unlock, UnlockOutcome};
use mongodb::bson::Document;
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use support::server::{fast_config, manager, uri};

/// Every single-document write the client sent to `collection`: its name and its filter.
fn single_writes(sent: &[(String, Document)], collection: &str) -> Vec<(String, Document)> {
    let mut writes = Vec::new();
    for (name, body) in sent {
        match name.as_str() {
            "findAndModify" if body.get_str("findAndModify") == Ok(collection) => {
                let query = body.get_document("query").cloned().unwrap_or_default();
                writes.push((name.clone(), query));
            }
            "update" if body.get_str("update") == Ok(collection) => {
                for update in body.get_array("updates").into_iter().flatten() {
                    let Some(update) = update.as_document() else {
                        continue;
                    };
                    if update.get_bool("multi") != Ok(true) {
                        let filter = update.get_document("q").cloned().unwrap_or_default();
                        writes.push((name.clone(), filter));
                    }
                }
            }
            _ => {}
        }
    }
    writes
}

#[actix_rt::test]
async fn every_single_document_write_names_its_resource_foreign_lock_ids_included() {
    let sent: Arc<Mutex<Vec<(String, Document)>>> = Arc::default();
    let log = Arc::clone(&sent);
    let mut options = ClientOptions::parse(uri())
        .await
        .expect("MONGODB_URI parses");
    options.command_event_handler = Some(EventHandler::callback(move |event| {
        if let CommandEvent::Started(started) = event {
            log.lock()
                .unwrap()
                .push((started.command_name, started.command));
        }
    }));
    // A 3 s lease (nx-27017 compares dates by the whole second, so a renewal in a lease's last
    // second may be refused): keep-alive renews every second.
    let config = fast_config("shard_key").ttl(Duration::from_secs(3));
    let locks = LockManager::with_client(
        mongodb::Client::with_options(options).expect("client options are valid"),
        config.clone(),
    )
    .await
    .expect("start the monitored manager");
    let other = manager(&config).await;

    let kept = locks
        .send(Lock::new("here").keep_alive(KeepAlive::silent()))
        .await
        .unwrap()
        .unwrap();
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    locks
        .send(Renew::new(kept.lock_id.clone()))
        .await
        .unwrap()
        .unwrap();
    let foreign = other.send(Lock::new("elsewhere")).await.unwrap().unwrap();
    locks
        .send(Renew::new(foreign.lock_id.clone()))
        .await
        .unwrap()
        .expect("a foreign lock id is renewed");
    assert_eq!(
        locks
            .send(Unlock::new(foreign.lock_id.clone()))
            .await
            .unwrap()
            .unwrap(),
        UnlockOutcome::Released
    );
    assert_eq!(
        locks
            .send(Unlock::new(kept.lock_id.clone()))
            .await
            .unwrap()
            .unwrap(),
        UnlockOutcome::Released
    );

    let writes = single_writes(&sent.lock().unwrap(), &config.collection_name());
    let renewals = writes
        .iter()
        .filter(|(_, filter)| filter.contains_key("exclusive.expiresAt"))
        .count();
    assert!(
        renewals >= 3,
        "a keep-alive renewal, a Renew and a foreign Renew: {writes:?}"
    );
    assert!(writes.len() >= 6, "too few writes to judge: {writes:?}");
    for (name, filter) in &writes {
        assert!(
            filter.contains_key("resource"),
            "a {name} without its resource: {filter}"
        );
    }
}
