//! Events across replicas: every applied change is published on Redis Pub/Sub
//! by the write script itself, and every replica - the writing one included -
//! relays that channel into its own `EventBus`. So each watcher sees each
//! change once, in the order Redis applied them.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::codec::{self, WireChange};
use crate::events::EventBus;

/// Subscribes before returning, so no change acknowledged afterwards is missed,
/// then relays in the background, resubscribing after connection loss.
pub async fn start(
    client: redis::Client,
    events: EventBus,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let first = subscribe(&client).await?;
    Ok(tokio::spawn(run(client, events, stop, first)))
}

async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(codec::EVENTS_CHANNEL).await?;
    Ok(pubsub)
}

async fn run(
    client: redis::Client,
    events: EventBus,
    stop: CancellationToken,
    first: redis::aio::PubSub,
) {
    let mut pubsub = Some(first);
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let current = match pubsub.take() {
            Some(p) => p,
            None => match subscribe(&client).await {
                Ok(p) => {
                    tracing::info!("event relay resubscribed");
                    backoff = Duration::from_millis(100);
                    p
                }
                Err(err) => {
                    tracing::warn!(error = %err, "event relay cannot subscribe; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let mut messages = current.into_on_message();
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                msg = messages.next() => msg,
            };
            let Some(msg) = msg else {
                // Changes published while we were away are not replayed:
                // watchers re-read with `list` after a reconnect of their own.
                metrics::counter!("progress_event_relay_disconnects_total").increment(1);
                tracing::warn!("event relay lost its Redis subscription");
                break;
            };
            match WireChange::decode(msg.get_payload_bytes()).and_then(WireChange::into_event) {
                Ok(event) => events.publish(event),
                Err(err) => tracing::warn!(error = %err, "undecodable change event skipped"),
            }
        }
    }
}
