//! The reading-progress record's values and their limits (contract §2 and
//! §6): exact decimal chapters, statuses, the record key, user ids, device
//! names and every numeric limit. The gateway, the progress service and the
//! CLI all check input with these, so a rule changes in one place.
//!
//! No I/O, no async, no serialization format: callers turn their own wire
//! forms (JSON numbers, gRPC strings) into these types.

mod chapter;
mod ids;
pub mod limits;
mod status;

pub use chapter::{Chapter, ChapterError};
pub use ids::{
    ProgressKey, validate_device, validate_manga_id, validate_page, validate_user_id,
    validate_username,
};
pub use status::Status;

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
