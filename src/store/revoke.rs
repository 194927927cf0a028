//! Fenced revocation: an operator ends the hold that drew one fence, and only that hold.
//!
//! A revocation names a resource and a fence, never a lock id (operators do not have one). The
//! document is read, and the hold that drew the fence is found in it: the exclusive hold if it
//! was granted by this crate (`exclusive.fenced`, which our grants write and square/mongo-lock's
//! do not: a Go hold carries no fence of its own, and the document's `fence` beside it is an
//! earlier grant's), or the shared hold whose entry carries the fence.
//!
//! The hold is **retired**, not released: its lock id is rewritten to `revoked:<lock id>` in
//! the same write that records `revoked: {fence, reason, at}`, on the condition that the hold is
//! as read. From then on nobody can renew or unlock it (no lock id matches), so it ends when its
//! lease does, and nobody else is granted the resource before then. Its holder's keep-alive,
//! told by its next renewal that the hold is gone, reads the marker and tells the holder
//! [`LostReason::Revoked`](crate::LostReason::Revoked): within a third of the lease plus
//! `request_timeout`, before the lease ends. So the rule every loss keeps holds for a
//! revocation too: the holder is told before anyone else can be granted the resource. (A
//! release at once would let a waiter in while the revoked holder, told nothing yet, still
//! acts; only fencing would stand between them.) Two requests: a `find` and the write (a
//! renewal landing in between costs another pair); a stale fence costs the `find` only and
//! writes nothing.

use std::time::SystemTime;

use mongodb::bson::{doc, Bson, DateTime, Document};

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
    /// `None` if no live hold of the resource drew it (nothing is written then). A renewal
    /// landing between the read and the write of an exclusive hold misses the write's
    /// condition; the hold is then read again, [`REVOKE_ROUNDS`] times at most (a shared
    /// hold's compare-and-set does the same on its own).
    pub(crate) async fn revoke(
        &self,
        resource: &ResourceId,
        fence: i64,
        reason: &str,
        now: SystemTime,
    ) -> Result<Option<RevokedHold>, LockError> {
        let name = self.stored_name(resource);
        let marker = doc! {
            "fence": fence,
            "reason": reason,
            "at": DateTime::from_system_time(now),
        };
        for _ in 0..REVOKE_ROUNDS {
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
            let retired = if hold.shared {
                self.retire_shared(&name, &lock_id, marker.clone(), now)
                    .await?
            } else {
                self.retire_exclusive(&name, &stored, &lock_id, marker.clone())
                    .await?
            };
            if retired || hold.shared {
                return Ok(retired.then_some(hold));
            }
        }
        tracing::warn!(
            fence,
            "the hold kept changing under the revocation; nothing written"
        );
        Ok(None)
    }

    /// Rewrites the exclusive hold `lock_id` of `stored` (document `name`) as retired, with the
    /// revocation `marker`, if it is still as read.
    async fn retire_exclusive(
        &self,
        name: &str,
        stored: &Document,
        lock_id: &LockId,
        marker: Document,
    ) -> Result<bool, LockError> {
        let exclusive = stored.get_document("exclusive").map_err(corrupt)?;
        let mut retired = exclusive.clone();
        retired.insert("lockId", retired_id(lock_id));
        let filter = doc! {
            "resource": name,
            "exclusive.lockId": lock_id.as_str(),
            "exclusive.expiresAt": exclusive.get("expiresAt").cloned().unwrap_or(Bson::Null),
        };
        let written = self
            .bounded("revoke", async {
                self.collection
                    .update_one(
                        filter,
                        doc! { "$set": { "exclusive": retired, "revoked": marker } },
                    )
                    .await
                    .db()
            })
            .await?;
        Ok(written.matched_count > 0)
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

/// The lock id a retired hold is stored under: no caller's lock id, so none renews or unlocks it.
pub(super) fn retired_id(lock_id: &LockId) -> String {
    format!("{RETIRED}{lock_id}")
}

/// Whether a stored lock id is a retired hold's.
pub(crate) fn retired(stored_lock_id: &str) -> bool {
    stored_lock_id.starts_with(RETIRED)
}

const RETIRED: &str = "revoked:";

/// How many times a revocation reads an exclusive hold again after a renewal changed it between
/// its read and its write (renewals come a third of a lease apart, a round trip is far shorter).
const REVOKE_ROUNDS: usize = 3;

fn held_by(hold: &Document, shared: bool) -> Option<(LockId, RevokedHold)> {
    // Only this crate's holds carry a fence, and their ids are this crate's; a retired hold's
    // is not one, so it cannot be revoked twice.
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
