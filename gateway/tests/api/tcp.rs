//! Every scenario over TCP (JSON lines).

pub mod helpers {
    pub use crate::helpers::*;
}
#[path = "auth.rs"]
mod auth;
#[path = "devices.rs"]
mod devices;
#[path = "fanout.rs"]
mod fanout;
#[path = "limits.rs"]
mod limits;
#[path = "requests.rs"]
mod requests;
#[path = "resilience.rs"]
mod resilience;
#[path = "scenarios.rs"]
mod scenarios;
#[path = "sync.rs"]
mod sync;
