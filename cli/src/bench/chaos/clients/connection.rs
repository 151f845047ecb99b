//! A device's connection: (re)connecting to either gateway with backoff,
//! catching up with `sync`, requests with a reply timeout, and what it does
//! with each pushed line. Everything observed goes into the device's log.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Broken, Conn, Device};
use crate::bench::chaos::history::{
    Attempt, Outcome, Receipt, Record, Session as SessionLog, SessionEnd, Via,
};
use crate::client::replies::{self, SyncPage};
use crate::client::session::{Message, Session};

/// A reply slower than this closes the connection. The gateway answers
/// within its gRPC timeout (5 s) even when a replica is down.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const SYNC_LIMIT: u32 = 500;
const LIST_LIMIT: u32 = 1000;

/// Records are kept raw until `Record::parse` reads them.
type SyncResult = SyncPage<Box<RawValue>>;
type ListPage = replies::ListPage<Box<RawValue>>;

#[derive(Deserialize)]
struct SystemData {
    code: String,
}

impl Device {
    /// Every page of `list_progress`; error replies are retried.
    pub(super) async fn list_all(&mut self) -> Result<HashMap<i64, Record>, Broken> {
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

    /// Connected, authenticated and caught up; false once past `give_up`.
    pub(super) async fn ready(&mut self) -> bool {
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
    pub(super) async fn pause(&mut self) {
        let jitter = self.backoff.mul_f64(self.rng.random::<f64>() * 0.5);
        tokio::time::sleep(self.backoff + jitter).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// `sync` from `from` (None: the full state) through every page, its
    /// records received `via` a catch-up or the final sync. Error
    /// replies are retried on the same connection; an expired cursor starts
    /// over from scratch. On success the session is caught up.
    pub(super) async fn sync_from(
        &mut self,
        mut from: Option<String>,
        via: Via,
    ) -> Result<(), Broken> {
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
    pub(super) async fn update(&mut self, manga: i64) -> Result<Outcome, Broken> {
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

    pub(super) fn on_read(&mut self, read: anyhow::Result<Option<Message>>) {
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

    pub(super) fn close(&mut self, end: SessionEnd) {
        if self.conn.take().is_some() {
            let at = self.now();
            if let Some(session) = self.log.sessions.last_mut() {
                session.closed = at;
                session.end = end;
            }
        }
    }
}
