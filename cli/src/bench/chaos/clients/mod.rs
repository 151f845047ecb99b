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

mod connection;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::history::{At, DeviceLog, ErrorEvent, Outcome, Record, SessionEnd, Via};
use crate::client::session::{Message, Session};
use connection::FIRST_BACKOFF;

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
}
