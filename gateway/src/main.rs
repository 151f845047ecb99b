use anyhow::Context;
use clap::Parser;
use gateway::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    gateway::telemetry::init(config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    gateway::run(listener, config, gateway::shutdown_signal()).await
}
