use clap::Parser;
use gateway::Config;

/// jemalloc rather than the system allocator: an idle connection's
/// allocations are a few hundred bytes each, made among the short-lived ones
/// of its handshake and authentication, and glibc's heap keeps more of that
/// churn resident (about 150-230 bytes per idle connection here; measured in
/// `docs/gateway.md`, "Memory per connection").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    gateway::telemetry::init(config.log_format);
    let listener = gateway::bind(&config)?;
    gateway::run(listener, config, gateway::shutdown_signal()).await
}
