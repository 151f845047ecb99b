//! Starts the real progress service (SQLite in a temp dir) and the gateway on
//! port 0, mints tokens, and speaks the JSON-lines protocol over real sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "test-secret-for-the-gateway";
pub use testkit::WAIT;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

pub struct Progress {
    pub addr: SocketAddr,
    running: progress_service::Running,
}

impl Progress {
    pub async fn start(listen: SocketAddr, db: &std::path::Path) -> Progress {
        let url = format!("sqlite://{}", db.display());
        let listen = listen.to_string();
        let cfg = progress_service::Config::try_parse_from([
            "progress-service",
            "--listen",
            &listen,
            "--database-url",
            &url,
            "--shutdown-drain",
            "2s",
        ])
        .expect("progress service config");
        let mut attempts = 0;
        let app = loop {
            match progress_service::Application::build(cfg.clone()).await {
                Ok(app) => break app,
                // Re-binding a port just released can race with the old socket.
                Err(err) if attempts < 50 => {
                    attempts += 1;
                    tracing::debug!(%err, "retrying progress service start");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("progress service did not start: {err:#}"),
            }
        };
        let running = app.spawn();
        Progress {
            addr: running.local_addr(),
            running,
        }
    }

    pub async fn stop(self) {
        tokio::time::timeout(WAIT, self.running.stop())
            .await
            .expect("progress service stops in time")
            .expect("progress service ran cleanly");
    }
}

pub struct TestApp {
    /// The TCP (JSON lines) port.
    pub addr: SocketAddr,
    /// The WebSocket port (`/ws`, and the live page at `/`).
    pub ws_addr: SocketAddr,
    /// What `client()` and the `authed*` helpers connect over.
    pub transport: Transport,
    /// The admin port: /metrics, /healthz, /readyz.
    pub admin: SocketAddr,
    pub progress: Option<Progress>,
    pub db: PathBuf,
    pub readiness: gateway::Readiness,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts both processes; `extra` are gateway flags added to the defaults.
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("progress.db");
    let progress = Progress::start("127.0.0.1:0".parse().expect("address"), &db).await;
    let mut app = spawn_gateway(progress.addr, dir, db, extra);
    app.progress = Some(progress);
    assert!(
        tokio::time::timeout(WAIT, app.readiness.wait())
            .await
            .expect("gateway becomes ready in time"),
        "gateway stopped before it was ready"
    );
    app
}

/// The gateway alone, in front of a progress service that is not running
/// yet: start it with `Progress::start(addr, &app.db)` on the returned address.
pub async fn spawn_gateway_first() -> (TestApp, SocketAddr) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("progress.db");
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port().expect("free port")));
    (spawn_gateway(addr, dir, db, &[]), addr)
}

fn spawn_gateway(
    progress: SocketAddr,
    dir: tempfile::TempDir,
    db: PathBuf,
    extra: &[&str],
) -> TestApp {
    let url = format!("http://{progress}");
    let mut args = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--progress-url",
        &url,
        "--jwt-secret",
        SECRET,
        "--shutdown-drain",
        "2s",
        "--watch-retry-max",
        "200ms",
        "--grpc-timeout",
        "3s",
        "--grpc-connect-timeout",
        "1s",
        "--metrics-listen",
        "127.0.0.1:0",
        "--ws-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let config = gateway::Config::try_parse_from(args).expect("gateway config");
    let listener = gateway::bind(&config).expect("bind gateway");
    let gw = gateway::Gateway::build(listener, config).expect("gateway builds");
    let addr = gw.local_addr().expect("gateway address");
    let ws_addr = gw.ws_addr().expect("WebSocket port");
    let readiness = gw.readiness();
    let admin = gw.admin_addr().expect("admin port");
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(gw.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        ws_addr,
        transport: Transport::Tcp,
        admin,
        progress: None,
        db,
        readiness,
        stop: Some(stop),
        handle: Some(handle),
        _dir: dir,
    }
}

impl TestApp {
    /// The same system, with clients over `transport`.
    pub fn over(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Where clients of `self.transport` connect.
    pub fn client_addr(&self) -> SocketAddr {
        match self.transport {
            Transport::Tcp => self.addr,
            Transport::WebSocket => self.ws_addr,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect_over(self.transport, self.client_addr()).await
    }

    /// A client over the other transport than `self.transport`.
    pub async fn other_client(&self) -> Client {
        match self.transport {
            Transport::Tcp => Client::connect_ws(self.ws_addr).await,
            Transport::WebSocket => Client::connect(self.addr).await,
        }
    }

    /// A connection authenticated as `user` (username `<user>-name`).
    pub async fn authed(&self, user: &str) -> Client {
        self.authed_as(user, &token(user)).await
    }

    /// A connection of `user` that names itself `device` in `auth`.
    pub async fn authed_device(&self, user: &str, device: &str) -> Client {
        let mut client = self.client().await;
        let reply = client
            .request(json!({"type": "auth", "data": {"token": token(user), "device": device}}))
            .await;
        assert_eq!(reply["success"], json!(true), "auth failed: {reply}");
        client
    }

    pub async fn authed_as(&self, user: &str, token: &str) -> Client {
        let mut client = self.client().await;
        let reply = client
            .request(json!({"type": "auth", "data": {"token": token}}))
            .await;
        assert_eq!(reply["user_id"], user, "{reply}");
        assert_eq!(reply["success"], json!(true), "auth failed: {reply}");
        client
    }

    /// A direct gRPC client of the progress service.
    pub async fn grpc(
        &self,
    ) -> mangahub_proto::v1::progress_service_client::ProgressServiceClient<tonic::transport::Channel>
    {
        let addr = self
            .progress
            .as_ref()
            .expect("progress service running")
            .addr;
        mangahub_proto::v1::progress_service_client::ProgressServiceClient::connect(format!(
            "http://{addr}"
        ))
        .await
        .expect("gRPC connect")
    }

    /// Triggers the gateway's shutdown and waits for `run` to return.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let handle = self.handle.take().expect("gateway running");
        tokio::time::timeout(WAIT, handle)
            .await
            .expect("gateway stops in time")
            .expect("gateway task")
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn sign(claims: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign token")
}

pub fn token(user: &str) -> String {
    token_named(user, &format!("{user}-name"))
}

pub fn token_named(user: &str, username: &str) -> String {
    gateway::auth::mint_hs256(
        SECRET.as_bytes(),
        user,
        Some(username),
        Duration::from_secs(3600),
    )
    .expect("sign token")
}

/// For hand-made tokens (`alg: none`), which no JWT library writes.
pub fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The test client of either transport (shared with the CLI's deploy tests).
pub use testkit::LineClient as Client;
pub use testkit::Transport;
