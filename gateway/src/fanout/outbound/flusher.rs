//! Writes queued fan-out output. Connections are dealt to a few shards by id;
//! each shard has one task that takes the list of connections with new
//! output and writes each one's whole queue at once (`Outbound::flush`).
//!
//! Why not a writer task per connection: one event to N subscribers would
//! wake N tasks that each write one message, and a fast publisher's next
//! request would wait behind all of them. Here the fan-out only queues; while
//! a flusher walks its list, more events queue up and the next pass writes
//! them together, so under load each `write` carries many messages.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::Conn;

/// Connections a flusher writes before letting other tasks of its worker run:
/// one write costs ~10 us on loopback, so requests wait at most ~0.2 ms.
const PASS_SLICE: usize = 16;

pub struct Flushers {
    shards: Box<[Shard]>,
}

#[derive(Default)]
struct Shard {
    pending: Mutex<Vec<Conn>>,
    wake: Notify,
}

impl Flushers {
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
        })
    }

    /// One shard per worker thread of a default runtime.
    pub fn per_core() -> Arc<Self> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Has `conn`'s queue written by its shard's flusher.
    pub fn schedule(&self, conn: &Conn) {
        let shard = &self.shards[(conn.id() % self.shards.len() as u64) as usize];
        let mut pending = shard
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = pending.is_empty();
        pending.push(conn.clone());
        drop(pending);
        if first {
            shard.wake.notify_one();
        }
    }

    /// Starts one flusher task per shard; they run until aborted.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        (0..self.shards.len())
            .map(|i| tokio::spawn(flush_loop(self.clone(), i)))
            .collect()
    }
}

async fn flush_loop(flushers: Arc<Flushers>, index: usize) {
    let shard = &flushers.shards[index];
    let mut batch = Vec::new();
    loop {
        shard.wake.notified().await;
        loop {
            std::mem::swap(
                &mut batch,
                &mut *shard
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if batch.is_empty() {
                break;
            }
            for (i, conn) in batch.drain(..).enumerate() {
                conn.flush();
                if i % PASS_SLICE == PASS_SLICE - 1 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}
