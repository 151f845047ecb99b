//! Settings: every one a flag with an environment fallback (contract §1).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

pub use mangahub_ops::{LogFormat, Secret};

/// SQLite's `synchronous` setting for the embedded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqliteSync {
    /// fsync at every commit: an ack survives power loss.
    Full,
    /// fsync at checkpoints: an ack survives a crash of the service, not of the machine.
    Normal,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "progress-service",
    version,
    about = "MangaHub progress service: storage, gRPC API, change stream"
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(
        long = "listen",
        env = "PROGRESS_LISTEN",
        default_value = "0.0.0.0:8083"
    )]
    pub listen: SocketAddr,

    /// Admin HTTP address for /metrics, /healthz and /readyz (unset = no admin port).
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// `sqlite://FILE` (embedded, created on first start) or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://mangahub.db",
        hide_env_values = true
    )]
    pub database_url: Secret,

    /// With a Postgres DATABASE_URL: Redis as hot copy + write-behind queue (hybrid mode).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// When set, every ProgressService call must carry `authorization: Bearer <token>`.
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<Secret>,

    /// How long shutdown waits for in-flight calls.
    #[arg(long, env = "SHUTDOWN_DRAIN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_drain: Duration,

    /// Most writes one batch takes (group commit; hybrid write-behind batch).
    #[arg(long, env = "BATCH_MAX_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub batch_max_size: u32,

    /// Hybrid mode: longest wait before queued writes are flushed to Postgres.
    #[arg(long, env = "BATCH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub batch_interval: Duration,

    /// Hybrid mode: how long a flushed record stays in Redis (never applies to unflushed changes).
    #[arg(long, env = "CACHE_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,

    /// Hybrid mode: queue entries a consumer has held this long are claimed by another (crashed replicas).
    #[arg(long, env = "BATCH_CLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub batch_claim_idle: Duration,

    /// Hybrid mode: this replica's stable identity, its consumer name in the
    /// write-behind group: a restarted replica first flushes what its previous
    /// run had read. Must differ between live replicas (a second process with
    /// the same id refuses to start). Default: the host name.
    #[arg(long, env = "REPLICA_ID", value_parser = parse_replica_id)]
    pub replica_id: Option<String>,

    /// How long every change and delete stays readable by position (cursors,
    /// sync, watch resume); older cursors are expired. Delete markers live at least this long.
    #[arg(long, env = "CHANGE_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub change_retention: Duration,

    /// Hybrid mode: how long Postgres keeps delete tombstones that order deletes against late batches (at least CHANGE_RETENTION).
    #[arg(long, env = "TOMBSTONE_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub tombstone_retention: Duration,

    /// Most database connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// Postgres: group-commit writers of this process. Every batch takes its change-log
    /// positions under one row lock held to commit, so more writers only queue on it.
    #[arg(long, env = "WRITE_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub write_shards: u32,

    /// Events a watcher may fall behind before its stream ends with a lag error.
    #[arg(long, env = "WATCH_BUFFER", default_value_t = 65536)]
    pub watch_buffer: usize,

    /// SQLite durability: `full` (fsync per commit) or `normal` (faster; a machine crash may lose the last commits).
    #[arg(long, env = "SQLITE_SYNCHRONOUS", value_enum, default_value_t = SqliteSync::Full)]
    pub sqlite_synchronous: SqliteSync,

    /// Log format: human text or JSON lines.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Most bytes a replica id may have.
const REPLICA_ID_MAX: usize = 128;

/// A replica id: 1..=128 printable ASCII characters without spaces (it names
/// a Redis stream consumer and the lease key `mh:replica:<id>`).
pub fn parse_replica_id(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > REPLICA_ID_MAX {
        return Err(format!("must be 1..={REPLICA_ID_MAX} characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("only printable ASCII without spaces is allowed".into());
    }
    Ok(value.to_owned())
}

/// The default replica id: the host name (`HOSTNAME`, then the kernel's, then
/// `/etc/hostname`), which stays the same across restarts of one machine or
/// container; `progress-service` when none is usable.
pub fn default_replica_id() -> String {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_files = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .into_iter()
        .filter_map(|path| std::fs::read_to_string(path).ok());
    from_env
        .into_iter()
        .chain(from_files)
        .find_map(|name| parse_replica_id(name.trim()).ok())
        .unwrap_or_else(|| "progress-service".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_printable_ascii() {
        assert_eq!(parse_replica_id("progress-1").as_deref(), Ok("progress-1"));
        assert!(parse_replica_id("").is_err());
        assert!(parse_replica_id("a b").is_err());
        assert!(parse_replica_id("a\u{0}").is_err());
        assert!(parse_replica_id(&"x".repeat(129)).is_err());
        assert!(parse_replica_id(&default_replica_id()).is_ok());
    }
}
