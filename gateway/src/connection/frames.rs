//! What a transport's reader hands the connection loop, whatever the
//! framing: JSON lines on TCP (`lines`), WebSocket messages (`websocket`).
//! Both read the same way (`fill`): while a connection over a socket is idle
//! no read buffer is held, and one is allocated only when bytes are there
//! (over TLS, where only a read tells, the idle wait holds the first read's
//! buffer: `ReadSource::wait_input`).

use std::future::Future;
use std::io;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, Ready};

/// Small: most messages are short, and a long one grows the buffer by doubling.
pub const FIRST_READ: usize = 1024;
pub const MAX_READ: usize = 64 * 1024;

#[derive(Debug)]
pub enum Frame {
    /// One message: a line without `\n` (or a preceding `\r`), or the text
    /// of a WebSocket message.
    Line(BytesMut),
    /// A message passed `MAX_MESSAGE_BYTES`; its rest is being skipped.
    TooLarge,
    /// A WebSocket binary message (skipped).
    Binary,
    /// Traffic that needs no answer from the loop (a WebSocket ping, already
    /// answered, or a pong): it counts as activity, nothing more.
    Skip,
    Eof,
}

/// The read half of a transport.
pub trait ReadSource: AsyncRead + Unpin + Send + Sized + 'static {
    /// Resolves when a read would not block (a hint; may resolve early).
    fn wait_readable(&self) -> impl Future<Output = io::Result<Ready>> + Send {
        std::future::ready(Ok(Ready::READABLE))
    }

    /// An idle connection's wait for input, for a reader whose buffer is
    /// `buf`. A source without readiness (TLS: only reading tells whether a
    /// record holds plaintext) reads into `buf` here, so that this small
    /// future waits while the connection is idle, not the boxed request
    /// handling around the next read (8 KiB per idle TLS connection, a heap
    /// profile showed). A source with readiness overrides it to wait without
    /// reading, holding no buffer.
    fn wait_input<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<Ready>> + Send + 'a {
        async move {
            // At EOF (0 bytes) the next read says so again.
            fill(self, buf).await?;
            Ok(Ready::READABLE)
        }
    }
}

impl ReadSource for tokio::net::tcp::OwnedReadHalf {
    fn wait_readable(&self) -> impl Future<Output = io::Result<Ready>> + Send {
        // Polls the socket's read readiness in place: the waker goes into
        // Tokio's registration of the socket, so nothing is stored here,
        // where `ready()` keeps a 136-byte future in every idle
        // connection's task. (Only this connection's task reads the socket,
        // so the single read waker slot is enough.)
        std::future::poll_fn(move |cx| {
            self.as_ref()
                .poll_read_ready(cx)
                .map_ok(|()| Ready::READABLE)
        })
    }

    fn wait_input<'a>(
        &'a mut self,
        _buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<Ready>> + Send + 'a {
        self.wait_readable()
    }
}

impl<T: AsyncRead + tokio::io::AsyncWrite + Send + 'static> ReadSource for tokio::io::ReadHalf<T> {}

/// A framed reader: the connection loop's only view of its transport.
pub trait FrameSource: Send + Sized + 'static {
    /// A frame from what is buffered, if a whole one is there. An error (a
    /// framing violation) ends the connection.
    fn decode_buffered(&mut self) -> io::Result<Option<Frame>>;

    /// Reads more bytes into the buffer (`fill`); 0 at EOF.
    fn read_more(&mut self) -> impl Future<Output = io::Result<usize>> + Send;

    /// The next frame. Cancel-safe: no bytes are lost when dropped mid-way.
    /// An error ends the connection.
    fn next(&mut self) -> impl Future<Output = io::Result<Frame>> + Send {
        async move {
            loop {
                if let Some(frame) = self.decode_buffered()? {
                    return Ok(frame);
                }
                if self.read_more().await? == 0 {
                    return Ok(Frame::Eof);
                }
            }
        }
    }

    /// True when bytes are buffered (a frame may be decodable without reading).
    fn has_buffered(&self) -> bool;

    /// Resolves when the transport has bytes to read (a hint), or, where
    /// only a read can tell (`ReadSource::wait_input`), once it has read some
    /// into the buffer.
    fn wait_readable(&mut self) -> impl Future<Output = io::Result<Ready>> + Send;

    /// The next frame if it is there without waiting: already buffered, or
    /// readable from the transport right now.
    fn try_next(&mut self) -> Option<io::Result<Frame>> {
        let mut cx = Context::from_waker(Waker::noop());
        match std::pin::pin!(self.next()).poll(&mut cx) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        }
    }
}

/// Reads more bytes into `buf` (0 at EOF). An empty buffer without room is
/// allocated only once the transport is readable; a full one grows by
/// doubling, from `FIRST_READ` up to `MAX_READ` per read.
pub async fn fill<R: ReadSource>(inner: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() == buf.len() {
        if buf.is_empty() {
            inner.wait_readable().await?;
            buf.reserve(FIRST_READ);
        } else {
            buf.reserve(buf.len().clamp(FIRST_READ, MAX_READ));
        }
    }
    inner.read_buf(buf).await
}
