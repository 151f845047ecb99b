//! `bench fanout --sweep`: the fan-out curves. For each subscriber count in
//! turn, on a gateway started here (TCP): N subscribers of one manga, a
//! throughput phase (as fast as they keep up, as `bench fanout`), then a
//! latency phase (`--latency-rate` updates/s, publish → last subscriber per
//! update); then the same two phases against the references: Redis Pub/Sub
//! on a private `redis-server`, and the floor (`floor`: a server of nothing
//! but one `write` per subscriber per message, with 1 and 2 writer threads),
//! each with messages the size of the gateway's events. One set of
//! subscribers is connected at a time, so the largest count fits in this
//! process's open files.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::conns::{self, GatewayArgs, Transport};
use super::deliveries::{Arrivals, Counts};
use super::fanout::{Cpu, FanoutArgs, GatewaySink, Subscribers, percent};
use super::floor::{self, FloorServer};
use super::processes::Binaries;
use super::publish::{LatencyPhase, Phase, Publisher, Sink};
use super::redis_pubsub::{RedisServer, RedisSink, RedisSubscribers};
use super::report::{self, Table};
use super::stack::{Stack, StackOptions};

/// Descriptors this process needs beside the subscribers.
const SPARE_FDS: u64 = 64;
/// Between one set of subscribers closing and the next connecting, so the
/// server has let the old ones go.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reference {
    /// Redis Pub/Sub: SUBSCRIBE / PUBLISH on one channel.
    Redis,
}

/// A same-run reference of the fan-out sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    /// Redis Pub/Sub: SUBSCRIBE / PUBLISH on one channel.
    Redis,
    /// A server of bare write calls: each message written to each
    /// subscriber's socket, one blocking write each (see --floor-writers).
    Floor,
}

/// One backend at one subscriber count.
struct Point {
    backend: String,
    subscribers: usize,
    throughput: Phase,
    /// CPU over the throughput phase: the server's, this process's, the rest.
    server_cpu: Option<Duration>,
    bench_cpu: Duration,
    other_cpu: Duration,
    /// Latency phase: messages sent, and those some subscriber never got.
    sent: usize,
    incomplete: usize,
    /// Publish → last subscriber, ms.
    last_p50: f64,
    last_p99: f64,
    message_bytes: usize,
    /// The server's CPU over the latency phase, and how long that took.
    latency_server_cpu: Option<Duration>,
    latency_elapsed: Duration,
}

pub fn run(args: &FanoutArgs) -> anyhow::Result<()> {
    let largest = args.sweep.iter().copied().max().unwrap_or(0);
    if let Some(limit) = conns::raise_open_files_limit()? {
        let needed = largest as u64 + SPARE_FDS;
        if needed > limit {
            bail!(
                "{largest} subscribers need about {needed} open files; this process may open {limit} (ulimit -n)"
            );
        }
    }
    let binaries = Binaries::locate(args.bin_dir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let points = runtime.block_on(sweep(args, &binaries))?;
    let mut table = table(args, &points);
    if args.against.contains(&Against::Floor) {
        let bytes = points.iter().map(|p| p.message_bytes).max().unwrap_or(0) + 1;
        eprintln!("one bare write of {bytes} bytes…");
        let ns = floor::bare_write_ns(bytes)?;
        table.note(format!(
            "one bare loopback write(2) of {bytes} bytes (the message and its newline, one socket, its reader keeping up): {ns:.0} ns of the writing thread's CPU; 1,000 of them: {:.2} ms",
            ns * 1000.0 / 1e6
        ));
    }
    table.print();
    if let Some(dir) = &args.chart_dir {
        write_charts(dir, args, &points)?;
    }
    Ok(())
}

async fn sweep(args: &FanoutArgs, binaries: &Binaries) -> anyhow::Result<Vec<Point>> {
    let largest = args.sweep.iter().copied().max().unwrap_or(0);
    eprintln!("starting progress-service and gateway…");
    let options = StackOptions {
        jwt_secret: Some(args.gateway.jwt_secret.clone()),
        ..StackOptions::default()
    };
    let stack = Stack::start(binaries, &options).await?;
    let redis = if args.against.contains(&Against::Redis) {
        Some(RedisServer::start(largest + 16).await?)
    } else {
        None
    };
    let result = sweep_on(args, &stack, redis.as_ref()).await;
    stack.stop().await;
    if let Some(redis) = redis {
        redis.stop().await;
    }
    result
}

async fn sweep_on(
    args: &FanoutArgs,
    stack: &Stack,
    redis: Option<&RedisServer>,
) -> anyhow::Result<Vec<Point>> {
    let gateway = GatewayArgs {
        addr: stack.gateway_addr(Transport::Tcp),
        ..args.gateway.clone()
    };
    let run = conns::run_id();
    let messages = (f64::from(args.latency_rate) * args.latency_duration.as_secs_f64()) as usize;
    let arrivals = Arc::new(Arrivals::new(messages.max(1)));
    let mut gateway_publisher = Publisher::new(GatewaySink::open(&gateway, run).await?);
    let mut redis_publisher = match redis {
        Some(server) => Some((server, Publisher::new(RedisSink::open(server, 0).await?))),
        None => None,
    };
    let gateway_pids: Vec<u32> = stack.gateway_pid().into_iter().collect();
    let mut points = Vec::new();
    for (k, &count) in args.sweep.iter().enumerate() {
        let manga = i64::try_from(k)? + 1;
        eprintln!("gateway: {count} subscribers on manga {manga}…");
        let subscribers = Subscribers::start(&gateway, manga, run, count, arrivals.clone()).await?;
        gateway_publisher.sink.manga = subscribers.manga();
        let point = measure(
            "gateway".into(),
            &mut gateway_publisher,
            &subscribers.counts,
            &arrivals,
            args,
            &gateway_pids,
        )
        .await?;
        let event_bytes = subscribers.counts.message_bytes();
        drop(subscribers);
        points.push(point);
        tokio::time::sleep(SETTLE).await;

        if let Some((server, publisher)) = &mut redis_publisher {
            eprintln!("Redis: {count} subscribers…");
            let subscribers = RedisSubscribers::start(
                server,
                count,
                args.gateway.connect_concurrency,
                arrivals.clone(),
            )
            .await?;
            publisher.sink.bytes = event_bytes;
            let pids: Vec<u32> = server.pid().into_iter().collect();
            let point = measure(
                "Redis".into(),
                publisher,
                &subscribers.counts,
                &arrivals,
                args,
                &pids,
            )
            .await?;
            drop(subscribers);
            points.push(point);
            tokio::time::sleep(SETTLE).await;
        }

        if args.against.contains(&Against::Floor) {
            for &writers in &args.floor_writers {
                points.push(measure_floor(args, writers, count, event_bytes, &arrivals).await?);
                tokio::time::sleep(SETTLE).await;
            }
        }
    }
    Ok(points)
}

/// A fresh floor server of `writers` threads, `count` subscribers on it.
async fn measure_floor(
    args: &FanoutArgs,
    writers: usize,
    count: usize,
    event_bytes: usize,
    arrivals: &Arc<Arrivals>,
) -> anyhow::Result<Point> {
    let server = FloorServer::start(writers).await?;
    eprintln!("{}: {count} subscribers…", server.name());
    let result = async {
        let subscribers = server
            .subscribers(count, args.gateway.connect_concurrency, arrivals.clone())
            .await?;
        let mut publisher = Publisher::new(server.sink(event_bytes).await?);
        let pids: Vec<u32> = server.pid().into_iter().collect();
        measure(
            server.name(),
            &mut publisher,
            &subscribers.counts,
            arrivals,
            args,
            &pids,
        )
        .await
    }
    .await;
    server.stop().await;
    result
}

/// Warm-up, throughput, latency: one backend's point.
async fn measure<S: Sink>(
    backend: String,
    publisher: &mut Publisher<S>,
    counts: &Counts,
    arrivals: &Arrivals,
    args: &FanoutArgs,
    pids: &[u32],
) -> anyhow::Result<Point> {
    publisher
        .throughput(counts, args.warmup, args.bounds())
        .await?;
    let cpu = Cpu::now(pids)?;
    let throughput = publisher
        .throughput(counts, args.duration, args.bounds())
        .await?;
    let used = cpu.since()?;
    let (cpu, start) = (Cpu::now(pids)?, Instant::now());
    let LatencyPhase {
        sent,
        incomplete,
        mut last,
    } = publisher
        .latency(counts, arrivals, args.latency_rate, args.latency_duration)
        .await?;
    let latency_elapsed = start.elapsed();
    let latency_server_cpu = cpu.since()?.server;
    Ok(Point {
        backend,
        subscribers: counts.len(),
        throughput,
        server_cpu: used.server,
        bench_cpu: used.bench,
        other_cpu: used.other,
        sent,
        incomplete,
        last_p50: last.quantile_ms(0.5),
        last_p99: last.quantile_ms(0.99),
        message_bytes: counts.message_bytes(),
        latency_server_cpu,
        latency_elapsed,
    })
}

impl Point {
    fn deliveries_per_s(&self) -> f64 {
        self.throughput.delivered as f64 / self.throughput.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Server CPU per delivery of the throughput phase, ns.
    fn server_ns_per_delivery(&self) -> Option<f64> {
        per_delivery(self.server_cpu?, self.throughput.delivered)
    }

    /// Server CPU per delivery of the latency phase (every message to every
    /// subscriber), ns.
    fn latency_server_ns_per_delivery(&self) -> Option<f64> {
        let delivered = (self.sent - self.incomplete) * self.subscribers;
        per_delivery(self.latency_server_cpu?, delivered as u64)
    }
}

fn per_delivery(cpu: Duration, delivered: u64) -> Option<f64> {
    (delivered > 0).then(|| cpu.as_nanos() as f64 / delivered as f64)
}

fn ns(value: Option<f64>) -> String {
    value.map_or("-".into(), |ns| format!("{ns:.0}"))
}

fn table(args: &FanoutArgs, points: &[Point]) -> Table {
    let mut table = Table::new(
        "fanout-sweep",
        format!(
            "fan-out curves: one publisher; throughput {:?} after {:?} warm-up ({} in flight, at most {} messages per subscriber behind), latency {} messages/s for {:?}; {} cores",
            args.duration,
            args.warmup,
            args.inflight,
            args.max_lag,
            args.latency_rate,
            args.latency_duration,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        &HEADER,
    );
    for row in rows(points) {
        table.row(row);
    }
    table.note("CPU over the throughput phase, % of one core: the server's (the gateway process alone, redis-server, or the floor server), this process's, and the rest of the machine's (a quiet one: near 0); server ns / delivery: the server's CPU time over the phase / deliveries (for the floor: the CPU of one write)".into());
    table.note("latency server CPU %, ns / delivery: the same over the latency phase (publishing to the end of the drain)".into());
    table.note(
        "last p50/p99: publish → the last subscriber's receipt of each message of the latency phase; incomplete: messages some subscriber never got".into(),
    );
    table
}

const HEADER: [&str; 15] = [
    "subscribers",
    "deliveries/s",
    "lost",
    "disconnected",
    "server CPU %",
    "bench CPU %",
    "other CPU %",
    "last p50 ms",
    "last p99 ms",
    "latency messages",
    "incomplete",
    "message bytes",
    "server ns / delivery",
    "latency server CPU %",
    "latency server ns / delivery",
];

fn rows(points: &[Point]) -> Vec<Vec<String>> {
    points
        .iter()
        .map(|point| {
            vec![
                format!("{} {}", point.subscribers, point.backend),
                format!("{:.0}", point.deliveries_per_s()),
                point.throughput.lost.to_string(),
                point.throughput.disconnected.to_string(),
                point
                    .server_cpu
                    .map_or("-".into(), |cpu| percent(cpu, point.throughput.elapsed)),
                percent(point.bench_cpu, point.throughput.elapsed),
                percent(point.other_cpu, point.throughput.elapsed),
                format!("{:.2}", point.last_p50),
                format!("{:.2}", point.last_p99),
                point.sent.to_string(),
                point.incomplete.to_string(),
                point.message_bytes.to_string(),
                ns(point.server_ns_per_delivery()),
                point
                    .latency_server_cpu
                    .map_or("-".into(), |cpu| percent(cpu, point.latency_elapsed)),
                ns(point.latency_server_ns_per_delivery()),
            ]
        })
        .collect()
}

fn write_charts(dir: &Path, args: &FanoutArgs, points: &[Point]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut backends: Vec<&str> = Vec::new();
    for point in points {
        if !backends.contains(&point.backend.as_str()) {
            backends.push(&point.backend);
        }
    }
    let curve = |measure: &dyn Fn(&Point) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        backends
            .iter()
            .map(|&name| {
                let line = points
                    .iter()
                    .filter(|p| p.backend == name)
                    .map(|p| (p.subscribers as f64, measure(p)))
                    .collect();
                (name.to_owned(), line)
            })
            .collect()
    };
    report::curves_svg(
        &dir.join("fanout-deliveries.svg"),
        &format!(
            "fan-out deliveries/s, {} (same run)",
            backends
                .iter()
                .map(|&b| if b == "Redis" { "Redis Pub/Sub" } else { b })
                .collect::<Vec<_>>()
                .join(" vs ")
        ),
        ("subscribers", "deliveries/s"),
        &curve(&Point::deliveries_per_s),
    )?;
    let p99 = |p: &Point| p.last_p99;
    report::curves_svg(
        &dir.join("fanout-last-p99.svg"),
        &format!(
            "publish → last subscriber p99 (ms), {} messages/s (same run)",
            args.latency_rate
        ),
        ("subscribers", "p99 ms"),
        &curve(&p99),
    )?;
    let mut csv = Vec::new();
    for (point, row) in points.iter().zip(rows(points)) {
        let mut cells = vec![point.backend.clone(), point.subscribers.to_string()];
        cells.extend(row.into_iter().skip(1));
        csv.push(cells);
    }
    let mut header = vec!["backend", "subscribers"];
    header.extend(HEADER.iter().skip(1));
    report::write_csv(&dir.join("fanout-curves.csv"), &header, &csv)
}
