//! WebSocket message framing (RFC 6455 §5) for the connection loop: client
//! frames in, whole text messages out, with the same cap as a TCP line.
//!
//! tungstenite parses each frame header; this reader streams the payloads,
//! so that a message over `MAX_MESSAGE_BYTES`, a single frame or fragments
//! counted together, is reported (`Frame::TooLarge`) as soon as its size is
//! known and then skipped as it arrives, never buffered whole; the
//! connection stays open, as on TCP. (tungstenite's and fastwebsockets' own
//! message readers buffer a whole frame, or fail the connection, at the
//! cap.) A binary message is reported once (`Frame::Binary`) and skipped.
//!
//! Pings are answered with a pong at once; pings and pongs are traffic for
//! the idle timeout (`Frame::Skip`). A client's close frame is echoed, by
//! the connection's close path, with the client's code. Anything the RFC
//! says must fail the connection closes it with its close code: 1002 for an
//! unmasked frame, reserved bits or opcodes, a fragmented or oversized
//! control frame, or broken fragmentation; 1007 for text that is not UTF-8.

use std::future::Future;
use std::io::{self, Cursor};

use bytes::{Buf, BytesMut};
use tokio::io::Ready;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode as Code, Control, Data, OpCode};

use super::frames::{Frame, FrameSource, ReadSource, fill};
use crate::fanout::{CloseCode, Conn};

/// RFC 6455 §5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: u64 = 125;

pub struct MessageReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
    /// Where pongs go, and the reason the connection closes.
    out: Conn,
    /// The frame whose payload is being read.
    frame: Option<FrameState>,
    /// The message that the next continuation frame belongs to; `None`
    /// between messages. Boxed: every idle connection's task holds this
    /// reader, and a pointer is 8 bytes where the message is 32.
    message: Option<Box<Message>>,
}

/// 16 bytes: an idle connection's task holds it.
struct FrameState {
    opcode: OpCode,
    is_final: bool,
    /// The masking key, turned as payload is read so that its first byte
    /// masks the next payload byte (no phase to keep).
    mask: [u8; 4],
    /// Payload bytes still to come.
    remaining: u64,
}

enum Message {
    /// A text message whose fragments are being joined.
    Text(BytesMut),
    /// A message being skipped (too large or binary).
    Skipping,
}

impl<R: ReadSource> MessageReader<R> {
    /// `leftover`: bytes the client sent after its handshake request.
    pub fn new(inner: R, leftover: BytesMut, max: usize, out: Conn) -> Self {
        Self {
            inner,
            buf: leftover,
            max,
            out,
            frame: None,
            message: None,
        }
    }

    /// Bytes held: buffered input plus the message being joined (the fuzz
    /// checks bound it).
    #[doc(hidden)]
    pub fn buffered_len(&self) -> usize {
        let joined = match self.message.as_deref() {
            Some(Message::Text(text)) => text.len(),
            Some(Message::Skipping) | None => 0,
        };
        self.buf.len() + joined
    }

    /// Decodes what is buffered: a frame for the loop, `None` when more bytes
    /// are needed, or the close code of a protocol violation.
    fn decode(&mut self) -> Result<Option<Frame>, CloseCode> {
        loop {
            let Some(frame) = &mut self.frame else {
                match self.start_frame()? {
                    Start::NeedMore => return Ok(None),
                    Start::Report(report) => return Ok(Some(report)),
                    Start::Continue => continue,
                }
            };
            if let OpCode::Control(control) = frame.opcode {
                // At most 125 bytes: wait for all of them.
                let len = usize::try_from(frame.remaining).unwrap_or(usize::MAX);
                if self.buf.len() < len {
                    return Ok(None);
                }
                let mut payload = self.buf.split_to(len);
                unmask(&mut payload, frame.mask);
                self.frame = None;
                self.release_if_empty();
                return self.control(control, payload).map(Some);
            }
            let take = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            if take == 0 && frame.remaining > 0 {
                return Ok(None);
            }
            let mask = frame.mask;
            frame.remaining -= take as u64;
            frame.mask.rotate_left(take % 4);
            let done = frame.remaining == 0;
            let is_final = frame.is_final;
            if let Some(Message::Text(text)) = self.message.as_deref_mut() {
                let start = text.len();
                text.extend_from_slice(&self.buf[..take]);
                unmask(&mut text[start..], mask);
            }
            self.consume(take);
            if !done {
                return Ok(None);
            }
            self.frame = None;
            if !is_final {
                continue;
            }
            match self.message.take().map(|message| *message) {
                Some(Message::Text(text)) => {
                    self.release_if_empty();
                    return text_message(text).map(Some);
                }
                Some(Message::Skipping) | None => self.release_if_empty(),
            }
        }
    }

    /// Parses the next frame header, if it is all there.
    fn start_frame(&mut self) -> Result<Start, CloseCode> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(Start::NeedMore),
            Err(_) => return Err(CloseCode::PROTOCOL),
        };
        let header_len = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
        let Some(mask) = header.mask else {
            return Err(CloseCode::PROTOCOL);
        };
        if header.rsv1 || header.rsv2 || header.rsv3 || len > i64::MAX as u64 {
            return Err(CloseCode::PROTOCOL);
        }
        let mut report = None;
        match (header.opcode, self.message.as_deref_mut()) {
            (OpCode::Control(_), _) => {
                if !header.is_final || len > MAX_CONTROL_PAYLOAD {
                    return Err(CloseCode::PROTOCOL);
                }
            }
            (OpCode::Data(Data::Continue), None)
            | (OpCode::Data(Data::Text | Data::Binary), Some(_))
            | (OpCode::Data(Data::Reserved(_)), _) => return Err(CloseCode::PROTOCOL),
            (OpCode::Data(Data::Binary), None) => {
                report = Some(Frame::Binary);
                self.message = Some(Box::new(Message::Skipping));
            }
            (OpCode::Data(Data::Text), None) => {
                self.message = Some(Box::new(if len > self.max as u64 {
                    report = Some(Frame::TooLarge);
                    Message::Skipping
                } else {
                    Message::Text(BytesMut::new())
                }));
            }
            (OpCode::Data(Data::Continue), Some(message)) => {
                if let Message::Text(text) = message
                    && text.len() as u64 + len > self.max as u64
                {
                    report = Some(Frame::TooLarge);
                    // The joined part is dropped: the message is skipped.
                    *message = Message::Skipping;
                }
            }
        }
        self.consume(header_len);
        self.frame = Some(FrameState {
            opcode: header.opcode,
            is_final: header.is_final,
            mask,
            remaining: len,
        });
        Ok(report.map_or(Start::Continue, Start::Report))
    }

    /// A whole control frame.
    fn control(&mut self, control: Control, payload: BytesMut) -> Result<Frame, CloseCode> {
        match control {
            Control::Ping => {
                self.out.pong(&payload);
                Ok(Frame::Skip)
            }
            Control::Pong => Ok(Frame::Skip),
            Control::Close => {
                // Echo the client's code (RFC 6455 §5.5.1); none given is a normal close.
                let code = match payload.len() {
                    0 => CloseCode::NORMAL,
                    1 => return Err(CloseCode::PROTOCOL),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        if !Code::from(code).is_allowed() {
                            return Err(CloseCode::PROTOCOL);
                        }
                        if std::str::from_utf8(&payload[2..]).is_err() {
                            return Err(CloseCode::INVALID_UTF8);
                        }
                        CloseCode::new(code, "")
                    }
                };
                self.out.close_with(code);
                Ok(Frame::Eof)
            }
            Control::Reserved(_) => Err(CloseCode::PROTOCOL),
        }
    }

    fn consume(&mut self, n: usize) {
        if n >= self.buf.len() {
            // Keeps the allocation for the rest of a long payload.
            self.buf.clear();
        } else {
            self.buf.advance(n);
        }
    }

    /// Between messages with nothing buffered, an idle connection keeps no buffer.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.message.is_none() {
            self.buf = BytesMut::new();
        }
    }
}

/// What a frame header started.
enum Start {
    NeedMore,
    /// Tell the loop now (too large, binary); the payload follows.
    Report(Frame),
    Continue,
}

fn text_message(text: BytesMut) -> Result<Frame, CloseCode> {
    if std::str::from_utf8(&text).is_err() {
        return Err(CloseCode::INVALID_UTF8);
    }
    Ok(Frame::Line(text))
}

/// XORs client payload bytes with their mask, turned so that `mask[0]`
/// masks `data[0]`.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

impl<R: ReadSource> FrameSource for MessageReader<R> {
    fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    fn wait_readable(&mut self) -> impl Future<Output = io::Result<Ready>> + Send {
        self.inner.wait_input(&mut self.buf)
    }

    fn decode_buffered(&mut self) -> io::Result<Option<Frame>> {
        self.decode().map_err(|close| {
            tracing::debug!(
                code = close.code,
                reason = close.reason,
                "WebSocket protocol violation"
            );
            self.out.close_with(close);
            io::Error::new(io::ErrorKind::InvalidData, close.reason)
        })
    }

    fn read_more(&mut self) -> impl Future<Output = io::Result<usize>> + Send {
        fill(&mut self.inner, &mut self.buf)
    }
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;
