//! What both services share to run in production: the admin HTTP port, the
//! shutdown signal, and settings whose values must never be printed.

mod admin;
mod secret;
mod shutdown;

pub use admin::{ReadyCheck, metrics_handle, serve};
pub use secret::Secret;
pub use shutdown::shutdown_signal;
