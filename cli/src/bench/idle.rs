//! Memory per idle connection: opens N authenticated connections (each its own
//! user) to a gateway, lets them sit, and reports how much the gateway's
//! resident memory grew per connection (`VmRSS`), for each transport asked for.
//!
//! The gateway is a running one (`--addr`/`--ws-addr`, `--pid`), or with
//! `--start` a fresh progress service and gateway started here for each
//! transport. Two transports are measured only that way: the memory of the
//! first transport's closed connections stays with the gateway's allocator
//! and would serve the second's, which would then read low.
//!
//! Each connection is a file descriptor on both sides: this process and the
//! gateway each need an open-files limit above N, for one transport at a time.
//!
//! With `--sweep` (and `--start`), each count in turn on a fresh gateway,
//! and with `--against redis` the same counts of idle client connections
//! (each answered a PING) to a fresh private `redis-server`: the curve of
//! RSS growth against connections, drawn with `--chart-dir`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::conns::{self, GatewayArgs, Transport, TransportArgs};
use super::fanout_sweep::Reference;
use super::processes::Binaries;
use super::procfs;
use super::redis_pubsub::RedisServer;
use super::report::{self, Table};
use super::stack::{Stack, StackOptions};

/// Descriptors this process needs beside the connections.
const SPARE_FDS: u64 = 64;

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Idle connections to hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// The running gateway's process id, for its VmRSS in /proc/<pid>/status.
    #[arg(long, conflicts_with = "start")]
    pub pid: Option<u32>,
    /// Start a fresh progress service and gateway for each transport (with
    /// --jwt-secret) instead of measuring a running gateway.
    #[arg(long)]
    pub start: bool,
    /// With --start: directory of the progress-service and gateway binaries
    /// (default: beside this executable).
    #[arg(long, requires = "start")]
    pub bin_dir: Option<PathBuf>,
    /// Wait after the last connection before reading the RSS (allocators return memory late).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Keep the connections open this long after measuring.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// A curve instead of --connections: each count in turn, a fresh
    /// gateway for each.
    #[arg(long, value_delimiter = ',', requires = "start")]
    pub sweep: Vec<usize>,
    /// The same-run reference: as many idle client connections to a fresh
    /// private server per count.
    #[arg(long, value_enum)]
    pub against: Option<Reference>,
    /// Where to write the CSV and the SVG chart of RSS growth against connections.
    #[arg(long)]
    pub chart_dir: Option<PathBuf>,
}

impl IdleArgs {
    fn counts(&self) -> Vec<usize> {
        if self.sweep.is_empty() {
            vec![self.connections]
        } else {
            self.sweep.clone()
        }
    }
}

/// One row's figures for the chart: connections, RSS growth in KiB.
struct Growth {
    server: String,
    connections: usize,
    kib: Option<u64>,
}

pub fn run(args: &IdleArgs) -> anyhow::Result<()> {
    let counts = args.counts();
    let largest = counts.iter().copied().max().unwrap_or(0);
    if let Some(limit) = conns::raise_open_files_limit()? {
        let needed = largest as u64 + SPARE_FDS;
        if needed > limit {
            bail!(
                "{largest} connections need about {needed} open files; this process may open {limit} (ulimit -n)"
            );
        }
    }
    let transports = args.transport.each();
    if (transports.len() > 1 || counts.len() > 1) && !args.start {
        bail!(
            "measuring both transports or several counts needs a fresh gateway for each: add --start (memory the first one's connections freed would serve the second's)"
        );
    }
    let binaries = if args.start {
        Some(Binaries::locate(args.bin_dir.as_deref())?)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let gateway = if args.start {
        "a fresh gateway for each transport".to_owned()
    } else {
        let addrs: Vec<String> = transports
            .iter()
            .map(|&t| args.transport.gateway(&args.gateway, t).addr)
            .collect();
        format!("the gateway at {}", addrs.join(", "))
    };
    let mut table = Table::new(
        "idle",
        format!(
            "idle authenticated connections to {gateway}, settled {:?}, {} cores",
            args.settle,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        &[
            "transport",
            "connections",
            "still open",
            "connect s",
            "gateway RSS before KiB",
            "after KiB",
            "bytes per connection",
        ],
    );
    let mut growth = Vec::new();
    for &count in &counts {
        for &transport in transports {
            let row = runtime.block_on(async {
                let Some(binaries) = &binaries else {
                    let gateway = args.transport.gateway(&args.gateway, transport);
                    return measure(args, &gateway, transport, count, args.pid).await;
                };
                eprintln!(
                    "{}: starting progress-service and gateway…",
                    transport.name()
                );
                let options = StackOptions {
                    jwt_secret: Some(args.gateway.jwt_secret.clone()),
                    ..StackOptions::default()
                };
                let stack = Stack::start(binaries, &options).await?;
                let gateway = GatewayArgs {
                    addr: stack.gateway_addr(transport),
                    ..args.gateway.clone()
                };
                let row = measure(args, &gateway, transport, count, stack.gateway_pid()).await;
                stack.stop().await;
                row
            })?;
            growth.push(Growth {
                server: format!("gateway ({})", transport.name()),
                connections: count,
                kib: row.growth_kib,
            });
            table.row(row.cells);
        }
        if args.against == Some(Reference::Redis) {
            let row = runtime.block_on(measure_redis(args, count))?;
            growth.push(Growth {
                server: "Redis".into(),
                connections: count,
                kib: row.growth_kib,
            });
            table.row(row.cells);
        }
    }
    if args.against.is_some() {
        table.note("Redis: a fresh redis-server per count, idle client connections that each answered a PING; its RSS in the gateway columns".into());
    }
    table.print();
    if let Some(dir) = &args.chart_dir {
        write_chart(dir, &growth, &table)?;
    }
    Ok(())
}

/// A row, and the RSS growth it measured (KiB; none without a pid).
struct Row {
    cells: Vec<String>,
    growth_kib: Option<u64>,
}

fn idle_row(
    server: &str,
    connections: usize,
    open: usize,
    connect: Duration,
    rss: (Option<u64>, Option<u64>),
) -> Row {
    let (before_col, after_col, per_conn) = match rss {
        (Some(b), Some(a)) => {
            let per = (a as f64 - b as f64) * 1024.0 / connections.max(1) as f64;
            (b.to_string(), a.to_string(), format!("{per:.0}"))
        }
        _ => ("-".into(), "-".into(), "- (pass --pid)".into()),
    };
    Row {
        cells: vec![
            server.to_owned(),
            connections.to_string(),
            open.to_string(),
            format!("{:.1}", connect.as_secs_f64()),
            before_col,
            after_col,
            per_conn,
        ],
        growth_kib: rss.0.zip(rss.1).map(|(b, a)| a.saturating_sub(b)),
    }
}

/// `count` idle client connections to a fresh `redis-server`.
async fn measure_redis(args: &IdleArgs, count: usize) -> anyhow::Result<Row> {
    eprintln!("Redis: starting redis-server…");
    let server = RedisServer::start(count + 16).await?;
    let pid = server.pid();
    let before = pid.map(procfs::rss_kib).transpose()?;
    let started = Instant::now();
    let held = server
        .idle_connections(count, args.gateway.connect_concurrency)
        .await;
    let connect = started.elapsed();
    let held = match held {
        Ok(held) => held,
        Err(err) => {
            server.stop().await;
            return Err(err);
        }
    };
    eprintln!(
        "Redis: {} connections in {connect:.1?}; settling for {:?}",
        held.len(),
        args.settle
    );
    tokio::time::sleep(args.settle).await;
    let after = pid.map(procfs::rss_kib).transpose()?;
    let row = idle_row("Redis", held.len(), held.len(), connect, (before, after));
    drop(held);
    server.stop().await;
    Ok(row)
}

fn write_chart(dir: &Path, growth: &[Growth], table: &Table) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for point in growth {
        let Some(kib) = point.kib else { continue };
        let xy = (point.connections as f64, kib as f64 / 1024.0);
        match series.iter_mut().find(|(name, _)| *name == point.server) {
            Some((_, line)) => line.push(xy),
            None => series.push((point.server.clone(), vec![(0.0, 0.0), xy])),
        }
    }
    report::curves_svg(
        &dir.join("idle-rss.svg"),
        "RSS growth against idle connections, gateway vs Redis (same run)",
        ("idle connections", "RSS growth (MiB)"),
        &series,
    )?;
    report::write_csv(
        &dir.join("idle-curves.csv"),
        &["scenario", "row", "column", "value"],
        &table.csv_rows(),
    )
}

/// One transport's row: RSS before, `count` connections, settle, RSS after.
async fn measure(
    args: &IdleArgs,
    gateway: &GatewayArgs,
    transport: Transport,
    count: usize,
    pid: Option<u32>,
) -> anyhow::Result<Row> {
    let before = pid.map(procfs::rss_kib).transpose()?;
    let started = Instant::now();
    let prefix = format!("bench-idle-{}", conns::run_id());
    let mut held = conns::open_many(gateway, &prefix, count).await?;
    let connect = started.elapsed();
    eprintln!(
        "{}: {} connections authenticated in {connect:.1?}; settling for {:?}",
        transport.name(),
        held.len(),
        args.settle
    );
    tokio::time::sleep(args.settle).await;
    let after = pid.map(procfs::rss_kib).transpose()?;
    let mut open = 0;
    for conn in &mut held {
        open += usize::from(conn.still_open().await);
    }
    let row = idle_row(transport.name(), held.len(), open, connect, (before, after));
    tokio::time::sleep(args.hold).await;
    Ok(row)
}
