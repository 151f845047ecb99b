//! How queued messages go on the wire. A message is a JSON line ending in
//! `\n`: on TCP it is written as it is; on a WebSocket it becomes one text
//! frame (RFC 6455 §5.2) of the line without its `\n`. The frame header is
//! encoded by tungstenite and kept inline in the queue item, so the message
//! itself stays one shared buffer for every recipient.

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// An unmasked server frame header: 2 bytes, plus 2 or 8 of length.
const MAX_HEAD: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// JSON lines, as they are.
    Lines,
    /// One WebSocket text frame per message.
    WebSocket,
}

/// Why a WebSocket connection ends: the status code and reason of the close
/// frame the gateway sends (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseCode {
    /// The protocol's own end: shutdown, a refused `auth`, the client's close.
    pub const NORMAL: Self = Self::new(1000, "");
    pub const IDLE: Self = Self::new(1000, "idle timeout");
    /// A frame that breaks RFC 6455 (unmasked, reserved bits or opcodes,
    /// bad fragmentation, oversized control frame).
    pub const PROTOCOL: Self = Self::new(1002, "protocol error");
    /// A text message that is not UTF-8.
    pub const INVALID_UTF8: Self = Self::new(1007, "invalid UTF-8");
    /// The outbound queue overflowed (`SLOW_CONSUMER`).
    pub const SLOW_CONSUMER: Self = Self::new(1008, "slow consumer");

    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

impl Framing {
    /// One queued message (`line` ends in `\n`).
    pub(super) fn message(self, line: Bytes) -> Item {
        match self {
            Framing::Lines => Item::raw(line),
            Framing::WebSocket => {
                let end = line.len() - usize::from(line.ends_with(b"\n"));
                Item::frame(OpCode::Data(Data::Text), line.slice(..end))
            }
        }
    }

    /// What ends the stream: a close frame on a WebSocket, nothing on TCP.
    pub(super) fn close(self, close: CloseCode) -> Option<Item> {
        match self {
            Framing::Lines => None,
            Framing::WebSocket => {
                let mut payload = Vec::with_capacity(2 + close.reason.len());
                payload.extend_from_slice(&close.code.to_be_bytes());
                payload.extend_from_slice(close.reason.as_bytes());
                Some(Item::frame(
                    OpCode::Control(Control::Close),
                    Bytes::from(payload),
                ))
            }
        }
    }
}

/// One queued message: an inline frame header (empty on TCP) and the
/// message, each possibly partly written.
pub(super) struct Item {
    head: [u8; MAX_HEAD],
    head_start: u8,
    head_end: u8,
    body: Bytes,
}

impl Item {
    fn raw(body: Bytes) -> Self {
        Self {
            head: [0; MAX_HEAD],
            head_start: 0,
            head_end: 0,
            body,
        }
    }

    fn frame(opcode: OpCode, body: Bytes) -> Self {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let mut head = [0; MAX_HEAD];
        let mut cursor = std::io::Cursor::new(&mut head[..]);
        // Cannot fail: an unmasked header fits in MAX_HEAD bytes.
        let _ = header.format(body.len() as u64, &mut cursor);
        let head_end = u8::try_from(cursor.position()).unwrap_or(0);
        Self {
            head,
            head_start: 0,
            head_end,
            body,
        }
    }

    /// A pong answering a ping with `payload`.
    pub(super) fn pong(payload: Bytes) -> Self {
        Self::frame(OpCode::Control(Control::Pong), payload)
    }

    /// Bytes not yet written.
    pub(super) fn remaining(&self) -> usize {
        usize::from(self.head_end - self.head_start) + self.body.len()
    }

    /// Bytes not yet written (the queue's accounting unit).
    pub(super) fn len(&self) -> usize {
        self.remaining()
    }

    fn head(&self) -> &[u8] {
        &self.head[usize::from(self.head_start)..usize::from(self.head_end)]
    }

    pub(super) fn chunk(&self) -> &[u8] {
        if self.head_start < self.head_end {
            self.head()
        } else {
            &self.body
        }
    }

    pub(super) fn advance(&mut self, cnt: usize) {
        let in_head = cnt.min(usize::from(self.head_end - self.head_start));
        self.head_start += u8::try_from(in_head).unwrap_or(0);
        self.body.advance((cnt - in_head).min(self.body.len()));
    }

    /// Fills `dst` with what is left (head, then body); returns how many
    /// slices it used.
    pub(super) fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for part in [self.head(), &self.body[..]] {
            if part.is_empty() {
                continue;
            }
            let Some(slot) = dst.get_mut(n) else {
                break;
            };
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(mut item: Item, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while item.remaining() > 0 {
            let chunk = item.chunk();
            let take = step.min(chunk.len());
            out.extend_from_slice(&chunk[..take]);
            item.advance(take);
        }
        out
    }

    #[test]
    fn a_line_becomes_one_text_frame_without_its_newline() {
        let item = Framing::WebSocket.message(Bytes::from_static(b"{\"type\":\"pong\"}\n"));
        assert_eq!(item.len(), 2 + 15);
        let bytes = written(item, 3);
        assert_eq!(&bytes[..2], &[0x81, 15]);
        assert_eq!(&bytes[2..], b"{\"type\":\"pong\"}");
    }

    #[test]
    fn long_messages_get_extended_lengths() {
        let line = Bytes::from(vec![b'x'; 70_000]);
        let bytes = written(Framing::WebSocket.message(line), 4096);
        assert_eq!(&bytes[..2], &[0x81, 127]);
        assert_eq!(
            u64::from_be_bytes(bytes[2..10].try_into().unwrap_or_default()),
            70_000
        );
        assert_eq!(bytes.len(), 10 + 70_000);
    }

    #[test]
    fn tcp_lines_pass_as_they_are() {
        let bytes = written(Framing::Lines.message(Bytes::from_static(b"a\n")), 1);
        assert_eq!(bytes, b"a\n");
        assert!(Framing::Lines.close(CloseCode::NORMAL).is_none());
    }

    #[test]
    fn the_close_frame_carries_code_and_reason() {
        let close = Framing::WebSocket.close(CloseCode::SLOW_CONSUMER);
        let bytes = written(close.unwrap_or_else(|| Item::raw(Bytes::new())), 100);
        assert_eq!(bytes[0], 0x88);
        assert_eq!(usize::from(bytes[1]), 2 + "slow consumer".len());
        assert_eq!(&bytes[2..4], &1008u16.to_be_bytes());
        assert_eq!(&bytes[4..], b"slow consumer");
    }

    #[test]
    fn slices_stop_when_there_is_no_room() {
        let item = Framing::WebSocket.message(Bytes::from_static(b"abc\n"));
        let mut one = [IoSlice::new(&[])];
        assert_eq!(item.slices(&mut one), 1);
        assert_eq!(&*one[0], &[0x81, 3]);
        let mut two = [IoSlice::new(&[]); 2];
        assert_eq!(item.slices(&mut two), 2);
        assert_eq!(&*two[1], b"abc");
    }
}
