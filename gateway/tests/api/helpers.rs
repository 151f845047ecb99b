//! Starts the real progress service (SQLite in a temp dir) and the gateway on
//! port 0, mints tokens, and speaks the JSON-lines protocol over real sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "test-secret-for-the-gateway";
/// Generous: the suite must pass on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

pub struct Progress {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<anyhow::Result<()>>,
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
        let addr = app.local_addr();
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        Progress { addr, stop, handle }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("progress service stops in time");
        result
            .expect("progress service task")
            .expect("progress service ran cleanly");
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
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
    ];
    args.extend_from_slice(extra);
    let config = gateway::Config::try_parse_from(args).expect("gateway config");
    let listener = gateway::bind(&config).expect("bind gateway");
    let gw = gateway::Gateway::build(listener, config).expect("gateway builds");
    let addr = gw.local_addr().expect("gateway address");
    let readiness = gw.readiness();
    let admin = gw.admin_addr().expect("admin port");
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(gw.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
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
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
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
    sign(
        &json!({"user_id": user, "username": username, "exp": now() + 3600}),
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Self::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        let (reader, writer) = stream.into_split();
        Client {
            reader: BufReader::new(reader),
            writer,
        }
    }

    pub async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .await
            .expect("write to gateway");
    }

    /// The next line, or `None` at EOF or on a connection error.
    pub async fn recv_line_within(&mut self, wait: Duration) -> Option<String> {
        let mut line = String::new();
        match tokio::time::timeout(wait, self.reader.read_line(&mut line)).await {
            Ok(Ok(0) | Err(_)) => None,
            Ok(Ok(_)) => Some(line),
            Err(_) => panic!("no message from the gateway within {wait:?}"),
        }
    }

    pub async fn recv_line(&mut self) -> String {
        self.recv_line_within(WAIT)
            .await
            .expect("connection closed while waiting for a message")
    }

    pub async fn recv(&mut self) -> Value {
        let line = self.recv_line().await;
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("bad JSON {line:?}: {err}"))
    }

    pub async fn request(&mut self, message: Value) -> Value {
        self.send(message).await;
        self.recv().await
    }

    /// Waits for the next message of type `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let message = self.recv().await;
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Nothing arrives within `wait` (used only to prove an absence).
    pub async fn assert_silent(&mut self, wait: Duration) {
        let mut line = String::new();
        if let Ok(result) = tokio::time::timeout(wait, self.reader.read_line(&mut line)).await {
            match result {
                Ok(0) => panic!("connection closed; expected it to stay open and silent"),
                Ok(_) => panic!("unexpected message: {line}"),
                Err(err) => panic!("connection error: {err}"),
            }
        }
    }

    /// Reads until the gateway closes the connection; returns what came before.
    pub async fn until_closed(&mut self) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(line) = self.recv_line_within(WAIT).await {
            if let Ok(v) = serde_json::from_str(&line) {
                seen.push(v);
            }
        }
        seen
    }

    pub async fn update(&mut self, manga_id: i64, chapter: f64) -> Value {
        self.request(
            json!({"type": "progress_update", "data": {"manga_id": manga_id, "chapter": chapter}}),
        )
        .await
    }

    /// A `sync` (cursor and limit optional); the reply, whatever it is.
    pub async fn sync(&mut self, cursor: Option<&str>, limit: Option<u32>) -> Value {
        let mut data = json!({});
        if let Some(cursor) = cursor {
            data["cursor"] = json!(cursor);
        }
        if let Some(limit) = limit {
            data["limit"] = json!(limit);
        }
        self.request(json!({"type": "sync", "id": "s", "data": data}))
            .await
    }

    pub async fn subscribe(&mut self, data: Value) {
        let reply = self
            .request(json!({"type": "subscribe", "data": data}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }
}
