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
//!
//! With `--sweep`, the curves instead: see `fanout_sweep`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use mangahub_model::Chapter;
use tokio::task::JoinHandle;

use super::conns::{self, Conn, GatewayArgs, Transport, TransportArgs};
use super::deliveries::{Arrivals, Counts};
use super::fanout_sweep;
use super::procfs;
use super::publish::{Bounds, Publisher, Sink};
use super::report::Table;
use crate::client::conn::{REPLY_TIMEOUT, Reply};

/// A subscriber reads floods of events: 8 KiB takes ~30 of them per read
/// (the CLI's default 1 KiB would take ~3), on either transport.
pub const SUBSCRIBER_READ_BUFFER: usize = 8 * 1024;

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
    /// Curves instead of one point: each subscriber count in turn (TCP),
    /// throughput then latency, each beside --against in the same run.
    #[arg(long, value_delimiter = ',', requires = "start")]
    pub sweep: Vec<usize>,
    /// The same-run references of a sweep: redis (Redis Pub/Sub), floor (a
    /// server of bare write calls, one per subscriber per message), or both
    /// (redis,floor).
    #[arg(long, value_enum, value_delimiter = ',', requires = "sweep")]
    pub against: Vec<fanout_sweep::Against>,
    /// The floor's writer threads, each writing to its own share of the
    /// subscribers: one floor per value.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub floor_writers: Vec<usize>,
    /// Start a fresh progress service and gateway (with --jwt-secret) for
    /// the sweep instead of using a running one.
    #[arg(long)]
    pub start: bool,
    /// With --start: directory of the progress-service and gateway binaries
    /// (default: beside this executable).
    #[arg(long, requires = "start")]
    pub bin_dir: Option<PathBuf>,
    /// Where a sweep writes its CSV and SVG charts.
    #[arg(long, requires = "sweep")]
    pub chart_dir: Option<PathBuf>,
    /// A sweep's latency phase: messages per second from the publisher.
    #[arg(long, default_value_t = 100)]
    pub latency_rate: u32,
    /// A sweep's latency phase: how long it publishes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub latency_duration: Duration,
}

impl FanoutArgs {
    pub fn bounds(&self) -> Bounds {
        Bounds {
            inflight: self.inflight,
            max_lag: self.max_lag,
        }
    }
}

pub fn run(args: &FanoutArgs) -> anyhow::Result<()> {
    if !args.sweep.is_empty() {
        return fanout_sweep::run(args);
    }
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
        sets.push(
            Subscribers::start(
                &gateway,
                manga,
                run,
                args.subscribers,
                Arc::new(Arrivals::new(0)),
            )
            .await?
            .with_transport(transport),
        );
    }
    let mut publisher = Publisher::new(GatewaySink::open(&args.gateway, run).await?);

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
            publisher.sink.manga = set.manga;
            publisher
                .throughput(&set.counts, args.warmup, args.bounds())
                .await?;
            let cpu = Cpu::now(&args.pid)?;
            let phase = publisher
                .throughput(&set.counts, args.duration, args.bounds())
                .await?;
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
pub struct Cpu {
    pids: Vec<u32>,
    server: Duration,
    bench: Duration,
    machine: Duration,
}

/// CPU used over a phase.
pub struct CpuUsed {
    /// `None` without pids.
    pub server: Option<Duration>,
    pub bench: Duration,
    /// Everything else on the machine (without pids, the server too).
    pub other: Duration,
}

impl Cpu {
    pub fn now(pids: &[u32]) -> anyhow::Result<Self> {
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

    pub fn since(&self) -> anyhow::Result<CpuUsed> {
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

pub fn percent(cpu: Duration, over: Duration) -> String {
    format!(
        "{:.0}",
        100.0 * cpu.as_secs_f64() / over.as_secs_f64().max(f64::EPSILON)
    )
}

/// One transport's subscribers, each reading in its own task; closed when
/// dropped.
pub struct Subscribers {
    transport: Transport,
    manga: i64,
    pub counts: Arc<Counts>,
    tasks: Vec<JoinHandle<()>>,
}

impl Subscribers {
    /// `count` subscribers of `manga`, each its own user; during a latency
    /// phase each tells `arrivals` which update an event is of.
    pub async fn start(
        gateway: &GatewayArgs,
        manga: i64,
        run: i64,
        count: usize,
        arrivals: Arc<Arrivals>,
    ) -> anyhow::Result<Self> {
        let prefix = format!("bench-fanout-{run}-{manga}");
        let conns = conns::open_many_with(gateway, &prefix, count, SUBSCRIBER_READ_BUFFER).await?;
        let subscribe = format!(r#"{{"type":"subscribe","data":{{"manga_id":{manga}}}}}"#);
        let mut subscribed = Vec::with_capacity(count);
        for mut conn in conns {
            let reply = conn.request(&subscribe).await?;
            if reply.kind != "subscribed" {
                bail!("subscribing answered {}", conn.last_line());
            }
            subscribed.push(conn);
        }
        Ok(Self::from_conns(subscribed, manga, arrivals))
    }

    /// Connections already subscribed (to `manga`, or whatever the server
    /// has), each read from now on in its own task.
    pub fn from_conns(conns: Vec<Conn>, manga: i64, arrivals: Arc<Arrivals>) -> Self {
        let counts = Arc::new(Counts::new(conns.len()));
        let tasks = conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| tokio::spawn(receive(conn, counts.clone(), arrivals.clone(), i)))
            .collect();
        Self {
            transport: Transport::Tcp,
            manga,
            counts,
            tasks,
        }
    }

    fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    pub fn manga(&self) -> i64 {
        self.manga
    }

    fn len(&self) -> usize {
        self.counts.len()
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Counts the events a subscriber receives until its connection ends.
async fn receive(mut conn: Conn, counts: Arc<Counts>, arrivals: Arc<Arrivals>, i: usize) {
    let mut received = 0;
    while let Ok(Some(message)) = conn.next_line().await {
        if message.contains("\"progress_broadcast\"") {
            received += 1;
            counts.set(i, received, message.len());
            if arrivals.tracking()
                && let Some(update) = chapter_hundredths(message)
            {
                arrivals.arrived(update);
            }
        }
    }
    counts.close(i);
}

/// The chapter of a broadcast, in hundredths: the number of the update the
/// publisher sent (see [`GatewaySink`]).
pub(super) fn chapter_hundredths(message: &str) -> Option<i64> {
    let rest = &message[message.find("\"chapter\":")? + "\"chapter\":".len()..];
    let number = &rest[..rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len())];
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let frac = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.get(..2)?.parse().ok()?,
    };
    Some(int.parse::<i64>().ok()? * 100 + frac)
}

/// Publishes over TCP as its own user: update number n sets chapter n/100
/// of `manga` (always ahead of the last, whichever manga).
pub struct GatewaySink {
    conn: Conn,
    pub manga: i64,
}

impl GatewaySink {
    pub async fn open(gateway: &GatewayArgs, run: i64) -> anyhow::Result<Self> {
        gateway.trust();
        let token = crate::token::mint(
            &gateway.jwt_secret,
            &format!("bench-fanout-{run}-publisher"),
            None,
            Duration::from_secs(3600),
        )?;
        Ok(Self {
            conn: Conn::open(&gateway.addr, &token, None).await?,
            manga: 1,
        })
    }
}

impl Sink for GatewaySink {
    async fn send(&mut self, message: i64) -> anyhow::Result<()> {
        let chapter = Chapter::from_hundredths(message)
            .map_err(|err| anyhow::anyhow!("chapter {message}: {err}"))?;
        let line = format!(
            r#"{{"type":"progress_update","id":{message},"data":{{"manga_id":{},"chapter":{chapter}}}}}"#,
            self.manga
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

#[cfg(test)]
mod tests {
    use super::chapter_hundredths;

    #[test]
    fn a_broadcast_names_its_update_by_chapter() {
        let event = |c: &str| {
            format!(
                r#"{{"type":"progress_broadcast","data":{{"manga_id":1,"chapter":{c},"user_id":"u"}}}}"#
            )
        };
        assert_eq!(chapter_hundredths(&event("76")), Some(7600));
        assert_eq!(chapter_hundredths(&event("76.5")), Some(7650));
        assert_eq!(chapter_hundredths(&event("0.07")), Some(7));
        assert_eq!(chapter_hundredths("{}"), None);
    }
}
