//! What the services share to run in production: the allocator (every
//! binary's, `mangahub` included), the admin HTTP port, the shutdown signal,
//! log setup, retry backoff, and settings whose values must never be printed.

mod admin;
mod allocator;
mod backoff;
mod secret;
mod shutdown;
pub mod telemetry;

pub use admin::{ReadyCheck, metrics_handle, serve};
pub use allocator::{ALLOCATOR, Allocator};
pub use backoff::Backoff;
pub use secret::Secret;
pub use shutdown::shutdown_signal;
pub use telemetry::LogFormat;
