//! The publishing side of a fan-out bench, the same for every backend: a
//! [`Sink`] sends numbered messages to one topic and yields their
//! acknowledgements in order; a [`Publisher`] drives it through a
//! throughput phase (as fast as the subscribers keep up) or a latency phase
//! (a fixed rate, publish → last subscriber per message).

use std::time::{Duration, Instant};

use super::deliveries::{Arrivals, Counts};
use super::stats::Samples;

/// After the last publish, how long the messages may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the drain checks the subscribers' counts.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// One backend's way to publish to the subscribers' topic.
pub trait Sink {
    /// Sends message number `message` (numbers only grow) without waiting.
    async fn send(&mut self, message: i64) -> anyhow::Result<()>;
    /// The next acknowledgement: true when the message was published.
    async fn ack(&mut self) -> anyhow::Result<bool>;
}

/// How a throughput phase is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Unacknowledged messages in flight.
    pub inflight: usize,
    /// Most messages per subscriber published but not yet received.
    pub max_lag: u64,
}

#[derive(Debug, Default)]
pub struct Phase {
    pub elapsed: Duration,
    pub applied: u64,
    pub rejected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub disconnected: u64,
}

/// A latency phase's result.
pub struct LatencyPhase {
    pub sent: usize,
    /// Messages some subscriber never received (it disconnected, or the
    /// drain timed out).
    pub incomplete: usize,
    /// Publish → last subscriber, per complete message.
    pub last: Samples,
}

pub struct Publisher<S> {
    pub sink: S,
    /// The next message's number.
    next: i64,
}

impl<S: Sink> Publisher<S> {
    pub fn new(sink: S) -> Self {
        Self { sink, next: 0 }
    }

    async fn send(&mut self) -> anyhow::Result<i64> {
        self.next += 1;
        self.sink.send(self.next).await?;
        Ok(self.next)
    }

    /// Publishes for `duration` within `bounds`, then waits until every
    /// subscriber still connected has received every published message.
    pub async fn throughput(
        &mut self,
        counts: &Counts,
        duration: Duration,
        bounds: Bounds,
    ) -> anyhow::Result<Phase> {
        let closed_before = counts.closed();
        let subscribers = counts.len() as u64 - closed_before;
        let base = counts.received();
        // The bound holds for every subscriber, not on average: one that the
        // scheduler starves must not fall further behind than the others.
        let each_base = counts.snapshot();
        let mut slowest = Some(0);
        let (mut sent, mut inflight) = (0u64, 0usize);
        let mut phase = Phase::default();
        let start = Instant::now();
        let end = start + duration;
        loop {
            let now = Instant::now();
            let behind = |slowest: Option<u64>| {
                slowest.is_some_and(|got| sent.saturating_sub(got) >= bounds.max_lag)
            };
            if behind(slowest) {
                slowest = counts.slowest_since(&each_base);
            }
            if now < end && inflight < bounds.inflight.max(1) && !behind(slowest) {
                self.send().await?;
                sent += 1;
                inflight += 1;
            } else if inflight > 0 {
                match self.sink.ack().await? {
                    true => phase.applied += 1,
                    false => phase.rejected += 1,
                }
                inflight -= 1;
            } else if now >= end {
                break;
            } else {
                // Far enough ahead, nothing in flight: let the subscribers read.
                tokio::time::sleep(DRAIN_POLL).await;
            }
        }
        let expected = phase.applied * subscribers;
        let (mut last, mut last_change) = (counts.received() - base, Instant::now());
        while last < expected && last_change.elapsed() < DRAIN_TIMEOUT {
            tokio::time::sleep(DRAIN_POLL).await;
            let now = counts.received() - base;
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
            if counts.closed() - closed_before == subscribers {
                break;
            }
        }
        phase.elapsed = last_change - start;
        phase.delivered = last;
        phase.lost = expected.saturating_sub(last);
        phase.disconnected = counts.closed() - closed_before;
        Ok(phase)
    }

    /// Publishes `rate` messages per second for `duration` (each
    /// acknowledged before the next), then waits for the last subscriber.
    pub async fn latency(
        &mut self,
        counts: &Counts,
        arrivals: &Arrivals,
        rate: u32,
        duration: Duration,
    ) -> anyhow::Result<LatencyPhase> {
        let messages =
            ((f64::from(rate) * duration.as_secs_f64()) as usize).clamp(1, arrivals.capacity());
        let closed_before = counts.closed();
        arrivals.start(self.next + 1, counts.len() as u64 - closed_before);
        let mut ticks =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        for _ in 0..messages {
            ticks.tick().await;
            arrivals.sent(self.next + 1);
            self.send().await?;
            self.sink.ack().await?;
        }
        let (mut complete, mut last_change) = (arrivals.complete(messages), Instant::now());
        while complete < messages && last_change.elapsed() < DRAIN_TIMEOUT {
            tokio::time::sleep(DRAIN_POLL).await;
            let now = arrivals.complete(messages);
            if now != complete {
                (complete, last_change) = (now, Instant::now());
            }
            if counts.closed() != closed_before {
                // A subscriber left: the rest will never be complete.
                break;
            }
        }
        let last = arrivals.finish(messages);
        Ok(LatencyPhase {
            sent: messages,
            incomplete: messages - last.len(),
            last,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Publishes in memory: every subscriber but the last has each message
    /// as it is sent; the last is read by a slow task. Records the most any
    /// subscriber was behind when a message went out.
    struct MemorySink {
        counts: Arc<Counts>,
        sent: Arc<AtomicU64>,
        worst_lag: u64,
    }

    impl Sink for MemorySink {
        async fn send(&mut self, _message: i64) -> anyhow::Result<()> {
            let sent = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
            let slow = self.counts.len() - 1;
            for i in 0..slow {
                self.counts.set(i, sent, 1);
            }
            let got = self.counts.snapshot()[slow];
            self.worst_lag = self.worst_lag.max(sent - 1 - got.min(sent - 1));
            Ok(())
        }

        async fn ack(&mut self) -> anyhow::Result<bool> {
            Ok(true)
        }
    }

    #[tokio::test]
    async fn no_single_subscriber_falls_further_behind_than_the_bound() {
        const SUBSCRIBERS: usize = 10;
        const MAX_LAG: u64 = 50;
        let counts = Arc::new(Counts::new(SUBSCRIBERS));
        let sent = Arc::new(AtomicU64::new(0));
        let reader = {
            let (counts, sent) = (counts.clone(), sent.clone());
            tokio::spawn(async move {
                let mut got = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    got = sent.load(Ordering::Relaxed).min(got + 5);
                    counts.set(SUBSCRIBERS - 1, got, 1);
                }
            })
        };
        let mut publisher = Publisher::new(MemorySink {
            counts: counts.clone(),
            sent: sent.clone(),
            worst_lag: 0,
        });
        let phase = publisher
            .throughput(
                &counts,
                Duration::from_millis(300),
                Bounds {
                    inflight: 8,
                    max_lag: MAX_LAG,
                },
            )
            .await
            .expect("phase");
        reader.abort();
        assert!(phase.applied > MAX_LAG, "published only {}", phase.applied);
        assert_eq!(phase.lost, 0, "{phase:?}");
        let worst = publisher.sink.worst_lag;
        assert!(
            worst <= MAX_LAG,
            "the slow subscriber was {worst} messages behind, over the bound of {MAX_LAG}"
        );
    }
}
