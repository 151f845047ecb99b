//! Builds the application from its config (binding first, so tests learn the
//! real port) and runs it until a shutdown signal, then drains and flushes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mangahub_proto::v1::progress_service_server::ProgressServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::config::Config;
use crate::events::EventBus;
use crate::grpc::{ProgressApi, ServiceTokenCheck};
use crate::store::{self, DynStore, GroupCommitConfig, StoreConfig};

const SERVICE_NAME: &str = "mangahub.progress.v1.ProgressService";

pub struct Application {
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    store: DynStore,
    events: EventBus,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let events = EventBus::new(config.watch_buffer);
        let store_config = StoreConfig {
            database_url: config.database_url.expose().to_owned(),
            db_max_connections: config.database_max_connections,
            group_commit: GroupCommitConfig {
                max_batch: config.batch_max_size as usize,
                shards: config.write_shards as usize,
            },
            sqlite_synchronous: config.sqlite_synchronous,
            change_retention: config.change_retention,
            hybrid: config
                .redis_url
                .as_ref()
                .map(|url| store::hybrid::HybridConfig {
                    redis_url: url.expose().to_owned(),
                    cache_ttl: config.cache_ttl,
                    batch_max_size: config.batch_max_size as usize,
                    batch_interval: config.batch_interval,
                    claim_idle: config.batch_claim_idle,
                    replica_id: config
                        .replica_id
                        .clone()
                        .unwrap_or_else(crate::config::default_replica_id),
                    tombstone_retention: config.tombstone_retention,
                }),
        };
        let store = store::open(&store_config, events.clone())
            .await
            .context("opening the store")?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let admin = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin port {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            admin,
            config,
            store,
            events,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Where /metrics, /healthz and /readyz are served, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn store(&self) -> DynStore {
        self.store.clone()
    }

    /// Serves on a task of its own until [`Running::stop`]: how `mangahub
    /// dev` and the tests run the service in-process.
    pub fn spawn(self) -> Running {
        let addr = self.local_addr();
        let admin = self.admin_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            admin,
            stop: Some(stop),
            task,
        }
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// calls finish within `SHUTDOWN_DRAIN`, and flushes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            admin,
            config,
            store,
            events,
        } = self;
        let addr = listener.local_addr()?;
        let stop_watchers = CancellationToken::new();
        let api = ProgressApi::new(store.clone(), events, stop_watchers.clone());
        let guarded = ProgressServiceServer::with_interceptor(
            api,
            ServiceTokenCheck::new(config.service_token.as_ref()),
        );

        let (mut health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        health.set_service_status("", ServingStatus::Serving).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mangahub_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let stop_serving = CancellationToken::new();
        if let Some(admin) = admin {
            let store = store.clone();
            let ready: mangahub_ops::ReadyCheck = Arc::new(move || {
                let store = store.clone();
                Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
            });
            tokio::spawn(mangahub_ops::serve(
                admin,
                ready,
                stop_serving.clone().cancelled_owned(),
            ));
        }
        // `Server::tcp_nodelay` does not apply to a listener we bound
        // ourselves: set it on the incoming stream, or small replies wait for
        // delayed ACKs (~40 ms stalls on loopback).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(guarded)
            .serve_with_incoming_shutdown(incoming, stop_serving.clone().cancelled_owned());
        let mut server = tokio::spawn(server);
        tracing::info!(%addr, "progress service listening");

        tokio::select! {
            result = &mut server => {
                store.close().await;
                return result?.context("gRPC server failed");
            }
            () = shutdown => {}
        }
        tracing::info!(drain = ?config.shutdown_drain, "shutting down");
        // Watchers (the gateways) learn NOT_SERVING and route elsewhere; then
        // their health streams end, so they do not hold up the drain.
        for service in [SERVICE_NAME, ""] {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
            health.clear_service_status(service).await;
        }
        stop_watchers.cancel();
        stop_serving.cancel();
        match tokio::time::timeout(config.shutdown_drain, &mut server).await {
            Ok(result) => result?.context("gRPC server failed")?,
            Err(_) => {
                tracing::warn!("in-flight calls did not finish within the drain period");
                server.abort();
            }
        }
        store.close().await;
        tracing::info!("progress service stopped");
        Ok(())
    }
}

/// A progress service serving on its own task. Dropping it shuts the
/// service down too (without waiting for it).
pub struct Running {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Shuts down gracefully (as on SIGTERM) and returns how serving ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

pub use mangahub_ops::shutdown_signal;
