//! Postgres alone: the `user_progress` table of contract §3, written by the
//! group-commit engine with one statement per kind of write per batch, each
//! row guarded by the version it was planned against (other replicas may
//! write the same rows).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::group_commit::{Committed, GroupCommit, Loaded, SqlBatch, Writes};
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
    let batch = Arc::new(PgBatch { pool: pool.clone() });
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

/// Columns of `Progress` as parallel arrays, for `UNNEST`.
#[derive(Default)]
pub(crate) struct Columns {
    pub user_ids: Vec<String>,
    pub manga_ids: Vec<i64>,
    pub chapters: Vec<i64>,
    pub pages: Vec<i32>,
    pub statuses: Vec<&'static str>,
    pub versions: Vec<i64>,
    pub updated_at_us: Vec<i64>,
}

impl Columns {
    pub fn push(&mut self, p: &Progress) {
        self.user_ids.push(p.key.user_id.clone());
        self.manga_ids.push(p.key.manga_id);
        self.chapters.push(p.chapter.hundredths());
        self.pages.push(p.page);
        self.statuses.push(p.status.as_str());
        self.versions.push(p.version);
        self.updated_at_us.push(p.updated_at.timestamp_micros());
    }

    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.user_ids)
            .bind(&self.manga_ids)
            .bind(&self.chapters)
            .bind(&self.pages)
            .bind(&self.statuses)
            .bind(&self.versions)
            .bind(&self.updated_at_us)
    }
}

macro_rules! unnest_columns {
    () => {
        "UNNEST($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::text[], $6::int8[], $7::int8[]"
    };
}

struct PgBatch {
    pool: PgPool,
}

#[async_trait]
impl SqlBatch for PgBatch {
    async fn load_and_write(
        &self,
        keys: &[ProgressKey],
        plan: &mut (dyn for<'a> FnMut(&'a Loaded) -> Writes + Send),
    ) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        .fetch_all(&mut *tx)
        .await?;
        let loaded: Loaded = into_records(rows)?
            .into_iter()
            .map(|p| (p.key.clone(), p))
            .collect();
        let writes = plan(&loaded);

        let mut expected = 0;
        let mut written = 0;
        if !writes.inserts.is_empty() {
            let mut cols = Columns::default();
            writes.inserts.iter().for_each(|p| cols.push(p));
            let sql = concat!(
                "INSERT INTO user_progress (user_id, manga_id, current_chapter, page, status, version, updated_at)
                 SELECT u, m, c::numeric / 100, p, s, v, ",
                from_micros!("t"),
                " FROM ",
                unnest_columns!(),
                ") AS x(u, m, c, p, s, v, t)
                 ON CONFLICT (user_id, manga_id) DO NOTHING"
            );
            expected += writes.inserts.len() as u64;
            written += cols
                .bind(sqlx::query(sql))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if !writes.updates.is_empty() {
            let mut cols = Columns::default();
            writes.updates.iter().for_each(|(p, _)| cols.push(p));
            let guards: Vec<i64> = writes.updates.iter().map(|(_, v)| *v).collect();
            let sql = concat!(
                "UPDATE user_progress AS r SET current_chapter = x.c::numeric / 100, page = x.p,
                   status = x.s, version = x.v, updated_at = ",
                from_micros!("x.t"),
                " FROM ",
                unnest_columns!(),
                ", $8::int8[]) AS x(u, m, c, p, s, v, t, ev)
                 WHERE r.user_id = x.u AND r.manga_id = x.m AND r.version = x.ev"
            );
            expected += writes.updates.len() as u64;
            written += cols
                .bind(sqlx::query(sql))
                .bind(&guards)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if !writes.deletes.is_empty() {
            let (keys, guards): (Vec<&ProgressKey>, Vec<i64>) =
                writes.deletes.iter().map(|(k, v)| (k, *v)).unzip();
            let (user_ids, manga_ids): (Vec<&str>, Vec<i64>) = keys
                .iter()
                .map(|k| (k.user_id.as_str(), k.manga_id))
                .unzip();
            expected += writes.deletes.len() as u64;
            written += sqlx::query(
                "DELETE FROM user_progress AS r
                  USING UNNEST($1::text[], $2::int8[], $3::int8[]) AS x(u, m, ev)
                  WHERE r.user_id = x.u AND r.manga_id = x.m AND r.version = x.ev",
            )
            .bind(&user_ids)
            .bind(&manga_ids)
            .bind(&guards)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if written != expected {
            tx.rollback().await?;
            return Ok(Committed::Conflict);
        }
        tx.commit().await?;
        Ok(Committed::Yes)
    }
}
