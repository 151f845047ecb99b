//! The reading-progress record and its update rules (contract §2), free of
//! storage. The values it is made of (chapter, status, key) and their limits
//! are `mangahub-model`'s, shared with the gateway.

use chrono::{DateTime, Utc};
pub use mangahub_model::limits::{MAX_DEVICE_BYTES, MAX_MANGA_ID, MAX_PAGE, MAX_USER_ID_BYTES};
pub use mangahub_model::{
    Chapter, ProgressKey, Status, ValidationError, validate_device, validate_page, validate_user_id,
};

/// The stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub key: ProgressKey,
    pub chapter: Chapter,
    pub page: i32,
    pub status: Status,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    /// The device of the last applied change, when it named one.
    pub device: Option<String>,
}

/// A validated update request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateCommand {
    pub key: ProgressKey,
    pub chapter: Chapter,
    pub page: i32,
    /// `None` keeps the stored status.
    pub status: Option<Status>,
    pub force: bool,
    /// The device making the change (validated).
    pub device: Option<String>,
}

/// The result of merging an update: the resulting stored record either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub applied: bool,
    pub progress: Progress,
    /// The change-log position of an applied change, set by the store.
    pub position: Option<i64>,
}

/// Server time at the precision every store keeps (microseconds).
pub fn now() -> DateTime<Utc> {
    truncate_to_micros(Utc::now())
}

pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Merges `cmd` into `stored` by the rules of contract §2.
///
/// The position `(chapter, page)` only moves forward unless `force`; a named
/// status always applies; nothing changed means not applied and no new version.
/// `updated_at` never goes backwards for a record, even if the clock does.
pub fn apply_update(
    stored: Option<&Progress>,
    cmd: &UpdateCommand,
    now: DateTime<Utc>,
) -> UpdateOutcome {
    let Some(stored) = stored else {
        return UpdateOutcome {
            applied: true,
            progress: Progress {
                key: cmd.key.clone(),
                chapter: cmd.chapter,
                page: cmd.page,
                status: cmd.status.unwrap_or(Status::Reading),
                version: 1,
                updated_at: now,
                device: cmd.device.clone(),
            },
            position: None,
        };
    };
    let new_position = (cmd.chapter, cmd.page);
    let old_position = (stored.chapter, stored.page);
    let moves = if cmd.force {
        new_position != old_position
    } else {
        new_position > old_position
    };
    let status = cmd.status.unwrap_or(stored.status);
    if !moves && status == stored.status {
        return UpdateOutcome {
            applied: false,
            progress: stored.clone(),
            position: None,
        };
    }
    let (chapter, page) = if moves { new_position } else { old_position };
    let min_next = stored.updated_at + chrono::Duration::microseconds(1);
    UpdateOutcome {
        applied: true,
        progress: Progress {
            key: stored.key.clone(),
            chapter,
            page,
            status,
            version: stored.version + 1,
            updated_at: now.max(min_next),
            device: cmd.device.clone(),
        },
        position: None,
    }
}

#[cfg(test)]
#[path = "domain_tests.rs"]
mod tests;
