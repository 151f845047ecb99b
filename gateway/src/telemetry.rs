//! Logging setup: `RUST_LOG`-style filter (default `info`), text or JSON lines.
//! Metrics are recorded with the `metrics` macros; the exporter lives elsewhere.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Already initialised (e.g. by an embedding binary): keep that one.
    drop(result);
}
