//! Two real `progress-service` replicas on one Postgres behind one real
//! `gateway`; devices write and read without pause. One replica is killed
//! (`kill -9`): once the gateway has seen it go (its health watch breaks),
//! no request fails, and none fails later than 2 s after the kill; the
//! restarted replica rejoins by itself and gets calls again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use testkit::{LineClient, free_port, http_get, wait_until};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::binaries::{self, GATEWAY, MANGAHUB, PROGRESS_SERVICE};
use crate::process::{self, Service};

const STEP: Duration = Duration::from_secs(60);
const SECRET: &str = "failover-test-secret";
const DEVICES: [(&str, &str); 4] = [
    ("una", "phone"),
    ("una", "tablet"),
    ("vik", "phone"),
    ("vik", "desktop"),
];
/// The failover target: no failure reaches a client later than this after
/// the kill.
const TARGET: Duration = Duration::from_secs(2);
/// Requests each device answers before the kill, and after it.
const BEFORE: usize = 40;
const AFTER: usize = 150;

/// One request a device sent, when, and how it was answered.
#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    kind: &'static str,
    /// `None` for a success, else the error code.
    error: Option<String>,
}

type Log = Arc<Mutex<Vec<Answer>>>;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")))
}

fn env(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

async fn start_replica(grpc: SocketAddr, database_url: &str) -> Service {
    let mut service = Service::start(
        PROGRESS_SERVICE,
        &binaries::path(PROGRESS_SERVICE),
        &env(&[
            ("PROGRESS_LISTEN", grpc.to_string()),
            ("DATABASE_URL", database_url.to_owned()),
            ("SHUTDOWN_DRAIN", "1s".to_owned()),
        ]),
    );
    let probe = [
        "healthcheck".to_owned(),
        "--url".to_owned(),
        format!("http://{grpc}"),
    ];
    let mangahub = binaries::path(MANGAHUB);
    let no_env = BTreeMap::new();
    service
        .wait_ready(STEP, || process::succeeds(&mangahub, &probe, &no_env))
        .await;
    service
}

/// One device: an update of a fresh record, then (when it was acknowledged)
/// a read of it, over and over, each sent once the last one is answered,
/// until told to stop. (A failed update may not have been applied, so its
/// record may rightly be absent.)
async fn run_device(
    gateway: SocketAddr,
    token: String,
    device: &'static str,
    first_manga: i64,
    log: Log,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut client = LineClient::connect(gateway).await;
    let reply = client
        .request(json!({"type":"auth","data":{"token":token,"device":device}}))
        .await;
    if reply["success"] != true {
        bail!("auth failed: {reply}");
    }
    let mut manga = first_manga;
    let mut id = 0_u64;
    let mut read_next = false;
    loop {
        if *stop.borrow_and_update() {
            return Ok(());
        }
        id += 1;
        let (kind, request) = if !read_next {
            manga += 1;
            let data = json!({"manga_id":manga,"chapter":3});
            (
                "progress_update",
                json!({"type":"progress_update","id":id,"data":data}),
            )
        } else {
            let data = json!({"manga_id":manga});
            (
                "get_progress",
                json!({"type":"get_progress","id":id,"data":data}),
            )
        };
        let sent = Instant::now();
        client.send(request).await;
        // Events of the user's other devices arrive in between.
        let reply = loop {
            let message = client.recv().await;
            if message["id"] == id {
                break message;
            }
        };
        let error = match reply["type"].as_str() {
            Some("progress_ack" | "progress") => None,
            Some("error") => Some(reply["code"].as_str().unwrap_or_default().to_owned()),
            _ => bail!("unexpected reply to {kind}: {reply}"),
        };
        read_next = kind == "progress_update" && error.is_none();
        log.lock().expect("log").push(Answer { sent, kind, error });
        // Paced a little, so the machine is not saturated by the load itself.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A metric's value for the series whose labels contain `label`.
fn series(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(admin: SocketAddr) -> String {
    let (status, page) = http_get(admin, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    page
}

/// Waits until the gateway reports the replica of `label` (un)healthy.
async fn wait_health(admin: SocketAddr, label: &str, healthy: bool) {
    let value = if healthy { " 1" } else { " 0" };
    wait_until(STEP, &format!("{label} healthy: {healthy}"), || async {
        metrics(admin).await.lines().any(|l| {
            l.starts_with("gateway_replica_healthy") && l.contains(label) && l.ends_with(value)
        })
    })
    .await
    .expect("the gateway's view of the replica");
}

fn answered(logs: &[Log]) -> Vec<usize> {
    logs.iter().map(|l| l.lock().expect("log").len()).collect()
}

async fn wait_answers(
    tasks: &[JoinHandle<anyhow::Result<()>>],
    logs: &[Log],
    base: &[usize],
    more: usize,
) {
    wait_until(STEP, "devices to get answers", || {
        let done = logs
            .iter()
            .zip(base)
            .all(|(l, b)| l.lock().expect("log").len() >= b + more);
        let stopped = tasks.iter().any(JoinHandle::is_finished);
        async move { done || stopped }
    })
    .await
    .expect("answers");
    assert!(
        !tasks.iter().any(JoinHandle::is_finished),
        "a device stopped early"
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `kill -9`: calls in flight on it fail.
    Kill,
    /// SIGTERM: it reports NOT_SERVING and drains; nothing fails.
    Terminate,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_routed_around_within_two_seconds_and_rejoins_when_restarted() {
    failover(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_replica_is_routed_around_with_no_failure_and_rejoins_when_restarted() {
    failover(Stop::Terminate).await;
}

async fn failover(stop_kind: Stop) {
    let database_url = testkit::fresh_database()
        .await
        .expect("a fresh Postgres database");
    let (a, b) = (loopback(), loopback());
    let mut replica_a = start_replica(a, &database_url).await;
    let _replica_b = start_replica(b, &database_url).await;
    let url_a = format!("http://{a}");
    let url_b = format!("http://{b}");

    let tcp = loopback();
    let admin = loopback();
    let mut gateway = Service::start(
        GATEWAY,
        &binaries::path(GATEWAY),
        &env(&[
            ("GATEWAY_LISTEN", tcp.to_string()),
            ("WS_LISTEN", "off".to_owned()),
            ("PROGRESS_URL", format!("{url_a},{url_b}")),
            ("JWT_SECRET", SECRET.to_owned()),
            ("METRICS_LISTEN", admin.to_string()),
            ("HEALTH_RETRY_MAX", "200ms".to_owned()),
            ("WATCH_RETRY_MAX", "200ms".to_owned()),
            ("RATE_LIMIT_PER_SEC", "10000".to_owned()),
            ("RATE_LIMIT_BURST", "10000".to_owned()),
        ]),
    );
    gateway
        .wait_ready(STEP, || async {
            matches!(http_get(admin, "/readyz").await, Ok((200, _)))
        })
        .await;

    let (stop_tx, stop) = watch::channel(false);
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    for (i, (user, device)) in DEVICES.into_iter().enumerate() {
        let token_env = env(&[("JWT_SECRET", SECRET.to_owned())]);
        let token = process::run(
            &binaries::path(MANGAHUB),
            &["token", "--user", user, "--ttl", "1h"],
            &token_env,
        )
        .await;
        let log = Log::default();
        let first_manga = (i64::try_from(i).expect("small") + 1) * 1_000_000;
        tasks.push(tokio::spawn(run_device(
            tcp,
            token.trim().to_owned(),
            device,
            first_manga,
            log.clone(),
            stop.clone(),
        )));
        logs.push(log);
    }
    wait_answers(&tasks, &logs, &[0; DEVICES.len()], BEFORE).await;
    let page = metrics(admin).await;
    for url in [&url_a, &url_b] {
        let label = format!("replica=\"{url}\"");
        assert!(
            series(&page, "gateway_replica_calls_total", &label) > 0.0,
            "both replicas take calls before the kill: {page}"
        );
    }

    let label_a = format!("replica=\"{url_a}\"");
    let killed = Instant::now();
    match stop_kind {
        Stop::Kill => replica_a.kill(STEP).await,
        Stop::Terminate => replica_a.terminate(),
    }
    wait_health(admin, &label_a, false).await;
    let known = Instant::now();
    let base = answered(&logs);
    wait_answers(&tasks, &logs, &base, AFTER).await;
    // The load goes on past the target, so a late failure would be seen.
    while killed.elapsed() < TARGET + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ran_after_kill = killed.elapsed();

    if stop_kind == Stop::Terminate {
        assert!(replica_a.wait(STEP).await.success(), "SIGTERM exit");
    }
    // Restarted on the same port: it rejoins and takes calls again.
    let _replica_a = start_replica(a, &database_url).await;
    wait_health(admin, &label_a, true).await;
    let calls_at_rejoin = series(
        &metrics(admin).await,
        "gateway_replica_calls_total",
        &label_a,
    );
    wait_until(STEP, "the restarted replica to take calls", || async {
        series(
            &metrics(admin).await,
            "gateway_replica_calls_total",
            &label_a,
        ) > calls_at_rejoin
    })
    .await
    .expect("calls reach the restarted replica");

    stop_tx.send_replace(true);
    for task in tasks {
        task.await.expect("device task").expect("device");
    }
    let answers: Vec<Answer> = logs
        .iter()
        .flat_map(|l| l.lock().expect("log").clone())
        .collect();
    let failures: Vec<&Answer> = answers.iter().filter(|a| a.error.is_some()).collect();
    let late: Vec<String> = failures
        .iter()
        .filter(|a| a.sent >= known || a.sent.saturating_duration_since(killed) >= TARGET)
        .map(|a| {
            format!(
                "{} sent {:?} after the kill: {:?}",
                a.kind,
                a.sent.saturating_duration_since(killed),
                a.error
            )
        })
        .collect();
    eprintln!(
        "{stop_kind:?}: {} answers, {} failed (all before the gateway knew); the gateway knew {:?} after the stop; load ran {:?} after it",
        answers.len(),
        failures.len(),
        known - killed,
        ran_after_kill
    );
    assert!(
        late.is_empty(),
        "failures after the gateway knew, or later than {TARGET:?}: {late:?}"
    );
    assert!(
        failures
            .iter()
            .all(|a| a.error.as_deref() == Some("UNAVAILABLE")),
        "only UNAVAILABLE, and only around the kill: {failures:?}"
    );
    if stop_kind == Stop::Terminate {
        assert!(
            failures.is_empty(),
            "a drained replica fails nothing: {failures:?}"
        );
    }
    gateway.terminate();
    assert!(gateway.wait(STEP).await.success());
}
