//! Fan-out throughput through a running gateway: N subscribers (each its own
//! user) on one manga's channel, and one publisher (over TCP, whatever the
//! subscribers use) sending `progress_update`s for that manga as fast as the
//! gateway acknowledges them: at most `--inflight` unacknowledged, and at
//! most `--max-lag` events per subscriber published but not yet received, so
//! the figure is a sustained rate rather than a burst into the gateway's
//! queues (which drop a subscriber beyond `OUTBOUND_QUEUE_BYTES`).
//!
//! With `--transport both`, N subscribers of each transport are connected at
//! once, each set on its own manga, and measured in turn in the same run.
//! Deliveries/s = events received / (last one received - first publish).
//!
//! The gateway's rate limits apply to the publisher: raise them (see
//! docs/benchmarks.md), or the figure is the limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mangahub_model::Chapter;

use super::conns::{self, Conn, GatewayArgs, Transport, TransportArgs};
use super::procfs;
use super::report::Table;
use crate::client::conn::{REPLY_TIMEOUT, Reply};

/// A subscriber reads floods of events: 8 KiB takes ~30 of them per read
/// (the CLI's default 1 KiB would take ~3), on either transport.
const SUBSCRIBER_READ_BUFFER: usize = 8 * 1024;
/// After the last publish, how long the events may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the drain checks the subscribers' counts.
const DRAIN_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Subscribers of each transport.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Publishing before each measured phase (not counted).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Rounds, each measuring every transport once, in turn.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Unacknowledged updates the publisher keeps in flight.
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// Most events per subscriber published but not yet received.
    #[arg(long, default_value_t = 1000)]
    pub max_lag: u64,
    /// The server's process ids (gateway, progress service), for the CPU
    /// they use in each phase.
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
}

pub fn run(args: &FanoutArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let table = runtime.block_on(measure(args))?;
    table.print();
    Ok(())
}

async fn measure(args: &FanoutArgs) -> anyhow::Result<Table> {
    let run = conns::run_id();
    let mut sets = Vec::new();
    for (i, &transport) in args.transport.each().iter().enumerate() {
        let manga = i64::try_from(i)? + 1;
        eprintln!(
            "{}: {} subscribers on manga {manga}…",
            transport.name(),
            args.subscribers
        );
        let gateway = args.transport.gateway(&args.gateway, transport);
        sets.push(Subscribers::start(&gateway, transport, manga, run, args.subscribers).await?);
    }
    let token = crate::token::mint(
        &args.gateway.jwt_secret,
        &format!("bench-fanout-{run}-publisher"),
        None,
        Duration::from_secs(3600),
    )?;
    let mut publisher = Publisher {
        conn: Conn::open(&args.gateway.addr, &token, None).await?,
        next: 0,
    };

    let mut table = Table::new(
        "fanout",
        format!(
            "fan-out through the gateway at {}: {} subscribers per transport on one manga, one publisher over TCP ({} in flight, at most {} events per subscriber behind), {:?} measured after {:?} warm-up, {} cores",
            args.gateway.addr,
            args.subscribers,
            args.inflight,
            args.max_lag,
            args.duration,
            args.warmup,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        &[
            "subscribers",
            "round",
            "deliveries/s",
            "updates/s",
            "delivered",
            "lost",
            "disconnected",
            "rejected",
            "server CPU %",
            "bench CPU %",
            "other CPU %",
            "server ns / delivery",
            "bench ns / delivery",
        ],
    );
    for round in 1..=args.rounds.max(1) {
        for set in &sets {
            eprintln!("{}: round {round}…", set.transport.name());
            publisher.phase(set, args.warmup, args).await?;
            let cpu = Cpu::now(&args.pid)?;
            let phase = publisher.phase(set, args.duration, args).await?;
            let used = cpu.since()?;
            let secs = phase.elapsed.as_secs_f64();
            let per_delivery = |cpu: Duration| match phase.delivered {
                0 => "-".to_owned(),
                n => format!("{:.0}", cpu.as_nanos() as f64 / n as f64),
            };
            table.row(vec![
                format!("{} {}", set.len(), set.transport.name()),
                round.to_string(),
                format!("{:.0}", phase.delivered as f64 / secs),
                format!("{:.0}", phase.applied as f64 / secs),
                phase.delivered.to_string(),
                phase.lost.to_string(),
                phase.disconnected.to_string(),
                phase.rejected.to_string(),
                used.server
                    .map_or("-".into(), |cpu| percent(cpu, phase.elapsed)),
                percent(used.bench, phase.elapsed),
                percent(used.other, phase.elapsed),
                used.server.map_or("-".into(), per_delivery),
                per_delivery(used.bench),
            ]);
        }
    }
    table.note(
        "CPU: % of one core over the phase (first publish to last event); the server's (its processes together) with --pid; other: the rest of the machine (a quiet one: near 0)".into(),
    );
    if sets.len() > 1 {
        table.note(
            "each set has its own manga; the other set's subscribers stay connected and idle meanwhile".into(),
        );
    }
    Ok(table)
}

/// CPU time used so far by the server's processes, by this one and by the
/// whole machine.
struct Cpu {
    pids: Vec<u32>,
    server: Duration,
    bench: Duration,
    machine: Duration,
}

/// CPU used over a phase.
struct CpuUsed {
    /// `None` without pids.
    server: Option<Duration>,
    bench: Duration,
    /// Everything else on the machine (without pids, the server too).
    other: Duration,
}

impl Cpu {
    fn now(pids: &[u32]) -> anyhow::Result<Self> {
        let mut server = Duration::ZERO;
        for &pid in pids {
            server += procfs::cpu_time(Some(pid))?;
        }
        Ok(Self {
            pids: pids.to_vec(),
            server,
            bench: procfs::cpu_time(None)?,
            machine: procfs::machine_busy()?,
        })
    }

    fn since(&self) -> anyhow::Result<CpuUsed> {
        let now = Self::now(&self.pids)?;
        let server = now.server.saturating_sub(self.server);
        let bench = now.bench.saturating_sub(self.bench);
        let machine = now.machine.saturating_sub(self.machine);
        Ok(CpuUsed {
            server: (!self.pids.is_empty()).then_some(server),
            bench,
            other: machine.saturating_sub(server + bench),
        })
    }
}

fn percent(cpu: Duration, over: Duration) -> String {
    format!(
        "{:.0}",
        100.0 * cpu.as_secs_f64() / over.as_secs_f64().max(f64::EPSILON)
    )
}

/// One transport's subscribers, each reading in its own task.
struct Subscribers {
    transport: Transport,
    manga: i64,
    counts: Arc<Counts>,
}

impl Subscribers {
    async fn start(
        gateway: &GatewayArgs,
        transport: Transport,
        manga: i64,
        run: i64,
        count: usize,
    ) -> anyhow::Result<Self> {
        let prefix = format!("bench-fanout-{run}-{manga}");
        let conns = conns::open_many_with(gateway, &prefix, count, SUBSCRIBER_READ_BUFFER).await?;
        let counts = Arc::new(Counts::new(count));
        let subscribe = format!(r#"{{"type":"subscribe","data":{{"manga_id":{manga}}}}}"#);
        for (i, mut conn) in conns.into_iter().enumerate() {
            let reply = conn.request(&subscribe).await?;
            if reply.kind != "subscribed" {
                bail!("subscribing answered {}", conn.last_line());
            }
            tokio::spawn(receive(conn, counts.clone(), i));
        }
        Ok(Self {
            transport,
            manga,
            counts,
        })
    }

    fn len(&self) -> usize {
        self.counts.len()
    }
}

/// Counts the events a subscriber receives until its connection ends.
async fn receive(mut conn: Conn, counts: Arc<Counts>, i: usize) {
    let mut received = 0;
    while let Ok(Some(message)) = conn.next_line().await {
        if message.contains("\"progress_broadcast\"") {
            received += 1;
            counts.set(i, received);
        }
    }
    counts.close(i);
}

/// Each subscriber's count of events, and whether it is still connected,
/// written by its task alone and summed by the publisher.
struct Counts(Vec<AtomicU64>);

/// Slots per subscriber: its count and its closed flag, then padding to 64
/// bytes, so that no two subscribers' tasks write to one cache line.
const STRIDE: usize = 8;

impl Counts {
    fn new(subscribers: usize) -> Self {
        Self(
            (0..subscribers * STRIDE)
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }

    fn len(&self) -> usize {
        self.0.len() / STRIDE
    }

    fn set(&self, i: usize, received: u64) {
        self.0[i * STRIDE].store(received, Ordering::Relaxed);
    }

    fn close(&self, i: usize) {
        self.0[i * STRIDE + 1].store(1, Ordering::Relaxed);
    }

    fn received(&self) -> u64 {
        self.0
            .iter()
            .step_by(STRIDE)
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn closed(&self) -> u64 {
        self.0
            .iter()
            .skip(1)
            .step_by(STRIDE)
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

struct Publisher {
    conn: Conn,
    /// The next update's number: its request id and, in hundredths, its
    /// chapter (always ahead of the last, whichever manga).
    next: i64,
}

#[derive(Debug, Default)]
struct Phase {
    elapsed: Duration,
    applied: u64,
    rejected: u64,
    delivered: u64,
    lost: u64,
    disconnected: u64,
}

impl Publisher {
    /// Publishes to `set`'s manga for `duration`, then waits until every
    /// subscriber still connected has received every applied update.
    async fn phase(
        &mut self,
        set: &Subscribers,
        duration: Duration,
        args: &FanoutArgs,
    ) -> anyhow::Result<Phase> {
        let counts = &set.counts;
        let subscribers = set.len() as u64 - counts.closed();
        let closed_before = counts.closed();
        let base = counts.received();
        let lag_limit = args.max_lag.saturating_mul(subscribers);
        let mut received = 0;
        let (mut sent, mut inflight) = (0u64, 0usize);
        let mut phase = Phase::default();
        let start = Instant::now();
        let end = start + duration;
        loop {
            let now = Instant::now();
            let behind = |received: u64| (sent * subscribers).saturating_sub(received) >= lag_limit;
            if behind(received) {
                received = counts.received() - base;
            }
            if now < end && inflight < args.inflight.max(1) && !behind(received) {
                self.send(set.manga).await?;
                sent += 1;
                inflight += 1;
            } else if inflight > 0 {
                match self.ack().await? {
                    true => phase.applied += 1,
                    false => phase.rejected += 1,
                }
                inflight -= 1;
            } else if now >= end {
                break;
            } else {
                // Far enough ahead, nothing in flight: let the subscribers read.
                tokio::time::sleep(DRAIN_POLL).await;
            }
        }
        let expected = phase.applied * subscribers;
        let (mut last, mut last_change) = (counts.received() - base, Instant::now());
        while last < expected && last_change.elapsed() < DRAIN_TIMEOUT {
            tokio::time::sleep(DRAIN_POLL).await;
            let now = counts.received() - base;
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
            if counts.closed() - closed_before == subscribers {
                break;
            }
        }
        phase.elapsed = last_change - start;
        phase.delivered = last;
        phase.lost = expected.saturating_sub(last);
        phase.disconnected = counts.closed() - closed_before;
        Ok(phase)
    }

    async fn send(&mut self, manga: i64) -> anyhow::Result<()> {
        self.next += 1;
        let chapter = Chapter::from_hundredths(self.next)
            .map_err(|err| anyhow::anyhow!("chapter {}: {err}", self.next))?;
        let line = format!(
            r#"{{"type":"progress_update","id":{},"data":{{"manga_id":{manga},"chapter":{chapter}}}}}"#,
            self.next
        );
        self.conn.send(&line).await
    }

    /// The next reply: true for an applied update.
    async fn ack(&mut self) -> anyhow::Result<bool> {
        let line = self
            .conn
            .read_line(REPLY_TIMEOUT)
            .await?
            .with_context(|| format!("no reply within {REPLY_TIMEOUT:?}"))?;
        let reply: Reply =
            serde_json::from_str(line).with_context(|| format!("not a message: {line}"))?;
        Ok(reply.kind == "progress_ack" && reply.applied == Some(true))
    }
}
