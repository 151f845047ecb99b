//! How queued messages go on the wire. A message is a JSON line ending in
//! `\n`: on TCP it is written as it is; on a WebSocket it becomes one text
//! frame (RFC 6455 §5.2) of the line without its `\n`, header and payload in
//! one buffer (tungstenite encodes the header). A fan-out event is an
//! `Outgoing`: its frame is encoded once, for its first WebSocket recipient,
//! and then shared like the line, so a delivery costs the same on both
//! transports: one reference-counted buffer, one slice in the `writev`.

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
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

/// One message for many recipients: the line, and its WebSocket frame once
/// a WebSocket recipient needed it.
pub struct Outgoing {
    line: Bytes,
    frame: OnceLock<Bytes>,
}

impl Outgoing {
    pub fn new(line: Bytes) -> Self {
        Self {
            line,
            frame: OnceLock::new(),
        }
    }
}

impl Framing {
    /// `message` as this connection's wire bytes (shared, not copied).
    pub(super) fn wire(self, message: &Outgoing) -> Bytes {
        match self {
            Framing::Lines => message.line.clone(),
            Framing::WebSocket => message
                .frame
                .get_or_init(|| text_frame(&message.line))
                .clone(),
        }
    }

    /// One connection's own message (`line` ends in `\n`) as wire bytes.
    pub(super) fn encode(self, line: Bytes) -> Bytes {
        match self {
            Framing::Lines => line,
            Framing::WebSocket => text_frame(&line),
        }
    }

    /// What ends the stream: a close frame on a WebSocket, nothing on TCP.
    pub(super) fn close(self, close: CloseCode) -> Option<Bytes> {
        match self {
            Framing::Lines => None,
            Framing::WebSocket => {
                let mut payload = Vec::with_capacity(2 + close.reason.len());
                payload.extend_from_slice(&close.code.to_be_bytes());
                payload.extend_from_slice(close.reason.as_bytes());
                Some(frame(OpCode::Control(Control::Close), &payload))
            }
        }
    }
}

/// A pong answering a ping with `payload`.
pub(super) fn pong(payload: &[u8]) -> Bytes {
    frame(OpCode::Control(Control::Pong), payload)
}

fn text_frame(line: &[u8]) -> Bytes {
    frame(
        OpCode::Data(Data::Text),
        line.strip_suffix(b"\n").unwrap_or(line),
    )
}

fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut out = BytesMut::with_capacity(MAX_HEAD + payload.len()).writer();
    // Cannot fail: writing into memory.
    let _ = header.format(payload.len() as u64, &mut out);
    let mut out = out.into_inner();
    out.extend_from_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_becomes_one_text_frame_without_its_newline() {
        let message = Outgoing::new(Bytes::from_static(b"{\"type\":\"pong\"}\n"));
        let bytes = Framing::WebSocket.wire(&message);
        assert_eq!(&bytes[..2], &[0x81, 15]);
        assert_eq!(&bytes[2..], b"{\"type\":\"pong\"}");
        let again = Framing::WebSocket.wire(&message);
        assert_eq!(bytes.as_ptr(), again.as_ptr(), "encoded once, then shared");
    }

    #[test]
    fn long_messages_get_extended_lengths() {
        let bytes = Framing::WebSocket.encode(Bytes::from(vec![b'x'; 70_000]));
        assert_eq!(&bytes[..2], &[0x81, 127]);
        assert_eq!(
            u64::from_be_bytes(bytes[2..10].try_into().unwrap_or_default()),
            70_000
        );
        assert_eq!(bytes.len(), 10 + 70_000);
    }

    #[test]
    fn tcp_lines_pass_as_they_are() {
        let message = Outgoing::new(Bytes::from_static(b"a\n"));
        assert_eq!(&Framing::Lines.wire(&message)[..], b"a\n");
        assert_eq!(
            &Framing::Lines.encode(Bytes::from_static(b"b\n"))[..],
            b"b\n"
        );
        assert!(Framing::Lines.close(CloseCode::NORMAL).is_none());
    }

    #[test]
    fn the_close_frame_carries_code_and_reason() {
        let bytes = Framing::WebSocket
            .close(CloseCode::SLOW_CONSUMER)
            .unwrap_or_default();
        assert_eq!(bytes[0], 0x88);
        assert_eq!(usize::from(bytes[1]), 2 + "slow consumer".len());
        assert_eq!(&bytes[2..4], &1008u16.to_be_bytes());
        assert_eq!(&bytes[4..], b"slow consumer");
    }
}
