use clap::Parser;
use gateway::Config;

#[global_allocator]
static ALLOCATOR: mangahub_ops::Allocator = mangahub_ops::ALLOCATOR;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    gateway::telemetry::init(config.log_format);
    let listener = gateway::bind(&config)?;
    gateway::run(listener, config, gateway::shutdown_signal()).await
}
