//! A test client of the gateway's JSON lines: every wait is bounded by
//! [`WAIT`] and fails the test when it runs out.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Generous: the suites must pass on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct LineClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl LineClient {
    pub async fn connect(addr: SocketAddr) -> LineClient {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Self::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> LineClient {
        let (reader, writer) = stream.into_split();
        LineClient {
            reader: BufReader::new(reader),
            writer,
        }
    }

    pub async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .await
            .expect("write to gateway");
    }

    /// The next line, or `None` at EOF or on a connection error.
    pub async fn recv_line_within(&mut self, wait: Duration) -> Option<String> {
        let mut line = String::new();
        match tokio::time::timeout(wait, self.reader.read_line(&mut line)).await {
            Ok(Ok(0) | Err(_)) => None,
            Ok(Ok(_)) => Some(line),
            Err(_) => panic!("no message from the gateway within {wait:?}"),
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
        let mut line = String::new();
        if let Ok(result) = tokio::time::timeout(wait, self.reader.read_line(&mut line)).await {
            match result {
                Ok(0) => panic!("connection closed; expected it to stay open and silent"),
                Ok(_) => panic!("unexpected message: {line}"),
                Err(err) => panic!("connection error: {err}"),
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
