//! One connection's outbound side: a queue bounded in bytes that never makes
//! the producer wait, and the single writer task that drains it with as few
//! `write` calls as it can (vectored writes of everything queued).
//!
//! A producer that finds the queue full marks the connection a slow consumer:
//! what is still queued is dropped, `SLOW_CONSUMER` is queued instead, and the
//! connection is told to stop. The writer gets a short grace to deliver it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::{ErrorCode, ErrorReply, ServerMessage};

/// How long a closing connection may take to flush what is queued.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    /// Flush what is queued, then close.
    Closing,
    /// Dropped: slow consumer or a failed write.
    Kicked,
}

struct State {
    queue: VecDeque<Bytes>,
    /// Queued plus being written.
    bytes: usize,
    mode: Mode,
}

/// The handle producers hold for one connection.
pub struct Outbound {
    id: u64,
    capacity: usize,
    /// Cancelled at server shutdown (parent) or when this connection is kicked.
    stop: CancellationToken,
    state: Mutex<State>,
    wake: Notify,
    /// The last fan-out event delivered here, so each event arrives at most once.
    last_event: AtomicU64,
}

impl Outbound {
    pub fn new(id: u64, capacity: usize, stop: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            id,
            capacity,
            stop,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                mode: Mode::Open,
            }),
            wake: Notify::new(),
            last_event: AtomicU64::new(0),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `event` delivered; false when it already was.
    pub fn first_delivery(&self, event: u64) -> bool {
        self.last_event.swap(event, Ordering::Relaxed) != event
    }

    /// Queues one line without waiting; false when it was not queued.
    pub fn push(&self, line: Bytes) -> bool {
        self.push_inner(line, true)
    }

    /// Queues a small control line (e.g. `system`) even past the byte limit.
    pub fn push_control(&self, line: Bytes) -> bool {
        self.push_inner(line, false)
    }

    fn push_inner(&self, line: Bytes, bounded: bool) -> bool {
        if line.is_empty() {
            return true;
        }
        let mut state = self.lock();
        if state.mode != Mode::Open {
            return false;
        }
        if bounded && state.bytes + line.len() > self.capacity {
            state.mode = Mode::Kicked;
            state.queue.clear();
            let reply = ErrorReply::new(
                ErrorCode::SlowConsumer,
                "outbound queue full: the client does not read fast enough",
            );
            state
                .queue
                .push_back(ServerMessage::error(None, &reply).to_line());
            drop(state);
            metrics::counter!("gateway_slow_consumer_disconnects_total").increment(1);
            tracing::info!(conn_id = self.id, "slow consumer disconnected");
            self.wake.notify_one();
            self.stop.cancel();
            return false;
        }
        state.bytes += line.len();
        state.queue.push_back(line);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Flush what is queued, then close the connection.
    pub fn close(&self) {
        let mut state = self.lock();
        if state.mode == Mode::Open {
            state.mode = Mode::Closing;
        }
        drop(state);
        self.wake.notify_one();
    }

    /// True when the connection was dropped (slow consumer or write failure).
    pub fn is_kicked(&self) -> bool {
        self.lock().mode == Mode::Kicked
    }

    fn kick(&self) {
        let mut state = self.lock();
        state.mode = Mode::Kicked;
        state.queue.clear();
        drop(state);
        self.stop.cancel();
    }

    /// Next batch to write; `Err` when the writer should finish.
    fn take(&self) -> Result<Option<Batch>, ()> {
        let mut state = self.lock();
        if !state.queue.is_empty() {
            let items = std::mem::take(&mut state.queue);
            let remaining = items.iter().map(Bytes::len).sum();
            return Ok(Some(Batch { items, remaining }));
        }
        match state.mode {
            Mode::Open => Ok(None),
            Mode::Closing | Mode::Kicked => Err(()),
        }
    }

    fn written(&self, bytes: usize) {
        let mut state = self.lock();
        state.bytes = state.bytes.saturating_sub(bytes);
    }

    fn mode(&self) -> Mode {
        self.lock().mode
    }
}

/// The writer task of one connection.
pub async fn write_loop<W: AsyncWrite + Unpin>(out: Arc<Outbound>, mut writer: W) {
    loop {
        let mut batch = match out.take() {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                out.wake.notified().await;
                continue;
            }
            Err(()) => break,
        };
        let bytes = batch.remaining;
        let written = {
            let write = writer.write_all_buf(&mut batch);
            tokio::pin!(write);
            if out.mode() != Mode::Open {
                matches!(
                    tokio::time::timeout(CLOSE_GRACE, &mut write).await,
                    Ok(Ok(()))
                )
            } else {
                loop {
                    tokio::select! {
                        biased;
                        result = &mut write => break result.is_ok(),
                        () = out.wake.notified() => {
                            if out.mode() != Mode::Open {
                                break matches!(tokio::time::timeout(CLOSE_GRACE, &mut write).await, Ok(Ok(())));
                            }
                        }
                    }
                }
            }
        };
        if !written {
            out.kick();
            break;
        }
        out.written(bytes);
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, writer.shutdown()).await;
}

/// Everything queued at one moment, written with vectored writes.
struct Batch {
    items: VecDeque<Bytes>,
    remaining: usize,
}

impl Buf for Batch {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.items.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        self.remaining = self.remaining.saturating_sub(cnt);
        while cnt > 0 {
            let Some(front) = self.items.front_mut() else {
                return;
            };
            if cnt >= front.len() {
                cnt -= front.len();
                self.items.pop_front();
            } else {
                front.advance(cnt);
                cnt = 0;
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, item) in dst.iter_mut().zip(self.items.iter()) {
            *slot = IoSlice::new(item);
            n += 1;
        }
        n
    }
}
