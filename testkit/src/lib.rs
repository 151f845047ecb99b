//! Real infrastructure for tests: a fresh Postgres database per test (on the
//! machine's server, or on a private cluster started from the installed
//! binaries when none is reachable), private Postgres/Redis servers that
//! fault tests may stop, kill and restart without disturbing anyone else, and
//! a JSON-lines client of the gateway.

mod http;
mod lines;
mod postgres;
mod redis;

pub use http::http_get;
pub use lines::{LineClient, Transport, WAIT};
pub use postgres::{PrivatePostgres, drop_database, fresh_database};
pub use redis::{Persistence, PrivateRedis};

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

/// A TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A name no other test of this run or an earlier one uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// Polls `check` until it returns true, or fails after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
