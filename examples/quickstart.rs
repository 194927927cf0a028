//! The quick start, runnable: one manager locks, refuses, waits and releases.
//!
//! ```text
//! scripts/with-mongo cargo run --example quickstart
//! ```

use std::time::Duration;

use actix_mongo_lock::{Acquire, Close, Lock, LockConfig, LockError, LockManager, Unlock};

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
        .init();
    let uri = std::env::var("MONGODB_URI").map_err(|_| {
        "MONGODB_URI is not set: run `scripts/with-mongo cargo run --example quickstart`"
    })?;
    let config = LockConfig::new("quickstart").ttl(Duration::from_secs(5));
    let manager = LockManager::connect(&uri, config).await?;

    let grant = manager.send(Lock::new("printer")).await??;
    println!("took the printer (fence {})", grant.fence);

    match manager.send(Lock::new("printer")).await? {
        Err(LockError::AlreadyLocked { .. }) => {
            println!("a second Lock is refused: already locked")
        }
        other => println!("unexpected: {other:?}"),
    }

    let waiter = manager.send(Acquire::new("printer"));
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    manager.send(Unlock::new(grant.lock_id)).await??;
    println!("released the printer");
    let next = waiter.await??;
    println!("the waiting Acquire took it next (fence {})", next.fence);

    manager.send(Unlock::new(next.lock_id)).await??;
    manager.send(Close).await?;
    println!("closed");
    Ok(())
}
