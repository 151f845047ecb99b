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
        let lag_limit = bounds.max_lag.saturating_mul(subscribers);
        let mut received = 0;
        let (mut sent, mut inflight) = (0u64, 0usize);
        let mut phase = Phase::default();
        let start = Instant::now();
        let end = start + duration;
        loop {
            let now = Instant::now();
            let behind = |received: u64| (sent * subscribers).saturating_sub(received) >= lag_limit;
            if behind(received) {
                received = counts.received() - base;
            }
            if now < end && inflight < bounds.inflight.max(1) && !behind(received) {
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
