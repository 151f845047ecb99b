//! Embedded store on a SQLite file (WAL). One writer connection runs the
//! group-commit transactions (`writer.rs`); a small pool serves reads. The
//! one writer also assigns change-log positions, in commit order, and
//! publishes each change.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio_util::sync::CancellationToken;

use super::group_commit::{GroupCommit, GroupCommitConfig};
use super::rows::{LogRow, ProgressRow, into_events, into_records};
use super::{ListQuery, ProgressStore, StoreConfig, StoreError, WriteMeta};
use crate::changelog::{LogError, LogPage, LogQuery};
use crate::config::SqliteSync;
use crate::domain::{Progress, ProgressKey, UpdateCommand, UpdateOutcome};
use crate::events::EventBus;
use writer::SqliteWriter;

macro_rules! columns {
    () => {
        "user_id, manga_id, chapter_hundredths, page, status, version, updated_at_us, device"
    };
}

// After `columns!`, which the writer's statements use too.
mod writer;

pub struct SqliteStore {
    reads: SqlitePool,
    writer: GroupCommit,
    batch: Arc<SqliteWriter>,
    epoch: String,
    stop: CancellationToken,
    _lock: std::fs::File,
}

/// Page size of a new file, in bytes.
const PAGE_SIZE: u32 = 2048;

pub async fn open(config: &StoreConfig, events: EventBus) -> anyhow::Result<SqliteStore> {
    // The writer's connection and the read pool would each open a database
    // of their own.
    if config.database_url.contains(":memory:") || config.database_url.contains("mode=memory") {
        anyhow::bail!(
            "an in-memory SQLite database cannot be used: the service's writer and readers \
             need one file (e.g. sqlite://progress.db)"
        );
    }
    let options = SqliteConnectOptions::from_str(&config.database_url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match config.sqlite_synchronous {
            SqliteSync::Full => SqliteSynchronous::Full,
            SqliteSync::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(5))
        .pragma("cache_size", "-16384")
        // For a file this creates (an existing file keeps its own): an update
        // dirties about three pages (the row, its two index entries), and the
        // commit writes each whole page to the WAL, so smaller pages write
        // and checksum half the bytes (see docs/storage.md).
        .page_size(PAGE_SIZE);
    let lock = lock_file(options.get_filename())?;
    // Migrations run through sqlx; the writes through the writer's own connection.
    let migrate = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    sqlx::migrate!("../migrations/sqlite").run(&migrate).await?;
    migrate.close().await;
    let reads = SqlitePoolOptions::new()
        .max_connections(config.db_max_connections.clamp(1, 8))
        .connect_with(options.clone().read_only(true))
        .await?;
    let (epoch,): (String,) = sqlx::query_as("SELECT epoch FROM progress_change_log WHERE id = 1")
        .fetch_one(&reads)
        .await?;
    let path = options.get_filename().to_owned();
    let sync = config.sqlite_synchronous;
    let batch = Arc::new(
        tokio::task::spawn_blocking(move || SqliteWriter::open(&path, sync))
            .await
            .context("opening the SQLite writer")?
            .with_context(|| format!("opening {} for writing", options.get_filename().display()))?,
    );
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
    let writer = GroupCommit::start(batch.clone(), Some(events), group_commit)
        .context("starting the SQLite writer thread")?;
    Ok(SqliteStore {
        reads,
        writer,
        batch,
        epoch,
        stop,
        _lock: lock,
    })
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Drops delete markers older than the retention every minute.
async fn prune_loop(batch: Arc<SqliteWriter>, retention: Duration, stop: CancellationToken) {
    loop {
        let pruning = batch.clone();
        let pruned = tokio::task::spawn_blocking(move || pruning.prune(retention))
            .await
            .unwrap_or_else(|err| Err(StoreError::Internal(err.to_string())));
        match pruned {
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
        let head = self.batch.head();
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
        Ok(self.batch.head())
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
