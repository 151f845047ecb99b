//! The SQLite file's one write connection, driven synchronously by the group
//! commit writer on a thread of its own.
//!
//! A batch is a handful of statements; through an async driver each one is a
//! hand-off to the connection's thread and back, and on a loaded machine
//! every hand-off waits for a core. Here the thread that takes a batch off
//! the queue also runs its SQL, so a batch costs no wake-up beyond its own
//! `fsync`. Reads keep their async pool (`mod.rs`); WAL lets them run beside
//! the writer.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::config::SqliteSync;
use crate::domain::{self, Progress, ProgressKey};
use crate::store::StoreError;
use crate::store::group_commit::{Committed, Loaded, SqlBatch, Stamp, Writes};
use crate::store::row_cache::RowCache;
use crate::store::rows::ProgressRow;

pub(super) struct SqliteWriter {
    conn: Mutex<Connection>,
    cache: RowCache,
    /// The last position committed.
    head: AtomicI64,
}

impl SqliteWriter {
    /// Opens the write connection on a migrated file.
    pub fn open(path: &Path, sync: SqliteSync) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // One upsert statement per row count, the loads, the deletes.
        conn.set_prepared_statement_cache_capacity(UPSERT_ROWS + 8);
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Internal(format!(
                "SQLite refused WAL mode (got {mode})"
            )));
        }
        let synchronous = match sync {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        // Statement journals of the upserts stay in memory.
        conn.pragma_update(None, "temp_store", "memory")?;
        conn.pragma_update(None, "cache_size", -16384)?;
        // This process is the file's only writer: positions continue from the
        // last one any batch recorded.
        let head: i64 = conn.query_row(
            "SELECT max(last_position, pruned_through,
               (SELECT COALESCE(max(change_seq), 0) FROM user_progress),
               (SELECT COALESCE(max(change_seq), 0) FROM progress_tombstones))
               FROM progress_change_log WHERE id = 1",
            [],
            |row| row.get(0),
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
            cache: RowCache::default(),
            head: AtomicI64::new(head),
        })
    }

    /// The last position committed: everything up to it is readable.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Acquire)
    }

    fn connection(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Internal("SQLite writer poisoned".into()))
    }

    /// Reads the rows of `keys` (one primary-key lookup each).
    fn load(conn: &Connection, keys: &[ProgressKey]) -> Result<Vec<Progress>, StoreError> {
        let mut select = conn.prepare_cached(concat!(
            "SELECT ",
            columns!(),
            " FROM user_progress WHERE user_id = ?1 AND manga_id = ?2"
        ))?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let row = select
                .query_row(params![key.user_id, key.manga_id], |row| {
                    Ok(ProgressRow {
                        user_id: row.get(0)?,
                        manga_id: row.get(1)?,
                        chapter_hundredths: row.get(2)?,
                        page: row.get(3)?,
                        status: row.get(4)?,
                        version: row.get(5)?,
                        updated_at_us: row.get(6)?,
                        device: row.get(7)?,
                    })
                })
                .optional()?;
            if let Some(row) = row {
                found.push(Progress::try_from(row)?);
            }
        }
        Ok(found)
    }

    /// Writes a planned batch atomically, positions after `base`. The
    /// batch's last change is always written (as a row or a delete marker),
    /// so the last position taken is the tables' maximum: nothing else
    /// records it.
    fn write(conn: &mut Connection, writes: &Writes, base: i64) -> Result<(), StoreError> {
        let upserts: Vec<(&Progress, &Stamp)> = writes
            .inserts
            .iter()
            .map(|(p, s)| (p, s))
            .chain(writes.updates.iter().map(|(p, _, s)| (p, s)))
            .collect();
        // Markers of records created and deleted within the batch have no
        // row to delete (this process is the only writer).
        let deletes: Vec<(&ProgressKey, &Stamp)> = writes
            .deletes
            .iter()
            .map(|(key, _, stamp)| (key, stamp))
            .chain(writes.markers.iter().map(|(key, stamp)| (key, stamp)))
            .collect();
        // The common batch, upserts that fit one statement, runs alone
        // outside a transaction: SQLite makes one statement atomic by
        // itself, and only a statement inside a transaction pays for a
        // statement journal (a copy of every page it touches).
        if deletes.is_empty() && upserts.len() <= UPSERT_ROWS {
            return Ok(upsert(conn, &upserts, base)?);
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for chunk in upserts.chunks(UPSERT_ROWS) {
            upsert(&tx, chunk, base)?;
        }
        if !deletes.is_empty() {
            let now_us = domain::now().timestamp_micros();
            let mut delete = tx
                .prepare_cached("DELETE FROM user_progress WHERE user_id = ?1 AND manga_id = ?2")?;
            let mut marker = tx.prepare_cached(
                "INSERT INTO progress_tombstones (user_id, manga_id, change_seq, origin, deleted_at_us)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id, manga_id) DO UPDATE SET change_seq = excluded.change_seq,
                   origin = excluded.origin, deleted_at_us = excluded.deleted_at_us",
            )?;
            for (key, stamp) in deletes {
                delete.execute(params![key.user_id, key.manga_id])?;
                marker.execute(params![
                    key.user_id,
                    key.manga_id,
                    base + i64::from(stamp.offset),
                    stamp.meta.origin,
                    now_us,
                ])?;
            }
        }
        // A failed COMMIT leaves the transaction open; dropping it rolls back.
        tx.commit()?;
        Ok(())
    }

    /// Drops delete markers older than `retention`, remembering the newest
    /// position dropped (cursors below it are expired). Blocks: call it
    /// where blocking is allowed.
    pub fn prune(&self, retention: Duration) -> Result<u64, StoreError> {
        let cutoff = domain::now().timestamp_micros()
            - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let mut conn = self.connection()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let newest: Option<i64> = tx.query_row(
            "SELECT max(change_seq) FROM progress_tombstones WHERE deleted_at_us < ?1",
            [cutoff],
            |row| row.get(0),
        )?;
        let gone = tx.execute(
            "DELETE FROM progress_tombstones WHERE deleted_at_us < ?1",
            [cutoff],
        )?;
        if let Some(newest) = newest {
            tx.execute(
                "UPDATE progress_change_log SET pruned_through = max(pruned_through, ?1) WHERE id = 1",
                [newest],
            )?;
        }
        tx.commit()?;
        Ok(gone as u64)
    }
}

/// Most rows one upsert statement takes; the statement cache holds one
/// statement per row count up to it.
const UPSERT_ROWS: usize = 128;
/// Columns one upserted row binds.
const UPSERT_COLUMNS: usize = 11;

/// The upsert statement for 1..=`UPSERT_ROWS` rows, at index `rows - 1`.
static UPSERT_SQL: LazyLock<Vec<String>> =
    LazyLock::new(|| (1..=UPSERT_ROWS).map(upsert_sql).collect());

fn upsert_sql(rows: usize) -> String {
    let row = format!("({})", ["?"; UPSERT_COLUMNS].join(", "));
    let values = vec![row.as_str(); rows].join(", ");
    format!(
        concat!(
            "INSERT INTO user_progress (",
            columns!(),
            ", change_seq, origin, private) VALUES {}",
            " ON CONFLICT (user_id, manga_id) DO UPDATE SET
           chapter_hundredths = excluded.chapter_hundredths, page = excluded.page,
           status = excluded.status, version = excluded.version,
           updated_at_us = excluded.updated_at_us, device = excluded.device,
           change_seq = excluded.change_seq, origin = excluded.origin,
           private = excluded.private"
        ),
        values
    )
}

/// Upserts `rows` in one statement (a created record's delete marker goes
/// with it, by trigger).
fn upsert(conn: &Connection, rows: &[(&Progress, &Stamp)], base: i64) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // Built once per row count: a batch only looks its statement up.
    let mut statement = conn.prepare_cached(&UPSERT_SQL[rows.len() - 1])?;
    let mut at = 0;
    for (p, stamp) in rows {
        statement.raw_bind_parameter(at + 1, &p.key.user_id)?;
        statement.raw_bind_parameter(at + 2, p.key.manga_id)?;
        statement.raw_bind_parameter(at + 3, p.chapter.hundredths())?;
        statement.raw_bind_parameter(at + 4, p.page)?;
        statement.raw_bind_parameter(at + 5, p.status.as_str())?;
        statement.raw_bind_parameter(at + 6, p.version)?;
        statement.raw_bind_parameter(at + 7, p.updated_at.timestamp_micros())?;
        statement.raw_bind_parameter(at + 8, p.device.as_deref())?;
        statement.raw_bind_parameter(at + 9, base + i64::from(stamp.offset))?;
        statement.raw_bind_parameter(at + 10, stamp.meta.origin.as_str())?;
        statement.raw_bind_parameter(at + 11, stamp.meta.private)?;
        at += UPSERT_COLUMNS;
    }
    statement.raw_execute()?;
    Ok(())
}

#[async_trait]
impl SqlBatch for SqliteWriter {
    fn blocks(&self) -> bool {
        true
    }

    async fn load_and_write(
        &self,
        keys: &[ProgressKey],
        plan: &mut (dyn for<'a> FnMut(&'a Loaded) -> Writes + Send),
    ) -> Result<Committed, StoreError> {
        let mut conn = self.connection()?;
        // This process is the file's only writer (see `lock_file`), so cached
        // rows are current.
        let (mut loaded, missing) = self.cache.lookup(keys);
        if !missing.is_empty() {
            loaded.extend(
                Self::load(&conn, &missing)?
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
        if let Err(err) = Self::write(&mut conn, &writes, base) {
            self.cache.forget(keys);
            return Err(err);
        }
        self.head
            .store(base + i64::from(writes.positions), Ordering::Release);
        self.cache.committed(loaded, writes);
        Ok(Committed::Yes { base })
    }
}
