//! `MongoStore`: the lock schema and every database call. The only code that speaks BSON.
//!
//! One document per resource in square/mongo-lock's schema, so Go services using dplock and Rust
//! services using this crate can contend for the same resource:
//!
//! ```text
//! { resource: "<name>-<resource_id>",                 // unique index
//!   exclusive: { lockId, owner, host, comment, createdAt, renewedAt, expiresAt, acquired,
//!                fenced },                               // fenced: ours, see store/revoke.rs
//!   shared:    { count, locks: [...], maxHolders },   // square/mongo-lock's SLock holds
//!                                                      //   (store/shared.rs), + our limit
//!   fence:     <int64, +1 on every grant>,            // ours; Go clients ignore it
//!   rev:       <int64, +1 on every shared write>,     // ours (store/shared.rs)
//!   turn:      { manager, until, next },              // ours: the line of waiting managers
//!   line:      [manager, ...],                        //   (crate::line); Go clients ignore them
//!   revoked:   { fence, reason, at } }                //   ours: the last revocation
//! ```
//!
//! Documents are never deleted (but for a duplicate a grant just inserted, see `sole_document`):
//! a release or purge rewrites `exclusive` to its released form, so `fence` survives and keeps
//! increasing. Every write replaces `exclusive` whole rather than
//! setting dotted paths; see docs/compatibility.md for why that form is correct on MongoDB and on
//! the embedded test server alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::options::{CollectionOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, IndexModel};

use crate::config::LockConfig;
use crate::error::{server_code, DriverResult, LockError};
use crate::line::{
    successor, turn_until, LineEvent, LineView, Successor, Turn, TurnAfter, TURN_GRACE, TURN_LIFE,
};
use crate::messages::{HoldStatus, LineStatus, LockGrant, LockId, ResourceId};

mod revoke;
mod shared;
pub(crate) use shared::{HoldKind, SharedGrant};

/// How long the server holds the release stream's `getMore` open when it has nothing to say
/// (MongoDB's default is 1 s): an idle stream costs one request per this, not one a second. A
/// release answers the waiting `getMore` at once, whatever this is.
const RELEASE_STREAM_AWAIT: Duration = Duration::from_secs(5);

/// MongoDB's duplicate-key error code. Recognised by code, never by message.
const DUPLICATE_KEY: i32 = 11000;

/// The codes of a server that cannot open a change stream at all: 40573 ("only supported on
/// replica sets"), 40324 (unknown `$changeStream` stage), 115 (command not supported), 59
/// (command not found). Recognised by code, never by message.
const NO_CHANGE_STREAMS: [i32; 4] = [40573, 40324, 115, 59];

/// The lock collection of one lock family.
#[derive(Clone, Debug)]
pub struct MongoStore {
    client: Client,
    collection: Collection<Document>,
    prefix: String,
    owner: String,
    host: String,
    request_timeout: Duration,
    /// The documents this store last wrote shared holds into (`shared`).
    seen: shared::SeenDocuments,
    /// Whether the server finds a date inside an array's elements by equality (nx-27017 does
    /// not: docs/compatibility.md, deviation 14); a shared write pins Go clients' lease ends
    /// only where it does.
    finds_dates_in_arrays: Arc<AtomicBool>,
}

/// The lock indexes, by key, and whether each is unique: three of square/mongo-lock's five.
/// Its other two, on `shared.locks.lockId` and `shared.locks.expiresAt`, would serve the
/// look-up of a shared hold by its lock id, but nx-27017 (the embedded test server) loses
/// matches through an index on an array's fields once the array is rewritten
/// (`docs/compatibility.md`, deviation 12), so they are not created; such a look-up scans.
const LOCK_INDEXES: [(&str, bool); 3] = [
    ("resource", true),
    ("exclusive.lockId", false),
    ("exclusive.expiresAt", false),
];

impl MongoStore {
    /// The store of `config`'s lock family on `client`. Makes no request. Every write to the
    /// collection carries `config.write_concern` (`None`: the client's).
    pub fn new(client: Client, config: &LockConfig) -> Self {
        let options = CollectionOptions::builder()
            .write_concern(config.write_concern.clone())
            .build();
        let collection = client
            .database(&config.database)
            .collection_with_options(&config.collection_name(), options);
        MongoStore {
            client,
            collection,
            prefix: format!("{}-", config.name),
            owner: config.owner.clone(),
            host: config.host.clone(),
            request_timeout: config.request_timeout,
            seen: shared::SeenDocuments::default(),
            finds_dates_in_arrays: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Takes in what the server is (its `buildInfo` answer), for the forms it gets wrong.
    pub(crate) fn know_server(&self, build_info: &Document) {
        let nx = build_info.get_str("process") == Ok("nx_27017");
        self.finds_dates_in_arrays.store(!nx, Ordering::Relaxed);
    }

    /// The lock family's name (metrics label by it): the stored names' prefix without its `-`.
    pub(crate) fn family(&self) -> &str {
        self.prefix.strip_suffix('-').unwrap_or(&self.prefix)
    }

    /// The collection's name.
    pub fn collection_name(&self) -> &str {
        self.collection.name()
    }

    /// Runs one request, answering [`LockError::Unavailable`] if the database has not answered
    /// within `request_timeout`: the driver would wait out its server selection timeout (30 s by
    /// default) for a server that is gone, and a black-holed connection longer still. Dropping
    /// the request's future makes the driver close its connection.
    async fn bounded<T>(
        &self,
        request: &'static str,
        work: impl std::future::Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        self.bounded_within(self.request_timeout, request, work)
            .await
    }

    /// [`bounded`](Self::bounded) by `limit` too: a grant or renewal of a lease of `limit` that
    /// is answered later than that is useless (its lease ended on the way).
    async fn bounded_within<T>(
        &self,
        limit: Duration,
        request: &'static str,
        work: impl std::future::Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        crate::metrics::request(self.family(), request);
        let limit = limit.min(self.request_timeout);
        match tokio::time::timeout(limit, work).await {
            Ok(answer) => answer,
            Err(_) => Err(LockError::Unavailable {
                waited: limit,
                last_error: format!("{request}: no answer from the database within {limit:?}"),
            }),
        }
    }

    /// Creates the lock indexes ([`LOCK_INDEXES`]): the unique `resource`, `exclusive.lockId`
    /// and `exclusive.expiresAt` (a no-op when they exist). One `createIndexes` for all three;
    /// if one of them exists with other options (code 85 or 86: dplock creates `resource`
    /// unique and sparse), that command creates none, and they are created one by one, an
    /// existing index on the key standing for ours.
    pub async fn ensure_indexes(&self) -> Result<(), LockError> {
        self.bounded("ensure_indexes", async {
            let model = |key: &str, unique: bool| {
                IndexModel::builder()
                    .keys(doc! { key: 1 })
                    .options(IndexOptions::builder().unique(unique).build())
                    .build()
            };
            let all = LOCK_INDEXES.map(|(key, unique)| model(key, unique));
            match self.collection.create_indexes(all).await {
                Ok(_) => return Ok(()),
                Err(e) if matches!(server_code(&e), Some(85 | 86)) => {}
                Err(e) => return Err(LockError::database(e)),
            }
            for (key, unique) in LOCK_INDEXES {
                match self.collection.create_index(model(key, unique)).await {
                    Ok(_) => {}
                    Err(e) if matches!(server_code(&e), Some(85 | 86)) => {
                        self.accept_existing_index(key, unique, e).await?
                    }
                    Err(e) => return Err(LockError::database(e)),
                }
            }
            Ok(())
        })
        .await
    }

    /// An index on `key` exists with other options than ours (`conflict`, code 85 or 86):
    /// dplock (square/mongo-lock) creates `resource_1` unique and sparse. Any index on the key
    /// serves; for `resource` it must be unique, since uniqueness is what keeps one document per
    /// resource (every lock document has a `resource`, so sparse changes nothing).
    async fn accept_existing_index(
        &self,
        key: &str,
        unique: bool,
        conflict: mongodb::error::Error,
    ) -> Result<(), LockError> {
        use futures::TryStreamExt;
        let existing: Vec<IndexModel> = self
            .collection
            .list_indexes()
            .await
            .db()?
            .try_collect()
            .await
            .db()?;
        let serves = existing.iter().any(|index| {
            index.keys == doc! { key: 1 }
                && (!unique
                    || index
                        .options
                        .as_ref()
                        .and_then(|o| o.unique)
                        .unwrap_or(false))
        });
        if serves {
            tracing::debug!(
                key,
                "an index on the key exists with other options; using it"
            );
            Ok(())
        } else {
            Err(LockError::database(conflict))
        }
    }

    /// The server's clock (`hello`'s `localTime`). One round trip.
    pub async fn server_time(&self) -> Result<SystemTime, LockError> {
        self.bounded("server_time", async {
            let reply = self
                .client
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await
                .db()?;
            match reply.get("localTime") {
                Some(Bson::DateTime(t)) => Ok(t.to_system_time()),
                _ => Err(LockError::CorruptDocument {
                    reason: "hello answered without a localTime date".to_owned(),
                }),
            }
        })
        .await
    }

    /// The server's `buildInfo` answer, which names the server (see `crate::server::judge`).
    /// One round trip.
    pub(crate) async fn build_info(&self) -> Result<Document, LockError> {
        self.bounded("buildInfo", async {
            self.client
                .database("admin")
                .run_command(doc! { "buildInfo": 1 })
                .await
                .db()
        })
        .await
    }

    /// One atomic grant: takes `resource` if it is free, its lease expired, or it is already
    /// held under `lock_id` (a retry whose first reply was lost). `Ok(None)` means someone else
    /// holds a live lease. One `findOneAndUpdate`, one round trip.
    ///
    /// The grant also keeps the line of waiting managers ([`LineView`]): it is refused while
    /// another manager's turn is live (unless it is a retry of this grant), takes `manager` out
    /// of the line, and either hands the turn on ([`TurnAfter::Pass`]: the turn then lasts until
    /// the lease ends, plus [`TURN_LIFE`]) or lets the granted manager keep it for its own next
    /// waiter ([`TurnAfter::Keep`]). The answer carries the line as the grant left it. A grant's
    /// change event wakes nobody (`watch_releases` lets no grant through): the manager given
    /// the turn learns of it at its next look.
    pub(crate) async fn grant(
        &self,
        resource: &ResourceId,
        lock_id: &LockId,
        now: SystemTime,
        ttl: Duration,
        manager: &str,
        then: &TurnAfter,
    ) -> Result<Option<(LockGrant, LineView)>, LockError> {
        self.bounded_within(ttl, "grant", async {
            let now_bson = DateTime::from_system_time(now);
            // Millisecond precision is all BSON dates keep; the grant reports what is stored.
            let granted_at = now_bson.to_system_time();
            let expires_at = DateTime::from_system_time(now + ttl).to_system_time();
            // `resource` stays top-level so an upsert writes it into a new document; the `$or`
            // sits inside `$and` because the embedded test server drops the conditions beside a
            // bare `$or`. "Expired" is a strict `$lt`: exact on MongoDB, and never early on a
            // server that compares dates by whole seconds (docs/compatibility.md).
            let filter = doc! {
                "resource": self.stored_name(resource),
                "shared.count": 0,
                "$and": [
                    { "$or": [
                        { "exclusive.acquired": false },
                        { "exclusive.expiresAt": { "$lt": now_bson } },
                        { "exclusive.lockId": lock_id.as_str() },
                    ] },
                    { "$or": [
                        { "turn": { "$exists": false } },
                        { "turn.until": { "$lt": millis(now) } },
                        { "turn.manager": manager },
                        { "exclusive.lockId": lock_id.as_str() },
                    ] },
                ],
            };
            let (next_turn, pass_to) = match then {
                TurnAfter::Pass { to: Some(to), next } => (
                    turn(to, turn_until(now, Some(expires_at)), next.as_deref()),
                    Some(to.as_str()),
                ),
                TurnAfter::Pass { to: None, .. } => (nobodys_turn_written(), None),
                TurnAfter::Keep { next } => (
                    turn(manager, expires_at + TURN_GRACE, next.as_deref()),
                    None,
                ),
            };
            let mut update = doc! {
                "$set": {
                    "exclusive": self.held(lock_id, granted_at, None, expires_at),
                    "shared": { "count": 0, "locks": [] },
                    "turn": next_turn,
                },
                "$inc": { "fence": 1_i64 },
                "$pullAll": { "line": leaving(manager, pass_to) },
            };
            if !matches!(then, TurnAfter::Keep { .. }) {
                // Its place ends with this grant (one it keeps the turn through goes on).
                update.insert("$unset", doc! { since_path(manager): "" });
            }
            let result = self
                .collection
                .find_one_and_update(filter, update)
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            let stored = match result {
                Ok(Some(stored)) => stored,
                // Real MongoDB answers a held resource with the upsert's duplicate key; the embedded
                // test server answers with no document. Both mean "held by someone else".
                Ok(None) => return Ok(None),
                Err(e) if server_code(&e) == Some(DUPLICATE_KEY) => return Ok(None),
                Err(e) => return Err(LockError::database(e)),
            };
            let fence = read_fence(&stored)?;
            if fence == 1 && !self.sole_document(resource, lock_id, &stored).await? {
                return Ok(None);
            }
            let grant = LockGrant {
                lock_id: lock_id.clone(),
                resource_id: resource.clone(),
                fence,
                granted_at,
                expires_at,
                shared: false,
            };
            Ok(Some((grant, line_view(&stored, now)?)))
        })
        .await
    }

    /// Puts `turn.manager` in `resource`'s line of waiting managers: it takes the turn, written
    /// as `turn`, if the turn is nobody's (or renews it so when `renew` and it still has it),
    /// else it goes to the end of the line, unless it is in line already. Answers the line and
    /// the hold as they stand, or `None` if the resource has no document (then it is free). One
    /// `findOneAndUpdate` when it takes or renews the turn; two when it joins the line, or three
    /// the first time a resource has a line, since nx-27017 cannot `$addToSet` to a missing
    /// array. Taking a place records when ([`place_taken`]).
    pub(crate) async fn join_line(
        &self,
        resource: &ResourceId,
        turn: &Turn,
        renew: bool,
        now: SystemTime,
    ) -> Result<Option<LineView>, LockError> {
        self.bounded("join_line", async {
            let name = self.stored_name(resource);
            let manager = turn.manager.as_str();
            if renew {
                let renewed = self
                    .collection
                    .find_one_and_update(
                        doc! { "resource": &name, "turn.manager": manager },
                        doc! { "$set": { "turn": turn_written(turn) } },
                    )
                    .return_document(ReturnDocument::After)
                    .await
                    .db()?;
                if let Some(stored) = renewed {
                    return Ok(Some(line_view(&stored, now)?));
                }
            }
            // On nx-27017, while the resource has no line, the `$min` beside the `$pull` writes a
            // literal top-level `"since.<id>"` (docs/compatibility.md, deviation 13); the grant's
            // and the leave's `$unset` beside their pulls remove it alike, and `line_status`
            // reads it.
            let took = self
                .collection
                .find_one_and_update(
                    doc! { "resource": &name, "$and": [nobodys_turn(now)] },
                    doc! {
                        "$set": { "turn": turn_written(turn) },
                        "$pull": { "line": manager },
                        "$min": place_taken(manager, now),
                    },
                )
                .return_document(ReturnDocument::After)
                .await
                .db()?;
            if let Some(stored) = took {
                return Ok(Some(line_view(&stored, now)?));
            }
            self.append_to_line(&name, manager, now).await
        })
        .await
    }

    /// Puts `manager` at the end of `resource`'s line, unless it is in line already; never
    /// gives it the turn. Answers the line as it then stands (`None`: no document). One
    /// `findOneAndUpdate`, two the first time a resource has a line.
    pub(crate) async fn line_up(
        &self,
        resource: &ResourceId,
        manager: &str,
        now: SystemTime,
    ) -> Result<Option<LineView>, LockError> {
        self.bounded("line_up", async {
            self.append_to_line(&self.stored_name(resource), manager, now)
                .await
        })
        .await
    }

    /// `$addToSet` to the line, guarded by `line: {$exists: true}` (nx-27017 cannot add to a
    /// missing array), or `$set` a line of one the first time.
    async fn append_to_line(
        &self,
        name: &str,
        manager: &str,
        now: SystemTime,
    ) -> Result<Option<LineView>, LockError> {
        let mut joined = self
            .collection
            .find_one_and_update(
                doc! { "resource": name, "line": { "$exists": true } },
                doc! {
                    "$addToSet": { "line": manager },
                    "$min": place_taken(manager, now),
                },
            )
            .return_document(ReturnDocument::After)
            .await
            .db()?;
        if joined.is_none() {
            joined = self
                .collection
                .find_one_and_update(
                    doc! { "resource": name, "line": { "$exists": false } },
                    doc! {
                        "$set": { "line": [manager] },
                        "$min": place_taken(manager, now),
                    },
                )
                .return_document(ReturnDocument::After)
                .await
                .db()?;
        }
        read_found(joined, now)
    }

    /// Reads `resource`'s line and hold as they stand, writing nothing (`None`: the resource
    /// has no document, so it is free). One `find`: the look of a manager whose place is known
    /// and whose turn, if it has it, needs no renewing yet.
    pub(crate) async fn read_line(
        &self,
        resource: &ResourceId,
        now: SystemTime,
    ) -> Result<Option<LineView>, LockError> {
        self.bounded("read_line", async {
            let stored = self
                .collection
                .find_one(doc! { "resource": self.stored_name(resource) })
                .projection(doc! { "exclusive": 1, "shared": 1, "turn": 1, "line": 1, "fence": 1 })
                .await
                .db()?;
            read_found(stored, now)
        })
        .await
    }

    /// Gives the turn, written as `turn`, to `turn.manager` (taking it out of the line), if
    /// nobody's turn is live. Answers the line as it then stands, or `None` if someone's turn
    /// was live after all.
    pub(crate) async fn pass_turn(
        &self,
        resource: &ResourceId,
        turn: &Turn,
        now: SystemTime,
    ) -> Result<Option<LineView>, LockError> {
        self.bounded("pass_turn", async {
            let passed = self
                .collection
                .find_one_and_update(
                    doc! { "resource": self.stored_name(resource), "$and": [nobodys_turn(now)] },
                    doc! {
                        "$set": { "turn": turn_written(turn) },
                        "$pull": { "line": &turn.manager },
                    },
                )
                .return_document(ReturnDocument::After)
                .await
                .db()?;
            read_found(passed, now)
        })
        .await
    }

    /// Takes `manager` out of `resource`'s line; if it has the turn, the turn goes to
    /// `pass_to` (written as that `Turn`), or to nobody.
    pub(crate) async fn leave_line(
        &self,
        resource: &ResourceId,
        manager: &str,
        pass_to: Option<&Turn>,
    ) -> Result<(), LockError> {
        self.bounded("leave_line", async {
            let name = self.stored_name(resource);
            let next_turn = pass_to.map_or_else(nobodys_turn_written, turn_written);
            let passed = self
                .collection
                .update_one(
                    doc! { "resource": &name, "turn.manager": manager },
                    doc! {
                        "$set": { "turn": next_turn },
                        "$pullAll": {
                            "line": leaving(manager, pass_to.map(|turn| turn.manager.as_str())),
                        },
                        "$unset": { since_path(manager): "" },
                    },
                )
                .await
                .db()?;
            if passed.matched_count == 0 {
                self.collection
                    .update_one(
                        doc! { "resource": &name },
                        doc! {
                            "$pull": { "line": manager },
                            "$unset": { since_path(manager): "" },
                        },
                    )
                    .await
                    .db()?;
            }
            Ok(())
        })
        .await
    }

    /// After a grant (exclusive or shared) that created its resource's document (fence 1):
    /// whether that document is the only one for the resource. Only the unique `resource` index makes it so, and that
    /// index is gone if the collection was dropped or restored under running managers; then a
    /// second upsert inserts a second document instead of failing. If so, the new document is
    /// removed again (it never held anything anyone relied on), the grant is refused, and the
    /// indexes are created anew. One extra read, once per resource.
    async fn sole_document(
        &self,
        resource: &ResourceId,
        lock_id: &LockId,
        stored: &Document,
    ) -> Result<bool, LockError> {
        let id = stored.get("_id").cloned().unwrap_or(Bson::Null);
        let other = self
            .collection
            .find_one(doc! { "resource": self.stored_name(resource), "_id": { "$ne": &id } })
            .projection(doc! { "_id": 1 })
            .await
            .db()?;
        if other.is_none() {
            return Ok(true);
        }
        tracing::warn!("lock document duplicated (unique index missing?); refusing");
        self.collection
            .delete_one(doc! { "_id": id, "$and": [{ "$or": [
                { "exclusive.lockId": lock_id.as_str() },
                { "shared.locks.lockId": lock_id.as_str() },
            ] }] })
            .await
            .db()?;
        if let Err(e) = self.ensure_indexes().await {
            tracing::warn!(error = %e, "could not recreate the lock indexes");
        }
        Ok(false)
    }

    /// Releases the hold with exactly `lock_id`; `true` if there was one. The release names
    /// whom it wakes: it writes the resource's turn whole ([`Successor`]), on the condition
    /// that the line still stands as guessed, so its change event reaches exactly the holder of
    /// the turn (and the turn's `next`), and no other manager's stream. `known` is the resource
    /// and its line as last seen here (a hold granted here); then one `updateOne`, the resource
    /// in its filter. Otherwise, or when the line moved since, the document is read first (a
    /// `find` by lock id) and the release tried again on what it shows, up to
    /// [`RELEASE_ROUNDS`] times; a line that keeps moving all along is released plainly,
    /// naming nobody, which every waiting manager's stream then sees.
    pub(crate) async fn release(
        &self,
        lock_id: &LockId,
        known: Option<(&ResourceId, &LineView)>,
        now: SystemTime,
    ) -> Result<bool, LockError> {
        self.bounded("release", async {
            let mut guess = known.map(|(resource, view)| (self.stored_name(resource), successor(view, now)));
            let mut name = None;
            for _ in 0..RELEASE_ROUNDS {
                let (resource, wakes) = match guess.take() {
                    Some(guess) => guess,
                    None => {
                        let Some(stored) = self
                            .collection
                            .find_one(doc! { "exclusive.lockId": lock_id.as_str() })
                            .projection(doc! { "resource": 1, "exclusive": 1, "shared": 1, "turn": 1, "line": 1 })
                            .await.db()?
                        else {
                            return Ok(false);
                        };
                        let resource = stored.get_str("resource").map_err(corrupt)?.to_owned();
                        (resource, successor(&line_view(&stored, now)?, now))
                    }
                };
                let (condition, update) = release_naming(&wakes, now);
                let released = self
                    .collection
                    .update_one(
                        doc! {
                            "resource": &resource,
                            "exclusive.lockId": lock_id.as_str(),
                            "$and": [condition],
                        },
                        update,
                    )
                    .await.db()?;
                if released.matched_count > 0 {
                    return Ok(true);
                }
                name = Some(resource);
            }
            tracing::debug!("the line kept moving; releasing without naming the next");
            let mut filter = doc! { "exclusive.lockId": lock_id.as_str() };
            if let Some(resource) = name {
                filter.insert("resource", resource);
            }
            let released = self
                .collection
                .update_one(filter, doc! { "$set": { "exclusive": released() } })
                .await.db()?;
            Ok(released.matched_count > 0)
        })
        .await
    }

    /// Releases every hold whose lease ended before `now`, exclusive (one `updateMany`) or
    /// shared (a `find` of the documents with shared holds, and a write for each that holds
    /// expired ones); returns how many.
    pub async fn purge_expired(&self, now: SystemTime) -> Result<u64, LockError> {
        self.bounded("purge_expired", async {
            let result = self
                .collection
                .update_many(
                    doc! {
                        "exclusive.acquired": true,
                        "exclusive.expiresAt": { "$lt": DateTime::from_system_time(now) },
                    },
                    doc! { "$set": { "exclusive": released() } },
                )
                .await
                .db()?;
            let shared = self.purge_expired_shared(now).await?;
            Ok(result.modified_count + shared)
        })
        .await
    }

    /// Extends the live hold `lock_id` to `now + ttl`; `Ok(None)` if it is not live. One
    /// `findOneAndUpdate` when the hold's resource and `created_at` (from the grant) are known,
    /// else a read by lock id first, since `exclusive` is always written whole (and the write
    /// names its resource: the shard key of a collection sharded on `resource`). "Live" is a
    /// strict `$gt`, so an expired hold is never revived, and a purge (which needs `$lt`)
    /// cannot clear a hold renewed before it. It also answers the resource's line as the
    /// renewal found it: the holder's release then names whom it wakes from what it saw last,
    /// not at its grant.
    pub(crate) async fn renew(
        &self,
        lock_id: &LockId,
        known: Option<(&ResourceId, SystemTime)>,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Option<(LockGrant, LineView)>, LockError> {
        self.bounded_within(ttl, "renew", async {
            let (name, owner, host, created_at) = match known {
                Some((resource, created_at)) => (
                    self.stored_name(resource),
                    self.owner.clone(),
                    self.host.clone(),
                    created_at,
                ),
                None => {
                    let Some(stored) = self
                        .collection
                        .find_one(doc! { "exclusive.lockId": lock_id.as_str() })
                        .await
                        .db()?
                    else {
                        return Ok(None);
                    };
                    let exclusive = stored.get_document("exclusive").map_err(corrupt)?;
                    (
                        stored.get_str("resource").map_err(corrupt)?.to_owned(),
                        exclusive.get_str("owner").unwrap_or_default().to_owned(),
                        exclusive.get_str("host").unwrap_or_default().to_owned(),
                        read_date(exclusive, "createdAt")?.unwrap_or(now),
                    )
                }
            };
            let renewed_at = DateTime::from_system_time(now).to_system_time();
            let expires_at = DateTime::from_system_time(now + ttl).to_system_time();
            let mut exclusive = self.held(lock_id, created_at, Some(renewed_at), expires_at);
            exclusive.insert("owner", owner);
            exclusive.insert("host", host);
            let renewed = self
                .collection
                .find_one_and_update(
                    doc! {
                        "resource": name,
                        "exclusive.lockId": lock_id.as_str(),
                        "exclusive.acquired": true,
                        "exclusive.expiresAt": { "$gt": DateTime::from_system_time(now) },
                    },
                    doc! { "$set": { "exclusive": exclusive } },
                )
                .return_document(ReturnDocument::After)
                .await
                .db()?;
            let Some(stored) = renewed else {
                return Ok(None);
            };
            let grant = LockGrant {
                lock_id: lock_id.clone(),
                resource_id: self.resource_of(&stored)?,
                fence: read_fence(&stored)?,
                granted_at: created_at,
                expires_at,
                shared: false,
            };
            Ok(Some((grant, line_view(&stored, now)?)))
        })
        .await
    }

    /// The hold on `resource`, if it is held (live or not yet purged).
    pub async fn status(
        &self,
        resource: &ResourceId,
        now: SystemTime,
    ) -> Result<Option<HoldStatus>, LockError> {
        self.bounded("status", async {
            let stored = self
                .collection
                .find_one(doc! { "resource": self.stored_name(resource) })
                .await
                .db()?;
            let Some(stored) = stored else {
                return Ok(None);
            };
            if let Some(exclusive) = self.hold_status(&stored, now)? {
                return Ok(Some(exclusive));
            }
            // The shared hold whose lease ends last (a live one before any expired one).
            Ok(self
                .shared_statuses(&stored, now)?
                .into_iter()
                .max_by_key(|status| (status.live, status.expires_at.is_none(), status.expires_at)))
        })
        .await
    }

    /// Every hold in the collection, exclusive and shared, ordered by resource.
    pub async fn list_holds(&self, now: SystemTime) -> Result<Vec<HoldStatus>, LockError> {
        self.bounded("list_holds", async {
            use futures::TryStreamExt;
            let stored: Vec<Document> = self
                .collection
                .find(doc! { "$and": [{ "$or": [
                    { "exclusive.acquired": true },
                    { "shared.count": { "$gt": 0 } },
                ] }] })
                .sort(doc! { "resource": 1 })
                .await
                .db()?
                .try_collect()
                .await
                .db()?;
            let mut holds = Vec::with_capacity(stored.len());
            for document in &stored {
                holds.extend(self.hold_status(document, now)?);
                holds.extend(self.shared_statuses(document, now)?);
            }
            Ok(holds)
        })
        .await
    }

    fn hold_status(
        &self,
        stored: &Document,
        now: SystemTime,
    ) -> Result<Option<HoldStatus>, LockError> {
        let exclusive = stored.get_document("exclusive").map_err(corrupt)?;
        if exclusive.get_bool("acquired") != Ok(true) {
            return Ok(None);
        }
        let expires_at = read_date(exclusive, "expiresAt")?;
        Ok(Some(HoldStatus {
            resource_id: self.resource_of(stored)?,
            owner: exclusive.get_str("owner").ok().map(str::to_owned),
            host: exclusive.get_str("host").ok().map(str::to_owned),
            created_at: read_date(exclusive, "createdAt")?,
            renewed_at: read_date(exclusive, "renewedAt")?,
            expires_at,
            fence: read_fence(stored).unwrap_or(0),
            // A hold without an expiry (square/mongo-lock's, taken with no TTL) lives until
            // released.
            live: expires_at.is_none_or(|t| t > now),
            shared: false,
            shared_holders: 0,
            line: line_status(stored, now)?,
            revoked: exclusive.get_str("lockId").is_ok_and(revoke::retired),
        }))
    }

    /// Whether the server can open change streams: a replica-set member (`hello` names a
    /// `setName`) or a sharded cluster's router (`msg: "isdbgrid"`). A standalone server cannot,
    /// and a server that merely accepts the stage without one of these is not trusted to report
    /// updates. One round trip.
    pub(crate) async fn change_streams_supported(&self) -> Result<bool, LockError> {
        let reply = self
            .bounded("hello", async {
                self.client
                    .database("admin")
                    .run_command(doc! { "hello": 1 })
                    .await
                    .db()
            })
            .await?;
        let replica_set =
            matches!(reply.get("setName"), Some(Bson::String(name)) if !name.is_empty());
        let router = reply.get_str("msg") == Ok("isdbgrid");
        Ok(replica_set || router)
    }

    /// Opens a change stream of this collection that the server filters down to what concerns
    /// `manager`'s waits: an update that writes the turn whole without a grant (a release, a
    /// join, a leave, a settle or a renewal by this crate) and names `manager` as the turn's
    /// holder or as its `next`; a release that writes no turn (square/mongo-lock's unlock and
    /// purge, which dplock uses, and this crate's purge); a replace by a released document, a
    /// delete, and the events that end the stream. So a release by this crate reaches the
    /// manager it names, not every waiting manager, and no grant reaches anyone. Without
    /// `updateLookup`: an update or delete names its document by `_id` only
    /// ([`StreamEvent::Document`]), sparing the server a read per event and per stream. An
    /// idle `getMore` waits [`RELEASE_STREAM_AWAIT`]. `resume` continues after an earlier
    /// stream's last event; after an invalidation it must start after it instead.
    pub(crate) async fn watch_releases(
        &self,
        manager: &str,
        resume: Option<ResumeToken>,
        after_invalidation: bool,
    ) -> Result<ReleaseStream, LockError> {
        let no_grant = doc! { "$ne": true };
        let pipeline = [doc! { "$match": { "$or": [
            {
                "operationType": "update",
                "updateDescription.updatedFields.turn.manager": manager,
                "updateDescription.updatedFields.exclusive.acquired": no_grant.clone(),
            },
            {
                "operationType": "update",
                "updateDescription.updatedFields.turn.next": manager,
                "updateDescription.updatedFields.exclusive.acquired": no_grant,
            },
            {
                "operationType": "update",
                "updateDescription.updatedFields.exclusive.acquired": false,
                "updateDescription.updatedFields.turn": { "$exists": false },
            },
            { "operationType": "replace", "fullDocument.exclusive.acquired": { "$ne": true } },
            { "operationType": { "$in": ["delete", "drop", "rename", "dropDatabase", "invalidate"] } },
        ] } }];
        let watch = self
            .collection
            .watch()
            .pipeline(pipeline)
            .max_await_time(RELEASE_STREAM_AWAIT);
        let watch = match (resume, after_invalidation) {
            (Some(token), true) => watch.start_after(token),
            (Some(token), false) => watch.resume_after(token),
            (None, _) => watch,
        };
        let stream = self.bounded("watch", async { watch.await.db() }).await?;
        Ok(ReleaseStream {
            stream,
            prefix: self.prefix.clone(),
        })
    }

    fn resource_of(&self, stored: &Document) -> Result<ResourceId, LockError> {
        let name = stored.get_str("resource").map_err(corrupt)?;
        let id = name
            .strip_prefix(&self.prefix)
            .ok_or_else(|| LockError::CorruptDocument {
                reason: format!("resource {name:?} is not of this lock family"),
            })?;
        ResourceId::new(id)
    }

    fn stored_name(&self, resource: &ResourceId) -> String {
        format!("{}{}", self.prefix, resource.as_str())
    }

    fn held(
        &self,
        lock_id: &LockId,
        created_at: SystemTime,
        renewed_at: Option<SystemTime>,
        expires_at: SystemTime,
    ) -> Document {
        doc! {
            "lockId": lock_id.as_str(),
            "owner": &self.owner,
            "host": &self.host,
            "comment": Bson::Null,
            "createdAt": DateTime::from_system_time(created_at),
            "renewedAt": renewed_at.map_or(Bson::Null, |t| Bson::DateTime(DateTime::from_system_time(t))),
            "expiresAt": DateTime::from_system_time(expires_at),
            "acquired": true,
            // Ours (Go clients ignore it): the document's `fence` is this hold's, which a
            // revocation by fence relies on (store/revoke.rs). A Go hold lacks it.
            "fenced": true,
        }
    }
}

/// The released form of `exclusive`, written whole (square/mongo-lock's shape).
fn released() -> Document {
    doc! {
        "lockId": Bson::Null,
        "owner": Bson::Null,
        "host": Bson::Null,
        "comment": Bson::Null,
        "createdAt": Bson::Null,
        "renewedAt": Bson::Null,
        "expiresAt": Bson::Null,
        "acquired": false,
    }
}

/// How many times a release tries to name whom it wakes before it releases plainly: the
/// line it guessed from moved each time (managers joining, leaving, their turns passed on).
const RELEASE_ROUNDS: usize = 3;

/// `stored`'s line as [`HoldStatus`] shows it.
fn line_status(stored: &Document, now: SystemTime) -> Result<LineStatus, LockError> {
    let view = line_view(stored, now)?;
    let turn = view.live_turn(now).cloned();
    let mut line = LineStatus::default();
    line.turn = turn.as_ref().map(|turn| turn.manager.clone());
    line.turn_until = turn.map(|turn| turn.until);
    line.waiting = view.line;
    let since = stored.get_document("since").ok();
    // The nested time, else the literal top-level name nx-27017 may have written instead.
    line.since = line
        .turn
        .iter()
        .chain(&line.waiting)
        .filter_map(|manager| {
            let at = since
                .and_then(|since| since.get(since_key(manager)))
                .or_else(|| stored.get(since_path(manager)))
                .and_then(as_integer)?;
            Some((manager.clone(), DateTime::from_millis(at).to_system_time()))
        })
        .collect();
    Ok(line)
}

/// A resource's line and hold as `stored` shows them.
///
/// Ours, beside square/mongo-lock's fields (Go clients ignore them): `turn: { manager, until,
/// next }` is the manager whose turn it is to be granted next (`until` in server-clock
/// milliseconds; a lapsed turn, or one whose manager is `""`, is nobody's) and the one told when
/// it ends, and `line: [manager, ...]` the managers waiting after it, in arrival order.
fn line_view(stored: &Document, now: SystemTime) -> Result<LineView, LockError> {
    let exclusive = stored.get_document("exclusive").map_err(corrupt)?;
    let shared = stored
        .get_document("shared")
        .ok()
        .and_then(|shared| shared.get("count"))
        .and_then(as_integer)
        .unwrap_or(0);
    let locks = shared::shared_locks(stored);
    let shared_until = shared::shared_until(&locks, now)?;
    // Shared holds whose leases ended, still counted: an exclusive grant must drop them first.
    let expired_shared =
        shared > 0 && shared::live_entries(&locks, now)?.len() < locks.len().max(1);
    let held_until = if let Some(until) = shared_until.filter(|_| shared > 0) {
        // Shared holders: no exclusive grant until the last of them leaves.
        Some(until)
    } else if expired_shared {
        None
    } else if exclusive.get_bool("acquired") == Ok(true) {
        // A hold without an expiry (square/mongo-lock's, taken with no TTL) lives until
        // released.
        match read_date(exclusive, "expiresAt")? {
            Some(at) if at <= now => None,
            Some(at) => Some(at),
            None => Some(now + Duration::from_secs(365 * 24 * 60 * 60)),
        }
    } else {
        None
    };
    let line = stored
        .get_array("line")
        .map(|line| {
            line.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(LineView {
        held_until,
        turn: stored.get_document("turn").ok().and_then(read_turn),
        line,
        fence: stored.get("fence").and_then(as_integer),
        document: document_key(stored),
        expired_shared,
    })
}

/// The view of a document a request found, if it found one.
fn read_found(stored: Option<Document>, now: SystemTime) -> Result<Option<LineView>, LockError> {
    stored.map(|stored| line_view(&stored, now)).transpose()
}

/// A stored `turn` sub-document; `None` if it is nobody's.
fn read_turn(turn: &Document) -> Option<Turn> {
    let manager = turn.get_str("manager").ok().filter(|m| !m.is_empty())?;
    let until = turn.get("until").and_then(as_integer)?;
    Some(Turn {
        manager: manager.to_owned(),
        until: DateTime::from_millis(until).to_system_time(),
        next: turn
            .get_str("next")
            .ok()
            .filter(|next| !next.is_empty())
            .map(str::to_owned),
    })
}

/// The `turn` sub-document, written whole (so a change event carries it whole).
fn turn_written(turn: &Turn) -> Document {
    doc! {
        "manager": &turn.manager,
        "until": millis(turn.until),
        "next": turn.next.as_deref().unwrap_or_default(),
    }
}

/// Nobody's turn, as written: lapsed long ago.
fn nobodys_turn_written() -> Document {
    doc! { "manager": "", "until": 0_i64, "next": "" }
}

/// A release that names `wakes`: the condition that the line still stands so, and the update
/// that releases the hold and writes the turn whole: the named manager's turn renewed for
/// [`TURN_LIFE`], or a turn that was nobody's given to the first in line (or left nobody's).
fn release_naming(wakes: &Successor, now: SystemTime) -> (Document, Document) {
    let next = wakes.next().map(str::to_owned);
    match wakes {
        Successor::Turn { manager, .. } => (
            doc! { "turn.manager": manager },
            doc! {
                "$set": {
                    "exclusive": released(),
                    "turn": turn_written(&Turn { manager: manager.clone(), until: now + TURN_LIFE, next }),
                },
                "$pull": { "line": manager },
            },
        ),
        Successor::Nobody {
            first: Some(first), ..
        } => (
            doc! { "$and": [nobodys_turn(now), { "line.0": first }] },
            doc! {
                "$set": {
                    "exclusive": released(),
                    "turn": turn_written(&Turn { manager: first.clone(), until: now + TURN_LIFE, next }),
                },
                "$pull": { "line": first },
            },
        ),
        Successor::Nobody { first: None, .. } => (
            doc! { "$and": [nobodys_turn(now), { "line.0": { "$exists": false } }] },
            // Nobody has a place: the times of places are dropped too, with any a killed
            // manager left behind.
            doc! {
                "$set": { "exclusive": released(), "turn": nobodys_turn_written() },
                "$unset": { "since": "" },
            },
        ),
    }
}

/// A document's `_id` as a key, the same from a stored document and from a change event's
/// `documentKey`.
pub(crate) fn document_key(document: &Document) -> Option<String> {
    document.get("_id").map(ToString::to_string)
}

/// `now` in server-clock milliseconds, as `turn.until` stores it.
fn millis(now: SystemTime) -> i64 {
    DateTime::from_system_time(now).timestamp_millis()
}

/// The condition "the turn is nobody's": missing (a document no manager has lined up for), or
/// lapsed (nobody's is written as lapsed long ago). Inside an `$and` where it stands beside
/// other conditions, for nx-27017's sake (see the grant).
fn nobodys_turn(now: SystemTime) -> Document {
    doc! { "$or": [
        { "turn": { "$exists": false } },
        { "turn.until": { "$lt": millis(now) } },
    ] }
}

/// Where a document keeps when `manager` took its place in the line: `since.<id>`, the id being
/// the last part of its name (`owner@host/id`), with any `.` or `$` (which a field name cannot
/// hold) made `_`.
fn since_path(manager: &str) -> String {
    format!("since.{}", since_key(manager))
}

/// The `$min` that records `manager` taking a place at `now` (kept while it waits), in
/// server-clock milliseconds as `turn.until` (nx-27017 turns a date given to `$min` into a
/// string).
fn place_taken(manager: &str, now: SystemTime) -> Document {
    doc! { since_path(manager): millis(now) }
}

fn since_key(manager: &str) -> String {
    let id = manager.rsplit('/').next().unwrap_or(manager);
    id.replace(['.', '$'], "_")
}

/// The managers a write takes out of the line: `manager`, and `pass_to` if the turn goes to it.
fn leaving(manager: &str, pass_to: Option<&str>) -> Vec<Bson> {
    std::iter::once(manager)
        .chain(pass_to)
        .map(Bson::from)
        .collect()
}

/// The `turn` sub-document of `manager` until `until`, naming `next`.
fn turn(manager: &str, until: SystemTime, next: Option<&str>) -> Document {
    turn_written(&Turn {
        manager: manager.to_owned(),
        until,
        next: next.map(str::to_owned),
    })
}

fn read_fence(stored: &Document) -> Result<i64, LockError> {
    let fence = stored.get("fence");
    fence
        .and_then(as_integer)
        .ok_or_else(|| LockError::CorruptDocument {
            reason: format!("fence is {fence:?}, expected an integer"),
        })
}

/// An integer as either server stores it: nx-27017 answers an `Int64` that fits as `Int32`
/// (docs/compatibility.md, deviation 8).
fn as_integer(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        _ => None,
    }
}

fn read_date(document: &Document, key: &str) -> Result<Option<SystemTime>, LockError> {
    match document.get(key) {
        Some(Bson::DateTime(t)) => Ok(Some(t.to_system_time())),
        None | Some(Bson::Null) => Ok(None),
        Some(other) => Err(LockError::CorruptDocument {
            reason: format!("{key} is {other:?}, expected a date"),
        }),
    }
}

fn corrupt(e: mongodb::bson::document::ValueAccessError) -> LockError {
    LockError::CorruptDocument {
        reason: e.to_string(),
    }
}

/// A change stream of this collection's releases ([`MongoStore::watch_releases`]).
pub(crate) struct ReleaseStream {
    stream: ChangeStream<ChangeStreamEvent<Document>>,
    prefix: String,
}

/// What one event of a [`ReleaseStream`] says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StreamEvent {
    /// About the line of the document with this `_id` ([`document_key`]): an update or a
    /// delete names only the document, which saves the server a lookup per event and per
    /// stream.
    Document { document: String, event: LineEvent },
    /// About this resource's line (a replace, which carries the whole document).
    Resource {
        resource: ResourceId,
        event: LineEvent,
    },
    /// Some resource may have been released, which one is unknown (a document that is not of
    /// this lock family's shape, or an event without a document key).
    Unknown,
    /// The stream ended: the collection was dropped or renamed. It can start again after
    /// [`ReleaseStream::resume_token`].
    Invalidated,
}

impl ReleaseStream {
    /// Waits for the next event. Errors are the stream's; the driver has already tried to
    /// resume it once when it answers one.
    pub(crate) async fn next(&mut self) -> Result<StreamEvent, LockError> {
        use futures::StreamExt;
        let Some(event) = self.stream.next().await else {
            return Ok(StreamEvent::Invalidated);
        };
        let event = event.db()?;
        Ok(match event.operation_type {
            OperationType::Invalidate
            | OperationType::Drop
            | OperationType::Rename
            | OperationType::DropDatabase => StreamEvent::Invalidated,
            OperationType::Replace => event
                .full_document
                .as_ref()
                .and_then(|stored| stored.get_str("resource").ok())
                .and_then(|name| name.strip_prefix(&self.prefix))
                .and_then(|id| ResourceId::new(id).ok())
                .map_or(StreamEvent::Unknown, |resource| StreamEvent::Resource {
                    resource,
                    event: LineEvent::Released,
                }),
            _ => {
                let line_event = event
                    .update_description
                    .as_ref()
                    .and_then(|update| update.updated_fields.get_document("turn").ok())
                    .map_or(LineEvent::Released, |turn| LineEvent::Turn {
                        turn: read_turn(turn),
                        released: event.update_description.as_ref().is_some_and(|update| {
                            update
                                .updated_fields
                                .get_document("exclusive")
                                .is_ok_and(|exclusive| exclusive.get_bool("acquired") == Ok(false))
                        }),
                    });
                event.document_key.as_ref().and_then(document_key).map_or(
                    StreamEvent::Unknown,
                    |document| StreamEvent::Document {
                        document,
                        event: line_event,
                    },
                )
            }
        })
    }

    /// Where a new stream continues this one.
    pub(crate) fn resume_token(&self) -> Option<ResumeToken> {
        self.stream.resume_token()
    }
}

/// Whether `e` says the server cannot open change streams at all.
pub(crate) fn is_unsupported_stream(e: &LockError) -> bool {
    match e {
        LockError::Database(e) => e
            .code()
            .is_some_and(|code| NO_CHANGE_STREAMS.contains(&code)),
        _ => false,
    }
}
