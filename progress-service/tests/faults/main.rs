//! Fault tests of the hybrid store against the real `progress-service`
//! binary, a private Redis (AOF on) and a private Postgres cluster: the
//! service is killed with SIGKILL, or Postgres is stopped under load, and no
//! acknowledged update may be lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use testkit::{PrivatePostgres, PrivateRedis, wait_until};
use tonic::transport::Channel;

const KEYS: i64 = 16;
const USER: &str = "fault";

struct Service {
    child: Option<Child>,
    addr: SocketAddr,
    args: Vec<String>,
    _logs: tempfile::TempDir,
}

impl Service {
    async fn start(database_url: &str, redis_url: &str) -> Self {
        Self::start_with(
            database_url,
            redis_url,
            &["--batch-interval", "200ms", "--batch-claim-idle", "1s"],
        )
        .await
    }

    async fn start_with(database_url: &str, redis_url: &str, extra: &[&str]) -> Self {
        let port = testkit::free_port().expect("free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut args = [
            "--listen",
            &addr.to_string(),
            "--database-url",
            database_url,
            "--redis-url",
            redis_url,
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut service = Self {
            child: None,
            addr,
            args,
            _logs: tempfile::tempdir().expect("log dir"),
        };
        service.spawn().await;
        service
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self._logs.path().join("service.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_progress-service"))
            .args(&self.args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("REPLICA_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start progress-service");
        self.child = Some(child);
        let url = format!("http://{}", self.addr);
        wait_until(Duration::from_secs(60), "the service to serve", || {
            let url = url.clone();
            async move {
                let Ok(channel) = Channel::from_shared(url).expect("uri").connect().await else {
                    return false;
                };
                ProgressServiceClient::new(channel)
                    .get_progress(pb::GetProgressRequest {
                        user_id: "probe".into(),
                        manga_id: 1,
                    })
                    .await
                    .is_err_and(|s| s.code() == tonic::Code::NotFound)
            }
        })
        .await
        .unwrap_or_else(|err| {
            let log =
                std::fs::read_to_string(self._logs.path().join("service.log")).unwrap_or_default();
            panic!("service up: {err:#}\n--- service log ---\n{log}");
        });
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
    }

    fn client(&self) -> ProgressServiceClient<Channel> {
        ProgressServiceClient::new(
            Channel::from_shared(format!("http://{}", self.addr))
                .expect("uri")
                .connect_lazy(),
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Highest acknowledged version per manga, and counters of the load.
#[derive(Default)]
struct Load {
    acked: Mutex<HashMap<i64, i64>>,
    /// Every ack, `(manga, version)`, in the order received.
    every_ack: Mutex<Vec<(i64, i64)>>,
    acks: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

/// One caller per key, each moving its chapter forward; a caller stops at
/// its first error when `stop_on_error`.
fn start_load(
    client: ProgressServiceClient<Channel>,
    load: Arc<Load>,
    stop_on_error: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    (1..=KEYS)
        .map(|manga| {
            let mut client = client.clone();
            let load = load.clone();
            tokio::spawn(async move {
                let mut chapter = 1u64;
                while !load.stop.load(Ordering::Relaxed) {
                    let req = pb::UpdateProgressRequest {
                        user_id: USER.into(),
                        manga_id: manga,
                        chapter: chapter.to_string(),
                        ..Default::default()
                    };
                    match client.update_progress(req).await {
                        Ok(resp) => {
                            let version = resp.into_inner().progress.map_or(0, |p| p.version);
                            let mut acked = load.acked.lock().expect("lock");
                            let slot = acked.entry(manga).or_default();
                            *slot = (*slot).max(version);
                            drop(acked);
                            load.every_ack.lock().expect("lock").push((manga, version));
                            load.acks.fetch_add(1, Ordering::Relaxed);
                            chapter += 1;
                        }
                        Err(_) => {
                            load.errors.fetch_add(1, Ordering::Relaxed);
                            if stop_on_error {
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

async fn queue_len(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("XLEN")
        .arg(progress_service::store::hybrid::STREAM)
        .query_async(redis)
        .await
        .unwrap_or(u64::MAX)
}

/// Waits until the queue is empty and returns manga -> version in Postgres.
async fn drained_rows(
    database_url: &str,
    redis: &mut redis::aio::MultiplexedConnection,
) -> HashMap<i64, i64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .expect("connect to Postgres");
    wait_until(Duration::from_secs(90), "the queue to drain", || {
        let mut redis = redis.clone();
        async move { queue_len(&mut redis).await == 0 }
    })
    .await
    .expect("queue drains");
    stored_versions(&pool).await
}

/// manga -> version of the load's user in Postgres.
async fn stored_versions(pool: &sqlx::PgPool) -> HashMap<i64, i64> {
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT manga_id, version FROM user_progress WHERE user_id = $1")
            .bind(USER)
            .fetch_all(pool)
            .await
            .expect("rows");
    rows.into_iter().collect()
}

fn lost(acked: &HashMap<i64, i64>, stored: &HashMap<i64, i64>) -> Vec<(i64, i64, Option<i64>)> {
    acked
        .iter()
        .filter(|(m, v)| stored.get(m).is_none_or(|s| s < v))
        .map(|(m, v)| (*m, *v, stored.get(m).copied()))
        .collect()
}

/// Entries read by a consumer and not yet acknowledged (XPENDING count).
async fn held_entries(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("XPENDING")
        .arg(progress_service::store::hybrid::STREAM)
        .arg(progress_service::store::hybrid::GROUP)
        .query_async::<(u64, redis::Value, redis::Value, redis::Value)>(conn)
        .await
        .map_or(0, |(n, ..)| n)
}

/// Writes until 2,000 updates were acknowledged, waits until the batch
/// writer holds read but unflushed entries, then kills the service with
/// SIGKILL and lets the callers finish: what the load saw, and a connection
/// to its Redis.
async fn load_then_kill_while_entries_are_held(
    service: &mut Service,
    redis: &PrivateRedis,
) -> (Arc<Load>, redis::aio::MultiplexedConnection) {
    let load = Arc::new(Load::default());
    let callers = start_load(service.client(), load.clone(), true);
    wait_until(Duration::from_secs(60), "a stream of acks", || {
        let load = load.clone();
        async move { load.acks.load(Ordering::Relaxed) >= 2000 }
    })
    .await
    .expect("load runs");
    let conn = redis_conn(redis).await;
    wait_until(
        Duration::from_secs(30),
        "the batch writer to hold entries",
        || {
            let mut conn = conn.clone();
            async move { held_entries(&mut conn).await > 0 }
        },
    )
    .await
    .expect("entries held");
    service.kill9();
    for caller in callers {
        caller.await.expect("caller ends");
    }
    (load, conn)
}

async fn redis_conn(redis: &PrivateRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_update() {
    let pg = PrivatePostgres::start().await.expect("private Postgres");
    let database_url = pg.fresh_database().await.expect("database");
    let redis = PrivateRedis::start(true).await.expect("private Redis");
    let mut service = Service::start(&database_url, &redis.url()).await;

    // Kill while the batch writer holds read-but-unacknowledged entries, so
    // the restart must claim them back.
    let (load, mut conn) = load_then_kill_while_entries_are_held(&mut service, &redis).await;
    // Usually still > 0; when the writer acked in the instant before the kill
    // the claim path is not exercised, but nothing below depends on it.
    eprintln!(
        "entries held at the kill: {}",
        held_entries(&mut conn).await
    );
    let acked = load.acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), KEYS as usize);

    service.spawn().await;
    let stored = drained_rows(&database_url, &mut conn).await;
    assert_eq!(lost(&acked, &stored), vec![], "acknowledged updates lost");
    // Postgres holds exactly what Redis holds: the final versions.
    let mut client = service.client();
    for (manga, version) in &stored {
        let current = client
            .get_progress(pb::GetProgressRequest {
                user_id: USER.into(),
                manga_id: *manga,
            })
            .await
            .expect("found")
            .into_inner();
        assert_eq!(current.version, *version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_postgres_outage_loses_nothing() {
    let pg = PrivatePostgres::start().await.expect("private Postgres");
    let database_url = pg.fresh_database().await.expect("database");
    let redis = PrivateRedis::start(true).await.expect("private Redis");
    let service = Service::start(&database_url, &redis.url()).await;
    let mut conn = redis_conn(&redis).await;

    let load = Arc::new(Load::default());
    let callers = start_load(service.client(), load.clone(), false);
    wait_until(Duration::from_secs(60), "a stream of acks", || {
        let load = load.clone();
        async move { load.acks.load(Ordering::Relaxed) >= 500 }
    })
    .await
    .expect("load runs");

    pg.stop_server().expect("Postgres stops");
    let acks_before = load.acks.load(Ordering::Relaxed);
    let errors_before = load.errors.load(Ordering::Relaxed);
    // The outage itself is the scenario: 30 s of writes without Postgres.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let acks_during = load.acks.load(Ordering::Relaxed) - acks_before;
    let errors_during = load.errors.load(Ordering::Relaxed) - errors_before;
    let backlog = queue_len(&mut conn).await;
    pg.start_server().await.expect("Postgres restarts");

    load.stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("caller ends");
    }
    assert!(acks_during > 100, "acks continued: {acks_during}");
    assert_eq!(errors_during, 0, "no write failed during the outage");
    assert!(backlog > 0, "the queue held the backlog");

    let acked = load.acked.lock().expect("lock").clone();
    let stored = drained_rows(&database_url, &mut conn).await;
    assert_eq!(lost(&acked, &stored), vec![], "acknowledged updates lost");
}

/// Problem 6 of issue 13: with a stable REPLICA_ID the restarted replica is
/// the same consumer, so it flushes the entries its killed predecessor had
/// read at once instead of after BATCH_CLAIM_IDLE (default 30 s, kept here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_flushes_what_its_killed_run_held_within_5s() {
    let pg = PrivatePostgres::start().await.expect("private Postgres");
    let database_url = pg.fresh_database().await.expect("database");
    let redis = PrivateRedis::start(true).await.expect("private Redis");
    // A 1 s batch interval: the writer holds read entries most of the time.
    let mut service = Service::start_with(
        &database_url,
        &redis.url(),
        &["--batch-interval", "1s", "--replica-id", "replica-a"],
    )
    .await;

    let (load, mut conn) = load_then_kill_while_entries_are_held(&mut service, &redis).await;
    let held = held_entries(&mut conn).await;
    assert!(held > 0, "the killed writer held read, unflushed entries");
    let every_ack = load.every_ack.lock().expect("lock").clone();
    assert_eq!(every_ack.len() as u64, load.acks.load(Ordering::Relaxed));

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url)
        .await
        .expect("connect to Postgres");
    let behind = |stored: &HashMap<i64, i64>| {
        every_ack
            .iter()
            .filter(|(m, v)| stored.get(m).is_none_or(|s| s < v))
            .count()
    };
    let restarted = std::time::Instant::now();
    service.spawn().await;
    let serving = restarted.elapsed();
    let (took, missing) = loop {
        let missing = behind(&stored_versions(&pool).await);
        let took = restarted.elapsed();
        if missing == 0 || took > Duration::from_secs(5) {
            break (took, missing);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "acks: {}, held at the kill: {held}, serving after {serving:?}, \
         every ack in Postgres after {took:?} ({missing} not)",
        every_ack.len()
    );
    assert_eq!(
        missing, 0,
        "acknowledged updates not in Postgres 5 s after the restart"
    );
    assert!(took <= Duration::from_secs(5), "took {took:?}");
}
