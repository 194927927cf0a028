//! The server the tests talk to: the one in `MONGODB_URI` (set by `scripts/with-mongo`, or by
//! hand for a real MongoDB). There is no fallback: without it every test fails, loudly.

use std::time::{Duration, SystemTime};

use actix::{Addr, MailboxError};
use actix_mongo_lock::{LockConfig, LockError, LockGrant, LockManager, Unlock, UnlockOutcome};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};

/// `MONGODB_URI`, or a panic that says how to run the tests.
pub fn uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| {
        panic!("MONGODB_URI is not set: run the tests as `scripts/with-mongo cargo test`")
    })
}

/// A driver client for `uri` that gives up on an unreachable server within 5 s.
pub async fn client_for(uri: &str) -> Client {
    let mut options = ClientOptions::parse(uri)
        .await
        .unwrap_or_else(|e| panic!("MONGODB_URI {uri:?} does not parse: {e}"));
    options.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).expect("client options are valid")
}

/// A client for the test server.
pub async fn client() -> Client {
    client_for(&uri()).await
}

/// A lock family no other test uses, so tests can run in parallel on one server.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "t_{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A configuration with short periods, for a fresh lock family.
pub fn fast_config(prefix: &str) -> LockConfig {
    LockConfig::new(unique_name(prefix))
        .database("actix_mongo_lock_tests")
        .ttl(Duration::from_secs(10))
        .acquire_retries(Duration::from_millis(50), 10)
        .unlock_retries(Duration::from_millis(5), 3)
}

/// Starts a manager on the test server; panics if the server cannot be reached.
pub async fn manager(config: &LockConfig) -> Addr<LockManager> {
    LockManager::with_client(client().await, config.clone())
        .await
        .unwrap_or_else(|e| panic!("cannot start a lock manager on {}: {e}", uri()))
}

/// The raw lock collection of `config`, to check what the manager wrote.
pub async fn collection(config: &LockConfig) -> Collection<Document> {
    client()
        .await
        .database(&config.database)
        .collection(&config.collection_name())
}

/// The stored document of `resource_id`, if any.
pub async fn stored(config: &LockConfig, resource_id: &str) -> Option<Document> {
    collection(config)
        .await
        .find_one(doc! { "resource": format!("{}-{resource_id}", config.name) })
        .await
        .expect("find the lock document")
}

/// A stored document's `fence`, widened to i64 (nx-27017 answers Int32); panics if it is
/// missing or not an integer.
pub fn stored_fence(document: &Document) -> i64 {
    stored_integer(document, "fence")
}

/// A stored integer field, widened to i64 (nx-27017 answers Int32 where MongoDB keeps Int64);
/// panics if it is missing or not an integer.
pub fn stored_integer(document: &Document, key: &str) -> i64 {
    match document.get(key) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        other => panic!("{key} is {other:?}"),
    }
}

/// The shared holds of a stored document: their lock ids, sorted, and `shared.count`.
pub fn stored_shared(document: &Document) -> (Vec<String>, i64) {
    let shared = document
        .get_document("shared")
        .expect("a shared sub-document");
    let mut ids: Vec<String> = shared
        .get_array("locks")
        .map(|locks| {
            locks
                .iter()
                .filter_map(|entry| entry.as_document()?.get_str("lockId").ok())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    (ids, stored_integer(shared, "count"))
}

/// Sends `unlock` and answers its outcome; panics if the manager or the request failed.
pub async fn unlocked(locks: &Addr<LockManager>, unlock: Unlock) -> UnlockOutcome {
    locks
        .send(unlock)
        .await
        .expect("the manager answers")
        .expect("the Unlock succeeds")
}

/// The live hold of a resource as the server stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHold {
    pub lock_id: String,
    pub fence: i64,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
}

impl StoredHold {
    /// The lock id and the fence, the two a test usually compares.
    pub fn id_and_fence(self) -> (String, i64) {
        (self.lock_id, self.fence)
    }
}

/// The hold stored for `resource_id`, read directly from the server (not through any proxy),
/// or `None` when the resource is free.
pub async fn stored_hold(config: &LockConfig, resource_id: &str) -> Option<StoredHold> {
    let document = stored(config, resource_id).await?;
    let exclusive = document.get_document("exclusive").ok()?;
    if exclusive.get("acquired") != Some(&Bson::Boolean(true)) {
        return None;
    }
    Some(StoredHold {
        lock_id: exclusive.get_str("lockId").ok()?.to_owned(),
        fence: stored_fence(&document),
        created_at: exclusive.get_datetime("createdAt").ok()?.to_system_time(),
        expires_at: exclusive.get_datetime("expiresAt").ok()?.to_system_time(),
    })
}

/// Every document of `config`'s collection, in a stable order, to compare snapshots.
pub async fn snapshot(config: &LockConfig) -> Vec<Document> {
    use futures::TryStreamExt;
    collection(config)
        .await
        .find(doc! {})
        .sort(doc! { "resource": 1 })
        .await
        .expect("read the lock collection")
        .try_collect()
        .await
        .expect("read the lock collection")
}

/// One caller taking turns on `resource` until `deadline`: Acquire, then [`hold_and_unlock`]
/// as `name`.
pub async fn take_turns(
    name: String,
    locks: Addr<LockManager>,
    history: super::history::History,
    resource: &'static str,
    lease: Duration,
    hold: Duration,
    deadline: std::time::Instant,
) {
    use actix_mongo_lock::Acquire;
    while std::time::Instant::now() < deadline {
        let requested = SystemTime::now();
        let Ok(grant) = locks.send(Acquire::new(resource)).await.unwrap() else {
            continue;
        };
        let unlocked = hold_and_unlock(&name, &locks, &history, grant, requested, lease, hold);
        if let Err(e) = unlocked.await.unwrap() {
            panic!("{name}'s Unlock failed: {e}");
        }
    }
}

/// Records `grant` (asked for at `requested`) in `history` as `name`'s, holds it for `hold`,
/// then Unlocks it and records the release; an Unlock that released nothing, could not be
/// confirmed or failed counts as the moment the holder stopped relying on the hold. Answers
/// what the Unlock answered.
pub async fn hold_and_unlock(
    name: &str,
    locks: &Addr<LockManager>,
    history: &super::history::History,
    grant: LockGrant,
    requested: SystemTime,
    lease: Duration,
    hold: Duration,
) -> Result<Result<UnlockOutcome, LockError>, MailboxError> {
    let id = history.granted(
        name,
        grant.resource_id.as_str(),
        grant.fence,
        requested,
        SystemTime::now(),
        requested + lease,
    );
    actix_rt::time::sleep(hold).await;
    let sent = SystemTime::now();
    let unlocked = locks.send(Unlock::new(grant.lock_id)).await;
    match unlocked {
        Ok(Ok(UnlockOutcome::Released)) => history.released(id, sent, SystemTime::now()),
        _ => history.lost(id, sent),
    }
    unlocked
}
