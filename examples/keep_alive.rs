//! Keep-alive, runnable: a worker actor holds a lock through a job longer than its lease while
//! the manager renews the lease for it, and when the hold is lost anyway the worker is told
//! (`LeaseLost`) and stops at once.
//!
//! ```text
//! scripts/with-mongo cargo run --example keep_alive
//! ```
//!
//! The lease is 1.5 s and keep-alive renews it every 0.5 s (TTL/3), so a rival manager asking
//! with `Lock` is refused again and again, long after the first lease would have ended. Then an
//! operator clears the lock by hand (deletes its document, as one might a lock thought stuck):
//! the next renewal (within 0.5 s) finds the hold gone, and the worker hears `LeaseLost` and
//! stops writing. Ends by itself after about 5 s; the exit status is 1 if anything above did not
//! happen.

use std::time::{Duration, SystemTime};

use actix::prelude::*;
use actix_mongo_lock::{
    Acquire, Close, KeepAlive, LeaseLost, Lock, LockConfig, LockError, LockGrant, LockManager,
    Status, Unlock,
};
use mongodb::bson::{doc, Document};
use tokio::sync::oneshot;

const REPORT: &str = "nightly-report";
const LEASE: Duration = Duration::from_millis(1500);
/// The job: this many pages, one every `PAGE`, 6 s in all, four times the lease.
const PAGES: u32 = 20;
const PAGE: Duration = Duration::from_millis(300);

/// Writes the report page by page while it holds the report's lock.
struct ReportWriter {
    manager: Addr<LockManager>,
    grant: Option<LockGrant>,
    pages: u32,
    /// Told how many pages were written, when the writer stops.
    stopped: Option<oneshot::Sender<u32>>,
}

impl Actor for ReportWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The manager renews the lease until Unlock, and tells this actor if the hold is lost.
        let request = Acquire::new(REPORT).keep_alive(KeepAlive::notify(ctx.address().recipient()));
        let manager = self.manager.clone();
        let acquire = async move { manager.send(request).await };
        ctx.wait(
            acquire
                .into_actor(self)
                .map(|answer, writer, ctx| match answer {
                    Ok(Ok(grant)) => {
                        println!("writer: holds {REPORT} (fence {}), kept alive", grant.fence);
                        writer.grant = Some(grant);
                        ctx.run_interval(PAGE, |writer, ctx| writer.write_page(ctx));
                    }
                    other => {
                        println!("writer: cannot take {REPORT}: {other:?}");
                        ctx.stop();
                    }
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.send(self.pages);
        }
    }
}

impl ReportWriter {
    fn write_page(&mut self, ctx: &mut Context<Self>) {
        self.pages += 1;
        if self.pages < PAGES {
            return;
        }
        // Done: Unlock ends the keep-alive too.
        if let Some(grant) = self.grant.take() {
            self.manager.do_send(Unlock::new(grant.lock_id));
        }
        println!("writer: finished all {PAGES} pages");
        ctx.stop();
    }
}

impl Handler<LeaseLost> for ReportWriter {
    type Result = ();

    fn handle(&mut self, lost: LeaseLost, ctx: &mut Context<Self>) {
        // Someone else may hold the report now: stop before writing another page.
        println!(
            "writer: LeaseLost for {} (fence {}, {:?}): stops after page {}",
            lost.resource_id, lost.fence, lost.reason, self.pages
        );
        self.grant = None;
        ctx.stop();
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("MONGODB_URI").map_err(|_| {
        "MONGODB_URI is not set: run `scripts/with-mongo cargo run --example keep_alive`"
    })?;
    let config = LockConfig::new("keep_alive").ttl(LEASE);
    let manager = LockManager::connect(&uri, config.clone()).await?;
    let rival = LockManager::connect(&uri, config.clone()).await?;

    let (stopped, writer_stopped) = oneshot::channel();
    ReportWriter {
        manager: manager.clone(),
        grant: None,
        pages: 0,
        stopped: Some(stopped),
    }
    .start();

    // Every 0.8 s for 3.2 s, twice the lease: the rival is refused each time.
    for _ in 0..4 {
        actix_rt::time::sleep(Duration::from_millis(800)).await;
        let status = rival.send(Status::new(REPORT)).await??;
        let ends_in = status
            .and_then(|s| s.expires_at)
            .and_then(|end| end.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        match rival.send(Lock::new(REPORT)).await? {
            Err(LockError::AlreadyLocked { .. }) => println!(
                "rival:  Lock refused; the lease was renewed and ends in {:.1} s",
                ends_in.as_secs_f64()
            ),
            other => return Err(format!("the rival's Lock answered {other:?}").into()),
        }
    }

    println!("operator: clears the lock on {REPORT} by hand");
    mongodb::Client::with_uri_str(&uri)
        .await?
        .database(&config.database)
        .collection::<Document>(&config.collection_name())
        .delete_one(doc! { "resource": format!("{}-{REPORT}", config.name) })
        .await?;

    // The next renewal, within 0.5 s, finds the hold gone; 5 s is a generous bound.
    let pages = actix_rt::time::timeout(Duration::from_secs(5), writer_stopped).await??;
    let taken = rival.send(Lock::new(REPORT)).await??;
    println!("rival:  Lock granted now: the report is free");
    rival.send(Unlock::new(taken.lock_id)).await??;
    manager.send(Close).await?;
    rival.send(Close).await?;
    if pages >= PAGES {
        return Err("the writer finished without hearing of the loss".into());
    }
    println!("the writer stopped after {pages} of {PAGES} pages: keep-alive told it of the loss");
    Ok(())
}
