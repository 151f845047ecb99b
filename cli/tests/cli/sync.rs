//! `mangahub client sync`, `--device` and the cursors `client` prints.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{WAIT, output, start_dev, stdout};

/// The cursor a human-readable line ends with (`… [cursor C]`).
fn cursor_in(line: &str) -> String {
    line.trim()
        .rsplit_once("[cursor ")
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .unwrap_or_else(|| panic!("no cursor in {line:?}"))
        .to_owned()
}

#[tokio::test]
async fn sync_prints_what_changed_after_a_cursor_and_watch_prints_cursors() {
    let dev = start_dev().await;
    let run = |args: Vec<&str>| {
        let mut cmd = dev.client(&args);
        async move { output(&mut cmd).await }
    };

    let saved = run(vec![
        "--device",
        "phone",
        "update",
        "--manga",
        "1",
        "--chapter",
        "1",
    ])
    .await;
    let saved = stdout(&saved);
    assert!(
        saved.starts_with("saved: manga 1: chapter 1, page 0, reading (v1, ")
            && saved.contains(", from phone) [cursor "),
        "{saved}"
    );
    let phone_cursor = cursor_in(&saved);

    // The phone goes offline; the tablet changes things.
    for manga in ["2", "3"] {
        let out = run(vec![
            "--device",
            "tablet",
            "update",
            "--manga",
            manga,
            "--chapter",
            "4",
        ])
        .await;
        assert!(out.status.success(), "{out:?}");
    }
    assert!(run(vec!["delete", "--manga", "1"]).await.status.success());

    // Pages of one change are followed to the end.
    let synced = run(vec!["sync", "--cursor", &phone_cursor, "--limit", "1"]).await;
    assert!(synced.status.success(), "{synced:?}");
    let text = stdout(&synced);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("updated: manga 2: chapter 4, page 0, reading (v1, ")
            && lines[0].ends_with(", from tablet)"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("updated: manga 3: chapter 4"),
        "{text}"
    );
    assert_eq!(lines[2], "deleted: manga 1", "{text}");
    let next = lines[3].strip_prefix("cursor: ").expect("the next cursor");

    let again = stdout(&run(vec!["sync", "--cursor", next]).await);
    let again: Vec<&str> = again.lines().collect();
    assert_eq!(again[0], "no changes", "{again:?}");
    assert!(again[1].starts_with("cursor: "), "{again:?}");

    let bad = run(vec!["sync", "--cursor", "bogus"]).await;
    assert!(!bad.status.success(), "a refused cursor exits non-zero");
    let said = stdout(&bad);
    assert!(
        said.starts_with("error INVALID_DATA: cursor") && said.contains("without a cursor"),
        "{said}"
    );

    // --json: the sync_result lines as received, the last one without `more`.
    let raw = stdout(&run(vec!["--json", "sync", "--limit", "1"]).await);
    let pages: Vec<Value> = raw
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(pages.len() >= 2, "{raw}");
    assert!(pages.iter().all(|p| p["type"] == "sync_result"), "{raw}");
    assert_eq!(
        pages.last().expect("a page")["data"]["more"],
        false,
        "{raw}"
    );

    // A watcher prints each event with its cursor, the one the writer's ack has.
    let mut watcher = dev
        .client(&["watch", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("watcher starts");
    let mut lines = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the watcher starts in time")
        .expect("read")
        .expect("a line");
    assert!(first.starts_with("watching as demo"), "{first}");
    let saved = stdout(
        &run(vec![
            "--device",
            "phone",
            "update",
            "--manga",
            "5",
            "--chapter",
            "2",
        ])
        .await,
    );
    let event = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the event in time")
        .expect("read")
        .expect("an event line");
    assert!(
        event.starts_with("[user] demo manga 5: chapter 2, page 0, reading (v1, ")
            && event.contains(", from phone) [cursor "),
        "{event}"
    );
    assert_eq!(cursor_in(&event), cursor_in(&saved));
    assert!(watcher.wait().await.expect("watcher exits").success());
    assert!(dev.interrupt().await.success());
}
