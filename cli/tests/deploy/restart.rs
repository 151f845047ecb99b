//! The real `progress-service` process, stopped (SIGKILL, or SIGTERM and its
//! drain) and restarted on the same SQLite file and port while devices stay
//! connected to the real `gateway` and never stop writing: before the stop,
//! through the down time and the restart, and for a while after. The gateway
//! resumes its event stream from the cursor of the last event it delivered,
//! so every device receives every acknowledged update of the user's other
//! devices exactly once, nobody is told `RESYNC`, and nobody re-reads.
//!
//! A resumed stream replays each record at its latest state, which could
//! hide an update behind a later one of the same record. Here no two updates
//! share a record (each device counts its own manga ids up), so nothing can
//! be folded and every update is visible as itself. An update that got an
//! error (the service was down, or its reply died with the process) may or
//! may not have been applied: it must then arrive at most once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use testkit::{free_port, http_get, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, watch};
use tokio::task::JoinHandle;

use crate::binaries::{self, GATEWAY, MANGAHUB, PROGRESS_SERVICE};
use crate::process::{self, Service};

const STEP: Duration = Duration::from_secs(60);
const SECRET: &str = "restart-test-secret";
const USERS: [&str; 2] = ["rhea", "saul"];
const DEVICES: [&str; 3] = ["phone", "tablet", "desktop"];
/// Each device writes one update per tick, the next once the last one is
/// answered (the rate limits are raised).
const PACE: Duration = Duration::from_millis(10);
/// Acknowledged updates each device makes before the stop.
const ACKS_BEFORE: usize = 20;
/// Failed updates each device makes while the service is down.
const FAILS_DURING: usize = 5;
/// Acknowledged updates each device makes once the gateway's stream is back.
const ACKS_AFTER: usize = 200;
/// Device `i`'s manga ids are `(i + 1) * MANGA_BLOCK + 1, + 2, …`: one fresh
/// record per update.
const MANGA_BLOCK: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `kill -9`: no shutdown path runs, replies in flight are lost.
    Kill,
    /// SIGTERM: the service ends its streams and drains in-flight calls.
    Terminate,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Writing,
    /// Stop writing; keep reading.
    Reading,
    Done,
}

/// One `progress_broadcast` a device received.
#[derive(Debug, Clone)]
struct Received {
    user_id: String,
    manga_id: i64,
    version: i64,
    device: String,
    channel: String,
    cursor: String,
}

/// What one device did and saw.
#[derive(Debug, Default)]
struct DeviceLog {
    /// Manga ids of its updates acknowledged as applied.
    acked: Vec<i64>,
    /// Manga ids and error codes of its updates that got an error (possibly
    /// applied all the same).
    failed: Vec<(i64, String)>,
    /// Every `progress_broadcast`, in arrival order.
    received: Vec<Received>,
    /// Every other message not asked for (a `RESYNC` would land here).
    unexpected: Vec<String>,
    /// An update of its own is waiting for a reply.
    pending: bool,
}

impl DeviceLog {
    /// Every manga id it sent an update for: acknowledged or failed.
    fn sent(&self) -> BTreeSet<i64> {
        self.acked
            .iter()
            .copied()
            .chain(self.failed.iter().map(|f| f.0))
            .collect()
    }
}

type Log = Arc<Mutex<DeviceLog>>;

struct Device {
    user: &'static str,
    name: &'static str,
    log: Log,
}

/// A token from `mangahub token`, the crate's own minting.
async fn token(user: &str) -> String {
    let env = [("JWT_SECRET".to_owned(), SECRET.to_owned())].into();
    let out = process::run(
        &binaries::path(MANGAHUB),
        &["token", "--user", user, "--ttl", "1h"],
        &env,
    )
    .await;
    out.trim().to_owned()
}

/// One device: authenticates, waits for the others, then writes one update
/// per tick, each to a fresh record of its own, while recording everything
/// it receives; writes while the phase is `Writing`, reads until `Done`.
async fn run_device(
    gateway: SocketAddr,
    device: (&'static str, &'static str, i64, String),
    log: Log,
    start: Arc<Barrier>,
    mut phase: watch::Receiver<Phase>,
) -> anyhow::Result<()> {
    let (user, name, first_manga, token) = device;
    let who = format!("{user}/{name}");
    let stream = TcpStream::connect(gateway).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let send = |value: Value| format!("{value}\n");
    let auth = json!({"type":"auth","data":{"token":token,"device":name}});
    write.write_all(send(auth).as_bytes()).await?;
    let reply: Value = serde_json::from_str(&lines.next_line().await?.context("closed in auth")?)?;
    if reply["success"] != true {
        bail!("{who}: auth failed: {reply}");
    }
    start.wait().await;

    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_manga = first_manga;
    let mut pending = None;
    loop {
        let writing = *phase.borrow() == Phase::Writing;
        tokio::select! {
            _ = tick.tick(), if writing && pending.is_none() => {
                let manga = next_manga;
                next_manga += 1;
                let update = json!({"type":"progress_update","id":manga,"data":{"manga_id":manga,"chapter":7}});
                log.lock().expect("log").pending = true;
                write.write_all(send(update).as_bytes()).await?;
                pending = Some(manga);
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Done {
                    return Ok(());
                }
            }
            line = lines.next_line() => {
                let line = line?.with_context(|| format!("{who}: the gateway closed the connection"))?;
                let message: Value = serde_json::from_str(&line)?;
                let mut log = log.lock().expect("log");
                let kind = message["type"].as_str().unwrap_or_default();
                if kind == "progress_broadcast" {
                    let data = &message["data"];
                    log.received.push(Received {
                        user_id: data["user_id"].as_str().context("user_id")?.to_owned(),
                        manga_id: data["manga_id"].as_i64().context("manga_id")?,
                        version: data["version"].as_i64().context("version")?,
                        device: data["device"].as_str().unwrap_or_default().to_owned(),
                        channel: message["channel"].as_str().unwrap_or_default().to_owned(),
                        cursor: message["cursor"].as_str().unwrap_or_default().to_owned(),
                    });
                    continue;
                }
                let Some(manga) = pending.filter(|m| message["id"] == *m) else {
                    log.unexpected.push(line);
                    continue;
                };
                match kind {
                    "progress_ack" => {
                        if message["applied"] != true || message["cursor"].as_str().is_none_or(str::is_empty) {
                            bail!("{who}: an update of a fresh record not applied, or without a cursor: {message}");
                        }
                        log.acked.push(manga);
                    }
                    "error" => {
                        let code = message["code"].as_str().unwrap_or_default().to_owned();
                        log.failed.push((manga, code));
                    }
                    _ => bail!("{who}: unexpected reply to an update: {message}"),
                }
                pending = None;
                log.pending = false;
            }
        }
    }
}

fn progress_env(grpc: SocketAddr, db: &Path) -> BTreeMap<String, String> {
    [
        ("PROGRESS_LISTEN", grpc.to_string()),
        ("DATABASE_URL", format!("sqlite://{}", db.display())),
        ("SHUTDOWN_DRAIN", "1s".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn start_progress(grpc: SocketAddr, db: &Path) -> Service {
    let mangahub = binaries::path(MANGAHUB);
    let mut service = Service::start(
        PROGRESS_SERVICE,
        &binaries::path(PROGRESS_SERVICE),
        &progress_env(grpc, db),
    );
    let probe = [
        "healthcheck".to_owned(),
        "--url".to_owned(),
        format!("http://{grpc}"),
    ];
    let no_env = BTreeMap::new();
    service
        .wait_ready(STEP, || process::succeeds(&mangahub, &probe, &no_env))
        .await;
    service
}

async fn gateway_ready(admin: SocketAddr) -> bool {
    matches!(http_get(admin, "/readyz").await, Ok((200, _)))
}

type DeviceTask = JoinHandle<anyhow::Result<()>>;

/// `wait_until` for a condition on the devices' logs, failing at once with a
/// device's own error when one stops early.
async fn wait_for(tasks: &mut [DeviceTask], what: &str, done: impl Fn() -> bool) {
    let waited = wait_until(STEP, what, || {
        let done = done() || tasks.iter().any(JoinHandle::is_finished);
        async move { done }
    })
    .await;
    if let Some(task) = tasks.iter_mut().find(|t| t.is_finished()) {
        match task.await {
            Ok(Ok(())) => panic!("a device stopped early, waiting for {what}"),
            Ok(Err(err)) => panic!("a device failed, waiting for {what}: {err:#}"),
            Err(err) => panic!("a device task failed, waiting for {what}: {err}"),
        }
    }
    waited.expect(what);
}

fn each_device(devices: &[Device], test: impl Fn(&DeviceLog) -> bool) -> bool {
    devices.iter().all(|d| test(&d.log.lock().expect("log")))
}

fn acked_counts(devices: &[Device]) -> Vec<usize> {
    devices
        .iter()
        .map(|d| d.log.lock().expect("log").acked.len())
        .collect()
}

/// Whether every device has `more` acknowledged updates than in `base`.
fn acked_since(devices: &[Device], base: &[usize], more: usize) -> bool {
    devices
        .iter()
        .zip(base)
        .all(|(d, before)| d.log.lock().expect("log").acked.len() >= before + more)
}

/// A counter's total over its label sets in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_progress_service_restarts_and_writing_devices_miss_nothing_and_get_no_resync() {
    restart_under_load(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_progress_service_restarts_and_writing_devices_miss_nothing_and_get_no_resync()
{
    restart_under_load(Stop::Terminate).await;
}

async fn restart_under_load(stop: Stop) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("progress.db");
    let grpc = loopback();
    let mut progress = start_progress(grpc, &db).await;

    let tcp = loopback();
    let gateway_admin = loopback();
    let gateway_env: BTreeMap<String, String> = [
        ("GATEWAY_LISTEN", tcp.to_string()),
        ("WS_LISTEN", "off".to_owned()),
        ("PROGRESS_URL", format!("http://{grpc}")),
        ("JWT_SECRET", SECRET.to_owned()),
        ("METRICS_LISTEN", gateway_admin.to_string()),
        ("WATCH_RETRY_MAX", "200ms".to_owned()),
        ("GRPC_CONNECT_TIMEOUT", "1s".to_owned()),
        ("RATE_LIMIT_PER_SEC", "10000".to_owned()),
        ("RATE_LIMIT_BURST", "10000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut gateway = Service::start(GATEWAY, &binaries::path(GATEWAY), &gateway_env);
    gateway
        .wait_ready(STEP, || gateway_ready(gateway_admin))
        .await;

    let mut tokens = BTreeMap::new();
    for user in USERS {
        tokens.insert(user, token(user).await);
    }
    let (phase_tx, phase) = watch::channel(Phase::Writing);
    let start = Arc::new(Barrier::new(USERS.len() * DEVICES.len()));
    let mut devices = Vec::new();
    let mut tasks = Vec::new();
    for user in USERS {
        for (i, name) in DEVICES.into_iter().enumerate() {
            let first_manga = (i64::try_from(i).expect("small") + 1) * MANGA_BLOCK + 1;
            let log = Log::default();
            tasks.push(tokio::spawn(run_device(
                tcp,
                (user, name, first_manga, tokens[user].clone()),
                log.clone(),
                start.clone(),
                phase.clone(),
            )));
            devices.push(Device { user, name, log });
        }
    }

    wait_for(&mut tasks, "acknowledged updates before the stop", || {
        acked_since(&devices, &[0; USERS.len() * DEVICES.len()], ACKS_BEFORE)
    })
    .await;

    // Stopped while they write; the gateway notices its stream is gone, and
    // the devices' updates fail meanwhile (they keep writing).
    match stop {
        Stop::Kill => progress.kill(STEP).await,
        Stop::Terminate => {
            progress.terminate();
            let status = progress.wait(STEP).await;
            assert!(
                status.success(),
                "the progress service's SIGTERM exit: {status}"
            );
        }
    }
    wait_until(STEP, "the gateway to report its stream down", || async {
        !gateway_ready(gateway_admin).await
    })
    .await
    .expect("the gateway notices the stop");
    wait_for(&mut tasks, "updates to fail during the outage", || {
        each_device(&devices, |log| log.failed.len() >= FAILS_DURING)
    })
    .await;

    // Same file, same port; the devices still write.
    let _progress = start_progress(grpc, &db).await;
    let acked_at_restart = acked_counts(&devices);
    wait_until(STEP, "the gateway's stream to come back", || {
        gateway_ready(gateway_admin)
    })
    .await
    .expect("the gateway resumes");
    let acked_at_resume = acked_counts(&devices);
    wait_for(&mut tasks, "acknowledged updates after the restart", || {
        acked_since(&devices, &acked_at_resume, ACKS_AFTER)
    })
    .await;

    // Stop writing, then wait for every acknowledged update to arrive at
    // each of the user's other devices.
    phase_tx.send_replace(Phase::Reading);
    wait_for(
        &mut tasks,
        "every device's last update to be answered",
        || each_device(&devices, |log| !log.pending),
    )
    .await;
    let acked: Vec<BTreeSet<i64>> = devices
        .iter()
        .map(|d| d.log.lock().expect("log").acked.iter().copied().collect())
        .collect();
    wait_for(
        &mut tasks,
        "every acknowledged update to reach the user's other devices",
        || {
            devices.iter().enumerate().all(|(r, receiver)| {
                let log = receiver.log.lock().expect("log");
                let got: BTreeSet<i64> = log.received.iter().map(|e| e.manga_id).collect();
                devices
                    .iter()
                    .enumerate()
                    .filter(|(s, sender)| *s != r && sender.user == receiver.user)
                    .all(|(s, _)| acked[s].is_subset(&got))
            })
        },
    )
    .await;
    phase_tx.send_replace(Phase::Done);
    for task in tasks {
        task.await.expect("device task").expect("device");
    }

    // The devices are done: check their logs as plain data.
    let logs: Vec<(&Device, DeviceLog)> = devices
        .iter()
        .map(|d| (d, std::mem::take(&mut *d.log.lock().expect("log"))))
        .collect();
    for (receiver, log) in &logs {
        let who = format!("{}/{}", receiver.user, receiver.name);
        assert!(
            log.unexpected.is_empty(),
            "{who} was told {:?}",
            log.unexpected
        );
        for event in &log.received {
            assert!(
                event.user_id == receiver.user && event.channel == "user",
                "{who} got another user's update, or on another channel: {event:?}"
            );
            assert!(
                !event.cursor.is_empty(),
                "{who}: an event without a cursor: {event:?}"
            );
            // A fresh record has version 1: nothing was applied twice.
            assert_eq!(event.version, 1, "{who}: {event:?}");
        }
        let mut known = BTreeSet::new();
        for (sender, sent) in logs.iter().filter(|(d, _)| d.user == receiver.user) {
            let all_sent = sent.sent();
            let got: Vec<&Received> = log
                .received
                .iter()
                .filter(|e| all_sent.contains(&e.manga_id))
                .collect();
            known.extend(got.iter().map(|e| e.manga_id));
            if sender.name == receiver.name {
                assert!(got.is_empty(), "{who} got its own updates back: {got:?}");
                continue;
            }
            let ids: Vec<i64> = got.iter().map(|e| e.manga_id).collect();
            let distinct: BTreeSet<i64> = ids.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                ids.len(),
                "{who}: duplicates from {}: {ids:?}",
                sender.name
            );
            // One device's updates commit one after another.
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "{who}: {}'s updates out of order: {ids:?}",
                sender.name
            );
            let missing: Vec<i64> = sent
                .acked
                .iter()
                .copied()
                .filter(|m| !distinct.contains(m))
                .collect();
            assert!(
                missing.is_empty(),
                "{who} never got {}'s acknowledged updates {missing:?}",
                sender.name
            );
            assert!(
                got.iter().all(|e| e.device == sender.name),
                "{who}: events from {} name another device",
                sender.name
            );
        }
        let strays: Vec<&Received> = log
            .received
            .iter()
            .filter(|e| !known.contains(&e.manga_id))
            .collect();
        assert!(
            strays.is_empty(),
            "{who} got updates nobody sent: {strays:?}"
        );
    }
    let acked: usize = logs.iter().map(|(_, log)| log.acked.len()).sum();
    let before_resume: usize =
        acked_at_resume.iter().sum::<usize>() - acked_at_restart.iter().sum::<usize>();
    // Failed updates by error code, and how many of them were applied all
    // the same (they reached the user's other devices).
    let mut failed: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (sender, log) in &logs {
        for (manga, code) in &log.failed {
            let applied = logs.iter().any(|(d, log)| {
                d.user == sender.user && log.received.iter().any(|e| e.manga_id == *manga)
            });
            let entry = failed.entry(code.as_str()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(applied);
        }
    }
    eprintln!(
        "{stop:?}: {acked} updates acknowledged ({before_resume} after the restart before the gateway's stream was back); \
         failed (code: count, applied): {failed:?}"
    );
    // While the service is down, updates fail with `UNAVAILABLE`; so do
    // those cut off by the stop (in flight on the dying connection: tonic's
    // `Unknown: transport error` or `Internal: h2 protocol error`, which the
    // gateway maps to `UNAVAILABLE`). Such an update may or may not have
    // been applied.
    assert!(
        failed.keys().all(|code| *code == "UNAVAILABLE"),
        "{stop:?}: updates failed with {failed:?}"
    );

    let (status, page) = http_get(gateway_admin, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&page, "gateway_resyncs_total"), 0.0, "{page}");
    assert!(
        metric(&page, "gateway_watch_resumes_total") >= 1.0,
        "{page}"
    );
    for method in ["ListProgress", "SyncProgress"] {
        assert!(
            !page.contains(&format!("method=\"{method}\"")),
            "no re-read ({method}) by anyone: {page}"
        );
    }
    gateway.terminate();
    assert!(gateway.wait(STEP).await.success());
}
