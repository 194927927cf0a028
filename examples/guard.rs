//! `LockGuard`, runnable: a hold tied to a scope. `unlock().await` ends it and reports the
//! outcome; leaving the scope any other way (`?`, an early `return`, a cancelled future) drops
//! the guard, which sends the `Unlock` for you.
//!
//! ```text
//! scripts/with-mongo cargo run --example guard
//! ```

use std::time::Duration;

use actix::Addr;
use actix_mongo_lock::{Acquire, Close, Lock, LockConfig, LockError, LockGuard, LockManager};

/// Prints invoice `number` while holding its lock; a `jammed` printer fails halfway.
async fn print_invoice(
    manager: &Addr<LockManager>,
    number: u32,
    jammed: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let guard = LockGuard::acquire(manager, Acquire::new(format!("invoice-{number}"))).await?;
    println!("printing invoice {number} (fence {})", guard.grant().fence);
    if jammed {
        // The guard is dropped on the way out and sends the Unlock itself.
        return Err("the printer jammed".into());
    }
    let outcome = guard.unlock().await?;
    println!("printed invoice {number}; its Unlock answered {outcome:?}");
    Ok(())
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("MONGODB_URI").map_err(|_| {
        "MONGODB_URI is not set: run `scripts/with-mongo cargo run --example guard`"
    })?;
    let manager = LockManager::connect(&uri, LockConfig::new("guard")).await?;

    print_invoice(&manager, 42, false).await?;
    if let Err(e) = print_invoice(&manager, 43, true).await {
        println!("invoice 43 failed: {e}");
    }

    // The dropped guard's Unlock is sent, not awaited, so ask with Acquire, which waits for it.
    let retry = LockGuard::acquire(
        &manager,
        Acquire::new("invoice-43").timeout(Duration::from_secs(2)),
    )
    .await?;
    println!(
        "invoice 43 is free again: retaken (fence {})",
        retry.grant().fence
    );

    // While one guard lives, a one-shot Lock for the same invoice is refused.
    match LockGuard::lock(&manager, Lock::new("invoice-43")).await {
        Err(LockError::AlreadyLocked { .. }) => {
            println!("a second guard for invoice 43 is refused")
        }
        other => return Err(format!("a second guard answered {other:?}").into()),
    }
    drop(retry);

    // Close answers the dropped guard's Unlock, queued before it, then stops the manager.
    manager.send(Close).await?;
    println!("closed");
    Ok(())
}
