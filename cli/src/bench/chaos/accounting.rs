//! The checks at the end of a run, over the devices' history and the rows
//! in Postgres (read directly, after the write-behind queue drained):
//!
//! - **acks**: every acknowledged update is in `user_progress`, as the
//!   acknowledged version with its value or as a later version of the record.
//!   With Redis `appendfsync everysec`, a loss acknowledged within the
//!   allowance before a Redis kill is counted apart (the contract allows it).
//!   A row whose chapter no device ever sent is a phantom.
//! - **deliveries**: a change by another device of the user, sent after a
//!   session opened, is *expected* in it when the session received it, or
//!   received anything sent after the change's ack — events reach a
//!   connection in change order, so that later change proves the earlier
//!   one was due. It counts as delivered exactly (same version and chapter)
//!   or covered by a later version of the record (a resumed stream replays a
//!   record at its latest state); otherwise missed, excused only if the
//!   session was told `RESYNC`.
//! - **convergence**: each device's records after its final `sync`, and its
//!   final `list_progress`, equal the stored rows of its user.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;

use super::history::{At, DeviceLog, Outcome, Record, Via};

/// A late reply to an update can still arrive this long after a Redis kill.
const REPLY_SLACK: Duration = Duration::from_millis(500);

/// Stored records by (user index, manga).
pub type Stored = HashMap<(usize, i64), Record>;

/// Every `user_progress` row of the run's users.
pub async fn read_postgres(database_url: &str, users: &[String]) -> anyhow::Result<Stored> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .context("connecting to Postgres")?;
    let rows = sqlx::query(
        "SELECT user_id, manga_id, (current_chapter * 100)::bigint AS cents, page::bigint AS page, \
         status, version FROM user_progress WHERE user_id = ANY($1)",
    )
    .bind(users)
    .fetch_all(&pool)
    .await
    .context("reading user_progress")?;
    pool.close().await;
    let index: HashMap<&str, usize> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.as_str(), i))
        .collect();
    let mut stored = Stored::new();
    for row in rows {
        let user: String = row.try_get("user_id")?;
        let manga: i64 = row.try_get("manga_id")?;
        let Some(&u) = index.get(user.as_str()) else {
            continue;
        };
        stored.insert(
            (u, manga),
            Record {
                manga,
                chapter_cents: row.try_get("cents")?,
                page: row.try_get("page")?,
                status: row.try_get("status")?,
                version: row.try_get("version")?,
            },
        );
    }
    Ok(stored)
}

/// An acknowledged update Postgres does not hold.
#[derive(Debug, Clone)]
pub struct Lost {
    pub user: usize,
    pub device: usize,
    pub acked: Record,
    pub cursor: Option<String>,
    pub at: At,
    pub stored: Option<Record>,
}

/// A change a session should have received and did not.
#[derive(Debug, Clone)]
pub struct Missed {
    pub user: usize,
    pub device: usize,
    pub session: usize,
    pub gateway: usize,
    pub opened: At,
    pub closed: At,
    pub by_device: usize,
    pub manga: i64,
    pub version: i64,
    pub sent: At,
    pub acked: At,
}

#[derive(Debug, Clone)]
pub struct Divergence {
    pub user: usize,
    pub device: usize,
    /// `sync` or `list`.
    pub source: &'static str,
    /// The records that differ: (manga, the device's, the stored).
    pub differences: Vec<(i64, Option<Record>, Option<Record>)>,
}

#[derive(Debug, Default)]
pub struct Accounts {
    pub attempts: usize,
    pub acked_applied: usize,
    pub acked_not_applied: usize,
    pub refused: usize,
    pub unanswered: usize,
    pub lost: Vec<Lost>,
    pub lost_allowed: Vec<Lost>,
    pub phantom_rows: Vec<(usize, Record)>,

    pub sessions: usize,
    pub live_events: usize,
    pub sync_records: usize,
    pub expected: usize,
    pub exact: usize,
    pub covered_later: usize,
    pub missed_resync: usize,
    pub missed: Vec<Missed>,
    pub duplicates: usize,
    pub resyncs: usize,
    pub unknown_receipts: usize,
    pub markers_missing: usize,

    pub devices: usize,
    pub finished: usize,
    pub converged_sync: usize,
    pub converged_list: usize,
    pub diverged: Vec<Divergence>,

    /// (op, kind) → count.
    pub errors: BTreeMap<(String, String), usize>,
}

/// What a user's attempts tell about a chapter they carried.
#[derive(Clone, Copy)]
struct Sent {
    manga: i64,
    sent: At,
}

/// An applied, acknowledged change.
struct Change {
    device: usize,
    manga: i64,
    version: i64,
    chapter_cents: i64,
    sent: At,
    acked: At,
}

/// `redis_kills`: when Redis was killed, if losses within `allowance` before
/// a kill are allowed (`everysec`); empty otherwise.
pub fn account(
    logs: &[DeviceLog],
    stored: &Stored,
    users: usize,
    redis_kills: &[At],
    allowance: Duration,
) -> Accounts {
    let mut acc = Accounts {
        devices: logs.len(),
        ..Accounts::default()
    };
    for log in logs {
        for error in &log.errors {
            *acc.errors
                .entry((error.op.to_owned(), error.kind.clone()))
                .or_default() += 1;
        }
    }
    for user in 0..users {
        let devices: Vec<&DeviceLog> = logs.iter().filter(|l| l.user == user).collect();
        let sent = sent_index(&devices);
        check_acks(&mut acc, user, &devices, stored, redis_kills, allowance);
        check_phantoms(&mut acc, user, &sent, stored);
        check_deliveries(&mut acc, user, &devices, &sent);
        check_convergence(&mut acc, user, &devices, stored);
    }
    acc
}

/// Chapter (whole, as sent) → the attempt that carried it.
fn sent_index(devices: &[&DeviceLog]) -> HashMap<i64, Sent> {
    devices
        .iter()
        .flat_map(|log| {
            log.attempts.iter().map(|a| {
                (
                    a.chapter,
                    Sent {
                        manga: a.manga,
                        sent: a.sent,
                    },
                )
            })
        })
        .collect()
}

fn attempt_of(sent: &HashMap<i64, Sent>, record: &Record) -> Option<Sent> {
    if record.chapter_cents % 100 != 0 {
        return None;
    }
    sent.get(&(record.chapter_cents / 100))
        .copied()
        .filter(|s| s.manga == record.manga)
}

fn check_acks(
    acc: &mut Accounts,
    user: usize,
    devices: &[&DeviceLog],
    stored: &Stored,
    redis_kills: &[At],
    allowance: Duration,
) {
    for log in devices {
        for attempt in &log.attempts {
            acc.attempts += 1;
            let Outcome::Acked {
                applied,
                record,
                cursor,
                at,
            } = &attempt.outcome
            else {
                match attempt.outcome {
                    Outcome::Refused => acc.refused += 1,
                    _ => acc.unanswered += 1,
                }
                continue;
            };
            if *applied {
                acc.acked_applied += 1;
            } else {
                acc.acked_not_applied += 1;
            }
            let row = stored.get(&(user, record.manga));
            let kept = match row {
                Some(row) if row.version > record.version => true,
                Some(row) if row.version == record.version => {
                    row.chapter_cents == record.chapter_cents && row.page == record.page
                }
                _ => false,
            };
            if kept {
                continue;
            }
            let lost = Lost {
                user,
                device: log.device,
                acked: record.clone(),
                cursor: cursor.clone(),
                at: *at,
                stored: row.cloned(),
            };
            let allowed = redis_kills
                .iter()
                .any(|&kill| *at + allowance >= kill && *at <= kill + REPLY_SLACK);
            if allowed {
                acc.lost_allowed.push(lost);
            } else {
                acc.lost.push(lost);
            }
        }
    }
}

fn check_phantoms(acc: &mut Accounts, user: usize, sent: &HashMap<i64, Sent>, stored: &Stored) {
    let mut rows: Vec<&Record> = stored
        .iter()
        .filter(|((u, _), _)| *u == user)
        .map(|(_, r)| r)
        .collect();
    rows.sort_by_key(|r| r.manga);
    for row in rows {
        if attempt_of(sent, row).is_none() {
            acc.phantom_rows.push((user, row.clone()));
        }
    }
}

fn check_deliveries(
    acc: &mut Accounts,
    user: usize,
    devices: &[&DeviceLog],
    sent: &HashMap<i64, Sent>,
) {
    let changes: Vec<Change> = devices
        .iter()
        .flat_map(|log| {
            log.attempts.iter().filter_map(|a| match &a.outcome {
                Outcome::Acked {
                    applied: true,
                    record,
                    at,
                    ..
                } => Some(Change {
                    device: log.device,
                    manga: record.manga,
                    version: record.version,
                    chapter_cents: record.chapter_cents,
                    sent: a.sent,
                    acked: *at,
                }),
                _ => None,
            })
        })
        .collect();
    for log in devices {
        acc.markers_missing += log.markers_missing.len();
        for (index, session) in log.sessions.iter().enumerate() {
            acc.sessions += 1;
            acc.resyncs += session.resyncs.len();
            let mut witness: Option<At> = None;
            let mut seen: HashMap<i64, Vec<&Record>> = HashMap::new();
            let mut live: HashMap<(i64, i64), usize> = HashMap::new();
            for receipt in &session.receipts {
                match receipt.via {
                    Via::Live => {
                        acc.live_events += 1;
                        *live
                            .entry((receipt.record.manga, receipt.record.version))
                            .or_default() += 1;
                    }
                    Via::Sync | Via::Final => acc.sync_records += 1,
                }
                match attempt_of(sent, &receipt.record) {
                    Some(s) => witness = witness.max(Some(s.sent)),
                    None => acc.unknown_receipts += 1,
                }
                seen.entry(receipt.record.manga)
                    .or_default()
                    .push(&receipt.record);
            }
            acc.duplicates += live.values().map(|n| n - 1).sum::<usize>();
            for change in &changes {
                if change.device == log.device || change.sent < session.opened {
                    continue;
                }
                let got = seen.get(&change.manga).map_or(&[][..], Vec::as_slice);
                let exact = got.iter().any(|r| {
                    r.version == change.version && r.chapter_cents == change.chapter_cents
                });
                if !exact && witness.is_none_or(|w| change.acked > w) {
                    // Not received, and nothing proves it was due yet.
                    continue;
                }
                acc.expected += 1;
                if exact {
                    acc.exact += 1;
                } else if got.iter().any(|r| r.version > change.version) {
                    acc.covered_later += 1;
                } else if !session.resyncs.is_empty() {
                    acc.missed_resync += 1;
                } else {
                    acc.missed.push(Missed {
                        user,
                        device: log.device,
                        session: index,
                        gateway: session.gateway,
                        opened: session.opened,
                        closed: session.closed,
                        by_device: change.device,
                        manga: change.manga,
                        version: change.version,
                        sent: change.sent,
                        acked: change.acked,
                    });
                }
            }
        }
    }
}

fn check_convergence(acc: &mut Accounts, user: usize, devices: &[&DeviceLog], stored: &Stored) {
    let truth: HashMap<i64, &Record> = stored
        .iter()
        .filter(|((u, _), _)| *u == user)
        .map(|((_, m), r)| (*m, r))
        .collect();
    for log in devices {
        let (Some(synced), Some(listed)) = (&log.synced, &log.listed) else {
            continue;
        };
        acc.finished += 1;
        for (source, held) in [("sync", synced), ("list", listed)] {
            let mut mangas: Vec<i64> = held.keys().chain(truth.keys()).copied().collect();
            mangas.sort_unstable();
            mangas.dedup();
            let differences: Vec<_> = mangas
                .into_iter()
                .filter(|m| held.get(m) != truth.get(m).copied())
                .map(|m| {
                    (
                        m,
                        held.get(&m).cloned(),
                        truth.get(&m).map(|r| (*r).clone()),
                    )
                })
                .collect();
            if differences.is_empty() {
                match source {
                    "sync" => acc.converged_sync += 1,
                    _ => acc.converged_list += 1,
                }
            } else {
                acc.diverged.push(Divergence {
                    user,
                    device: log.device,
                    source,
                    differences,
                });
            }
        }
    }
}

#[cfg(test)]
#[path = "accounting_tests.rs"]
mod tests;
