//! Delivery of progress events to connections. One `WatchProgress` stream
//! (see `watch`) feeds `Fanout::deliver`, which serializes each event once per
//! channel label and shares those bytes among all recipients' outbound queues.
//! Nothing here awaits: a recipient that cannot keep up is dropped, never
//! waited for.

pub mod flusher;
pub mod outbound;
pub mod registry;
pub mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use mangahub_proto::v1 as pb;

pub use flusher::Flushers;
pub use outbound::{BoxWriter, Outbound};
pub use registry::{Conn, Limiter, Registry};

use crate::protocol::{MangaRef, Record, ServerMessage, SystemCode, cursor};

pub struct Fanout {
    pub registry: Registry,
    /// Prefix of this gateway's `origin` tags: unique per process, so that
    /// events caused by another gateway are never mistaken for ours.
    origin_prefix: String,
    event_seq: AtomicU64,
}

impl Fanout {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            origin_prefix: format!("gw-{:016x}-", rand::random::<u64>()),
            event_seq: AtomicU64::new(0),
        }
    }

    /// The `origin` this gateway puts on calls made for `conn_id`.
    pub fn origin(&self, conn_id: u64) -> String {
        format!("{}{conn_id}", self.origin_prefix)
    }

    fn origin_conn(&self, origin: &str) -> Option<u64> {
        origin.strip_prefix(&self.origin_prefix)?.parse().ok()
    }

    /// Queues `system` for every authenticated connection.
    pub fn broadcast_system(&self, code: SystemCode, message: &str) {
        let line = ServerMessage::system(code, message).to_line();
        self.registry.for_each_connection(|conn| {
            conn.push_control(line.clone());
        });
    }

    /// Delivers one event: to the user's other connections (`user`) and,
    /// unless private, to `manga:<id>` and `global` subscribers; each
    /// connection at most once, the originating one never.
    pub fn deliver(&self, event: &pb::ProgressEvent) {
        let started = Instant::now();
        let Some(progress) = &event.progress else {
            return;
        };
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let origin = self.origin_conn(&event.origin);
        let cursor = cursor(&event.cursor);
        let mut counts = [0u64; 3];
        let mut send =
            |conn: &Conn, line: &mut Option<Bytes>, make: &dyn Fn() -> Bytes, slot: usize| {
                if Some(conn.id()) == origin || !conn.first_delivery(seq) {
                    return;
                }
                let line = line.get_or_insert_with(make).clone();
                if conn.push(line) {
                    counts[slot] += 1;
                }
            };

        match pb::EventKind::try_from(event.kind) {
            Ok(pb::EventKind::Updated) => {
                let Some(mut record) = Record::from_pb(progress) else {
                    tracing::warn!(user_id = %progress.user_id, "malformed progress event");
                    return;
                };
                let timestamp = chrono::Utc::now().timestamp();
                let user = self.registry.users.get(progress.user_id.as_str());
                record.username = user
                    .as_ref()
                    .and_then(|u| u.username.as_deref())
                    .map(str::to_owned);
                let make = |channel: &str| {
                    ServerMessage::ProgressBroadcast {
                        channel,
                        cursor,
                        data: &record,
                        timestamp,
                    }
                    .to_line()
                };
                if let Some(user) = user {
                    let mut line = None;
                    for conn in &user.conns {
                        send(conn, &mut line, &|| make("user"), 0);
                    }
                }
                if !event.private {
                    if let Some(subs) = self.registry.mangas.get(&progress.manga_id) {
                        let label = format!("manga:{}", progress.manga_id);
                        let mut line = None;
                        for conn in subs.values() {
                            send(conn, &mut line, &|| make(&label), 1);
                        }
                    }
                    let mut line = None;
                    for conn in &self.registry.global {
                        send(conn.value(), &mut line, &|| make("global"), 2);
                    }
                }
            }
            Ok(pb::EventKind::Deleted) => {
                if let Some(user) = self.registry.users.get(progress.user_id.as_str()) {
                    let make = || {
                        ServerMessage::ProgressDeleted {
                            id: None,
                            channel: Some("user"),
                            cursor,
                            data: MangaRef {
                                manga_id: progress.manga_id,
                            },
                        }
                        .to_line()
                    };
                    let mut line = None;
                    for conn in &user.conns {
                        send(conn, &mut line, &make, 0);
                    }
                }
            }
            _ => return,
        }

        for (label, count) in ["user", "manga", "global"].into_iter().zip(counts) {
            if count > 0 {
                metrics::counter!("gateway_fanout_deliveries_total", "channel" => label)
                    .increment(count);
            }
        }
        metrics::histogram!("gateway_fanout_latency_seconds").record(started.elapsed());
    }
}
