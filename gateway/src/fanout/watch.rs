//! Holds the one `WatchProgress` stream of this gateway and remembers the
//! cursor of the last event it delivered. When the stream breaks (the
//! service restarted, the network failed, or the gateway lagged and the
//! service ended the stream) it is re-opened with exponential backoff and
//! `after` = that cursor, on another healthy replica when there is one (every
//! replica serves the same change log): the service replays what the gap
//! held, so clients notice nothing.
//!
//! `RESYNC` goes to every authenticated connection only when resuming is
//! impossible: the service refused the cursor (expired — older than its
//! retention, or from a wiped store), or clients connected before the first
//! stream opened (there is no cursor from before it). A live stream's first
//! cursor comes in its response header (`mangahub-cursor`), so a break before
//! the first event resumes too. The stream is then re-opened live, and `RESYNC`
//! is sent once it is up, so a client that re-reads misses nothing after it.

use std::sync::Arc;
use std::time::Duration;

use mangahub_ops::Backoff;
use mangahub_proto::WATCH_CURSOR_HEADER;
use mangahub_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};

use super::Fanout;
use crate::backend::Replicas;
use crate::protocol::SystemCode;

/// One stream per gateway: retrying it quickly costs the service little.
const FIRST_RETRY: Duration = Duration::from_millis(10);

const RESYNC_MESSAGE: &str =
    "events may have been missed; re-read with sync (without a cursor) or list_progress";

pub struct WatchSettings {
    pub open_timeout: Duration,
    pub retry_max: Duration,
}

/// How one stream (or the attempt to open it) ended.
enum Ended {
    /// The gateway is stopping.
    Stopped,
    /// Broken or unreachable: try again later from the same cursor.
    Broke,
    /// The service cannot resume from the cursor: start over live.
    CursorRefused,
}

pub async fn run(
    fanout: Arc<Fanout>,
    replicas: Arc<Replicas>,
    settings: WatchSettings,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(FIRST_RETRY, settings.retry_max.max(FIRST_RETRY));
    let mut opened_before = false;
    // The replica whose stream (or attempt) failed last: avoided next time.
    let mut failed: Option<usize> = None;
    // The cursor of the last event delivered; `None` until one arrives.
    let mut last: Option<String> = None;
    loop {
        let after = last.clone().unwrap_or_default();
        let request = pb::WatchProgressRequest {
            after: after.clone(),
            ..Default::default()
        };
        let (replica, mut client) = replicas.events(failed);
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = tokio::time::timeout(settings.open_timeout, client.watch_progress(request)) => opened,
        };
        let ended = match opened {
            Ok(Ok(response)) => {
                if last.is_none() {
                    // A live stream names the cursor it starts after, so a
                    // break before the first event still resumes.
                    last = response
                        .metadata()
                        .get(WATCH_CURSOR_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                }
                backoff.reset();
                failed = None;
                // Before reporting ready: a client that connects once the
                // gateway is ready has missed nothing and needs no RESYNC.
                announce(&fanout, opened_before, !after.is_empty());
                ready.send_replace(true);
                opened_before = true;
                let stream = response.into_inner();
                let ended = follow(&fanout, stream, &mut last, !after.is_empty(), &stop).await;
                ready.send_replace(false);
                ended
            }
            Ok(Err(status)) => {
                let url = replicas.replicas()[replica].url();
                tracing::warn!(replica = url, code = ?status.code(), message = status.message(), "cannot open the event stream");
                classify(&status, !after.is_empty())
            }
            Err(_) => {
                let url = replicas.replicas()[replica].url();
                tracing::warn!(replica = url, "opening the event stream timed out");
                Ended::Broke
            }
        };
        match ended {
            Ended::Stopped => return,
            Ended::CursorRefused if last.is_some() => {
                tracing::warn!("the event stream cannot resume from its cursor; re-opening live");
                last = None;
                continue;
            }
            Ended::CursorRefused | Ended::Broke => failed = Some(replica),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Logs a stream that just opened and tells every client to resync when it
/// is live with clients that may have missed changes: after an earlier
/// stream (no cursor to resume from), or as the first stream while clients
/// were already connected (e.g. the service was down when the gateway
/// started): what changed between their connecting and now reaches them
/// neither live nor by a replay.
fn announce(fanout: &Fanout, opened_before: bool, resumed: bool) {
    if !opened_before {
        tracing::info!("event stream up; gateway ready");
        if fanout.has_connections() {
            metrics::counter!("gateway_resyncs_total").increment(1);
            tracing::warn!(
                "clients connected before the first event stream opened; asking them to resync"
            );
            fanout.broadcast_system(SystemCode::Resync, RESYNC_MESSAGE);
        }
        return;
    }
    metrics::counter!("gateway_watch_reconnects_total").increment(1);
    if resumed {
        metrics::counter!("gateway_watch_resumes_total").increment(1);
        tracing::info!("event stream resumed from the last delivered event");
    } else {
        metrics::counter!("gateway_resyncs_total").increment(1);
        tracing::warn!("event stream re-established without a cursor; asking clients to resync");
        fanout.broadcast_system(SystemCode::Resync, RESYNC_MESSAGE);
    }
}

/// Delivers events until the stream ends, keeping `last` at the cursor of
/// the latest one. `resumed`: the stream was opened with a cursor.
async fn follow(
    fanout: &Fanout,
    mut stream: Streaming<pb::ProgressEvent>,
    last: &mut Option<String>,
    resumed: bool,
    stop: &CancellationToken,
) -> Ended {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            message = stream.message() => message,
        };
        match message {
            Ok(Some(event)) => {
                fanout.deliver(&event);
                if !event.cursor.is_empty() {
                    *last = Some(event.cursor);
                }
            }
            Ok(None) => {
                tracing::warn!("event stream ended");
                return Ended::Broke;
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "event stream broke");
                return classify(&status, resumed);
            }
        }
    }
}

/// `OUT_OF_RANGE` is the service's "expired cursor"; `INVALID_ARGUMENT` for
/// a request with a cursor means it does not know the cursor at all.
fn classify(status: &Status, had_cursor: bool) -> Ended {
    match status.code() {
        Code::OutOfRange => Ended::CursorRefused,
        Code::InvalidArgument if had_cursor => Ended::CursorRefused,
        _ => Ended::Broke,
    }
}
