//! The gRPC face of the service: `mangahub.progress.v1.ProgressService`.

mod auth;
mod convert;
mod service;
mod status;

pub use auth::ServiceTokenCheck;
pub use convert::update_command;
pub use service::ProgressApi;
