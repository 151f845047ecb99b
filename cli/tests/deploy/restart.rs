//! The real `progress-service` process, killed with SIGKILL and restarted on
//! the same SQLite file while devices stay connected to the real `gateway`
//! and keep writing. The gateway resumes its event stream from the cursor of
//! the last event it delivered, so every device receives every acknowledged
//! update of the user's other devices exactly once, and nobody is told
//! `RESYNC` (so nobody re-reads its list).
//!
//! A resumed stream replays each record at its latest state. So that every
//! acknowledged update stays visible as itself, the devices pause from just
//! before the restart until the gateway's stream is back (writes landing in
//! that window would be folded into the record's next state). The one fold
//! left is the kill's own: an update applied but never acknowledged (its
//! reply died with the process) may stand in for the acknowledged one before it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use testkit::{free_port, http_get, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, watch};

use crate::binaries::{self, GATEWAY, MANGAHUB, PROGRESS_SERVICE};
use crate::process::{self, Service};

const STEP: Duration = Duration::from_secs(60);
const SECRET: &str = "restart-test-secret";
const USERS: [&str; 2] = ["rhea", "saul"];
const DEVICES: [&str; 3] = ["phone", "tablet", "desktop"];
/// Each device writes one update per tick (the rate limits are raised).
const PACE: Duration = Duration::from_millis(20);
/// Acknowledged updates each device makes before the kill and after the restart.
const ACKS_PER_PHASE: usize = 5;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Writing,
    /// Stop writing; keep reading.
    Paused,
    Done,
}

/// What one device did and saw.
#[derive(Debug, Default)]
struct DeviceLog {
    /// Chapters of its own manga, acknowledged as applied.
    acked: Vec<u64>,
    /// Chapters whose update got an error (possibly applied all the same).
    failed: Vec<u64>,
    /// `(manga_id, chapter, device)` of every `progress_broadcast`.
    received: Vec<(i64, u64, String)>,
    /// Every `system` message (a `RESYNC` would land here).
    system: Vec<String>,
    /// No update of its own is waiting for a reply.
    idle: bool,
}

type Log = Arc<Mutex<DeviceLog>>;

struct Device {
    user: &'static str,
    name: &'static str,
    manga: i64,
    log: Log,
}

fn token(user: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"user_id": user, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign token")
}

/// One device: authenticates, waits for the others, then writes its own
/// manga's chapter 1, 2, 3… one update at a time while recording everything
/// it receives, until the phase says `Done`.
async fn run_device(
    gateway: SocketAddr,
    device: (&'static str, &'static str, i64),
    log: Log,
    start: Arc<Barrier>,
    mut phase: watch::Receiver<Phase>,
) -> anyhow::Result<()> {
    let (user, name, manga) = device;
    let stream = TcpStream::connect(gateway).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let send = |value: Value| format!("{value}\n");
    let auth = json!({"type":"auth","data":{"token":token(user),"device":name}});
    write.write_all(send(auth).as_bytes()).await?;
    let reply: Value = serde_json::from_str(&lines.next_line().await?.context("closed in auth")?)?;
    if reply["success"] != true {
        bail!("{user}/{name}: auth failed: {reply}");
    }
    start.wait().await;

    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut chapter = 0u64;
    let mut pending = false;
    loop {
        let writing = *phase.borrow() == Phase::Writing;
        tokio::select! {
            _ = tick.tick(), if writing && !pending => {
                chapter += 1;
                let update = json!({"type":"progress_update","id":chapter,"data":{"manga_id":manga,"chapter":chapter}});
                write.write_all(send(update).as_bytes()).await?;
                pending = true;
                log.lock().expect("log").idle = false;
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Done {
                    return Ok(());
                }
            }
            line = lines.next_line() => {
                let line = line?.with_context(|| format!("{user}/{name}: the gateway closed the connection"))?;
                let message: Value = serde_json::from_str(&line)?;
                let mut log = log.lock().expect("log");
                match message["type"].as_str() {
                    Some("progress_ack") => {
                        if message["applied"] != true {
                            bail!("{user}/{name}: a forward update not applied: {message}");
                        }
                        log.acked.push(message["id"].as_u64().context("ack id")?);
                    }
                    Some("error") => log.failed.push(message["id"].as_u64().context("error id")?),
                    Some("progress_broadcast") => {
                        let data = &message["data"];
                        log.received.push((
                            data["manga_id"].as_i64().context("manga_id")?,
                            data["chapter"].as_u64().context("chapter")?,
                            data["device"].as_str().unwrap_or_default().to_owned(),
                        ));
                        continue;
                    }
                    _ => {
                        log.system.push(line);
                        continue;
                    }
                }
                pending = false;
                log.idle = true;
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

fn each_device(logs: &[Device], test: impl Fn(&DeviceLog) -> bool) -> bool {
    logs.iter().all(|d| test(&d.log.lock().expect("log")))
}

/// A counter's total over its label sets in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_progress_service_restarts_and_devices_miss_nothing_and_get_no_resync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("progress.db");
    let grpc = loopback();
    let mut progress = start_progress(grpc, &db).await;

    let tcp = loopback();
    let gateway_admin = loopback();
    let gateway_env: BTreeMap<String, String> = [
        ("GATEWAY_LISTEN", tcp.to_string()),
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

    let (phase_tx, phase) = watch::channel(Phase::Writing);
    let start = Arc::new(Barrier::new(USERS.len() * DEVICES.len()));
    let mut devices = Vec::new();
    let mut tasks = Vec::new();
    for user in USERS {
        for (i, name) in DEVICES.into_iter().enumerate() {
            let manga = i64::try_from(i).expect("small") + 1;
            let log = Log::default();
            tasks.push(tokio::spawn(run_device(
                tcp,
                (user, name, manga),
                log.clone(),
                start.clone(),
                phase.clone(),
            )));
            devices.push(Device {
                user,
                name,
                manga,
                log,
            });
        }
    }

    wait_until(STEP, "acknowledged updates before the kill", || {
        let done = each_device(&devices, |log| log.acked.len() >= ACKS_PER_PHASE);
        async move { done }
    })
    .await
    .expect("devices write");

    // kill -9 while they write; the gateway notices its stream is gone, and
    // the devices' updates fail meanwhile.
    progress.kill(STEP).await;
    let acked_at_kill: Vec<usize> = devices
        .iter()
        .map(|d| d.log.lock().expect("log").acked.len())
        .collect();
    wait_until(STEP, "the gateway to report its stream down", || async {
        !gateway_ready(gateway_admin).await
    })
    .await
    .expect("the gateway notices the kill");
    wait_until(STEP, "updates to fail during the outage", || {
        let done = each_device(&devices, |log| !log.failed.is_empty());
        async move { done }
    })
    .await
    .expect("devices keep writing into the outage");

    phase_tx.send_replace(Phase::Paused);
    wait_until(STEP, "the devices to pause", || {
        let done = each_device(&devices, |log| log.idle);
        async move { done }
    })
    .await
    .expect("paused");
    let _progress = start_progress(grpc, &db).await;
    wait_until(STEP, "the gateway's stream to come back", || {
        gateway_ready(gateway_admin)
    })
    .await
    .expect("the gateway resumes");
    phase_tx.send_replace(Phase::Writing);
    wait_until(STEP, "acknowledged updates after the restart", || {
        let done = devices
            .iter()
            .zip(&acked_at_kill)
            .all(|(d, before)| d.log.lock().expect("log").acked.len() >= before + ACKS_PER_PHASE);
        async move { done }
    })
    .await
    .expect("devices write again after the restart");

    // Stop writing; once every device has received each other device's last
    // acknowledged chapter, everything before it has arrived too (one user's
    // events come in the order of their positions).
    phase_tx.send_replace(Phase::Paused);
    wait_until(STEP, "every device's last update to be answered", || {
        let done = each_device(&devices, |log| log.idle);
        async move { done }
    })
    .await
    .expect("replies to the last updates");
    let last_acked: BTreeMap<(&str, i64), u64> = devices
        .iter()
        .map(|d| {
            let log = d.log.lock().expect("log");
            (
                (d.user, d.manga),
                log.acked.iter().copied().max().unwrap_or(0),
            )
        })
        .collect();
    wait_until(
        STEP,
        "every acknowledged update to reach the other devices",
        || {
            let done = devices.iter().all(|d| {
                let log = d.log.lock().expect("log");
                last_acked
                    .iter()
                    .filter(|((user, manga), _)| *user == d.user && *manga != d.manga)
                    .all(|(&(_, manga), &chapter)| {
                        log.received.iter().any(|r| (r.0, r.1) == (manga, chapter))
                    })
            });
            async move { done }
        },
    )
    .await
    .expect("delivered");
    phase_tx.send_replace(Phase::Done);
    for task in tasks {
        task.await.expect("device task").expect("device");
    }

    for receiver in &devices {
        let log = receiver.log.lock().expect("log");
        let who = format!("{}/{}", receiver.user, receiver.name);
        assert!(log.system.is_empty(), "{who} was told {:?}", log.system);
        for sender in devices.iter().filter(|d| d.user == receiver.user) {
            let got: Vec<u64> = log
                .received
                .iter()
                .filter(|r| r.0 == sender.manga)
                .map(|r| r.1)
                .collect();
            if sender.name == receiver.name {
                assert!(got.is_empty(), "{who} got its own updates back: {got:?}");
                continue;
            }
            let sent = sender.log.lock().expect("log");
            let distinct: BTreeSet<u64> = got.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                got.len(),
                "{who}: duplicates from {}: {got:?}",
                sender.name
            );
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{who}: {}'s updates out of order: {got:?}",
                sender.name
            );
            for chapter in &sent.acked {
                // Missing only if folded into the unacknowledged update the kill cut off.
                let folded = got
                    .iter()
                    .find(|c| *c > chapter)
                    .is_some_and(|next| sent.failed.contains(next));
                assert!(
                    distinct.contains(chapter) || folded,
                    "{who} never got {}'s acknowledged chapter {chapter}: got {got:?}, acked {:?}, failed {:?}",
                    sender.name,
                    sent.acked,
                    sent.failed
                );
            }
            for chapter in &distinct {
                assert!(
                    sent.acked.contains(chapter) || sent.failed.contains(chapter),
                    "{who} got chapter {chapter} {} never sent",
                    sender.name
                );
            }
            assert!(
                log.received
                    .iter()
                    .filter(|r| r.0 == sender.manga)
                    .all(|r| r.2 == sender.name),
                "{who}: events from {} name another device",
                sender.name
            );
        }
    }

    let (status, page) = http_get(gateway_admin, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&page, "gateway_resyncs_total"), 0.0, "{page}");
    assert!(
        metric(&page, "gateway_watch_resumes_total") >= 1.0,
        "{page}"
    );
    assert!(
        !page.contains("method=\"ListProgress\""),
        "no re-list by anyone: {page}"
    );
    gateway.terminate();
    assert!(gateway.wait(STEP).await.success());
}
