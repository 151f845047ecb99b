//! `mangahub bench chaos`: a bounded chaos run with Jepsen-style accounting.
//!
//! Real binaries on loopback ([`topology`]): a private Postgres, a private
//! Redis with AOF, two hybrid `progress-service` replicas and two gateways
//! in front of both. TCP devices of several users ([`clients`]) write
//! progress at a steady rate and hear each other while a seeded schedule
//! ([`faults`]) kills (SIGKILL) and restarts one process at a time. Then,
//! with everything back up and the write-behind queue drained, the history
//! is checked ([`accounting`]) and reported ([`report`]): no acknowledged
//! update lost, no change missed without `RESYNC`, every device converged,
//! no process beyond its memory bound ([`memory`]). Any failure exits non-zero.

mod accounting;
mod clients;
mod faults;
mod history;
mod memory;
mod report;
mod topology;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testkit::Persistence;
use tokio::sync::watch;

use self::clients::{Phase, Plan};
use self::faults::{Fault, Kind, Schedule, Target};
use self::history::DeviceLog;
use self::memory::{Bound, MemoryLog, lock};
use super::processes::Binaries;
use super::report::write_csv;

const MIN_DURATION: Duration = Duration::from_secs(120);
const MAX_DURATION: Duration = Duration::from_secs(300);
/// How long the devices may take to settle, and to hear every marker.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const MARK_TIMEOUT: Duration = Duration::from_secs(60);
/// After the run's duration, devices stop trying to reconnect after this.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// `appendfsync everysec` may lose what was acknowledged this long before a
/// Redis crash (a second, or two when an fsync is slow and Redis postpones
/// its write).
const EVERYSEC_ALLOWANCE: Duration = Duration::from_secs(2);
const TOKEN_TTL: Duration = Duration::from_secs(4 * 3600);

/// Redis's AOF fsync policy for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// Every write fsynced before its reply: a Redis kill loses nothing acknowledged.
    Always,
    /// Once a second: losses acknowledged up to ~1 s (2 s allowed) before a
    /// Redis kill are allowed by the contract and reported apart.
    Everysec,
}

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Seed of the fault schedule and of the devices' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long devices write and faults happen (2m to 5m).
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Redis AOF fsync policy.
    #[arg(long, value_enum, default_value = "always")]
    pub appendfsync: Fsync,
    /// Users; each has `--devices` devices.
    #[arg(long, default_value_t = 8)]
    pub users: usize,
    /// Devices per user, spread over the gateways.
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// progress_updates per second per device.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Records per user the devices write to (manga ids 1..=N).
    #[arg(long, default_value_t = 4)]
    pub mangas: i64,
    /// Progress-service replicas (hybrid, one Redis and Postgres).
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Gateways, each in front of every replica.
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Processes the schedule may kill.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "replica,gateway,redis,postgres"
    )]
    pub targets: Vec<Kind>,
    /// No fault before this.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// No fault starts in the last part of the run.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub quiet_tail: Duration,
    /// Pause after a killed process serves again, before the next fault
    /// (uniform between this and twice this).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub pause: Duration,
    /// Longest a killed process stays down (uniform from 1 s).
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub max_down: Duration,
    /// A process's warm RSS is sampled this long after the later of its
    /// start and the load's start.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub rss_warmup: Duration,
    /// Memory bound: RSS at the end <= factor × warm RSS + slack.
    #[arg(long, default_value_t = 2)]
    pub rss_factor: u64,
    #[arg(long, default_value_t = 32)]
    pub rss_slack_mib: u64,
    /// Directory of the progress-service and gateway binaries (default: beside this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Keep the processes' logs here (default: a temporary directory, removed).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Also write every table cell as CSV (table,row,column,value) here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

pub fn run(args: &ChaosArgs) -> anyhow::Result<()> {
    if !(MIN_DURATION..=MAX_DURATION).contains(&args.duration) {
        bail!("--duration must be between 2m and 5m");
    }
    if args.warmup + args.quiet_tail >= args.duration {
        bail!("--warmup plus --quiet-tail leave no time for faults");
    }
    if args.users == 0 || args.devices < 2 || args.replicas == 0 || args.gateways == 0 {
        bail!("needs a user with two devices, a replica and a gateway");
    }
    let binaries = Binaries::locate(args.bin_dir.as_deref())?;
    // Spare workers: Postgres and Redis restarts block one while they run.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    runtime.block_on(chaos(args, &binaries))
}

async fn chaos(args: &ChaosArgs, binaries: &Binaries) -> anyhow::Result<()> {
    let title = format!(
        "chaos seed {} ({}, appendfsync {:?})",
        args.seed,
        humantime::format_duration(args.duration),
        args.appendfsync
    )
    .to_lowercase();
    let persistence = match args.appendfsync {
        Fsync::Always => Persistence::Always,
        Fsync::Everysec => Persistence::EverySec,
    };
    let memory = Arc::new(Mutex::new(MemoryLog::default()));
    eprintln!(
        "{title}: starting Postgres, Redis, {} replicas, {} gateways",
        args.replicas, args.gateways
    );
    let mut topology = topology::Topology::start(
        binaries,
        persistence,
        args.replicas,
        args.gateways,
        args.log_dir.as_deref(),
        memory.clone(),
    )
    .await?;
    let sampler = memory::spawn_sampler(memory.clone());
    // Whatever happens — done, failed, or interrupted — every process
    // started here is stopped before returning.
    let run = tokio::select! {
        run = exercise(args, &title, &mut topology) => run,
        () = gateway::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    lock(&memory).sample();
    sampler.abort();
    let kept_logs = topology.log_dir().map(|p| p.display().to_string());
    topology.stop().await;
    if let Some(dir) = &kept_logs {
        eprintln!("process logs: {dir}");
    }
    let run = run?;

    let bound = Bound {
        warmup: args.rss_warmup,
        factor: args.rss_factor,
        slack_kib: args.rss_slack_mib * 1024,
    };
    let checked = bound.check(&lock(&memory).instances(), run.start);
    let report = report::Report {
        title,
        faults: &run.faults,
        logs: &run.logs,
        accounts: &run.accounts,
        memory: &checked,
        bound,
        everysec: args.appendfsync == Fsync::Everysec,
        drained_in: run.drained_in,
    };
    let tables = report.tables();
    for table in &tables {
        table.print();
    }
    report.print_details();
    if let Some(path) = &args.csv {
        let rows: Vec<Vec<String>> = tables.iter().flat_map(|t| t.csv_rows()).collect();
        write_csv(path, &["table", "row", "column", "value"], &rows)?;
    }
    let failures = report.failures();
    if failures.is_empty() {
        eprintln!("{}: PASS", report.title);
        Ok(())
    } else {
        bail!("{}: FAIL: {}", report.title, failures.join("; "))
    }
}

/// What a run leaves for the report.
struct Run {
    start: Instant,
    faults: Vec<Fault>,
    logs: Vec<DeviceLog>,
    accounts: accounting::Accounts,
    drained_in: Duration,
}

/// The devices and the faults, the end phases, the drain, the accounting.
async fn exercise(
    args: &ChaosArgs,
    title: &str,
    topology: &mut topology::Topology,
) -> anyhow::Result<Run> {
    let users: Vec<String> = (0..args.users).map(|u| format!("chaos-u{u}")).collect();
    let tokens = users
        .iter()
        .map(|u| crate::token::mint(&topology.jwt_secret, u, None, TOKEN_TTL))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Write);
    let start = Instant::now();
    let plan = Arc::new(Plan {
        gateways: topology.gateway_addrs(),
        tokens,
        chapters: (0..args.users).map(|_| AtomicI64::new(1)).collect(),
        devices_per_user: args.devices,
        rate: args.rate,
        mangas: args.mangas.max(1),
        seed: args.seed,
        start,
        give_up: start + args.duration + GIVE_UP_AFTER,
        phase: phase_rx,
        settled: AtomicUsize::new(0),
        marked: AtomicUsize::new(0),
    });
    let devices = args.users * args.devices;
    let tasks = Tasks(
        (0..args.users)
            .flat_map(|u| (0..args.devices).map(move |d| (u, d)))
            .map(|(u, d)| tokio::spawn(clients::run(plan.clone(), u, d)))
            .collect(),
    );
    eprintln!(
        "{title}: {devices} devices writing; faults from {} s to {} s",
        args.warmup.as_secs(),
        (args.duration - args.quiet_tail).as_secs()
    );

    let mut schedule = Schedule::new(
        args.seed,
        &args.targets,
        args.replicas,
        args.gateways,
        args.max_down,
        args.pause,
    );
    let faults = faults::run(
        topology,
        &mut schedule,
        start,
        start + args.warmup,
        start + args.duration - args.quiet_tail,
    )
    .await
    .context("a fault could not be injected or undone")?;
    tokio::time::sleep_until((start + args.duration).into()).await;
    topology.check_all_up().await?;

    eprintln!("{title}: writers stopped; settling, markers, final sync");
    let _ = phase_tx.send(Phase::Settle);
    wait_count(&plan.settled, devices, SETTLE_TIMEOUT).await;
    let _ = phase_tx.send(Phase::Mark);
    wait_count(&plan.marked, devices, MARK_TIMEOUT).await;
    let _ = phase_tx.send(Phase::Final);
    let logs = tasks.join().await?;

    let drained_in = topology.wait_drained(DRAIN_TIMEOUT).await?;
    let stored = accounting::read_postgres(&topology.database_url, &users).await?;
    let redis_kills: Vec<_> = match args.appendfsync {
        Fsync::Always => Vec::new(),
        Fsync::Everysec => faults
            .iter()
            .filter(|f| f.target == Target::Redis)
            .map(|f| f.killed)
            .collect(),
    };
    let accounts =
        accounting::account(&logs, &stored, args.users, &redis_kills, EVERYSEC_ALLOWANCE);
    Ok(Run {
        start,
        faults,
        logs,
        accounts,
        drained_in,
    })
}

/// The device tasks, aborted if the run ends before they do.
struct Tasks(Vec<tokio::task::JoinHandle<DeviceLog>>);

impl Tasks {
    async fn join(mut self) -> anyhow::Result<Vec<DeviceLog>> {
        let mut logs = Vec::with_capacity(self.0.len());
        for task in std::mem::take(&mut self.0) {
            logs.push(task.await.context("a device task failed")?);
        }
        Ok(logs)
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Waits until `counter` reaches `target` or `timeout` passes (the
/// accounting then reports the devices that did not get there).
async fn wait_count(counter: &AtomicUsize, target: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while counter.load(Ordering::SeqCst) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
