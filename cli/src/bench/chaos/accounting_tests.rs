//! The checks on hand-made histories: each failure they exist to catch is
//! caught, and what the protocol allows is not counted against it.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::bench::chaos::history::{Attempt, Receipt, Session, SessionEnd};

fn at(secs: f64) -> At {
    Duration::from_secs_f64(secs)
}

fn rec(manga: i64, chapter: i64, version: i64) -> Record {
    Record {
        manga,
        chapter_cents: chapter * 100,
        page: 0,
        status: "reading".into(),
        version,
    }
}

/// An applied update of `manga` to `chapter`, answered with `version`.
fn acked(manga: i64, chapter: i64, version: i64, sent: f64, acked: f64) -> Attempt {
    Attempt {
        manga,
        chapter,
        sent: at(sent),
        outcome: Outcome::Acked {
            applied: true,
            record: rec(manga, chapter, version),
            cursor: Some(format!("e.{chapter}")),
            at: at(acked),
        },
    }
}

fn session(opened: f64, receipts: &[(Record, Via)]) -> Session {
    Session {
        gateway: 0,
        opened: at(opened),
        closed: at(100.0),
        end: SessionEnd::Final,
        receipts: receipts
            .iter()
            .map(|(record, via)| Receipt {
                record: record.clone(),
                via: *via,
            })
            .collect(),
        resyncs: Vec::new(),
    }
}

fn device(device: usize, attempts: Vec<Attempt>, sessions: Vec<Session>) -> DeviceLog {
    DeviceLog {
        user: 0,
        device,
        attempts,
        sessions,
        ..DeviceLog::default()
    }
}

fn stored(records: &[Record]) -> Stored {
    records.iter().map(|r| ((0, r.manga), r.clone())).collect()
}

fn check(logs: &[DeviceLog], stored: &Stored) -> Accounts {
    account(logs, stored, 1, &[], Duration::ZERO)
}

#[test]
fn an_ack_is_kept_by_its_version_or_a_later_one_only() {
    let writer = device(0, vec![acked(1, 10, 3, 1.0, 1.1)], Vec::new());
    let logs = [writer];
    assert!(check(&logs, &stored(&[rec(1, 10, 3)])).lost.is_empty());
    assert!(check(&logs, &stored(&[rec(1, 12, 5)])).lost.is_empty());
    for behind in [vec![], vec![rec(1, 9, 2)], vec![rec(1, 11, 3)]] {
        let accounts = check(&logs, &stored(&behind));
        assert_eq!(accounts.lost.len(), 1, "stored {behind:?}");
        assert_eq!(accounts.lost[0].acked, rec(1, 10, 3));
    }
}

#[test]
fn everysec_losses_just_before_a_redis_kill_are_counted_apart() {
    let logs = [device(
        0,
        vec![acked(1, 10, 1, 4.9, 5.0), acked(2, 11, 1, 10.4, 10.5)],
        Vec::new(),
    )];
    let accounts = account(&logs, &Stored::new(), 1, &[at(11.0)], at(2.0));
    assert_eq!(accounts.lost_allowed.len(), 1);
    assert_eq!(accounts.lost_allowed[0].acked.manga, 2);
    assert_eq!(accounts.lost.len(), 1);
    assert_eq!(accounts.lost[0].acked.manga, 1);
}

#[test]
fn a_row_no_device_wrote_is_a_phantom() {
    let logs = [device(0, vec![acked(1, 10, 1, 1.0, 1.1)], Vec::new())];
    let accounts = check(&logs, &stored(&[rec(1, 10, 1), rec(2, 77, 1)]));
    assert_eq!(accounts.phantom_rows.len(), 1);
    assert_eq!(accounts.phantom_rows[0].1.manga, 2);
}

/// Device 0 writes manga 1 (at 10 s) then manga 2 (at 11 s); device 1
/// listens from 5 s and receives what `receipts` says.
fn two_changes_heard_as(receipts: &[(Record, Via)]) -> Vec<DeviceLog> {
    vec![
        device(
            0,
            vec![acked(1, 1, 1, 10.0, 10.1), acked(2, 2, 1, 11.0, 11.1)],
            Vec::new(),
        ),
        device(1, Vec::new(), vec![session(5.0, receipts)]),
    ]
}

#[test]
fn a_change_a_later_one_proves_due_but_never_received_is_missed() {
    let logs = two_changes_heard_as(&[(rec(2, 2, 1), Via::Live)]);
    let accounts = check(&logs, &Stored::new());
    assert_eq!(accounts.expected, 2);
    assert_eq!(accounts.exact, 1);
    assert_eq!(accounts.missed.len(), 1);
    assert_eq!(
        (accounts.missed[0].manga, accounts.missed[0].by_device),
        (1, 0)
    );
}

#[test]
fn a_resync_excuses_a_miss_and_a_later_version_covers_one() {
    let mut logs = two_changes_heard_as(&[(rec(2, 2, 1), Via::Live)]);
    logs[1].sessions[0].resyncs.push(at(12.0));
    let accounts = check(&logs, &Stored::new());
    assert_eq!((accounts.missed.len(), accounts.missed_resync), (0, 1));

    // A replayed stream carries manga 1 at its latest state (v2, written by
    // a third attempt of device 0).
    let mut logs = two_changes_heard_as(&[(rec(1, 3, 2), Via::Live), (rec(2, 2, 1), Via::Live)]);
    logs[0].attempts.push(acked(1, 3, 2, 11.5, 11.6));
    let accounts = check(&logs, &Stored::new());
    assert_eq!(accounts.missed.len(), 0);
    assert_eq!(accounts.covered_later, 1);
}

#[test]
fn without_a_later_witness_or_before_the_session_nothing_is_expected() {
    // Only the first change arrived: the second may still have been on its way.
    let logs = two_changes_heard_as(&[(rec(1, 1, 1), Via::Live)]);
    let accounts = check(&logs, &Stored::new());
    assert_eq!((accounts.expected, accounts.missed.len()), (1, 0));

    // A session opened after the first change was sent owes only the second.
    let mut logs = two_changes_heard_as(&[(rec(2, 2, 1), Via::Live)]);
    logs[1].sessions[0].opened = at(10.5);
    let accounts = check(&logs, &Stored::new());
    assert_eq!((accounts.expected, accounts.missed.len()), (1, 0));
}

#[test]
fn duplicates_and_values_nobody_wrote_are_counted() {
    let logs = two_changes_heard_as(&[
        (rec(1, 1, 1), Via::Live),
        (rec(1, 1, 1), Via::Live),
        (rec(1, 1, 1), Via::Sync),
        (rec(2, 99, 1), Via::Live),
    ]);
    let accounts = check(&logs, &Stored::new());
    assert_eq!(accounts.duplicates, 1);
    assert_eq!(accounts.unknown_receipts, 1);
}

#[test]
fn a_device_converges_only_to_exactly_the_stored_rows() {
    let truth = stored(&[rec(1, 10, 2), rec(2, 5, 1)]);
    let view = |records: &[Record]| -> HashMap<i64, Record> {
        records.iter().map(|r| (r.manga, r.clone())).collect()
    };
    let mut log = device(
        0,
        vec![acked(1, 10, 2, 1.0, 1.1), acked(2, 5, 1, 2.0, 2.1)],
        Vec::new(),
    );
    log.synced = Some(view(&[rec(1, 10, 2), rec(2, 5, 1)]));
    log.listed = Some(view(&[rec(1, 10, 2)]));
    let accounts = check(&[log], &truth);
    assert_eq!(
        (
            accounts.finished,
            accounts.converged_sync,
            accounts.converged_list
        ),
        (1, 1, 0)
    );
    assert_eq!(accounts.diverged.len(), 1);
    assert_eq!(accounts.diverged[0].source, "list");
    assert_eq!(accounts.diverged[0].differences[0].0, 2);
}
