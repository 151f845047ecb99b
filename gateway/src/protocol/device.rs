//! The name a device gives itself in `auth` (contract §6): 1..64 bytes of
//! printable UTF-8. This type is the one place that rule lives in the gateway.

use std::fmt;
use std::sync::Arc;

pub const MAX_DEVICE_BYTES: usize = 64;

/// A checked device name; cheap to clone onto every update of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device(Arc<str>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("must be 1 to {MAX_DEVICE_BYTES} bytes")]
    Length,
    #[error("must be printable text without control characters")]
    Control,
}

impl Device {
    pub fn parse(name: &str) -> Result<Self, DeviceError> {
        if name.is_empty() || name.len() > MAX_DEVICE_BYTES {
            return Err(DeviceError::Length);
        }
        if name.chars().any(char::is_control) {
            return Err(DeviceError::Control);
        }
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
