//! A test client of the gateway's protocol, over either transport: JSON
//! lines on TCP, or one message per text frame on the WebSocket port. The
//! same scenario code runs over both. Every wait is bounded by [`WAIT`] and
//! fails the test when it runs out.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// Generous: the suites must pass on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(15);

/// Which of the gateway's transports a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

pub struct LineClient {
    inner: Inner,
}

enum Inner {
    Tcp {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    },
    WebSocket {
        stream: Box<WebSocketStream<TcpStream>>,
        /// Bytes of `send_raw` not yet ended by a newline.
        pending: Vec<u8>,
    },
}

impl LineClient {
    /// A TCP client of the gateway's lines port.
    pub async fn connect(addr: SocketAddr) -> LineClient {
        Self::from_stream(tcp(addr).await)
    }

    /// A client of `addr` over `transport` (the WebSocket port's `/ws`).
    pub async fn connect_over(transport: Transport, addr: SocketAddr) -> LineClient {
        match transport {
            Transport::Tcp => Self::connect(addr).await,
            Transport::WebSocket => Self::connect_ws(addr).await,
        }
    }

    /// A WebSocket client of `ws://addr/ws`.
    pub async fn connect_ws(addr: SocketAddr) -> LineClient {
        Self::over_stream(Transport::WebSocket, tcp(addr).await).await
    }

    /// A client over a connected socket (a test may tune it first); over
    /// WebSocket, after the handshake for `/ws`.
    pub async fn over_stream(transport: Transport, stream: TcpStream) -> LineClient {
        if transport == Transport::Tcp {
            return Self::from_stream(stream);
        }
        let addr = stream.peer_addr().expect("peer address");
        let url = format!("ws://{addr}/ws");
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
            .await
            .expect("WebSocket handshake in time")
            .expect("WebSocket handshake");
        LineClient {
            inner: Inner::WebSocket {
                stream: Box::new(stream),
                pending: Vec::new(),
            },
        }
    }

    pub fn from_stream(stream: TcpStream) -> LineClient {
        let (reader, writer) = stream.into_split();
        LineClient {
            inner: Inner::Tcp {
                reader: BufReader::new(reader),
                writer,
            },
        }
    }

    pub async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes()).await;
    }

    /// Sends bytes as they are on TCP. On a WebSocket each line (ended by
    /// `\n`, a preceding `\r` dropped) goes as one text frame, so scenarios
    /// that pipeline or send odd lines mean the same on both transports;
    /// bytes after the last newline wait for the next call.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.inner {
            Inner::Tcp { writer, .. } => writer.write_all(bytes).await.expect("write to gateway"),
            Inner::WebSocket { stream, pending } => {
                pending.extend_from_slice(bytes);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let mut line: Vec<u8> = pending.drain(..=end).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    stream
                        .feed(text_frame(line))
                        .await
                        .expect("write to gateway");
                }
                stream.flush().await.expect("write to gateway");
            }
        }
    }

    /// Sends one WebSocket message (a raw frame, any payload and opcode).
    pub async fn send_frame(&mut self, frame: Frame) {
        match &mut self.inner {
            Inner::Tcp { .. } => panic!("a TCP client has no frames"),
            Inner::WebSocket { stream, .. } => stream
                .send(Message::Frame(frame))
                .await
                .expect("write to gateway"),
        }
    }

    /// The next message (a line, with its `\n`), or `None` at EOF, on a
    /// close frame or a connection error.
    pub async fn recv_line_within(&mut self, wait: Duration) -> Option<String> {
        match tokio::time::timeout(wait, self.next_line()).await {
            Ok(line) => line,
            Err(_) => panic!("no message from the gateway within {wait:?}"),
        }
    }

    async fn next_line(&mut self) -> Option<String> {
        match &mut self.inner {
            Inner::Tcp { reader, .. } => {
                let mut line = String::new();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(line),
                }
            }
            Inner::WebSocket { stream, .. } => loop {
                match stream.next().await? {
                    Ok(Message::Text(text)) => return Some(format!("{}\n", text.as_str())),
                    Ok(Message::Binary(bytes)) => {
                        panic!("the gateway sent a binary frame: {bytes:?}")
                    }
                    Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                    Ok(Message::Close(_)) | Err(_) => return None,
                }
            },
        }
    }

    /// How a WebSocket connection was closed: its close frame's code, once
    /// the gateway closed it (`None` if it closed without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        let Inner::WebSocket { stream, .. } = &mut self.inner else {
            panic!("a TCP client has no close code");
        };
        loop {
            let next = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("the gateway closes in time");
            match next {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    }

    pub async fn recv_line(&mut self) -> String {
        self.recv_line_within(WAIT)
            .await
            .expect("connection closed while waiting for a message")
    }

    pub async fn recv(&mut self) -> Value {
        let line = self.recv_line().await;
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("bad JSON {line:?}: {err}"))
    }

    pub async fn request(&mut self, message: Value) -> Value {
        self.send(message).await;
        self.recv().await
    }

    /// Waits for the next message of type `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let message = self.recv().await;
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Nothing arrives within `wait` (used only to prove an absence).
    pub async fn assert_silent(&mut self, wait: Duration) {
        if let Ok(line) = tokio::time::timeout(wait, self.next_line()).await {
            match line {
                None => panic!("connection closed; expected it to stay open and silent"),
                Some(line) => panic!("unexpected message: {line}"),
            }
        }
    }

    /// Reads until the gateway closes the connection; returns what came before.
    pub async fn until_closed(&mut self) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(line) = self.recv_line_within(WAIT).await {
            if let Ok(v) = serde_json::from_str(&line) {
                seen.push(v);
            }
        }
        seen
    }

    pub async fn update(&mut self, manga_id: i64, chapter: f64) -> Value {
        self.request(
            json!({"type": "progress_update", "data": {"manga_id": manga_id, "chapter": chapter}}),
        )
        .await
    }

    /// A `sync` (cursor and limit optional); the reply, whatever it is.
    pub async fn sync(&mut self, cursor: Option<&str>, limit: Option<u32>) -> Value {
        let mut data = json!({});
        if let Some(cursor) = cursor {
            data["cursor"] = json!(cursor);
        }
        if let Some(limit) = limit {
            data["limit"] = json!(limit);
        }
        self.request(json!({"type": "sync", "id": "s", "data": data}))
            .await
    }

    pub async fn subscribe(&mut self, data: Value) {
        let reply = self
            .request(json!({"type": "subscribe", "data": data}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }
}

async fn tcp(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// A text frame of any bytes (a test may send text that is not UTF-8).
fn text_frame(payload: Vec<u8>) -> Message {
    Message::Frame(Frame::message(
        Bytes::from(payload),
        OpCode::Data(Data::Text),
        true,
    ))
}
