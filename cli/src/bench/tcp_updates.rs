//! `progress_update` load through a running gateway: N authenticated
//! connections, each its own user, each sending its next update as soon as the
//! previous one is answered. Measures acked updates/s and the round trip.
//!
//! The gateway's rate limits (per connection and per user) apply: raise them
//! for this bench, or the figure is the limit, not the gateway.

use std::time::{Duration, Instant};

use super::conns::{self, Conn, GatewayArgs};
use super::stats::Samples;

#[derive(Debug, clap::Args)]
pub struct TcpUpdatesArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Connections, each sending one update at a time.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
}

#[derive(Debug, Default)]
struct Tally {
    samples: Samples,
    not_applied: usize,
    rate_limited: usize,
    errors: usize,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.samples.merge(other.samples);
        self.not_applied += other.not_applied;
        self.rate_limited += other.rate_limited;
        self.errors += other.errors;
    }
}

#[allow(clippy::print_stdout)]
pub fn run(args: &TcpUpdatesArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut tally = runtime.block_on(measure(args))?;
    let rate = tally.samples.len() as f64 / args.duration.as_secs_f64();
    println!(
        "\nprogress_update over TCP via {}, {} connections, {:?} measured after {:?} warm-up, {} cores",
        args.gateway.addr,
        args.connections,
        args.duration,
        args.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| connections | acked updates/s | p50 ms | p99 ms | max ms | not applied | rate limited | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
        args.connections,
        rate,
        tally.samples.quantile_ms(0.5),
        tally.samples.quantile_ms(0.99),
        tally.samples.quantile_ms(1.0),
        tally.not_applied,
        tally.rate_limited,
        tally.errors
    );
    if tally.rate_limited > 0 {
        println!(
            "note: the gateway's rate limit answered RATE_LIMITED; raise RATE_LIMIT_PER_SEC / RATE_LIMIT_BURST (and the per-user ones) to measure the gateway itself"
        );
    }
    Ok(())
}

async fn measure(args: &TcpUpdatesArgs) -> anyhow::Result<Tally> {
    let prefix = format!("bench-tcp-{}", conns::run_id());
    eprintln!("opening {} connections…", args.connections);
    let conns = conns::open_many(&args.gateway, &prefix, args.connections).await?;
    let measure_from = Instant::now() + args.warmup;
    let end = measure_from + args.duration;
    let workers: Vec<_> = conns
        .into_iter()
        .map(|conn| tokio::spawn(updates(conn, measure_from, end)))
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await??);
    }
    Ok(tally)
}

/// One connection: 100 mangas in turn, chapters that always move forward.
async fn updates(mut conn: Conn, measure_from: Instant, end: Instant) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut k: u64 = 0;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let line = format!(
            r#"{{"type":"progress_update","id":{k},"data":{{"manga_id":{},"chapter":{}}}}}"#,
            k % 100 + 1,
            k / 100 + 1
        );
        k += 1;
        let reply = conn.request(&line).await?;
        if sent < measure_from {
            continue;
        }
        match (reply.kind.as_str(), reply.applied, reply.code.as_deref()) {
            ("progress_ack", Some(true), _) => tally.samples.record(sent.elapsed()),
            ("progress_ack", _, _) => tally.not_applied += 1,
            ("error", _, Some("RATE_LIMITED")) => tally.rate_limited += 1,
            _ => tally.errors += 1,
        }
    }
    Ok(tally)
}
