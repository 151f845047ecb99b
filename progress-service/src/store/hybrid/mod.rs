//! Hybrid store: Redis is the hot copy and the durable write-behind queue,
//! Postgres the durable record (contract §3; design in `docs/storage.md`).
//!
//! Write: read the record's Redis state (loading Postgres on a miss so
//! versions continue; for a record this process wrote last, its memory of
//! that write stands in for the read), apply the update rules in Rust, then one script
//! compare-and-sets the hash, appends the change to the write-behind stream
//! and to the change log (a retained stream whose entry ids are positions).
//! The ack follows that script. `batch_writer` moves the write-behind stream
//! into Postgres; `relay` feeds every replica's watchers from the change log.

mod batch_writer;
pub mod cache;
mod codec;
mod lease;
pub mod pg;
mod relay;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::postgres::PgPool;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::batch_writer::{BatchWriter, WriterConfig};
use redis::streams::StreamRangeReply;

use self::cache::{Cache, State, Warm};
use super::{ListQuery, ProgressStore, StoreConfig, StoreError, WriteMeta, postgres};
use crate::changelog::{LogError, LogPage, LogQuery};
use crate::domain::{self, Progress, ProgressKey, UpdateCommand, UpdateOutcome};
use crate::events::{Change, ChangeEvent, EventBus};

pub use self::codec::{GROUP, STREAM, hash_key};
/// For the fuzz checks of the codec only.
#[doc(hidden)]
pub use self::codec::{SEQ_FIELD, WireChange, hash_fields, parse_hash};
pub(crate) use self::pg::BATCH_LOCK;

/// Writes of one process to one record take turns, so compare-and-set
/// conflicts only come from other replicas.
const WRITE_STRIPES: usize = 1024;
const MAX_CAS_ATTEMPTS: usize = 64;

#[derive(Debug, Clone)]
pub struct HybridConfig {
    pub redis_url: String,
    pub cache_ttl: Duration,
    pub batch_max_size: usize,
    pub batch_interval: Duration,
    pub claim_idle: Duration,
    pub tombstone_retention: Duration,
    /// The batch writer's consumer name; one live process per id (`lease`).
    pub replica_id: String,
}

pub struct HybridStore {
    cache: Cache,
    pool: PgPool,
    /// For change-log reads (`XRANGE`).
    log_conn: ConnectionManager,
    epoch: String,
    stripes: Vec<Mutex<()>>,
    closed: AtomicBool,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Stopped after the batch writer, which needs the lease while it drains.
    lease_stop: CancellationToken,
    lease_task: Mutex<Option<JoinHandle<()>>>,
}

pub async fn open(
    config: &StoreConfig,
    hybrid: &HybridConfig,
    events: EventBus,
) -> anyhow::Result<HybridStore> {
    let pool = postgres::connect(config).await?;
    let client = redis::Client::open(hybrid.redis_url.as_str()).context("parsing REDIS_URL")?;
    let fast = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2);
    let conn = ConnectionManager::new_with_config(client.clone(), fast)
        .await
        .context("connecting to Redis")?;
    let blocking = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2);
    let writer_conn = ConnectionManager::new_with_config(client.clone(), blocking.clone())
        .await
        .context("connecting to Redis")?;
    let relay_conn = ConnectionManager::new_with_config(client.clone(), blocking)
        .await
        .context("connecting to Redis")?;
    create_group(conn.clone()).await?;
    let lease = lease::Lease::acquire(conn.clone(), &hybrid.replica_id).await?;
    let (epoch,): (String,) = sqlx::query_as("SELECT epoch FROM progress_change_log WHERE id = 1")
        .fetch_one(&pool)
        .await?;

    let stop = CancellationToken::new();
    let cache = Cache::new(conn.clone(), hybrid.cache_ttl, config.change_retention);
    let relay = relay::start(relay_conn, events, stop.clone()).await?;
    let lease_stop = CancellationToken::new();
    let (lease_task, leased) = lease.spawn(lease_stop.clone());
    let writer = BatchWriter::new(
        writer_conn,
        pool.clone(),
        hybrid.replica_id.clone(),
        leased,
        WriterConfig {
            max_batch: hybrid.batch_max_size,
            interval: hybrid.batch_interval,
            claim_idle: hybrid.claim_idle,
            ttl_secs: cache.ttl_secs(),
            // Delete markers serve the change log too.
            tombstone_retention: hybrid.tombstone_retention.max(config.change_retention),
        },
        stop.clone(),
    );
    let writer = tokio::spawn(writer.run());
    Ok(HybridStore {
        cache,
        pool,
        log_conn: conn,
        epoch,
        stripes: (0..WRITE_STRIPES).map(|_| Mutex::new(())).collect(),
        closed: AtomicBool::new(false),
        stop,
        tasks: Mutex::new(vec![writer, relay]),
        lease_stop,
        lease_task: Mutex::new(Some(lease_task)),
    })
}

/// Creates the consumer group (and stream) unless it exists; also after a
/// Redis restart without data, so entries written since are still drained.
pub(super) async fn create_group(mut conn: ConnectionManager) -> anyhow::Result<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(codec::STREAM)
        .arg(codec::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    match created {
        Err(err) if err.code() != Some("BUSYGROUP") => {
            Err(err).context("creating the write-behind consumer group")
        }
        _ => Ok(()),
    }
}

impl HybridStore {
    fn ensure_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("store is shutting down".into()));
        }
        Ok(())
    }

    fn stripe(&self, key: &ProgressKey) -> &Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.stripes[(hasher.finish() % self.stripes.len() as u64) as usize]
    }

    /// The stored record as the state read says, from Postgres on a miss.
    async fn current(
        &self,
        key: &ProgressKey,
        state: &State,
    ) -> Result<Option<Progress>, StoreError> {
        match state {
            State::Cached(c) => Ok(Some(c.progress.clone())),
            State::Deleted => Ok(None),
            State::Absent => Ok(pg::get_with_seq(&self.pool, key).await?.map(|(p, _)| p)),
        }
    }
}

fn contention() -> StoreError {
    StoreError::Unavailable("record changed concurrently too often; retry".into())
}

#[async_trait]
impl ProgressStore for HybridStore {
    async fn update(
        &self,
        cmd: UpdateCommand,
        meta: WriteMeta,
    ) -> Result<UpdateOutcome, StoreError> {
        self.ensure_open()?;
        let _turn = self.stripe(&cmd.key).lock().await;
        // A record this process wrote last is planned on what it wrote:
        // no read round trip. The compare-and-set verifies that state.
        let mut snap = match self.cache.recall(&cmd.key) {
            Some(snap) => snap,
            None => self.cache.read(&cmd.key).await?,
        };
        for _ in 0..MAX_CAS_ATTEMPTS {
            let stored = self.current(&cmd.key, &snap.state).await?;
            let mut out = domain::apply_update(stored.as_ref(), &cmd, domain::now());
            if !out.applied {
                if snap.is_recalled() {
                    // Not applied means answering with the stored record:
                    // never from memory, which may be stale.
                    snap = self.cache.read(&cmd.key).await?;
                    continue;
                }
                return Ok(out);
            }
            let written = self
                .cache
                .compare_and_set(&snap, &cmd.key, Some(&out.progress), &meta)
                .await;
            match written {
                Ok(Some(position)) => {
                    self.cache.remember(&out.progress, position);
                    out.position = Some(position);
                    return Ok(out);
                }
                Ok(None) if snap.is_recalled() => {
                    metrics::counter!("progress_cache_recall_stale_total").increment(1);
                }
                Ok(None) => metrics::counter!("progress_cache_cas_conflicts_total").increment(1),
                Err(err) => {
                    // The script may have run: what this process wrote last is unknown.
                    self.cache.forget(&cmd.key);
                    return Err(err);
                }
            }
            snap = self.cache.read(&cmd.key).await?;
        }
        self.cache.forget(&cmd.key);
        Err(contention())
    }

    /// One record's updates run in the order given; different records' run
    /// side by side (each update is still its own Redis compare-and-set).
    async fn update_many(
        &self,
        cmds: Vec<(UpdateCommand, WriteMeta)>,
    ) -> Vec<Result<UpdateOutcome, StoreError>> {
        let count = cmds.len();
        let mut chains: HashMap<ProgressKey, Vec<(usize, UpdateCommand, WriteMeta)>> =
            HashMap::new();
        for (at, (cmd, meta)) in cmds.into_iter().enumerate() {
            chains
                .entry(cmd.key.clone())
                .or_default()
                .push((at, cmd, meta));
        }
        let runs = chains.into_values().map(|chain| async move {
            let mut outcomes = Vec::with_capacity(chain.len());
            for (at, cmd, meta) in chain {
                outcomes.push((at, self.update(cmd, meta).await));
            }
            outcomes
        });
        let mut outcomes: Vec<Option<Result<UpdateOutcome, StoreError>>> =
            (0..count).map(|_| None).collect();
        for (at, outcome) in futures::future::join_all(runs).await.into_iter().flatten() {
            outcomes[at] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(StoreError::Internal("update not run".into()))))
            .collect()
    }

    async fn get(&self, key: &ProgressKey) -> Result<Option<Progress>, StoreError> {
        let snap = match self.cache.read(key).await {
            Ok(snap) => snap,
            Err(StoreError::Unavailable(err)) => {
                tracing::warn!(error = %err, "Redis down: reading Postgres");
                return postgres::get_row(&self.pool, key).await;
            }
            Err(err) => return Err(err),
        };
        match snap.state {
            State::Cached(ref c) => {
                metrics::counter!("progress_cache_hits_total").increment(1);
                return Ok(Some(c.progress.clone()));
            }
            State::Deleted => {
                metrics::counter!("progress_cache_hits_total").increment(1);
                return Ok(None);
            }
            State::Absent => metrics::counter!("progress_cache_misses_total").increment(1),
        }
        let Some((row, seq)) = pg::get_with_seq(&self.pool, key).await? else {
            return Ok(None);
        };
        match self.cache.warm(&snap, &row, seq).await {
            Ok(Warm::Row) => Ok(Some(row)),
            Ok(Warm::Newer(newer)) => Ok(Some(newer)),
            Ok(Warm::Deleted) => Ok(None),
            Err(err) => {
                tracing::warn!(error = %err, "cache warm failed");
                Ok(Some(row))
            }
        }
    }

    /// Postgres rows merged with the user's unflushed changes in Redis. The
    /// Redis side is read first: a change flushed in between is then already
    /// in the Postgres rows.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Progress>, StoreError> {
        let overlay = match self.cache.pending_for_user(&query.user_id).await {
            Ok(overlay) => overlay,
            Err(StoreError::Unavailable(err)) => {
                tracing::warn!(error = %err, "Redis down: listing Postgres only");
                Vec::new()
            }
            Err(err) => return Err(err),
        };
        // Each overlaid record can hide at most one row of the page.
        let widened = ListQuery {
            limit: query
                .limit
                .saturating_add(u32::try_from(overlay.len()).unwrap_or(u32::MAX)),
            ..query.clone()
        };
        let rows = postgres::list_rows(&self.pool, &widened).await?;
        let overlaid: HashSet<i64> = overlay.iter().map(|(m, _)| *m).collect();
        let mut items: Vec<Progress> = rows
            .into_iter()
            .filter(|p| !overlaid.contains(&p.key.manga_id))
            .chain(
                overlay
                    .into_iter()
                    .filter_map(|(_, p)| p)
                    .filter(|p| in_page(p, query)),
            )
            .collect();
        items.sort_by_key(|p| (p.updated_at, p.key.manga_id));
        items.truncate(query.limit as usize);
        Ok(items)
    }

    async fn delete(&self, key: ProgressKey, meta: WriteMeta) -> Result<Option<i64>, StoreError> {
        self.ensure_open()?;
        let _turn = self.stripe(&key).lock().await;
        self.cache.forget(&key);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let snap = self.cache.read(&key).await?;
            if self.current(&key, &snap.state).await?.is_none() {
                return Ok(None);
            }
            if let Some(position) = self.cache.compare_and_set(&snap, &key, None, &meta).await? {
                return Ok(Some(position));
            }
            metrics::counter!("progress_cache_cas_conflicts_total").increment(1);
        }
        Err(contention())
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    /// One user's changes: Postgres rows and delete markers, overlaid by the
    /// unflushed changes in Redis (read first, with the head, so a change
    /// flushed in between is in Postgres). All users': the change-log stream.
    async fn read_log(&self, query: &LogQuery) -> Result<LogPage, LogError> {
        match &query.user_id {
            Some(user) => self.read_user_log(user, query).await,
            None => self.read_stream_log(query).await,
        }
    }

    async fn log_head(&self) -> Result<i64, StoreError> {
        let mut conn = self.log_conn.clone();
        let head: Option<i64> = redis::cmd("GET")
            .arg(codec::SEQ_COUNTER)
            .query_async(&mut conn)
            .await
            .map_err(cache::redis_error)?;
        Ok(head.unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.log_conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(cache::redis_error)?;
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Writes that passed the check finish under their stripe lock.
        for stripe in &self.stripes {
            drop(stripe.lock().await);
        }
        self.stop.cancel();
        for task in self.tasks.lock().await.drain(..) {
            let _ = task.await;
        }
        // The writer is done: let the next run with this REPLICA_ID start at once.
        self.lease_stop.cancel();
        if let Some(task) = self.lease_task.lock().await.take() {
            let _ = task.await;
        }
        self.pool.close().await;
    }
}

impl HybridStore {
    async fn read_user_log(&self, user: &str, query: &LogQuery) -> Result<LogPage, LogError> {
        let (head, pending) = self.cache.pending_after(user, query.after).await?;
        if query.after > head {
            return Err(LogError::Expired);
        }
        let (_, pruned) = postgres::log_bounds(&self.pool).await?;
        let widened = LogQuery {
            limit: query.limit.saturating_add(pending.len()),
            ..query.clone()
        };
        let rows = postgres::read_log_rows(&self.pool, &widened, head, pruned).await?;
        // Per record, the newest change; one newer than `head` leaves the
        // record out of this page (it is after the page's end).
        let mut newest: HashMap<i64, ChangeEvent> = HashMap::new();
        for event in rows {
            newest.insert(event.change.key().manga_id, event);
        }
        for (manga_id, record, position) in pending {
            if position > head {
                newest.remove(&manga_id);
                continue;
            }
            if newest
                .get(&manga_id)
                .is_some_and(|e| e.position >= position)
            {
                continue;
            }
            let change = match record {
                Some(p) => Change::Updated(p),
                None if query.deletes => Change::Deleted(ProgressKey {
                    user_id: user.to_owned(),
                    manga_id,
                }),
                None => {
                    newest.remove(&manga_id);
                    continue;
                }
            };
            newest.insert(
                manga_id,
                ChangeEvent {
                    change,
                    meta: WriteMeta::default(),
                    position,
                },
            );
        }
        let mut changes: Vec<ChangeEvent> = newest.into_values().collect();
        changes.sort_by_key(|e| e.position);
        changes.truncate(query.limit);
        Ok(LogPage { changes, head })
    }

    /// Every change after `query.after` from the stream, read with its
    /// oldest kept entry in one transaction: if that is past the cursor,
    /// changes after the cursor may have been trimmed.
    async fn read_stream_log(&self, query: &LogQuery) -> Result<LogPage, LogError> {
        let mut conn = self.log_conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic().get(codec::SEQ_COUNTER);
        codec::push_oldest_entry(&mut pipe)
            .cmd("XRANGE")
            .arg(codec::LOG_STREAM)
            .arg(format!("({}-0", query.after))
            .arg("+")
            .arg("COUNT")
            .arg(query.limit);
        let (head, oldest, entries): (Option<i64>, StreamRangeReply, StreamRangeReply) = pipe
            .query_async(&mut conn)
            .await
            .map_err(cache::redis_error)?;
        let head = head.unwrap_or(0);
        let oldest = codec::first_position(&oldest);
        if query.after > head || (query.after > 0 && oldest.is_some_and(|o| o > query.after)) {
            return Err(LogError::Expired);
        }
        let mut changes = Vec::with_capacity(entries.ids.len());
        let mut batch = entries.ids;
        loop {
            let requested = query.limit - changes.len();
            let cut = batch.len() >= requested;
            let last = batch.last().and_then(|e| codec::position_of(&e.id));
            for entry in &batch {
                match codec::log_event(entry) {
                    Ok(event) => changes.push(event),
                    Err(err) => {
                        tracing::warn!(error = %err, id = entry.id, "undecodable change skipped")
                    }
                }
            }
            // A skipped entry must not make a page cut by its limit look
            // complete (the reader would stop paging): read on to fill it.
            let (true, Some(last)) = (cut && changes.len() < query.limit, last) else {
                break;
            };
            let more: StreamRangeReply = redis::cmd("XRANGE")
                .arg(codec::LOG_STREAM)
                .arg(format!("({last}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(query.limit - changes.len())
                .query_async(&mut conn)
                .await
                .map_err(cache::redis_error)?;
            batch = more.ids;
        }
        let head = changes.last().map_or(head, |e| e.position.max(head));
        Ok(LogPage { changes, head })
    }
}

fn in_page(p: &Progress, query: &ListQuery) -> bool {
    p.key.user_id == query.user_id
        && query.updated_since.is_none_or(|t| p.updated_at > t)
        && query.after.is_none_or(|c| {
            (p.updated_at.timestamp_micros(), p.key.manga_id) > (c.updated_at_us, c.manga_id)
        })
}
