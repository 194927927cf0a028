//! A history checker for the reliability suite: records every grant and release a test sees
//! and asserts that the lock manager kept mutual exclusion and monotonic fencing tokens.
//!
//! Lock managers under test run in many actors and tasks against a faulty network, so no test
//! can assert safety step by step. Instead each one records what its holders saw in a shared
//! [`History`] and calls [`History::assert_ok`] at the end.
//!
//! # What is recorded
//!
//! Only the client side is observable, so every event is recorded as a *window* of time that
//! contains the real (server-side) event:
//!
//! * a grant: `requested_at` (just before the lock request was sent) and `granted_at` (just
//!   after its reply granting the lock arrived). The server granted at some instant inside.
//! * a release by Unlock: `release_sent_at` and `released_at` (its reply, saying it released).
//!   The server removed the hold at some instant inside.
//! * `lease_expires_at`: the earliest instant the server may consider the lease expired. Record
//!   it conservatively: the lease length added to `requested_at` (the server stamped the lease
//!   no earlier than that), or the server's own expiry time. Recording it from `granted_at`
//!   can flag a legitimate takeover that happens up to one round trip "early".
//!   [`History::extended`] replaces it after a successful extension (same rule).
//! * `lost_at`: the holder learnt the hold was gone (an extension failed, or its Unlock
//!   answered that it released nothing) and stopped relying on it. For an Unlock that
//!   changed nothing, pass the time the Unlock was sent.
//!
//! # The rules `check` enforces, per resource
//!
//! A hold `h` is *certainly held* during `C(h) = [h.granted_at, h.certain_end)`, where
//! `certain_end = min(release_sent_at, lost_at, lease_expires_at)` (absent ones ignored): from
//! the moment its holder had the grant in hand until the first moment it stopped relying on it
//! or its lease could have expired.
//!
//! 1. **Overlap**: two holds whose certain intervals intersect (by more than the tolerance)
//!    violate mutual exclusion. This never flags a correct lock manager: the server grants a
//!    successor `S` only after the predecessor `P` is gone, i.e. after its release removed it
//!    (an instant no earlier than `P.release_sent_at`) or its lease expired (no earlier than
//!    `P.lease_expires_at`), and `S.granted_at` is later still. So `S.granted_at >=
//!    P.certain_end` and the intervals are disjoint, even when `S` was granted *before* `P`'s
//!    Unlock reply arrived (`S.granted_at < P.released_at` is legitimate). Conversely an
//!    intersection means that at one instant both holders had their grant in hand and neither
//!    had started releasing nor reached its lease's end: a definite double grant.
//! 2. **Duplicate fence**: two holds of one resource with the same fence.
//! 3. **Fence order**: if `A.granted_at < B.requested_at` (by more than the tolerance), A was
//!    certainly granted before B, so `A.fence < B.fence` is required. Holds whose grant windows
//!    overlap have no certain order and only need distinct fences (rule 2). Because a correct
//!    manager increments the fence at every grant, this is exact, and it also catches two
//!    overlapping holds granted out of fence order.
//!
//! 4. **Modes** ([`History::granted_mode`]): shared holds may overlap each other, so rule 1
//!    applies only to pairs with an exclusive hold in them; and with a limit
//!    ([`History::with_max_holders`]), more than that many shared holds of a resource certainly
//!    held at one instant is a violation (`TooManyHolders`, naming the hold that made one too
//!    many and one it overlapped). Rules 2 and 3 hold for every grant, shared ones too: each
//!    grant raises the fence.
//!
//! The tolerance ([`History::with_tolerance`], default zero) only absorbs clock jitter, e.g.
//! when lease expiries come from the server's clock rather than this process's.
//!
//! Times are `SystemTime`s so that server-reported expiries can be recorded as they are;
//! messages print them as seconds since the history was created, with that origin in unix
//! seconds.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One hold of a resource by a manager, as its holder saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRecord {
    pub manager: String,
    pub resource: String,
    pub fence: i64,
    /// Just before the lock request was sent.
    pub requested_at: SystemTime,
    /// Just after the reply granting the lock arrived.
    pub granted_at: SystemTime,
    /// Earliest instant the lease may be considered expired (see the module docs).
    pub lease_expires_at: SystemTime,
    /// Just before the Unlock that released this hold was sent.
    pub release_sent_at: Option<SystemTime>,
    /// Just after that Unlock's reply (saying it released) arrived.
    pub released_at: Option<SystemTime>,
    /// When the holder learnt the hold was lost (or sent an Unlock that changed nothing).
    pub lost_at: Option<SystemTime>,
    /// A shared hold: it may overlap other shared holds.
    pub shared: bool,
}

impl HoldRecord {
    /// Whether the holder learnt that it lost this hold.
    pub fn lost(&self) -> bool {
        self.lost_at.is_some()
    }

    /// The end of the interval during which this hold was certainly held:
    /// `min(release_sent_at, lost_at, lease_expires_at)`.
    pub fn certain_end(&self) -> SystemTime {
        [self.release_sent_at, self.lost_at]
            .into_iter()
            .flatten()
            .fold(self.lease_expires_at, |end, t| end.min(t))
    }
}

/// Index of a recorded hold, returned by [`History::granted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldId(pub usize);

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

struct State {
    tolerance: Duration,
    max_holders: Option<usize>,
    records: Vec<HoldRecord>,
}

/// A thread-safe, cloneable record of every hold a test saw. Clones share one history.
#[derive(Clone)]
pub struct History {
    origin: SystemTime,
    state: Arc<Mutex<State>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("History")
            .field("holds", &state.records.len())
            .field("tolerance", &state.tolerance)
            .finish()
    }
}

impl History {
    /// An empty history with zero tolerance.
    pub fn new() -> Self {
        History {
            origin: SystemTime::now(),
            state: Arc::new(Mutex::new(State {
                tolerance: Duration::ZERO,
                max_holders: None,
                records: Vec::new(),
            })),
        }
    }

    /// Sets the clock-jitter tolerance (for this history and all its clones): an overlap or a
    /// fence ordering is only flagged when it is certain by more than `tolerance`.
    pub fn with_tolerance(self, tolerance: Duration) -> Self {
        self.lock().tolerance = tolerance;
        self
    }

    /// Sets the most shared holds of one resource that may be certainly held at once (for
    /// this history and all its clones); none by default.
    pub fn with_max_holders(self, limit: usize) -> Self {
        self.lock().max_holders = Some(limit);
        self
    }

    // A panic in one recording task must not hide the history from the final check.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an exclusive grant; see the module docs for what each time means.
    pub fn granted(
        &self,
        manager: &str,
        resource: &str,
        fence: i64,
        requested_at: SystemTime,
        granted_at: SystemTime,
        lease_expires_at: SystemTime,
    ) -> HoldId {
        self.granted_mode(
            manager,
            resource,
            fence,
            requested_at,
            granted_at,
            lease_expires_at,
            false,
        )
    }

    /// Records a grant, shared if `shared` (rule 4), else exclusive.
    #[allow(clippy::too_many_arguments)]
    pub fn granted_mode(
        &self,
        manager: &str,
        resource: &str,
        fence: i64,
        requested_at: SystemTime,
        granted_at: SystemTime,
        lease_expires_at: SystemTime,
        shared: bool,
    ) -> HoldId {
        assert!(
            requested_at <= granted_at,
            "History::granted: {manager} on {resource:?} fence {fence}: \
             requested_at {requested_at:?} is after granted_at {granted_at:?}"
        );
        let record = HoldRecord {
            manager: manager.to_string(),
            resource: resource.to_string(),
            fence,
            requested_at,
            granted_at,
            lease_expires_at,
            release_sent_at: None,
            released_at: None,
            lost_at: None,
            shared,
        };
        tracing::trace!(?record, "history: granted");
        let mut state = self.lock();
        state.records.push(record);
        HoldId(state.records.len() - 1)
    }

    /// Records a successful lease extension: the lease now ends at `lease_expires_at`
    /// (recorded conservatively, from the extension request's send time).
    pub fn extended(&self, id: HoldId, lease_expires_at: SystemTime) {
        self.with_record(id, |r| r.lease_expires_at = lease_expires_at);
    }

    /// Records a release by Unlock whose reply said it released: sent at `sent_at`, reply
    /// received at `replied_at`.
    pub fn released(&self, id: HoldId, sent_at: SystemTime, replied_at: SystemTime) {
        assert!(
            sent_at <= replied_at,
            "History::released {id}: sent_at {sent_at:?} is after replied_at {replied_at:?}"
        );
        self.with_record(id, |r| {
            r.release_sent_at = Some(r.release_sent_at.map_or(sent_at, |t| t.min(sent_at)));
            r.released_at = Some(r.released_at.map_or(replied_at, |t| t.min(replied_at)));
        });
    }

    /// Records that the holder learnt at `at` that the hold was lost (or that its Unlock, sent
    /// at `at`, changed nothing). The earliest such time is kept.
    pub fn lost(&self, id: HoldId, at: SystemTime) {
        self.with_record(id, |r| {
            r.lost_at = Some(r.lost_at.map_or(at, |t| t.min(at)));
        });
    }

    fn with_record(&self, id: HoldId, f: impl FnOnce(&mut HoldRecord)) {
        let mut state = self.lock();
        let len = state.records.len();
        let record = state
            .records
            .get_mut(id.0)
            .unwrap_or_else(|| panic!("History: no hold {id} (only {len} recorded)"));
        f(record);
        tracing::trace!(%id, ?record, "history: updated");
    }

    /// A snapshot of every record, indexed by [`HoldId`].
    pub fn records(&self) -> Vec<HoldRecord> {
        self.lock().records.clone()
    }

    /// How many holds were recorded.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the rules in the module docs; returns every violation found.
    pub fn check(&self) -> Result<Summary, Violations> {
        let (tolerance, max_holders, records) = {
            let state = self.lock();
            (state.tolerance, state.max_holders, state.records.clone())
        };
        let mut by_resource: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            by_resource.entry(r.resource.as_str()).or_default().push(i);
        }
        let mut found: Vec<(ViolationKind, usize, usize)> = Vec::new();
        for holds in by_resource.values() {
            check_fences(&records, holds, tolerance, &mut found);
            check_overlaps(&records, holds, tolerance, &mut found);
            if let Some(limit) = max_holders {
                check_holders(&records, holds, tolerance, limit, &mut found);
            }
        }
        if !found.is_empty() {
            let list = found
                .into_iter()
                .map(|(kind, a, b)| Violation {
                    kind,
                    first: (HoldId(a), records[a].clone()),
                    second: (HoldId(b), records[b].clone()),
                })
                .collect();
            return Err(Violations {
                origin: self.origin,
                tolerance,
                holds: records.len(),
                list,
            });
        }
        let summary = Summary {
            holds: records.len(),
            resources: by_resource.len(),
            released: records.iter().filter(|r| r.released_at.is_some()).count(),
            lost: records.iter().filter(|r| r.lost()).count(),
            ran_out: records
                .iter()
                .filter(|r| r.released_at.is_none() && !r.lost())
                .count(),
            per_resource: by_resource
                .iter()
                .map(|(res, holds)| (res.to_string(), holds.len()))
                .collect(),
        };
        tracing::debug!(?summary, "history: mutual exclusion holds");
        Ok(summary)
    }

    /// [`Self::check`], panicking with every offending pair printed in full.
    #[track_caller]
    pub fn assert_ok(&self) -> Summary {
        match self.check() {
            Ok(summary) => summary,
            Err(violations) => panic!("{violations}"),
        }
    }
}

/// Rules 2 and 3: distinct fences, increasing in certain grant order.
fn check_fences(
    records: &[HoldRecord],
    holds: &[usize],
    tolerance: Duration,
    found: &mut Vec<(ViolationKind, usize, usize)>,
) {
    let mut first_with_fence: HashMap<i64, usize> = HashMap::new();
    for &i in holds {
        if let Some(&j) = first_with_fence.get(&records[i].fence) {
            found.push((ViolationKind::DuplicateFence, j, i));
        } else {
            first_with_fence.insert(records[i].fence, i);
        }
    }
    // Sweep B in request order; `done` walks holds in grant-reply order and tracks the highest
    // fence among those certainly granted before B was requested.
    let mut by_request = holds.to_vec();
    by_request.sort_by_key(|&i| (records[i].requested_at, i));
    let mut by_grant = holds.to_vec();
    by_grant.sort_by_key(|&i| (records[i].granted_at, i));
    let mut done = by_grant.iter().peekable();
    let mut highest: Option<usize> = None;
    for &b in &by_request {
        while let Some(&&a) = done.peek() {
            if records[a].granted_at + tolerance >= records[b].requested_at {
                break;
            }
            if highest.is_none_or(|h| records[a].fence > records[h].fence) {
                highest = Some(a);
            }
            done.next();
        }
        // Equal fences are already reported as duplicates.
        if let Some(a) = highest {
            if a != b && records[a].fence > records[b].fence {
                found.push((ViolationKind::FenceOrder, a, b));
            }
        }
    }
}

/// Rule 1: certain intervals of two holds must not intersect.
fn check_overlaps(
    records: &[HoldRecord],
    holds: &[usize],
    tolerance: Duration,
    found: &mut Vec<(ViolationKind, usize, usize)>,
) {
    let mut by_grant = holds.to_vec();
    by_grant.sort_by_key(|&i| (records[i].granted_at, i));
    for (n, &a) in by_grant.iter().enumerate() {
        let a_end = records[a].certain_end();
        for &b in &by_grant[n + 1..] {
            // b.granted_at >= a.granted_at, so the intersection starts at b.granted_at.
            let start = records[b].granted_at + tolerance;
            if start >= a_end {
                break;
            }
            let both_shared = records[a].shared && records[b].shared;
            if start < records[b].certain_end() && !both_shared {
                found.push((ViolationKind::Overlap, a, b));
            }
        }
    }
}

/// Rule 4's limit: at no instant more than `limit` shared holds certainly held. Sweeps the
/// shared holds in grant order, keeping those still certainly held (by more than the
/// tolerance) at each grant.
fn check_holders(
    records: &[HoldRecord],
    holds: &[usize],
    tolerance: Duration,
    limit: usize,
    found: &mut Vec<(ViolationKind, usize, usize)>,
) {
    let mut by_grant: Vec<usize> = holds
        .iter()
        .copied()
        .filter(|&i| records[i].shared)
        .collect();
    by_grant.sort_by_key(|&i| (records[i].granted_at, i));
    let mut live: Vec<usize> = Vec::new();
    for &b in &by_grant {
        let start = records[b].granted_at + tolerance;
        live.retain(|&a| records[a].certain_end() > start);
        if start < records[b].certain_end() && live.len() >= limit {
            found.push((ViolationKind::TooManyHolders, live[0], b));
        }
        live.push(b);
    }
}

/// Totals of a history that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub holds: usize,
    pub resources: usize,
    /// Holds ended by an Unlock that released.
    pub released: usize,
    /// Holds whose holder learnt they were lost.
    pub lost: usize,
    /// Holds neither released nor lost (they ran until their lease's end).
    pub ran_out: usize,
    /// Holds per resource.
    pub per_resource: BTreeMap<String, usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// Both holds were certainly held at the same time.
    Overlap,
    /// Both holds have the same fence.
    DuplicateFence,
    /// `first` was certainly granted before `second` but has a higher fence.
    FenceOrder,
    /// `second` made one shared hold more than the limit certainly held at once, `first`
    /// among them.
    TooManyHolders,
}

/// One offending pair of holds of the same resource.
#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: ViolationKind,
    pub first: (HoldId, HoldRecord),
    pub second: (HoldId, HoldRecord),
}

/// Every violation [`History::check`] found.
#[derive(Clone, Debug)]
pub struct Violations {
    /// The instant printed times are relative to.
    pub origin: SystemTime,
    pub tolerance: Duration,
    pub holds: usize,
    pub list: Vec<Violation>,
}

impl Violations {
    /// Whether any violation is of this kind.
    pub fn has(&self, kind: ViolationKind) -> bool {
        self.list.iter().any(|v| v.kind == kind)
    }
}

/// Prints `t` as signed seconds since `origin`.
struct Rel(SystemTime, SystemTime);

impl fmt::Display for Rel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, origin) = (self.0, self.1);
        match t.duration_since(origin) {
            Ok(d) => write!(f, "+{:.6}s", d.as_secs_f64()),
            Err(e) => write!(f, "-{:.6}s", e.duration().as_secs_f64()),
        }
    }
}

struct OptRel(Option<SystemTime>, SystemTime);

impl fmt::Display for OptRel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(t) => Rel(t, self.1).fmt(f),
            None => f.write_str("-"),
        }
    }
}

fn write_record(
    f: &mut fmt::Formatter<'_>,
    id: HoldId,
    r: &HoldRecord,
    origin: SystemTime,
) -> fmt::Result {
    writeln!(
        f,
        "    hold {id}: manager={:?} resource={:?} shared={} fence={} requested_at={} granted_at={} \
         lease_expires_at={} release_sent_at={} released_at={} lost_at={} \
         => certainly held [{}, {})",
        r.manager,
        r.resource,
        r.shared,
        r.fence,
        Rel(r.requested_at, origin),
        Rel(r.granted_at, origin),
        Rel(r.lease_expires_at, origin),
        OptRel(r.release_sent_at, origin),
        OptRel(r.released_at, origin),
        OptRel(r.lost_at, origin),
        Rel(r.granted_at, origin),
        Rel(r.certain_end(), origin),
    )
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 50;
        let origin_unix = self
            .origin
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        writeln!(
            f,
            "lock history violated mutual exclusion: {} violation(s) among {} holds \
             (tolerance {:?}; times are seconds since unix {origin_unix:.6})",
            self.list.len(),
            self.holds,
            self.tolerance,
        )?;
        for v in self.list.iter().take(SHOWN) {
            let ((a, ra), (b, rb)) = (&v.first, &v.second);
            let what = match v.kind {
                ViolationKind::Overlap => format!(
                    "holds {a} and {b} of {:?} were both certainly held during [{}, {})",
                    ra.resource,
                    Rel(ra.granted_at.max(rb.granted_at), self.origin),
                    Rel(ra.certain_end().min(rb.certain_end()), self.origin),
                ),
                ViolationKind::DuplicateFence => format!(
                    "holds {a} and {b} of {:?} have the same fence {}",
                    ra.resource, ra.fence
                ),
                ViolationKind::TooManyHolders => format!(
                    "hold {b} of {:?} was the shared hold one over the limit, beside {a} and \
                     others, from {}",
                    rb.resource,
                    Rel(rb.granted_at, self.origin),
                ),
                ViolationKind::FenceOrder => format!(
                    "hold {a} of {:?} was granted before {b} was requested, \
                     but its fence {} is not below {}",
                    ra.resource, ra.fence, rb.fence
                ),
            };
            writeln!(f, "  {:?}: {what}", v.kind)?;
            write_record(f, *a, ra, self.origin)?;
            write_record(f, *b, rb, self.origin)?;
        }
        if self.list.len() > SHOWN {
            writeln!(f, "  ... and {} more", self.list.len() - SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}
