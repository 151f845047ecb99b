//! Capped line framing. A line longer than the cap is reported as soon as the
//! cap is passed, then skipped up to its newline without being kept: memory
//! stays within the cap plus one read, whatever the client sends.
//!
//! While a connection is idle no read buffer is held: the reader waits for
//! readability first and allocates only when bytes are there.

use std::future::Future;
use std::io;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, Interest, Ready};

/// Small: most lines are short, and a long line grows the buffer by doubling.
const FIRST_READ: usize = 1024;
const MAX_READ: usize = 64 * 1024;

/// The read half of a transport.
pub trait ReadSource: AsyncRead + Unpin + Send + 'static {
    /// Resolves when a read would not block (a hint; may resolve early).
    fn wait_readable(&self) -> impl Future<Output = io::Result<Ready>> + Send {
        std::future::ready(Ok(Ready::READABLE))
    }
}

impl ReadSource for tokio::net::tcp::OwnedReadHalf {
    fn wait_readable(&self) -> impl Future<Output = io::Result<Ready>> + Send {
        // The innermost readiness future: each async layer around it would
        // add to every idle connection's task.
        self.as_ref().ready(Interest::READABLE)
    }
}

impl<T: AsyncRead + tokio::io::AsyncWrite + Send + 'static> ReadSource for tokio::io::ReadHalf<T> {}

#[derive(Debug)]
pub enum Frame {
    /// One line, without `\n` or a preceding `\r`.
    Line(BytesMut),
    /// A line passed the cap; its rest is being skipped.
    TooLarge,
    Eof,
}

pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
    /// Bytes of `buf` already known to hold no `\n`.
    scanned: usize,
    discarding: bool,
}

impl<R: ReadSource> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            max,
            scanned: 0,
            discarding: false,
        }
    }

    /// True when bytes are buffered (a frame may be decodable without reading).
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes held: at most the cap plus one read (the fuzz checks assert it).
    #[doc(hidden)]
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Resolves when the transport has bytes to read (a hint).
    pub fn wait_readable(&mut self) -> impl Future<Output = io::Result<Ready>> + Send {
        self.inner.wait_readable()
    }

    /// The next frame. Cancel-safe: no bytes are lost when dropped mid-way.
    pub async fn next(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(frame) = self.decode() {
                return Ok(frame);
            }
            if self.buf.capacity() == self.buf.len() {
                if self.buf.is_empty() {
                    self.inner.wait_readable().await?;
                    self.buf.reserve(FIRST_READ);
                } else {
                    self.buf.reserve(self.buf.len().clamp(FIRST_READ, MAX_READ));
                }
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Ok(Frame::Eof);
            }
        }
    }

    /// The next frame if it is there without waiting: already buffered, or
    /// readable from the transport right now.
    pub fn try_next(&mut self) -> Option<io::Result<Frame>> {
        let mut cx = Context::from_waker(Waker::noop());
        match std::pin::pin!(self.next()).poll(&mut cx) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        }
    }

    fn decode(&mut self) -> Option<Frame> {
        loop {
            let newline = self.buf[self.scanned..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|pos| self.scanned + pos);
            let Some(end) = newline else {
                if self.discarding {
                    self.release_all();
                } else if self.buf.len() > self.max + 1 {
                    self.release_all();
                    self.discarding = true;
                    return Some(Frame::TooLarge);
                } else {
                    self.scanned = self.buf.len();
                }
                return None;
            };
            let mut line = self.buf.split_to(end + 1);
            self.scanned = 0;
            if self.buf.is_empty() {
                // Hand the allocation to `line`; an idle connection keeps none.
                self.buf = BytesMut::new();
            }
            if self.discarding {
                self.discarding = false;
                continue;
            }
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > self.max {
                return Some(Frame::TooLarge);
            }
            return Some(Frame::Line(line));
        }
    }

    fn release_all(&mut self) {
        self.buf.clear();
        self.scanned = 0;
        if self.buf.capacity() > MAX_READ {
            self.buf = BytesMut::new();
        }
    }
}
