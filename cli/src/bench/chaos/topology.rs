//! The system under test, all real processes on free loopback ports: a
//! private Postgres, a private Redis with AOF, hybrid `progress-service`
//! replicas (each its own `REPLICA_ID`, all on that Redis and Postgres) and
//! gateways whose `PROGRESS_URL` lists every replica. Any of them can be
//! killed with SIGKILL and started again on the same ports and data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testkit::{Persistence, PrivatePostgres, PrivateRedis};

use super::faults::{RESTART_TIMEOUT, Target, letter};
use super::memory::{SharedMemoryLog, lock};
use crate::bench::processes::{self, Binaries, Process, Signal, loopback};

const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// A replica or gateway: its ports stay the same across restarts.
struct Node {
    name: String,
    listen: SocketAddr,
    admin: SocketAddr,
    process: Option<Process>,
    starts: usize,
}

impl Node {
    fn new(name: String) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            listen: loopback()?,
            admin: loopback()?,
            process: None,
            starts: 0,
        })
    }
}

/// Where the processes' logs go: a directory given by the user (kept), or a
/// temporary one (removed at the end).
enum LogDir {
    Kept(PathBuf),
    Temp(tempfile::TempDir),
}

impl LogDir {
    fn path(&self) -> &Path {
        match self {
            LogDir::Kept(path) => path,
            LogDir::Temp(dir) => dir.path(),
        }
    }
}

pub struct Topology {
    logs: LogDir,
    binaries: Binaries,
    postgres: PrivatePostgres,
    pub database_url: String,
    redis: PrivateRedis,
    replicas: Vec<Node>,
    gateways: Vec<Node>,
    pub jwt_secret: String,
    memory: SharedMemoryLog,
}

impl Topology {
    pub async fn start(
        binaries: &Binaries,
        persistence: Persistence,
        replicas: usize,
        gateways: usize,
        log_dir: Option<&Path>,
        memory: SharedMemoryLog,
    ) -> anyhow::Result<Self> {
        let logs = match log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                LogDir::Kept(dir.to_path_buf())
            }
            None => LogDir::Temp(
                tempfile::Builder::new()
                    .prefix("mangahub-chaos")
                    .tempdir()?,
            ),
        };
        let postgres = PrivatePostgres::start().await.context("private Postgres")?;
        let database_url = postgres.fresh_database().await?;
        let redis = PrivateRedis::start_with(persistence)
            .await
            .context("private Redis")?;
        let mut topology = Self {
            logs,
            binaries: binaries.clone(),
            postgres,
            database_url,
            redis,
            replicas: (0..replicas)
                .map(|i| Node::new(format!("replica-{}", letter(i))))
                .collect::<anyhow::Result<_>>()?,
            gateways: (0..gateways)
                .map(|i| Node::new(format!("gateway-{}", letter(i))))
                .collect::<anyhow::Result<_>>()?,
            jwt_secret: processes::random_secret(),
            memory,
        };
        // One at a time: the first one applies the migrations.
        for i in 0..replicas {
            topology.start_target(Target::Replica(i)).await?;
        }
        for i in 0..gateways {
            topology.start_target(Target::Gateway(i)).await?;
        }
        Ok(topology)
    }

    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|g| g.listen).collect()
    }

    pub fn log_dir(&self) -> Option<&Path> {
        match &self.logs {
            LogDir::Kept(path) => Some(path),
            LogDir::Temp(_) => None,
        }
    }

    /// SIGKILL, and waits until it is gone.
    pub async fn kill(&mut self, target: Target) -> anyhow::Result<()> {
        match target {
            Target::Replica(i) | Target::Gateway(i) => {
                let node = self.node(target, i);
                let mut process = node.process.take().context("not running")?;
                if let Some(pid) = process.pid() {
                    lock(&self.memory).ending(pid);
                }
                process.signal(Signal::Kill)?;
                process.wait_exit(EXIT_TIMEOUT).await?;
            }
            Target::Redis => self.redis.kill(),
            Target::Postgres => self.postgres.kill_server().await?,
        }
        Ok(())
    }

    /// Starts it (again, on the same ports and data) and waits until it serves.
    pub async fn start_target(&mut self, target: Target) -> anyhow::Result<()> {
        let deadline = Instant::now() + RESTART_TIMEOUT;
        match target {
            Target::Replica(i) => {
                let args = self.replica_args(i);
                let url = format!("http://{}", self.replicas[i].listen);
                let process = self.spawn(target, i, args)?;
                processes::wait_serving(process, &url, deadline).await?;
            }
            Target::Gateway(i) => {
                let urls: Vec<String> = self
                    .replicas
                    .iter()
                    .map(|r| format!("http://{}", r.listen))
                    .collect();
                let node = &self.gateways[i];
                let args = processes::gateway_args(
                    node.listen,
                    None,
                    &urls.join(","),
                    &self.jwt_secret,
                    node.admin,
                );
                let admin = node.admin;
                let process = self.spawn(target, i, args)?;
                processes::wait_ready(process, admin, deadline).await?;
            }
            Target::Redis => self.redis.restart().await?,
            Target::Postgres => self.postgres.start_server().await?,
        }
        Ok(())
    }

    /// Every replica and gateway still running and serving.
    pub async fn check_all_up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + RESTART_TIMEOUT;
        for node in &mut self.replicas {
            let url = format!("http://{}", node.listen);
            let process = node.process.as_mut().context("a replica is not running")?;
            processes::wait_serving(process, &url, deadline).await?;
        }
        for node in &mut self.gateways {
            let process = node.process.as_mut().context("a gateway is not running")?;
            processes::wait_ready(process, node.admin, deadline).await?;
        }
        Ok(())
    }

    /// Waits until the write-behind queue is empty: every acknowledged
    /// change's batch has committed to Postgres (entries are removed only
    /// then). Returns how long that took.
    pub async fn wait_drained(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let client = redis::Client::open(self.redis.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        loop {
            let queued: redis::RedisResult<u64> = redis::cmd("XLEN")
                .arg(progress_service::store::hybrid::STREAM)
                .query_async(&mut conn)
                .await;
            if let Ok(0) = queued {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!(
                    "the write-behind queue did not drain within {timeout:?} ({queued:?} queued)"
                );
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Gateways first, then replicas (SIGTERM: they flush); Redis and
    /// Postgres stop when dropped.
    pub async fn stop(mut self) {
        for node in self.gateways.iter_mut().chain(self.replicas.iter_mut()) {
            if let Some(process) = node.process.take() {
                if let Some(pid) = process.pid() {
                    lock(&self.memory).ending(pid);
                }
                process.stop(STOP_TIMEOUT).await;
            }
        }
    }

    fn node(&mut self, target: Target, i: usize) -> &mut Node {
        match target {
            Target::Gateway(_) => &mut self.gateways[i],
            _ => &mut self.replicas[i],
        }
    }

    fn replica_args(&self, i: usize) -> Vec<String> {
        let node = &self.replicas[i];
        [
            "--listen",
            &node.listen.to_string(),
            "--database-url",
            &self.database_url,
            "--redis-url",
            &self.redis.url(),
            "--replica-id",
            &node.name,
            "--metrics-listen",
            &node.admin.to_string(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }

    fn spawn(
        &mut self,
        target: Target,
        i: usize,
        args: Vec<String>,
    ) -> anyhow::Result<&mut Process> {
        let binary = match target {
            Target::Gateway(_) => self.binaries.gateway.clone(),
            _ => self.binaries.progress.clone(),
        };
        let logs = self.logs.path().to_path_buf();
        let memory = self.memory.clone();
        let node = self.node(target, i);
        node.starts += 1;
        let name = format!("{} #{}", node.name, node.starts);
        let log = logs.join(format!("{}-{}.log", node.name, node.starts));
        let process = Process::spawn(name.clone(), &binary, &args, log)?;
        if let Some(pid) = process.pid() {
            lock(&memory).started(name, pid);
        }
        Ok(node.process.insert(process))
    }
}
