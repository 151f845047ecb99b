//! One `spawn_app()` for every backend: the real service on port 0 against a
//! fresh SQLite file, a fresh, migrated Postgres database, or (hybrid) such a
//! database plus a private Redis.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use progress_service::{Application, Config, Running};
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// Redis (a private server per app) + Postgres.
    Hybrid,
}

/// Generates `mod NAME { sqlite, postgres, hybrid }` tests calling `NAME(Backend)`.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(crate::helpers::Backend::Postgres).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn hybrid() {
                    super::$name(crate::helpers::Backend::Hybrid).await;
                }
            }
        )+
    };
}
pub(crate) use both_backends;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: ProgressServiceClient<Channel>,
    pub database_url: String,
    /// Hybrid apps: the Redis they use (shared by replicas).
    pub redis: Option<Arc<testkit::PrivateRedis>>,
    extra_args: Vec<String>,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: Backend, extra_args: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("progress.db").display()),
        Backend::Postgres | Backend::Hybrid => testkit::fresh_database()
            .await
            .expect("fresh Postgres database"),
    };
    let redis = match backend {
        Backend::Hybrid => Some(Arc::new(
            testkit::PrivateRedis::start(false)
                .await
                .expect("private Redis"),
        )),
        _ => None,
    };
    spawn_on(dir, database_url, redis, extra_args).await
}

/// An app (SQLite or Postgres alone) on a database prepared by the test,
/// e.g. one an older version wrote; `dir` lives as long as the app.
pub async fn spawn_app_on(
    dir: tempfile::TempDir,
    database_url: String,
    extra_args: &[&str],
) -> TestApp {
    spawn_on(dir, database_url, None, extra_args).await
}

/// Another replica of `app`'s service: same Postgres database and Redis.
pub async fn spawn_replica(app: &TestApp, extra_args: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    spawn_on(dir, app.database_url.clone(), app.redis.clone(), extra_args).await
}

async fn spawn_on(
    dir: tempfile::TempDir,
    database_url: String,
    redis: Option<Arc<testkit::PrivateRedis>>,
    extra_args: &[&str],
) -> TestApp {
    let mut extra_args: Vec<String> = extra_args.iter().map(|s| (*s).to_owned()).collect();
    if let Some(redis) = &redis {
        // Flush quickly so tests that wait for Postgres do not wait long.
        extra_args.extend(["--redis-url".to_owned(), redis.url()]);
        if !extra_args.iter().any(|a| a == "--batch-interval") {
            extra_args.extend(["--batch-interval".to_owned(), "100ms".to_owned()]);
        }
        // Replicas in one test process share the host name: give each its own
        // id (kept across `restart`, like a real replica's).
        if !extra_args.iter().any(|a| a == "--replica-id") {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            extra_args.extend(["--replica-id".to_owned(), format!("test-replica-{n}")]);
        }
    }
    let mut app = TestApp {
        addr: "127.0.0.1:0".parse().expect("addr"),
        client: ProgressServiceClient::new(
            Channel::from_static("http://127.0.0.1:1").connect_lazy(),
        ),
        database_url,
        redis,
        extra_args,
        running: None,
        _dir: dir,
    };
    app.start("127.0.0.1:0").await;
    app
}

impl TestApp {
    /// A plain connection to the app's Redis (hybrid apps only).
    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        let url = self.redis.as_ref().expect("a hybrid app").url();
        redis::Client::open(url)
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis")
    }

    /// A plain connection pool to the app's Postgres database.
    pub async fn pg_pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
            .expect("connect to Postgres")
    }

    /// Waits until the write-behind queue is empty (every change flushed).
    pub async fn wait_flushed(&self) {
        let conn = self.redis_conn().await;
        testkit::wait_until(Duration::from_secs(30), "the queue to drain", || {
            let mut conn = conn.clone();
            async move {
                redis::cmd("XLEN")
                    .arg(progress_service::store::hybrid::STREAM)
                    .query_async::<u64>(&mut conn)
                    .await
                    .is_ok_and(|n| n == 0)
            }
        })
        .await
        .expect("queue drains");
    }

    async fn start(&mut self, listen: &str) {
        let mut args = vec![
            "progress-service".to_owned(),
            "--listen".into(),
            listen.into(),
            "--database-url".into(),
            self.database_url.clone(),
            "--shutdown-drain".into(),
            "2s".into(),
        ];
        args.extend(self.extra_args.iter().cloned());
        let config = Config::try_parse_from(args).expect("valid test config");
        let running = Application::build(config)
            .await
            .expect("app builds")
            .spawn();
        self.addr = running.local_addr();
        self.running = Some(running);
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the service");
        self.client = ProgressServiceClient::new(channel);
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self.running.take() {
            Some(running) => running.stop().await,
            None => Ok(()),
        }
    }

    /// Stops and starts again on the same database and port.
    pub async fn restart(&mut self) {
        self.stop().await.expect("clean shutdown");
        let listen = self.addr.to_string();
        self.start(&listen).await;
    }

    pub async fn update(
        &self,
        user: &str,
        manga: i64,
        chapter: &str,
    ) -> pb::UpdateProgressResponse {
        self.send(update_req(user, manga, chapter))
            .await
            .expect("update accepted")
    }

    pub async fn send(
        &self,
        req: pb::UpdateProgressRequest,
    ) -> Result<pb::UpdateProgressResponse, tonic::Status> {
        self.client
            .clone()
            .update_progress(req)
            .await
            .map(|r| r.into_inner())
    }

    /// One `UpdateProgressBatch` call that must be served: its results.
    pub async fn send_batch(
        &self,
        updates: Vec<pb::UpdateProgressRequest>,
    ) -> Vec<pb::UpdateProgressResult> {
        self.client
            .clone()
            .update_progress_batch(pb::UpdateProgressBatchRequest { updates })
            .await
            .expect("batch served")
            .into_inner()
            .results
    }

    pub async fn get(&self, user: &str, manga: i64) -> Result<pb::Progress, tonic::Status> {
        self.client
            .clone()
            .get_progress(pb::GetProgressRequest {
                user_id: user.into(),
                manga_id: manga,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn list(
        &self,
        req: pb::ListProgressRequest,
    ) -> Result<pb::ListProgressResponse, tonic::Status> {
        self.client
            .clone()
            .list_progress(req)
            .await
            .map(|r| r.into_inner())
    }

    /// The delete's cursor.
    pub async fn delete(&self, user: &str, manga: i64) -> Result<String, tonic::Status> {
        delete_on(&self.client, user, manga).await
    }
}

/// Deletes through `client` (any replica); the delete's cursor.
pub async fn delete_on(
    client: &ProgressServiceClient<Channel>,
    user: &str,
    manga: i64,
) -> Result<String, tonic::Status> {
    client
        .clone()
        .delete_progress(pb::DeleteProgressRequest {
            user_id: user.into(),
            manga_id: manga,
            origin: String::new(),
        })
        .await
        .map(|r| r.into_inner().cursor)
}

pub fn update_req(user: &str, manga: i64, chapter: &str) -> pb::UpdateProgressRequest {
    pb::UpdateProgressRequest {
        user_id: user.into(),
        manga_id: manga,
        chapter: chapter.into(),
        ..Default::default()
    }
}
