use anyhow::Context;
use clap::Parser;
use gateway::{Config, Gateway};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    gateway::telemetry::init(config.log_format);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let admin = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin port {addr}"))?,
        ),
        None => None,
    };
    let gateway = Gateway::build(listener, config)?;
    let stop_admin = CancellationToken::new();
    if let Some(admin) = admin {
        tokio::spawn(mangahub_admin::serve(
            admin,
            gateway.ready_check(),
            stop_admin.clone().cancelled_owned(),
        ));
    }
    let result = gateway.run(gateway::shutdown_signal()).await;
    stop_admin.cancel();
    result
}
