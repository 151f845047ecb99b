//! Embedded store on a SQLite file (WAL). One writer connection runs the
//! group-commit transactions (`BEGIN IMMEDIATE`, so nothing else can write
//! between load and write); a small pool serves reads.

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

use super::group_commit::{Committed, GroupCommit, GroupCommitConfig, Loaded, SqlBatch, Writes};
use super::row_cache::RowCache;
use super::rows::{ProgressRow, into_records};
use super::{ListQuery, ProgressStore, StoreConfig, StoreError, WriteMeta};
use crate::config::SqliteSync;
use crate::domain::{Progress, ProgressKey, UpdateCommand, UpdateOutcome};
use crate::events::EventBus;

macro_rules! columns {
    () => {
        "user_id, manga_id, chapter_hundredths, page, status, version, updated_at_us"
    };
}

pub struct SqliteStore {
    reads: SqlitePool,
    writer: GroupCommit,
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
    let batch = Arc::new(SqliteBatch {
        pool: write_pool,
        cache: RowCache::default(),
    });
    let group_commit = GroupCommitConfig {
        shards: 1,
        ..config.group_commit
    };
    Ok(SqliteStore {
        reads,
        writer: GroupCommit::start(batch, events, group_commit),
        _lock: lock,
    })
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

    async fn delete(&self, key: ProgressKey, meta: WriteMeta) -> Result<bool, StoreError> {
        self.writer.delete(key, meta).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reads).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reads.close().await;
    }
}

struct SqliteBatch {
    pool: SqlitePool,
    cache: RowCache,
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

    /// Writes a planned batch atomically: one statement when it only upserts,
    /// else one transaction.
    async fn write(&self, writes: &Writes) -> Result<(), StoreError> {
        let upserts: Vec<&Progress> = writes
            .inserts
            .iter()
            .chain(writes.updates.iter().map(|(p, _)| p))
            .collect();
        let mut conn = self.pool.acquire().await?;
        let in_tx = !writes.deletes.is_empty();
        if in_tx {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        }
        let result = async {
            if !upserts.is_empty() {
                let mut insert = QueryBuilder::<Sqlite>::new(concat!(
                    "INSERT INTO user_progress (",
                    columns!(),
                    ") "
                ));
                insert.push_values(upserts, |mut row, p| {
                    row.push_bind(&p.key.user_id)
                        .push_bind(p.key.manga_id)
                        .push_bind(p.chapter.hundredths())
                        .push_bind(p.page)
                        .push_bind(p.status.as_str())
                        .push_bind(p.version)
                        .push_bind(p.updated_at.timestamp_micros());
                });
                insert.push(
                    " ON CONFLICT (user_id, manga_id) DO UPDATE SET
                       chapter_hundredths = excluded.chapter_hundredths, page = excluded.page,
                       status = excluded.status, version = excluded.version,
                       updated_at_us = excluded.updated_at_us",
                );
                insert.build().execute(&mut *conn).await?;
            }
            for (key, _) in &writes.deletes {
                sqlx::query("DELETE FROM user_progress WHERE user_id = ? AND manga_id = ?")
                    .bind(&key.user_id)
                    .bind(key.manga_id)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match (in_tx, result) {
            (true, Ok(())) => sqlx::query("COMMIT").execute(&mut *conn).await.map(drop)?,
            (true, Err(err)) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(err.into());
            }
            (false, result) => result?,
        }
        Ok(())
    }
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
        if let Err(err) = self.write(&writes).await {
            self.cache.forget(keys);
            return Err(err);
        }
        self.cache.committed(loaded, writes);
        Ok(Committed::Yes)
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
