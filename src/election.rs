//! Leader election on a lock manager: of all the candidates for a named office, across every
//! process of a lock family, one leads at a time, and the term it leads in is the grant's fence.
//!
//! An [`Elector`] campaigns for an office on behalf of an application actor (the candidate):
//! it waits in line for the office (a resource of the lock family, held exclusively) with
//! [`Acquire`] under keep-alive, and tells the candidate [`Elected`] once granted and
//! [`Deposed`] when the leadership ends: the lease was lost, the elector resigned, or the
//! manager is closing. Everything rides on the lock's own guarantees: at most one live hold,
//! a fence that rises with every grant (the term: a downstream store that refuses lower fences
//! refuses a deposed leader's late writes), keep-alive that tells a loss while the lease still
//! stands, and the line of waiting managers, so a [`Resign`] (an `Unlock`) wakes the next
//! candidate in line at once, across processes.
//!
//! What the candidate is told, and when:
//! - `Elected { term }` after the grant. No other candidate is told `Elected` while this
//!   leadership's lease stands.
//! - `Deposed { reason }` before anyone else can be elected: on [`Resign`] before the release is
//!   sent; with [`DeposedReason::Closing`] as the manager stops granting (`StopGranting`, or
//!   `Close`, which stops granting first), before it releases;
//!   with [`DeposedReason::LeaseLost`] when keep-alive tells the loss, while the lease still
//!   stands (`Unreachable`) or once the server answered that the hold is gone (`Gone`: it had
//!   expired, a stall longer than the lease). A candidate killed with its process is told
//!   nothing; its successor is elected once its lease ends.
//!
//! After `Deposed` for a lost lease the elector campaigns again by itself; after `Resign` it
//! waits for [`Campaign`]; after `Closing` it stops. [`current_leader`] and [`Observer`] show
//! any instance, candidate or not, who leads (owner, host, term, since), or that nobody does.

use std::time::{Duration, SystemTime};

use actix::dev::ToEnvelope;
use actix::prelude::*;

use crate::error::LockError;
use crate::manager::LockManager;
use crate::messages::{
    Acquire, KeepAlive, LeaseLost, LockGrant, LostReason, ResourceId, Status, Unlock,
};

/// How long each of an elector's `Acquire`s waits before the next one takes its place: the
/// campaign itself never ends while the office is held elsewhere.
pub const DEFAULT_CAMPAIGN_ROUND: Duration = Duration::from_secs(30);

/// How long an elector pauses before campaigning again after an error (the database gone).
const AFTER_ERROR: Duration = Duration::from_secs(1);

/// How often an [`Observer`] looks at the office by default.
pub const DEFAULT_OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// Told to the candidate when its elector was granted the office.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub struct Elected {
    /// The office.
    pub office: String,
    /// The term: the grant's fence. Every later leadership of the office has a higher one.
    pub term: i64,
    /// When the leadership began (the grant, server clock).
    pub since: SystemTime,
    /// When its first lease ends; keep-alive renews it while the elector leads.
    pub lease_until: SystemTime,
}

/// Told to the candidate when its leadership ended, before anyone else can be elected (but for
/// a leader whose process was killed, which is told nothing).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub struct Deposed {
    /// The office.
    pub office: String,
    /// The term that ended.
    pub term: i64,
    /// Why.
    pub reason: DeposedReason,
}

/// Why a leadership ended. New reasons may come: match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeposedReason {
    /// Keep-alive lost the lease: the database unreachable (told while the lease still stands)
    /// or the hold gone. The elector campaigns again.
    LeaseLost(LostReason),
    /// [`Resign`]: the release follows. The elector waits for [`Campaign`].
    Resigned,
    /// The manager stops granting (`StopGranting`) or closes: the office is released at once
    /// (at `StopGranting` by keep-alive, at `Close` by `Close`). The elector stops.
    Closing,
}

/// Give up the office: the candidate is told `Deposed { Resigned }`, then the hold is released,
/// which wakes the next candidate in line at once. Answers whether the elector was leading
/// (`Ok(false)` while it was only campaigning: it stops, and a grant still on its way is
/// released on arrival). The elector then waits for [`Campaign`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<bool, LockError>")]
pub struct Resign;

/// Campaign again after a [`Resign`]; nothing happens while campaigning or leading.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Campaign;

/// The term this elector leads in, or `None` if it does not lead.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<i64>")]
pub struct CurrentTerm;

/// Where an elector stands.
#[derive(Debug)]
enum Stand {
    Campaigning,
    Leading(LockGrant),
    Resigned,
    Stopped,
}

/// Campaigns for an office on one lock manager, for one candidate actor; see the
/// [module](self). Start it as any actor: it campaigns from its start.
///
/// ```no_run
/// # use actix::prelude::*;
/// use actix_mongo_lock::election::{Deposed, Elected, Elector};
///
/// struct Scheduler;
/// impl Actor for Scheduler {
///     type Context = Context<Self>;
/// }
/// impl Handler<Elected> for Scheduler {
///     type Result = ();
///     fn handle(&mut self, elected: Elected, _: &mut Context<Self>) {
///         // Run the jobs; write downstream with elected.term as the fence.
///     }
/// }
/// impl Handler<Deposed> for Scheduler {
///     type Result = ();
///     fn handle(&mut self, deposed: Deposed, _: &mut Context<Self>) {
///         // Stop running the jobs now.
///     }
/// }
///
/// # async fn demo(manager: Addr<actix_mongo_lock::LockManager>) -> Result<(), actix_mongo_lock::LockError> {
/// let scheduler = Scheduler.start();
/// let elector = Elector::new(manager, "nightly-jobs", &scheduler)?.start();
/// # let _ = elector; Ok(()) }
/// ```
pub struct Elector {
    manager: Addr<LockManager>,
    office: ResourceId,
    elected: Recipient<Elected>,
    deposed: Recipient<Deposed>,
    ttl: Option<Duration>,
    round: Duration,
    stand: Stand,
    /// Counts campaigns: the answer of an earlier one is stale.
    campaigns: u64,
}

impl Elector {
    /// An elector for `office` on `manager`, telling `candidate` of its leadership. Answers
    /// `InvalidResourceId` for an office that is no valid resource id, before anything is sent.
    pub fn new<A>(
        manager: Addr<LockManager>,
        office: impl Into<String>,
        candidate: &Addr<A>,
    ) -> Result<Self, LockError>
    where
        A: Actor + Handler<Elected> + Handler<Deposed>,
        A::Context: ToEnvelope<A, Elected> + ToEnvelope<A, Deposed>,
    {
        Ok(Elector {
            manager,
            office: ResourceId::new(office)?,
            elected: candidate.clone().recipient(),
            deposed: candidate.clone().recipient(),
            ttl: None,
            round: DEFAULT_CAMPAIGN_ROUND,
            stand: Stand::Campaigning,
            campaigns: 0,
        })
    }

    /// The lease of a leadership (default: the manager's `LockConfig::ttl`): how long after a
    /// leader's process died its successor is elected, at most.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long each `Acquire` of the campaign waits ([`DEFAULT_CAMPAIGN_ROUND`]).
    pub fn round(mut self, round: Duration) -> Self {
        self.round = round;
        self
    }

    fn campaign(&mut self, ctx: &mut Context<Self>) {
        self.campaigns += 1;
        let campaign = self.campaigns;
        self.stand = Stand::Campaigning;
        let mut acquire = Acquire::new(self.office.as_str())
            .timeout(self.round)
            .keep_alive(KeepAlive::notify(ctx.address().recipient()).end_when_granting_stops());
        if let Some(ttl) = self.ttl {
            acquire = acquire.ttl(ttl);
        }
        tracing::debug!(office = %self.office, campaign, "campaigning");
        self.manager
            .send(acquire)
            .into_actor(self)
            .map(move |answer, elector, ctx| elector.answered(campaign, answer, ctx))
            .spawn(ctx);
    }

    fn answered(
        &mut self,
        campaign: u64,
        answer: Result<Result<LockGrant, LockError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        let current = campaign == self.campaigns && matches!(self.stand, Stand::Campaigning);
        match answer {
            Ok(Ok(grant)) if current => {
                tracing::info!(office = %self.office, term = grant.fence, "elected");
                self.elected.do_send(Elected {
                    office: self.office.to_string(),
                    term: grant.fence,
                    since: grant.granted_at,
                    lease_until: grant.expires_at,
                });
                self.stand = Stand::Leading(grant);
            }
            Ok(Ok(grant)) => {
                // Granted after a Resign: nobody is told, and it is given back at once.
                tracing::debug!(office = %self.office, "granted after resigning; releasing");
                self.manager.do_send(Unlock::new(grant.lock_id));
            }
            Ok(Err(_)) if !current => {}
            Ok(Err(LockError::Closing | LockError::ManagerStopped)) | Err(_) => {
                tracing::debug!(office = %self.office, "the manager is closing; campaign over");
                self.stand = Stand::Stopped;
            }
            Ok(Err(LockError::AcquireTimeout { .. } | LockError::AcquireMaxRetries { .. })) => {
                self.campaign(ctx);
            }
            Ok(Err(e)) => {
                tracing::warn!(office = %self.office, error = %e, "campaign failed; again soon");
                ctx.run_later(AFTER_ERROR, move |elector, ctx| {
                    if elector.campaigns == campaign && matches!(elector.stand, Stand::Campaigning)
                    {
                        elector.campaign(ctx);
                    }
                });
            }
        }
    }

    fn depose(&self, grant: &LockGrant, reason: DeposedReason) {
        tracing::info!(office = %self.office, term = grant.fence, ?reason, "deposed");
        self.deposed.do_send(Deposed {
            office: self.office.to_string(),
            term: grant.fence,
            reason,
        });
    }
}

impl Actor for Elector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.campaign(ctx);
    }

    /// Stopped while leading: resigns, as [`Resign`] does. While it leads or campaigns, the
    /// manager holds an address of it (the keep-alive's and the Acquire's), so dropping every
    /// `Addr` of yours does not stop it: send [`Resign`].
    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if let Stand::Leading(grant) = std::mem::replace(&mut self.stand, Stand::Stopped) {
            self.depose(&grant, DeposedReason::Resigned);
            self.manager.do_send(Unlock::new(grant.lock_id));
        }
        Running::Stop
    }
}

impl Handler<LeaseLost> for Elector {
    type Result = ();

    fn handle(&mut self, lost: LeaseLost, ctx: &mut Context<Self>) {
        let Stand::Leading(grant) = &self.stand else {
            return;
        };
        if grant.lock_id != lost.lock_id {
            return;
        }
        let grant = grant.clone();
        if lost.reason == LostReason::Closing {
            self.depose(&grant, DeposedReason::Closing);
            self.stand = Stand::Stopped;
        } else {
            self.depose(&grant, DeposedReason::LeaseLost(lost.reason));
            self.campaign(ctx);
        }
    }
}

impl Handler<Resign> for Elector {
    type Result = ResponseFuture<Result<bool, LockError>>;

    fn handle(&mut self, _: Resign, _: &mut Context<Self>) -> Self::Result {
        match std::mem::replace(&mut self.stand, Stand::Resigned) {
            Stand::Leading(grant) => {
                self.depose(&grant, DeposedReason::Resigned);
                let unlock = self.manager.send(Unlock::new(grant.lock_id));
                Box::pin(async move {
                    match unlock.await {
                        Ok(Ok(_)) => Ok(true),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(LockError::ManagerStopped),
                    }
                })
            }
            Stand::Stopped => {
                self.stand = Stand::Stopped;
                Box::pin(async { Ok(false) })
            }
            Stand::Campaigning | Stand::Resigned => Box::pin(async { Ok(false) }),
        }
    }
}

impl Handler<Campaign> for Elector {
    type Result = ();

    fn handle(&mut self, _: Campaign, ctx: &mut Context<Self>) {
        if matches!(self.stand, Stand::Resigned) {
            self.campaign(ctx);
        }
    }
}

impl Handler<CurrentTerm> for Elector {
    type Result = Option<i64>;

    fn handle(&mut self, _: CurrentTerm, _: &mut Context<Self>) -> Option<i64> {
        match &self.stand {
            Stand::Leading(grant) => Some(grant.fence),
            _ => None,
        }
    }
}

/// Who leads an office, as the lock collection shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The leader's `LockConfig::owner`.
    pub owner: Option<String>,
    /// The leader's `LockConfig::host`.
    pub host: Option<String>,
    /// Its term (the grant's fence).
    pub term: i64,
    /// When its leadership began (server clock).
    pub since: Option<SystemTime>,
    /// When its lease ends unless renewed (server clock).
    pub until: Option<SystemTime>,
}

/// Who leads `office` now, through any manager of the lock family: `None` when nobody does
/// (never elected, resigned, or its lease ended). One `Status`: one request, bounded by
/// `request_timeout`.
pub async fn current_leader(
    manager: &Addr<LockManager>,
    office: &str,
) -> Result<Option<Leader>, LockError> {
    let status = manager
        .send(Status::new(office))
        .await
        .map_err(|_| LockError::ManagerStopped)??;
    Ok(status
        .filter(|hold| hold.live && !hold.shared)
        .map(|hold| Leader {
            owner: hold.owner,
            host: hold.host,
            term: hold.fence,
            since: hold.created_at,
            until: hold.expires_at,
        }))
}

/// Told to an [`Observer`]'s recipient when the office's leadership changed: a new term, or
/// nobody leading.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub struct LeaderChanged {
    /// The office.
    pub office: String,
    /// Who leads now; `None`: nobody.
    pub leader: Option<Leader>,
}

/// Watches an office and tells its recipient [`LeaderChanged`] at its first look and at every
/// change of term or of "nobody leads" after. It looks every [`DEFAULT_OBSERVE_EVERY`] (one
/// request each, [`every`](Self::every) to change it), so a change is seen within that plus
/// one request; a killed leader shows as "nobody" once its lease has ended. Lookups that fail
/// are logged and tell nothing.
pub struct Observer {
    manager: Addr<LockManager>,
    office: ResourceId,
    recipient: Recipient<LeaderChanged>,
    every: Duration,
    /// The term last told (`Some(None)`: nobody), `None` before the first look.
    told: Option<Option<i64>>,
}

impl Observer {
    /// An observer of `office` on `manager`; `InvalidResourceId` for an office that is no valid
    /// resource id.
    pub fn new(
        manager: Addr<LockManager>,
        office: impl Into<String>,
        recipient: Recipient<LeaderChanged>,
    ) -> Result<Self, LockError> {
        Ok(Observer {
            manager,
            office: ResourceId::new(office)?,
            recipient,
            every: DEFAULT_OBSERVE_EVERY,
            told: None,
        })
    }

    /// Look every `every` instead.
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    fn look(&mut self, ctx: &mut Context<Self>) {
        let manager = self.manager.clone();
        let office = self.office.to_string();
        async move { current_leader(&manager, &office).await }
            .into_actor(self)
            .map(|looked, observer, _| match looked {
                Ok(leader) => {
                    let term = leader.as_ref().map(|leader| leader.term);
                    if observer.told != Some(term) {
                        observer.told = Some(term);
                        observer.recipient.do_send(LeaderChanged {
                            office: observer.office.to_string(),
                            leader,
                        });
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not look at the office"),
            })
            .wait(ctx);
    }
}

impl Actor for Observer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.look(ctx);
        ctx.run_interval(self.every, |observer, ctx| observer.look(ctx));
    }
}
