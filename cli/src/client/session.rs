//! One authenticated connection speaking the gateway's protocol (contract
//! §5; JSON lines or WebSocket text frames, see `conn`), as people and
//! scripts use it: requests with ids answered in turn, events queued while a
//! reply is awaited.

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::conn::{Conn, REPLY_TIMEOUT};

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

pub struct Session {
    conn: Conn,
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
        let conn = Conn::open(addrs, token, device).await?;
        let reply = Message::parse(conn.last_line())?;
        Ok(Session {
            conn,
            next_id: 1,
            pending: Default::default(),
            user_id: reply.user_id.unwrap_or_default(),
        })
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
        self.conn.send(line).await
    }

    async fn read(&mut self) -> anyhow::Result<Option<Message>> {
        match self.conn.next_line().await? {
            Some(line) => Message::parse(line).map(Some),
            None => Ok(None),
        }
    }
}
