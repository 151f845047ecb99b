//! Identifiers and bounded fields: the record key, user ids, usernames,
//! device names, manga ids and pages.

use crate::ValidationError;
use crate::limits::{MAX_DEVICE_BYTES, MAX_MANGA_ID, MAX_PAGE, MAX_USER_ID_BYTES};

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

/// 1..128 bytes of UTF-8 without NUL or other control characters
/// (`char::is_control`), the same in every storage mode (Postgres cannot
/// store NUL) and for the user of a token.
pub fn validate_user_id(user_id: &str) -> Result<(), ValidationError> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_BYTES {
        return Err(ValidationError::new(
            "user_id",
            format!("must be 1 to {MAX_USER_ID_BYTES} bytes"),
        ));
    }
    if user_id.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "user_id",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A token's display name: any length, no control characters.
pub fn validate_username(username: &str) -> Result<(), ValidationError> {
    if username.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "username",
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
            format!("must be 1 to {MAX_DEVICE_BYTES} bytes of printable UTF-8"),
        ));
    }
    Ok(())
}

pub fn validate_manga_id(manga_id: i64) -> Result<(), ValidationError> {
    if !(1..=MAX_MANGA_ID).contains(&manga_id) {
        return Err(ValidationError::new(
            "manga_id",
            format!("must be an integer between 1 and {MAX_MANGA_ID}"),
        ));
    }
    Ok(())
}

pub fn validate_page(page: i64) -> Result<i32, ValidationError> {
    i32::try_from(page)
        .ok()
        .filter(|p| (0..=MAX_PAGE).contains(p))
        .ok_or_else(|| {
            ValidationError::new(
                "page",
                format!("must be an integer between 0 and {MAX_PAGE}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_page_limits() {
        assert!(ProgressKey::new("", 1).is_err());
        assert!(ProgressKey::new("x".repeat(128), 1).is_ok());
        assert_eq!(
            ProgressKey::new("x".repeat(129), 1)
                .expect_err("long")
                .field,
            "user_id"
        );
        assert_eq!(
            ProgressKey::new("u", 0).expect_err("zero").field,
            "manga_id"
        );
        assert!(ProgressKey::new("u", MAX_MANGA_ID).is_ok());
        assert!(ProgressKey::new("u", MAX_MANGA_ID + 1).is_err());
        assert_eq!(validate_page(0), Ok(0));
        assert_eq!(validate_page(100_000), Ok(100_000));
        assert_eq!(validate_page(-1).expect_err("neg").field, "page");
        assert!(validate_page(100_001).is_err());
    }

    #[test]
    fn user_ids_devices_and_usernames_refuse_control_characters() {
        for bad in ["a\0b", "tab\there", "new\nline", "\u{7f}", "\u{85}"] {
            assert_eq!(validate_user_id(bad).expect_err(bad).field, "user_id");
            assert_eq!(validate_device(bad).expect_err(bad).field, "device");
            assert_eq!(validate_username(bad).expect_err(bad).field, "username");
        }
        assert!(validate_user_id("Ruth 📱 é").is_ok());
        assert!(validate_device(&"é".repeat(32)).is_ok());
        assert!(validate_device(&"é".repeat(33)).is_err());
        assert!(validate_device("").is_err());
    }
}
