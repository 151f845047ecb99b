//! What the benches read about a process from `/proc`: its resident memory
//! and the CPU time it has used.

use std::time::Duration;

use anyhow::Context;

/// The kernel reports CPU time in `/proc/<pid>/stat` in ticks of `USER_HZ`,
/// which Linux fixes at 100 per second for user space.
const TICK: Duration = Duration::from_millis(10);

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
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    // utime and stime are fields 14 and 15 of stat(5); the rest starts at 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u32>().ok());
    let (user, system) = ticks(11)
        .zip(ticks(12))
        .with_context(|| format!("no utime/stime in {path}"))?;
    Ok(TICK * (user + system))
}
