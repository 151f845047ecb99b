//! Capped line framing. A line longer than the cap is reported as soon as the
//! cap is passed, then skipped up to its newline without being kept: memory
//! stays within the cap plus one read, whatever the client sends.
//!
//! While a connection is idle no read buffer is held: the reader waits for
//! readability first and allocates only when bytes are there.

use std::future::Future;
use std::io;

use bytes::BytesMut;
use tokio::io::Ready;

pub use super::frames::{Frame, ReadSource};
use super::frames::{FrameSource, MAX_READ, fill};

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

    /// Bytes held: at most the cap plus one read (the fuzz checks assert it).
    #[doc(hidden)]
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
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

impl<R: ReadSource> FrameSource for LineReader<R> {
    fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    fn wait_readable(&mut self) -> impl Future<Output = io::Result<Ready>> + Send {
        self.inner.wait_input(&mut self.buf)
    }

    fn decode_buffered(&mut self) -> io::Result<Option<Frame>> {
        Ok(self.decode())
    }

    fn read_more(&mut self) -> impl Future<Output = io::Result<usize>> + Send {
        fill(&mut self.inner, &mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn line(frame: Frame) -> String {
        match frame {
            Frame::Line(bytes) => String::from_utf8(bytes.to_vec()).expect("UTF-8"),
            other => panic!("not a line: {other:?}"),
        }
    }

    #[tokio::test]
    async fn lines_split_across_reads_are_joined_and_crlf_is_trimmed() {
        let (mut client, server) = tokio::io::duplex(64);
        let (read, _write) = tokio::io::split(server);
        let mut lines = LineReader::new(read, 100);
        client.write_all(b"{\"type\":").await.expect("write");
        client
            .write_all(b"\"ping\"}\r\nsecond\n")
            .await
            .expect("write");
        assert_eq!(
            line(lines.next().await.expect("frame")),
            "{\"type\":\"ping\"}"
        );
        assert_eq!(line(lines.next().await.expect("frame")), "second");
        // Nothing buffered once the last line is handed off.
        assert!(!lines.has_buffered());
        drop(client);
        assert!(matches!(lines.next().await.expect("frame"), Frame::Eof));
    }

    #[tokio::test]
    async fn an_oversized_line_is_reported_once_skipped_and_never_kept() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (read, _write) = tokio::io::split(server);
        let mut lines = LineReader::new(read, 10);
        let writer = tokio::spawn(async move {
            client.write_all(b"short\n").await.expect("write");
            // 100 KiB without a newline, then its end and a next line.
            for _ in 0..100 {
                client.write_all(&[b'x'; 1024]).await.expect("write");
            }
            client.write_all(b"tail\nafter\n").await.expect("write");
            client
        });
        assert_eq!(line(lines.next().await.expect("frame")), "short");
        assert!(matches!(
            lines.next().await.expect("frame"),
            Frame::TooLarge
        ));
        // The rest of the long line is dropped as it arrives: the buffer
        // never grows past one read.
        let after = lines.next().await.expect("frame");
        assert!(lines.buf.capacity() <= MAX_READ);
        assert_eq!(line(after), "after");
        drop(writer.await.expect("writer"));
        assert!(matches!(lines.next().await.expect("frame"), Frame::Eof));
    }

    #[tokio::test]
    async fn a_line_exactly_at_the_cap_passes_and_one_byte_more_does_not() {
        let (mut client, server) = tokio::io::duplex(256);
        let (read, _write) = tokio::io::split(server);
        let mut lines = LineReader::new(read, 5);
        client
            .write_all(b"12345\n123456\nok\n")
            .await
            .expect("write");
        assert_eq!(line(lines.next().await.expect("frame")), "12345");
        assert!(matches!(
            lines.next().await.expect("frame"),
            Frame::TooLarge
        ));
        assert_eq!(line(lines.next().await.expect("frame")), "ok");
    }

    /// Over a source without readiness (TLS is one), the idle wait still
    /// waits for bytes, reading them itself, and the line is then there.
    #[tokio::test]
    async fn the_idle_wait_waits_for_input_where_the_source_has_no_readiness() {
        let (mut client, server) = tokio::io::duplex(256);
        let (read, _write) = tokio::io::split(server);
        let mut lines = LineReader::new(read, 100);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        {
            let mut wait = std::pin::pin!(lines.wait_readable());
            assert!(
                wait.as_mut().poll(&mut cx).is_pending(),
                "resolved with nothing sent"
            );
            client.write_all(b"hello\n").await.expect("write");
            wait.await.expect("readable");
        }
        assert!(lines.has_buffered(), "the wait read what arrived");
        assert_eq!(line(lines.next().await.expect("frame")), "hello");
    }

    #[tokio::test]
    async fn try_next_returns_what_is_there_without_waiting() {
        let (mut client, server) = tokio::io::duplex(256);
        let (read, _write) = tokio::io::split(server);
        let mut lines = LineReader::new(read, 100);
        assert!(lines.try_next().is_none(), "nothing sent yet");
        client.write_all(b"a\nb\npartial").await.expect("write");
        assert_eq!(line(lines.try_next().expect("ready").expect("frame")), "a");
        assert_eq!(line(lines.try_next().expect("ready").expect("frame")), "b");
        assert!(lines.try_next().is_none(), "a partial line waits");
        client.write_all(b"\n").await.expect("write");
        assert_eq!(line(lines.next().await.expect("frame")), "partial");
    }
}
