//! The Postgres half of the hybrid store: reading a row with its change
//! sequence, and writing one collapsed batch of queued changes.
//!
//! Every row and tombstone carries the `change_seq` Redis assigned, and each
//! write only wins over an older sequence, so batches may commit in any order
//! (several replicas drain the queue) and still leave the newest change.

use sqlx::postgres::PgPool;

use crate::domain::{Progress, ProgressKey};
use crate::store::StoreError;
use crate::store::rows::{ProgressRow, RecordArrays, pg_from_micros, pg_progress_columns};

/// Serialises batch transactions of all replicas: the tombstone check of one
/// batch must see the deletes of another that committed just before it.
pub(crate) const BATCH_LOCK: i64 = 0x6d68_7072_6f67;

#[derive(Debug, sqlx::FromRow)]
struct RowWithSeq {
    #[sqlx(flatten)]
    row: ProgressRow,
    change_seq: i64,
}

pub async fn get_with_seq(
    pool: &PgPool,
    key: &ProgressKey,
) -> Result<Option<(Progress, i64)>, StoreError> {
    let row: Option<RowWithSeq> = sqlx::query_as(concat!(
        "SELECT ",
        pg_progress_columns!(),
        ", change_seq FROM user_progress WHERE user_id = $1 AND manga_id = $2"
    ))
    .bind(&key.user_id)
    .bind(key.manga_id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| Ok((Progress::try_from(r.row)?, r.change_seq)))
        .transpose()
}

/// One batch, collapsed to the newest change per record.
#[derive(Debug, Default)]
pub struct Batch {
    pub upserts: Vec<(Progress, i64)>,
    pub deletes: Vec<(ProgressKey, i64)>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes the batch in one transaction, one statement per kind of write,
/// rows in key order (see `in_key_order`).
pub async fn write_batch(pool: &PgPool, batch: &Batch) -> Result<(), StoreError> {
    let deletes = in_key_order(&batch.deletes, |(key, _)| key);
    let upserts = in_key_order(&batch.upserts, |(p, _)| &p.key);
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(BATCH_LOCK)
        .execute(&mut *tx)
        .await?;
    if !deletes.is_empty() {
        let mut users = Vec::with_capacity(deletes.len());
        let mut mangas = Vec::with_capacity(deletes.len());
        let mut seqs = Vec::with_capacity(deletes.len());
        for (key, seq) in deletes {
            users.push(key.user_id.as_str());
            mangas.push(key.manga_id);
            seqs.push(*seq);
        }
        sqlx::query(
            "INSERT INTO progress_tombstones (user_id, manga_id, change_seq)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[])
             ON CONFLICT (user_id, manga_id) DO UPDATE
               SET change_seq = EXCLUDED.change_seq, deleted_at = now()
               WHERE progress_tombstones.change_seq < EXCLUDED.change_seq",
        )
        .bind(&users)
        .bind(&mangas)
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM user_progress AS r
              USING UNNEST($1::text[], $2::int8[], $3::int8[]) AS x(u, m, q)
              WHERE r.user_id = x.u AND r.manga_id = x.m AND r.change_seq < x.q",
        )
        .bind(&users)
        .bind(&mangas)
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
    }
    if !upserts.is_empty() {
        let mut rows = RecordArrays::with_capacity(upserts.len());
        let mut seqs = Vec::with_capacity(upserts.len());
        for (p, seq) in upserts {
            rows.push(&p.key, Some(p));
            seqs.push(*seq);
        }
        sqlx::query(concat!(
            "INSERT INTO user_progress
               (user_id, manga_id, current_chapter, page, status, version, updated_at, change_seq,
                device)
             SELECT u, m, c::numeric / 100, p, s, v, ",
            pg_from_micros!("t"),
            ", q, dev
               FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::text[],
                           $6::int8[], $7::int8[], $8::int8[], $9::text[])
                 AS x(u, m, c, p, s, v, t, q, dev)
              WHERE NOT EXISTS (SELECT 1 FROM progress_tombstones d
                                 WHERE d.user_id = x.u AND d.manga_id = x.m
                                   AND d.change_seq >= x.q)
             ON CONFLICT (user_id, manga_id) DO UPDATE
               SET current_chapter = EXCLUDED.current_chapter, page = EXCLUDED.page,
                   status = EXCLUDED.status, version = EXCLUDED.version,
                   updated_at = EXCLUDED.updated_at, change_seq = EXCLUDED.change_seq,
                   device = EXCLUDED.device
               WHERE user_progress.change_seq < EXCLUDED.change_seq"
        ))
        .bind(&rows.user_ids)
        .bind(&rows.manga_ids)
        .bind(&rows.chapters)
        .bind(&rows.pages)
        .bind(&rows.statuses)
        .bind(&rows.versions)
        .bind(&rows.updated_at_us)
        .bind(&seqs)
        .bind(&rows.devices)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `rows` sorted by record key, the leading columns of the primary key and of
/// `user_progress_by_update`: consecutive index insertions then land on the
/// same pages. The writer collapses a batch in hash order, which made an
/// upsert batch about 15 % slower (docs/storage.md, "Benchmark").
fn in_key_order<T>(rows: &[T], key: impl Fn(&T) -> &ProgressKey) -> Vec<&T> {
    let mut sorted: Vec<&T> = rows.iter().collect();
    sorted.sort_unstable_by(|a, b| key(a).cmp(key(b)));
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Chapter, Status};

    fn record(chapter: i64, version: i64) -> Progress {
        record_of(ProgressKey::new("order", 1).expect("key"), chapter, version)
    }

    fn record_of(key: ProgressKey, chapter: i64, version: i64) -> Progress {
        Progress {
            key,
            chapter: Chapter::from_hundredths(chapter).expect("chapter"),
            page: 0,
            status: Status::Reading,
            version,
            updated_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000 + chapter)
                .expect("time"),
            device: None,
        }
    }

    fn upsert(chapter: i64, version: i64, seq: i64) -> Batch {
        Batch {
            upserts: vec![(record(chapter, version), seq)],
            deletes: vec![],
        }
    }

    async fn migrated_pool() -> PgPool {
        let url = testkit::fresh_database().await.expect("database");
        let pool = PgPool::connect(&url).await.expect("connect");
        sqlx::migrate!("../migrations/postgres")
            .run(&pool)
            .await
            .expect("migrations");
        pool
    }

    /// Replicas may commit batches in any order; the newest change wins.
    #[tokio::test]
    async fn batches_committed_out_of_order_keep_the_newest_change() {
        let pool = migrated_pool().await;
        let key = record(0, 1).key;
        let delete = Batch {
            upserts: vec![],
            deletes: vec![(key.clone(), 20)],
        };
        // Queue order: v1 (10), v2 (15), delete (20), recreated v1 (30).
        write_batch(&pool, &upsert(100, 2, 15)).await.expect("v2");
        write_batch(&pool, &delete).await.expect("delete");
        write_batch(&pool, &upsert(50, 1, 10))
            .await
            .expect("stale v1");
        assert_eq!(get_with_seq(&pool, &key).await.expect("read"), None);
        write_batch(&pool, &upsert(300, 1, 30))
            .await
            .expect("recreate");
        write_batch(&pool, &delete).await.expect("delete again");
        write_batch(&pool, &upsert(100, 2, 15))
            .await
            .expect("stale v2");
        let (p, seq) = get_with_seq(&pool, &key)
            .await
            .expect("read")
            .expect("recreated record");
        assert_eq!((p.chapter.hundredths(), p.version, seq), (300, 1, 30));
        assert_eq!(
            crate::store::postgres::prune_tombstones(&pool, std::time::Duration::ZERO, 25)
                .await
                .expect("prune"),
            1
        );
    }

    /// Whole batches, rows handed over in no particular order (the writer's
    /// collapse uses a hash map) and committed newest first: every record
    /// still ends at its newest change, and a stale update does not bring a
    /// deleted record back.
    #[tokio::test]
    async fn many_record_batches_in_any_order_keep_each_records_newest_change() {
        let pool = migrated_pool().await;
        const RECORDS: i64 = 60;
        let key = |i: i64| ProgressKey::new(format!("many-{}", i % 7), i + 1).expect("key");
        // Queue order: A updates every record (seq 100 + i); B deletes the
        // records i % 3 == 0 and updates the records i % 3 == 1 (200 + i); C
        // recreates the deleted records with an even i (300 + i).
        let a = Batch {
            upserts: (0..RECORDS)
                .rev()
                .map(|i| (record_of(key(i), i, 1), 100 + i))
                .collect(),
            deletes: vec![],
        };
        let b = Batch {
            upserts: (0..RECORDS)
                .filter(|i| i % 3 == 1)
                .map(|i| (record_of(key(i), 1000 + i, 2), 200 + i))
                .collect(),
            deletes: (0..RECORDS)
                .rev()
                .filter(|i| i % 3 == 0)
                .map(|i| (key(i), 200 + i))
                .collect(),
        };
        let c = Batch {
            upserts: (0..RECORDS)
                .filter(|i| i % 6 == 0)
                .map(|i| (record_of(key(i), 3000 + i, 1), 300 + i))
                .collect(),
            deletes: vec![],
        };
        for (name, batch) in [("C", &c), ("B", &b), ("B again", &b), ("A", &a)] {
            write_batch(&pool, batch).await.expect(name);
        }
        for i in 0..RECORDS {
            let expected = match (i % 3, i % 2) {
                (0, 0) => Some((3000 + i, 300 + i)),
                (0, _) => None,
                (1, _) => Some((1000 + i, 200 + i)),
                _ => Some((i, 100 + i)),
            };
            let stored = get_with_seq(&pool, &key(i))
                .await
                .expect("read")
                .map(|(p, seq)| (p.chapter.hundredths(), seq));
            assert_eq!(stored, expected, "record {i}");
        }
    }
}
