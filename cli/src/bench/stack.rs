//! The real `progress-service` and `gateway` binaries as child processes of
//! a bench: the service on a SQLite file in a temp dir, the gateway in front
//! of it (TCP and WebSocket ports), each with its admin port; the service can
//! be stopped and started again on the same port and database.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};

use crate::bench::conns::Transport;
use crate::bench::processes::{self, Binaries, Process, Signal, loopback};
use crate::client::conn;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone)]
pub struct StackOptions {
    /// The gateway's `--watch-retry-max`; its default when `None`.
    pub watch_retry_max: Option<Duration>,
    /// The JWT secret; a random one when `None`.
    pub jwt_secret: Option<String>,
}

/// A restarted service, the moment it answered SERVING and a channel to it.
pub struct Restarted {
    /// From the signal until the old process exited.
    pub stop: Duration,
    /// From spawning the new process until it answered SERVING.
    pub start: Duration,
    pub serving_at: Instant,
    pub channel: Channel,
}

pub struct Stack {
    dir: tempfile::TempDir,
    binaries: Binaries,
    pub grpc: SocketAddr,
    pub progress_admin: SocketAddr,
    pub gateway: SocketAddr,
    /// The gateway's WebSocket port.
    pub gateway_ws: SocketAddr,
    pub gateway_admin: SocketAddr,
    pub jwt_secret: String,
    progress: Option<Process>,
    gateway_process: Option<Process>,
    progress_starts: usize,
    /// Bumped to start the service on a new, empty database file.
    database: usize,
}

impl Stack {
    /// Starts the service, waits for SERVING, starts the gateway and waits
    /// until its event stream is up (`/readyz`).
    pub async fn start(binaries: &Binaries, options: &StackOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mangahub-bench")
            .tempdir()?;
        let jwt_secret = options
            .jwt_secret
            .clone()
            .unwrap_or_else(processes::random_secret);
        let mut stack = Self {
            dir,
            binaries: binaries.clone(),
            grpc: loopback()?,
            progress_admin: loopback()?,
            gateway: loopback()?,
            gateway_ws: loopback()?,
            gateway_admin: loopback()?,
            jwt_secret,
            progress: None,
            gateway_process: None,
            progress_starts: 0,
            database: 1,
        };
        let spawned = Instant::now();
        stack.spawn_progress()?;
        stack.wait_serving(spawned).await?;

        let mut args = processes::gateway_args(
            stack.gateway,
            Some(stack.gateway_ws),
            &stack.progress_url(),
            &stack.jwt_secret,
            stack.gateway_admin,
        );
        if let Some(max) = options.watch_retry_max {
            args.push("--watch-retry-max".into());
            args.push(humantime::format_duration(max).to_string());
        }
        let log = stack.dir.path().join("gateway.log");
        stack.gateway_process = Some(Process::spawn(
            "gateway".into(),
            &stack.binaries.gateway,
            &args,
            log,
        )?);
        if let Some(gateway) = &mut stack.gateway_process {
            processes::wait_ready(
                gateway,
                stack.gateway_admin,
                Instant::now() + STARTUP_TIMEOUT,
            )
            .await?;
        }
        Ok(stack)
    }

    /// The gateway's address for `transport` (as `Conn::open` takes it).
    pub fn gateway_addr(&self, transport: Transport) -> String {
        match transport {
            Transport::Tcp => self.gateway.to_string(),
            Transport::Ws => conn::over_websocket(&self.gateway_ws.to_string()),
        }
    }

    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway_process.as_ref().and_then(Process::pid)
    }

    pub fn progress_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// A new gRPC channel to the service.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.progress_url())?
            .tcp_nodelay(true)
            .connect()
            .await?)
    }

    /// The gateway's `/metrics` page.
    pub async fn gateway_metrics(&self) -> anyhow::Result<String> {
        let (status, body) = testkit::http_get(self.gateway_admin, "/metrics").await?;
        if status != 200 {
            bail!("gateway /metrics answered {status}");
        }
        Ok(body)
    }

    /// Stops the service with `signal`, waits for it to exit, starts it again
    /// on the same port (and database unless `empty_database`: then a new
    /// file, whose change log no cursor of the old one fits) and waits until
    /// it answers SERVING.
    pub async fn restart_progress(
        &mut self,
        signal: Signal,
        empty_database: bool,
    ) -> anyhow::Result<Restarted> {
        let mut old = self.progress.take().context("the service is not running")?;
        let signalled = Instant::now();
        old.signal(signal)?;
        old.wait_exit(EXIT_TIMEOUT).await?;
        let exited = Instant::now();
        if empty_database {
            self.database += 1;
        }
        self.spawn_progress()?;
        let (serving_at, channel) = self.wait_serving(exited).await?;
        Ok(Restarted {
            stop: exited - signalled,
            start: serving_at - exited,
            serving_at,
            channel,
        })
    }

    /// Stops the gateway, then the service (SIGTERM; SIGKILL after 10 s).
    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway_process.take() {
            gateway.stop(Duration::from_secs(10)).await;
        }
        if let Some(progress) = self.progress.take() {
            progress.stop(Duration::from_secs(10)).await;
        }
    }

    fn spawn_progress(&mut self) -> anyhow::Result<()> {
        self.progress_starts += 1;
        let db = self
            .dir
            .path()
            .join(format!("progress-{}.db", self.database));
        let args: Vec<String> = [
            "--listen",
            &self.grpc.to_string(),
            "--database-url",
            &format!("sqlite://{}", db.display()),
            "--sqlite-synchronous",
            "normal",
            "--metrics-listen",
            &self.progress_admin.to_string(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let log = self
            .dir
            .path()
            .join(format!("progress-service-{}.log", self.progress_starts));
        self.progress = Some(Process::spawn(
            format!("progress-service (start {})", self.progress_starts),
            &self.binaries.progress,
            &args,
            log,
        )?);
        Ok(())
    }

    /// Waits until the service answers SERVING; returns that moment and
    /// the channel that got the answer.
    async fn wait_serving(&mut self, since: Instant) -> anyhow::Result<(Instant, Channel)> {
        let url = self.progress_url();
        let progress = self
            .progress
            .as_mut()
            .context("the service is not running")?;
        processes::wait_serving(progress, &url, since + STARTUP_TIMEOUT).await
    }
}
