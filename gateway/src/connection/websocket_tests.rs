//! The WebSocket reader over an in-memory stream: frames built by
//! tungstenite (masked, as a client sends them), replies read back raw.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;
use tungstenite::protocol::frame::Frame as WsFrame;

use super::*;
use crate::fanout::{Flushers, Framing, IntoWriter, Outbound};

const MAX: usize = 64;

struct Peer {
    /// The client's side: what it writes the reader reads; what the
    /// gateway writes (pongs, close) it reads.
    client: DuplexStream,
    reader: MessageReader<tokio::io::ReadHalf<DuplexStream>>,
    out: Conn,
}

/// A reader over an in-memory stream, with `leftover` read first.
fn reader(
    leftover: BytesMut,
) -> (
    DuplexStream,
    MessageReader<tokio::io::ReadHalf<DuplexStream>>,
    Conn,
) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (read, write) = tokio::io::split(server);
    let out = Outbound::new(
        1,
        1 << 16,
        Framing::WebSocket,
        CancellationToken::new(),
        write.into_writer(),
        Flushers::new(1),
        tracing::Span::none(),
    );
    let reader = MessageReader::new(read, leftover, MAX, out.clone());
    (client, reader, out)
}

fn peer() -> Peer {
    let (client, reader, out) = reader(BytesMut::new());
    Peer {
        client,
        reader,
        out,
    }
}

fn masked(payload: &[u8], opcode: OpCode, fin: bool) -> Vec<u8> {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        mask: Some([0x12, 0x34, 0x56, 0x78]),
        ..FrameHeader::default()
    };
    let mut bytes = Vec::new();
    WsFrame::from_payload(header, payload.to_vec().into())
        .format(&mut bytes)
        .unwrap();
    bytes
}

const TEXT: OpCode = OpCode::Data(Data::Text);
const MORE: OpCode = OpCode::Data(Data::Continue);

fn line(frame: Frame) -> String {
    match frame {
        Frame::Line(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
        other => panic!("not a message: {other:?}"),
    }
}

/// The close frame the gateway sends when the connection finishes.
async fn close_code(peer: Peer) -> u16 {
    let Peer {
        mut client, out, ..
    } = peer;
    Arc::clone(&out).finish().await;
    let mut bytes = Vec::new();
    client.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes[0], 0x88, "a close frame: {bytes:?}");
    u16::from_be_bytes([bytes[2], bytes[3]])
}

#[tokio::test]
async fn a_text_frame_is_one_message() {
    let mut p = peer();
    p.client
        .write_all(&masked(b"{\"type\":\"ping\"}", TEXT, true))
        .await
        .unwrap();
    assert_eq!(line(p.reader.next().await.unwrap()), "{\"type\":\"ping\"}");
    assert!(!p.reader.has_buffered());
}

#[tokio::test]
async fn a_payload_read_three_bytes_at_a_time_is_unmasked_whole() {
    // Each read ends at another place of the 4-byte masking key.
    let mut p = peer();
    let text = "{\"type\":\"ping\",\"id\":\"abcdefg\"}";
    let bytes = masked(text.as_bytes(), TEXT, true);
    let (last, head) = bytes.split_last().unwrap();
    for chunk in head.chunks(3) {
        p.client.write_all(chunk).await.unwrap();
        assert!(
            p.reader.try_next().is_none(),
            "a message before its last byte"
        );
    }
    p.client.write_all(&[*last]).await.unwrap();
    assert_eq!(line(p.reader.next().await.unwrap()), text);
}

#[tokio::test]
async fn fragments_are_joined_and_a_ping_between_them_is_answered() {
    let mut p = peer();
    let mut bytes = masked(b"{\"type\":", TEXT, false);
    bytes.extend(masked(b"hello", OpCode::Control(Control::Ping), true));
    bytes.extend(masked(b"\"ping\"}", MORE, true));
    p.client.write_all(&bytes).await.unwrap();
    assert!(matches!(p.reader.next().await.unwrap(), Frame::Skip));
    assert_eq!(line(p.reader.next().await.unwrap()), "{\"type\":\"ping\"}");
    let mut pong = [0; 7];
    p.client.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"\x8a\x05hello");
}

#[tokio::test]
async fn an_oversized_frame_is_reported_from_its_header_and_skipped() {
    let mut p = peer();
    let big = masked(&[b'x'; 1000], TEXT, true);
    // Only the header and a little of the payload so far.
    p.client.write_all(&big[..20]).await.unwrap();
    assert!(matches!(p.reader.next().await.unwrap(), Frame::TooLarge));
    p.client.write_all(&big[20..]).await.unwrap();
    p.client
        .write_all(&masked(b"after", TEXT, true))
        .await
        .unwrap();
    assert_eq!(line(p.reader.next().await.unwrap()), "after");
}

#[tokio::test]
async fn fragments_count_together_against_the_cap() {
    let mut p = peer();
    let mut bytes = masked(&[b'x'; 40], TEXT, false);
    bytes.extend(masked(&[b'x'; 40], MORE, false));
    p.client.write_all(&bytes).await.unwrap();
    assert!(matches!(p.reader.next().await.unwrap(), Frame::TooLarge));
    let mut rest = masked(&[b'x'; 40], MORE, true);
    rest.extend(masked(
        b"exactly-at-the-cap-is-fine-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        TEXT,
        true,
    ));
    p.client.write_all(&rest).await.unwrap();
    assert_eq!(line(p.reader.next().await.unwrap()).len(), MAX);
}

#[tokio::test]
async fn a_binary_message_is_reported_once_and_skipped() {
    let mut p = peer();
    let mut bytes = masked(b"\x00\x01", OpCode::Data(Data::Binary), false);
    bytes.extend(masked(b"\x02", MORE, true));
    bytes.extend(masked(b"text", TEXT, true));
    p.client.write_all(&bytes).await.unwrap();
    assert!(matches!(p.reader.next().await.unwrap(), Frame::Binary));
    assert_eq!(line(p.reader.next().await.unwrap()), "text");
}

#[tokio::test]
async fn an_unmasked_frame_closes_with_1002() {
    let mut p = peer();
    let mut unmasked = Vec::new();
    WsFrame::message(b"hi".to_vec(), TEXT, true)
        .format(&mut unmasked)
        .unwrap();
    p.client.write_all(&unmasked).await.unwrap();
    assert!(p.reader.next().await.is_err());
    assert_eq!(close_code(p).await, 1002);
}

#[tokio::test]
async fn broken_fragmentation_closes_with_1002() {
    for bytes in [
        masked(b"orphan", MORE, true),
        [masked(b"a", TEXT, false), masked(b"b", TEXT, true)].concat(),
        masked(b"x", OpCode::Control(Control::Ping), false),
        masked(&[0; 126], OpCode::Control(Control::Ping), true),
    ] {
        let mut p = peer();
        p.client.write_all(&bytes).await.unwrap();
        assert!(p.reader.next().await.is_err(), "{bytes:?}");
        assert_eq!(close_code(p).await, 1002);
    }
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let mut p = peer();
    p.client
        .write_all(&masked(b"\xff\xfe", TEXT, true))
        .await
        .unwrap();
    assert!(p.reader.next().await.is_err());
    assert_eq!(close_code(p).await, 1007);
}

#[tokio::test]
async fn a_close_frame_ends_the_stream_and_its_code_is_echoed() {
    let mut p = peer();
    let payload = [&1001u16.to_be_bytes()[..], b"bye"].concat();
    p.client
        .write_all(&masked(&payload, OpCode::Control(Control::Close), true))
        .await
        .unwrap();
    assert!(matches!(p.reader.next().await.unwrap(), Frame::Eof));
    assert_eq!(close_code(p).await, 1001);
}

#[tokio::test]
async fn bytes_sent_after_the_handshake_are_read_first() {
    let leftover = BytesMut::from(&masked(b"early", TEXT, true)[..]);
    let (_client, mut reader, _out) = reader(leftover);
    assert!(reader.has_buffered());
    assert_eq!(line(reader.try_next().unwrap().unwrap()), "early");
}
