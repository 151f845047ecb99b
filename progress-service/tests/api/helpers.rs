//! One `spawn_app()` for every backend: the real service on port 0 against a
//! fresh SQLite file or a fresh, migrated Postgres database.

use std::net::SocketAddr;

use clap::Parser;
use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use progress_service::{Application, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod NAME { sqlite, postgres }` tests calling `NAME(Backend)`.
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
            }
        )+
    };
}
pub(crate) use both_backends;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: ProgressServiceClient<Channel>,
    pub database_url: String,
    extra_args: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: Backend, extra_args: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("progress.db").display()),
        Backend::Postgres => testkit::fresh_database()
            .await
            .expect("fresh Postgres database"),
    };
    let extra_args = extra_args.iter().map(|s| (*s).to_owned()).collect();
    let mut app = TestApp {
        addr: "127.0.0.1:0".parse().expect("addr"),
        client: ProgressServiceClient::new(
            Channel::from_static("http://127.0.0.1:1").connect_lazy(),
        ),
        database_url,
        extra_args,
        stop: None,
        task: None,
        _dir: dir,
    };
    app.start("127.0.0.1:0").await;
    app
}

impl TestApp {
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
        let app = Application::build(config).await.expect("app builds");
        self.addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        self.task = Some(tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        })));
        self.stop = Some(stop);
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the service");
        self.client = ProgressServiceClient::new(channel);
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
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

    pub async fn delete(&self, user: &str, manga: i64) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .delete_progress(pb::DeleteProgressRequest {
                user_id: user.into(),
                manga_id: manga,
                origin: String::new(),
            })
            .await
            .map(|_| ())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn update_req(user: &str, manga: i64, chapter: &str) -> pb::UpdateProgressRequest {
    pb::UpdateProgressRequest {
        user_id: user.into(),
        manga_id: manga,
        chapter: chapter.into(),
        ..Default::default()
    }
}
