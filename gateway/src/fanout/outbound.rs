//! One connection's outbound side: a queue bounded in bytes that never makes
//! the producer wait, and the connection's write half kept beside it.
//!
//! There is no writer task per connection. Whoever queues output makes sure
//! it gets written: the connection's own task writes its replies at once
//! (`flush`), fan-out events are written by the flusher of the connection's
//! shard (see `flusher`), which writes everything queued per connection in
//! one vectored write. Only when the socket is full does a short-lived drain
//! task take the write half and wait for the socket to become writable; it
//! hands the write half back once the queue is empty. So a connection writes
//! at most once at a time, in queue order, and an idle connection holds no
//! writer task at all.
//!
//! The queue holds wire bytes: what producers hand it (JSON lines ending in
//! `\n`, or a fan-out `Outgoing`) is put in the connection's `Framing` on the
//! way in: as it is on TCP, one WebSocket text frame each on a WebSocket.
//!
//! A producer that finds the queue full marks the connection a slow consumer:
//! what is still queued is dropped, `SLOW_CONSUMER` is queued instead, and the
//! connection is told to stop. `finish` gives it a short grace to deliver it.

pub mod flusher;
pub mod framing;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::{ErrorCode, ErrorReply, ServerMessage};
use flusher::Flushers;
pub use framing::{CloseCode, Framing, Outgoing};

/// How long a closing connection may take to flush what is queued.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Slices handed to one vectored write.
const MAX_SLICES: usize = 64;

/// A connection's write half: a plain TCP one inline, any other boxed.
pub enum Writer {
    /// Inline: boxing it would be one more allocation per connection.
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Boxed(Pin<Box<dyn AsyncWrite + Send>>),
}

/// A write half the gateway serves: TCP's is kept inline, the others
/// (TLS, in-memory streams in tests) boxed.
pub trait IntoWriter: AsyncWrite + Send + 'static + Sized {
    fn into_writer(self) -> Writer {
        Writer::Boxed(Box::pin(self))
    }
}

impl IntoWriter for tokio::net::tcp::OwnedWriteHalf {
    fn into_writer(self) -> Writer {
        Writer::Tcp(self)
    }
}

impl<T: AsyncRead + AsyncWrite + Send + 'static> IntoWriter for tokio::io::WriteHalf<T> {}
impl IntoWriter for tokio::io::DuplexStream {}
impl IntoWriter for tokio::io::Sink {}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Boxed(w) => w.as_mut().poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Writer::Boxed(w) => w.as_mut().poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Writer::Tcp(w) => w.is_write_vectored(),
            Writer::Boxed(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_flush(cx),
            Writer::Boxed(w) => w.as_mut().poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Boxed(w) => w.as_mut().poll_shutdown(cx),
        }
    }
}

/// A connection as the rest of the gateway holds it: its outbound queue.
pub type Conn = Arc<Outbound>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    /// Flush what is queued, then close.
    Closing,
    /// Dropped: slow consumer, a failed write, or idle too long.
    Kicked,
}

struct State {
    queue: VecDeque<Bytes>,
    /// Queued plus being written.
    bytes: usize,
    mode: Mode,
    /// The write half; `None` while someone is writing with it.
    writer: Option<Writer>,
    /// Waiting in a flusher's list.
    scheduled: bool,
    /// `finish` waits for the write half (see `Outbound::hand_back`).
    writer_wanted: bool,
    /// Why the connection ends, for a WebSocket's close frame (the first
    /// reason given wins).
    close: Option<CloseCode>,
}

/// The handle producers hold for one connection.
pub struct Outbound {
    id: u64,
    /// `OUTBOUND_QUEUE_BYTES` (a u32 setting: every connection holds it).
    capacity: u32,
    framing: Framing,
    /// The server's own token (a clone, not a child: a child token is one
    /// more allocation per connection). Authenticated connections hear of
    /// shutdown through `stop`, which the server calls on each of them.
    server_stop: CancellationToken,
    /// Set when the connection must stop: kicked, or told by the server.
    stopping: AtomicBool,
    /// Signalled (to all waiters) when `stopping` is set, and when the write
    /// half comes back while `finish` waits for it. One `Notify` for both:
    /// every waiter checks its own condition again, and each is 32 bytes
    /// every connection pays.
    signal: Notify,
    state: Mutex<State>,
    flushers: Arc<Flushers>,
    /// The last fan-out event delivered here, so each event arrives at most once.
    last_event: AtomicU64,
    /// When the client last sent a line (`clock_ms`), for the idle sweeper.
    last_seen: AtomicU64,
    /// The connection's tracing span. Kept here rather than around the
    /// connection's future: the idle wait logs nothing, so only the boxed
    /// parts that do are instrumented with it, and every idle task is 40
    /// bytes smaller. Boxed, and only when enabled (at debug level): a
    /// disabled span would still take 40 bytes here.
    span: Option<Box<tracing::Span>>,
}

pin_project_lite::pin_project! {
    /// `Outbound::stopped`: hand-written, since an `async fn` doing the same
    /// keeps 32 bytes more in every idle connection's task.
    pub struct Stopped<'a> {
        out: &'a Outbound,
        #[pin]
        signalled: tokio::sync::futures::Notified<'a>,
    }
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            if this.out.is_stopping() {
                return Poll::Ready(());
            }
            // Polling registers the waiter; the flag is checked again after
            // that, so a `stop` in between is never missed.
            if this.signalled.as_mut().poll(cx).is_pending() {
                return if this.out.is_stopping() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }
            this.signalled.set(this.out.signal.notified());
        }
    }
}

/// Milliseconds on the gateway's clock (Tokio's, so paused time applies).
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// How far a write without waiting got.
enum Progress {
    Done,
    /// The socket is full; the rest needs a wait.
    Blocked,
    Failed,
}

impl Outbound {
    pub fn new(
        id: u64,
        capacity: u32,
        framing: Framing,
        server_stop: CancellationToken,
        writer: Writer,
        flushers: Arc<Flushers>,
        span: tracing::Span,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            capacity,
            framing,
            server_stop,
            stopping: AtomicBool::new(false),
            signal: Notify::new(),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                mode: Mode::Open,
                writer: Some(writer),
                scheduled: false,
                writer_wanted: false,
                close: None,
            }),
            flushers,
            last_event: AtomicU64::new(0),
            last_seen: AtomicU64::new(clock_ms()),
            span: (!span.is_disabled()).then(|| Box::new(span)),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The connection's tracing span (a disabled one when its level is off).
    pub fn span(&self) -> tracing::Span {
        self.span
            .as_deref()
            .map_or_else(tracing::Span::none, tracing::Span::clone)
    }

    /// True once the server shuts down, whether or not this connection
    /// has been told yet.
    pub fn server_stopping(&self) -> bool {
        self.server_stop.is_cancelled()
    }

    /// Resolves when the server shuts down, for a connection that is not yet
    /// registered (so `stop` does not reach it) or has just registered.
    pub async fn server_stopped(&self) {
        self.server_stop.cancelled().await;
    }

    /// Tells the connection to stop (server shutdown): it says `SHUTDOWN`
    /// and closes. Idempotent.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.signal.notify_waiters();
    }

    /// True once the connection was kicked or told to stop.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Resolves once the connection was kicked or told to stop. As small as
    /// one `Notified`: an idle connection's task waits on it.
    pub fn stopped(&self) -> Stopped<'_> {
        Stopped {
            out: self,
            signalled: self.signal.notified(),
        }
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

    /// Queues one fan-out message for this connection's flusher, without
    /// waiting; false when it was not queued.
    pub fn push(self: &Arc<Self>, message: &Outgoing) -> bool {
        self.enqueue(self.framing.wire(message), true, true)
    }

    /// Queues a small control message (e.g. `system`) even past the byte limit.
    pub fn push_control(self: &Arc<Self>, message: &Outgoing) -> bool {
        self.enqueue(self.framing.wire(message), false, true)
    }

    /// Answers a WebSocket ping (with its payload) at once. Counted against
    /// the queue's limit: a client that pings without reading is a slow
    /// consumer like any other.
    pub fn pong(self: &Arc<Self>, payload: &[u8]) {
        self.enqueue(framing::pong(payload), true, false);
        self.flush();
    }

    /// Records why the connection ends, for the close frame `finish` sends
    /// on a WebSocket; the first reason given wins.
    pub fn close_with(&self, code: CloseCode) {
        self.lock().close.get_or_insert(code);
    }

    /// Queues a reply and writes it right away: for the connection's own task.
    pub fn reply(self: &Arc<Self>, line: Bytes) -> bool {
        let queued = self.enqueue(self.framing.encode(line), true, false);
        self.flush();
        queued
    }

    fn enqueue(self: &Arc<Self>, item: Bytes, bounded: bool, via_flusher: bool) -> bool {
        if item.is_empty() {
            return true;
        }
        let mut state = self.lock();
        if state.mode != Mode::Open {
            return false;
        }
        if bounded && state.bytes + item.len() > self.capacity as usize {
            state.mode = Mode::Kicked;
            state.queue.clear();
            state.close.get_or_insert(CloseCode::SLOW_CONSUMER);
            let reply = ErrorReply::new(
                ErrorCode::SlowConsumer,
                "outbound queue full: the client does not read fast enough",
            );
            let notice = self
                .framing
                .encode(ServerMessage::error(None, &reply).to_line());
            state.queue.push_back(notice);
            drop(state);
            metrics::counter!("gateway_slow_consumer_disconnects_total").increment(1);
            tracing::info!(conn_id = self.id, "slow consumer disconnected");
            self.stop();
            return false;
        }
        state.bytes += item.len();
        state.queue.push_back(item);
        let schedule = via_flusher && !state.scheduled && state.writer.is_some();
        state.scheduled |= schedule;
        drop(state);
        if schedule {
            self.flushers.schedule(self);
        }
        true
    }

    /// The client sent something.
    pub fn touch(&self) {
        self.last_seen.store(clock_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the client last sent something.
    pub fn idle_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_seen.load(Ordering::Relaxed))
    }

    /// Closes the connection without a message (idle timeout).
    pub fn expire(&self) {
        tracing::debug!(conn_id = self.id, "idle timeout");
        self.close_with(CloseCode::IDLE);
        self.kick();
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
        self.stop();
    }

    /// Writes what is queued now, as far as the socket takes it without
    /// waiting; a full socket hands the rest to a drain task. Does nothing
    /// while someone else holds the write half (they write the queue too).
    pub fn flush(self: &Arc<Self>) {
        let (mut writer, mut batch) = {
            let mut state = self.lock();
            state.scheduled = false;
            if state.mode != Mode::Open || state.queue.is_empty() {
                return;
            }
            let Some(writer) = state.writer.take() else {
                return;
            };
            (writer, Batch::new(std::mem::take(&mut state.queue)))
        };
        loop {
            match write_now(&mut writer, &mut batch) {
                Progress::Done => {}
                Progress::Blocked => {
                    tokio::spawn(drain(self.clone(), writer, batch));
                    return;
                }
                Progress::Failed => {
                    self.kick();
                    return;
                }
            }
            match self.after_write(writer, &batch) {
                Some((next_writer, next)) => (writer, batch) = (next_writer, next),
                None => return,
            }
        }
    }

    /// After `written` went out: the next batch to write with the same write
    /// half, or `None` when there is nothing more (or the connection is no
    /// longer open) and the write half has been handed back.
    fn after_write(&self, writer: Writer, written: &Batch) -> Option<(Writer, Batch)> {
        let mut state = self.lock();
        state.bytes = state.bytes.saturating_sub(written.total);
        if state.mode != Mode::Open || state.queue.is_empty() {
            self.hand_back(state, writer);
            return None;
        }
        let next = Batch::new(std::mem::take(&mut state.queue));
        Some((writer, next))
    }

    /// Puts the write half back; wakes `take_writer` if it waits.
    fn hand_back(&self, mut state: MutexGuard<'_, State>, writer: Writer) {
        state.writer = Some(writer);
        let wanted = std::mem::take(&mut state.writer_wanted);
        drop(state);
        if wanted {
            self.signal.notify_waiters();
        }
    }

    /// Takes the write half once whoever holds it hands it back.
    async fn take_writer(&self) -> Writer {
        loop {
            let signalled = self.signal.notified();
            tokio::pin!(signalled);
            // Registered before the check, so a `hand_back` between the two wakes it.
            signalled.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(writer) = state.writer.take() {
                    return writer;
                }
                state.writer_wanted = true;
            }
            signalled.await;
        }
    }

    /// Stops accepting output, writes what is queued (within a grace period)
    /// and closes the write side. The connection's own task calls this last.
    pub async fn finish(&self) {
        {
            let mut state = self.lock();
            if state.mode == Mode::Open {
                state.mode = Mode::Closing;
            }
        }
        let Ok(mut writer) = tokio::time::timeout(CLOSE_GRACE, self.take_writer()).await else {
            return;
        };
        let mut batch = {
            let mut state = self.lock();
            let mut queue = std::mem::take(&mut state.queue);
            let close = state.close.unwrap_or(CloseCode::NORMAL);
            queue.extend(self.framing.close(close));
            Batch::new(queue)
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            writer.write_all_buf(&mut batch).await?;
            writer.flush().await?;
            writer.shutdown().await
        })
        .await;
    }
}

/// Writes `batch` without waiting: stops at the first write the socket would block on.
fn write_now(writer: &mut Writer, batch: &mut Batch) -> Progress {
    let mut cx = Context::from_waker(Waker::noop());
    while batch.has_remaining() {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = batch.chunks_vectored(&mut slices);
        match Pin::new(&mut *writer).poll_write_vectored(&mut cx, &slices[..n]) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Progress::Failed,
            Poll::Ready(Ok(written)) => batch.advance(written),
            Poll::Pending => return Progress::Blocked,
        }
    }
    match Pin::new(&mut *writer).poll_flush(&mut cx) {
        Poll::Ready(Ok(())) => Progress::Done,
        Poll::Ready(Err(_)) => Progress::Failed,
        Poll::Pending => Progress::Blocked,
    }
}

/// Waits for a full socket: writes `batch` and whatever gets queued
/// meanwhile, then hands the write half back. Stops early when the
/// connection stops; `finish` then writes what is left.
async fn drain(out: Arc<Outbound>, mut writer: Writer, mut batch: Batch) {
    loop {
        let written = tokio::select! {
            biased;
            () = out.stopped() => {
                let mut state = out.lock();
                state.bytes = state.bytes.saturating_sub(batch.total);
                if state.mode != Mode::Kicked {
                    // A partly written message stays partly written.
                    for item in batch.items.into_iter().rev() {
                        state.bytes += item.len();
                        state.queue.push_front(item);
                    }
                }
                out.hand_back(state, writer);
                return;
            }
            result = async {
                writer.write_all_buf(&mut batch).await?;
                writer.flush().await
            } => result.is_ok(),
        };
        if !written {
            out.kick();
            out.hand_back(out.lock(), writer);
            return;
        }
        match out.after_write(writer, &batch) {
            Some((next_writer, next)) => (writer, batch) = (next_writer, next),
            None => return,
        }
    }
}

/// Everything queued at one moment, written with vectored writes.
struct Batch {
    items: VecDeque<Bytes>,
    /// Bytes of the batch when taken (for the queue's byte count).
    total: usize,
    remaining: usize,
}

impl Batch {
    fn new(items: VecDeque<Bytes>) -> Self {
        let total = items.iter().map(Bytes::len).sum();
        Self {
            items,
            total,
            remaining: total,
        }
    }
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn line(n: usize) -> Bytes {
        let mut text = "x".repeat(n - 1);
        text.push('\n');
        Bytes::from(text)
    }

    fn outbound(capacity: u32) -> (Arc<Outbound>, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let out = Outbound::new(
            1,
            capacity,
            Framing::Lines,
            CancellationToken::new(),
            server.into_writer(),
            Flushers::per_core(),
            tracing::Span::none(),
        );
        (out, client)
    }

    #[tokio::test]
    async fn queued_bytes_count_against_the_limit_and_one_byte_over_kicks() {
        let (out, _client) = outbound(100);
        // Queued for a flusher that is not running: nothing is written.
        assert!(out.push(&Outgoing::new(line(60))));
        assert!(out.push(&Outgoing::new(line(40))), "exactly at the limit");
        assert!(!out.is_kicked());
        assert!(!out.push(&Outgoing::new(line(1))), "one byte over");
        assert!(out.is_kicked());
        assert!(out.is_stopping(), "the connection is told to stop");
        assert!(
            !out.push(&Outgoing::new(line(1))),
            "nothing is queued once kicked"
        );
        // What stays queued is the SLOW_CONSUMER notice alone.
        let queue = &out.lock().queue;
        assert_eq!(queue.len(), 1);
        assert!(
            std::str::from_utf8(&queue[0])
                .unwrap_or_default()
                .contains("SLOW_CONSUMER")
        );
    }

    #[tokio::test]
    async fn written_bytes_are_given_back_to_the_limit() {
        let (out, mut client) = outbound(100);
        for round in 0..5 {
            assert!(out.reply(line(80)), "round {round}");
            let mut got = vec![0; 80];
            client.read_exact(&mut got).await.expect("read");
            assert_eq!(out.lock().bytes, 0, "round {round}");
        }
        assert!(!out.is_kicked());
    }

    #[tokio::test]
    async fn control_lines_pass_the_limit_but_not_a_kick() {
        let (out, _client) = outbound(10);
        assert!(out.push(&Outgoing::new(line(10))));
        assert!(
            out.push_control(&Outgoing::new(line(50))),
            "a system notice still goes out"
        );
        assert!(!out.is_kicked());
        assert!(!out.push(&Outgoing::new(line(1))));
        assert!(
            !out.push_control(&Outgoing::new(line(5))),
            "not after a kick"
        );
    }
}
