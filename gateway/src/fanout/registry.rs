//! Who is connected and who listens where: user → connections (with the
//! user's shared rate limiter), `manga:<id>` → connections, `global` →
//! connections. Concurrent maps sharded by key, so connects, subscriptions and
//! the fan-out of one event never wait on one lock.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use dashmap::DashMap;
use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::outbound::Conn;
use crate::auth::Identity;
use crate::protocol::Channel;

/// A direct rate limiter on the standard monotonic clock: 40 bytes, where
/// governor's default (quanta) clock makes it 72, and every connection holds
/// one in its task besides its user's shared one.
pub type Limiter =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

pub fn limiter(quota: Quota) -> Limiter {
    RateLimiter::direct_with_clock(quota, MonotonicClock)
}

struct UserEntry {
    username: Option<Arc<str>>,
    conns: Vec<Conn>,
    limiter: Arc<Limiter>,
}

pub struct Registry {
    users: DashMap<Arc<str>, UserEntry>,
    mangas: DashMap<i64, HashMap<u64, Conn>>,
    global: DashMap<u64, Conn>,
    user_quota: Quota,
}

/// Why a connection receives an event: its label's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    User,
    Manga,
    Global,
}

impl Audience {
    pub const ALL: [Audience; 3] = [Audience::User, Audience::Manga, Audience::Global];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Audience::User => "user",
            Audience::Manga => "manga",
            Audience::Global => "global",
        }
    }
}

pub fn quota(per_sec: u32, burst: u32) -> Quota {
    let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_sec).allow_burst(burst)
}

impl Registry {
    pub fn new(user_quota: Quota) -> Self {
        Self {
            users: DashMap::new(),
            mangas: DashMap::new(),
            global: DashMap::new(),
            user_quota,
        }
    }

    /// Adds an authenticated connection; returns the user's shared limiter.
    pub fn join(&self, identity: &Identity, conn: &Conn) -> Arc<Limiter> {
        let mut entry = self
            .users
            .entry(identity.user_id.clone())
            .or_insert_with(|| UserEntry {
                username: None,
                conns: Vec::with_capacity(1),
                limiter: Arc::new(limiter(self.user_quota)),
            });
        if identity.username.is_some() {
            entry.username.clone_from(&identity.username);
        }
        entry.conns.push(conn.clone());
        entry.limiter.clone()
    }

    /// Removes a connection and its subscriptions.
    pub fn leave(&self, user_id: &str, conn_id: u64, subscriptions: &[Channel]) {
        for channel in subscriptions {
            self.unsubscribe(*channel, conn_id);
        }
        self.users.remove_if_mut(user_id, |_, entry| {
            entry.conns.retain(|c| c.id() != conn_id);
            entry.conns.is_empty()
        });
    }

    pub fn subscribe(&self, channel: Channel, conn: &Conn) {
        match channel {
            Channel::Global => {
                self.global.insert(conn.id(), conn.clone());
            }
            Channel::Manga(id) => {
                self.mangas
                    .entry(id)
                    .or_default()
                    .insert(conn.id(), conn.clone());
            }
        }
    }

    pub fn unsubscribe(&self, channel: Channel, conn_id: u64) {
        match channel {
            Channel::Global => {
                self.global.remove(&conn_id);
            }
            Channel::Manga(id) => {
                self.mangas.remove_if_mut(&id, |_, subs| {
                    subs.remove(&conn_id);
                    subs.is_empty()
                });
            }
        }
    }

    /// Every authenticated connection.
    pub fn for_each_connection(&self, mut f: impl FnMut(&Conn)) {
        for entry in &self.users {
            for conn in &entry.conns {
                f(conn);
            }
        }
    }

    /// True while any authenticated connection is registered.
    pub fn has_connections(&self) -> bool {
        !self.users.is_empty()
    }

    /// The name last seen in a token of `user_id`, while it is connected.
    pub fn username(&self, user_id: &str) -> Option<Arc<str>> {
        self.users.get(user_id)?.username.clone()
    }

    /// Visits the recipients of a change of `user_id`'s `manga_id` in the
    /// order of the labels a connection gets: the user's connections, then
    /// (unless `private`) `manga:<id>` and `global` subscribers. A connection
    /// may come more than once; the caller delivers it once.
    pub fn recipients(
        &self,
        user_id: &str,
        manga_id: i64,
        private: bool,
        mut visit: impl FnMut(Audience, &Conn),
    ) {
        if let Some(user) = self.users.get(user_id) {
            for conn in &user.conns {
                visit(Audience::User, conn);
            }
        }
        if private {
            return;
        }
        if let Some(subs) = self.mangas.get(&manga_id) {
            for conn in subs.values() {
                visit(Audience::Manga, conn);
            }
        }
        for entry in &self.global {
            visit(Audience::Global, entry.value());
        }
    }
}
