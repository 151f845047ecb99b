//! Log setup, shared with the gateway: `RUST_LOG` filter (default `info`),
//! text or JSON lines.

pub use mangahub_ops::telemetry::init;
