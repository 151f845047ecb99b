//! One authenticated connection speaking the gateway's JSON lines (contract §5).

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A server line, with `data` kept as raw JSON so chapters keep their exact text.
#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<Box<RawValue>>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub applied: Option<bool>,
    #[serde(default)]
    pub channel: Option<String>,
    /// The change's position (acks, deletes, events): pass it to `sync`.
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// The line as received, for `--json` output.
    #[serde(skip)]
    pub raw: String,
}

impl Message {
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let mut msg: Message = serde_json::from_str(line)
            .with_context(|| format!("server sent a line that is not a message: {line}"))?;
        msg.raw = line.to_owned();
        Ok(msg)
    }

    /// Pushed by the gateway rather than answering a request.
    pub fn is_event(&self) -> bool {
        self.channel.is_some() || self.kind == "system"
    }

    fn answers(&self, id: u64) -> bool {
        self.id
            .as_ref()
            .is_some_and(|raw| raw.get() == id.to_string())
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

pub struct Session {
    writer: OwnedWriteHalf,
    lines: Lines<BufReader<OwnedReadHalf>>,
    next_id: u64,
    /// Events that arrived while waiting for a reply, oldest first.
    pending: std::collections::VecDeque<Message>,
    pub user_id: String,
}

impl Session {
    /// Connects and authenticates; `device` names this device to the gateway.
    /// `addrs` may list several gateways, comma-separated: the first that
    /// accepts the connection is used (the others are failovers).
    pub async fn connect(addrs: &str, token: &str, device: Option<&str>) -> anyhow::Result<Self> {
        let stream = connect_any(addrs).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let mut session = Session {
            writer,
            lines: BufReader::new(read).lines(),
            next_id: 1,
            pending: Default::default(),
            user_id: String::new(),
        };
        let auth = match device {
            Some(device) => {
                serde_json::json!({"type": "auth", "data": {"token": token, "device": device}})
            }
            None => serde_json::json!({"type": "auth", "data": {"token": token}}),
        };
        session.send_line(&auth.to_string()).await?;
        let reply = session
            .read()
            .await?
            .context("the gateway closed the connection during auth")?;
        match (reply.kind.as_str(), reply.success) {
            ("auth_response", Some(true)) => {
                session.user_id = reply.user_id.unwrap_or_default();
                Ok(session)
            }
            _ => bail!(
                "authentication failed: {}",
                reply.error.or(reply.message).unwrap_or(reply.raw)
            ),
        }
    }

    /// Sends `{"type", "id", "data"}` and returns the reply carrying that id.
    /// `data` is JSON text (so chapters go out exactly as typed).
    pub async fn request(&mut self, kind: &str, data: Option<&str>) -> anyhow::Result<Message> {
        let id = self.next_id;
        self.next_id += 1;
        let line = match data {
            Some(data) => format!(r#"{{"type":"{kind}","id":{id},"data":{data}}}"#),
            None => format!(r#"{{"type":"{kind}","id":{id}}}"#),
        };
        self.send_line(&line).await?;
        let wait = async {
            loop {
                match self.read().await? {
                    Some(msg) if msg.answers(id) => return Ok(msg),
                    Some(msg) => self.pending.push_back(msg),
                    None => bail!("the gateway closed the connection"),
                }
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, wait)
            .await
            .context("no reply from the gateway")?
    }

    /// The next message: a queued event first, else the next line.
    pub async fn next(&mut self) -> anyhow::Result<Option<Message>> {
        match self.pending.pop_front() {
            Some(msg) => Ok(Some(msg)),
            None => self.read().await,
        }
    }

    pub async fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\n").await?;
        Ok(())
    }

    async fn read(&mut self) -> anyhow::Result<Option<Message>> {
        match self.lines.next_line().await? {
            Some(line) => Message::parse(&line).map(Some),
            None => Ok(None),
        }
    }
}
