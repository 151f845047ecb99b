//! Per-replica health: a `grpc.health.v1.Health/Watch` stream on a
//! connection of its own. The service answers its current status at
//! once and every change after (it turns `NOT_SERVING` when it starts to
//! drain, and then ends the stream); the stream breaks the moment the
//! process dies or the connection fails (`kill -9` resets it). An unhealthy replica is probed again with a
//! growing pause, so a restarted one rejoins by itself.

use std::sync::Arc;
use std::time::Duration;

use mangahub_ops::Backoff;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Replicas;

/// The service whose health the progress service reports.
const SERVICE: &str = "mangahub.progress.v1.ProgressService";
const FIRST_PROBE_RETRY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Deadline for opening the watch (connecting included).
    pub probe_timeout: Duration,
    /// Longest pause between probes of an unhealthy replica.
    pub retry_max: Duration,
}

pub async fn monitor(
    replicas: Arc<Replicas>,
    index: usize,
    settings: HealthSettings,
    stop: CancellationToken,
) {
    let replica = &replicas.list[index];
    let mut backoff = Backoff::new(FIRST_PROBE_RETRY, settings.retry_max.max(FIRST_PROBE_RETRY));
    loop {
        let mut client = HealthClient::new(replica.endpoint.connect_lazy());
        let request = HealthCheckRequest {
            service: SERVICE.to_owned(),
        };
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = tokio::time::timeout(settings.probe_timeout, client.watch(request)) => opened,
        };
        match opened {
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        // A call failed there: ask again (the first answer
                        // of a new watch is the current status).
                        () = replica.recheck.notified() => break,
                        message = stream.message() => match message {
                            Ok(Some(answer)) => {
                                let serving = answer.status == ServingStatus::Serving as i32;
                                replica.set_healthy(serving);
                                if serving {
                                    backoff.reset();
                                }
                            }
                            Ok(None) | Err(_) => {
                                replica.set_healthy(false);
                                break;
                            }
                        },
                    }
                }
            }
            Ok(Err(status)) => {
                tracing::debug!(replica = %replica.url, code = ?status.code(), message = status.message(), "health probe failed");
                replica.set_healthy(false);
            }
            Err(_) => {
                tracing::debug!(replica = %replica.url, "health probe timed out");
                replica.set_healthy(false);
            }
        }
        if !replica.is_healthy() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}
