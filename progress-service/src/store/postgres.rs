//! Postgres alone: the `user_progress` table of contract §3, written by the
//! group-commit engine with one statement per kind of write per batch, each
//! row guarded by the version it was planned against (other replicas may
//! write the same rows).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::group_commit::{Committed, GroupCommit, Loaded, SqlBatch, Writes};
use super::row_cache::RowCache;
use super::rows::{ProgressRow, into_records};
use super::{ListQuery, ProgressStore, StoreConfig, StoreError, WriteMeta};
use crate::domain::{Progress, ProgressKey, UpdateCommand, UpdateOutcome};
use crate::events::EventBus;

/// Reads map NUMERIC(10,2) and TIMESTAMPTZ to exact integers, never floats.
macro_rules! select_rows {
    () => {
        "SELECT user_id, manga_id,
           (current_chapter * 100)::int8 AS chapter_hundredths, page, status, version,
           (EXTRACT(EPOCH FROM updated_at) * 1000000)::int8 AS updated_at_us
           FROM user_progress"
    };
}

/// Rebuilds a TIMESTAMPTZ from unix microseconds without a float.
macro_rules! from_micros {
    ($e:literal) => {
        concat!(
            "(TIMESTAMPTZ 'epoch' + ",
            $e,
            " * INTERVAL '1 microsecond')"
        )
    };
}

pub struct PostgresStore {
    pool: PgPool,
    writer: GroupCommit,
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

pub async fn open(config: &StoreConfig, events: EventBus) -> anyhow::Result<PostgresStore> {
    let pool = connect(config).await?;
    let batch = Arc::new(PgBatch {
        pool: pool.clone(),
        cache: RowCache::default(),
    });
    Ok(PostgresStore {
        writer: GroupCommit::start(batch, events, config.group_commit),
        pool,
    })
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
        from_micros!("$2::int8"),
        ")
               AND ($3::int8 IS NULL OR (updated_at, manga_id) > (",
        from_micros!("$3::int8"),
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

    async fn delete(&self, key: ProgressKey, meta: WriteMeta) -> Result<bool, StoreError> {
        self.writer.delete(key, meta).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// One batch's writes as parallel arrays for `UNNEST`; `op` is 0 insert,
/// 1 update, 2 delete, and `guard` the version the row must still have.
#[derive(Default)]
struct WriteArrays {
    user_ids: Vec<String>,
    manga_ids: Vec<i64>,
    chapters: Vec<i64>,
    pages: Vec<i32>,
    statuses: Vec<&'static str>,
    versions: Vec<i64>,
    updated_at_us: Vec<i64>,
    guards: Vec<i64>,
    ops: Vec<i16>,
}

impl WriteArrays {
    fn push(&mut self, key: &ProgressKey, row: Option<&Progress>, guard: i64, op: i16) {
        self.user_ids.push(key.user_id.clone());
        self.manga_ids.push(key.manga_id);
        self.chapters
            .push(row.map_or(0, |p| p.chapter.hundredths()));
        self.pages.push(row.map_or(0, |p| p.page));
        self.statuses
            .push(row.map_or("reading", |p| p.status.as_str()));
        self.versions.push(row.map_or(0, |p| p.version));
        self.updated_at_us
            .push(row.map_or(0, |p| p.updated_at.timestamp_micros()));
        self.guards.push(guard);
        self.ops.push(op);
    }

    fn from_writes(writes: &Writes) -> Self {
        let mut arrays = Self::default();
        for p in &writes.inserts {
            arrays.push(&p.key, Some(p), 0, 0);
        }
        for (p, guard) in &writes.updates {
            arrays.push(&p.key, Some(p), *guard, 1);
        }
        for (key, guard) in &writes.deletes {
            arrays.push(key, None, *guard, 2);
        }
        arrays
    }
}

/// Every write of a batch in one statement, so it commits on its own in one
/// round trip; `mangahub_assert_written` aborts all of it if any guard missed.
const WRITE_BATCH: &str = concat!(
    "WITH x AS (
       SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::text[],
                            $6::int8[], $7::int8[], $8::int8[], $9::int2[])
         AS x(u, m, c, p, s, v, t, ev, op)
     ),
     ins AS (
       INSERT INTO user_progress (user_id, manga_id, current_chapter, page, status, version, updated_at)
       SELECT u, m, c::numeric / 100, p, s, v, ",
    from_micros!("t"),
    " FROM x WHERE op = 0
       ON CONFLICT (user_id, manga_id) DO NOTHING
       RETURNING 1
     ),
     upd AS (
       UPDATE user_progress AS r SET current_chapter = x.c::numeric / 100, page = x.p,
         status = x.s, version = x.v, updated_at = ",
    from_micros!("x.t"),
    " FROM x WHERE x.op = 1 AND r.user_id = x.u AND r.manga_id = x.m AND r.version = x.ev
       RETURNING 1
     ),
     del AS (
       DELETE FROM user_progress AS r USING x
        WHERE x.op = 2 AND r.user_id = x.u AND r.manga_id = x.m AND r.version = x.ev
       RETURNING 1
     )
     SELECT mangahub_assert_written(
       (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd) + (SELECT count(*) FROM del),
       cardinality($1::text[]))"
);

/// SQLSTATE raised by `mangahub_assert_written` (serialization_failure).
const GUARD_MISSED: &str = "40001";

struct PgBatch {
    pool: PgPool,
    cache: RowCache,
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
            let (user_ids, manga_ids): (Vec<&str>, Vec<i64>) = missing
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
            loaded.extend(into_records(rows)?.into_iter().map(|p| (p.key.clone(), p)));
        }
        let writes = plan(&loaded);
        if writes.inserts.is_empty() && writes.updates.is_empty() && writes.deletes.is_empty() {
            self.cache.remember(loaded.into_values());
            return Ok(Committed::Yes);
        }
        let a = WriteArrays::from_writes(&writes);
        let result = sqlx::query(WRITE_BATCH)
            .bind(&a.user_ids)
            .bind(&a.manga_ids)
            .bind(&a.chapters)
            .bind(&a.pages)
            .bind(&a.statuses)
            .bind(&a.versions)
            .bind(&a.updated_at_us)
            .bind(&a.guards)
            .bind(&a.ops)
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => {
                self.cache.committed(loaded, writes);
                Ok(Committed::Yes)
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
