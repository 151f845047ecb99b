//! The CLI's one connection to the gateway (contract §5): connect (to the
//! first of several addresses that accepts), authenticate, send a message,
//! read a message, over either transport (`transport`: `host:port` is JSON
//! lines over TCP, `ws://host:port/ws` is WebSocket; `tls://` and `wss://`
//! the same over TLS, `tls`). `Session` builds requests and events on it;
//! the benches use it as it is, reading each message in place.

mod tls;
mod transport;
mod websocket;

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::net::TcpStream;

pub use tls::trust;
use transport::Transport;
pub use transport::{WS_PATH, over_websocket};

/// Enough for any reply the benches expect; longer messages still arrive
/// whole (the buffer grows to them).
pub const READ_BUFFER: usize = 1024;
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The fields of a reply a caller checks most.
#[derive(Debug, Deserialize)]
pub struct Reply {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default)]
    pub applied: Option<bool>,
    #[serde(default)]
    pub code: Option<String>,
    /// Why a login failed (`auth_response`) or an error's text.
    #[serde(default, alias = "message")]
    pub error: Option<String>,
}

pub struct Conn {
    transport: Transport,
    /// The last message read (a line keeps its `\n` here).
    line: Vec<u8>,
}

impl Conn {
    /// Connects to the first of the comma-separated `addrs` that accepts
    /// and authenticates; `device` names this device to the gateway. The
    /// `auth_response` stays readable as [`Conn::last_line`].
    pub async fn open(addrs: &str, token: &str, device: Option<&str>) -> anyhow::Result<Self> {
        Self::open_with(addrs, token, device, READ_BUFFER).await
    }

    /// [`Conn::open`] with `read_buffer` bytes to read into (both transports):
    /// larger for connections that read floods of events.
    pub async fn open_with(
        addrs: &str,
        token: &str,
        device: Option<&str>,
        read_buffer: usize,
    ) -> anyhow::Result<Self> {
        let mut conn = Conn {
            transport: transport::connect_any(addrs, read_buffer).await?,
            line: Vec::new(),
        };
        let auth = match device {
            Some(device) => {
                serde_json::json!({"type": "auth", "data": {"token": token, "device": device}})
            }
            None => serde_json::json!({"type": "auth", "data": {"token": token}}),
        };
        let reply = conn.request(&auth.to_string()).await?;
        if reply.kind != "auth_response" || reply.success != Some(true) {
            let why = reply.error.as_deref().unwrap_or(conn.last_line());
            bail!("authentication failed: {why}");
        }
        Ok(conn)
    }

    /// A lines connection to `addr` with no authentication, for a server
    /// that asks none (the fan-out bench's floor); `read_buffer` as
    /// [`Conn::open_with`].
    pub async fn connect_plain(addr: &str, read_buffer: usize) -> anyhow::Result<Self> {
        Ok(Conn {
            transport: transport::connect_any(addr, read_buffer).await?,
            line: Vec::new(),
        })
    }

    /// Sends one message and reads the next one (the reply, when nothing else
    /// is pushed meanwhile).
    pub async fn request(&mut self, line: &str) -> anyhow::Result<Reply> {
        self.send(line).await?;
        if self.read_line(REPLY_TIMEOUT).await?.is_none() {
            bail!("no reply from the gateway within {REPLY_TIMEOUT:?}");
        }
        serde_json::from_slice(&self.line)
            .with_context(|| format!("not a message: {}", self.last_line()))
    }

    /// Sends one message (a line, or a text frame).
    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.transport.send(line).await
    }

    /// The next message (a line, or a text frame) within `timeout` (`None`
    /// when none came); the gateway closing the connection is an error.
    pub async fn read_line(&mut self, timeout: Duration) -> anyhow::Result<Option<&str>> {
        // Cancel-safe: a read cut off by the timeout continues next time.
        match tokio::time::timeout(timeout, self.transport.read(&mut self.line)).await {
            Err(_) => Ok(None),
            Ok(read) => {
                if !read? {
                    bail!("the gateway closed the connection");
                }
                Ok(Some(self.last_line()))
            }
        }
    }

    /// The next message, however long it takes; `None` when the gateway closed
    /// the connection.
    pub async fn next_line(&mut self) -> anyhow::Result<Option<&str>> {
        let open = self.transport.read(&mut self.line).await?;
        Ok(open.then(|| self.last_line()))
    }

    /// False once the gateway has closed the connection; waits for nothing
    /// (a message that already arrived is read and dropped).
    pub async fn still_open(&mut self) -> bool {
        self.read_line(Duration::ZERO).await.is_ok()
    }

    /// The last message read, without a line end.
    pub fn last_line(&self) -> &str {
        std::str::from_utf8(&self.line)
            .unwrap_or_default()
            .trim_end()
    }

    /// The bare socket of a TCP connection, once nothing more is buffered
    /// (idle connections that should hold no buffers). A WebSocket
    /// connection has none to give.
    pub fn into_stream(self) -> anyhow::Result<TcpStream> {
        self.transport.into_tcp()
    }
}
