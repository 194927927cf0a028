//! `amlock`: an operator's view of a lock family, and fenced revocation.
//!
//! ```text
//! amlock --family invoices list                      # every hold, and who waits
//! amlock --family invoices status invoice-42
//! amlock --family invoices revoke invoice-42 --fence 17 --reason "stuck (OPS-19)"
//! amlock --family invoices watch                     # grants, releases, the line, live
//! ```
//!
//! Against `--uri`, else `MONGODB_URI`; `--json` for one JSON document per answer (per event,
//! for `watch`). Exit codes: 0 done, 1 an error (the database unreachable, bad input), 2 bad
//! usage, 3 `revoke` found no live hold with that fence (nothing was changed).
//!
//! It talks through a `LockManager` of the family, as any application does: it reads with
//! `ListHolds`/`Status` and revokes with `Revoke`. The manager it starts takes no hold, so
//! starting it writes nothing but the family's indexes (if missing); it closes before the tool
//! exits. Built with the `cli` feature: `cargo install actix-mongo-lock --features cli`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use actix::Addr;
use actix_mongo_lock::{
    Close, HoldStatus, ListHolds, LockConfig, LockError, LockManager, Revoke, RevokeOutcome, Status,
};
use clap::{Parser, Subcommand};
use mongodb::bson::Document;
use mongodb::change_stream::event::ChangeStreamEvent;
use mongodb::change_stream::ChangeStream;

/// See and clear the holds of an actix-mongo-lock lock family.
#[derive(Debug, Parser)]
#[command(name = "amlock", version)]
struct Cli {
    /// The MongoDB URI (default: the MONGODB_URI environment variable).
    #[arg(long, global = true)]
    uri: Option<String>,
    /// The lock family: `LockConfig::new(NAME)` (its collection is NAME_locks).
    #[arg(long, global = true)]
    family: Option<String>,
    /// The database of the lock family.
    #[arg(long, global = true, default_value = "locks")]
    database: String,
    /// Answer in JSON, one document per line.
    #[arg(long, global = true)]
    json: bool,
    /// How long one request to the database may take, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    request_timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every hold of the family (live, and expired ones not purged yet), with its line.
    List,
    /// The hold of one resource, and the managers waiting for it.
    Status {
        /// The resource id, as the application names it.
        resource: String,
    },
    /// End exactly the hold of RESOURCE that drew FENCE; a stale fence changes nothing.
    Revoke {
        /// The resource id.
        resource: String,
        /// The fence of the hold to end, as `list` or `status` show it.
        #[arg(long)]
        fence: i64,
        /// Why, told to the holder (its keep-alive's `LeaseLost::revoked_because`).
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
    /// Print each change of the family's holds and lines as it is seen, until stopped.
    Watch {
        /// How often to look, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
        /// Stop after this many seconds (default: never).
        #[arg(long)]
        for_s: Option<f64>,
    },
}

/// The exit code of a revocation that found no live hold with its fence.
const NOT_HELD: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let system = actix_rt::System::new();
    system.block_on(async move {
        match run(cli).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("amlock: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let uri = cli
        .uri
        .clone()
        .or_else(|| std::env::var("MONGODB_URI").ok())
        .ok_or("no database: give --uri or set MONGODB_URI")?;
    let family = cli
        .family
        .clone()
        .ok_or("no lock family: give --family NAME")?;
    let config = LockConfig::new(family)
        .database(cli.database.clone())
        .owner("amlock")
        .request_timeout(Duration::from_millis(cli.request_timeout_ms));
    let manager = LockManager::connect(&uri, config.clone())
        .await
        .map_err(|e| format!("cannot start: {e}"))?;
    let answer = command(&cli, &manager, &uri, &config).await;
    manager.send(Close).await.ok();
    answer.map_err(|e| e.to_string())
}

async fn command(
    cli: &Cli,
    manager: &Addr<LockManager>,
    uri: &str,
    config: &LockConfig,
) -> Result<ExitCode, LockError> {
    let asked = |e: actix::MailboxError| LockError::from(e);
    match &cli.command {
        Command::List => {
            let holds = manager.send(ListHolds).await.map_err(asked)??;
            if cli.json {
                println!("{}", json(&holds));
            } else {
                print_table(&holds);
            }
        }
        Command::Status { resource } => {
            let hold = manager
                .send(Status::new(resource.clone()))
                .await
                .map_err(asked)??;
            match (&hold, cli.json) {
                (_, true) => println!("{}", json(&hold)),
                (Some(hold), false) => print_table(std::slice::from_ref(hold)),
                (None, false) => println!("{resource}: not held"),
            }
        }
        Command::Revoke {
            resource,
            fence,
            reason,
        } => {
            let outcome = manager
                .send(Revoke::new(resource.clone(), *fence).reason(reason.clone()))
                .await
                .map_err(asked)??;
            if cli.json {
                println!("{}", json(&outcome));
            }
            return Ok(match outcome {
                RevokeOutcome::Revoked {
                    owner,
                    host,
                    shared,
                    ..
                } => {
                    if !cli.json {
                        let mode = if shared { "shared" } else { "exclusive" };
                        println!(
                            "{resource}: revoked the {mode} hold with fence {fence} of {}@{}; \
                             it ends with its lease, its holder told first",
                            owner.as_deref().unwrap_or("?"),
                            host.as_deref().unwrap_or("?")
                        );
                    }
                    ExitCode::SUCCESS
                }
                _ => {
                    if !cli.json {
                        println!("{resource}: no live hold with fence {fence}; nothing changed");
                    }
                    ExitCode::from(NOT_HELD)
                }
            });
        }
        Command::Watch { every_ms, for_s } => {
            let changes = change_stream(uri, config).await;
            let every = Duration::from_millis(*every_ms);
            watch(cli, manager, changes, every, *for_s).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A change stream of the lock family's collection.
type Changes = ChangeStream<ChangeStreamEvent<Document>>;

/// Changes of the lock family's collection, where the server has change streams (a replica
/// set): `watch` then looks as soon as a write lands. `None` on a server without them (a
/// standalone, nx-27017) or if the stream does not open within `request_timeout`: `watch`
/// then looks every `--every-ms` only.
async fn change_stream(uri: &str, config: &LockConfig) -> Option<Changes> {
    let open = async {
        let client = mongodb::Client::with_uri_str(uri).await.ok()?;
        client
            .database(&config.database)
            .collection::<Document>(&config.collection_name())
            .watch()
            .await
            .ok()
    };
    tokio::time::timeout(config.request_timeout, open)
        .await
        .ok()
        .flatten()
}

/// Prints what changed between two looks: holds granted, renewed and released, and lines that
/// moved, one line each. Looks every `every`, and at once after each change the stream (if
/// any) tells of; lease ends are no writes, so only the looks see them.
async fn watch(
    cli: &Cli,
    manager: &Addr<LockManager>,
    mut changes: Option<Changes>,
    every: Duration,
    for_s: Option<f64>,
) -> Result<(), LockError> {
    use futures::StreamExt;
    let until = for_s.map(|s| std::time::Instant::now() + Duration::from_secs_f64(s));
    let mut seen: BTreeMap<(String, i64), HoldStatus> = BTreeMap::new();
    let mut first = true;
    loop {
        let holds = manager.send(ListHolds).await.map_err(LockError::from)??;
        let now: BTreeMap<(String, i64), HoldStatus> = holds
            .into_iter()
            .map(|hold| ((hold.resource_id.to_string(), hold.fence), hold))
            .collect();
        for (key, hold) in &now {
            let event = match seen.get(key) {
                None if first => Some("held"),
                None => Some("granted"),
                Some(old) if old.live && !hold.live => Some("expired"),
                Some(old) if old.renewed_at != hold.renewed_at => Some("renewed"),
                Some(old) if old.line != hold.line => Some("line"),
                Some(_) => None,
            };
            if let Some(event) = event {
                print_event(cli, event, hold);
            }
        }
        for (key, hold) in &seen {
            if !now.contains_key(key) {
                print_event(cli, "released", hold);
            }
        }
        seen = now;
        first = false;
        if until.is_some_and(|until| std::time::Instant::now() >= until) {
            return Ok(());
        }
        let pause = until.map_or(every, |until| {
            every.min(until.saturating_duration_since(std::time::Instant::now()))
        });
        match changes.as_mut() {
            Some(stream) => {
                tokio::select! {
                    event = stream.next() => if !matches!(event, Some(Ok(_))) {
                        // The stream ended or failed: looking every `every` goes on.
                        changes = None;
                    },
                    () = tokio::time::sleep(pause) => {}
                }
            }
            None => tokio::time::sleep(pause).await,
        }
    }
}

fn print_event(cli: &Cli, event: &str, hold: &HoldStatus) {
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "event": event, "at": rfc3339(SystemTime::now()), "hold": hold })
        );
    } else {
        println!(
            "{} {event:<8} {} fence {} {} {}",
            rfc3339(SystemTime::now()),
            hold.resource_id,
            hold.fence,
            holder(hold),
            waiting(hold)
        );
    }
}

fn print_table(holds: &[HoldStatus]) {
    println!(
        "{:<24} {:>6} {:<9} {:<7} {:<28} {:<24} WAITING",
        "RESOURCE", "FENCE", "MODE", "LIVE", "HOLDER", "EXPIRES"
    );
    for hold in holds {
        println!(
            "{:<24} {:>6} {:<9} {:<7} {:<28} {:<24} {}",
            hold.resource_id.to_string(),
            hold.fence,
            if hold.shared { "shared" } else { "exclusive" },
            match (hold.live, hold.revoked) {
                (true, true) => "revoked",
                (true, false) => "yes",
                (false, _) => "no",
            },
            holder(hold),
            hold.expires_at.map_or("never".to_owned(), rfc3339),
            waiting(hold)
        );
    }
}

fn holder(hold: &HoldStatus) -> String {
    format!(
        "{}@{}",
        hold.owner.as_deref().unwrap_or("?"),
        hold.host.as_deref().unwrap_or("?")
    )
}

/// The line, first first: the manager whose turn it is, then the others, each with the time
/// it took its place where the line records it.
fn waiting(hold: &HoldStatus) -> String {
    let places: Vec<String> = hold
        .line
        .turn
        .iter()
        .chain(&hold.line.waiting)
        .map(|manager| match hold.line.since.get(manager) {
            Some(since) => format!("{manager} (since {})", rfc3339(*since)),
            None => manager.clone(),
        })
        .collect();
    if places.is_empty() {
        "-".to_owned()
    } else {
        places.join(", ")
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `t` as RFC 3339 in UTC to the millisecond, as the library's serde output writes times.
fn rfc3339(t: SystemTime) -> String {
    actix_mongo_lock::rfc3339(t)
}
