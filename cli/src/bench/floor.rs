//! The floor of the fan-out curves: a server that is nothing but `write(2)`
//! calls. `mangahub bench floor-server` (hidden; the sweep starts it as its
//! own process, so its CPU is its own, as Redis's) accepts subscriber
//! connections and publisher connections; for each line a publisher sends,
//! it writes that line to every subscriber with one blocking `write` each,
//! in order, then answers `ok`. With `--writers K`, K threads (the
//! publisher's reader and K - 1 others) each write to their own 1/K of the
//! subscribers.
//!
//! Its wire: newline-delimited lines. A connection's first line is its role,
//! `subscribe` (answered `subscribed`) or `publish`; nothing else is parsed.
//! The bench's subscribers read it with the gateway subscribers' own code
//! ([`Conn`] and the same receive loop), and the publisher sends lines shaped
//! and sized like the gateway's `progress_broadcast` events.
//!
//! Also here: the CPU cost of one bare loopback `write` of a message, the
//! unit the floor's server CPU per delivery is made of.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mangahub_model::Chapter;

use super::deliveries::Arrivals;
use super::fanout::{SUBSCRIBER_READ_BUFFER, Subscribers};
use super::processes::{Process, loopback, wait_until};
use super::procfs;
use super::publish::Sink;
use crate::client::conn::{Conn, REPLY_TIMEOUT};

const SUBSCRIBE: &str = "subscribe";
const SUBSCRIBED: &str = "subscribed";
const PUBLISH: &str = "publish";
const ACK: &[u8] = b"ok\n";
/// How long the server waits for a new connection's role line.
const ROLE_TIMEOUT: Duration = Duration::from_secs(10);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`bare_write_ns`] writes for.
const BARE_WRITE_TIME: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct FloorServerArgs {
    /// Where to accept subscribers and publishers.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Threads writing, each to its own 1/K of the subscribers.
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
}

/// `mangahub bench floor-server`: serves until killed.
pub fn run(args: &FloorServerArgs) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    serve(&listener, args.writers)
}

/// One writer's subscribers.
type Share = Mutex<Vec<TcpStream>>;

fn lock(share: &Share) -> MutexGuard<'_, Vec<TcpStream>> {
    share.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts connections on `listener` until it fails: subscribers go to the
/// writers in turn, each publisher gets a thread.
pub fn serve(listener: &TcpListener, writers: usize) -> anyhow::Result<()> {
    let writers = writers.max(1);
    let shares: Arc<Vec<Share>> = Arc::new((0..writers).map(|_| Mutex::default()).collect());
    // Writers 1..K: each a thread fed every line; writer 0 is the thread
    // reading the publisher.
    let mut helpers: Vec<Sender<Arc<[u8]>>> = Vec::new();
    for k in 1..writers {
        let (lines, received) = mpsc::channel();
        helpers.push(lines);
        let shares = shares.clone();
        std::thread::Builder::new()
            .name(format!("floor-writer-{k}"))
            .spawn(move || write_lines(&received, &shares[k]))?;
    }
    let helpers = Arc::new(helpers);
    let mut next = 0;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(Some((role, reader))) = role(&stream) else {
            continue;
        };
        match role.as_str() {
            SUBSCRIBE => {
                // Whether or not it hears back: a gone subscriber is dropped
                // at its first failed write.
                let _ = (&stream).write_all(format!("{SUBSCRIBED}\n").as_bytes());
                lock(&shares[next % writers]).push(stream);
                next += 1;
            }
            PUBLISH => {
                let (shares, helpers) = (shares.clone(), helpers.clone());
                std::thread::Builder::new()
                    .name("floor-publisher".into())
                    .spawn(move || publish(reader, stream, &shares[0], &helpers))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A new connection's first line, and the reader to go on with.
fn role(stream: &TcpStream) -> anyhow::Result<Option<(String, BufReader<TcpStream>)>> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(ROLE_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    stream.set_read_timeout(None)?;
    Ok(Some((line.trim_end().to_owned(), reader)))
}

/// Each line the publisher sends: to the other writers, to this thread's
/// share of the subscribers, then `ok` back.
fn publish(
    mut reader: BufReader<TcpStream>,
    mut publisher: TcpStream,
    share: &Share,
    helpers: &[Sender<Arc<[u8]>>],
) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !helpers.is_empty() {
            let shared: Arc<[u8]> = Arc::from(line.as_slice());
            for helper in helpers {
                let _ = helper.send(shared.clone());
            }
        }
        write_all(share, &line);
        if publisher.write_all(ACK).is_err() {
            return;
        }
    }
}

fn write_lines(lines: &Receiver<Arc<[u8]>>, share: &Share) {
    while let Ok(line) = lines.recv() {
        write_all(share, &line);
    }
}

/// One blocking `write` of `line` to each subscriber (more only when its
/// socket buffer is full), in order; a subscriber whose write fails is gone.
fn write_all(share: &Share, line: &[u8]) {
    lock(share).retain_mut(|subscriber| subscriber.write_all(line).is_ok());
}

/// A floor server of this bench, its own process.
pub struct FloorServer {
    process: Process,
    addr: SocketAddr,
    pub writers: usize,
    _dir: tempfile::TempDir,
}

impl FloorServer {
    /// `mangahub bench floor-server` (this executable) on a free loopback
    /// port, once it accepts connections.
    pub async fn start(writers: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mangahub-bench-floor")
            .tempdir()?;
        let addr = loopback()?;
        let exe = std::env::current_exe().context("locating the mangahub executable")?;
        let args: Vec<String> = [
            "bench",
            "floor-server",
            "--listen",
            &addr.to_string(),
            "--writers",
            &writers.to_string(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let log: PathBuf = dir.path().join("floor.log");
        let mut process = Process::spawn(format!("floor ({writers})"), &exe, &args, log)?;
        // A connection that closes without a role is dropped by the server.
        let accepting = || async move { tokio::net::TcpStream::connect(addr).await.is_ok() };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        wait_until(
            &mut process,
            deadline,
            "did not accept connections",
            accepting,
        )
        .await?;
        Ok(Self {
            process,
            addr,
            writers,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// "floor (1 writer)", "floor (2 writers)".
    pub fn name(&self) -> String {
        name(self.writers)
    }

    pub async fn stop(self) {
        self.process.stop(EXIT_TIMEOUT).await;
    }

    /// `count` subscribers, read as the gateway's are.
    pub async fn subscribers(
        &self,
        count: usize,
        concurrency: usize,
        arrivals: Arc<Arrivals>,
    ) -> anyhow::Result<Subscribers> {
        subscribe_many(&self.addr.to_string(), count, concurrency, arrivals).await
    }

    pub async fn sink(&self, bytes: usize) -> anyhow::Result<FloorSink> {
        FloorSink::open(&self.addr.to_string(), bytes).await
    }
}

pub fn name(writers: usize) -> String {
    let s = if writers == 1 { "" } else { "s" };
    format!("floor ({writers} writer{s})")
}

async fn subscribe_many(
    addr: &str,
    count: usize,
    concurrency: usize,
    arrivals: Arc<Arrivals>,
) -> anyhow::Result<Subscribers> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (permits, addr) = (permits.clone(), addr.to_owned());
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await?;
                let mut conn = Conn::connect_plain(&addr, SUBSCRIBER_READ_BUFFER).await?;
                conn.send(SUBSCRIBE).await?;
                match conn.read_line(REPLY_TIMEOUT).await? {
                    Some(SUBSCRIBED) => Ok(conn),
                    other => bail!("subscribing answered {other:?}"),
                }
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    for (i, task) in tasks.into_iter().enumerate() {
        conns.push(
            task.await?
                .with_context(|| format!("floor subscriber {i}"))?,
        );
    }
    Ok(Subscribers::from_conns(conns, 0, arrivals))
}

/// Publishes lines shaped as the gateway's events (a `progress_broadcast`
/// whose chapter is the message's number in hundredths), `bytes` long
/// without the newline.
pub struct FloorSink {
    conn: Conn,
    pub bytes: usize,
}

impl FloorSink {
    pub async fn open(addr: &str, bytes: usize) -> anyhow::Result<Self> {
        let mut conn = Conn::connect_plain(addr, crate::client::conn::READ_BUFFER).await?;
        conn.send(PUBLISH).await?;
        Ok(Self { conn, bytes })
    }
}

/// A broadcast-shaped line of message `number`, padded to `bytes`.
fn event(number: i64, bytes: usize) -> anyhow::Result<String> {
    let chapter = Chapter::from_hundredths(number)
        .map_err(|err| anyhow::anyhow!("chapter {number}: {err}"))?;
    let head = format!(
        r#"{{"type":"progress_broadcast","channel":"manga","data":{{"manga_id":1,"chapter":{chapter},"user_id":""#
    );
    let tail = r#""}}"#;
    let pad = bytes.saturating_sub(head.len() + tail.len());
    Ok(format!("{head}{}{tail}", "x".repeat(pad)))
}

impl Sink for FloorSink {
    async fn send(&mut self, message: i64) -> anyhow::Result<()> {
        let line = event(message, self.bytes)?;
        self.conn.send(&line).await
    }

    async fn ack(&mut self) -> anyhow::Result<bool> {
        match self.conn.read_line(REPLY_TIMEOUT).await? {
            Some("ok") => Ok(true),
            other => bail!("the floor server answered {other:?}"),
        }
    }
}

/// CPU ns of one blocking `write` of a `bytes`-long line to a loopback TCP
/// socket whose reader (another thread, 8 KiB reads) keeps up: writes for
/// about a second, CPU of the writing thread alone.
pub fn bare_write_ns(bytes: usize) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut writer = TcpStream::connect(listener.local_addr()?)?;
    writer.set_nodelay(true)?;
    let (mut reader, _) = listener.accept()?;
    let draining = std::thread::spawn(move || {
        let mut buffer = vec![0; 8 * 1024];
        while matches!(reader.read(&mut buffer), Ok(n) if n > 0) {}
    });
    let mut line = vec![b'x'; bytes.max(1)];
    if let Some(last) = line.last_mut() {
        *last = b'\n';
    }
    let measured = std::thread::spawn(move || -> anyhow::Result<f64> {
        let before = procfs::thread_cpu_time()?;
        let start = Instant::now();
        let mut writes = 0u64;
        while start.elapsed() < BARE_WRITE_TIME {
            for _ in 0..1024 {
                writer.write_all(&line)?;
            }
            writes += 1024;
        }
        let cpu = procfs::thread_cpu_time()? - before;
        Ok(cpu.as_nanos() as f64 / writes as f64)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the writing thread panicked"))?;
    let _ = draining.join();
    measured
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{FloorSink, event, serve, subscribe_many};
    use crate::bench::deliveries::Arrivals;
    use crate::bench::fanout::chapter_hundredths;
    use crate::bench::publish::Sink;

    #[test]
    fn an_event_has_the_size_asked_and_names_its_message() {
        let line = event(7650, 200).expect("an event");
        assert_eq!(line.len(), 200);
        assert!(line.contains("\"progress_broadcast\""));
        assert_eq!(chapter_hundredths(&line), Some(7650));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_line_reaches_every_subscriber_over_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = listener.local_addr().expect("its address").to_string();
        std::thread::spawn(move || serve(&listener, 2));
        let subscribers = subscribe_many(&addr, 5, 5, Arc::new(Arrivals::new(1)))
            .await
            .expect("subscribers");
        let mut sink = FloorSink::open(&addr, 180).await.expect("a publisher");
        for message in 1..=20 {
            sink.send(message).await.expect("sent");
        }
        for _ in 1..=20 {
            assert!(sink.ack().await.expect("acknowledged"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while subscribers.counts.received() < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(subscribers.counts.received(), 100);
        assert_eq!(subscribers.counts.message_bytes(), 180);
        assert_eq!(subscribers.counts.closed(), 0);
    }
}
