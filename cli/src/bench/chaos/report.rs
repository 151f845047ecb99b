//! The run's report: tables of the faults, acks, deliveries, convergence,
//! errors and memory, the details of every failed check, and the list of
//! hard failures that make the command exit non-zero.

use std::time::Duration;

use super::accounting::Accounts;
use super::faults::{Fault, letter};
use super::history::{DeviceLog, Record, SessionEnd};
use super::memory::{Bound, Checked};
use crate::bench::report::Table;

/// Errors this long after a fault's target is back still count as its own.
const FAULT_TAIL: Duration = Duration::from_secs(5);
/// Details printed per kind of failure.
const MAX_DETAILS: usize = 20;

pub struct Report<'a> {
    pub title: String,
    pub faults: &'a [Fault],
    pub logs: &'a [DeviceLog],
    pub accounts: &'a Accounts,
    pub memory: &'a [Checked],
    pub bound: Bound,
    pub everysec: bool,
    pub drained_in: Duration,
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn device(user: usize, device: usize) -> String {
    format!("u{user}/d{device}")
}

fn record(r: &Record) -> String {
    format!(
        "manga {} v{} chapter {} page {} {}",
        r.manga,
        r.version,
        r.chapter_cents as f64 / 100.0,
        r.page,
        r.status
    )
}

impl Report<'_> {
    pub fn tables(&self) -> Vec<Table> {
        vec![
            self.fault_table(),
            self.ack_table(),
            self.delivery_table(),
            self.convergence_table(),
            self.error_table(),
            self.memory_table(),
        ]
    }

    fn fault_table(&self) -> Table {
        let mut t = Table::new(
            "faults",
            format!("{}: faults (SIGKILL, one at a time)", self.title),
            &[
                "#",
                "target",
                "killed at s",
                "down s",
                "restart to serving s",
                "client errors until back + 5 s",
                "connections lost",
            ],
        );
        for (i, f) in self.faults.iter().enumerate() {
            let window = |at: Duration| at >= f.killed && at <= f.back + FAULT_TAIL;
            let errors = self
                .logs
                .iter()
                .flat_map(|l| &l.errors)
                .filter(|e| window(e.at))
                .count();
            let dropped = self
                .logs
                .iter()
                .flat_map(|l| &l.sessions)
                .filter(|s| s.end != SessionEnd::Final && window(s.closed))
                .count();
            t.row(vec![
                (i + 1).to_string(),
                f.target.to_string(),
                secs(f.killed),
                secs(f.restarted - f.killed),
                secs(f.back - f.restarted),
                errors.to_string(),
                dropped.to_string(),
            ]);
        }
        t
    }

    fn ack_table(&self) -> Table {
        let a = self.accounts;
        let mut t = Table::new(
            "acks",
            format!("{}: acknowledged updates against Postgres", self.title),
            &[
                "updates sent",
                "acked (applied)",
                "acked (not applied)",
                "error replies",
                "no reply",
                "lost",
                "lost within everysec allowance",
                "phantom rows",
            ],
        );
        t.row(vec![
            a.attempts.to_string(),
            a.acked_applied.to_string(),
            a.acked_not_applied.to_string(),
            a.refused.to_string(),
            a.unanswered.to_string(),
            a.lost.len().to_string(),
            if self.everysec {
                a.lost_allowed.len().to_string()
            } else {
                "- (always)".into()
            },
            a.phantom_rows.len().to_string(),
        ]);
        t.note(format!(
            "write-behind queue drained {} s after the last check began",
            secs(self.drained_in)
        ));
        t
    }

    fn delivery_table(&self) -> Table {
        let a = self.accounts;
        let mut t = Table::new(
            "deliveries",
            format!("{}: changes of a user's other devices", self.title),
            &[
                "sessions",
                "live events",
                "expected",
                "exact",
                "covered by a later version",
                "missed, RESYNC told",
                "missed",
                "duplicates",
                "RESYNCs",
                "markers not heard",
                "unknown values",
            ],
        );
        t.row(vec![
            a.sessions.to_string(),
            a.live_events.to_string(),
            a.expected.to_string(),
            a.exact.to_string(),
            a.covered_later.to_string(),
            a.missed_resync.to_string(),
            a.missed.len().to_string(),
            a.duplicates.to_string(),
            a.resyncs.to_string(),
            a.markers_missing.to_string(),
            a.unknown_receipts.to_string(),
        ]);
        t.note(format!(
            "{} records came in sync results; reconnects: {}",
            a.sync_records,
            a.sessions.saturating_sub(a.devices)
        ));
        t
    }

    fn convergence_table(&self) -> Table {
        let a = self.accounts;
        let mut t = Table::new(
            "convergence",
            format!("{}: devices against the stored state", self.title),
            &[
                "devices",
                "finished the final sync and list",
                "converged (sync)",
                "converged (list_progress)",
                "diverged",
            ],
        );
        t.row(vec![
            a.devices.to_string(),
            a.finished.to_string(),
            a.converged_sync.to_string(),
            a.converged_list.to_string(),
            a.diverged.len().to_string(),
        ]);
        t
    }

    fn error_table(&self) -> Table {
        let mut t = Table::new(
            "errors",
            format!("{}: client-side errors by kind", self.title),
            &["operation", "kind", "count"],
        );
        for ((op, kind), n) in &self.accounts.errors {
            t.row(vec![op.clone(), kind.clone(), n.to_string()]);
        }
        if self.accounts.errors.is_empty() {
            t.note("none".into());
        }
        t
    }

    fn memory_table(&self) -> Table {
        let mut t = Table::new(
            "memory",
            format!(
                "{}: RSS per process run (bound: end <= {} x warm + {} MiB; warm = {} s after the later of its start and the load's)",
                self.title,
                self.bound.factor,
                self.bound.slack_kib / 1024,
                self.bound.warmup.as_secs()
            ),
            &[
                "process",
                "pid",
                "lived s",
                "warm MiB",
                "end MiB",
                "max MiB",
                "bound MiB",
                "ok",
            ],
        );
        for c in self.memory {
            t.row(vec![
                c.name.clone(),
                c.pid.to_string(),
                secs(c.lived),
                c.warm_kib.map_or("-".into(), mib),
                c.end_kib.map_or("-".into(), mib),
                mib(c.max_kib),
                c.warm_kib
                    .map_or("-".into(), |w| mib(self.bound.limit_kib(w))),
                match c.ok {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "(too short)".into(),
                },
            ]);
        }
        t
    }

    /// Every hard failure, one line each; empty when the run passed.
    pub fn failures(&self) -> Vec<String> {
        let a = self.accounts;
        let mut out = Vec::new();
        let mut count = |n: usize, what: &str| {
            if n > 0 {
                out.push(format!("{n} {what}"));
            }
        };
        count(a.lost.len(), "acknowledged updates lost");
        count(a.phantom_rows.len(), "stored rows no device wrote");
        count(a.missed.len(), "changes missed without RESYNC");
        count(a.markers_missing, "final markers not heard");
        count(a.unknown_receipts, "received values no device wrote");
        count(
            a.diverged.len(),
            "device views diverged from the stored state",
        );
        count(
            a.devices - a.finished,
            "devices did not finish the final sync and list",
        );
        count(
            self.memory.iter().filter(|c| c.ok == Some(false)).count(),
            "processes beyond the memory bound",
        );
        out
    }

    /// The individual lost acks, missed changes and divergences.
    #[allow(clippy::print_stdout)] // the report goes to stdout
    pub fn print_details(&self) {
        let a = self.accounts;
        let lost = [
            ("lost", &a.lost),
            ("lost within the allowance", &a.lost_allowed),
        ];
        for (label, list) in lost {
            for l in list.iter().take(MAX_DETAILS) {
                println!(
                    "{label}: {} acked {} at {} s (cursor {}); Postgres has {}",
                    device(l.user, l.device),
                    record(&l.acked),
                    secs(l.at),
                    l.cursor.as_deref().unwrap_or("-"),
                    l.stored.as_ref().map_or("nothing".into(), record)
                );
            }
        }
        for m in a.missed.iter().take(MAX_DETAILS) {
            println!(
                "missed: {} session {} (gateway-{}, {}-{} s) never got manga {} v{} by d{} (sent {} s, acked {} s)",
                device(m.user, m.device),
                m.session,
                letter(m.gateway),
                secs(m.opened),
                secs(m.closed),
                m.manga,
                m.version,
                m.by_device,
                secs(m.sent),
                secs(m.acked)
            );
        }
        for d in a.diverged.iter().take(MAX_DETAILS) {
            for (manga, held, stored) in d.differences.iter().take(5) {
                println!(
                    "diverged ({}): {} manga {manga}: device {}, stored {}",
                    d.source,
                    device(d.user, d.device),
                    held.as_ref().map_or("nothing".into(), record),
                    stored.as_ref().map_or("nothing".into(), record)
                );
            }
        }
        for (user, row) in a.phantom_rows.iter().take(MAX_DETAILS) {
            println!("phantom: user u{user} {}", record(row));
        }
    }
}
