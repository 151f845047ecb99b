//! The name a device gives itself in `auth` (contract §6); the rule itself is
//! `mangahub_model::validate_device`.

use std::fmt;
use std::sync::Arc;

use mangahub_model::{ValidationError, validate_device};

/// A checked device name; cheap to clone onto every update of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device(Arc<str>);

impl Device {
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        validate_device(name)?;
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
