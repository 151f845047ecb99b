//! The row shapes both SQL stores read, and their conversion to the domain
//! record and to change-log events; the Postgres projection and timestamp
//! SQL that produce and consume them; the parallel arrays writes bind.

use chrono::DateTime;

use crate::domain::{Chapter, Progress, ProgressKey};
use crate::events::{Change, ChangeEvent, WriteMeta};
use crate::store::StoreError;

/// The `user_progress` columns as `ProgressRow` reads them (Postgres):
/// NUMERIC(10,2) and TIMESTAMPTZ become exact integers, never floats.
macro_rules! pg_progress_columns {
    () => {
        "user_id, manga_id,
           (current_chapter * 100)::int8 AS chapter_hundredths, page, status, version,
           (EXTRACT(EPOCH FROM updated_at) * 1000000)::int8 AS updated_at_us, device"
    };
}
pub(crate) use pg_progress_columns;

/// Rebuilds a TIMESTAMPTZ from unix microseconds without a float (Postgres).
macro_rules! pg_from_micros {
    ($e:literal) => {
        concat!(
            "(TIMESTAMPTZ 'epoch' + ",
            $e,
            " * INTERVAL '1 microsecond')"
        )
    };
}
pub(crate) use pg_from_micros;

/// Records as parallel arrays (one element per record), for `UNNEST`.
#[derive(Debug, Default)]
pub(crate) struct RecordArrays {
    pub user_ids: Vec<String>,
    pub manga_ids: Vec<i64>,
    pub chapters: Vec<i64>,
    pub pages: Vec<i32>,
    pub statuses: Vec<&'static str>,
    pub versions: Vec<i64>,
    pub updated_at_us: Vec<i64>,
    pub devices: Vec<Option<String>>,
}

impl RecordArrays {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            user_ids: Vec::with_capacity(n),
            manga_ids: Vec::with_capacity(n),
            chapters: Vec::with_capacity(n),
            pages: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            updated_at_us: Vec::with_capacity(n),
            devices: Vec::with_capacity(n),
        }
    }

    /// `key` with `row`'s values, or neutral ones when there is no row (a
    /// delete, where only the key counts).
    pub fn push(&mut self, key: &ProgressKey, row: Option<&Progress>) {
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
        self.devices.push(row.and_then(|p| p.device.clone()));
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ProgressRow {
    pub user_id: String,
    pub manga_id: i64,
    pub chapter_hundredths: i64,
    pub page: i32,
    pub status: String,
    pub version: i64,
    pub updated_at_us: i64,
    pub device: Option<String>,
}

impl TryFrom<ProgressRow> for Progress {
    type Error = StoreError;

    fn try_from(row: ProgressRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Internal(format!("stored row has a bad {what}"));
        Ok(Progress {
            key: ProgressKey {
                user_id: row.user_id,
                manga_id: row.manga_id,
            },
            chapter: Chapter::from_hundredths(row.chapter_hundredths)
                .map_err(|_| corrupt("chapter"))?,
            page: row.page,
            status: row.status.parse().map_err(|_| corrupt("status"))?,
            version: row.version,
            updated_at: DateTime::from_timestamp_micros(row.updated_at_us)
                .ok_or_else(|| corrupt("updated_at"))?,
            device: row.device,
        })
    }
}

pub(crate) fn into_records(rows: Vec<ProgressRow>) -> Result<Vec<Progress>, StoreError> {
    rows.into_iter().map(Progress::try_from).collect()
}

/// One change read from the log: a record at its last change, or a delete
/// marker (`deleted`, with only the key of `row` meaningful).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LogRow {
    pub deleted: bool,
    #[sqlx(flatten)]
    pub row: ProgressRow,
    pub change_seq: i64,
    pub origin: String,
    pub private: bool,
}

impl TryFrom<LogRow> for ChangeEvent {
    type Error = StoreError;

    fn try_from(log: LogRow) -> Result<Self, StoreError> {
        let change = if log.deleted {
            Change::Deleted(ProgressKey {
                user_id: log.row.user_id,
                manga_id: log.row.manga_id,
            })
        } else {
            Change::Updated(Progress::try_from(log.row)?)
        };
        Ok(ChangeEvent {
            change,
            meta: WriteMeta {
                origin: log.origin,
                private: log.private,
            },
            position: log.change_seq,
        })
    }
}

pub(crate) fn into_events(rows: Vec<LogRow>) -> Result<Vec<ChangeEvent>, StoreError> {
    rows.into_iter().map(ChangeEvent::try_from).collect()
}
