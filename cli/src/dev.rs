//! `mangahub dev`: the whole system in one process for development — the
//! progress service on an embedded SQLite file and the gateway, talking real
//! gRPC over loopback.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::oneshot;

use crate::client::conn::WS_PATH;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the SQLite file and the generated dev secret live.
    #[arg(long, default_value = ".mangahub-dev")]
    pub data_dir: PathBuf,
    /// Gateway (JSON lines over TCP).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub gateway_listen: SocketAddr,
    /// Gateway WebSocket port: the same protocol at /ws, the live page at /.
    #[arg(long, alias = "ws-listen", default_value = "127.0.0.1:8082")]
    pub gateway_ws_listen: SocketAddr,
    /// Progress service (gRPC).
    #[arg(long, default_value = "127.0.0.1:8083")]
    pub progress_listen: SocketAddr,
    /// Gateway admin port (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:9081")]
    pub gateway_admin: SocketAddr,
    /// Progress service admin port.
    #[arg(long, default_value = "127.0.0.1:9083")]
    pub progress_admin: SocketAddr,
    /// Bind every port to a free one instead (tests; standard ports taken).
    #[arg(long)]
    pub free_ports: bool,
    /// HS256 secret; generated and kept in the data dir when not given.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// User of the ready-made demo token.
    #[arg(long, default_value = "demo")]
    pub demo_user: String,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let (secret, generated) = match &args.jwt_secret {
        Some(secret) => (secret.clone(), false),
        None => (dev_secret(&args.data_dir)?, true),
    };
    let port = |addr: SocketAddr| {
        if args.free_ports {
            SocketAddr::new(addr.ip(), 0)
        } else {
            addr
        }
    };
    let db = args.data_dir.join("mangahub.db");
    let progress_config = progress_service::Config::try_parse_from([
        "progress-service".to_owned(),
        "--listen".into(),
        port(args.progress_listen).to_string(),
        "--metrics-listen".into(),
        port(args.progress_admin).to_string(),
        "--database-url".into(),
        format!("sqlite://{}", db.display()),
    ])?;
    let progress = progress_service::Application::build(progress_config)
        .await?
        .spawn();
    let progress_addr = progress.local_addr();
    let progress_admin = progress.admin_addr();

    let gateway_config = gateway::Config::try_parse_from([
        "gateway".to_owned(),
        "--listen".into(),
        port(args.gateway_listen).to_string(),
        "--ws-listen".into(),
        port(args.gateway_ws_listen).to_string(),
        "--metrics-listen".into(),
        port(args.gateway_admin).to_string(),
        "--progress-url".into(),
        format!("http://{progress_addr}"),
        "--jwt-secret".into(),
        secret.clone(),
    ])?;
    let listener = tokio::net::TcpListener::bind(gateway_config.listen)
        .await
        .with_context(|| format!("binding {}", gateway_config.listen))?;
    let gateway = gateway::Gateway::build(listener, gateway_config)?;
    let gateway_addr = gateway.local_addr()?;
    let ws_addr = gateway
        .ws_addr()
        .context("the gateway's WebSocket port is off")?;
    let gateway_admin = gateway.admin_addr();
    let mut readiness = gateway.readiness();
    let (stop_gateway, gateway_stopped) = oneshot::channel::<()>();
    let gateway_task = tokio::spawn(gateway.run(async {
        let _ = gateway_stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(30), readiness.wait())
        .await
        .context("the gateway did not reach the progress service")?;

    let token = crate::token::mint(
        &secret,
        &args.demo_user,
        Some(&args.demo_user),
        Duration::from_secs(24 * 3600),
    )?;
    // Written once and never fatal: dev keeps running if nobody reads stdout.
    let mut banner = String::new();
    let _ = writeln!(banner, "MangaHub dev is running (Ctrl-C stops it).");
    let _ = writeln!(banner, "  gateway:          {gateway_addr}");
    let ws_url = format!("ws://{ws_addr}{WS_PATH}");
    let _ = writeln!(banner, "  websocket:        {ws_url}");
    let _ = writeln!(
        banner,
        "  live page:        http://{ws_addr}/#token={token}"
    );
    let _ = writeln!(banner, "  progress service: http://{progress_addr}");
    if let (Some(g), Some(p)) = (gateway_admin, progress_admin) {
        let _ = writeln!(
            banner,
            "  metrics:          http://{g}/metrics  http://{p}/metrics"
        );
    }
    let _ = writeln!(banner, "  data:             {}", db.display());
    if generated {
        let _ = writeln!(banner, "  JWT secret:       export JWT_SECRET={secret}");
    }
    let _ = writeln!(banner, "  demo token:       {token}");
    banner.push('\n');
    let _ = writeln!(banner, "Try, in two more terminals:");
    let _ = writeln!(
        banner,
        "  export MANGAHUB_ADDR={gateway_addr} MANGAHUB_TOKEN={token}"
    );
    let me = invocation();
    let ws_watch = format!("client --addr {ws_url} watch");
    for (command, terminal) in [
        ("client watch", "terminal 1"),
        ("client update --manga 42 --chapter 76.5", "terminal 2"),
        (ws_watch.as_str(), "or terminal 1, over WebSocket"),
    ] {
        let line = format!("{me} {command}");
        let _ = writeln!(banner, "  {line:<64} # {terminal}");
    }

    let _ = std::io::stdout().write_all(banner.as_bytes());
    let _ = std::io::stdout().flush();

    gateway::shutdown_signal().await;
    tracing::info!("stopping");
    let _ = stop_gateway.send(());
    gateway_task.await??;
    progress.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

/// How a newcomer runs this same binary again from their shell: `mangahub`
/// when that is what the PATH finds, `cargo run [--release] --` for a build
/// in a cargo target directory (the README's way), else its full path.
fn invocation() -> String {
    let Ok(me) = std::env::current_exe() else {
        return "mangahub".to_owned();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::canonicalize(dir.join("mangahub")).ok() == std::fs::canonicalize(&me).ok()
        })
    });
    if on_path {
        return "mangahub".to_owned();
    }
    let profile = me
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str());
    let in_target = me
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .is_some_and(|d| d == "target");
    match profile {
        Some("release") if in_target => "cargo run --release --".to_owned(),
        Some("debug") if in_target => "cargo run --".to_owned(),
        _ => me.display().to_string(),
    }
}

/// The dev secret kept in the data dir, so tokens outlive a restart.
fn dev_secret(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("jwt-secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        let secret = secret.trim().to_owned();
        if !secret.is_empty() {
            return Ok(secret);
        }
    }
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}
