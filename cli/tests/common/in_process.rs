//! A progress service (embedded SQLite) and a gateway in the test's own
//! process, for tests that drive them from outside: over TLS with the
//! `mangahub` binary (`cli`), from a browser (`deploy`'s live page).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest wait for a gateway to reach its progress service, or to stop.
const READY: Duration = Duration::from_secs(60);

/// A progress service on a SQLite file in `dir`, on a free port.
pub async fn progress_service(dir: &Path) -> progress_service::Running {
    let config = progress_service::Config::try_parse_from([
        "progress-service".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--database-url".into(),
        format!("sqlite://{}", dir.join("progress.db").display()),
    ])
    .expect("progress-service settings");
    progress_service::Application::build(config)
        .await
        .expect("progress service builds")
        .spawn()
}

/// A gateway with its TCP and WebSocket ports.
pub struct Gateway {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    /// Starts one on `progress` that verifies tokens with `secret`, its
    /// WebSocket port on `ws_listen` (port 0: any free one), with `extra`
    /// settings; returns once it is ready.
    pub async fn start(
        progress: SocketAddr,
        secret: &str,
        ws_listen: SocketAddr,
        extra: &[&str],
    ) -> Gateway {
        let mut args: Vec<String> = [
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--progress-url",
            &format!("http://{progress}"),
            "--jwt-secret",
            secret,
            "--ws-listen",
            &ws_listen.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let config = gateway::Config::try_parse_from(args).expect("gateway settings");
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("binding the gateway's TCP port");
        let gateway = gateway::Gateway::build(listener, config).expect("gateway builds");
        let tcp = gateway.local_addr().expect("TCP address");
        let ws = gateway.ws_addr().expect("the WebSocket port is on");
        let mut readiness = gateway.readiness();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        assert!(
            tokio::time::timeout(READY, readiness.wait())
                .await
                .expect("the gateway reaches the progress service in time"),
            "the gateway is ready"
        );
        Gateway {
            tcp,
            ws,
            stop,
            task,
        }
    }

    /// Stops it and checks that it stopped cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(READY, self.task)
            .await
            .expect("the gateway stops in time")
            .expect("gateway task")
            .expect("the gateway stops cleanly");
    }
}
