//! Restart: N idle authenticated clients and a probe device pair on the real
//! gateway while the real progress service is stopped (SIGTERM or SIGKILL)
//! and started again on the same port and database. Measured from the moment
//! the new process answers gRPC health SERVING, while an update is made
//! through gRPC every few ms: how long until the gateway delivers an event to
//! the probe devices again, against a `WatchProgress` opened directly on the
//! new process at that moment (the same-run reference); and what the restart
//! cost the clients: `RESYNC`s received (each one a client re-reading its
//! whole list), the gateway's resume and resync counters.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use serde::Deserialize;
use tonic::transport::Channel;

use super::{CatchUpArgs, Table};
use crate::bench::conns::{self, Conn, GatewayArgs};
use crate::bench::processes::{self, Binaries};
use crate::bench::stack::{Stack, StackOptions};
use crate::bench::stats::Samples;

/// Descriptors this process needs beside the client connections.
const SPARE_FDS: u64 = 64;
/// Longest wait for the first event after SERVING.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Updates (and events) measured before the restarts, for the steady-state note.
const STEADY_SAMPLES: usize = 20;
/// The probe's one manga.
const PROBE_MANGA: i64 = 1;

/// The fields of a pushed line this scenario looks at.
#[derive(Debug, Deserialize)]
struct Push {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<PushData>,
}

#[derive(Debug, Default, Deserialize)]
struct PushData {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    manga_id: Option<i64>,
    #[serde(default)]
    chapter: Option<serde_json::Number>,
}

impl Push {
    fn is_resync(&self) -> bool {
        self.kind == "system"
            && self.data.as_ref().and_then(|d| d.code.as_deref()) == Some("RESYNC")
    }

    /// The probe manga's chapter of a `progress_broadcast`.
    fn probe_chapter(&self) -> Option<u64> {
        let data = self.data.as_ref()?;
        if self.kind != "progress_broadcast" || data.manga_id != Some(PROBE_MANGA) {
            return None;
        }
        data.chapter.as_ref()?.as_u64()
    }
}

/// What the idle clients had received when drained.
#[derive(Debug, Default)]
struct Drained {
    lines: usize,
    resync: usize,
    /// Other `system` messages (e.g. `SHUTDOWN`).
    other_system: usize,
    closed: usize,
}

/// One restart, measured.
struct Round {
    signal: super::Signal,
    /// The control: restarted on an empty database.
    empty_database: bool,
    stop: Duration,
    start: Duration,
    /// SERVING → first event at each probe device.
    probe: [Duration; 2],
    /// SERVING → first event of a WatchProgress opened on the new process.
    direct: Duration,
    updates: u64,
    clients: Drained,
    probe_resync: usize,
    resumes: f64,
    resyncs: f64,
    reconnects: f64,
}

pub async fn run(args: &CatchUpArgs, binaries: &Binaries) -> anyhow::Result<Table> {
    let needed = args.clients as u64 + 2 + SPARE_FDS;
    let own_limit = conns::open_files_limit();
    if let Some(limit) = own_limit
        && needed > limit
    {
        bail!(
            "{} clients need about {needed} open files; this process may open {limit} (ulimit -n)",
            args.clients
        );
    }
    let options = StackOptions {
        watch_retry_max: args.watch_retry_max,
        ..StackOptions::default()
    };
    eprintln!("restart: starting progress-service and gateway…");
    let mut stack = Stack::start(binaries, &options).await?;
    let result = measure(args, &mut stack, needed, own_limit).await;
    stack.stop().await;
    result
}

async fn measure(
    args: &CatchUpArgs,
    stack: &mut Stack,
    needed: u64,
    own_limit: Option<u64>,
) -> anyhow::Result<Table> {
    let gateway_limit = stack.gateway_pid().and_then(conns::open_files_limit_of);
    if let Some(limit) = gateway_limit
        && needed > limit
    {
        bail!(
            "the gateway may open {limit} files but {} clients need about {needed}: raise ulimit -n before running the bench (children inherit it)",
            args.clients
        );
    }
    let gateway_args = GatewayArgs {
        addr: stack.gateway.to_string(),
        jwt_secret: stack.jwt_secret.clone(),
        connect_concurrency: args.connect_concurrency,
        // The stack started here serves no TLS.
        ca_cert: None,
    };
    let run = conns::run_id();
    eprintln!("restart: opening {} idle clients…", args.clients);
    let opened = Instant::now();
    let conns = conns::open_many(
        &gateway_args,
        &format!("bench-catchup-{run}-idle"),
        args.clients,
    )
    .await?;
    // Plain non-blocking sockets: nothing in this process touches them until
    // they are drained, and a drain then reads what the kernel holds.
    let clients = conns
        .into_iter()
        .map(|c| Ok(c.into_stream()?.into_std()?))
        .collect::<anyhow::Result<Vec<std::net::TcpStream>>>()?;
    let connect = opened.elapsed();
    eprintln!(
        "restart: {} clients authenticated in {connect:.1?}",
        clients.len()
    );

    check_drain(&clients).await?;

    let probe_user = format!("bench-catchup-{run}-probe");
    let token = crate::token::mint(
        &stack.jwt_secret,
        &probe_user,
        None,
        Duration::from_secs(3600),
    )?;
    let mut probes = [
        Conn::open(&gateway_args.addr, &token, None).await?,
        Conn::open(&gateway_args.addr, &token, None).await?,
    ];
    let chapter = Arc::new(AtomicU64::new(0));
    let channel = stack.channel().await?;
    let mut steady = steady_state(&channel, &probe_user, &chapter, &mut probes).await?;

    let mut rounds = Vec::new();
    let mut plan: Vec<(super::Signal, bool)> = args.signal.iter().map(|&s| (s, false)).collect();
    if args.control {
        plan.push((super::Signal::Term, true));
    }
    for (signal, empty_database) in plan {
        let before = stack.gateway_metrics().await?;
        eprintln!(
            "restart: {signal:?} to progress-service{}…",
            if empty_database {
                ", then start it on an empty database (control)"
            } else {
                ""
            }
        );
        let restarted = stack.restart_progress(signal, empty_database).await?;
        let serving_at = restarted.serving_at;
        let first_chapter = chapter.load(Ordering::SeqCst) + 1;
        let updater = tokio::spawn(update_every(
            restarted.channel.clone(),
            probe_user.clone(),
            chapter.clone(),
            args.update_interval,
        ));
        let direct = tokio::spawn(first_direct_event(
            restarted.channel.clone(),
            probe_user.clone(),
            serving_at,
        ));
        let [a, b] = &mut probes;
        let seen = tokio::try_join!(
            first_probe_event(a, first_chapter, serving_at),
            first_probe_event(b, first_chapter, serving_at),
        );
        let direct = direct.await?;
        updater.abort();
        let ((probe_a, resync_a), (probe_b, resync_b)) = seen?;
        let direct = direct?;
        let updates = chapter.load(Ordering::SeqCst) + 1 - first_chapter;

        tokio::time::sleep(args.settle).await;
        let drained = drain(&clients);
        let mut probe_resync = resync_a + resync_b;
        for probe in &mut probes {
            probe_resync += drain_probe(probe).await?;
        }
        let after = stack.gateway_metrics().await?;
        let delta = |name: &str| processes::metric(&after, name) - processes::metric(&before, name);
        rounds.push(Round {
            signal,
            empty_database,
            stop: restarted.stop,
            start: restarted.start,
            probe: [probe_a, probe_b],
            direct,
            updates,
            clients: drained,
            probe_resync,
            resumes: delta("gateway_watch_resumes_total"),
            resyncs: delta("gateway_resyncs_total"),
            reconnects: delta("gateway_watch_reconnects_total"),
        });
    }
    drop(clients);

    let limit_text = |l: Option<u64>| l.map_or("unknown".to_owned(), |l| l.to_string());
    let mut table = Table::new(
        "restart",
        format!(
            "progress-service restart under {} idle clients + 1 probe device pair on the gateway, SQLite (synchronous=normal), an update via gRPC every {:?} from SERVING, {} cores",
            args.clients,
            args.update_interval,
            super::cores()
        ),
        &[
            "signal",
            "service stop ms",
            "start to SERVING ms",
            "SERVING to event via gateway ms (probe A / B)",
            "signal to event via gateway ms",
            "reference: SERVING to event, direct WatchProgress ms",
            "updates until seen",
            "clients still open",
            "RESYNC received (clients / probe pair)",
            "re-lists a client would make",
            "gateway_watch_resumes_total",
            "gateway_resyncs_total",
        ],
    );
    for r in &rounds {
        table.row(vec![
            if r.empty_database {
                format!("{:?} + empty database (control)", r.signal).to_uppercase()
            } else {
                format!("{:?}", r.signal).to_uppercase()
            },
            ms(r.stop),
            ms(r.start),
            format!("{} / {}", ms(r.probe[0]), ms(r.probe[1])),
            ms(r.stop + r.start + r.probe[0].max(r.probe[1])),
            ms(r.direct),
            r.updates.to_string(),
            format!("{}/{}", args.clients - r.clients.closed, args.clients),
            format!("{} / {}", r.clients.resync, r.probe_resync),
            (r.clients.resync + r.probe_resync).to_string(),
            format!("{:.0}", r.resumes),
            format!("{:.0}", r.resyncs),
        ]);
    }
    table.note(format!(
        "{} clients authenticated in {:.1} s; open-file limit: this process {}, gateway process {} (needs about {needed} each)",
        args.clients,
        connect.as_secs_f64(),
        limit_text(own_limit),
        limit_text(gateway_limit),
    ));
    table.note(format!(
        "steady state before the restarts: gRPC update to event at the probe via the gateway p50 {:.2} ms, max {:.2} ms ({STEADY_SAMPLES} updates)",
        steady.quantile_ms(0.5),
        steady.quantile_ms(1.0)
    ));
    for r in &rounds {
        let other = r.clients.lines - r.clients.resync;
        if other > 0 || r.clients.other_system > 0 || r.reconnects != r.resumes + r.resyncs {
            table.note(format!(
                "{:?}: the idle clients received {other} other lines ({} other system messages); gateway_watch_reconnects_total +{:.0}",
                r.signal, r.clients.other_system, r.reconnects
            ));
        }
    }
    Ok(table)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

async fn update(channel: &Channel, user: &str, chapter: u64) -> anyhow::Result<()> {
    let response = ProgressServiceClient::new(channel.clone())
        .update_progress(pb::UpdateProgressRequest {
            user_id: user.to_owned(),
            manga_id: PROBE_MANGA,
            chapter: chapter.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    if !response.applied {
        bail!("a forward update of the probe was not applied");
    }
    Ok(())
}

/// One update of the probe's manga every `interval`, each chapter one more
/// than the last, until aborted. Failed calls are retried on the next tick.
async fn update_every(channel: Channel, user: String, chapter: Arc<AtomicU64>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let next = chapter.fetch_add(1, Ordering::SeqCst) + 1;
        if let Err(err) = update(&channel, &user, next).await {
            tracing::warn!(%err, "probe update failed");
        }
    }
}

/// Time until the first event of a live `WatchProgress` on the probe user,
/// opened now.
async fn first_direct_event(
    channel: Channel,
    user: String,
    serving_at: Instant,
) -> anyhow::Result<Duration> {
    let wait = async {
        let mut stream = ProgressServiceClient::new(channel)
            .watch_progress(pb::WatchProgressRequest {
                user_ids: vec![user],
                ..Default::default()
            })
            .await?
            .into_inner();
        stream
            .message()
            .await?
            .context("the direct watch ended without an event")?;
        anyhow::Ok(serving_at.elapsed())
    };
    tokio::time::timeout(EVENT_TIMEOUT, wait)
        .await
        .context("no event on the direct watch")?
}

/// Reads a probe connection until a `progress_broadcast` of the probe manga
/// at `first_chapter` or later (older ones are from before the restart);
/// returns the time since `since` and the `RESYNC`s read meanwhile.
async fn first_probe_event(
    conn: &mut Conn,
    first_chapter: u64,
    since: Instant,
) -> anyhow::Result<(Duration, usize)> {
    let deadline = since + EVENT_TIMEOUT;
    let mut resync = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = conn.read_line(left).await? else {
            bail!("no event reached the probe device within {EVENT_TIMEOUT:?} of SERVING");
        };
        let push: Push =
            serde_json::from_str(line).with_context(|| format!("not a message: {line}"))?;
        if push.is_resync() {
            resync += 1;
        }
        if push.probe_chapter().is_some_and(|c| c >= first_chapter) {
            return Ok((since.elapsed(), resync));
        }
    }
}

/// Reads what a probe connection holds (events of the last updates); the
/// `RESYNC`s among it.
async fn drain_probe(conn: &mut Conn) -> anyhow::Result<usize> {
    let mut resync = 0;
    while let Some(line) = conn.read_line(Duration::from_millis(50)).await? {
        if serde_json::from_str::<Push>(line).is_ok_and(|p| p.is_resync()) {
            resync += 1;
        }
    }
    Ok(resync)
}

/// Update → event at both probes, a few times, before anything restarts.
async fn steady_state(
    channel: &Channel,
    user: &str,
    chapter: &AtomicU64,
    probes: &mut [Conn; 2],
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for _ in 0..STEADY_SAMPLES {
        let next = chapter.fetch_add(1, Ordering::SeqCst) + 1;
        let sent = Instant::now();
        update(channel, user, next).await?;
        let [a, b] = probes;
        let (seen, _) = tokio::try_join!(
            first_probe_event(a, next, sent),
            first_probe_event(b, next, sent)
        )?;
        samples.record(seen.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(samples)
}

/// Proves the drain sees what the gateway sends an idle client: a `ping` on
/// the first one must show up as one line (its `pong`), and nothing else.
async fn check_drain(clients: &[std::net::TcpStream]) -> anyhow::Result<()> {
    let Some(mut first) = clients.first() else {
        return Ok(());
    };
    first.write_all(b"{\"type\":\"ping\",\"id\":0}\n")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Drained::default();
    while seen.lines == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = drain(clients);
    }
    if seen.lines != 1 || seen.closed > 0 {
        bail!(
            "draining the idle clients read {} lines ({} closed) after one ping; expected its pong",
            seen.lines,
            seen.closed
        );
    }
    Ok(())
}

/// Reads every idle client's socket without waiting: what the gateway sent
/// them (nothing is expected) and which ones it closed.
fn drain(clients: &[std::net::TcpStream]) -> Drained {
    let mut drained = Drained::default();
    let mut buf = vec![0u8; 64 * 1024];
    for client in clients {
        let mut bytes = Vec::new();
        let mut reader = client;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => {
                    drained.closed += 1;
                    break;
                }
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    drained.closed += 1;
                    break;
                }
            }
        }
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            drained.lines += 1;
            match serde_json::from_slice::<Push>(line) {
                Ok(push) if push.is_resync() => drained.resync += 1,
                Ok(push) if push.kind == "system" => drained.other_system += 1,
                _ => {}
            }
        }
    }
    drained
}
