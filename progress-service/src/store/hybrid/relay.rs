//! Events across replicas: the write script appends every applied change to
//! the change-log stream (`codec::LOG_STREAM`, entry id = position), and
//! every replica - the writing one included - follows that stream with
//! `XREAD` into its own `EventBus`. A lost connection resumes after the last
//! entry read, so nothing is skipped. Only when entries after it are gone
//! (trimmed past the retention, or Redis lost its data) is the feed
//! interrupted, which ends every watch stream so callers resume or resync.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::codec;
use crate::events::EventBus;
use mangahub_ops::Backoff;

const READ_COUNT: usize = 1000;
const BLOCK: Duration = Duration::from_secs(2);

/// Where the relay stands: after `position` of the dataset `epoch`.
struct Place {
    position: i64,
    epoch: Option<String>,
}

/// Reads the stream's end before returning, so every change acknowledged
/// afterwards is relayed; then relays in the background.
pub async fn start(
    conn: ConnectionManager,
    events: EventBus,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut conn = conn;
    let (last, epoch) = stream_end(&mut conn).await?;
    let place = Place {
        position: last,
        epoch,
    };
    Ok(tokio::spawn(run(conn, events, stop, place)))
}

/// The last entry's position (0 when empty) and the dataset epoch.
async fn stream_end(conn: &mut ConnectionManager) -> redis::RedisResult<(i64, Option<String>)> {
    let (last, epoch): (StreamRangeReply, Option<String>) = redis::pipe()
        .atomic()
        .cmd("XREVRANGE")
        .arg(codec::LOG_STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .get(codec::LOG_EPOCH)
        .query_async(conn)
        .await?;
    let position = last
        .ids
        .first()
        .and_then(|e| codec::position_of(&e.id))
        .unwrap_or(0);
    Ok((position, epoch))
}

async fn run(
    mut conn: ConnectionManager,
    events: EventBus,
    stop: CancellationToken,
    mut place: Place,
) {
    let mut backoff = Backoff::default();
    let options = StreamReadOptions::default()
        .count(READ_COUNT)
        .block(BLOCK.as_millis() as usize);
    while !stop.is_cancelled() {
        // The oldest entry kept and the epoch, read just before the XREAD: if
        // the oldest kept is past our position, entries after it may be gone.
        let mut pipe = redis::pipe();
        codec::push_oldest_entry(&mut pipe);
        let read = async {
            pipe.get(codec::LOG_EPOCH)
                .xread_options(
                    &[codec::LOG_STREAM],
                    &[format!("{}-0", place.position)],
                    &options,
                )
                .query_async::<(StreamRangeReply, Option<String>, Option<StreamReadReply>)>(
                    &mut conn,
                )
                .await
        };
        let (oldest, epoch, reply) = tokio::select! {
            () = stop.cancelled() => return,
            read = read => match read {
                Ok(read) => {
                    backoff.reset();
                    read
                }
                Err(err) => {
                    metrics::counter!("progress_event_relay_disconnects_total").increment(1);
                    tracing::warn!(error = %err, "change-log relay cannot read Redis; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    continue;
                }
            },
        };
        let oldest = codec::first_position(&oldest);
        let trimmed = place.position > 0 && oldest.is_some_and(|o| o > place.position);
        let wiped = matches!((&place.epoch, &epoch), (Some(known), Some(now)) if known != now);
        if trimmed || wiped {
            tracing::error!(
                position = place.position,
                trimmed,
                wiped,
                "change-log entries may have been lost before they were relayed"
            );
            events.interrupt();
        }
        if epoch.is_some() {
            place.epoch = epoch;
        }
        if wiped {
            // A new dataset: read its stream from the start (its ids follow
            // Redis's clock, which may be behind the old position).
            place.position = 0;
            continue;
        }
        let entries = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids))
            .into_iter()
            .flatten();
        for entry in entries {
            let Some(position) = codec::position_of(&entry.id) else {
                tracing::warn!(id = entry.id, "change-log entry with a foreign id skipped");
                continue;
            };
            place.position = position;
            match codec::log_event(&entry) {
                Ok(event) => events.publish(event),
                Err(err) => tracing::warn!(error = %err, position, "undecodable change skipped"),
            }
        }
    }
}
