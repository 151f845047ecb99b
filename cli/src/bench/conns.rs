//! What the gateway benches share: the connection options, the transport
//! choice, authenticated connections (the CLI's own `client::conn::Conn`)
//! opened many at a time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;

use crate::client::conn;
pub use crate::client::conn::Conn;

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Gateway address (JSON lines over TCP; `tls://host:port` over TLS).
    #[arg(long, env = "MANGAHUB_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: String,
    /// CA certificates (PEM) to check a TLS gateway's certificate with,
    /// instead of the system's bundle (as `client --ca-cert`).
    #[arg(long, env = "MANGAHUB_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Shared HS256 secret the gateway verifies tokens with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
}

impl GatewayArgs {
    /// Makes `--ca-cert` the trust of this process's TLS connections; call
    /// before connecting.
    pub fn trust(&self) {
        if let Some(ca_cert) = &self.ca_cert {
            conn::trust(ca_cert.clone());
        }
    }
}

/// One of the gateway's transports of the same protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Ws => "WebSocket",
        }
    }
}

/// `--transport`: which transports a bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transports {
    Tcp,
    Ws,
    /// Each in turn, in the same run.
    Both,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// Which of the gateway's transports to measure: JSON lines over TCP at
    /// --addr, WebSocket at --ws-addr, or both in the same run.
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transports,
    /// The gateway's WebSocket address: host:port (its /ws path is added) or a ws:// URL.
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub ws_addr: String,
}

impl TransportArgs {
    pub fn each(&self) -> &'static [Transport] {
        match self.transport {
            Transports::Tcp => &[Transport::Tcp],
            Transports::Ws => &[Transport::Ws],
            Transports::Both => &[Transport::Tcp, Transport::Ws],
        }
    }

    /// `gateway` with the address of `transport`.
    pub fn gateway(&self, gateway: &GatewayArgs, transport: Transport) -> GatewayArgs {
        let addr = match transport {
            Transport::Tcp => gateway.addr.clone(),
            Transport::Ws => conn::over_websocket(&self.ws_addr),
        };
        GatewayArgs {
            addr,
            ..gateway.clone()
        }
    }
}

/// `count` connections, each authenticated as its own user `{prefix}-{i}`.
pub async fn open_many(
    args: &GatewayArgs,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<Conn>> {
    open_many_with(args, prefix, count, conn::READ_BUFFER).await
}

/// [`open_many`] with `read_buffer` bytes to read into per connection.
pub async fn open_many_with(
    args: &GatewayArgs,
    prefix: &str,
    count: usize,
    read_buffer: usize,
) -> anyhow::Result<Vec<Conn>> {
    args.trust();
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
                Conn::open_with(&addr, &token?, None, read_buffer).await
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    for (i, task) in tasks.into_iter().enumerate() {
        conns.push(task.await?.with_context(|| format!("connection {i}"))?);
    }
    Ok(conns)
}

/// Raises this process's soft limit on open files to its hard limit (with
/// prlimit(1): the workspace forbids the unsafe setrlimit call), so that it
/// and the servers it starts may hold as many connections as the machine
/// allows; returns the soft limit then in force.
pub fn raise_open_files_limit() -> anyhow::Result<Option<u64>> {
    let (Some(soft), Some(hard)) = (
        open_files_limit(),
        open_files_limit_column("/proc/self/limits", 4),
    ) else {
        return Ok(open_files_limit());
    };
    if soft < hard {
        let status = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!("--nofile={hard}:{hard}"),
            ])
            .status()
            .context("running prlimit")?;
        if !status.success() {
            tracing::warn!(soft, hard, "prlimit could not raise the open-files limit");
        }
    }
    Ok(open_files_limit())
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
    open_files_limit_column(path, 3)
}

/// Column 3 of the "Max open files" line is the soft limit, 4 the hard one.
fn open_files_limit_column(path: &str, column: usize) -> Option<u64> {
    let limits = std::fs::read_to_string(path).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(column)?.parse().ok()
}

/// A label for runs of this process, so users of different runs never collide.
pub fn run_id() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
