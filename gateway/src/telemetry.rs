//! Logging setup, shared with the progress service: `RUST_LOG`-style filter
//! (default `info`), text or JSON lines. Metrics are recorded with the
//! `metrics` macros; `mangahub_ops` serves them.

pub use mangahub_ops::telemetry::init;
