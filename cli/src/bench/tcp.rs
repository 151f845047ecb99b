//! What the gateway benches share: the connection options, authenticated
//! connections opened many at a time, and one JSON line per request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Enough for any reply the benches expect; larger lines just grow it.
const READ_BUFFER: usize = 1024;

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Gateway address.
    #[arg(long, env = "MANGAHUB_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: String,
    /// Shared HS256 secret the gateway verifies tokens with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
}

/// The fields of a reply the benches look at.
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
}

/// One authenticated connection, each as its own user.
pub struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The last line read (with its `\n`), or the start of one a timed-out
    /// read left behind (`partial`), which the next read completes.
    line: Vec<u8>,
    partial: bool,
}

impl Conn {
    pub async fn open(addr: &str, token: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the gateway at {addr}"))?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let mut conn = Conn {
            reader: BufReader::with_capacity(READ_BUFFER, read),
            writer,
            line: Vec::new(),
            partial: false,
        };
        let auth = serde_json::json!({"type": "auth", "data": {"token": token}});
        let reply = conn.request(&auth.to_string()).await?;
        if reply.kind != "auth_response" || reply.success != Some(true) {
            bail!("authentication failed: {}", conn.last_line());
        }
        Ok(conn)
    }

    /// Sends one line (without its `\n`) and reads the next line back.
    pub async fn request(&mut self, line: &str) -> anyhow::Result<Reply> {
        self.request_raw(line).await?;
        serde_json::from_slice(&self.line)
            .with_context(|| format!("not a message: {}", self.last_line()))
    }

    /// Sends one line (without its `\n`) and returns the next line read
    /// back, unparsed and without its `\n`.
    pub async fn request_raw(&mut self, line: &str) -> anyhow::Result<&str> {
        self.send(line).await?;
        if self.read_line(REPLY_TIMEOUT).await?.is_none() {
            bail!("no reply from the gateway within {REPLY_TIMEOUT:?}");
        }
        Ok(self.last_line())
    }

    /// Sends one line (without its `\n`).
    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        self.writer.write_all(&out).await?;
        Ok(())
    }

    /// The next line the gateway sends (a reply or a pushed event), without
    /// its `\n`; `None` when none completes within `timeout` (a partly
    /// received line is kept for the next call).
    pub async fn read_line(&mut self, timeout: Duration) -> anyhow::Result<Option<&str>> {
        if !self.partial {
            self.line.clear();
        }
        self.partial = true;
        // `read_until` is cancel safe: what it read stays in `self.line`.
        match tokio::time::timeout(timeout, self.reader.read_until(b'\n', &mut self.line)).await {
            Err(_) => Ok(None),
            Ok(read) => {
                read?;
                if !self.line.ends_with(b"\n") {
                    bail!("the gateway closed the connection");
                }
                self.partial = false;
                Ok(Some(self.last_line()))
            }
        }
    }

    /// The last complete line read, without its `\n` (empty if not UTF-8).
    pub fn last_line(&self) -> &str {
        std::str::from_utf8(&self.line)
            .unwrap_or_default()
            .trim_end()
    }

    /// Keeps only the socket: an idle connection then costs this side nothing
    /// beyond the kernel's buffers.
    pub fn into_stream(self) -> anyhow::Result<TcpStream> {
        let Conn { reader, writer, .. } = self;
        if !reader.buffer().is_empty() {
            bail!("unexpected bytes after the auth reply");
        }
        Ok(reader.into_inner().reunite(writer)?)
    }
}

/// Opens `count` authenticated connections as users `<prefix>-<i>`,
/// `connect_concurrency` at a time; in order of `i`.
pub async fn open_many(
    args: &GatewayArgs,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<Conn>> {
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let permits = permits.clone();
            let addr = args.addr.clone();
            let token = crate::token::mint(
                &args.jwt_secret,
                &format!("{prefix}-{i}"),
                None,
                Duration::from_secs(3600),
            );
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await?;
                Conn::open(&addr, &token?).await
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    for (i, task) in tasks.into_iter().enumerate() {
        conns.push(task.await?.with_context(|| format!("connection {i}"))?);
    }
    Ok(conns)
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    open_files_limit_at("/proc/self/limits")
}

/// The soft limit on open files of another process (a child started here).
pub fn open_files_limit_of(pid: u32) -> Option<u64> {
    open_files_limit_at(&format!("/proc/{pid}/limits"))
}

fn open_files_limit_at(path: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(path).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A label for runs of this process, so users of different runs never collide.
pub fn run_id() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
