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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::conns::{self, GatewayArgs, Transport, TransportArgs};
use super::processes::Binaries;
use super::procfs;
use super::report::Table;
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
}

pub fn run(args: &IdleArgs) -> anyhow::Result<()> {
    if let Some(limit) = conns::open_files_limit() {
        let needed = args.connections as u64 + SPARE_FDS;
        if needed > limit {
            bail!(
                "{} connections need about {needed} open files; this process may open {limit} (ulimit -n)",
                args.connections
            );
        }
    }
    let transports = args.transport.each();
    if transports.len() > 1 && !args.start {
        bail!(
            "measuring both transports needs a fresh gateway for each: add --start (memory the first one's connections freed would serve the second's)"
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
    for &transport in transports {
        let row = runtime.block_on(async {
            let Some(binaries) = &binaries else {
                let gateway = args.transport.gateway(&args.gateway, transport);
                return measure(args, &gateway, transport, args.pid).await;
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
            let row = measure(args, &gateway, transport, stack.gateway_pid()).await;
            stack.stop().await;
            row
        })?;
        table.row(row);
    }
    table.print();
    Ok(())
}

/// One transport's row: RSS before, N connections, settle, RSS after.
async fn measure(
    args: &IdleArgs,
    gateway: &GatewayArgs,
    transport: Transport,
    pid: Option<u32>,
) -> anyhow::Result<Vec<String>> {
    let before = pid.map(procfs::rss_kib).transpose()?;
    let started = Instant::now();
    let prefix = format!("bench-idle-{}", conns::run_id());
    let mut held = conns::open_many(gateway, &prefix, args.connections).await?;
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
    let (before_col, after_col, per_conn) = match (before, after) {
        (Some(b), Some(a)) => {
            let per = (a as f64 - b as f64) * 1024.0 / held.len().max(1) as f64;
            (b.to_string(), a.to_string(), format!("{per:.0}"))
        }
        _ => ("-".into(), "-".into(), "- (pass --pid)".into()),
    };
    let row = vec![
        transport.name().to_owned(),
        held.len().to_string(),
        open.to_string(),
        format!("{:.1}", connect.as_secs_f64()),
        before_col,
        after_col,
        per_conn,
    ];
    tokio::time::sleep(args.hold).await;
    Ok(row)
}
