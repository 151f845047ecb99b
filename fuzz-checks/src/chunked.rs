//! A transport for the framing checks: always ready, it hands out a stream
//! in reads of sizes the input chooses.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use gateway::connection::frames::ReadSource;
use tokio::io::{AsyncRead, ReadBuf};

pub struct Chunked {
    stream: Vec<u8>,
    sent: usize,
    sizes: Vec<usize>,
    reads: usize,
}

impl Chunked {
    /// Input `[n][n read sizes][stream…]`: the reads cycle through the
    /// sizes (1..=256 bytes each). Returns the source and its stream.
    pub fn from_input(data: &[u8]) -> (Chunked, &[u8]) {
        let n = usize::from(data.first().copied().unwrap_or(0) % 8) + 1;
        let sizes = (0..n)
            .map(|i| usize::from(data.get(1 + i).copied().unwrap_or(255)) + 1)
            .collect();
        let stream = data.get(1 + n..).unwrap_or_default();
        (Self::new(stream.to_vec(), sizes), stream)
    }

    pub fn new(stream: Vec<u8>, sizes: Vec<usize>) -> Chunked {
        Chunked {
            stream,
            sent: 0,
            sizes,
            reads: 0,
        }
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    pub fn largest_read(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(1)
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes[self.reads % self.sizes.len()];
        let n = size.min(buf.remaining()).min(self.stream.len() - self.sent);
        let start = self.sent;
        buf.put_slice(&self.stream[start..start + n]);
        self.sent += n;
        self.reads += 1;
        Poll::Ready(Ok(()))
    }
}

impl ReadSource for Chunked {}
