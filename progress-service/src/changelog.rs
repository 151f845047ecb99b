//! The change log every store keeps (contract §6): each applied change and
//! delete has a position, strictly increasing in the order changes become
//! visible, and "everything after position P" can be read back for
//! `CHANGE_RETENTION`. A cursor is the store's epoch plus a position, so a
//! cursor from another (or a wiped) database is recognised as expired.
//!
//! How each store assigns and reads positions is in `docs/storage.md`.

use crate::domain::ValidationError;
use crate::error::StoreError;
use crate::events::ChangeEvent;

/// A reader's place in the log: changes after `position` of log `epoch`.
///
/// `complete_at`: the holder's state is already complete up to this later
/// position except for records after `position` (a full-state read in
/// pages): it needs deletes only after `complete_at`, so only those must
/// still be kept for the cursor to be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCursor {
    pub epoch: String,
    pub position: i64,
    pub complete_at: Option<i64>,
}

impl LogCursor {
    pub fn at(epoch: &str, position: i64) -> Self {
        Self {
            epoch: epoch.to_owned(),
            position,
            complete_at: None,
        }
    }

    /// Opaque text: `<epoch>.<position>`, or `<epoch>.<position>.<complete_at>`.
    pub fn encode(&self) -> String {
        match self.complete_at {
            Some(at) => format!("{}.{}.{at}", self.epoch, self.position),
            None => format!("{}.{}", self.epoch, self.position),
        }
    }

    /// Parses a cursor given in `field`; the epoch is checked by the store.
    pub fn decode(field: &'static str, text: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::new(field, "not a cursor returned by this service");
        let mut parts = text.split('.');
        let epoch = parts.next().ok_or_else(bad)?;
        let number = |part: Option<&str>| -> Result<i64, ValidationError> {
            part.ok_or_else(bad)?
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(bad)
        };
        let position = number(parts.next())?;
        let complete_at = parts.next().map(|p| number(Some(p))).transpose()?;
        if parts.next().is_some()
            || epoch.is_empty()
            || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
            || complete_at.is_some_and(|at| at < position)
        {
            return Err(bad());
        }
        Ok(Self {
            epoch: epoch.to_owned(),
            position,
            complete_at,
        })
    }

    /// The position after which the holder needs every delete.
    pub fn deletes_after(&self) -> i64 {
        self.complete_at.unwrap_or(self.position).max(self.position)
    }
}

/// Which changes to read: all users' or one user's.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub user_id: Option<String>,
    /// Strictly after this position (0 = from the start).
    pub after: i64,
    /// Most changes returned; a store may return fewer.
    pub limit: usize,
    /// `false`: only records (a full state read from position 0).
    pub deletes: bool,
    /// Deletes after this position must all still be kept, else the read
    /// is `Expired` (usually `after`; see `LogCursor::complete_at`).
    pub deletes_after: i64,
}

impl LogQuery {
    /// Changes (deletes included) after `cursor`.
    pub fn after(user_id: Option<String>, cursor: &LogCursor, limit: usize) -> Self {
        Self {
            user_id,
            after: cursor.position,
            limit,
            deletes: true,
            deletes_after: cursor.deletes_after(),
        }
    }

    /// Expired when deletes this query needs may have been pruned.
    pub fn expired(&self, pruned_through: i64) -> bool {
        self.deletes && self.deletes_after < pruned_through
    }
}

/// Changes in position order, each record at most once at its latest state,
/// all within `(after, head]`: every change up to `head` that is not here is
/// superseded by one here or after `head`.
#[derive(Debug, Clone, Default)]
pub struct LogPage {
    pub changes: Vec<ChangeEvent>,
    /// The log's last position when the page was read.
    pub head: i64,
}

impl LogPage {
    /// Where the next read continues: after the last change when the page
    /// was cut by `limit`, else at `head`.
    pub fn next_after(&self, limit: usize, after: i64) -> i64 {
        match self.changes.last() {
            Some(last) if self.changes.len() >= limit => last.position,
            _ => self.head.max(after),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// Changes after the cursor are no longer all kept (retention passed,
    /// or the cursor belongs to another store): the reader starts over.
    #[error("the cursor expired; sync again from scratch, without a cursor")]
    Expired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for LogError {
    fn from(err: sqlx::Error) -> Self {
        LogError::Store(err.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = LogCursor::at("a1b2c3", 42);
        assert_eq!(LogCursor::decode("after", &c.encode()).expect("valid"), c);
        let paged = LogCursor {
            complete_at: Some(50),
            ..c.clone()
        };
        assert_eq!(paged.encode(), "a1b2c3.42.50");
        assert_eq!(
            LogCursor::decode("after", "a1b2c3.42.50").expect("valid"),
            paged
        );
        assert_eq!(paged.deletes_after(), 50);
        for bad in [
            "abc.5.4",
            "abc.1.2.3",
            "abc.1.",
            "",
            "42",
            ".42",
            "abc.",
            "abc.-1",
            "ab-c.4",
            "abc.4x",
            "abc.99999999999999999999",
        ] {
            assert!(LogCursor::decode("after", bad).is_err(), "{bad}");
        }
        let err = LogCursor::decode("after", "nope").expect_err("malformed");
        assert_eq!(err.field, "after");
    }
}
