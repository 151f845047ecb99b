//! The client side of a gateway WebSocket (RFC 6455), lean enough for
//! thousands of bench subscribers: tungstenite builds the handshake request,
//! derives the accept key and encodes and parses frame headers; the rest is
//! slicing messages out of one read buffer. (tokio-tungstenite's stream cost
//! the fan-out bench about twice the CPU per message of a TCP line reader,
//! which made the bench, not the gateway, the limit of the comparison.)

use std::io::Cursor;

use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::generate_request;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use super::tls::{ReadIo, WriteIo};

/// A response head longer than this is not a gateway's.
const MAX_HEAD: usize = 8 * 1024;

pub struct WebSocket {
    reader: ReadIo,
    writer: WriteIo,
    buf: BytesMut,
    read_size: usize,
    /// The text of a fragmented message so far.
    partial: Vec<u8>,
}

impl WebSocket {
    /// Upgrades the connection of `reader` and `writer` to a WebSocket at
    /// `url`.
    pub async fn connect(
        url: &str,
        reader: ReadIo,
        mut writer: WriteIo,
        read_size: usize,
    ) -> anyhow::Result<Self> {
        let request = url.into_client_request()?;
        let (head, key) = generate_request(request)?;
        writer.write_all(&head).await?;
        let mut ws = Self {
            reader,
            writer,
            buf: BytesMut::with_capacity(read_size.max(1024)),
            read_size: read_size.max(256),
            partial: Vec::new(),
        };
        let end = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if ws.buf.len() > MAX_HEAD || ws.fill().await? == 0 {
                bail!("no WebSocket handshake (is this the gateway's WebSocket port?)");
            }
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        ws.buf.advance(end);
        let status = head.split_whitespace().nth(1).unwrap_or_default();
        if status != "101" {
            bail!("the WebSocket upgrade was refused: HTTP {status}");
        }
        let accept = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| value.trim().to_owned())
        });
        if accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
            bail!("the WebSocket handshake answered a wrong Sec-WebSocket-Accept");
        }
        Ok(ws)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < self.read_size {
            self.buf.reserve(self.read_size);
        }
        self.reader.read_buf(&mut self.buf).await
    }

    /// Sends one text message (masked, as a client must).
    pub async fn send(&mut self, message: &str) -> anyhow::Result<()> {
        self.send_frame(OpCode::Data(Data::Text), message.as_bytes())
            .await
    }

    async fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) -> anyhow::Result<()> {
        let header = FrameHeader {
            opcode,
            mask: Some(rand::random()),
            ..FrameHeader::default()
        };
        let mut out = Vec::with_capacity(14 + payload.len());
        Frame::from_payload(header, payload.to_vec().into()).format(&mut out)?;
        self.writer.write_all(&out).await?;
        Ok(())
    }

    /// Puts the next text message in `message`; false once the gateway
    /// closed. Cancel-safe: what was read stays buffered.
    pub async fn read(&mut self, message: &mut Vec<u8>) -> anyhow::Result<bool> {
        loop {
            while let Some((header, len, at)) = self.next_header()? {
                if self.buf.len() < at + len {
                    break;
                }
                self.buf.advance(at);
                let payload = self.buf.split_to(len);
                match header.opcode {
                    OpCode::Data(Data::Text | Data::Continue) => {
                        if !header.is_final {
                            self.partial.extend_from_slice(&payload);
                            continue;
                        }
                        message.clear();
                        if self.partial.is_empty() {
                            message.extend_from_slice(&payload);
                        } else {
                            message.append(&mut self.partial);
                            message.extend_from_slice(&payload);
                        }
                        return Ok(true);
                    }
                    OpCode::Control(Control::Ping) => {
                        self.send_frame(OpCode::Control(Control::Pong), &payload)
                            .await?;
                    }
                    OpCode::Control(Control::Close) => {
                        let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                        tracing::debug!(?code, "the gateway closed the WebSocket");
                        return Ok(false);
                    }
                    OpCode::Data(Data::Binary) => bail!("the gateway sent a binary message"),
                    _ => {}
                }
            }
            if self.fill().await.context("reading from the gateway")? == 0 {
                return Ok(false);
            }
        }
    }

    /// The next frame's header, its payload length and where the payload
    /// starts, once the header is buffered.
    fn next_header(&self) -> anyhow::Result<Option<(FrameHeader, usize, usize)>> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let Some((header, len)) = FrameHeader::parse(&mut cursor)? else {
            return Ok(None);
        };
        let at = usize::try_from(cursor.position())?;
        Ok(Some((header, usize::try_from(len)?, at)))
    }
}
