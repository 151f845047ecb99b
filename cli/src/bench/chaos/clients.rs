//! The devices: each one a TCP client of either gateway, as a real app
//! would be. It writes `progress_update`s at a steady rate to its user's
//! records, hears its user's other devices, and when its connection breaks
//! it reconnects (to either gateway) and catches up with `sync` from the
//! last cursor it holds. Everything it sees goes into its [`DeviceLog`].
//!
//! Its cursor comes only from events and `sync` results, and only once the
//! session's catch-up succeeded: an ack's cursor can be ahead of events of
//! other devices still on their way, and an event's cursor during a failed
//! catch-up would skip what that catch-up was for.
//!
//! The run ends in phases the orchestrator steps through: writers stop
//! (`Settle`: connected and caught up), every device sends one marker
//! update and waits for the markers of its user's other devices (`Mark`;
//! a marker arrives after everything acknowledged before it), then a final
//! `sync` and `list_progress` (`Final`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::history::{
    At, Attempt, DeviceLog, ErrorEvent, Outcome, Receipt, Record, Session as SessionLog,
    SessionEnd, Via,
};
use crate::client::session::{Message, Session};

/// A reply slower than this closes the connection. The gateway answers
/// within its gRPC timeout (5 s) even when a replica is down.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const SYNC_LIMIT: u32 = 500;
const LIST_LIMIT: u32 = 1000;
/// Each device's marker record: outside the ids the writers use.
pub const MARKER_MANGA: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Write,
    Settle,
    Mark,
    Final,
}

/// What all devices share: where to connect, who they are, and the
/// orchestrator's phase.
pub struct Plan {
    pub gateways: Vec<SocketAddr>,
    /// One token per user.
    pub tokens: Vec<String>,
    /// Per user: the next chapter to write, so that every attempt of a user
    /// has its own chapter.
    pub chapters: Vec<AtomicI64>,
    pub devices_per_user: usize,
    /// Updates per second per device.
    pub rate: f64,
    /// Records per user the writers spread over (manga ids 1..=mangas).
    pub mangas: i64,
    pub seed: u64,
    pub start: Instant,
    /// After this, a device stops trying to connect and ends unfinished.
    pub give_up: Instant,
    pub phase: watch::Receiver<Phase>,
    /// Devices settled (connected and caught up) after the writers stopped.
    pub settled: AtomicUsize,
    /// Devices that have their marker acknowledged and heard the others'.
    pub marked: AtomicUsize,
}

/// Runs device `device` of user `user` until the final phase is done.
pub async fn run(plan: Arc<Plan>, user: usize, device: usize) -> DeviceLog {
    let global = user * plan.devices_per_user + device;
    let mut dev = Device {
        user,
        device,
        rng: StdRng::seed_from_u64(plan.seed ^ (global as u64 + 1).wrapping_mul(0x9e37_79b9)),
        phase: plan.phase.clone(),
        next_gateway: global % plan.gateways.len(),
        plan,
        conn: None,
        cursor: None,
        known: HashMap::new(),
        backoff: FIRST_BACKOFF,
        log: DeviceLog {
            user,
            device,
            ..DeviceLog::default()
        },
    };
    dev.write().await;
    if dev.settle().await && dev.mark().await {
        dev.finish().await;
    }
    dev.close(SessionEnd::Abandoned);
    dev.log
}

struct Device {
    user: usize,
    device: usize,
    plan: Arc<Plan>,
    rng: StdRng,
    phase: watch::Receiver<Phase>,
    next_gateway: usize,
    conn: Option<Conn>,
    /// The last cursor of a caught-up session: what the next catch-up starts from.
    cursor: Option<String>,
    /// The newest version of each record this device has seen.
    known: HashMap<i64, Record>,
    backoff: Duration,
    log: DeviceLog,
}

struct Conn {
    session: Session,
    caught_up: bool,
    /// A `RESYNC` arrived: the next catch-up starts from scratch.
    resync: bool,
}

/// The connection broke or timed out (already recorded and closed).
struct Broken;

/// What woke a device that waits.
enum Wake {
    Tick,
    Read(Box<anyhow::Result<Option<Message>>>),
    Phase,
}

#[derive(Deserialize)]
struct SyncResult {
    changes: Vec<Change>,
    cursor: String,
    more: bool,
}

#[derive(Deserialize)]
struct Change {
    op: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct ListPage {
    items: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct SystemData {
    code: String,
}

impl Device {
    fn now(&self) -> At {
        self.plan.start.elapsed()
    }

    fn error(&mut self, op: &'static str, kind: impl Into<String>) {
        let at = self.now();
        self.log.errors.push(ErrorEvent {
            at,
            op,
            kind: kind.into(),
        });
    }

    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Writes at the plan's rate until the writers are stopped.
    async fn write(&mut self) {
        let period = Duration::from_secs_f64(1.0 / self.plan.rate.max(0.01));
        let first = tokio::time::Instant::now() + period.mul_f64(self.rng.random::<f64>());
        let mut ticker = tokio::time::interval_at(first, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while self.phase() == Phase::Write {
            if !self.ready().await {
                return;
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let wake = tokio::select! {
                _ = ticker.tick() => Wake::Tick,
                read = conn.session.next() => Wake::Read(Box::new(read)),
                _ = self.phase.changed() => Wake::Phase,
            };
            match wake {
                Wake::Tick => {
                    let manga = self.rng.random_range(1..=self.plan.mangas);
                    let _ = self.update(manga).await;
                }
                Wake::Read(read) => self.on_read(*read),
                Wake::Phase => {}
            }
        }
    }

    /// Connected and caught up, then reports it and listens until `Mark`.
    async fn settle(&mut self) -> bool {
        if !self.ready().await {
            return false;
        }
        self.plan.settled.fetch_add(1, Ordering::SeqCst);
        self.listen_until(Phase::Mark, |_| false).await
    }

    /// Sends this device's marker (until acknowledged), waits for the
    /// markers of its user's other devices, reports, listens until `Final`.
    async fn mark(&mut self) -> bool {
        let marker = MARKER_MANGA + self.device as i64;
        loop {
            if !self.ready().await {
                return false;
            }
            if let Ok(Outcome::Acked { .. }) = self.update(marker).await {
                break;
            }
            self.pause().await;
        }
        let others: Vec<usize> = (0..self.plan.devices_per_user)
            .filter(|&d| d != self.device)
            .collect();
        let heard_all = |dev: &Device| {
            others
                .iter()
                .all(|&d| dev.known.contains_key(&(MARKER_MANGA + d as i64)))
        };
        if !self.listen_until(Phase::Final, &heard_all).await {
            return false;
        }
        if heard_all(self) {
            self.plan.marked.fetch_add(1, Ordering::SeqCst);
        }
        if !self.listen_until(Phase::Final, |_| false).await {
            return false;
        }
        self.log.markers_missing = others
            .into_iter()
            .filter(|&d| !self.known.contains_key(&(MARKER_MANGA + d as i64)))
            .collect();
        true
    }

    /// The final `sync` from the device's cursor and a full `list_progress`.
    async fn finish(&mut self) {
        loop {
            if !self.ready().await {
                return;
            }
            // `ready` caught up from the cursor; sync once more so that
            // anything still on its way is in. Its records go to the
            // convergence check only, not to the session's deliveries: they
            // must not stand in for an event the session missed.
            let from = self.cursor.clone();
            if self.sync_from(from, Via::Final).await.is_ok() {
                break;
            }
        }
        self.log.synced = Some(self.known.clone());
        if let Ok(listed) = self.list_all().await {
            self.log.listed = Some(listed);
            self.close(SessionEnd::Final);
        }
    }

    /// Every page of `list_progress`; error replies are retried.
    async fn list_all(&mut self) -> Result<HashMap<i64, Record>, Broken> {
        let mut listed = HashMap::new();
        let mut page_cursor: Option<String> = None;
        loop {
            if Instant::now() > self.plan.give_up {
                return Err(Broken);
            }
            let data = match &page_cursor {
                Some(c) => serde_json::json!({"limit": LIST_LIMIT, "cursor": c}),
                None => serde_json::json!({"limit": LIST_LIMIT}),
            };
            let reply = self
                .request("list", "list_progress", &data.to_string())
                .await?;
            let page = match (reply.kind.as_str(), &reply.data) {
                ("progress_list", Some(data)) => serde_json::from_str::<ListPage>(data.get()).ok(),
                _ => None,
            };
            let Some(page) = page else {
                self.error("list", reply.code.unwrap_or(reply.kind));
                self.pause().await;
                continue;
            };
            for item in &page.items {
                match Record::parse(item.get()) {
                    Ok(record) => {
                        listed.insert(record.manga, record);
                    }
                    Err(_) => self.error("list", "bad record"),
                }
            }
            match page.next_cursor {
                Some(next) => page_cursor = Some(next),
                None => return Ok(listed),
            }
        }
    }

    /// Reads events until the phase reaches `until` or `done` holds; false
    /// when the device gave up reconnecting.
    async fn listen_until(&mut self, until: Phase, done: impl Fn(&Device) -> bool) -> bool {
        while self.phase() < until && !done(self) {
            if !self.ready().await {
                return false;
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let wake = tokio::select! {
                read = conn.session.next() => Wake::Read(Box::new(read)),
                _ = self.phase.changed() => Wake::Phase,
            };
            if let Wake::Read(read) = wake {
                self.on_read(*read);
            }
        }
        true
    }

    /// Connected, authenticated and caught up; false once past `give_up`.
    async fn ready(&mut self) -> bool {
        loop {
            if Instant::now() > self.plan.give_up {
                return false;
            }
            match &self.conn {
                None => {
                    if !self.connect().await {
                        self.pause().await;
                    }
                }
                Some(conn) if !conn.caught_up => {
                    let from = if conn.resync {
                        None
                    } else {
                        self.cursor.clone()
                    };
                    if self.sync_from(from, Via::Sync).await.is_ok() {
                        self.backoff = FIRST_BACKOFF;
                        return true;
                    }
                }
                Some(_) => return true,
            }
        }
    }

    async fn connect(&mut self) -> bool {
        let gateway = self.next_gateway;
        // Back from a break, a device lands on either gateway.
        self.next_gateway = self.rng.random_range(0..self.plan.gateways.len());
        let addr = self.plan.gateways[gateway].to_string();
        let token = &self.plan.tokens[self.user];
        let name = format!("d{}", self.device);
        match tokio::time::timeout(CONNECT_TIMEOUT, Session::connect(&addr, token, Some(&name)))
            .await
        {
            Ok(Ok(session)) => {
                let opened = self.now();
                self.log.sessions.push(SessionLog {
                    gateway,
                    opened,
                    closed: opened,
                    end: SessionEnd::Abandoned,
                    receipts: Vec::new(),
                    resyncs: Vec::new(),
                });
                self.conn = Some(Conn {
                    session,
                    caught_up: false,
                    resync: false,
                });
                true
            }
            Ok(Err(err)) => {
                let kind = if format!("{err:#}").contains("authentication failed") {
                    "auth failed"
                } else {
                    "connect failed"
                };
                self.error("connect", kind);
                false
            }
            Err(_) => {
                self.error("connect", "timeout");
                false
            }
        }
    }

    /// Waits the current backoff (jittered) and doubles it.
    async fn pause(&mut self) {
        let jitter = self.backoff.mul_f64(self.rng.random::<f64>() * 0.5);
        tokio::time::sleep(self.backoff + jitter).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// `sync` from `from` (None: the full state) through every page, its
    /// records received `via` a catch-up or the final sync. Error
    /// replies are retried on the same connection; an expired cursor starts
    /// over from scratch. On success the session is caught up.
    async fn sync_from(&mut self, mut from: Option<String>, via: Via) -> Result<(), Broken> {
        loop {
            if Instant::now() > self.plan.give_up {
                return Err(Broken);
            }
            let data = match &from {
                Some(c) => serde_json::json!({"cursor": c, "limit": SYNC_LIMIT}),
                None => serde_json::json!({"limit": SYNC_LIMIT}),
            };
            let reply = self.request("sync", "sync", &data.to_string()).await?;
            let result = match (reply.kind.as_str(), &reply.data) {
                ("sync_result", Some(data)) => serde_json::from_str::<SyncResult>(data.get()),
                ("error", _) => {
                    let code = reply.code.unwrap_or_default();
                    if code == "CURSOR_EXPIRED" {
                        from = None;
                    }
                    self.error("sync", code);
                    self.pause().await;
                    continue;
                }
                _ => {
                    self.error("sync", format!("unexpected {}", reply.kind));
                    self.pause().await;
                    continue;
                }
            };
            let Ok(result) = result else {
                self.error("sync", "bad reply");
                self.pause().await;
                continue;
            };
            for change in &result.changes {
                match (change.op.as_str(), &change.data) {
                    ("updated", Some(data)) => match Record::parse(data.get()) {
                        Ok(record) => self.receive(record, via),
                        Err(_) => self.error("sync", "bad record"),
                    },
                    _ => self.error("sync", format!("unexpected op {}", change.op)),
                }
            }
            from = Some(result.cursor);
            if !result.more {
                break;
            }
        }
        self.cursor = from;
        if let Some(conn) = &mut self.conn {
            conn.caught_up = true;
            conn.resync = false;
        }
        Ok(())
    }

    /// One `progress_update` of `manga`, recorded with its outcome.
    async fn update(&mut self, manga: i64) -> Result<Outcome, Broken> {
        let chapter = self.plan.chapters[self.user].fetch_add(1, Ordering::SeqCst);
        let page = self.rng.random_range(0..100);
        let data = format!(r#"{{"manga_id":{manga},"chapter":{chapter},"page":{page}}}"#);
        let sent = self.now();
        let reply = self.request("update", "progress_update", &data).await;
        let outcome = match reply {
            Err(Broken) => match self.log.sessions.last().map(|s| s.end) {
                Some(SessionEnd::TimedOut) => Outcome::TimedOut,
                _ => Outcome::Dropped,
            },
            Ok(reply) if reply.kind == "progress_ack" => {
                match reply.data.as_deref().map(|d| Record::parse(d.get())) {
                    Some(Ok(record)) => {
                        self.merge(&record);
                        Outcome::Acked {
                            applied: reply.applied.unwrap_or(false),
                            record,
                            cursor: reply.cursor,
                            at: self.now(),
                        }
                    }
                    _ => {
                        self.error("update", "bad ack");
                        Outcome::Refused
                    }
                }
            }
            Ok(reply) => {
                let code = reply.code.unwrap_or(reply.kind);
                self.error("update", code);
                Outcome::Refused
            }
        };
        self.log.attempts.push(Attempt {
            manga,
            chapter,
            sent,
            outcome: outcome.clone(),
        });
        match outcome {
            Outcome::Dropped | Outcome::TimedOut => Err(Broken),
            _ => Ok(outcome),
        }
    }

    /// A request on the open connection; events that arrive meanwhile are
    /// queued by the session and handled by the next read.
    async fn request(
        &mut self,
        op: &'static str,
        kind: &str,
        data: &str,
    ) -> Result<Message, Broken> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Broken);
        };
        match tokio::time::timeout(REPLY_TIMEOUT, conn.session.request(kind, Some(data))).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => {
                self.error(op, "connection dropped");
                self.close(SessionEnd::Dropped);
                Err(Broken)
            }
            Err(_) => {
                self.error(op, "timeout");
                self.close(SessionEnd::TimedOut);
                Err(Broken)
            }
        }
    }

    fn on_read(&mut self, read: anyhow::Result<Option<Message>>) {
        match read {
            Ok(Some(message)) => self.handle(message),
            Ok(None) | Err(_) => {
                self.error("read", "connection dropped");
                self.close(SessionEnd::Dropped);
            }
        }
    }

    /// A pushed line (or a late reply, ignored).
    fn handle(&mut self, message: Message) {
        match message.kind.as_str() {
            "progress_broadcast" => {
                let Some(Ok(record)) = message.data.as_deref().map(|d| Record::parse(d.get()))
                else {
                    self.error("read", "bad event");
                    return;
                };
                self.receive(record, Via::Live);
                if let Some(conn) = &self.conn
                    && conn.caught_up
                    && message.cursor.is_some()
                {
                    self.cursor = message.cursor;
                }
            }
            "system" => {
                let code = message
                    .data
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<SystemData>(d.get()).ok())
                    .map_or_else(|| "?".to_owned(), |d| d.code);
                if code == "RESYNC" {
                    let at = self.now();
                    if let Some(session) = self.log.sessions.last_mut() {
                        session.resyncs.push(at);
                    }
                    if let Some(conn) = &mut self.conn {
                        conn.caught_up = false;
                        conn.resync = true;
                    }
                } else {
                    self.error("read", format!("system {code}"));
                }
            }
            "error" => {
                let code = message.code.unwrap_or_else(|| "?".into());
                self.error("read", code);
            }
            kind if message.is_event() => self.error("read", format!("unexpected event {kind}")),
            // A reply to a request that timed out on an earlier connection.
            _ => {}
        }
    }

    fn receive(&mut self, record: Record, via: Via) {
        self.merge(&record);
        if via == Via::Final {
            return;
        }
        if let Some(session) = self.log.sessions.last_mut() {
            session.receipts.push(Receipt { record, via });
        }
    }

    fn merge(&mut self, record: &Record) {
        match self.known.get(&record.manga) {
            Some(mine) if mine.version >= record.version => {}
            _ => {
                self.known.insert(record.manga, record.clone());
            }
        }
    }

    fn close(&mut self, end: SessionEnd) {
        if self.conn.take().is_some() {
            let at = self.now();
            if let Some(session) = self.log.sessions.last_mut() {
                session.closed = at;
                session.end = end;
            }
        }
    }
}
