use clap::Parser;
use progress_service::{Application, Config, shutdown_signal, telemetry};

#[global_allocator]
static ALLOCATOR: mangahub_ops::Allocator = mangahub_ops::ALLOCATOR;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.log_format);
    let app = Application::build(config).await?;
    app.run_until(shutdown_signal()).await
}
