//! The real `progress-service` and `gateway` binaries as child processes of
//! a bench: where they are, starting one with its output in a log file,
//! signalling it, and waiting until it serves (gRPC health SERVING for the
//! service, `/readyz` for the gateway).

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

/// Between health probes while the service starts: the resolution of the
/// "answered SERVING" instant.
const HEALTH_POLL: Duration = Duration::from_millis(2);
const READY_POLL: Duration = Duration::from_millis(20);
const HEALTH_SERVICE: &str = "mangahub.progress.v1.ProgressService";
/// Rate limits of the gateways benches start: far above anything they send.
const RATE_LIMIT: &str = "1000000";

/// Where the two service binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub progress: PathBuf,
    pub gateway: PathBuf,
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

/// `name` in a directory of `PATH` (children start with a cleared
/// environment, so they are named by path).
pub fn on_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| format!("{name} is not on PATH"))
}

/// How a process is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Signal {
    /// SIGTERM: a deploy; the process drains and closes its streams.
    Term,
    /// SIGKILL: a crash; streams break mid-flight.
    Kill,
}

/// One child process with its output in a log file, killed on drop.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(
        name: String,
        binary: &Path,
        args: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
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

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
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

    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => bail!("{} did not exit within {timeout:?}", self.name),
        }
    }

    /// An error when the process has exited, with the end of its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
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
    pub async fn stop(mut self, timeout: Duration) {
        if self.signal(Signal::Term).is_ok() && self.wait_exit(timeout).await.is_ok() {
            return;
        }
        let _ = self.child.start_kill();
        let _ = self.wait_exit(timeout).await;
    }
}

/// Probes the service's gRPC health every few ms until it answers SERVING
/// (failing early if `process` exits, or at `deadline`); returns that moment
/// and the channel that got the answer.
pub async fn wait_serving(
    process: &mut Process,
    url: &str,
    deadline: Instant,
) -> anyhow::Result<(Instant, Channel)> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(200));
    let mut channel: Option<Channel> = None;
    loop {
        process.check_running()?;
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
                // A channel to an old process, or one that broke: reconnect.
                Err(_) => channel = None,
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not answer SERVING in time", process.name());
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// Waits until the gateway's `/readyz` answers 200 (its event stream is up).
pub async fn wait_ready(
    process: &mut Process,
    admin: SocketAddr,
    deadline: Instant,
) -> anyhow::Result<()> {
    wait_until(process, deadline, "was not ready", || async move {
        matches!(testkit::http_get(admin, "/readyz").await, Ok((200, _)))
    })
    .await
}

/// Probes every 20 ms until `ready` says so, failing early if `process`
/// exits, or at `deadline` with "<its name> <failure> in time".
pub async fn wait_until<F, Fut>(
    process: &mut Process,
    deadline: Instant,
    failure: &str,
    mut ready: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        process.check_running()?;
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} {failure} in time", process.name());
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The flags of a gateway started by a bench: its ports (`ws`: its
/// WebSocket port, or none), its progress service(s) (`progress_url`,
/// comma-separated for several), the secret, rate limits far above the load,
/// and an idle timeout no client reaches.
pub fn gateway_args(
    listen: SocketAddr,
    ws: Option<SocketAddr>,
    progress_url: &str,
    jwt_secret: &str,
    admin: SocketAddr,
) -> Vec<String> {
    // Named even when off: the default port is shared by every gateway.
    let ws = ws.map_or_else(|| "off".to_owned(), |addr| addr.to_string());
    [
        "--listen",
        &listen.to_string(),
        "--ws-listen",
        &ws,
        "--progress-url",
        progress_url,
        "--jwt-secret",
        jwt_secret,
        "--metrics-listen",
        &admin.to_string(),
        "--rate-limit-per-sec",
        RATE_LIMIT,
        "--rate-limit-burst",
        RATE_LIMIT,
        "--rate-limit-user-per-sec",
        RATE_LIMIT,
        "--rate-limit-user-burst",
        RATE_LIMIT,
        "--idle-timeout",
        "1h",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// A loopback address whose port was free a moment ago.
pub fn loopback() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], testkit::free_port()?)))
}

/// A random hex secret for the gateways' JWTs.
pub fn random_secret() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A counter's total over its label sets in a Prometheus text page (0 when absent).
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
