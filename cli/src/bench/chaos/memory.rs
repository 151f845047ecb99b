//! Resident memory of every gateway and replica process, sampled once a
//! second from `/proc/<pid>/status` (`VmRSS`), and the leak bound: a process
//! that lived past its warm-up must end at most `factor` × its RSS at the
//! end of the warm-up plus a fixed slack.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::bench::procfs;

const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One run of one process (a restart is a new instance).
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub pid: u32,
    pub started: Instant,
    pub ended: Option<Instant>,
    /// (when, KiB)
    pub samples: Vec<(Instant, u64)>,
}

#[derive(Debug, Default)]
pub struct MemoryLog {
    instances: Vec<Instance>,
}

pub type SharedMemoryLog = Arc<Mutex<MemoryLog>>;

impl MemoryLog {
    pub fn started(&mut self, name: String, pid: u32) {
        self.instances.push(Instance {
            name,
            pid,
            started: Instant::now(),
            ended: None,
            samples: Vec::new(),
        });
        self.sample();
    }

    /// Takes a last sample (when it can still be read) and stops sampling it.
    pub fn ending(&mut self, pid: u32) {
        for instance in self.instances.iter_mut().filter(|i| i.pid == pid) {
            if instance.ended.is_none() {
                if let Ok(kib) = procfs::rss_kib(pid) {
                    instance.samples.push((Instant::now(), kib));
                }
                instance.ended = Some(Instant::now());
            }
        }
    }

    pub fn sample(&mut self) {
        let now = Instant::now();
        for instance in self.instances.iter_mut().filter(|i| i.ended.is_none()) {
            if let Ok(kib) = procfs::rss_kib(instance.pid) {
                instance.samples.push((now, kib));
            }
        }
    }

    pub fn instances(&self) -> Vec<Instance> {
        self.instances.clone()
    }
}

pub fn lock(log: &SharedMemoryLog) -> std::sync::MutexGuard<'_, MemoryLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Samples every live instance once a second until aborted.
pub fn spawn_sampler(log: SharedMemoryLog) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        loop {
            every.tick().await;
            lock(&log).sample();
        }
    })
}

/// The leak bound: `end ≤ factor × warm + slack`.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// How long after the later of its start and the load's start a
    /// process's warm sample is taken.
    pub warmup: Duration,
    pub factor: u64,
    pub slack_kib: u64,
}

/// One instance checked against the bound.
#[derive(Debug, Clone)]
pub struct Checked {
    pub name: String,
    pub pid: u32,
    pub lived: Duration,
    pub warm_kib: Option<u64>,
    pub end_kib: Option<u64>,
    pub max_kib: u64,
    /// None: it did not live past its warm-up, so it is not checked.
    pub ok: Option<bool>,
}

impl Bound {
    pub fn limit_kib(&self, warm_kib: u64) -> u64 {
        warm_kib * self.factor + self.slack_kib
    }

    pub fn check(&self, instances: &[Instance], load_started: Instant) -> Vec<Checked> {
        instances
            .iter()
            .map(|instance| {
                let warm_at = instance.started.max(load_started) + self.warmup;
                let warm = instance
                    .samples
                    .iter()
                    .find(|(at, _)| *at >= warm_at)
                    .map(|&(_, kib)| kib);
                let end = instance.samples.last().map(|&(_, kib)| kib);
                let last_at = instance.samples.last().map_or(instance.started, |s| s.0);
                let ok = match (warm, end) {
                    (Some(warm), Some(end)) => Some(end <= self.limit_kib(warm)),
                    _ => None,
                };
                Checked {
                    name: instance.name.clone(),
                    pid: instance.pid,
                    lived: last_at.saturating_duration_since(instance.started),
                    warm_kib: warm,
                    end_kib: end,
                    max_kib: instance.samples.iter().map(|s| s.1).max().unwrap_or(0),
                    ok,
                }
            })
            .collect()
    }
}
