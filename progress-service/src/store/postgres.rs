//! Postgres alone: the `user_progress` table of contract §3, written by the
//! group-commit engine with one statement per kind of write per batch, each
//! row guarded by the version it was planned against (other replicas may
//! write the same rows). Positions come from a counter row locked until
//! commit; every replica's `Tailer` follows `progress_changes` (one row per
//! applied change, woken by NOTIFY) and publishes each change, so watchers on
//! any replica see every change, once, in position order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::group_commit::{Committed, GroupCommit, Loaded, SqlBatch, Stamp, Writes};
use super::row_cache::RowCache;
use super::rows::{
    LogRow, ProgressRow, RecordArrays, into_events, into_records, pg_from_micros,
    pg_progress_columns,
};
use super::{ListQuery, ProgressStore, StoreConfig, StoreError, WriteMeta};
use crate::changelog::{LogError, LogPage, LogQuery};
use crate::domain::{Progress, ProgressKey, UpdateCommand, UpdateOutcome};
use crate::events::{Change, ChangeEvent, EventBus};

macro_rules! select_rows {
    () => {
        concat!("SELECT ", pg_progress_columns!(), " FROM user_progress")
    };
}

pub struct PostgresStore {
    pool: PgPool,
    writer: GroupCommit,
    epoch: String,
    stop: CancellationToken,
    tailer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

pub async fn connect(config: &StoreConfig) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(config.db_max_connections.max(2))
        .acquire_timeout(Duration::from_secs(3))
        .connect(&config.database_url)
        .await?;
    sqlx::migrate!("../migrations/postgres").run(&pool).await?;
    Ok(pool)
}

/// Every replica publishes every change from the log (its own included),
/// so watchers on any replica see all of them in position order.
pub async fn open(config: &StoreConfig, events: EventBus) -> anyhow::Result<PostgresStore> {
    let pool = connect(config).await?;
    // The counter continues above every position in the tables (they may
    // have been written by the hybrid store, whose positions Redis assigns).
    let (epoch, head): (String, i64) = sqlx::query_as(
        "UPDATE progress_change_log SET last_position = GREATEST(last_position,
           (SELECT COALESCE(max(change_seq), 0) FROM user_progress),
           (SELECT COALESCE(max(change_seq), 0) FROM progress_tombstones))
         WHERE id = 1 RETURNING epoch, last_position",
    )
    .fetch_one(&pool)
    .await?;
    let batch = Arc::new(PgBatch {
        pool: pool.clone(),
        cache: RowCache::default(),
    });
    let stop = CancellationToken::new();
    let tailer = tokio::spawn(
        Tailer {
            pool: pool.clone(),
            events,
            retention: config.change_retention,
            stop: stop.clone(),
        }
        .run(head),
    );
    let writer = GroupCommit::start(batch, None, config.group_commit)?;
    Ok(PostgresStore {
        writer,
        pool,
        epoch,
        stop,
        tailer: tokio::sync::Mutex::new(Some(tailer)),
    })
}

/// Columns of a change read from the log: records, then delete markers that
/// no later record of the same key supersedes.
macro_rules! log_rows {
    ($user_filter:literal) => {
        concat!(
            "SELECT * FROM (
               (SELECT false AS deleted, user_id, manga_id,
                  (current_chapter * 100)::int8 AS chapter_hundredths, page, status, version,
                  (EXTRACT(EPOCH FROM updated_at) * 1000000)::int8 AS updated_at_us, device,
                  change_seq, origin, private
                  FROM user_progress
                 WHERE change_seq > $1 AND change_seq <= $2 ",
            $user_filter,
            " ORDER BY change_seq LIMIT $3)
               UNION ALL
               (SELECT true, user_id, manga_id, 0::int8, 0, 'reading', 0::int8, 0::int8,
                  NULL::text, change_seq, origin, false
                  FROM progress_tombstones AS d
                 WHERE $5 AND change_seq > $1 AND change_seq <= $2 ",
            $user_filter,
            " AND NOT EXISTS (SELECT 1 FROM user_progress AS r
                                 WHERE r.user_id = d.user_id AND r.manga_id = d.manga_id
                                   AND r.change_seq > d.change_seq)
                 ORDER BY change_seq LIMIT $3)
             ) AS c ORDER BY change_seq LIMIT $3"
        )
    };
}

/// The log's head (last position) and the newest position a pruned delete
/// marker had.
pub(crate) async fn log_bounds(pool: &PgPool) -> Result<(i64, i64), StoreError> {
    Ok(
        sqlx::query_as(
            "SELECT last_position, pruned_through FROM progress_change_log WHERE id = 1",
        )
        .fetch_one(pool)
        .await?,
    )
}

/// Changes in `(query.after, head]` from the tables, in position order.
/// `Expired` when a delete marker after `query.after` may have been pruned,
/// checked again after the read: a prune that committed between the caller's
/// read of `pruned_through` and this read could have dropped a delete.
pub(crate) async fn read_log_rows(
    pool: &PgPool,
    query: &LogQuery,
    head: i64,
    pruned_through: i64,
) -> Result<Vec<ChangeEvent>, LogError> {
    if query.expired(pruned_through) {
        return Err(LogError::Expired);
    }
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    let rows: Vec<LogRow> = match &query.user_id {
        Some(user) => {
            sqlx::query_as(log_rows!("AND user_id = $4"))
                .bind(query.after)
                .bind(head)
                .bind(limit)
                .bind(user)
                .bind(query.deletes)
                .fetch_all(pool)
                .await?
        }
        None => {
            sqlx::query_as(log_rows!("AND $4::text IS NULL"))
                .bind(query.after)
                .bind(head)
                .bind(limit)
                .bind(None::<String>)
                .bind(query.deletes)
                .fetch_all(pool)
                .await?
        }
    };
    let (_, pruned_after) = log_bounds(pool).await?;
    if query.expired(pruned_after) {
        return Err(LogError::Expired);
    }
    Ok(into_events(rows)?)
}

/// Every change in `(after, head]` from `progress_changes`, one per applied
/// change (a record changed twice has two), in position order. `Expired`
/// when changes after `after` may have been pruned (checked before and after
/// the read, as in `read_log_rows`).
async fn read_changes(
    pool: &PgPool,
    after: i64,
    head: i64,
    pruned_through: i64,
    limit: usize,
) -> Result<Vec<ChangeEvent>, LogError> {
    if after < pruned_through {
        return Err(LogError::Expired);
    }
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT deleted, user_id, manga_id,
           COALESCE((current_chapter * 100)::int8, 0) AS chapter_hundredths,
           COALESCE(page, 0) AS page, COALESCE(status, 'reading') AS status,
           COALESCE(version, 0) AS version,
           COALESCE((EXTRACT(EPOCH FROM updated_at) * 1000000)::int8, 0) AS updated_at_us,
           device, position AS change_seq, origin, private
           FROM progress_changes
          WHERE position > $1 AND position <= $2
          ORDER BY position LIMIT $3",
    )
    .bind(after)
    .bind(head)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    let (_, pruned_after) = log_bounds(pool).await?;
    if after < pruned_after {
        return Err(LogError::Expired);
    }
    Ok(into_events(rows)?)
}

/// Drops delete markers and `progress_changes` rows older than `retention`
/// (and, in hybrid mode, below `floor`, the oldest change still queued),
/// remembering the newest position dropped: cursors (and tailers) below it
/// are expired. Takes the counter's row lock first, as every Postgres-alone
/// batch does, then the hybrid batch writers' lock, as they do before
/// touching delete markers: it never deadlocks with either. Returns the
/// number of delete markers dropped.
pub(crate) async fn prune_tombstones(
    pool: &PgPool,
    retention: Duration,
    floor: i64,
) -> Result<u64, StoreError> {
    let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM progress_change_log WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(super::hybrid::BATCH_LOCK)
        .execute(&mut *tx)
        .await?;
    let (pruned, newest): (i64, Option<i64>) = sqlx::query_as(
        "WITH gone AS (
           DELETE FROM progress_tombstones
            WHERE deleted_at < now() - $1 * INTERVAL '1 second' AND change_seq < $2
           RETURNING change_seq
         )
         SELECT count(*), max(change_seq) FROM gone",
    )
    .bind(secs)
    .bind(floor)
    .fetch_one(&mut *tx)
    .await?;
    // Oldest first, so the rows kept are always every change after the newest
    // one dropped. The hybrid store writes none.
    let (newest_change,): (Option<i64>,) = sqlx::query_as(
        "WITH gone AS (
           DELETE FROM progress_changes
            WHERE changed_at < now() - $1 * INTERVAL '1 second' AND position < $2
           RETURNING position
         )
         SELECT max(position) FROM gone",
    )
    .bind(secs)
    .bind(floor)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(newest) = newest.max(newest_change) {
        sqlx::query(
            "UPDATE progress_change_log SET pruned_through = GREATEST(pruned_through, $1)
              WHERE id = 1",
        )
        .bind(newest)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(u64::try_from(pruned).unwrap_or(0))
}

/// Channel the write function notifies on commit.
const CHANGES_CHANNEL: &str = "mangahub_changes";
/// Most changes one log read takes.
const TAIL_PAGE: usize = 1000;
/// Reads the log this often even without a notification (a notification
/// can be missed while the listening connection reconnects).
const TAIL_POLL: Duration = Duration::from_millis(500);
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Follows the log from a position and publishes every change in order.
struct Tailer {
    pool: PgPool,
    events: EventBus,
    retention: Duration,
    stop: CancellationToken,
}

impl Tailer {
    async fn run(self, mut position: i64) {
        let mut listener = None;
        let mut last_prune: Option<std::time::Instant> = None;
        let mut backoff = mangahub_ops::Backoff::default();
        while !self.stop.is_cancelled() {
            if listener.is_none() {
                match PgListener::connect_with(&self.pool).await {
                    Ok(mut l) => match l.listen(CHANGES_CHANNEL).await {
                        Ok(()) => listener = Some(l),
                        Err(err) => tracing::warn!(error = %err, "cannot LISTEN for changes"),
                    },
                    Err(err) => tracing::warn!(error = %err, "cannot connect the change listener"),
                }
            }
            match self.drain(position).await {
                Ok(next) => {
                    position = next;
                    backoff.reset();
                }
                Err(LogError::Expired) => {
                    // Offline past the retention: changes may be gone. Move to
                    // the head first, then end the watchers: a watch opened
                    // after the interrupt starts after a head at or above this
                    // one, so live events continue it without a gap.
                    tracing::error!(position, "change log pruned past this replica's position");
                    match log_bounds(&self.pool).await {
                        Ok((head, _)) => {
                            position = head;
                            self.events.interrupt();
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "reading the change log head failed; retrying");
                            tokio::select! {
                                () = self.stop.cancelled() => return,
                                () = tokio::time::sleep(backoff.next_delay()) => {}
                            }
                            continue;
                        }
                    }
                }
                Err(LogError::Store(err)) => {
                    tracing::warn!(error = %err, "reading the change log failed; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    continue;
                }
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(std::time::Instant::now());
                match prune_tombstones(&self.pool, self.retention, i64::MAX).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(pruned = n, "delete markers past the retention dropped")
                    }
                    Err(err) => tracing::warn!(error = %err, "pruning the change log failed"),
                }
            }
            let woke = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => return,
                woke = woke => if let Err(err) = woke {
                    tracing::warn!(error = %err, "change listener lost; reconnecting");
                    listener = None;
                },
                () = tokio::time::sleep(TAIL_POLL) => {}
            }
        }
    }

    /// Publishes every change after `position` (each one, from
    /// `progress_changes`, not only each record's last); the position reached.
    async fn drain(&self, mut position: i64) -> Result<i64, LogError> {
        loop {
            let (head, pruned) = log_bounds(&self.pool).await?;
            let changes = read_changes(&self.pool, position, head, pruned, TAIL_PAGE).await?;
            let page = LogPage { changes, head };
            let next = page.next_after(TAIL_PAGE, position);
            let full = page.changes.len() >= TAIL_PAGE;
            for event in page.changes {
                self.events.publish(event);
            }
            position = next;
            if !full {
                return Ok(position);
            }
        }
    }
}

pub(crate) async fn get_row(
    pool: &PgPool,
    key: &ProgressKey,
) -> Result<Option<Progress>, StoreError> {
    let row: Option<ProgressRow> = sqlx::query_as(concat!(
        select_rows!(),
        " WHERE user_id = $1 AND manga_id = $2"
    ))
    .bind(&key.user_id)
    .bind(key.manga_id)
    .fetch_optional(pool)
    .await?;
    row.map(Progress::try_from).transpose()
}

pub(crate) async fn list_rows(
    pool: &PgPool,
    query: &ListQuery,
) -> Result<Vec<Progress>, StoreError> {
    let rows: Vec<ProgressRow> = sqlx::query_as(concat!(
        select_rows!(),
        " WHERE user_id = $1
               AND ($2::int8 IS NULL OR updated_at > ",
        pg_from_micros!("$2::int8"),
        ")
               AND ($3::int8 IS NULL OR (updated_at, manga_id) > (",
        pg_from_micros!("$3::int8"),
        ", $4::int8))
             ORDER BY updated_at, manga_id
             LIMIT $5"
    ))
    .bind(&query.user_id)
    .bind(query.updated_since.map(|t| t.timestamp_micros()))
    .bind(query.after.map(|c| c.updated_at_us))
    .bind(query.after.map(|c| c.manga_id))
    .bind(i64::from(query.limit))
    .fetch_all(pool)
    .await?;
    into_records(rows)
}

#[async_trait]
impl ProgressStore for PostgresStore {
    async fn update(
        &self,
        cmd: UpdateCommand,
        meta: WriteMeta,
    ) -> Result<UpdateOutcome, StoreError> {
        self.writer.update(cmd, meta).await
    }

    async fn update_many(
        &self,
        cmds: Vec<(UpdateCommand, WriteMeta)>,
    ) -> Vec<Result<UpdateOutcome, StoreError>> {
        self.writer.update_many(cmds).await
    }

    async fn get(&self, key: &ProgressKey) -> Result<Option<Progress>, StoreError> {
        get_row(&self.pool, key).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Progress>, StoreError> {
        list_rows(&self.pool, query).await
    }

    async fn delete(&self, key: ProgressKey, meta: WriteMeta) -> Result<Option<i64>, StoreError> {
        self.writer.delete(key, meta).await
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn read_log(&self, query: &LogQuery) -> Result<LogPage, LogError> {
        let (head, pruned) = log_bounds(&self.pool).await?;
        if query.after > head {
            return Err(LogError::Expired);
        }
        let changes = read_log_rows(&self.pool, query, head, pruned).await?;
        Ok(LogPage { changes, head })
    }

    async fn log_head(&self) -> Result<i64, StoreError> {
        Ok(log_bounds(&self.pool).await?.0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.stop.cancel();
        if let Some(tailer) = self.tailer.lock().await.take() {
            // The tailer publishes what the writer committed before stopping.
            let _ = tailer.await;
        }
        self.pool.close().await;
    }
}

/// One batch's writes as parallel arrays for `UNNEST`; `op` is 0 insert,
/// 1 update, 2 delete, 3 delete marker only (created and deleted within the
/// batch; the row must be absent), `guard` the version the row must still have and `pos`
/// the position offset of the row's last change.
#[derive(Default)]
struct WriteArrays {
    records: RecordArrays,
    guards: Vec<i64>,
    ops: Vec<i16>,
    positions: Vec<i32>,
    origins: Vec<String>,
    privates: Vec<bool>,
    log: LogArrays,
}

/// The batch's events (every applied change, in order) as parallel arrays:
/// one `progress_changes` row each. Record columns are NULL for a delete.
#[derive(Default)]
struct LogArrays {
    positions: Vec<i32>,
    user_ids: Vec<String>,
    manga_ids: Vec<i64>,
    deleted: Vec<bool>,
    chapters: Vec<Option<i64>>,
    pages: Vec<Option<i32>>,
    statuses: Vec<Option<&'static str>>,
    versions: Vec<Option<i64>>,
    updated_at_us: Vec<Option<i64>>,
    devices: Vec<Option<String>>,
    origins: Vec<String>,
    privates: Vec<bool>,
}

impl LogArrays {
    fn push(&mut self, offset: i32, change: &Change, meta: &WriteMeta) {
        let (key, row) = match change {
            Change::Updated(p) => (&p.key, Some(p)),
            Change::Deleted(key) => (key, None),
        };
        self.positions.push(offset);
        self.user_ids.push(key.user_id.clone());
        self.manga_ids.push(key.manga_id);
        self.deleted.push(row.is_none());
        self.chapters.push(row.map(|p| p.chapter.hundredths()));
        self.pages.push(row.map(|p| p.page));
        self.statuses.push(row.map(|p| p.status.as_str()));
        self.versions.push(row.map(|p| p.version));
        self.updated_at_us
            .push(row.map(|p| p.updated_at.timestamp_micros()));
        self.devices.push(row.and_then(|p| p.device.clone()));
        self.origins.push(meta.origin.clone());
        self.privates.push(meta.private);
    }
}

impl WriteArrays {
    fn push(
        &mut self,
        key: &ProgressKey,
        row: Option<&Progress>,
        guard: i64,
        op: i16,
        stamp: &Stamp,
    ) {
        self.records.push(key, row);
        self.guards.push(guard);
        self.ops.push(op);
        self.positions.push(stamp.offset);
        self.origins.push(stamp.meta.origin.clone());
        self.privates.push(stamp.meta.private);
    }

    fn from_writes(writes: &Writes) -> Self {
        let mut arrays = Self::default();
        for (offset, change, meta) in &writes.log {
            arrays.log.push(*offset, change, meta);
        }
        for (p, stamp) in &writes.inserts {
            arrays.push(&p.key, Some(p), 0, 0, stamp);
        }
        for (p, guard, stamp) in &writes.updates {
            arrays.push(&p.key, Some(p), *guard, 1, stamp);
        }
        for (key, guard, stamp) in &writes.deletes {
            arrays.push(key, None, *guard, 2, stamp);
        }
        for (key, stamp) in &writes.markers {
            arrays.push(key, None, 0, 3, stamp);
        }
        arrays
    }
}

/// Every write of a batch in one call of `mangahub_write_batch` (migration
/// 0004), its events included, so it commits on its own in one round trip.
const WRITE_BATCH: &str = "SELECT mangahub_write_batch($1::text[], $2::int8[], $3::int8[],
    $4::int4[], $5::text[], $6::int8[], $7::int8[], $8::int8[], $9::int2[], $10::int4[],
    $11::text[], $12::text[], $13::bool[], $14::int4, $15::int4[], $16::text[], $17::int8[],
    $18::bool[], $19::int8[], $20::int4[], $21::text[], $22::int8[], $23::int8[],
    $24::text[], $25::text[], $26::bool[])";

/// SQLSTATE raised by the write function when a guard missed (serialization_failure).
const GUARD_MISSED: &str = "40001";

struct PgBatch {
    pool: PgPool,
    cache: RowCache,
}

impl PgBatch {
    /// The stored rows of `keys` (absent keys have none).
    async fn read_rows(&self, keys: &[ProgressKey]) -> Result<Loaded, StoreError> {
        let (user_ids, manga_ids): (Vec<&str>, Vec<i64>) = keys
            .iter()
            .map(|k| (k.user_id.as_str(), k.manga_id))
            .unzip();
        let rows: Vec<ProgressRow> = sqlx::query_as(concat!(
            select_rows!(),
            " JOIN UNNEST($1::text[], $2::int8[]) AS k(u, m) ON user_id = k.u AND manga_id = k.m"
        ))
        .bind(&user_ids)
        .bind(&manga_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(into_records(rows)?
            .into_iter()
            .map(|p| (p.key.clone(), p))
            .collect())
    }
}

#[async_trait]
impl SqlBatch for PgBatch {
    async fn load_and_write(
        &self,
        keys: &[ProgressKey],
        plan: &mut (dyn for<'a> FnMut(&'a Loaded) -> Writes + Send),
    ) -> Result<Committed, StoreError> {
        let (mut loaded, missing) = self.cache.lookup(keys);
        if !missing.is_empty() {
            loaded.extend(self.read_rows(&missing).await?);
        }
        let writes = plan(&loaded);
        // A cached row the batch does not write is not checked by any guard,
        // and another replica may have changed it: the answers planned on it
        // (a no-op's "applied: false" carries the record) could be older than
        // the stored row. Only then read those rows again; if one changed, plan
        // again on fresh rows. Rows the batch writes are checked by their guard,
        // rows just read are fresh.
        let checked: HashSet<&ProgressKey> = writes.keys().chain(&missing).collect();
        let unchecked: Vec<ProgressKey> = loaded
            .keys()
            .filter(|k| !checked.contains(k))
            .cloned()
            .collect();
        drop(checked);
        if !unchecked.is_empty() {
            let fresh = self.read_rows(&unchecked).await?;
            if unchecked.iter().any(|k| fresh.get(k) != loaded.get(k)) {
                self.cache.forget(&unchecked);
                self.cache.remember(fresh.into_values());
                metrics::counter!("progress_row_cache_stale_total").increment(1);
                return Ok(Committed::Conflict);
            }
        }
        if writes.is_empty() {
            self.cache.remember(loaded.into_values());
            return Ok(Committed::Yes { base: 0 });
        }
        let a = WriteArrays::from_writes(&writes);
        let result: Result<(i64,), sqlx::Error> = sqlx::query_as(WRITE_BATCH)
            .bind(&a.records.user_ids)
            .bind(&a.records.manga_ids)
            .bind(&a.records.chapters)
            .bind(&a.records.pages)
            .bind(&a.records.statuses)
            .bind(&a.records.versions)
            .bind(&a.records.updated_at_us)
            .bind(&a.guards)
            .bind(&a.ops)
            .bind(&a.positions)
            .bind(&a.records.devices)
            .bind(&a.origins)
            .bind(&a.privates)
            .bind(writes.positions)
            .bind(&a.log.positions)
            .bind(&a.log.user_ids)
            .bind(&a.log.manga_ids)
            .bind(&a.log.deleted)
            .bind(&a.log.chapters)
            .bind(&a.log.pages)
            .bind(&a.log.statuses)
            .bind(&a.log.versions)
            .bind(&a.log.updated_at_us)
            .bind(&a.log.devices)
            .bind(&a.log.origins)
            .bind(&a.log.privates)
            .fetch_one(&self.pool)
            .await;
        match result {
            Ok((base,)) => {
                self.cache.committed(loaded, writes);
                Ok(Committed::Yes { base })
            }
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(GUARD_MISSED) => {
                self.cache.forget(keys);
                Ok(Committed::Conflict)
            }
            Err(err) => {
                // The outcome is unknown (e.g. the connection broke): read fresh next time.
                self.cache.forget(keys);
                Err(err.into())
            }
        }
    }
}
