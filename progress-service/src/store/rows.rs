//! The row shape both SQL stores read, and its conversion to the domain record.

use chrono::DateTime;

use crate::domain::{Chapter, Progress, ProgressKey};
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
        })
    }
}

pub(crate) fn into_records(rows: Vec<ProgressRow>) -> Result<Vec<Progress>, StoreError> {
    rows.into_iter().map(Progress::try_from).collect()
}
