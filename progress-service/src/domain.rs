//! The reading-progress record and its update rules (contract §2), free of storage.
//!
//! Chapters are exact decimals held as integer hundredths; nothing here ever
//! touches a binary float.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

pub const MAX_USER_ID_BYTES: usize = 128;
pub const MAX_MANGA_ID: i64 = (1 << 53) - 1;
pub const MAX_PAGE: i32 = 100_000;
pub const MAX_DEVICE_BYTES: usize = 64;
const MAX_CHAPTER_HUNDREDTHS: u32 = 100_000 * 100;

/// A rejected input, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A chapter number, 0 ..= 100000 with at most two fractional digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Chapter(u32);

impl Chapter {
    pub fn from_hundredths(hundredths: i64) -> Result<Self, ValidationError> {
        u32::try_from(hundredths)
            .ok()
            .filter(|h| *h <= MAX_CHAPTER_HUNDREDTHS)
            .map(Chapter)
            .ok_or_else(|| ValidationError::new("chapter", "must be between 0 and 100000"))
    }

    pub fn hundredths(self) -> i64 {
        i64::from(self.0)
    }
}

impl FromStr for Chapter {
    type Err = ValidationError;

    /// Parses plain decimal text exactly: `76`, `76.5`, `76.50`, `0.25`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            ValidationError::new(
                "chapter",
                format!("{text:?} is not a decimal number with at most 2 fractional digits"),
            )
        };
        let (int_part, frac_part) = match text.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (text, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int_part) {
            return Err(invalid());
        }
        let frac = match frac_part {
            None => 0,
            Some(f) if all_digits(f) && f.len() <= 2 => {
                let padded = if f.len() == 1 {
                    f.parse::<u32>().map(|d| d * 10)
                } else {
                    f.parse()
                };
                padded.map_err(|_| invalid())?
            }
            Some(_) => return Err(invalid()),
        };
        let int_digits = int_part.trim_start_matches('0');
        if int_digits.len() > 6 {
            return Chapter::from_hundredths(i64::MAX);
        }
        let int_value: u32 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| invalid())?
        };
        Chapter::from_hundredths(i64::from(int_value) * 100 + i64::from(frac))
    }
}

impl fmt::Display for Chapter {
    /// Canonical form: `76.5`, `76`, `12.25`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{int}"),
            d if d % 10 == 0 => write!(f, "{int}.{}", d / 10),
            d => write!(f, "{int}.{d:02}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Reading,
    Completed,
    OnHold,
    Dropped,
    PlanToRead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Reading => "reading",
            Status::Completed => "completed",
            Status::OnHold => "on_hold",
            Status::Dropped => "dropped",
            Status::PlanToRead => "plan_to_read",
        }
    }
}

impl FromStr for Status {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "reading" => Status::Reading,
            "completed" => Status::Completed,
            "on_hold" => Status::OnHold,
            "dropped" => Status::Dropped,
            "plan_to_read" => Status::PlanToRead,
            other => {
                return Err(ValidationError::new(
                    "status",
                    format!(
                        "{other:?} is not one of reading, completed, on_hold, dropped, plan_to_read"
                    ),
                ));
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProgressKey {
    pub user_id: String,
    pub manga_id: i64,
}

impl ProgressKey {
    pub fn new(user_id: impl Into<String>, manga_id: i64) -> Result<Self, ValidationError> {
        let user_id = user_id.into();
        validate_user_id(&user_id)?;
        validate_manga_id(manga_id)?;
        Ok(Self { user_id, manga_id })
    }
}

/// 1..128 bytes of UTF-8 without NUL or other control characters, the same
/// in every storage mode (Postgres cannot store NUL).
pub fn validate_user_id(user_id: &str) -> Result<(), ValidationError> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_BYTES {
        return Err(ValidationError::new("user_id", "must be 1 to 128 bytes"));
    }
    if user_id.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "user_id",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A device name: 1..64 bytes of printable UTF-8 (no control characters).
pub fn validate_device(device: &str) -> Result<(), ValidationError> {
    if device.is_empty() || device.len() > MAX_DEVICE_BYTES || device.chars().any(char::is_control)
    {
        return Err(ValidationError::new(
            "device",
            "must be 1 to 64 bytes of printable UTF-8",
        ));
    }
    Ok(())
}

fn validate_manga_id(manga_id: i64) -> Result<(), ValidationError> {
    if !(1..=MAX_MANGA_ID).contains(&manga_id) {
        return Err(ValidationError::new(
            "manga_id",
            "must be between 1 and 9007199254740991",
        ));
    }
    Ok(())
}

pub fn validate_page(page: i64) -> Result<i32, ValidationError> {
    i32::try_from(page)
        .ok()
        .filter(|p| (0..=MAX_PAGE).contains(p))
        .ok_or_else(|| ValidationError::new("page", "must be between 0 and 100000"))
}

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
