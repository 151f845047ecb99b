//! The fault schedule: one fault at a time. Each fault kills one process
//! with SIGKILL, keeps it down for a while, starts it again and waits until
//! it serves; then a pause lets clients and the write-behind recover before
//! the next one. The sequence of targets, downtimes and pauses comes from the
//! seed alone: targets are dealt from a shuffled bag, so every target is hit
//! once before any is hit twice.

use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::history::At;
use super::topology::Topology;

/// The shortest time a killed process stays down.
const MIN_DOWN: Duration = Duration::from_secs(1);
/// A restart slower than this fails the run.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// Kinds of process the schedule may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Replica,
    Gateway,
    Redis,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Replica(usize),
    Gateway(usize),
    Redis,
    Postgres,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Replica(i) => write!(f, "replica-{}", letter(*i)),
            Target::Gateway(i) => write!(f, "gateway-{}", letter(*i)),
            Target::Redis => f.write_str("redis"),
            Target::Postgres => f.write_str("postgres"),
        }
    }
}

/// `a`, `b`, … for the numbered processes of a kind.
pub fn letter(i: usize) -> char {
    char::from(b'a' + u8::try_from(i % 26).unwrap_or(0))
}

/// The next fault: its target, how long it stays down, and the pause after it is back.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub target: Target,
    pub down: Duration,
    pub pause: Duration,
}

pub struct Schedule {
    rng: StdRng,
    targets: Vec<Target>,
    bag: Vec<Target>,
    max_down: Duration,
    pause: Duration,
}

impl Schedule {
    /// Faults on the processes of `kinds`; a pause after each is uniform in
    /// `pause..=2 × pause`, a downtime uniform in 1 s..=`max_down`.
    pub fn new(
        seed: u64,
        kinds: &[Kind],
        replicas: usize,
        gateways: usize,
        max_down: Duration,
        pause: Duration,
    ) -> Self {
        let mut targets = Vec::new();
        for kind in [Kind::Replica, Kind::Gateway, Kind::Redis, Kind::Postgres] {
            if !kinds.contains(&kind) {
                continue;
            }
            match kind {
                Kind::Replica => targets.extend((0..replicas).map(Target::Replica)),
                Kind::Gateway => targets.extend((0..gateways).map(Target::Gateway)),
                Kind::Redis => targets.push(Target::Redis),
                Kind::Postgres => targets.push(Target::Postgres),
            }
        }
        Self {
            rng: StdRng::seed_from_u64(seed),
            targets,
            bag: Vec::new(),
            max_down: max_down.max(MIN_DOWN),
            pause,
        }
    }

    pub fn next_step(&mut self) -> Option<Step> {
        if self.bag.is_empty() {
            self.bag = self.targets.clone();
            self.bag.shuffle(&mut self.rng);
        }
        let target = self.bag.pop()?;
        let down = MIN_DOWN + (self.max_down - MIN_DOWN).mul_f64(self.rng.random::<f64>());
        let pause = self.pause + self.pause.mul_f64(self.rng.random::<f64>());
        Some(Step {
            target,
            down,
            pause,
        })
    }
}

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct Fault {
    pub target: Target,
    pub killed: At,
    /// When the new process was started.
    pub restarted: At,
    /// When it served again (gRPC SERVING, `/readyz`, accepting connections).
    pub back: At,
}

/// Runs the schedule from `first` on; a fault starts only if it can be back
/// (by its downtime) before `last`. Returns the faults that happened.
pub async fn run(
    topology: &mut Topology,
    schedule: &mut Schedule,
    start: Instant,
    first: Instant,
    last: Instant,
) -> anyhow::Result<Vec<Fault>> {
    tokio::time::sleep_until(first.into()).await;
    let mut faults = Vec::new();
    while let Some(step) = schedule.next_step() {
        if Instant::now() + step.down > last {
            break;
        }
        let killed = start.elapsed();
        topology.kill(step.target).await?;
        tokio::time::sleep(step.down).await;
        let restarted = start.elapsed();
        topology.start_target(step.target).await?;
        let back = start.elapsed();
        tracing::info!(fault = %step.target, down = ?step.down, restart = ?(back - restarted), "fault over");
        faults.push(Fault {
            target: step.target,
            killed,
            restarted,
            back,
        });
        tokio::time::sleep(step.pause).await;
    }
    Ok(faults)
}
