//! One live process per replica id.
//!
//! The batch writer's consumer name is the replica id, so a restarted replica
//! finds (and flushes at once) the entries its previous run had read. Two live
//! processes with one id would read and flush the same pending entries side by
//! side; the lease `mh:replica:<id>` (`SET … NX PX`, refreshed by its holder)
//! stops that: a process that cannot take it within one lease lifetime refuses
//! to start, and a writer whose lease was taken over stops flushing.
//!
//! A holder killed with `kill -9` stops refreshing, so its lease lapses within
//! `LEASE_TTL` and the restarted process takes it after at most that wait.

use std::time::{Duration, Instant};

use anyhow::bail;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a lease outlives its holder's last refresh.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(2);
const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// How often start-up tries to take a lease someone holds.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// 1: still ours, extended. 2: it had lapsed and nobody held it: ours again.
/// 0: another process holds it.
const REFRESH: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub(super) fn lease_key(replica_id: &str) -> String {
    format!("mh:replica:{replica_id}")
}

pub(super) struct Lease {
    conn: ConnectionManager,
    key: String,
    nonce: String,
}

impl Lease {
    /// Takes the lease of `replica_id`, waiting up to one lease lifetime for a
    /// holder that stopped refreshing (a killed previous run).
    pub async fn acquire(conn: ConnectionManager, replica_id: &str) -> anyhow::Result<Self> {
        let key = lease_key(replica_id);
        let nonce = format!(
            "{}/{}/{}",
            crate::config::default_replica_id(),
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        let deadline = Instant::now() + LEASE_TTL + REFRESH_EVERY;
        let mut waited = false;
        loop {
            let mut c = conn.clone();
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&nonce)
                .arg("NX")
                .arg("PX")
                .arg(LEASE_TTL.as_millis() as u64)
                .query_async(&mut c)
                .await?;
            if taken.is_some() {
                if waited {
                    tracing::info!(key, "replica lease taken over from a stopped process");
                }
                return Ok(Self { conn, key, nonce });
            }
            if Instant::now() >= deadline {
                let holder: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .unwrap_or(None);
                bail!(
                    "REPLICA_ID {replica_id:?} is in use: another live progress-service \
                     ({}) keeps refreshing the lease {key}. Give every replica its own \
                     REPLICA_ID (--replica-id; default: the host name)",
                    holder.unwrap_or_else(|| "unknown".into())
                );
            }
            waited = true;
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Refreshes the lease until `stop`, then releases it. The receiver says
    /// whether this process holds it now.
    pub fn spawn(self, stop: CancellationToken) -> (JoinHandle<()>, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(true);
        (tokio::spawn(self.run(tx, stop)), rx)
    }

    async fn run(self, held: watch::Sender<bool>, stop: CancellationToken) {
        let refresh = Script::new(REFRESH);
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
            let mut conn = self.conn.clone();
            let reply: redis::RedisResult<i64> = refresh
                .key(&self.key)
                .arg(&self.nonce)
                .arg(LEASE_TTL.as_millis() as u64)
                .invoke_async(&mut conn)
                .await;
            let refreshed = reply.is_ok();
            let now_held = match reply {
                Ok(1) => true,
                Ok(2) => {
                    tracing::warn!(key = self.key, "replica lease had lapsed; taken again");
                    true
                }
                Ok(_) => false,
                // Redis unreachable: the lease is ours until it would lapse.
                Err(err) => {
                    tracing::warn!(error = %err, "refreshing the replica lease failed");
                    last_ok.elapsed() < LEASE_TTL && *held.borrow()
                }
            };
            if now_held {
                if refreshed {
                    last_ok = Instant::now();
                }
            } else if *held.borrow() {
                tracing::error!(
                    key = self.key,
                    "replica lease lost: another process runs with this REPLICA_ID; \
                     this one stops flushing the write-behind queue"
                );
            }
            held.send_replace(now_held);
        }
        let mut conn = self.conn.clone();
        let released: redis::RedisResult<i64> = Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.nonce)
            .invoke_async(&mut conn)
            .await;
        if let Err(err) = released {
            tracing::warn!(error = %err, "releasing the replica lease failed; it lapses by itself");
        }
    }
}
