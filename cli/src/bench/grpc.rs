//! UpdateProgress load: N callers, each sending its next update as soon as the
//! previous one is acknowledged. Either against a running service (`--addr`) or
//! against one started here, on its own runtime, per backend. Beside latency
//! it reports the CPU time each process spent per acknowledged update over the
//! measured window (read from `/proc`): what the machine's cores allow at all.
//! With `--store-only`, each backend also gets a row whose callers call the
//! store directly, in the same process, with the same updates: the store's
//! own cost per update, without gRPC, so the two rows split a call's cost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::procfs;
use super::report;
use super::stats::Samples;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// Postgres behind Redis (hot copy + write-behind queue): a private
    /// `redis-server` without persistence and a fresh database.
    Hybrid,
}

/// Thread names of this process's two runtimes: the callers' and the service's.
const CLIENT_THREAD: &str = "bench-client";
const SERVER_THREAD: &str = "bench-server";

#[derive(Debug, clap::Args)]
pub struct GrpcArgs {
    /// Backends to start and measure in turn (ignored with --addr).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres,hybrid"
    )]
    pub backend: Vec<Backend>,
    /// Measure an already running service instead of starting one.
    #[arg(long)]
    pub addr: Option<String>,
    /// With --addr: the service's process ids, for its CPU time per call.
    #[arg(long, value_delimiter = ',', requires = "addr")]
    pub server_pid: Vec<u32>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// gRPC connections the callers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Worker threads of the service started here.
    #[arg(long, default_value_t = 2)]
    pub server_threads: usize,
    /// Also write the table as CSV here.
    #[arg(long)]
    pub csv: Option<std::path::PathBuf>,
    /// Also draw the latency CDF of every row as SVG here.
    #[arg(long)]
    pub chart: Option<std::path::PathBuf>,
    /// Also measure each backend's store without gRPC: the callers call its
    /// update directly (same process, same updates, fresh records).
    #[arg(long, conflicts_with = "addr")]
    pub store_only: bool,
}

/// What each caller sends.
#[derive(Clone)]
enum Op {
    Update,
    /// `grpc.health.v1.Health/Check`: the same gRPC path with no storage behind
    /// it, the ceiling every update figure is compared with.
    Health,
    /// The same updates, straight to the store: no gRPC at all.
    Store(progress_service::store::DynStore),
}

struct Row {
    target: String,
    acked: usize,
    errors: usize,
    elapsed: Duration,
    samples: Samples,
    /// CPU over the measured window; `None` when `/proc` could not be read.
    cpu: Option<CpuSplit>,
}

/// Whose CPU time a row accounts besides this process's callers.
#[derive(Debug, Clone, Default)]
struct Accounting {
    /// The service runs in this process (its threads are the non-caller ones).
    in_process: bool,
    /// Or its processes (a service started elsewhere).
    service_pids: Vec<u32>,
    redis_pid: Option<u32>,
    /// The Postgres backends of this database (their titles name it).
    database: Option<String>,
}

/// CPU time over the measured window, per process.
#[derive(Debug, Clone, Copy)]
struct CpuSplit {
    client: Duration,
    service: Option<Duration>,
    redis: Option<Duration>,
    postgres: Option<Duration>,
    /// The rest of the machine (a quiet one: near 0).
    rest: Duration,
}

struct CpuSnapshot {
    process: Duration,
    client: Duration,
    external_service: Duration,
    redis: Option<Duration>,
    postgres: HashMap<u32, Duration>,
    machine: Duration,
}

impl CpuSnapshot {
    fn take(accounting: &Accounting) -> anyhow::Result<Self> {
        let main = std::process::id();
        let client = procfs::own_threads()?
            .into_iter()
            .filter(|(tid, name, _)| {
                !accounting.in_process || *tid == main || name == CLIENT_THREAD
            })
            .map(|(_, _, cpu)| cpu)
            .sum();
        let postgres = accounting
            .database
            .as_deref()
            .map(|db| procfs::processes_matching(db).into_iter().collect())
            .unwrap_or_default();
        let mut external_service = Duration::ZERO;
        for &pid in &accounting.service_pids {
            external_service += procfs::cpu_time(Some(pid))?;
        }
        Ok(Self {
            process: procfs::cpu_time(None)?,
            client,
            external_service,
            redis: accounting
                .redis_pid
                .map(|pid| procfs::cpu_time(Some(pid)))
                .transpose()?,
            postgres,
            machine: procfs::machine_busy()?,
        })
    }

    fn since(&self, start: &Self, accounting: &Accounting) -> CpuSplit {
        let process = self.process.saturating_sub(start.process);
        let client = self.client.saturating_sub(start.client).min(process);
        let external = self.external_service.saturating_sub(start.external_service);
        let service = if accounting.in_process {
            Some(process - client)
        } else {
            (!accounting.service_pids.is_empty()).then_some(external)
        };
        let redis = self
            .redis
            .zip(start.redis)
            .map(|(b, a)| b.saturating_sub(a));
        let postgres = accounting.database.as_ref().map(|_| {
            self.postgres
                .iter()
                .map(|(pid, cpu)| {
                    cpu.saturating_sub(start.postgres.get(pid).copied().unwrap_or_default())
                })
                .sum()
        });
        let accounted =
            process + external + redis.unwrap_or_default() + postgres.unwrap_or_default();
        CpuSplit {
            client,
            service,
            redis,
            postgres,
            rest: self
                .machine
                .saturating_sub(start.machine)
                .saturating_sub(accounted),
        }
    }
}

#[allow(clippy::print_stdout)]
pub fn run(args: &GrpcArgs) -> anyhow::Result<()> {
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    if let Some(addr) = &args.addr {
        rows.push(client_rt.block_on(measure(
            addr.clone(),
            addr.clone(),
            args,
            Op::Update,
            Accounting {
                service_pids: args.server_pid.clone(),
                ..Accounting::default()
            },
        ))?);
    } else {
        for backend in &args.backend {
            let server_rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.server_threads)
                .thread_name(SERVER_THREAD)
                .enable_all()
                .build()?;
            let dir = tempfile::tempdir()?;
            let redis = match backend {
                Backend::Hybrid => Some(server_rt.block_on(testkit::PrivateRedis::start_with(
                    testkit::Persistence::None,
                ))?),
                Backend::Sqlite | Backend::Postgres => None,
            };
            let database_url = match backend {
                Backend::Sqlite => format!("sqlite://{}", dir.path().join("bench.db").display()),
                Backend::Postgres | Backend::Hybrid => {
                    server_rt.block_on(testkit::fresh_database())?
                }
            };
            let mut service_args = vec![
                "progress-service".to_owned(),
                "--listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--database-url".to_owned(),
                database_url.clone(),
            ];
            if let Some(redis) = &redis {
                service_args.extend(["--redis-url".to_owned(), redis.url()]);
            }
            let config = progress_service::Config::try_parse_from(service_args)?;
            let accounting = Accounting {
                in_process: true,
                redis_pid: redis.as_ref().and_then(testkit::PrivateRedis::pid),
                database: (*backend != Backend::Sqlite)
                    .then(|| database_url.rsplit_once('/').map(|(_, db)| db.to_owned()))
                    .flatten(),
                ..Accounting::default()
            };
            let app = server_rt.block_on(progress_service::Application::build(config))?;
            let store = app.store();
            let addr = format!("http://{}", app.local_addr());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = server_rt.spawn(app.run_until(async {
                let _ = stopped.await;
            }));
            let name = format!("{backend:?}").to_lowercase();
            if rows.is_empty() {
                let reference_name = "reference: gRPC health check (no storage)".to_owned();
                let reference = Accounting {
                    in_process: true,
                    ..Accounting::default()
                };
                rows.push(client_rt.block_on(measure(
                    reference_name,
                    addr.clone(),
                    args,
                    Op::Health,
                    reference,
                ))?);
            }
            if args.store_only {
                rows.push(client_rt.block_on(measure(
                    format!("{name}, store only (no gRPC)"),
                    addr.clone(),
                    args,
                    Op::Store(store.clone()),
                    accounting.clone(),
                ))?);
            }
            rows.push(client_rt.block_on(measure(name, addr, args, Op::Update, accounting))?);
            let _ = stop.send(());
            server_rt.block_on(server)??;
            // After the service: in hybrid mode it flushes to Postgres on the way out.
            drop(redis);
            if *backend != Backend::Sqlite
                && let Err(e) = server_rt.block_on(testkit::drop_database(&database_url))
            {
                tracing::warn!(error = %e, database = %database_url, "bench database left behind");
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nUpdateProgress, {} concurrent callers, {:?} measured after {:?} warm-up, {} cores",
        args.concurrency, args.duration, args.warmup, cores
    );
    println!("| target | acked updates/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|");
    let mut csv_rows = Vec::new();
    let mut cdfs = Vec::new();
    let mut cpu_lines = Vec::new();
    for mut row in rows {
        let rate = row.acked as f64 / row.elapsed.as_secs_f64();
        let (p50, p99, max) = (
            row.samples.quantile_ms(0.5),
            row.samples.quantile_ms(0.99),
            row.samples.quantile_ms(1.0),
        );
        println!(
            "| {} | {rate:.0} | {p50:.2} | {p99:.2} | {max:.2} | {} |",
            row.target, row.errors
        );
        csv_rows.push(vec![
            row.target.clone(),
            format!("{rate:.0}"),
            format!("{p50:.3}"),
            format!("{p99:.3}"),
            format!("{max:.3}"),
            row.errors.to_string(),
        ]);
        if let Some(cpu) = row.cpu {
            cpu_lines.push(cpu_line(&row.target, row.acked, &cpu, cores));
        }
        cdfs.push((row.target, row.samples.cdf_ms(400)));
    }
    if !cpu_lines.is_empty() {
        println!(
            "\nCPU time per acknowledged call over the measured window, µs (user + system from /proc; \
             client: this process's caller threads; progress-service: the rest of this process, or --server-pid; \
             postgres: the backends of the run's database; ceiling: {cores} cores / the sum)"
        );
        println!(
            "| target | client | progress-service | redis-server | postgres | sum | rest of machine | ceiling calls/s |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for line in cpu_lines {
            println!("{line}");
        }
    }
    if let Some(path) = &args.csv {
        let header = [
            "target",
            "acked_per_s",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "errors",
        ];
        report::write_csv(path, &header, &csv_rows)?;
    }
    if let Some(path) = &args.chart {
        let title = format!(
            "UpdateProgress latency, {} concurrent callers",
            args.concurrency
        );
        report::latency_cdf_svg(path, &title, &cdfs)?;
    }
    Ok(())
}

/// One row of the CPU table.
fn cpu_line(target: &str, acked: usize, cpu: &CpuSplit, cores: usize) -> String {
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / acked.max(1) as f64;
    let cell = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1}", per_call(d)));
    let sum = cpu.client
        + cpu.service.unwrap_or_default()
        + cpu.redis.unwrap_or_default()
        + cpu.postgres.unwrap_or_default();
    let ceiling = match per_call(sum) {
        us if us > 0.0 => format!("{:.0}", cores as f64 * 1e6 / us),
        _ => "-".to_owned(),
    };
    format!(
        "| {target} | {} | {} | {} | {} | {} | {} | {ceiling} |",
        cell(Some(cpu.client)),
        cell(cpu.service),
        cell(cpu.redis),
        cell(cpu.postgres),
        cell(Some(sum)),
        cell(Some(cpu.rest)),
    )
}

async fn measure(
    target: String,
    addr: String,
    args: &GrpcArgs,
    op: Op,
    accounting: Accounting,
) -> anyhow::Result<Row> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Endpoint::from_shared(addr.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let run_id = chrono::Utc::now().timestamp_millis();
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let callers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            tokio::spawn(caller(
                channel,
                op.clone(),
                format!("bench-{run_id}-{i}"),
                measure_from,
                end,
            ))
        })
        .collect();
    let probe = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let start = CpuSnapshot::take(&accounting)?;
        tokio::time::sleep_until(end.into()).await;
        let stop = CpuSnapshot::take(&accounting)?;
        anyhow::Ok(stop.since(&start, &accounting))
    });
    let bar = report::timed_bar(&target, args.warmup + args.duration);
    let mut samples = Samples::default();
    let mut errors = 0;
    for caller in callers {
        let (s, e) = caller.await?;
        samples.merge(s);
        errors += e;
    }
    bar.finish_and_clear();
    let cpu = match probe.await? {
        Ok(cpu) => Some(cpu),
        Err(e) => {
            tracing::warn!(error = %e, "no CPU figures for this row");
            None
        }
    };
    Ok(Row {
        target,
        acked: samples.len(),
        errors,
        elapsed: args.duration,
        samples,
        cpu,
    })
}

/// One caller: its own user, 100 mangas, chapters that always move forward.
async fn caller(
    channel: Channel,
    op: Op,
    user: String,
    measure_from: Instant,
    end: Instant,
) -> (Samples, usize) {
    let mut client = ProgressServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let mut samples = Samples::default();
    let mut errors = 0;
    let mut k: u64 = 0;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let req = pb::UpdateProgressRequest {
            user_id: user.clone(),
            manga_id: (k % 100) as i64 + 1,
            chapter: (k / 100 + 1).to_string(),
            ..Default::default()
        };
        k += 1;
        let ok = match &op {
            Op::Update => client.update_progress(req).await.is_ok(),
            // The service's own conversion, then its store: no gRPC.
            Op::Store(store) => match progress_service::grpc::update_command(&req) {
                Ok(cmd) => {
                    let meta = progress_service::store::WriteMeta {
                        origin: req.origin.clone(),
                        private: req.private,
                    };
                    store.update(cmd, meta).await.is_ok()
                }
                Err(_) => false,
            },
            Op::Health => health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok(),
        };
        if sent >= measure_from {
            if ok {
                samples.record(sent.elapsed());
            } else {
                errors += 1;
            }
        }
    }
    (samples, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_only_caller_writes_through_the_store_without_grpc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let config = progress_service::Config::try_parse_from([
            "progress-service",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &url,
        ])
        .expect("config");
        let app = progress_service::Application::build(config)
            .await
            .expect("service");
        let store = app.store();
        // Never connected: a store-only caller must not need the gRPC port.
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let start = Instant::now();
        let (samples, errors) = caller(
            channel,
            Op::Store(store.clone()),
            "store-only".to_owned(),
            start,
            start + Duration::from_millis(300),
        )
        .await;
        assert_eq!(errors, 0);
        assert!(samples.len() > 0, "no update was acknowledged");
        let key = progress_service::domain::ProgressKey::new("store-only", 1).expect("key");
        let stored = store
            .get(&key)
            .await
            .expect("read")
            .expect("record written");
        // Update k moves manga k % 100 + 1 to chapter k / 100 + 1: manga 1
        // holds the chapter of the last one that reached it.
        let last = i64::try_from(samples.len() - 1).expect("count");
        assert_eq!(stored.chapter.hundredths(), (last / 100 + 1) * 100);
        store.close().await;
    }
}
