//! Fencing, runnable: a holder pauses past its lease, a second holder takes the lock over, and
//! the downstream store refuses the first holder's late write because its fence is lower.
//!
//! ```text
//! scripts/with-mongo cargo run --example fencing
//! ```
//!
//! The store keeps, per record, the fence of its last writer (0 when created), and accepts a
//! write only if the writer's fence is at least that: one conditional update, atomic in MongoDB.

use std::time::Duration;

use actix_mongo_lock::{Acquire, Close, LockConfig, LockGrant, LockManager, Unlock};
use mongodb::bson::{doc, Document};
use mongodb::Collection;

/// Writes `status` to invoice 42 if `grant` is not stale; returns whether the store took it.
async fn write_invoice(
    invoices: &Collection<Document>,
    grant: &LockGrant,
    status: &str,
) -> mongodb::error::Result<bool> {
    let written = invoices
        .update_one(
            doc! { "_id": 42, "fence": { "$lte": grant.fence } },
            doc! { "$set": { "status": status, "fence": grant.fence } },
        )
        .await?;
    Ok(written.matched_count == 1)
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("MONGODB_URI").map_err(|_| {
        "MONGODB_URI is not set: run `scripts/with-mongo cargo run --example fencing`"
    })?;
    let client = mongodb::Client::with_uri_str(&uri).await?;
    let family = format!("fencing{}", std::process::id());
    let invoices = client
        .database("fencing_example")
        .collection::<Document>(&format!("{family}_invoices"));
    invoices
        .insert_one(doc! { "_id": 42, "status": "open", "fence": 0_i64 })
        .await?;

    // Short leases, so the pause below outlasts one.
    let config = LockConfig::new(&family).ttl(Duration::from_secs(1));
    let slow = LockManager::connect(&uri, config.clone()).await?;
    let fast = LockManager::connect(&uri, config).await?;

    let first = slow.send(Acquire::new("invoice-42")).await??;
    println!("slow worker holds invoice 42 with fence {}", first.fence);
    println!("slow worker pauses for 2.5 s (a GC pause, a stalled VM...), past its 1 s lease");
    actix_rt::time::sleep(Duration::from_millis(2500)).await;

    let second = fast
        .send(Acquire::new("invoice-42").timeout(Duration::from_secs(5)))
        .await??;
    println!(
        "fast worker takes invoice 42 over with fence {}",
        second.fence
    );
    let accepted = write_invoice(&invoices, &second, "paid by the fast worker").await?;
    println!("fast worker writes \"paid\": accepted = {accepted}");

    let stale = write_invoice(&invoices, &first, "cancelled by the slow worker").await?;
    println!(
        "slow worker wakes and writes \"cancelled\" with fence {}: accepted = {stale}",
        first.fence
    );
    let late = slow.send(Unlock::new(first.lock_id)).await??;
    println!("slow worker's Unlock: {late:?} (its lease had ended)");

    let record = invoices
        .find_one(doc! { "_id": 42 })
        .await?
        .unwrap_or_default();
    println!("invoice 42 now: {record}");
    fast.send(Unlock::new(second.lock_id)).await??;
    slow.send(Close).await?;
    fast.send(Close).await?;
    invoices.drop().await?;

    if !accepted || stale {
        return Err("the store did not fence the stale write".into());
    }
    println!("the stale write was refused: fencing works");
    Ok(())
}
