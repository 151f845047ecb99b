use clap::Parser;
use gateway::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    gateway::telemetry::init(config.log_format);
    let listener = gateway::bind(&config)?;
    gateway::run(listener, config, gateway::shutdown_signal()).await
}
