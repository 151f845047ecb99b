//! What the benches read from `/proc`: a process's resident memory and the
//! CPU time it has used, and the CPU time the whole machine has used.

use std::time::Duration;

use anyhow::{Context, bail};

/// The kernel reports CPU time in `/proc` in ticks of `USER_HZ`, which Linux
/// fixes at 100 per second for user space.
fn ticks(n: u64) -> Duration {
    Duration::from_millis(n.saturating_mul(10))
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// CPU time (user + system) a process has used so far; this one when `None`.
pub fn cpu_time(pid: Option<u32>) -> anyhow::Result<Duration> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    cpu_time_at(&path)
}

/// CPU time (user + system) the calling thread has used so far.
pub fn thread_cpu_time() -> anyhow::Result<Duration> {
    cpu_time_at("/proc/thread-self/stat")
}

fn cpu_time_at(path: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    // utime and stime are fields 14 and 15 of stat(5); the rest starts at 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let (user, system) = field(11)
        .zip(field(12))
        .with_context(|| format!("no utime/stime in {path}"))?;
    Ok(ticks(user + system))
}

/// CPU time the whole machine has been busy, summed over its cores: every
/// state of the first line of `/proc/stat` but idle and I/O wait.
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let states: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = states[..] else {
        bail!("no cpu line in /proc/stat");
    };
    Ok(ticks(user + nice + system + irq + softirq + steal))
}

/// CPU time (user + system) one thread of this process has used so far, and
/// its name (`comm`, at most 15 bytes).
pub fn own_threads() -> anyhow::Result<Vec<(u32, String, Duration)>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread that exits between the listing and the reads is skipped.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(cpu) = stat_cpu(&stat) {
            threads.push((tid, comm.trim_end().to_owned(), cpu));
        }
    }
    Ok(threads)
}

/// Processes whose command line contains `needle` (e.g. the Postgres backends
/// of one database, whose title names it), with the CPU time each has used.
pub fn processes_matching(needle: &str) -> Vec<(u32, Duration)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            if !String::from_utf8_lossy(&cmdline).contains(needle) {
                return None;
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, stat_cpu(&stat)?))
        })
        .collect()
}

/// utime + stime of a `stat` line (process or thread).
fn stat_cpu(stat: &str) -> Option<Duration> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(ticks(field(11)? + field(12)?))
}
