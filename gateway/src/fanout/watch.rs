//! Holds the one `WatchProgress` stream of this gateway. When it breaks (the
//! service restarted, the network failed, or the gateway lagged and the
//! service ended the stream) it is re-opened with exponential backoff, and
//! every authenticated connection is told `RESYNC`: events of the gap are
//! lost, so clients re-read with `list_progress`.

use std::sync::Arc;
use std::time::Duration;

use mangahub_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Fanout;
use crate::backend::Client;
use crate::protocol::SystemCode;

const FIRST_RETRY: Duration = Duration::from_millis(100);

pub struct WatchSettings {
    pub open_timeout: Duration,
    pub retry_max: Duration,
}

pub async fn run(
    fanout: Arc<Fanout>,
    mut client: Client,
    settings: WatchSettings,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut delay = FIRST_RETRY;
    let mut opened_before = false;
    loop {
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = tokio::time::timeout(
                settings.open_timeout,
                client.watch_progress(pb::WatchProgressRequest::default()),
            ) => opened,
        };
        match opened {
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                ready.send_replace(true);
                delay = FIRST_RETRY;
                if opened_before {
                    metrics::counter!("gateway_watch_reconnects_total").increment(1);
                    tracing::info!("event stream re-established; asking clients to resync");
                    fanout.broadcast_system(
                        SystemCode::Resync,
                        "events may have been missed; re-read with list_progress",
                    );
                } else {
                    tracing::info!("event stream up; gateway ready");
                }
                opened_before = true;
                loop {
                    let message = tokio::select! {
                        () = stop.cancelled() => return,
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(event)) => fanout.deliver(&event),
                        Ok(None) => {
                            tracing::warn!("event stream ended");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(code = ?status.code(), message = status.message(), "event stream broke");
                            break;
                        }
                    }
                }
                ready.send_replace(false);
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), retry_in = ?delay, "cannot open the event stream");
            }
            Err(_) => {
                tracing::warn!(retry_in = ?delay, "opening the event stream timed out");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(settings.retry_max.max(FIRST_RETRY));
    }
}
