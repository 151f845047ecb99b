//! Memory per idle connection: opens N authenticated connections (each its own
//! user) to a running gateway, lets them sit, and reports how much the
//! gateway's resident memory grew per connection (`VmRSS` of `--pid`).
//!
//! Each connection is a file descriptor on both sides: this process and the
//! gateway each need an open-files limit above N.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::tcp::{self, GatewayArgs};

/// Descriptors this process needs beside the connections.
const SPARE_FDS: u64 = 64;

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Idle connections to hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// The gateway's process id, for its VmRSS in /proc/<pid>/status.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Wait after the last connection before reading the RSS (allocators return memory late).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Keep the connections open this long after measuring.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

#[allow(clippy::print_stdout)]
pub fn run(args: &IdleArgs) -> anyhow::Result<()> {
    if let Some(limit) = tcp::open_files_limit() {
        let needed = args.connections as u64 + SPARE_FDS;
        if needed > limit {
            bail!(
                "{} connections need about {needed} open files; this process may open {limit} (ulimit -n)",
                args.connections
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let before = args.pid.map(vm_rss_kib).transpose()?;
    let started = Instant::now();
    let prefix = format!("bench-idle-{}", tcp::run_id());
    let streams = runtime.block_on(async {
        let conns = tcp::open_many(&args.gateway, &prefix, args.connections).await?;
        conns
            .into_iter()
            .map(tcp::Conn::into_stream)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let connect = started.elapsed();
    eprintln!(
        "{} connections authenticated in {connect:.1?}; settling for {:?}",
        streams.len(),
        args.settle
    );
    std::thread::sleep(args.settle);
    let after = args.pid.map(vm_rss_kib).transpose()?;
    let open = streams.iter().filter(|s| still_open(s)).count();

    println!(
        "\nidle authenticated connections to {}, settled {:?}, {} cores",
        args.gateway.addr,
        args.settle,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| connections | still open | connect s | gateway RSS before KiB | after KiB | bytes per connection |"
    );
    println!("|---|---|---|---|---|---|");
    let (before_col, after_col, per_conn) = match (before, after) {
        (Some(b), Some(a)) => {
            let per = (a as f64 - b as f64) * 1024.0 / streams.len().max(1) as f64;
            (b.to_string(), a.to_string(), format!("{per:.0}"))
        }
        _ => ("-".into(), "-".into(), "- (pass --pid)".into()),
    };
    println!(
        "| {} | {open} | {:.1} | {before_col} | {after_col} | {per_conn} |",
        streams.len(),
        connect.as_secs_f64()
    );
    std::thread::sleep(args.hold);
    drop(streams);
    drop(runtime);
    Ok(())
}

/// `VmRSS` of a process in KiB.
fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// False when the gateway closed the connection (a read would return 0 bytes).
fn still_open(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => false,
        Ok(_) => true,
        Err(err) => err.kind() == std::io::ErrorKind::WouldBlock,
    }
}
