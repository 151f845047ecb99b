//! Embedded store on a SQLite file (WAL). One writer connection runs the
//! group-commit transactions (`BEGIN IMMEDIATE`, so nothing else can write
//! between load and write); a small pool serves reads. The one writer also
//! assigns change-log positions, in commit order, and publishes each change.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use std::sync::atomic::{AtomicI64, Ordering};

use tokio_util::sync::CancellationToken;

use super::group_commit::{
    Committed, GroupCommit, GroupCommitConfig, Loaded, SqlBatch, Stamp, Writes,
};
use super::row_cache::RowCache;
use super::rows::{LogRow, ProgressRow, into_events, into_records};
use super::{ListQuery, ProgressStore, StoreConfig, StoreError, WriteMeta};
use crate::changelog::{LogError, LogPage, LogQuery};
use crate::config::SqliteSync;
use crate::domain::{self, Progress, ProgressKey, UpdateCommand, UpdateOutcome};
use crate::events::EventBus;

macro_rules! columns {
    () => {
        "user_id, manga_id, chapter_hundredths, page, status, version, updated_at_us, device"
    };
}

pub struct SqliteStore {
    reads: SqlitePool,
    writer: GroupCommit,
    batch: Arc<SqliteBatch>,
    epoch: String,
    stop: CancellationToken,
    _lock: std::fs::File,
}

pub async fn open(config: &StoreConfig, events: EventBus) -> anyhow::Result<SqliteStore> {
    let options = SqliteConnectOptions::from_str(&config.database_url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match config.sqlite_synchronous {
            SqliteSync::Full => SqliteSynchronous::Full,
            SqliteSync::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(5))
        // Statement journals of the batched upserts stay in memory.
        .pragma("temp_store", "memory")
        .pragma("cache_size", "-16384");
    let lock = lock_file(options.get_filename())?;
    let write_pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    sqlx::migrate!("../migrations/sqlite")
        .run(&write_pool)
        .await?;
    let reads = SqlitePoolOptions::new()
        .max_connections(config.db_max_connections.clamp(1, 8))
        .connect_with(options.read_only(true))
        .await?;
    // This process is the file's only writer: positions continue from the
    // last one any batch recorded.
    let (epoch, head): (String, i64) = sqlx::query_as(
        "SELECT epoch, max(last_position, pruned_through,
           (SELECT COALESCE(max(change_seq), 0) FROM user_progress),
           (SELECT COALESCE(max(change_seq), 0) FROM progress_tombstones))
           FROM progress_change_log WHERE id = 1",
    )
    .fetch_one(&write_pool)
    .await?;
    let batch = Arc::new(SqliteBatch {
        pool: write_pool,
        cache: RowCache::default(),
        head: AtomicI64::new(head),
    });
    let group_commit = GroupCommitConfig {
        shards: 1,
        ..config.group_commit
    };
    let stop = CancellationToken::new();
    tokio::spawn(prune_loop(
        batch.clone(),
        config.change_retention,
        stop.clone(),
    ));
    Ok(SqliteStore {
        reads,
        writer: GroupCommit::start(batch.clone(), Some(events), group_commit),
        batch,
        epoch,
        stop,
        _lock: lock,
    })
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Drops delete markers older than the retention every minute.
async fn prune_loop(batch: Arc<SqliteBatch>, retention: Duration, stop: CancellationToken) {
    loop {
        match batch.prune(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "delete markers past the retention dropped"),
            Err(err) => tracing::warn!(error = %err, "pruning delete markers failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// Records, then delete markers no later record of the key supersedes.
macro_rules! log_rows {
    ($user_filter:literal) => {
        concat!(
            "SELECT * FROM (
               SELECT 0 AS deleted, ",
            columns!(),
            ", change_seq, origin, private FROM user_progress
                WHERE change_seq > ?1 AND change_seq <= ?2 ",
            $user_filter,
            " UNION ALL
               SELECT 1, user_id, manga_id, 0, 0, 'reading', 0, 0, NULL, change_seq, origin, 0
                 FROM progress_tombstones AS d
                WHERE ?5 AND change_seq > ?1 AND change_seq <= ?2 ",
            $user_filter,
            " AND NOT EXISTS (SELECT 1 FROM user_progress AS r
                                 WHERE r.user_id = d.user_id AND r.manga_id = d.manga_id
                                   AND r.change_seq > d.change_seq)
             ) ORDER BY change_seq LIMIT ?3"
        )
    };
}

#[async_trait]
impl ProgressStore for SqliteStore {
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
        let row: Option<ProgressRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM user_progress WHERE user_id = ? AND manga_id = ?"
        ))
        .bind(&key.user_id)
        .bind(key.manga_id)
        .fetch_optional(&self.reads)
        .await?;
        row.map(Progress::try_from).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Progress>, StoreError> {
        let rows: Vec<ProgressRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM user_progress
             WHERE user_id = ?1
               AND (?2 IS NULL OR updated_at_us > ?2)
               AND (?3 IS NULL OR (updated_at_us, manga_id) > (?3, ?4))
             ORDER BY updated_at_us, manga_id
             LIMIT ?5"
        ))
        .bind(&query.user_id)
        .bind(query.updated_since.map(|t| t.timestamp_micros()))
        .bind(query.after.map(|c| c.updated_at_us))
        .bind(query.after.map(|c| c.manga_id))
        .bind(i64::from(query.limit))
        .fetch_all(&self.reads)
        .await?;
        into_records(rows)
    }

    async fn delete(&self, key: ProgressKey, meta: WriteMeta) -> Result<Option<i64>, StoreError> {
        self.writer.delete(key, meta).await
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn read_log(&self, query: &LogQuery) -> Result<LogPage, LogError> {
        // Everything up to `head` is committed (the writer moves it after COMMIT).
        let head = self.batch.head.load(Ordering::Acquire);
        if query.after > head {
            return Err(LogError::Expired);
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows: Vec<LogRow> = match &query.user_id {
            Some(_) => sqlx::query_as(log_rows!("AND user_id = ?4")),
            None => sqlx::query_as(log_rows!("AND ?4 IS NULL")),
        }
        .bind(query.after)
        .bind(head)
        .bind(limit)
        .bind(query.user_id.as_deref())
        .bind(query.deletes)
        .fetch_all(&self.reads)
        .await?;
        // Read after the rows: a prune that dropped a marker they lack has
        // committed by then, and shows here.
        if query.deletes {
            let (pruned,): (i64,) =
                sqlx::query_as("SELECT pruned_through FROM progress_change_log WHERE id = 1")
                    .fetch_one(&self.reads)
                    .await?;
            if query.expired(pruned) {
                return Err(LogError::Expired);
            }
        }
        Ok(LogPage {
            changes: into_events(rows)?,
            head,
        })
    }

    async fn log_head(&self) -> Result<i64, StoreError> {
        Ok(self.batch.head.load(Ordering::Acquire))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reads).await?;
        Ok(())
    }

    async fn close(&self) {
        self.stop.cancel();
        self.writer.close().await;
        self.reads.close().await;
    }
}

struct SqliteBatch {
    pool: SqlitePool,
    cache: RowCache,
    /// The last position committed.
    head: AtomicI64,
}

impl SqliteBatch {
    /// Reads the rows of `keys` (one primary-key lookup each, via a join).
    async fn load(&self, keys: &[ProgressKey]) -> Result<Vec<Progress>, StoreError> {
        let mut select =
            QueryBuilder::<Sqlite>::new(concat!("SELECT ", columns!(), " FROM (VALUES "));
        let mut list = select.separated(", ");
        for key in keys {
            list.push("(")
                .push_bind_unseparated(&key.user_id)
                .push_unseparated(", ")
                .push_bind_unseparated(key.manga_id)
                .push_unseparated(")");
        }
        select.push(") AS k JOIN user_progress ON user_id = k.column1 AND manga_id = k.column2");
        let rows: Vec<ProgressRow> = select.build_query_as().fetch_all(&self.pool).await?;
        into_records(rows)
    }

    /// Writes a planned batch atomically, positions after `base`. The batch's
    /// last change is always written (as a row or a delete marker), so the
    /// last position taken is the tables' maximum: nothing else records it.
    async fn write(&self, writes: &Writes, base: i64) -> Result<(), StoreError> {
        let upserts: Vec<(&Progress, &Stamp)> = writes
            .inserts
            .iter()
            .map(|(p, s)| (p, s))
            .chain(writes.updates.iter().map(|(p, _, s)| (p, s)))
            .collect();
        let mut conn = self.pool.acquire().await?;
        // Upserts alone are one statement (a created record's delete marker
        // goes with it, by trigger): no transaction needed.
        let in_tx = !writes.deletes.is_empty() || !writes.markers.is_empty();
        if in_tx {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        }
        let result = async {
            if !upserts.is_empty() {
                let mut insert = QueryBuilder::<Sqlite>::new(concat!(
                    "INSERT INTO user_progress (",
                    columns!(),
                    ", change_seq, origin, private) "
                ));
                insert.push_values(upserts, |mut row, (p, stamp)| {
                    row.push_bind(&p.key.user_id)
                        .push_bind(p.key.manga_id)
                        .push_bind(p.chapter.hundredths())
                        .push_bind(p.page)
                        .push_bind(p.status.as_str())
                        .push_bind(p.version)
                        .push_bind(p.updated_at.timestamp_micros())
                        .push_bind(p.device.as_deref())
                        .push_bind(base + i64::from(stamp.offset))
                        .push_bind(stamp.meta.origin.as_str())
                        .push_bind(stamp.meta.private);
                });
                insert.push(
                    " ON CONFLICT (user_id, manga_id) DO UPDATE SET
                       chapter_hundredths = excluded.chapter_hundredths, page = excluded.page,
                       status = excluded.status, version = excluded.version,
                       updated_at_us = excluded.updated_at_us, device = excluded.device,
                       change_seq = excluded.change_seq, origin = excluded.origin,
                       private = excluded.private",
                );
                insert.build().execute(&mut *conn).await?;
            }
            let now_us = domain::now().timestamp_micros();
            // Markers of records created and deleted within the batch have
            // no row to delete (this process is the only writer).
            let deletes = writes
                .deletes
                .iter()
                .map(|(key, _, stamp)| (key, stamp))
                .chain(writes.markers.iter().map(|(key, stamp)| (key, stamp)));
            for (key, stamp) in deletes {
                sqlx::query("DELETE FROM user_progress WHERE user_id = ? AND manga_id = ?")
                    .bind(&key.user_id)
                    .bind(key.manga_id)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(
                    "INSERT INTO progress_tombstones (user_id, manga_id, change_seq, origin, deleted_at_us)
                     VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (user_id, manga_id) DO UPDATE SET change_seq = excluded.change_seq,
                       origin = excluded.origin, deleted_at_us = excluded.deleted_at_us",
                )
                .bind(&key.user_id)
                .bind(key.manga_id)
                .bind(base + i64::from(stamp.offset))
                .bind(stamp.meta.origin.as_str())
                .bind(now_us)
                .execute(&mut *conn)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if in_tx {
            finish(&mut conn, result).await
        } else {
            Ok(result?)
        }
    }

    /// Drops delete markers older than `retention`, remembering the newest
    /// position dropped (cursors below it are expired).
    async fn prune(&self, retention: Duration) -> Result<u64, StoreError> {
        let cutoff = domain::now().timestamp_micros()
            - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let result = async {
            let (newest,): (Option<i64>,) = sqlx::query_as(
                "SELECT max(change_seq) FROM progress_tombstones WHERE deleted_at_us < ?",
            )
            .bind(cutoff)
            .fetch_one(&mut *conn)
            .await?;
            let gone = sqlx::query("DELETE FROM progress_tombstones WHERE deleted_at_us < ?")
                .bind(cutoff)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if let Some(newest) = newest {
                sqlx::query(
                    "UPDATE progress_change_log SET pruned_through = max(pruned_through, ?) WHERE id = 1",
                )
                .bind(newest)
                .execute(&mut *conn)
                .await?;
            }
            Ok::<_, sqlx::Error>(gone)
        }
        .await;
        finish(&mut conn, result).await
    }
}

/// Commits the open transaction after `result`, or rolls it back: also when
/// COMMIT itself fails, so the one writer connection never goes back to the
/// pool inside a transaction (the next batch would run in it, uncommitted).
async fn finish<T>(
    conn: &mut sqlx::pool::PoolConnection<Sqlite>,
    result: Result<T, sqlx::Error>,
) -> Result<T, StoreError> {
    let committed = match result {
        Ok(value) => sqlx::query("COMMIT")
            .execute(&mut **conn)
            .await
            .map(|_| value),
        Err(err) => Err(err),
    };
    if committed.is_err() {
        let _ = sqlx::query("ROLLBACK").execute(&mut **conn).await;
    }
    Ok(committed?)
}

#[async_trait]
impl SqlBatch for SqliteBatch {
    async fn load_and_write(
        &self,
        keys: &[ProgressKey],
        plan: &mut (dyn for<'a> FnMut(&'a Loaded) -> Writes + Send),
    ) -> Result<Committed, StoreError> {
        // This process is the file's only writer (see `lock_file`), so cached
        // rows are current and the read can happen outside the write.
        let (mut loaded, missing) = self.cache.lookup(keys);
        if !missing.is_empty() {
            loaded.extend(
                self.load(&missing)
                    .await?
                    .into_iter()
                    .map(|p| (p.key.clone(), p)),
            );
        }
        let writes = plan(&loaded);
        if writes.is_empty() {
            self.cache.remember(loaded.into_values());
            return Ok(Committed::Yes { base: 0 });
        }
        let base = self.head.load(Ordering::Acquire);
        if let Err(err) = self.write(&writes, base).await {
            self.cache.forget(keys);
            return Err(err);
        }
        self.head
            .store(base + i64::from(writes.positions), Ordering::Release);
        self.cache.committed(loaded, writes);
        Ok(Committed::Yes { base })
    }
}

/// Holds an exclusive lock on `<file>.lock` for the life of the store: two
/// services writing one SQLite file would each trust their own row cache.
fn lock_file(db: &Path) -> anyhow::Result<std::fs::File> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .with_context(|| format!("opening {}", Path::new(&name).display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{} is in use by another progress service; one SQLite file serves one process",
            db.display()
        ),
        Err(std::fs::TryLockError::Error(err)) => Err(err.into()),
    }
}
