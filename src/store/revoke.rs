//! Fenced revocation: an operator ends the hold that drew one fence, and only that hold.
//!
//! A revocation names a resource and a fence, never a lock id (operators do not have one). The
//! document is read, and the hold that drew the fence is found in it: the exclusive hold if it
//! was granted by this crate (`exclusive.fenced`, which our grants write and square/mongo-lock's
//! do not: a Go hold carries no fence of its own, and the document's `fence` beside it is an
//! earlier grant's), or the shared hold whose entry carries the fence. Its lock id is then
//! released as an `Unlock` of it would be, so a later hold (another lock id) is never touched,
//! and the line of waiting managers is woken as by any release.
//!
//! Before the release, a `revoked: {fence, reason, at}` marker is written on the condition
//! that the hold is still there; the holder's keep-alive, told by the server that its hold is
//! gone, reads it and tells its holder [`LostReason::Revoked`](crate::LostReason::Revoked)
//! rather than `Gone`. Three requests (a `find`, the marker, the release; a release whose line
//! moved on the way costs a `find` and an update more). A stale fence costs the `find` only and
//! writes nothing.

use std::time::SystemTime;

use mongodb::bson::{doc, DateTime, Document};

use super::shared::{live_entries, shared_locks};
use super::{as_integer, corrupt, read_date, read_fence, MongoStore};
use crate::error::{DriverResult, LockError};
use crate::messages::{LockId, ResourceId};

/// The hold a revocation found and ended.
#[derive(Debug, Clone)]
pub(crate) struct RevokedHold {
    pub(crate) owner: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) shared: bool,
}

impl MongoStore {
    /// Ends the live hold of `resource` that drew `fence`, telling its holder `reason`;
    /// `None` if no live hold of the resource drew it (nothing is written then).
    pub(crate) async fn revoke(
        &self,
        resource: &ResourceId,
        fence: i64,
        reason: &str,
        now: SystemTime,
    ) -> Result<Option<RevokedHold>, LockError> {
        let name = self.stored_name(resource);
        let found = self
            .bounded("revoke_find", async {
                self.collection
                    .find_one(doc! { "resource": &name })
                    .await
                    .db()
            })
            .await?;
        let Some(stored) = found else {
            return Ok(None);
        };
        let Some((lock_id, hold)) = hold_with_fence(&stored, fence, now)? else {
            return Ok(None);
        };
        let held_path = if hold.shared {
            "shared.locks.lockId"
        } else {
            "exclusive.lockId"
        };
        let marked = self
            .bounded("revoke_mark", async {
                self.collection
                    .update_one(
                        doc! { "resource": &name, held_path: lock_id.as_str() },
                        doc! { "$set": { "revoked": {
                            "fence": fence,
                            "reason": reason,
                            "at": DateTime::from_system_time(now),
                        } } },
                    )
                    .await
                    .db()
            })
            .await?;
        if marked.matched_count == 0 {
            // Released or ended between the read and the marker: not this revocation's.
            return Ok(None);
        }
        let released = if hold.shared {
            self.release_shared(&lock_id, Some(resource), now).await?
        } else {
            self.release(&lock_id, None, now).await?
        };
        Ok(released.then_some(hold))
    }

    /// The reason `resource`'s hold that drew `fence` was revoked, if it was: what a holder
    /// whose renewal found its hold gone reads to tell a revocation from an expiry. One `find`.
    pub(crate) async fn revocation(
        &self,
        resource: &ResourceId,
        fence: i64,
    ) -> Result<Option<String>, LockError> {
        self.bounded("revocation", async {
            let found = self
                .collection
                .find_one(doc! { "resource": self.stored_name(resource), "revoked.fence": fence })
                .projection(doc! { "revoked": 1 })
                .await
                .db()?;
            Ok(found.and_then(|found| {
                let revoked = found.get_document("revoked").ok()?;
                // Both servers may answer an Int64 that fits as an Int32 (deviation 8).
                (revoked.get("fence").and_then(as_integer) == Some(fence))
                    .then(|| revoked.get_str("reason").unwrap_or_default().to_owned())
            }))
        })
        .await
    }
}

/// The live hold of `stored` that drew `fence`: its lock id, and who holds it.
fn hold_with_fence(
    stored: &Document,
    fence: i64,
    now: SystemTime,
) -> Result<Option<(LockId, RevokedHold)>, LockError> {
    let exclusive = stored.get_document("exclusive").map_err(corrupt)?;
    let live_exclusive = exclusive.get_bool("acquired") == Ok(true)
        && exclusive.get_bool("fenced") == Ok(true)
        && read_date(exclusive, "expiresAt")?.is_none_or(|at| at > now);
    if live_exclusive && read_fence(stored)? == fence {
        return Ok(held_by(exclusive, false));
    }
    for entry in live_entries(&shared_locks(stored), now)? {
        let Some(entry) = entry.as_document() else {
            continue;
        };
        if entry.get("fence").and_then(as_integer) == Some(fence) {
            return Ok(held_by(entry, true));
        }
    }
    Ok(None)
}

fn held_by(hold: &Document, shared: bool) -> Option<(LockId, RevokedHold)> {
    // Only this crate's holds carry a fence, and their ids are this crate's.
    let lock_id = LockId::parse(hold.get_str("lockId").ok()?).ok()?;
    Some((
        lock_id,
        RevokedHold {
            owner: hold.get_str("owner").ok().map(str::to_owned),
            host: hold.get_str("host").ok().map(str::to_owned),
            shared,
        },
    ))
}
