//! The storage error every store answers with; below both `store` and
//! `changelog`, which use it.

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The storage engine cannot be reached now; the caller may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err.to_string()),
            sqlx::Error::Database(db) if is_unavailable_sqlstate(db.code().as_deref()) => {
                StoreError::Unavailable(db.to_string())
            }
            other => StoreError::Internal(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
        match err.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked) => StoreError::Unavailable(err.to_string()),
            _ => StoreError::Internal(err.to_string()),
        }
    }
}

/// Postgres classes 08 (connection), 53 (resources), 57 (operator intervention:
/// shutdown, cannot connect now); SQLite BUSY (5) and LOCKED (6).
fn is_unavailable_sqlstate(code: Option<&str>) -> bool {
    matches!(code, Some(c) if c.starts_with("08") || c.starts_with("53") || c.starts_with("57") || c == "5" || c == "6")
}
