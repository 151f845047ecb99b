//! The CLI's one JSON-lines connection to the gateway (contract §5): connect
//! (to the first of several addresses that accepts), authenticate, send a
//! line, read a line. `Session` builds requests and events on it; the
//! benches use it as it is, reading each line in place without copying.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Enough for any reply the benches expect; larger lines just grow it.
const READ_BUFFER: usize = 1024;
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
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: Vec<u8>,
    /// A read was cut off by its timeout mid-line: keep what it got.
    partial: bool,
}

impl Conn {
    /// Connects to the first of the comma-separated `addrs` that accepts
    /// and authenticates; `device` names this device to the gateway. The
    /// `auth_response` stays readable as [`Conn::last_line`].
    pub async fn open(addrs: &str, token: &str, device: Option<&str>) -> anyhow::Result<Self> {
        let stream = connect_any(addrs).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let mut conn = Conn {
            reader: BufReader::with_capacity(READ_BUFFER, read),
            writer,
            line: Vec::new(),
            partial: false,
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

    /// Sends one line and reads the next one (the reply, when nothing else
    /// is pushed meanwhile).
    pub async fn request(&mut self, line: &str) -> anyhow::Result<Reply> {
        self.send(line).await?;
        if self.read_line(REPLY_TIMEOUT).await?.is_none() {
            bail!("no reply from the gateway within {REPLY_TIMEOUT:?}");
        }
        serde_json::from_slice(&self.line)
            .with_context(|| format!("not a message: {}", self.last_line()))
    }

    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        self.writer.write_all(&out).await?;
        Ok(())
    }

    /// The next line within `timeout` (`None` when none came); the gateway
    /// closing the connection is an error.
    pub async fn read_line(&mut self, timeout: Duration) -> anyhow::Result<Option<&str>> {
        match tokio::time::timeout(timeout, self.fill_line()).await {
            Err(_) => Ok(None),
            Ok(read) => {
                if !read? {
                    bail!("the gateway closed the connection");
                }
                Ok(Some(self.last_line()))
            }
        }
    }

    /// The next line, however long it takes; `None` when the gateway closed
    /// the connection.
    pub async fn next_line(&mut self) -> anyhow::Result<Option<&str>> {
        Ok(self.fill_line().await?.then(|| self.last_line()))
    }

    /// Reads into `line` up to its `\n`; false at the end of the stream.
    /// Cancel-safe: a cut-off read continues where it stopped.
    async fn fill_line(&mut self) -> std::io::Result<bool> {
        if !self.partial {
            self.line.clear();
        }
        self.partial = true;
        self.reader.read_until(b'\n', &mut self.line).await?;
        if !self.line.ends_with(b"\n") {
            return Ok(false);
        }
        self.partial = false;
        Ok(true)
    }

    /// The last line read, without its line end.
    pub fn last_line(&self) -> &str {
        std::str::from_utf8(&self.line)
            .unwrap_or_default()
            .trim_end()
    }

    /// The bare socket, once nothing more is buffered (idle connections
    /// that should hold no buffers).
    pub fn into_stream(self) -> anyhow::Result<TcpStream> {
        let Conn { reader, writer, .. } = self;
        if !reader.buffer().is_empty() {
            bail!("unexpected bytes after the auth reply");
        }
        Ok(reader.into_inner().reunite(writer)?)
    }
}

/// The first of the comma-separated `addrs` that accepts a connection.
async fn connect_any(addrs: &str) -> anyhow::Result<TcpStream> {
    let mut failures = Vec::new();
    for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => {
                tracing::debug!(addr, %err, "gateway unreachable; trying the next");
                failures.push(format!("{addr}: {err}"));
            }
        }
    }
    if failures.is_empty() {
        bail!("no gateway address given");
    }
    bail!("connecting to the gateway: {}", failures.join("; "))
}
