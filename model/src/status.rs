//! The reading status of a record.

use std::fmt;
use std::str::FromStr;

use crate::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Reading,
    Completed,
    OnHold,
    Dropped,
    PlanToRead,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Reading,
        Status::Completed,
        Status::OnHold,
        Status::Dropped,
        Status::PlanToRead,
    ];

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

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "status",
                    "must be one of reading, completed, on_hold, dropped, plan_to_read",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_rejects_unknown() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
        }
        assert_eq!("done".parse::<Status>().expect_err("bad").field, "status");
    }
}
