//! UpdateProgress load: N callers, each sending its next update as soon as the
//! previous one is acknowledged. Either against a running service (`--addr`) or
//! against one started here, on its own runtime, per backend.

use std::time::{Duration, Instant};

use clap::Parser;
use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::report;
use super::stats::Samples;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, clap::Args)]
pub struct GrpcArgs {
    /// Backends to start and measure in turn (ignored with --addr).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    pub backend: Vec<Backend>,
    /// Measure an already running service instead of starting one.
    #[arg(long)]
    pub addr: Option<String>,
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
}

/// What each caller sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Update,
    /// `grpc.health.v1.Health/Check`: the same gRPC path with no storage behind
    /// it, the ceiling every update figure is compared with.
    Health,
}

struct Row {
    target: String,
    acked: usize,
    errors: usize,
    elapsed: Duration,
    samples: Samples,
}

#[allow(clippy::print_stdout)]
pub fn run(args: &GrpcArgs) -> anyhow::Result<()> {
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    if let Some(addr) = &args.addr {
        rows.push(client_rt.block_on(measure(addr.clone(), addr.clone(), args, Op::Update))?);
    } else {
        for backend in &args.backend {
            let server_rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.server_threads)
                .enable_all()
                .build()?;
            let dir = tempfile::tempdir()?;
            let database_url = match backend {
                Backend::Sqlite => format!("sqlite://{}", dir.path().join("bench.db").display()),
                Backend::Postgres => server_rt.block_on(testkit::fresh_database())?,
            };
            let config = progress_service::Config::try_parse_from([
                "progress-service",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &database_url,
            ])?;
            let app = server_rt.block_on(progress_service::Application::build(config))?;
            let addr = format!("http://{}", app.local_addr());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = server_rt.spawn(app.run_until(async {
                let _ = stopped.await;
            }));
            let name = format!("{backend:?}").to_lowercase();
            if rows.is_empty() {
                let reference = "reference: gRPC health check (no storage)".to_owned();
                rows.push(client_rt.block_on(measure(
                    reference,
                    addr.clone(),
                    args,
                    Op::Health,
                ))?);
            }
            rows.push(client_rt.block_on(measure(name, addr, args, Op::Update))?);
            let _ = stop.send(());
            server_rt.block_on(server)??;
        }
    }
    println!(
        "\nUpdateProgress, {} concurrent callers, {:?} measured after {:?} warm-up, {} cores",
        args.concurrency,
        args.duration,
        args.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| target | acked updates/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|");
    let mut csv_rows = Vec::new();
    let mut cdfs = Vec::new();
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
        cdfs.push((row.target, row.samples.cdf_ms(400)));
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

async fn measure(target: String, addr: String, args: &GrpcArgs, op: Op) -> anyhow::Result<Row> {
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
                op,
                format!("bench-{run_id}-{i}"),
                measure_from,
                end,
            ))
        })
        .collect();
    let bar = report::timed_bar(&target, args.warmup + args.duration);
    let mut samples = Samples::default();
    let mut errors = 0;
    for caller in callers {
        let (s, e) = caller.await?;
        samples.merge(s);
        errors += e;
    }
    bar.finish_and_clear();
    Ok(Row {
        target,
        acked: samples.len(),
        errors,
        elapsed: args.duration,
        samples,
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
        let ok = match op {
            Op::Update => client.update_progress(req).await.is_ok(),
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
