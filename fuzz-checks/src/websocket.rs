//! `websocket`: the gateway's WebSocket message reader fed client frames in
//! arbitrary read chunks, with a small cap.
//!
//! Input: `[cap][n][n read sizes][ops…]`. When `cap`'s top bit is clear the
//! ops describe well-formed masked frames (text messages in 1–3 fragments,
//! binary messages, pings and pongs, a ping inside a fragmented message),
//! encoded by tungstenite, and the reader must return exactly what a model
//! says; when it is set the ops are sent as they are (any bytes), and only
//! the invariants are checked. Either way: no panic, no message over the cap
//! or not UTF-8, and the buffer stays within a header, a control payload and
//! one read (plus the message being joined, at most the cap).

use bytes::Bytes;
use gateway::connection::frames::{Frame, FrameSource};
use gateway::connection::websocket::MessageReader;
use gateway::fanout::{Flushers, Framing, IntoWriter, Outbound};
use tokio_util::sync::CancellationToken;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame as WsFrame, FrameHeader};

use crate::chunked::Chunked;

/// The longest client frame header, and the largest control payload.
const MAX_HEADER: usize = 14;
const MAX_CONTROL: usize = 125;

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Line(Vec<u8>),
    TooLarge,
    Binary,
    Skip,
}

fn frame(out: &mut Vec<u8>, opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    WsFrame::from_payload(header, Bytes::copy_from_slice(payload))
        .format(out)
        .expect("a frame encodes into a Vec");
}

/// The frames `ops` describe, and what the reader must return for them.
fn generate(ops: &[u8], cap: usize) -> (Vec<u8>, Vec<Expected>) {
    let (mut stream, mut expected) = (Vec::new(), Vec::new());
    let mut rest = ops;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        let mask = [*kind, len as u8, 0x5a, 0xa5];
        let text: Vec<u8> = payload.iter().map(|b| b'a' + b % 26).collect();
        match kind % 5 {
            0 | 4 => {
                let parts = usize::from(kind / 5 % 3) + 1;
                let size = text.len().div_ceil(parts).max(1);
                let pieces: Vec<&[u8]> = if text.is_empty() {
                    vec![&[][..]]
                } else {
                    text.chunks(size).collect()
                };
                let mut total = 0;
                let mut reported = false;
                for (i, piece) in pieces.iter().enumerate() {
                    let opcode = if i == 0 {
                        OpCode::Data(Data::Text)
                    } else {
                        OpCode::Data(Data::Continue)
                    };
                    let fin = i + 1 == pieces.len();
                    frame(&mut stream, opcode, fin, piece, mask);
                    total += piece.len();
                    if total > cap && !reported {
                        reported = true;
                        expected.push(Expected::TooLarge);
                    }
                    if kind % 5 == 4 && !fin {
                        frame(
                            &mut stream,
                            OpCode::Control(Control::Ping),
                            true,
                            b"p",
                            mask,
                        );
                        expected.push(Expected::Skip);
                    }
                }
                if !reported {
                    expected.push(Expected::Line(text));
                }
            }
            1 => {
                let half = payload.len() / 2;
                frame(
                    &mut stream,
                    OpCode::Data(Data::Binary),
                    false,
                    &payload[..half],
                    mask,
                );
                frame(
                    &mut stream,
                    OpCode::Data(Data::Continue),
                    true,
                    &payload[half..],
                    mask,
                );
                expected.push(Expected::Binary);
            }
            control => {
                let opcode = if control == 2 {
                    Control::Ping
                } else {
                    Control::Pong
                };
                let payload = &payload[..payload.len().min(MAX_CONTROL)];
                frame(&mut stream, OpCode::Control(opcode), true, payload, mask);
                expected.push(Expected::Skip);
            }
        }
    }
    (stream, expected)
}

pub fn check(data: &[u8]) {
    let first = data.first().copied().unwrap_or(16);
    let raw = first & 0x80 != 0;
    let cap = usize::from(first & 0x7f) % 64 + 1;
    let (reads, ops) = Chunked::from_input(data.get(1..).unwrap_or_default());
    let largest_read = reads.largest_read();
    let (stream, expected) = if raw {
        (ops.to_vec(), None)
    } else {
        let (stream, expected) = generate(ops, cap);
        (stream, Some(expected))
    };
    let source = Chunked::new(stream, reads.sizes().to_vec());
    let out = Outbound::new(
        1,
        1 << 20,
        Framing::WebSocket,
        CancellationToken::new(),
        tokio::io::sink().into_writer(),
        Flushers::new(1),
        tracing::Span::none(),
    );
    let mut reader = MessageReader::new(source, Default::default(), cap, out);
    let mut got = Vec::new();
    loop {
        let frame = reader
            .try_next()
            .expect("an always-ready source never blocks");
        assert!(
            reader.buffered_len() <= MAX_HEADER + MAX_CONTROL + largest_read + cap,
            "buffered {} bytes with cap {cap} and reads of at most {largest_read}",
            reader.buffered_len()
        );
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => {
                assert!(raw, "well-formed frames failed the connection: {err}");
                break;
            }
        };
        got.push(match frame {
            Frame::Eof => break,
            Frame::Line(line) => {
                assert!(line.len() <= cap, "a message longer than the cap came out");
                assert!(
                    std::str::from_utf8(&line).is_ok(),
                    "a message that is not UTF-8"
                );
                Expected::Line(line.to_vec())
            }
            Frame::TooLarge => Expected::TooLarge,
            Frame::Binary => Expected::Binary,
            Frame::Skip => Expected::Skip,
        });
    }
    if let Some(expected) = expected {
        assert_eq!(got, expected, "cap {cap}");
    }
}
