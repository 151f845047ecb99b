//! What the gateway benches share: the connection options, authenticated
//! connections (the CLI's own `client::conn::Conn`) opened many at a time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;

pub use crate::client::conn::Conn;

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Gateway address.
    #[arg(long, env = "MANGAHUB_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: String,
    /// Shared HS256 secret the gateway verifies tokens with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
}

/// The fields of a reply the benches look at.
pub async fn open_many(
    args: &GatewayArgs,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<Conn>> {
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let permits = permits.clone();
            let addr = args.addr.clone();
            let token = crate::token::mint(
                &args.jwt_secret,
                &format!("{prefix}-{i}"),
                None,
                Duration::from_secs(3600),
            );
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await?;
                Conn::open(&addr, &token?, None).await
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    for (i, task) in tasks.into_iter().enumerate() {
        conns.push(task.await?.with_context(|| format!("connection {i}"))?);
    }
    Ok(conns)
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    open_files_limit_at("/proc/self/limits")
}

/// The soft limit on open files of another process (a child started here).
pub fn open_files_limit_of(pid: u32) -> Option<u64> {
    open_files_limit_at(&format!("/proc/{pid}/limits"))
}

fn open_files_limit_at(path: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(path).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A label for runs of this process, so users of different runs never collide.
pub fn run_id() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
