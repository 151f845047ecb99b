//! Delivery of progress events to connections. One `WatchProgress` stream
//! (see `watch`) feeds `Fanout::deliver`, which serializes each event once per
//! channel label and shares those bytes among all recipients' outbound queues.
//! Nothing here awaits: a recipient that cannot keep up is dropped, never
//! waited for.

pub mod outbound;
mod registry;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use mangahub_proto::v1 as pb;

pub use outbound::flusher::Flushers;
pub use outbound::{CloseCode, Conn, Framing, IntoWriter, Outbound, Outgoing, Writer};
pub use registry::{Limiter, limiter, quota};

use crate::auth::Identity;
use crate::protocol::{Channel, MangaRef, Record, ServerMessage, SystemCode, cursor};
use registry::{Audience, Registry};

pub struct Fanout {
    registry: Registry,
    /// Prefix of this gateway's `origin` tags: unique per process, so that
    /// events caused by another gateway are never mistaken for ours.
    origin_prefix: String,
    event_seq: AtomicU64,
}

impl Fanout {
    /// `user_quota`: the rate limit shared by all connections of a user.
    pub fn new(user_quota: governor::Quota) -> Self {
        Self {
            registry: Registry::new(user_quota),
            origin_prefix: format!("gw-{:016x}-", rand::random::<u64>()),
            event_seq: AtomicU64::new(0),
        }
    }

    /// Adds an authenticated connection; returns the user's shared limiter.
    pub fn join(&self, identity: &Identity, conn: &Conn) -> Arc<Limiter> {
        self.registry.join(identity, conn)
    }

    /// Removes a connection and its subscriptions.
    pub fn leave(&self, user_id: &str, conn_id: u64, subscriptions: &[Channel]) {
        self.registry.leave(user_id, conn_id, subscriptions);
    }

    pub fn subscribe(&self, channel: Channel, conn: &Conn) {
        self.registry.subscribe(channel, conn);
    }

    pub fn unsubscribe(&self, channel: Channel, conn_id: u64) {
        self.registry.unsubscribe(channel, conn_id);
    }

    /// True while any authenticated connection is here.
    pub fn has_connections(&self) -> bool {
        self.registry.has_connections()
    }

    /// Every authenticated connection.
    pub fn for_each_connection(&self, f: impl FnMut(&Conn)) {
        self.registry.for_each_connection(f);
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
        let notice = Outgoing::new(ServerMessage::system(code, message).to_line());
        self.registry.for_each_connection(|conn| {
            conn.push_control(&notice);
        });
    }

    /// Delivers one event: to the user's other connections (`user`) and,
    /// unless private, to `manga:<id>` and `global` subscribers; each
    /// connection at most once, the originating one never. Each label's
    /// line is serialized once, when its first recipient needs it.
    pub fn deliver(&self, event: &pb::ProgressEvent) {
        let started = Instant::now();
        let Some(progress) = &event.progress else {
            return;
        };
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let origin = self.origin_conn(&event.origin);
        let cursor = cursor(&event.cursor);
        // Each label's message, with its WebSocket frame once one is needed.
        let mut lines: [Option<Outgoing>; 3] = Default::default();
        let mut counts = [0u64; 3];
        let mut send = |audience: Audience, conn: &Conn, make: &dyn Fn(Audience) -> Bytes| {
            if Some(conn.id()) == origin || !conn.first_delivery(seq) {
                return;
            }
            let at = audience.index();
            let line = lines[at].get_or_insert_with(|| Outgoing::new(make(audience)));
            if conn.push(line) {
                counts[at] += 1;
            }
        };

        match pb::EventKind::try_from(event.kind) {
            Ok(pb::EventKind::Updated) => {
                let Some(mut record) = Record::from_pb(progress) else {
                    tracing::warn!(user_id = %progress.user_id, "malformed progress event");
                    return;
                };
                let timestamp = chrono::Utc::now().timestamp();
                record.username = self
                    .registry
                    .username(&progress.user_id)
                    .map(|name| name.to_string());
                let make = |audience: Audience| {
                    let label = match audience {
                        Audience::User => "user".to_owned(),
                        Audience::Manga => format!("manga:{}", progress.manga_id),
                        Audience::Global => "global".to_owned(),
                    };
                    ServerMessage::ProgressBroadcast {
                        channel: &label,
                        cursor,
                        data: &record,
                        timestamp,
                    }
                    .to_line()
                };
                self.registry.recipients(
                    &progress.user_id,
                    progress.manga_id,
                    event.private,
                    |audience, conn| send(audience, conn, &make),
                );
            }
            Ok(pb::EventKind::Deleted) => {
                let make = |_: Audience| {
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
                // Deletes go to the user's own connections only.
                self.registry.recipients(
                    &progress.user_id,
                    progress.manga_id,
                    true,
                    |audience, conn| {
                        send(audience, conn, &make);
                    },
                );
            }
            _ => return,
        }

        for (audience, count) in Audience::ALL.into_iter().zip(counts) {
            if count > 0 {
                metrics::counter!("gateway_fanout_deliveries_total", "channel" => audience.label())
                    .increment(count);
            }
        }
        metrics::histogram!("gateway_fanout_latency_seconds").record(started.elapsed());
    }
}
