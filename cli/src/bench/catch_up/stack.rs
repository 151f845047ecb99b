//! The real `progress-service` and `gateway` binaries as child processes:
//! the service on a SQLite file in a temp dir, the gateway in front of it,
//! each with its admin port; the service can be stopped and started again on
//! the same port and database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Signal;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Between health probes while the service starts: the resolution of the
/// "answered SERVING" instant.
const HEALTH_POLL: Duration = Duration::from_millis(2);
const HEALTH_SERVICE: &str = "mangahub.progress.v1.ProgressService";
/// Rate limits of the gateway here: far above anything the bench sends.
const RATE_LIMIT: &str = "1000000";

/// Where the two service binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    progress: PathBuf,
    gateway: PathBuf,
}

impl Binaries {
    /// `dir`, or the directory of the running `mangahub` (the cargo target
    /// dir, where a workspace build puts all three).
    pub fn locate(dir: Option<&Path>) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => std::env::current_exe()
                .context("locating the mangahub executable")?
                .parent()
                .context("the mangahub executable has no directory")?
                .to_path_buf(),
        };
        let find = |name: &str| {
            let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{} is missing; this bench starts the real services: run `cargo build --release --workspace` (or pass --bin-dir)",
                    path.display()
                )
            }
        };
        Ok(Self {
            progress: find("progress-service")?,
            gateway: find("gateway")?,
        })
    }
}

/// One child process with its output in a log file, killed on drop.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: String, binary: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .args(args)
            // Only the flags given here configure it, not this shell's settings.
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { name, child, log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        match signal {
            // No libc here (the workspace forbids unsafe code): kill(1) sends it.
            Signal::Term => {
                let pid = self.pid().context("already exited")?;
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .context("running kill")?;
                if !status.success() {
                    bail!("kill -TERM {pid} ({}) failed", self.name);
                }
            }
            Signal::Kill => self.child.start_kill()?,
        }
        Ok(())
    }

    async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => bail!("{} did not exit within {timeout:?}", self.name),
        }
    }

    /// An error when the process has exited, with the end of its log.
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            ),
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not exited within `timeout`.
    async fn stop(mut self, timeout: Duration) {
        if self.signal(Signal::Term).is_ok() && self.wait_exit(timeout).await.is_ok() {
            return;
        }
        let _ = self.child.start_kill();
        let _ = self.wait_exit(timeout).await;
    }
}

#[derive(Debug, Default, Clone)]
pub struct StackOptions {
    /// The gateway's `--watch-retry-max`; its default when `None`.
    pub watch_retry_max: Option<Duration>,
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
            .prefix("mangahub-bench-catch-up")
            .tempdir()?;
        let jwt_secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut stack = Self {
            dir,
            binaries: binaries.clone(),
            grpc: loopback()?,
            progress_admin: loopback()?,
            gateway: loopback()?,
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

        let mut args: Vec<String> = [
            "--listen",
            &stack.gateway.to_string(),
            "--progress-url",
            &format!("http://{}", stack.grpc),
            "--jwt-secret",
            &stack.jwt_secret,
            "--metrics-listen",
            &stack.gateway_admin.to_string(),
            "--rate-limit-per-sec",
            RATE_LIMIT,
            "--rate-limit-burst",
            RATE_LIMIT,
            "--rate-limit-user-per-sec",
            RATE_LIMIT,
            "--rate-limit-user-burst",
            RATE_LIMIT,
            // Idle clients stay connected through the whole run.
            "--idle-timeout",
            "1h",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
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
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(gateway) = &mut stack.gateway_process {
                gateway.check_running()?;
            }
            if matches!(
                testkit::http_get(stack.gateway_admin, "/readyz").await,
                Ok((200, _))
            ) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the gateway was not ready within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(stack)
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

    /// Probes gRPC health every few ms until SERVING; returns that moment
    /// and the channel that got the answer.
    async fn wait_serving(&mut self, since: Instant) -> anyhow::Result<(Instant, Channel)> {
        let endpoint = Endpoint::from_shared(self.progress_url())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(200));
        let deadline = since + STARTUP_TIMEOUT;
        let mut channel: Option<Channel> = None;
        loop {
            if let Some(progress) = &mut self.progress {
                progress.check_running()?;
            }
            if channel.is_none() {
                channel = endpoint.connect().await.ok();
            }
            if let Some(ch) = &channel {
                let answer = HealthClient::new(ch.clone())
                    .check(HealthCheckRequest {
                        service: HEALTH_SERVICE.into(),
                    })
                    .await;
                match answer {
                    Ok(reply) if reply.get_ref().status == ServingStatus::Serving as i32 => {
                        return Ok((Instant::now(), ch.clone()));
                    }
                    Ok(_) => {}
                    // A channel to the old process, or one that broke: reconnect.
                    Err(_) => channel = None,
                }
            }
            if Instant::now() > deadline {
                bail!("the progress service did not answer SERVING within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }
}

fn loopback() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], testkit::free_port()?)))
}

/// A counter's total over its label sets in a Prometheus text page (0 when absent).
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
