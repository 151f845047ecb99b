//! The row shapes both SQL stores read, and their conversion to the domain
//! record and to change-log events.

use chrono::DateTime;

use crate::domain::{Chapter, Progress, ProgressKey};
use crate::events::{Change, ChangeEvent, WriteMeta};
use crate::store::StoreError;

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
