//! What a fan-out bench's subscribers record, each in its own task, for the
//! publisher to read: how many messages each has received and whether it is
//! still connected ([`Counts`]), and when the last of them received each
//! message of a latency phase ([`Arrivals`]). Shared by every backend.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::stats::Samples;

/// Each subscriber's count of messages, and whether it is still connected,
/// written by its task alone and summed by the publisher; and the size of
/// a message as the first subscriber received it.
pub struct Counts {
    slots: Vec<AtomicU64>,
    message_bytes: AtomicUsize,
}

/// Slots per subscriber: its count and its closed flag, then padding to 64
/// bytes, so that no two subscribers' tasks write to one cache line.
const STRIDE: usize = 8;

impl Counts {
    pub fn new(subscribers: usize) -> Self {
        Self {
            slots: (0..subscribers * STRIDE)
                .map(|_| AtomicU64::new(0))
                .collect(),
            message_bytes: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len() / STRIDE
    }

    /// Subscriber `i` has received `received` messages, the last `bytes` long.
    pub fn set(&self, i: usize, received: u64, bytes: usize) {
        self.slots[i * STRIDE].store(received, Ordering::Relaxed);
        if i == 0 {
            self.message_bytes.store(bytes, Ordering::Relaxed);
        }
    }

    /// The size of the last message the first subscriber received.
    pub fn message_bytes(&self) -> usize {
        self.message_bytes.load(Ordering::Relaxed)
    }

    pub fn close(&self, i: usize) {
        self.slots[i * STRIDE + 1].store(1, Ordering::Relaxed);
    }

    pub fn received(&self) -> u64 {
        self.slots
            .iter()
            .step_by(STRIDE)
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Each subscriber's count now: the base a phase measures from.
    pub fn snapshot(&self) -> Vec<u64> {
        self.slots
            .iter()
            .step_by(STRIDE)
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The fewest messages any subscriber still connected has received since
    /// `base` (a [`Counts::snapshot`]); `None` when none is connected.
    pub fn slowest_since(&self, base: &[u64]) -> Option<u64> {
        self.slots
            .chunks_exact(STRIDE)
            .zip(base)
            .filter(|(slot, _)| slot[1].load(Ordering::Relaxed) == 0)
            .map(|(slot, base)| slot[0].load(Ordering::Relaxed).saturating_sub(*base))
            .min()
    }

    pub fn closed(&self) -> u64 {
        self.slots
            .iter()
            .skip(1)
            .step_by(STRIDE)
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Per message of a latency phase (numbered from `first`): when it was
/// published, how many subscribers have yet to receive it, and when the
/// last one did. One clock, this process's, for both ends.
pub struct Arrivals {
    clock: Instant,
    /// The phase's first message number; `i64::MAX` outside a phase.
    first: AtomicI64,
    remaining: Vec<AtomicU32>,
    sent_ns: Vec<AtomicU64>,
    last_ns: Vec<AtomicU64>,
}

impl Arrivals {
    /// Room for `messages` per phase.
    pub fn new(messages: usize) -> Self {
        let slots = || (0..messages).map(|_| AtomicU64::new(0)).collect();
        Self {
            clock: Instant::now(),
            first: AtomicI64::new(i64::MAX),
            remaining: (0..messages).map(|_| AtomicU32::new(0)).collect(),
            sent_ns: slots(),
            last_ns: slots(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.remaining.len()
    }

    /// Whether a phase is on: subscribers then say which message arrived.
    pub fn tracking(&self) -> bool {
        self.first.load(Ordering::Relaxed) != i64::MAX
    }

    /// Starts a phase whose messages are numbered from `first`, each to be
    /// received by `subscribers`.
    pub fn start(&self, first: i64, subscribers: u64) {
        let subscribers = u32::try_from(subscribers).unwrap_or(u32::MAX);
        for i in 0..self.capacity() {
            self.remaining[i].store(subscribers, Ordering::Relaxed);
            self.sent_ns[i].store(0, Ordering::Relaxed);
            self.last_ns[i].store(0, Ordering::Relaxed);
        }
        self.first.store(first, Ordering::Release);
    }

    fn slot(&self, message: i64) -> Option<usize> {
        let first = self.first.load(Ordering::Acquire);
        let index = usize::try_from(message.checked_sub(first)?).ok()?;
        (index < self.capacity()).then_some(index)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The publisher is about to send `message`.
    pub fn sent(&self, message: i64) {
        if let Some(i) = self.slot(message) {
            self.sent_ns[i].store(self.now_ns(), Ordering::Relaxed);
        }
    }

    /// A subscriber received `message`.
    pub fn arrived(&self, message: i64) {
        if let Some(i) = self.slot(message)
            && self.remaining[i].fetch_sub(1, Ordering::AcqRel) == 1
        {
            self.last_ns[i].store(self.now_ns(), Ordering::Release);
        }
    }

    /// Messages sent in the phase that every subscriber has received.
    pub fn complete(&self, sent: usize) -> usize {
        self.last_ns[..sent.min(self.capacity())]
            .iter()
            .filter(|t| t.load(Ordering::Acquire) != 0)
            .count()
    }

    /// Ends the phase: publish → last subscriber, per complete message.
    pub fn finish(&self, sent: usize) -> Samples {
        self.first.store(i64::MAX, Ordering::Release);
        let mut samples = Samples::default();
        for i in 0..sent.min(self.capacity()) {
            let last = self.last_ns[i].load(Ordering::Acquire);
            if last != 0 {
                let sent = self.sent_ns[i].load(Ordering::Relaxed);
                samples.record(Duration::from_nanos(last.saturating_sub(sent)));
            }
        }
        samples
    }
}
