//! The gRPC side of the gateway: one [`Replica`] per `PROGRESS_URL`, each with
//! its own lazily connected channels (calls, and a separate one for the
//! event stream), keep-alive, the `SERVICE_TOKEN` on every call, and a health
//! monitor (`health.rs`). Calls go round-robin to the healthy replicas only.
//!
//! Why not tonic's `Channel::balance_list`: it keeps a dead endpoint in
//! rotation, and it hides which replica a call went to, so a failed call can
//! be neither retried on *another* replica nor counted per replica.
//!
//! Retries (`Retry`): a call that never reached a replica (the connection
//! could not be made) is retried once on another, whatever it was — nothing
//! was applied. A read (`get`, `list`, `sync`) is also retried on another
//! replica when the first answered "unavailable" or broke mid-call; a write
//! that may have been applied is not, and its caller gets `UNAVAILABLE`.

mod health;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use tonic::{Code, Status};

use crate::config::Config;

pub use health::HealthSettings;

pub type Client = ProgressServiceClient<InterceptedService<Channel, ServiceAuth>>;

/// Adds `authorization: Bearer <SERVICE_TOKEN>` when a token is configured.
#[derive(Clone)]
pub struct ServiceAuth(Option<MetadataValue<Ascii>>);

impl Interceptor for ServiceAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// One progress-service replica as this gateway sees it.
pub struct Replica {
    url: Arc<str>,
    /// Each health watch gets a fresh connection from it (a failed connect
    /// leaves its error in a tonic channel for the next caller, which must
    /// not be a request's).
    endpoint: Endpoint,
    calls: Client,
    /// The event stream gets its own HTTP/2 connection, so its traffic never
    /// shares a connection with request/response calls.
    events: Client,
    healthy: AtomicBool,
    /// Wakes the health monitor to look again (a call saw the replica fail).
    recheck: Notify,
}

impl Replica {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            if healthy {
                tracing::info!(replica = %self.url, "progress service replica healthy");
            } else {
                tracing::warn!(replica = %self.url, "progress service replica unhealthy");
            }
        }
        let value = if healthy { 1.0 } else { 0.0 };
        metrics::gauge!("gateway_replica_healthy", "replica" => self.url.clone()).set(value);
    }

    /// A call found the replica unreachable: stop sending it traffic until
    /// its health monitor sees it serving again.
    fn failed(&self) {
        self.set_healthy(false);
        self.recheck.notify_one();
    }
}

/// Which failures of a call are retried on another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Writes: only when the call never reached a replica.
    NotSent,
    /// Reads: also when the replica was unavailable or the call broke.
    Idempotent,
}

/// Every configured replica; picks a healthy one per call.
pub struct Replicas {
    list: Box<[Replica]>,
    next: AtomicUsize,
}

impl Replicas {
    /// Prepares a lazily connected replica per `PROGRESS_URL`; connects nothing.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let auth = ServiceAuth(service_token(config)?);
        let list = config
            .progress_url
            .iter()
            .map(|url| {
                let endpoint = endpoint(config, url)?;
                let connect = |auth: &ServiceAuth| {
                    ProgressServiceClient::with_interceptor(endpoint.connect_lazy(), auth.clone())
                };
                let replica = Replica {
                    url: url.trim().into(),
                    calls: connect(&auth),
                    events: connect(&auth),
                    endpoint,
                    // Optimistic until the first health answer: a fresh
                    // gateway sends its first calls at once.
                    healthy: AtomicBool::new(true),
                    recheck: Notify::new(),
                };
                Ok(replica)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!list.is_empty(), "PROGRESS_URL is empty");
        Ok(Self {
            list: list.into_boxed_slice(),
            next: AtomicUsize::new(0),
        })
    }

    pub fn replicas(&self) -> &[Replica] {
        &self.list
    }

    /// Starts one health monitor per replica; they end with `stop`.
    pub fn monitor(
        self: &Arc<Self>,
        settings: HealthSettings,
        stop: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.list.len())
            .map(|index| {
                tokio::spawn(health::monitor(
                    self.clone(),
                    index,
                    settings.clone(),
                    stop.clone(),
                ))
            })
            .collect()
    }

    /// The next healthy replica in turn, other than `avoid` when another is
    /// healthy; when none is, the next one anyway (its health may be stale,
    /// and the caller then gets the real error).
    pub fn pick(&self, avoid: Option<usize>) -> usize {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidate = |i: usize| (start + i) % n;
        (0..n)
            .map(candidate)
            .find(|&i| Some(i) != avoid && self.list[i].is_healthy())
            .or_else(|| (0..n).map(candidate).find(|&i| Some(i) != avoid))
            .unwrap_or(start % n)
    }

    /// A client for the event stream, on a healthy replica other than
    /// `avoid` when there is one.
    pub fn events(&self, avoid: Option<usize>) -> (usize, Client) {
        let index = self.pick(avoid);
        (index, self.list[index].events.clone())
    }

    /// Runs `call` on a healthy replica and, when `retry` allows it, once
    /// more on another. `request` is cloned only when there is another
    /// replica to retry on.
    pub async fn call<Req, T, F, Fut>(
        &self,
        method: &'static str,
        retry: Retry,
        request: Req,
        call: F,
    ) -> Result<T, Status>
    where
        Req: Clone,
        F: Fn(Client, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let first = self.pick(None);
        let spare = (self.list.len() > 1).then(|| request.clone());
        let result = self.attempt(first, method, request, &call).await;
        let (Err(status), Some(request)) = (&result, spare) else {
            return result;
        };
        if !retryable(status, retry) {
            return result;
        }
        let second = self.pick(Some(first));
        if second == first {
            return result;
        }
        tracing::debug!(method, from = %self.list[first].url, to = %self.list[second].url, "retrying on another replica");
        metrics::counter!("gateway_replica_retries_total", "method" => method).increment(1);
        self.attempt(second, method, request, &call).await
    }

    async fn attempt<Req, T, F, Fut>(
        &self,
        index: usize,
        method: &'static str,
        request: Req,
        call: &F,
    ) -> Result<T, Status>
    where
        F: Fn(Client, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let replica = &self.list[index];
        let result = call(replica.calls.clone(), request).await;
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => {
                if unreachable(status) {
                    replica.failed();
                }
                status.code()
            }
        };
        metrics::counter!(
            "gateway_replica_calls_total",
            "replica" => replica.url.clone(),
            "method" => method,
            "code" => code_label(code),
        )
        .increment(1);
        result.map(tonic::Response::into_inner)
    }
}

/// The replica never processed the call: the connection could not be made,
/// the connection closed before the call was written (hyper hands such a
/// request back as canceled), or the replica refused the stream (HTTP/2
/// `REFUSED_STREAM`, or a GOAWAY that excluded it: a draining server takes no
/// new calls).
pub fn not_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // A graceful GOAWAY (NO_ERROR) fails only the streams it
            // excluded; one with an error fails every stream, processed or not.
            return match h2.reason() {
                Some(h2::Reason::REFUSED_STREAM) => true,
                Some(h2::Reason::NO_ERROR) => h2.is_go_away() && h2.is_remote(),
                _ => false,
            };
        }
        source = err.source();
    }
    false
}

/// Made on this side from a broken connection, not answered by the service.
pub fn broken(status: &Status) -> bool {
    matches!(status.code(), Code::Unknown | Code::Internal)
        && std::error::Error::source(status).is_some()
}

/// The replica (or the path to it) is down, as opposed to a replica that
/// answered with an error of its own.
fn unreachable(status: &Status) -> bool {
    not_sent(status) || broken(status)
}

fn retryable(status: &Status, retry: Retry) -> bool {
    match retry {
        Retry::NotSent => not_sent(status),
        Retry::Idempotent => {
            unreachable(status) || matches!(status.code(), Code::Unavailable | Code::Cancelled)
        }
    }
}

pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::NotFound => "NOT_FOUND",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Unauthenticated => "UNAUTHENTICATED",
        _ => "OTHER",
    }
}

fn endpoint(config: &Config, url: &str) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.trim().to_owned())
        .with_context(|| format!("invalid PROGRESS_URL {url:?}"))?;
    Ok(endpoint
        .connect_timeout(config.grpc_connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

fn service_token(config: &Config) -> anyhow::Result<Option<MetadataValue<Ascii>>> {
    let Some(token) = &config.service_token else {
        return Ok(None);
    };
    let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.expose())
        .parse()
        .context("SERVICE_TOKEN must be printable ASCII")?;
    value.set_sensitive(true);
    Ok(Some(value))
}
