//! The same-run reference of the fan-out and idle curves: Redis Pub/Sub on
//! a private `redis-server` started here (the machine's own Redis is left
//! alone), N subscriber connections on one channel, one publisher, messages
//! the size of a gateway event; and idle client connections.
//!
//! The publisher and idle clients are the `redis` crate's. A subscriber reads
//! RESP itself, into an 8 KiB buffer without a per-message allocation, as a
//! gateway subscriber reads its lines: with the crate's pub/sub connection
//! (a driver task, a channel and a parsed value per message) this process,
//! not Redis, was the limit.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::deliveries::{Arrivals, Counts};
use super::processes::{Process, loopback, on_path, wait_until};
use super::publish::Sink;
use crate::client::conn::REPLY_TIMEOUT;

const CHANNEL: &str = "bench-fanout";
/// What a subscriber reads into at a time (as a gateway subscriber).
const READ_BUFFER: usize = 8 * 1024;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors `redis-server` keeps for itself beside its clients.
const SERVER_FDS: usize = 32;

/// A `redis-server` of this bench: no persistence, on a free loopback port.
pub struct RedisServer {
    process: Process,
    addr: std::net::SocketAddr,
    url: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Accepting `clients` connections (it needs that many open files more).
    pub async fn start(clients: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mangahub-bench-redis")
            .tempdir()?;
        let addr = loopback()?;
        let max_clients = match super::conns::open_files_limit() {
            Some(limit) => clients.min(usize::try_from(limit)?.saturating_sub(SERVER_FDS)),
            None => clients,
        };
        let args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            &max_clients.to_string(),
            "--dir",
            &dir.path().display().to_string(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let log: PathBuf = dir.path().join("redis.log");
        let mut process =
            Process::spawn("redis-server".into(), &on_path("redis-server")?, &args, log)?;
        let url = format!("redis://{addr}/");
        let client = redis::Client::open(url.as_str())?;
        let answers = || {
            let client = client.clone();
            async move {
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            }
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        wait_until(&mut process, deadline, "did not answer PING", answers).await?;
        Ok(Self {
            process,
            addr,
            url,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    fn client(&self) -> anyhow::Result<redis::Client> {
        Ok(redis::Client::open(self.url.as_str())?)
    }

    /// A connection that waits for replies as long as a gateway client does
    /// (the crate's default gives up after half a second, which a PUBLISH to
    /// thousands of subscribers behind a pipeline can take).
    async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REPLY_TIMEOUT))
            .set_response_timeout(Some(REPLY_TIMEOUT));
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    pub async fn stop(self) {
        self.process.stop(EXIT_TIMEOUT).await;
    }

    /// `count` connections that each answered a PING, then sit idle.
    pub async fn idle_connections(
        &self,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<Vec<MultiplexedConnection>> {
        let client = self.client()?;
        let connected = connect_many(count, concurrency, move || {
            let client = client.clone();
            async move {
                let mut conn = Self::connect(&client).await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                Ok::<_, anyhow::Error>(conn)
            }
        })
        .await?;
        Ok(connected)
    }
}

/// `count` results of `connect`, at most `concurrency` at a time.
async fn connect_many<T, F, Fut>(
    count: usize,
    concurrency: usize,
    connect: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let permits = permits.clone();
            let connecting = connect();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await?;
                connecting.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(count);
    for (i, task) in tasks.into_iter().enumerate() {
        out.push(
            task.await?
                .with_context(|| format!("redis connection {i}"))?,
        );
    }
    Ok(out)
}

/// Subscribers of the channel, each reading in its own task; closed when
/// dropped.
pub struct RedisSubscribers {
    pub counts: Arc<Counts>,
    tasks: Vec<JoinHandle<()>>,
}

impl RedisSubscribers {
    pub async fn start(
        server: &RedisServer,
        count: usize,
        concurrency: usize,
        arrivals: Arc<Arrivals>,
    ) -> anyhow::Result<Self> {
        let addr = server.addr;
        let subscribed = connect_many(count, concurrency, move || subscribe(addr)).await?;
        let counts = Arc::new(Counts::new(count));
        let tasks = subscribed
            .into_iter()
            .enumerate()
            .map(|(i, stream)| tokio::spawn(receive(stream, counts.clone(), arrivals.clone(), i)))
            .collect();
        Ok(Self { counts, tasks })
    }
}

/// A connection subscribed to the channel (its confirmation read).
async fn subscribe(addr: std::net::SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let command = format!(
        "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{CHANNEL}\r\n",
        CHANNEL.len()
    );
    stream.write_all(command.as_bytes()).await?;
    // *3 $9 subscribe $<len> <channel> :1
    let expected = format!(
        "*3\r\n$9\r\nsubscribe\r\n${}\r\n{CHANNEL}\r\n:1\r\n",
        CHANNEL.len()
    );
    let mut reply = vec![0; expected.len()];
    stream.read_exact(&mut reply).await?;
    if reply != expected.as_bytes() {
        bail!("SUBSCRIBE answered {:?}", String::from_utf8_lossy(&reply));
    }
    Ok(stream)
}

impl Drop for RedisSubscribers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Counts the messages a subscriber receives until its connection ends.
async fn receive(mut stream: TcpStream, counts: Arc<Counts>, arrivals: Arc<Arrivals>, i: usize) {
    let mut buffer = vec![0; READ_BUFFER];
    let (mut filled, mut received) = (0, 0);
    loop {
        if filled == buffer.len() {
            // One message longer than the buffer: make room for it.
            buffer.resize(buffer.len() * 2, 0);
        }
        match stream.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
        let mut start = 0;
        while let Some((payload, used)) = next_message(&buffer[start..filled]) {
            received += 1;
            counts.set(i, received, payload.len());
            if arrivals.tracking()
                && let Some(n) = message_number(payload)
            {
                arrivals.arrived(n);
            }
            start += used;
        }
        buffer.copy_within(start..filled, 0);
        filled -= start;
    }
    counts.close(i);
}

/// The payload of the first complete `message` push in `bytes` (RESP2:
/// `*3 $7 message $<n> <channel> $<m> <payload>`), and the bytes it took.
fn next_message(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let (head, mut at) = line(bytes, 0)?;
    if head != b"*3" {
        return None;
    }
    let mut payload = None;
    for _ in 0..3 {
        let (header, body_at) = line(bytes, at)?;
        let len: usize = std::str::from_utf8(header.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        payload = Some(bytes.get(body_at..body_at + len)?);
        if bytes.get(body_at + len..body_at + len + 2)? != b"\r\n" {
            return None;
        }
        at = body_at + len + 2;
    }
    Some((payload?, at))
}

/// The line at `at` without its CRLF, and where the next one starts.
fn line(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = at + bytes.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((&bytes[at..end], end + 2))
}

const NUMBER_PREFIX: &[u8] = br#"{"n":"#;

/// `{"n":<number>,"pad":"…"}`, `bytes` long (or just longer).
fn payload(number: i64, bytes: usize) -> String {
    let head = format!(r#"{{"n":{number},"pad":""#);
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

fn message_number(payload: &[u8]) -> Option<i64> {
    let rest = payload.strip_prefix(NUMBER_PREFIX)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

type Publish = Pin<Box<dyn Future<Output = redis::RedisResult<i64>> + Send>>;

/// PUBLISHes over one connection, replies pipelined.
pub struct RedisSink {
    conn: MultiplexedConnection,
    pending: FuturesUnordered<Publish>,
    /// Each message's size.
    pub bytes: usize,
}

impl RedisSink {
    pub async fn open(server: &RedisServer, bytes: usize) -> anyhow::Result<Self> {
        Ok(Self {
            conn: RedisServer::connect(&server.client()?).await?,
            pending: FuturesUnordered::new(),
            bytes,
        })
    }
}

impl Sink for RedisSink {
    async fn send(&mut self, message: i64) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let body = payload(message, self.bytes);
        self.pending.push(Box::pin(async move {
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(body)
                .query_async::<i64>(&mut conn)
                .await
        }));
        Ok(())
    }

    async fn ack(&mut self) -> anyhow::Result<bool> {
        let receivers = self
            .pending
            .next()
            .await
            .context("no PUBLISH in flight")??;
        Ok(receivers > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::{message_number, next_message, payload};

    #[test]
    fn a_push_yields_its_payload_once_complete() {
        let push = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        assert_eq!(next_message(push), Some((&b"hello"[..], push.len())));
        assert_eq!(next_message(&push[..push.len() - 1]), None);
        assert_eq!(next_message(b""), None);
    }

    #[test]
    fn a_payload_has_the_size_asked_and_names_its_message() {
        let body = payload(1234, 160);
        assert_eq!(body.len(), 160);
        assert_eq!(message_number(body.as_bytes()), Some(1234));
        assert_eq!(message_number(payload(7, 0).as_bytes()), Some(7));
    }
}
