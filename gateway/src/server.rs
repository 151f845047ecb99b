//! The accept loop, over the TCP port and the WebSocket port: a connection
//! permit is taken before `accept` (so at most `MAX_CONNECTIONS` are held,
//! counting both transports, and further clients wait in the backlog),
//! accept errors back off instead of spinning, and shutdown stops accepting,
//! tells every connection to finish, and waits for them within the drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use mangahub_ops::Backoff;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::backend::{HealthSettings, Replicas};
use crate::config::Config;
use crate::connection::{self, Shared};
use crate::fanout::watch::{self as event_stream, WatchSettings};
use crate::web::{self, Handshake, Origins};

const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Tells whether the gateway's event stream to the progress service is up.
#[derive(Clone)]
pub struct Readiness(watch::Receiver<bool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until ready; false if the gateway stopped first.
    pub async fn wait(&mut self) -> bool {
        self.0.wait_for(|ready| *ready).await.is_ok()
    }
}

/// A gateway bound to its listener, ready to run.
pub struct Gateway {
    listener: TcpListener,
    /// The WebSocket port, unless `WS_LISTEN=off`.
    ws_listener: Option<TcpListener>,
    origins: Arc<Origins>,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    replicas: Arc<Replicas>,
    health_settings: HealthSettings,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    watch_settings: WatchSettings,
    ready_tx: watch::Sender<bool>,
    ready_rx: watch::Receiver<bool>,
}

impl Gateway {
    /// Checks the configuration and prepares everything; needs a Tokio runtime.
    pub fn build(listener: TcpListener, config: Config) -> anyhow::Result<Self> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let replicas = Arc::new(Replicas::new(&config)?);
        let shared = Arc::new(Shared::new(&config, replicas.clone())?);
        let (ready_tx, ready_rx) = watch::channel(false);
        let ws_listener = match config.ws_listen.addr() {
            Some(addr) => Some(
                bind_with_backlog(addr, config.listen_backlog)
                    .with_context(|| format!("binding the WebSocket port {addr}"))?,
            ),
            None => None,
        };
        let admin = match config.metrics_listen {
            Some(addr) => {
                Some(bind_admin(addr).with_context(|| format!("binding the admin port {addr}"))?)
            }
            None => None,
        };
        Ok(Self {
            listener,
            ws_listener,
            origins: Arc::new(Origins::new(&config.ws_allowed_origins)),
            admin,
            shared,
            replicas,
            health_settings: HealthSettings {
                probe_timeout: config.grpc_timeout,
                retry_max: config.health_retry_max,
            },
            tls,
            max_connections: config.max_connections(),
            watch_settings: WatchSettings {
                open_timeout: config.grpc_timeout,
                retry_max: config.watch_retry_max,
            },
            ready_tx,
            ready_rx,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The WebSocket port (`/ws`, and the live page at `/`), unless switched off.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where /metrics, /healthz and /readyz are served, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn readiness(&self) -> Readiness {
        Readiness(self.ready_rx.clone())
    }

    /// `/readyz`: ready while the event stream to the progress service is up.
    pub fn ready_check(&self) -> mangahub_ops::ReadyCheck {
        let readiness = self.readiness();
        Arc::new(move || {
            let ready = readiness.is_ready();
            Box::pin(async move {
                if ready {
                    Ok(())
                } else {
                    Err("event stream to the progress service is down".to_owned())
                }
            })
        })
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run(self, shutdown: impl Future) -> anyhow::Result<()> {
        let ready_check = self.ready_check();
        let Gateway {
            listener,
            ws_listener,
            origins,
            admin,
            shared,
            replicas,
            health_settings,
            tls,
            max_connections,
            watch_settings,
            ready_tx,
            ready_rx: _,
        } = self;
        let stop = CancellationToken::new();
        if let Some(admin) = admin {
            tokio::spawn(mangahub_ops::serve(
                admin,
                ready_check,
                stop.clone().cancelled_owned(),
            ));
        }
        let flush_tasks = shared.flushers.spawn();
        tokio::spawn(connection::sweep_idle(shared.clone(), stop.clone()));
        let health_tasks = replicas.monitor(health_settings, &stop);
        let stream_task = tokio::spawn(event_stream::run(
            shared.context.fanout.clone(),
            replicas,
            watch_settings,
            ready_tx,
            stop.clone(),
        ));
        tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "gateway listening");
        if let Some(ws) = &ws_listener {
            tracing::info!(addr = %ws.local_addr()?, tls = tls.is_some(), "WebSocket and live page listening");
        }

        let permits = Arc::new(Semaphore::new(max_connections));
        let next_id = AtomicU64::new(1);
        let mut backoff = Backoff::new(FIRST_ACCEPT_BACKOFF, MAX_ACCEPT_BACKOFF);
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => permit.context("connection semaphore closed")?,
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => accepted.map(|(s, _)| (s, Transport::Tcp)),
                accepted = accept_on(ws_listener.as_ref()) => accepted.map(|(s, _)| (s, Transport::WebSocket)),
            };
            let (stream, transport) = match accepted {
                Ok(accepted) => {
                    backoff.reset();
                    accepted
                }
                Err(err) if is_per_connection(&err) => continue,
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%err, retry_in = ?delay, "accept failed");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            configure(&stream);
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let conn_stop = stop.clone();
            match (&tls, transport) {
                // Boxed: the handshake (and TLS) state must not size every TCP connection's task.
                (tls, Transport::WebSocket) => {
                    let serving = serve_websocket(
                        shared.clone(),
                        stream,
                        tls.clone(),
                        origins.clone(),
                        id,
                        conn_stop,
                        permit,
                    );
                    shared.tasks.spawn(Box::pin(serving));
                }
                (None, Transport::Tcp) => {
                    let (reader, writer) = stream.into_split();
                    shared.tasks.spawn(connection::serve(
                        shared.clone(),
                        reader,
                        writer,
                        id,
                        conn_stop,
                        permit,
                    ));
                }
                // Boxed: the TLS state is large and must not size every plain connection's task.
                (Some(acceptor), Transport::Tcp) => {
                    let serving = serve_tls(
                        shared.clone(),
                        stream,
                        acceptor.clone(),
                        id,
                        conn_stop,
                        permit,
                    );
                    shared.tasks.spawn(Box::pin(serving));
                }
            }
        }

        drop(listener);
        drop(ws_listener);
        tracing::info!(drain = ?shared.shutdown_drain, "shutting down: no longer accepting");
        stop.cancel();
        // Registered connections wait on their own signal, not the token
        // (see `Outbound::stop`); one registering meanwhile sees the token.
        shared
            .context
            .fanout
            .for_each_connection(|conn| conn.stop());
        shared.tasks.close();
        let deadline = shared.shutdown_drain + Duration::from_secs(2);
        if tokio::time::timeout(deadline, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the drain period");
        }
        let _ = stream_task.await;
        for task in health_tasks {
            let _ = task.await;
        }
        for task in flush_tasks {
            task.abort();
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Binds the TCP port with `LISTEN_BACKLOG`; needs a Tokio runtime. Tokio's
/// own `bind` uses a fixed 128, which a reconnect storm overflows (dropped
/// SYNs wait ~1 s for a retransmit). Linux silently caps the backlog at
/// `net.core.somaxconn`, so a larger setting is logged.
pub fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    bind_with_backlog(config.listen, config.listen_backlog)
        .with_context(|| format!("binding {}", config.listen))
}

fn bind_with_backlog(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};

    if let Some(max) = somaxconn()
        && u64::from(backlog) > max
    {
        tracing::warn!(
            listen_backlog = backlog,
            somaxconn = max,
            "LISTEN_BACKLOG exceeds net.core.somaxconn; the kernel uses {max} (raise it with sysctl)"
        );
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As Tokio's `bind` does: a restarted gateway can re-bind at once.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// The kernel's cap on listen backlogs, where it can be read (Linux).
fn somaxconn() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Binds the admin port synchronously, so `Gateway::build` can stay sync.
fn bind_admin(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Binds nothing itself: serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future,
) -> anyhow::Result<()> {
    Gateway::build(listener, config)?.run(shutdown).await
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp,
    WebSocket,
}

/// Accepts on `listener`, or never when there is none.
async fn accept_on(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The TLS handshake, within `AUTH_TIMEOUT`; `None` when it failed, timed
/// out, or the server stopped.
async fn accept_tls(
    shared: &Shared,
    stream: TcpStream,
    acceptor: TlsAcceptor,
    id: u64,
    stop: &CancellationToken,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake = tokio::time::timeout(shared.auth_timeout, acceptor.accept(stream));
    tokio::select! {
        () = stop.cancelled() => None,
        result = handshake => match result {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(err)) => {
                tracing::debug!(conn_id = id, %err, "TLS handshake failed");
                None
            }
            Err(_) => None,
        },
    }
}

async fn serve_tls(
    shared: Arc<Shared>,
    stream: TcpStream,
    acceptor: TlsAcceptor,
    id: u64,
    stop: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let Some(stream) = accept_tls(&shared, stream, acceptor, id, &stop).await else {
        return;
    };
    let (reader, writer) = tokio::io::split(stream);
    connection::serve(shared, reader, writer, id, stop, slot).await;
}

/// A connection to the WebSocket port: TLS when configured, then HTTP (the
/// page, or the upgrade), within `AUTH_TIMEOUT` together; then the same
/// connection loop as TCP, spawned as a task of its own so that the
/// handshake's state does not stay with an idle connection.
async fn serve_websocket(
    shared: Arc<Shared>,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    origins: Arc<Origins>,
    id: u64,
    stop: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    match tls {
        None => {
            let mut stream = stream;
            let Some(leftover) = upgrade(&shared, &mut stream, &origins, &stop).await else {
                return;
            };
            let (reader, writer) = stream.into_split();
            let tasks = shared.tasks.clone();
            tasks.spawn(connection::serve_websocket(
                shared, reader, leftover, writer, id, stop, slot,
            ));
        }
        Some(acceptor) => {
            let Some(mut stream) = accept_tls(&shared, stream, acceptor, id, &stop).await else {
                return;
            };
            let Some(leftover) = upgrade(&shared, &mut stream, &origins, &stop).await else {
                return;
            };
            let (reader, writer) = tokio::io::split(stream);
            let tasks = shared.tasks.clone();
            tasks.spawn(connection::serve_websocket(
                shared, reader, leftover, writer, id, stop, slot,
            ));
        }
    }
}

/// The HTTP part of a WebSocket connection; `Some` once upgraded.
async fn upgrade<S>(
    shared: &Shared,
    stream: &mut S,
    origins: &Origins,
    stop: &CancellationToken,
) -> Option<bytes::BytesMut>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let handshake = tokio::time::timeout(shared.auth_timeout, web::handshake(stream, origins));
    let result = tokio::select! {
        () = stop.cancelled() => return None,
        result = handshake => result,
    };
    match result {
        Ok(Ok(Handshake::Upgraded(leftover))) => Some(leftover),
        Ok(Ok(Handshake::Answered)) => None,
        Ok(Err(err)) => {
            tracing::debug!(%err, "WebSocket handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("no WebSocket handshake before the deadline");
            None
        }
    }
}

fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Errors that concern one incoming connection, not the listener.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading TLS certificates from {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub use mangahub_ops::shutdown_signal;
