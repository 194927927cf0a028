//! Shared holds, in square/mongo-lock's `shared: {count, locks: [...]}` (its `SLock`), plus two
//! fields of ours that Go clients ignore: `shared.maxHolders` (the limit the live shared holds
//! were granted under) and, in each entry, the `fence` its grant drew.
//!
//! Neither test server takes the array operators square/mongo-lock uses (`$push` of a
//! sub-document, `$pull` by a sub-document's field, the positional `$`: docs/compatibility.md,
//! deviation 10, and the SecantusDB table), nor pipelines (deviation 5). So every shared write
//! is a compare-and-set of the whole `shared` sub-document: the document is read (or taken from
//! what this manager last saw of it), the new `shared` computed here, and written on the
//! condition that `shared.count`, `fence` and `rev` (a counter of ours, +1 on every shared write
//! of this crate) are as read. Every grant raises `fence`, every shared write of ours `rev`, and
//! every write of square/mongo-lock's changes `shared.count`, so a write that lands in between
//! fails the condition and the request is computed again from a fresh read (at most
//! [`SHARED_ROUNDS`] times).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;

use super::{
    as_integer, corrupt, line_view, nobodys_turn, read_date, release_naming, released, MongoStore,
    DUPLICATE_KEY,
};
use crate::error::{server_code, DriverResult, LockError};
use crate::line::{successor, LineView};
use crate::messages::{HoldStatus, LockGrant, LockId, ResourceId};

/// How many times a shared write is computed again after the document changed under it.
const SHARED_ROUNDS: usize = 8;

/// The most documents [`SeenDocuments`] remembers; it forgets them all beyond.
const SEEN_AT_MOST: usize = 1024;

/// The documents this store last wrote shared holds into, by stored resource name: the
/// condition of the next shared write, so a manager that is a resource's only shared user
/// grants and releases in one round trip. A stale one only costs a read.
#[derive(Clone, Debug, Default)]
pub(crate) struct SeenDocuments(Arc<Mutex<HashMap<String, Document>>>);

impl SeenDocuments {
    fn get(&self, name: &str) -> Option<Document> {
        self.0.lock().ok()?.get(name).cloned()
    }

    fn put(&self, name: &str, stored: Document) {
        if let Ok(mut seen) = self.0.lock() {
            if seen.len() >= SEEN_AT_MOST {
                seen.clear();
            }
            seen.insert(name.to_owned(), stored);
        }
    }

    fn forget(&self, name: &str) {
        if let Ok(mut seen) = self.0.lock() {
            seen.remove(name);
        }
    }
}

/// What a shared write decided from the document as seen.
enum Plan<T> {
    /// Nothing to write: the answer, if the document was freshly read.
    Answer(T),
    /// Write `update` on the condition that the document is as seen and `condition` holds.
    Write {
        condition: Document,
        update: Document,
        answer: T,
    },
}

/// What a shared grant found.
#[derive(Debug)]
pub(crate) enum SharedGrant {
    /// Granted (or already granted to this lock id: a retry whose reply was lost).
    Granted(Box<(LockGrant, LineView)>),
    /// Held exclusively, or a manager waits in line for an exclusive hold.
    Held,
    /// `max_holders` shared holds are live.
    Full,
    /// The live shared holds were granted under this other limit.
    Mismatch(u32),
}

/// How a lock id stands in the lock collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldKind {
    Missing,
    Exclusive,
    Shared,
}

impl MongoStore {
    /// One shared grant of `resource` to `lock_id` for `ttl`: beside the live shared holds, if
    /// no exclusive hold is live, no manager's turn in the line is live (writer priority), and
    /// fewer than `limit` shared holds are live. A live turn of `in_turn_of` (this manager, for
    /// the head of its queue) does not refuse it. Expired shared holds are dropped in the same
    /// write. One `findOneAndUpdate` when this manager's last sight of the document is current
    /// (or the resource has no document); a `find` first otherwise.
    pub(crate) async fn grant_shared(
        &self,
        resource: &ResourceId,
        lock_id: &LockId,
        now: SystemTime,
        ttl: Duration,
        limit: Option<u32>,
        in_turn_of: Option<&str>,
    ) -> Result<SharedGrant, LockError> {
        self.bounded_within(ttl, "grant_shared", async {
            let name = self.stored_name(resource);
            let granted_at = DateTime::from_system_time(now).to_system_time();
            let expires_at = DateTime::from_system_time(now + ttl).to_system_time();
            let (plan, after) = self
                .shared_write(&name, None, |seen| {
                    let times = (now, granted_at, expires_at);
                    self.plan_grant(seen, lock_id, times, limit, in_turn_of)
                })
                .await?;
            if let (Ok(1), Some(inserted)) = (&plan, &after) {
                if !self.sole_document(resource, lock_id, inserted).await? {
                    self.seen.forget(&name);
                    return Ok(SharedGrant::Held);
                }
            }
            Ok(match (plan, after) {
                (Ok(fence), after) => {
                    let stored = match after {
                        Some(after) => after,
                        None => self.seen.get(&name).unwrap_or_default(),
                    };
                    let (granted_at, expires_at) =
                        entry_times(&stored, lock_id)?.unwrap_or((granted_at, expires_at));
                    SharedGrant::Granted(Box::new((
                        LockGrant {
                            lock_id: lock_id.clone(),
                            resource_id: resource.clone(),
                            fence,
                            granted_at,
                            expires_at,
                            shared: true,
                        },
                        line_view(&stored, now)?,
                    )))
                }
                (Err(refused), _) => refused,
            })
        })
        .await
    }

    /// The grant's decision on `seen`: `Ok(fence)` granted, `Err(..)` refused.
    fn plan_grant(
        &self,
        seen: Option<&Document>,
        lock_id: &LockId,
        (now, granted_at, expires_at): (SystemTime, SystemTime, SystemTime),
        limit: Option<u32>,
        in_turn_of: Option<&str>,
    ) -> Result<Plan<Result<i64, SharedGrant>>, LockError> {
        let limit_bson = limit.map_or(Bson::Null, |n| Bson::Int64(i64::from(n)));
        let Some(stored) = seen else {
            let entry = self.shared_entry(lock_id, granted_at, None, expires_at, 1);
            return Ok(Plan::Write {
                condition: doc! {},
                update: doc! {
                    "$set": {
                        "exclusive": released(),
                        "shared": { "count": 1_i32, "locks": [entry], "maxHolders": limit_bson },
                        "fence": 1_i64,
                    },
                    "$inc": { "rev": 1_i64 },
                },
                answer: Ok(1),
            });
        };
        let exclusive = stored.get_document("exclusive").map_err(corrupt)?;
        let taken = exclusive.get_bool("acquired") == Ok(true);
        let exclusive_expired = read_date(exclusive, "expiresAt")?.is_some_and(|at| at < now);
        if taken && !exclusive_expired {
            return Ok(Plan::Answer(Err(SharedGrant::Held)));
        }
        let view = line_view(stored, now)?;
        let mine = |turn: &crate::line::Turn| in_turn_of == Some(turn.manager.as_str());
        if view.live_turn(now).is_some_and(|turn| !mine(turn)) {
            // Writer priority: another manager's turn to be granted next is live.
            return Ok(Plan::Answer(Err(SharedGrant::Held)));
        }
        let locks = shared_locks(stored);
        if let Some(fence) = locks
            .iter()
            .find(|entry| entry_lock_id(entry) == Some(lock_id.as_str()))
            .and_then(entry_fence)
        {
            return Ok(Plan::Answer(Ok(fence)));
        }
        let mut live = live_entries(&locks, now)?;
        let stored_limit = stored_limit(stored);
        if let Some(stored) =
            stored_limit.filter(|&stored| !live.is_empty() && Some(stored) != limit)
        {
            return Ok(Plan::Answer(Err(SharedGrant::Mismatch(stored))));
        }
        if limit.is_some_and(|n| live.len() >= n as usize) {
            return Ok(Plan::Answer(Err(SharedGrant::Full)));
        }
        let fence = stored.get("fence").and_then(as_integer).unwrap_or(0) + 1;
        live.push(Bson::Document(
            self.shared_entry(lock_id, granted_at, None, expires_at, fence),
        ));
        let mut set = doc! {
            "shared": { "count": count(&live), "locks": live, "maxHolders": limit_bson },
            "fence": fence,
        };
        let mut turn = nobodys_turn(now);
        if let (Some(me), Ok(or)) = (in_turn_of, turn.get_array_mut("$or")) {
            or.push(Bson::Document(doc! { "turn.manager": me }));
        }
        let mut condition = doc! { "$and": [turn] };
        if taken {
            // An exclusive hold whose lease ended: taken over, as an exclusive grant would.
            set.insert("exclusive", released());
            condition.insert(
                "exclusive.expiresAt",
                doc! { "$lt": DateTime::from_system_time(now) },
            );
        } else {
            condition.insert("exclusive.acquired", false);
        }
        Ok(Plan::Write {
            condition,
            update: doc! { "$set": set, "$inc": { "rev": 1_i64 } },
            answer: Ok(fence),
        })
    }

    /// Releases the shared hold `lock_id` (of `resource`, if known: else it is looked up);
    /// `true` if there was one. Expired shared holds go in the same write; when none is left,
    /// the write names whom it wakes, as an exclusive release does.
    pub(crate) async fn release_shared(
        &self,
        lock_id: &LockId,
        resource: Option<&ResourceId>,
        now: SystemTime,
    ) -> Result<bool, LockError> {
        self.bounded("release_shared", async {
            let Some(name) = self.shared_name(lock_id, resource).await? else {
                return Ok(false);
            };
            let (released, _) = self
                .shared_write(&name, None, |seen| {
                    let Some(stored) = seen else {
                        return Ok(Plan::Answer(false));
                    };
                    Ok(match rewrite_without(stored, Some(lock_id), now)? {
                        Some((condition, update)) if holds(stored, lock_id) => Plan::Write {
                            condition,
                            update,
                            answer: true,
                        },
                        _ => Plan::Answer(false),
                    })
                })
                .await?;
            Ok(released)
        })
        .await
    }

    /// Retires the live shared hold `lock_id` of the document `name` (a revocation,
    /// `store/revoke.rs`): its entry's lock id is rewritten so nobody renews or releases it, and
    /// it ends with its lease; `marker` is written as `revoked` in the same write. `false` if
    /// the hold is not live any more.
    pub(super) async fn retire_shared(
        &self,
        name: &str,
        lock_id: &LockId,
        marker: Document,
        now: SystemTime,
    ) -> Result<bool, LockError> {
        self.bounded("revoke", async {
            let (retired, _) = self
                .shared_write(name, None, |seen| {
                    let Some(stored) = seen else {
                        return Ok(Plan::Answer(false));
                    };
                    let mut live = live_entries(&shared_locks(stored), now)?;
                    let Some(entry) = live
                        .iter_mut()
                        .find(|entry| entry_lock_id(entry) == Some(lock_id.as_str()))
                        .and_then(Bson::as_document_mut)
                    else {
                        return Ok(Plan::Answer(false));
                    };
                    entry.insert("lockId", super::revoke::retired_id(lock_id));
                    Ok(Plan::Write {
                        condition: doc! {},
                        update: doc! {
                            "$set": { "shared": shared_written(stored, live), "revoked": marker.clone() },
                            "$inc": { "rev": 1_i64 },
                        },
                        answer: true,
                    })
                })
                .await?;
            Ok(retired)
        })
        .await
    }

    /// Extends the live shared hold `lock_id` to `now + ttl`; `Ok(None)` if it is not live
    /// (strictly: an expired hold is never revived).
    pub(crate) async fn renew_shared(
        &self,
        lock_id: &LockId,
        resource: Option<&ResourceId>,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Option<LockGrant>, LockError> {
        self.bounded_within(ttl, "renew_shared", async {
            let Some(name) = self.shared_name(lock_id, resource).await? else {
                return Ok(None);
            };
            let renewed_at = DateTime::from_system_time(now).to_system_time();
            let expires_at = DateTime::from_system_time(now + ttl).to_system_time();
            let (renewed, _) = self
                .shared_write(&name, None, |seen| {
                    let Some(stored) = seen else {
                        return Ok(Plan::Answer(None));
                    };
                    let locks = shared_locks(stored);
                    let Some(mine) = locks
                        .iter()
                        .find(|entry| entry_lock_id(entry) == Some(lock_id.as_str()))
                        .and_then(Bson::as_document)
                    else {
                        return Ok(Plan::Answer(None));
                    };
                    if read_date(mine, "expiresAt")?.is_some_and(|at| at <= now) {
                        return Ok(Plan::Answer(None));
                    }
                    let fence = mine.get("fence").and_then(as_integer).unwrap_or(0);
                    let created_at = read_date(mine, "createdAt")?.unwrap_or(renewed_at);
                    let mut entry = mine.clone();
                    entry.insert("renewedAt", DateTime::from_system_time(renewed_at));
                    entry.insert("expiresAt", DateTime::from_system_time(expires_at));
                    let mut live = live_entries(&locks, now)?;
                    for kept in &mut live {
                        if entry_lock_id(kept) == Some(lock_id.as_str()) {
                            *kept = Bson::Document(entry.clone());
                        }
                    }
                    let resource_id = self.resource_of(stored)?;
                    Ok(Plan::Write {
                        condition: doc! {},
                        update: doc! {
                            "$set": { "shared": shared_written(stored, live) },
                            "$inc": { "rev": 1_i64 },
                        },
                        answer: Some(LockGrant {
                            lock_id: lock_id.clone(),
                            resource_id,
                            fence,
                            granted_at: created_at,
                            expires_at,
                            shared: true,
                        }),
                    })
                })
                .await?;
            Ok(renewed)
        })
        .await
    }

    /// Drops `resource`'s shared holds whose lease ended before `now`, so that the permits of
    /// holders that died are returned; how many it dropped. Nothing is written if none ended.
    pub(crate) async fn drop_expired_shared(
        &self,
        resource: &ResourceId,
        now: SystemTime,
    ) -> Result<u64, LockError> {
        self.bounded("drop_expired_shared", async {
            self.drop_expired_in(&self.stored_name(resource), None, now)
                .await
        })
        .await
    }

    /// [`drop_expired_shared`](Self::drop_expired_shared) of `name`, from `known` if given.
    async fn drop_expired_in(
        &self,
        name: &str,
        known: Option<Document>,
        now: SystemTime,
    ) -> Result<u64, LockError> {
        let (dropped, _) = self
            .shared_write(name, known, |seen| {
                let Some(stored) = seen else {
                    return Ok(Plan::Answer(0));
                };
                let locks = shared_locks(stored);
                let live = live_entries(&locks, now)?.len();
                let counted = stored
                    .get_document("shared")
                    .ok()
                    .and_then(|shared| shared.get("count"))
                    .and_then(as_integer)
                    .unwrap_or(0);
                let dropped = locks.len() - live;
                if dropped == 0 && counted == live as i64 {
                    return Ok(Plan::Answer(0));
                }
                Ok(match rewrite_without(stored, None, now)? {
                    Some((condition, update)) => Plan::Write {
                        condition,
                        update,
                        answer: dropped as u64,
                    },
                    None => Plan::Answer(0),
                })
            })
            .await?;
        Ok(dropped)
    }

    /// The purge of shared holds: every document with shared holds is read (one `find`), and
    /// each one holding expired ones is rewritten without them.
    pub(super) async fn purge_expired_shared(&self, now: SystemTime) -> Result<u64, LockError> {
        use futures::TryStreamExt;
        let stored: Vec<Document> = self
            .collection
            .find(doc! { "shared.count": { "$gt": 0 } })
            .await
            .db()?
            .try_collect()
            .await
            .db()?;
        let mut dropped = 0;
        for document in stored {
            let Ok(name) = document.get_str("resource").map(str::to_owned) else {
                continue;
            };
            if !name.starts_with(&self.prefix) {
                continue;
            }
            dropped += self.drop_expired_in(&name, Some(document), now).await?;
        }
        Ok(dropped)
    }

    /// How `lock_id` stands in the document that holds it: shared, exclusive or missing. One
    /// `find`. For an `Unlock::shared` of a hold not granted here.
    pub(crate) async fn hold_kind(&self, lock_id: &LockId) -> Result<HoldKind, LockError> {
        self.bounded("hold_kind", async {
            let found = self
                .collection
                .find_one(doc! { "exclusive.lockId": lock_id.as_str() })
                .projection(doc! { "_id": 1 })
                .await
                .db()?;
            Ok(if found.is_some() {
                HoldKind::Exclusive
            } else if self.shared_name(lock_id, None).await?.is_some() {
                HoldKind::Shared
            } else {
                HoldKind::Missing
            })
        })
        .await
    }

    /// The stored name of the resource whose shared holds include `lock_id`: `resource`'s, or
    /// looked up (one `find`; `None` if no document holds it).
    async fn shared_name(
        &self,
        lock_id: &LockId,
        resource: Option<&ResourceId>,
    ) -> Result<Option<String>, LockError> {
        if let Some(resource) = resource {
            return Ok(Some(self.stored_name(resource)));
        }
        let found = self
            .collection
            .find_one(doc! { "shared.locks.lockId": lock_id.as_str() })
            .projection(doc! { "resource": 1 })
            .await
            .db()?;
        found
            .map(|found| {
                found
                    .get_str("resource")
                    .map(str::to_owned)
                    .map_err(corrupt)
            })
            .transpose()
    }

    /// Runs one shared write on the document `name`: `plan` decides from the document as seen
    /// (this manager's last sight of it, `known`, or a fresh read), and the write is made on
    /// the condition that the document is still as seen. A write whose condition missed, or an
    /// answer decided on a sight that was not fresh, is decided again on a fresh read. Answers
    /// the plan's answer and the document after the write, if one was made.
    async fn shared_write<T>(
        &self,
        name: &str,
        known: Option<Document>,
        mut plan: impl FnMut(Option<&Document>) -> Result<Plan<T>, LockError>,
    ) -> Result<(T, Option<Document>), LockError> {
        let (mut seen, mut fresh) = match known {
            Some(known) => (Some(known), true),
            None => match self.seen.get(name) {
                Some(seen) => (Some(seen), false),
                None => (self.read_document(name).await?, true),
            },
        };
        for _ in 0..SHARED_ROUNDS {
            match plan(seen.as_ref())? {
                Plan::Answer(answer) if fresh => {
                    if let Some(seen) = seen {
                        self.seen.put(name, seen);
                    }
                    return Ok((answer, None));
                }
                Plan::Answer(_) => {}
                Plan::Write {
                    condition,
                    update,
                    answer,
                } => {
                    let pins_go_leases = self.finds_dates_in_arrays.load(Ordering::Relaxed);
                    let filter =
                        with_condition(as_seen(name, seen.as_ref(), pins_go_leases), condition);
                    let written = self
                        .collection
                        .find_one_and_update(filter, update)
                        .upsert(seen.is_none())
                        .return_document(ReturnDocument::After)
                        .await;
                    match written {
                        Ok(Some(after)) => {
                            self.seen.put(name, after.clone());
                            return Ok((answer, Some(after)));
                        }
                        Ok(None) => {}
                        Err(e) if server_code(&e) == Some(DUPLICATE_KEY) => {}
                        Err(e) => {
                            self.seen.forget(name);
                            return Err(LockError::database(e));
                        }
                    }
                }
            }
            self.seen.forget(name);
            seen = self.read_document(name).await?;
            fresh = true;
        }
        tracing::debug!("the shared holds kept changing");
        Err(LockError::Unavailable {
            waited: Duration::ZERO,
            last_error: format!(
                "the document changed under each of {SHARED_ROUNDS} shared writes in a row"
            ),
        })
    }

    async fn read_document(&self, name: &str) -> Result<Option<Document>, LockError> {
        self.collection
            .find_one(doc! { "resource": name })
            .await
            .db()
    }

    /// One shared hold as stored: square/mongo-lock's `lock` (with the `_id` it gives each),
    /// and the fence its grant drew.
    fn shared_entry(
        &self,
        lock_id: &LockId,
        created_at: SystemTime,
        renewed_at: Option<SystemTime>,
        expires_at: SystemTime,
        fence: i64,
    ) -> Document {
        let mut entry = self.held(lock_id, created_at, renewed_at, expires_at);
        entry.insert("_id", ObjectId::new());
        entry.insert("fence", fence);
        entry
    }

    /// The shared holds of `stored` as [`HoldStatus`]es (live ones and expired ones not yet
    /// dropped), each with the count of live ones.
    pub(super) fn shared_statuses(
        &self,
        stored: &Document,
        now: SystemTime,
    ) -> Result<Vec<HoldStatus>, LockError> {
        let locks = shared_locks(stored);
        let live = live_entries(&locks, now)?.len();
        let line = super::line_status(stored, now)?;
        let mut statuses = Vec::with_capacity(locks.len());
        for entry in &locks {
            let Some(entry) = entry.as_document() else {
                continue;
            };
            let expires_at = read_date(entry, "expiresAt")?;
            statuses.push(HoldStatus {
                resource_id: self.resource_of(stored)?,
                owner: entry.get_str("owner").ok().map(str::to_owned),
                host: entry.get_str("host").ok().map(str::to_owned),
                created_at: read_date(entry, "createdAt")?,
                renewed_at: read_date(entry, "renewedAt")?,
                expires_at,
                fence: entry.get("fence").and_then(as_integer).unwrap_or(0),
                live: expires_at.is_none_or(|t| t > now),
                shared: true,
                shared_holders: live,
                line: line.clone(),
                revoked: entry.get_str("lockId").is_ok_and(super::revoke::retired),
            });
        }
        Ok(statuses)
    }
}

/// Whether `lock_id` is one of `stored`'s shared holds (live or not).
fn holds(stored: &Document, lock_id: &LockId) -> bool {
    shared_locks(stored)
        .iter()
        .any(|entry| entry_lock_id(entry) == Some(lock_id.as_str()))
}

/// The condition and update that rewrite `stored`'s shared holds without `remove` and without
/// the expired ones; when none is left, the write also names whom it wakes in the line, as an
/// exclusive release does. `None` if `stored` has no `exclusive` to read.
fn rewrite_without(
    stored: &Document,
    remove: Option<&LockId>,
    now: SystemTime,
) -> Result<Option<(Document, Document)>, LockError> {
    let locks = shared_locks(stored);
    let live: Vec<Bson> = live_entries(&locks, now)?
        .into_iter()
        .filter(|entry| remove.is_none_or(|id| entry_lock_id(entry) != Some(id.as_str())))
        .collect();
    let emptied = live.is_empty();
    let shared = shared_written(stored, live);
    let exclusive_free = stored
        .get_document("exclusive")
        .is_ok_and(|exclusive| exclusive.get_bool("acquired") != Ok(true));
    if emptied && exclusive_free {
        let wakes = successor(&line_view(stored, now)?, now);
        let (condition, mut update) = release_naming(&wakes, now);
        if let Ok(set) = update.get_document_mut("$set") {
            set.insert("shared", shared);
        }
        update.insert("$inc", doc! { "rev": 1_i64 });
        return Ok(Some((doc! { "$and": [condition] }, update)));
    }
    Ok(Some((
        doc! {},
        doc! { "$set": { "shared": shared }, "$inc": { "rev": 1_i64 } },
    )))
}

/// `shared` as written with the holds `live`: its count, and the limit kept while any is left.
fn shared_written(stored: &Document, live: Vec<Bson>) -> Document {
    let limit = if live.is_empty() {
        Bson::Null
    } else {
        stored_limit(stored).map_or(Bson::Null, |n| Bson::Int64(i64::from(n)))
    };
    doc! { "count": count(&live), "locks": live, "maxHolders": limit }
}

fn count(live: &[Bson]) -> i32 {
    i32::try_from(live.len()).unwrap_or(i32::MAX)
}

/// `filter` and `condition` together: their `$and`s joined into one (each may have one).
fn with_condition(mut filter: Document, condition: Document) -> Document {
    for (key, value) in condition {
        match (key.as_str(), value, filter.get_array_mut("$and")) {
            ("$and", Bson::Array(more), Ok(all)) => all.extend(more),
            (_, value, _) => {
                filter.insert(key, value);
            }
        }
    }
    filter
}

/// The condition that `name`'s document is as `seen` shows it: its `shared.count`, `fence` and
/// `rev` unchanged (each missing where it was missing), and every shared hold seen still there
/// (by lock id: with the count unchanged, the same holds), and with `pins_go_leases` each Go
/// client's with the lease end seen (by its `expiresAt`: some entry still ends then). For no
/// document, that none exists
/// (an upsert inserts it; one that exists answers "changed"). `$and` of equalities, not `$all`,
/// which SecantusDB answers wrongly on an array's field and nx-27017 not at all.
fn as_seen(name: &str, seen: Option<&Document>, pins_go_leases: bool) -> Document {
    let Some(stored) = seen else {
        return doc! { "resource": name, "exclusive": { "$exists": false } };
    };
    let same = |value: Option<&Bson>| match value {
        Some(value) => value.clone(),
        None => Bson::Document(doc! { "$exists": false }),
    };
    let shared_count = stored
        .get_document("shared")
        .ok()
        .and_then(|shared| shared.get("count"));
    let locks = shared_locks(stored);
    let mut holds: Vec<Bson> = locks
        .iter()
        .filter_map(entry_lock_id)
        .map(|id| Bson::Document(doc! { "shared.locks.lockId": id }))
        .collect();
    // A Go client's renewal rewrites its entry's `expiresAt` and nothing this condition names
    // else: its entries (they have no `fence`) are pinned by their lease ends too, where the
    // server can find a date in an array.
    if pins_go_leases {
        holds.extend(
            locks
                .iter()
                .filter_map(Bson::as_document)
                .filter(|entry| !entry.contains_key("fence"))
                .map(|entry| {
                    let expires_at = entry.get("expiresAt").cloned().unwrap_or(Bson::Null);
                    Bson::Document(doc! { "shared.locks.expiresAt": expires_at })
                }),
        );
    }
    // An empty `$and` is refused; the count stands for an empty array.
    holds.push(Bson::Document(doc! { "shared.count": same(shared_count) }));
    doc! {
        "resource": name,
        "fence": same(stored.get("fence")),
        "rev": same(stored.get("rev")),
        "$and": holds,
    }
}

/// `stored`'s `shared.locks`, as stored (an entry that is not a sub-document is nx-27017's
/// form of square/mongo-lock's `$push`: kept, and counted as live).
pub(super) fn shared_locks(stored: &Document) -> Vec<Bson> {
    stored
        .get_document("shared")
        .ok()
        .and_then(|shared| shared.get_array("locks").ok())
        .cloned()
        .unwrap_or_default()
}

/// The entries of `locks` whose lease has not ended before `now` (strictly, as an exclusive
/// takeover compares): a hold without an expiry lives until released.
pub(super) fn live_entries(locks: &[Bson], now: SystemTime) -> Result<Vec<Bson>, LockError> {
    let mut live = Vec::with_capacity(locks.len());
    for entry in locks {
        let ended = match entry.as_document() {
            Some(entry) => read_date(entry, "expiresAt")?.is_some_and(|at| at < now),
            None => false,
        };
        if !ended {
            live.push(entry.clone());
        }
    }
    Ok(live)
}

/// When the last live shared hold of `locks` ends (a hold without an expiry: a year from
/// `now`), if any is live.
pub(super) fn shared_until(
    locks: &[Bson],
    now: SystemTime,
) -> Result<Option<SystemTime>, LockError> {
    let far = now + Duration::from_secs(365 * 24 * 60 * 60);
    Ok(live_entries(locks, now)?
        .iter()
        .map(|entry| {
            entry
                .as_document()
                .and_then(|entry| read_date(entry, "expiresAt").ok().flatten())
                .unwrap_or(far)
        })
        .max())
}

fn entry_lock_id(entry: &Bson) -> Option<&str> {
    entry.as_document()?.get_str("lockId").ok()
}

fn entry_fence(entry: &Bson) -> Option<i64> {
    Some(
        entry
            .as_document()?
            .get("fence")
            .and_then(as_integer)
            .unwrap_or(0),
    )
}

/// The grant and lease end of `lock_id`'s shared hold in `stored`.
fn entry_times(
    stored: &Document,
    lock_id: &LockId,
) -> Result<Option<(SystemTime, SystemTime)>, LockError> {
    let locks = shared_locks(stored);
    let Some(entry) = locks
        .iter()
        .find(|entry| entry_lock_id(entry) == Some(lock_id.as_str()))
        .and_then(Bson::as_document)
    else {
        return Ok(None);
    };
    Ok(read_date(entry, "createdAt")?.zip(read_date(entry, "expiresAt")?))
}

/// The limit of holders stored with the live shared holds.
fn stored_limit(stored: &Document) -> Option<u32> {
    stored
        .get_document("shared")
        .ok()?
        .get("maxHolders")
        .and_then(as_integer)
        .and_then(|n| u32::try_from(n).ok())
}
