//! The change log from outside (issue 9, contract §6): cursors on acks and
//! events, `SyncProgress` catch-up with deletes and paging, `WatchProgress`
//! resume, every replica seeing every change once in position order (also
//! under many concurrent writers and killed Redis connections), device names,
//! rows written before the change log existed, and retention.
//!
//! Cursors are opaque to callers; these tests read the position out of them
//! (`<epoch>.<position>`, see `progress_service::changelog`) only to check
//! order. Every acknowledgement is counted: a change that was acknowledged
//! must reach each reader exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_client::ProgressServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::helpers::{
    Backend, TestApp, both_backends, delete_on, spawn_app, spawn_app_on, spawn_app_with,
    spawn_replica, update_req,
};

both_backends!(
    an_offline_device_syncs_exactly_what_it_missed,
    malformed_and_foreign_cursors_are_refused,
    a_watch_resumes_from_its_last_cursor,
    devices_are_stored_returned_and_validated,
    a_delete_after_a_create_in_one_commit_is_not_lost,
);

type Client = ProgressServiceClient<Channel>;

const WAIT: Duration = Duration::from_secs(30);
const UPDATED: i32 = pb::EventKind::Updated as i32;
const DELETED: i32 = pb::EventKind::Deleted as i32;

/// The position in a cursor, to compare order.
fn position(cursor: &str) -> i64 {
    cursor
        .rsplit_once('.')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("not a cursor: {cursor:?}"))
}

fn epoch(cursor: &str) -> &str {
    cursor.rsplit_once('.').expect("a cursor").0
}

/// What one change says, comparable between acks, sync results and events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Seen {
    kind: i32,
    user: String,
    manga: i64,
    chapter: String,
    version: i64,
    cursor: String,
}

impl Seen {
    fn of_event(ev: &pb::ProgressEvent) -> Self {
        let p = ev.progress.clone().unwrap_or_default();
        Self {
            kind: ev.kind,
            user: p.user_id,
            manga: p.manga_id,
            chapter: p.chapter,
            version: p.version,
            cursor: ev.cursor.clone(),
        }
    }

    fn of_update(ack: &pb::UpdateProgressResponse) -> Self {
        assert!(ack.applied, "not applied: {ack:?}");
        assert!(!ack.cursor.is_empty(), "an applied change has a cursor");
        let p = ack.progress.clone().expect("the record");
        Self {
            kind: UPDATED,
            user: p.user_id,
            manga: p.manga_id,
            chapter: p.chapter,
            version: p.version,
            cursor: ack.cursor.clone(),
        }
    }

    fn of_delete(user: &str, manga: i64, cursor: String) -> Self {
        assert!(!cursor.is_empty(), "a delete has a cursor");
        Self {
            kind: DELETED,
            user: user.to_owned(),
            manga,
            chapter: String::new(),
            version: 0,
            cursor,
        }
    }

    fn position(&self) -> i64 {
        position(&self.cursor)
    }

    fn key(&self) -> (String, i64) {
        (self.user.clone(), self.manga)
    }
}

fn seen(events: &[pb::ProgressEvent]) -> Vec<Seen> {
    events.iter().map(Seen::of_event).collect()
}

/// Changes acknowledged one after another (so in position order).
#[derive(Default, Clone)]
struct Acked(Vec<Seen>);

impl Acked {
    fn push(&mut self, change: Seen) -> Seen {
        if let Some(last) = self.0.last() {
            assert!(
                change.position() > last.position(),
                "a change acknowledged after another has a higher position: {change:?} after {last:?}"
            );
        }
        self.0.push(change.clone());
        change
    }

    fn since(&self, from: usize) -> Acked {
        Acked(self.0[from..].to_vec())
    }

    /// Each record's last change, in position order: what a collapsed
    /// catch-up returns (`user`: only that user's records).
    fn latest(&self, user: Option<&str>) -> Vec<Seen> {
        let mut last: HashMap<(String, i64), Seen> = HashMap::new();
        for change in self.0.iter().filter(|c| user.is_none_or(|u| c.user == u)) {
            last.insert(change.key(), change.clone());
        }
        let mut latest: Vec<Seen> = last.into_values().collect();
        latest.sort_by_key(Seen::position);
        latest
    }
}

async fn update(app: &TestApp, acked: &mut Acked, user: &str, manga: i64, chapter: &str) -> Seen {
    acked.push(Seen::of_update(&app.update(user, manga, chapter).await))
}

async fn delete(app: &TestApp, acked: &mut Acked, user: &str, manga: i64) -> Seen {
    let cursor = delete_on(&app.client, user, manga).await.expect("deleted");
    acked.push(Seen::of_delete(user, manga, cursor))
}

async fn sync_with(
    client: &Client,
    user: &str,
    after: &str,
    limit: i32,
) -> Result<pb::SyncProgressResponse, Status> {
    client
        .clone()
        .sync_progress(pb::SyncProgressRequest {
            user_id: user.into(),
            after: after.into(),
            limit,
        })
        .await
        .map(|r| r.into_inner())
}

async fn sync(app: &TestApp, user: &str, after: &str, limit: i32) -> pb::SyncProgressResponse {
    sync_with(&app.client, user, after, limit)
        .await
        .unwrap_or_else(|status| panic!("sync after {after:?}: {status}"))
}

/// Follows `more` to the end: every change, the final cursor, the page sizes.
async fn sync_all(
    app: &TestApp,
    user: &str,
    after: &str,
    limit: i32,
) -> (Vec<pb::ProgressEvent>, String, Vec<usize>) {
    let mut changes = Vec::new();
    let mut pages = Vec::new();
    let mut cursor = after.to_owned();
    loop {
        let page = sync(app, user, &cursor, limit).await;
        if !cursor.is_empty() {
            assert!(
                position(&page.cursor) >= position(&cursor),
                "the cursor never moves back"
            );
        }
        pages.push(page.changes.len());
        changes.extend(page.changes);
        cursor = page.cursor;
        if !page.more {
            return (changes, cursor, pages);
        }
        assert!(pages.len() < 1000, "paging does not end: {pages:?}");
    }
}

async fn watch_with(
    client: &Client,
    users: &[&str],
    after: &str,
) -> Result<Streaming<pb::ProgressEvent>, Status> {
    client
        .clone()
        .watch_progress(pb::WatchProgressRequest {
            user_ids: users.iter().map(|u| (*u).to_owned()).collect(),
            manga_ids: vec![],
            after: after.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn next(stream: &mut Streaming<pb::ProgressEvent>) -> pb::ProgressEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event in time")
        .expect("stream healthy")
        .expect("stream open")
}

/// Reads a resumed stream's backlog: every event is one of `missed` (same
/// cursor, same content), positions strictly increase (so none twice), and
/// it ends once the latest change of every record in `missed` has arrived
/// (a store may or may not collapse a record's earlier changes).
async fn read_backlog(stream: &mut Streaming<pb::ProgressEvent>, missed: &Acked) -> Vec<Seen> {
    let by_cursor: HashMap<&str, &Seen> = missed.0.iter().map(|c| (c.cursor.as_str(), c)).collect();
    let mut waiting: HashSet<String> = missed.latest(None).into_iter().map(|c| c.cursor).collect();
    let mut got: Vec<Seen> = Vec::new();
    while !waiting.is_empty() {
        let change = Seen::of_event(&next(stream).await);
        assert_eq!(
            by_cursor.get(change.cursor.as_str()),
            Some(&&change),
            "a replayed event is one of the missed changes, as acknowledged"
        );
        if let Some(last) = got.last() {
            assert!(
                change.position() > last.position(),
                "{change:?} after {last:?}"
            );
        }
        waiting.remove(&change.cursor);
        got.push(change);
    }
    got
}

fn invalid_naming(result: Result<impl std::fmt::Debug, Status>, field: &str, what: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status}");
            assert!(
                status.message().contains(field),
                "{what}: the message names {field}: {status}"
            );
        }
        Ok(ok) => panic!("{what}: accepted: {ok:?}"),
    }
}

fn out_of_range(result: Result<impl std::fmt::Debug, Status>, what: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), Code::OutOfRange, "{what}: {status}");
            assert!(
                status.message().contains("expired"),
                "{what}: the message says the cursor expired: {status}"
            );
        }
        Ok(ok) => panic!("{what}: accepted: {ok:?}"),
    }
}

// --- 1. offline device --------------------------------------------------

async fn an_offline_device_syncs_exactly_what_it_missed(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = "offline";
    let mut acked = Acked::default();
    for manga in 1..=6 {
        update(&app, &mut acked, user, manga, "1").await;
    }
    update(&app, &mut acked, "bystander", 1, "1").await;
    // The device's cursor, taken two ways: its last ack, and a full read.
    let from_ack = update(&app, &mut acked, user, 6, "2").await.cursor;
    let full = sync(&app, user, "", 0).await;
    assert!(!full.more);
    assert_eq!(
        seen(&full.changes),
        acked.latest(Some(user)),
        "the full state"
    );
    let from_sync = full.cursor.clone();
    assert!(position(&from_sync) >= position(&from_ack));

    // Offline: several records, one twice, a new one, a delete, a delete
    // and re-create, a change that is not applied, another user's change.
    let offline = acked.0.len();
    update(&app, &mut acked, user, 1, "2").await;
    update(&app, &mut acked, user, 2, "2").await;
    update(&app, &mut acked, user, 2, "3").await;
    update(&app, &mut acked, user, 7, "1").await;
    delete(&app, &mut acked, user, 3).await;
    delete(&app, &mut acked, user, 4).await;
    update(&app, &mut acked, user, 4, "5").await;
    let behind = app.update(user, 5, "0.5").await;
    assert!(!behind.applied);
    assert_eq!(behind.cursor, "", "a change not applied has no cursor");
    update(&app, &mut acked, "bystander", 1, "2").await;

    let missed = acked.since(offline).latest(Some(user));
    let kinds: Vec<(i64, i32)> = missed.iter().map(|c| (c.manga, c.kind)).collect();
    assert_eq!(
        kinds.iter().copied().collect::<BTreeMap<_, _>>(),
        BTreeMap::from([
            (1, UPDATED),
            (2, UPDATED),
            (3, DELETED),
            (4, UPDATED),
            (7, UPDATED)
        ])
    );
    for cursor in [&from_ack, &from_sync] {
        let got = sync(&app, user, cursor, 0).await;
        assert!(!got.more);
        // Exactly the changed records once each, at their latest state (the
        // cursor of each being the ack of its last change), and the deletes,
        // in position order.
        assert_eq!(seen(&got.changes), missed, "sync after {cursor}");
        assert!(position(&got.cursor) >= missed.last().expect("changes").position());
        let again = sync(&app, user, &got.cursor, 0).await;
        assert!(again.changes.is_empty(), "nothing new: {again:?}");
        assert!(!again.more);
    }

    // Paging with limit 2 walks the same changes, each once.
    let (paged, end, pages) = sync_all(&app, user, &from_sync, 2).await;
    assert_eq!(seen(&paged), missed, "pages {pages:?}");
    assert!(
        pages.iter().all(|n| (1..=2).contains(n)),
        "pages of 1..=2 changes: {pages:?}"
    );
    let again = sync(&app, user, &end, 2).await;
    assert!(again.changes.is_empty() && !again.more, "{again:?}");

    // Empty `after`: the full current state, no deletes.
    let current: Vec<Seen> = acked
        .latest(Some(user))
        .into_iter()
        .filter(|c| c.kind == UPDATED)
        .collect();
    assert_eq!(
        current.iter().map(|c| c.manga).collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 4, 5, 6, 7])
    );
    let full = sync(&app, user, "", 0).await;
    assert!(!full.more);
    assert_eq!(
        seen(&full.changes),
        current,
        "the full state, without deletes"
    );
    for change in &full.changes {
        let p = change.progress.clone().expect("record");
        assert_eq!(app.get(user, p.manga_id).await.expect("stored"), p);
    }
    // ... also in pages: a device applying every page in order ends at the
    // current state.
    let (paged, _, pages) = sync_all(&app, user, "", 2).await;
    let mut state: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    for change in seen(&paged) {
        match change.kind {
            UPDATED => state.insert(change.manga, (change.chapter, change.version)),
            _ => state.remove(&change.manga),
        };
    }
    let want: BTreeMap<i64, (String, i64)> = current
        .iter()
        .map(|c| (c.manga, (c.chapter.clone(), c.version)))
        .collect();
    assert_eq!(state, want, "pages {pages:?}");
}

// --- 2. bad cursors -----------------------------------------------------

async fn malformed_and_foreign_cursors_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let other = spawn_app(backend).await;
    let ours = app.update("c", 1, "1").await.cursor;
    let foreign = other.update("c", 1, "1").await.cursor;
    assert_ne!(
        epoch(&ours),
        epoch(&foreign),
        "another database, another epoch"
    );

    for bad in [
        "nope", "12", ".5", "abc.", "abc.-1", "abc.x", "ab-c.4", "a.b.c", " ",
    ] {
        invalid_naming(
            sync_with(&app.client, "c", bad, 0).await,
            "after",
            &format!("sync after {bad:?}"),
        );
        for users in [&["c"][..], &[]] {
            invalid_naming(
                watch_with(&app.client, users, bad).await,
                "after",
                &format!("watch {users:?} after {bad:?}"),
            );
        }
    }
    // A cursor of another store, or one past this log's end: expired.
    let ahead = format!("{}.{}", epoch(&ours), position(&ours) + 10_000_000_000);
    for (cursor, what) in [
        (&foreign, "another store's cursor"),
        (&ahead, "a cursor ahead"),
    ] {
        out_of_range(sync_with(&app.client, "c", cursor, 0).await, what);
        for users in [&["c"][..], &[]] {
            out_of_range(
                watch_with(&app.client, users, cursor).await,
                &format!("watch {users:?}: {what}"),
            );
        }
    }
    // And our own cursor works everywhere.
    assert!(sync(&app, "c", &ours, 0).await.changes.is_empty());
    watch_with(&app.client, &[], &ours).await.expect("watch");

    for limit in [1001, -1, i32::MAX] {
        invalid_naming(
            sync_with(&app.client, "c", "", limit).await,
            "limit",
            &format!("limit {limit}"),
        );
    }
    assert!(sync(&app, "c", "", 1000).await.changes.len() == 1);
    invalid_naming(
        sync_with(&app.client, "", "", 0).await,
        "user_id",
        "no user",
    );
}

// --- 3. watch resume ----------------------------------------------------

async fn a_watch_resumes_from_its_last_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = "resume";
    let mut acked = Acked::default();
    let mut first = watch_with(&app.client, &[user], "").await.expect("watch");
    update(&app, &mut acked, user, 1, "1").await;
    update(&app, &mut acked, user, 2, "1").await;
    let mut last = String::new();
    for want in acked.0.clone() {
        let ev = next(&mut first).await;
        assert_eq!(Seen::of_event(&ev), want);
        last = ev.cursor;
    }
    drop(first);

    // Nobody watches.
    let gone = acked.0.len();
    update(&app, &mut acked, user, 1, "2").await;
    update(&app, &mut acked, user, 3, "1").await;
    update(&app, &mut acked, user, 3, "2").await;
    delete(&app, &mut acked, user, 2).await;
    update(&app, &mut acked, "bystander", 1, "1").await;
    assert!(!app.update(user, 1, "1").await.applied);

    // Resumed: one user's stream, then everyone's (which also missed the
    // live changes of the first).
    for (round, users) in [vec![user], vec![]].into_iter().enumerate() {
        let mut resumed = watch_with(&app.client, &users, &last)
            .await
            .expect("resume");
        let missed = Acked(
            acked
                .since(gone)
                .0
                .into_iter()
                .filter(|c| users.is_empty() || c.user == user)
                .collect(),
        );
        let backlog = read_backlog(&mut resumed, &missed).await;
        let mangas: BTreeSet<(String, i64)> = backlog.iter().map(Seen::key).collect();
        assert!(
            mangas.contains(&(user.to_owned(), 2)),
            "the delete is replayed"
        );
        // Live after the backlog: once, and nothing in between or after
        // (the marker is next).
        let round = i64::try_from(round).expect("small");
        let live = update(&app, &mut acked, user, 10 + round, "1").await;
        assert_eq!(Seen::of_event(&next(&mut resumed).await), live);
        let marker = update(&app, &mut acked, user, 20 + round, "1").await;
        assert_eq!(Seen::of_event(&next(&mut resumed).await), marker);
    }
}

// --- background watchers ------------------------------------------------

/// A watch stream read in the background. With `resume`, a stream that
/// ends is opened again with `after` = the last cursor received, as a
/// gateway does.
struct Tail {
    got: Arc<Mutex<Vec<pb::ProgressEvent>>>,
    ends: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tail {
    /// The first watch opens before this returns (it is subscribed).
    async fn start(client: &Client, after: &str, resume: bool) -> Tail {
        let first = watch_with(client, &[], after).await.expect("watch opens");
        let got = Arc::new(Mutex::new(Vec::new()));
        let ends = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (got, ends, client) = (got.clone(), ends.clone(), client.clone());
            let mut after = after.to_owned();
            async move {
                let mut stream = Some(first);
                loop {
                    let mut s = match stream.take() {
                        Some(s) => s,
                        None => match watch_with(&client, &[], &after).await {
                            Ok(s) => s,
                            Err(status) => {
                                ends.lock()
                                    .expect("not poisoned")
                                    .push(format!("reopen: {status}"));
                                if status.code() == Code::OutOfRange {
                                    return;
                                }
                                // Retry pace while the service is unavailable.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    loop {
                        match s.message().await {
                            Ok(Some(ev)) => {
                                after.clone_from(&ev.cursor);
                                got.lock().expect("not poisoned").push(ev);
                            }
                            Ok(None) => {
                                ends.lock().expect("not poisoned").push("ended".into());
                                break;
                            }
                            Err(status) => {
                                ends.lock().expect("not poisoned").push(status.to_string());
                                break;
                            }
                        }
                    }
                    if !resume {
                        return;
                    }
                }
            }
        });
        Tail { got, ends, task }
    }

    fn seen(&self) -> Vec<Seen> {
        seen(&self.got.lock().expect("not poisoned"))
    }

    fn ends(&self) -> Vec<String> {
        self.ends.lock().expect("not poisoned").clone()
    }

    /// Waits until every one of `cursors` has arrived.
    async fn wait_for(&self, cursors: &HashSet<String>, what: &str) {
        let result = testkit::wait_until(Duration::from_secs(90), what, || {
            let got: HashSet<String> = self.seen().into_iter().map(|c| c.cursor).collect();
            std::future::ready(cursors.is_subset(&got))
        })
        .await;
        if let Err(err) = result {
            let got: HashSet<String> = self.seen().into_iter().map(|c| c.cursor).collect();
            let mut missing: Vec<i64> = cursors.difference(&got).map(|c| position(c)).collect();
            missing.sort_unstable();
            panic!(
                "{err}: {} of {} missing (first {:?}); stream ends {:?}",
                missing.len(),
                cursors.len(),
                &missing[..missing.len().min(10)],
                self.ends()
            );
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every event of `events` is one of `acked` (same content) or one of
/// `extra` cursors, positions strictly increase (so none arrives twice),
/// and every acknowledged change is there.
fn exactly_once_in_order(events: &[Seen], acked: &[Seen], extra: &HashSet<String>, what: &str) {
    let by_cursor: HashMap<&str, &Seen> = acked.iter().map(|c| (c.cursor.as_str(), c)).collect();
    assert_eq!(
        by_cursor.len(),
        acked.len(),
        "{what}: acks have distinct cursors"
    );
    for pair in events.windows(2) {
        assert!(
            pair[1].position() > pair[0].position(),
            "{what}: positions strictly increase: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let mut found = 0;
    for event in events {
        match by_cursor.get(event.cursor.as_str()) {
            Some(ack) => {
                assert_eq!(*ack, event, "{what}: the event says what was acknowledged");
                found += 1;
            }
            None => assert!(
                extra.contains(&event.cursor),
                "{what}: an event nobody acknowledged: {event:?}"
            ),
        }
    }
    assert_eq!(
        found,
        acked.len(),
        "{what}: every acknowledged change arrived"
    );
}

// --- 4. two replicas ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_deliver_every_change_of_both() {
    a_watcher_on_one_replica_sees_every_change_of_both(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_replicas_deliver_every_change_of_both() {
    a_watcher_on_one_replica_sees_every_change_of_both(Backend::Hybrid).await;
}

async fn a_watcher_on_one_replica_sees_every_change_of_both(backend: Backend) {
    use futures::StreamExt;
    let one = spawn_app(backend).await;
    let two = spawn_replica(&one, &[]).await;
    let mut setup = Acked::default();
    for manga in 1..=20 {
        update(&two, &mut setup, "rep", manga, "1").await;
    }
    // Live only: the changes before the first marker may or may not arrive.
    let tail = Tail::start(&one.client, "", false).await;
    let marker = Seen::of_update(&two.update("marker", 1, "1").await);
    tail.wait_for(&HashSet::from([marker.cursor.clone()]), "the first marker")
        .await;
    let start = tail.seen().len();

    // Updates to fresh records and deletes of the setup records, through
    // both replicas (mostly the other one), concurrently: every change is to
    // a distinct record, so none collapses into another.
    let acked: Vec<Seen> = futures::stream::iter(0..320_i64)
        .map(|i| {
            let app = if i % 3 == 0 { &one } else { &two };
            async move {
                if i % 16 == 0 {
                    let manga = i / 16 + 1;
                    let cursor = delete_on(&app.client, "rep", manga).await.expect("deleted");
                    Seen::of_delete("rep", manga, cursor)
                } else {
                    Seen::of_update(&app.update(&format!("rep-{}", i % 5), 100 + i, "1").await)
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let cursors: HashSet<String> = acked.iter().map(|c| c.cursor.clone()).collect();
    tail.wait_for(&cursors, "every acknowledged change").await;
    // Nothing more is on its way: a last marker is the next event.
    let last = Seen::of_update(&two.update("marker", 2, "1").await);
    tail.wait_for(&HashSet::from([last.cursor.clone()]), "the last marker")
        .await;
    let events = tail.seen();
    assert_eq!(events.last(), Some(&last));
    exactly_once_in_order(
        &events[start..],
        &acked,
        &HashSet::from([last.cursor.clone()]),
        "watcher on replica 1",
    );
    assert!(
        tail.ends().is_empty(),
        "the stream stayed open: {:?}",
        tail.ends()
    );
}

/// Postgres alone keeps each record's last change in its tables, so a tailer
/// reading the tables would deliver only the latest of several changes of one
/// record made between two of its reads (or within one group-commit batch).
/// It reads `progress_changes` (one row per change) instead: a watcher on
/// replica 1 gets every acknowledged change made on replica 2, each once, in
/// order, even with 50 changes of one record in one `UpdateProgressBatch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_deliver_every_change_of_a_record_changed_many_times() {
    let one = spawn_app(Backend::Postgres).await;
    let two = spawn_replica(&one, &[]).await;
    let tail = Tail::start(&one.client, "", false).await;
    let marker = Seen::of_update(&two.update("marker", 1, "1").await);
    tail.wait_for(&HashSet::from([marker.cursor.clone()]), "the first marker")
        .await;
    let start = tail.seen().len();

    const BATCHES: i64 = 6;
    const PER_BATCH: i64 = 50;
    let mut acked = Acked::default();
    let batch = |updates: Vec<pb::UpdateProgressRequest>| {
        let two = &two;
        async move {
            two.send_batch(updates)
                .await
                .into_iter()
                .map(|r| match r.result.expect("a result") {
                    pb::update_progress_result::Result::Ok(ack) => Seen::of_update(&ack),
                    pb::update_progress_result::Result::Error(err) => {
                        panic!("update failed: {err:?}")
                    }
                })
                .collect::<Vec<Seen>>()
        }
    };
    for b in 0..BATCHES {
        // One record 50 times, another 5 times in between.
        let mut updates = Vec::new();
        for i in 1..=PER_BATCH {
            updates.push(update_req("pipe", 1, &(b * PER_BATCH + i).to_string()));
            if i % 10 == 0 {
                updates.push(update_req("pipe", 2, &(b * 5 + i / 10).to_string()));
            }
        }
        for change in batch(updates).await {
            acked.push(change);
        }
    }
    // A delete, then the record created again and changed in one batch.
    let cursor = delete_on(&two.client, "pipe", 2).await.expect("deleted");
    acked.push(Seen::of_delete("pipe", 2, cursor));
    for change in batch(
        (1..=10)
            .map(|c| update_req("pipe", 2, &c.to_string()))
            .collect(),
    )
    .await
    {
        acked.push(change);
    }

    let cursors: HashSet<String> = acked.0.iter().map(|c| c.cursor.clone()).collect();
    tail.wait_for(&cursors, "every acknowledged change").await;
    let last = Seen::of_update(&two.update("marker", 2, "1").await);
    tail.wait_for(&HashSet::from([last.cursor.clone()]), "the last marker")
        .await;
    let events = tail.seen();
    assert_eq!(events.last(), Some(&last));
    exactly_once_in_order(
        &events[start..],
        &acked.0,
        &HashSet::from([last.cursor.clone()]),
        "watcher on replica 1",
    );
    let versions: Vec<i64> = events[start..]
        .iter()
        .filter(|c| c.key() == ("pipe".to_owned(), 1))
        .map(|c| c.version)
        .collect();
    assert_eq!(
        versions,
        (1..=BATCHES * PER_BATCH).collect::<Vec<_>>(),
        "every version of the record, in order"
    );
    assert!(
        tail.ends().is_empty(),
        "the stream stayed open: {:?}",
        tail.ends()
    );
}

// --- 5. many writers, a tailing reader ----------------------------------

/// Postgres alone, the key correctness test: 2 replicas × 16 tasks × 150
/// updates, each to its own record (so nothing collapses), while a global
/// watcher on replica 1 (fed by that replica's log tailer) and a per-user
/// `SyncProgress` polling loop (alternating replicas) read the log.
///
/// Why this catches positions becoming visible out of order: both readers
/// work like "read everything in (P, head], remember head". If a batch took
/// its positions before the commit order was fixed (say from a sequence,
/// outside the counter row's lock), a batch with lower positions could
/// commit after one with higher positions; a read between the two commits
/// would see the higher ones, move past them, and never look below again.
/// With 8 write transactions in flight at once (4 shards × 2 replicas) and
/// thousands of batches, such an interleaving happens many times in a run,
/// and the check below fails: some acknowledged cursor is never delivered
/// (and the watcher's positions stop being consecutive). Positions here are
/// dense (a counter, rolled back with a failed transaction), so the watcher
/// must see exactly P, P+1, P+2, … with nothing skipped and nothing twice.
/// (Checked once by hand: with positions taken from a sequence before the
/// writes and the counter only raised at the end, this test fails with
/// acknowledged changes the watcher never receives.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_two_replicas_never_make_a_reader_skip_a_change() {
    many_writers_and_tailing_readers(Backend::Postgres).await;
}

/// The same load on the other stores (SQLite: one process, its one writer;
/// hybrid: two replicas, Redis positions, flushes to Postgres under way
/// while the sync loop reads Redis and Postgres together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_make_a_reader_skip_a_change_sqlite() {
    many_writers_and_tailing_readers(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_make_a_reader_skip_a_change_hybrid() {
    many_writers_and_tailing_readers(Backend::Hybrid).await;
}

async fn many_writers_and_tailing_readers(backend: Backend) {
    const TASKS: i64 = 16;
    const PER_TASK: i64 = 150;
    const USERS: i64 = 8;
    // Four group-commit writers per Postgres replica (the default is one):
    // more transactions racing for positions at once.
    let shards: &[&str] = match backend {
        Backend::Postgres => &["--write-shards", "4"],
        _ => &[],
    };
    let one = spawn_app_with(backend, shards).await;
    // One SQLite file serves one process: its "two replicas" are one.
    let two = match backend {
        Backend::Sqlite => None,
        _ => Some(spawn_replica(&one, shards).await),
    };
    let two = two.as_ref().unwrap_or(&one);
    let tail = Tail::start(&one.client, "", false).await;

    let follow = "load-0";
    let start = sync(&one, follow, "", 0).await.cursor;
    let stop = Arc::new(AtomicBool::new(false));
    let syncer = tokio::spawn({
        let clients = [one.client.clone(), two.client.clone()];
        let stop = stop.clone();
        async move {
            let mut cursor = start;
            let mut got: Vec<Seen> = Vec::new();
            for round in 0_usize.. {
                let done = stop.load(Ordering::Acquire);
                let page = sync_with(&clients[round % 2], follow, &cursor, 50)
                    .await
                    .expect("sync");
                assert!(
                    position(&page.cursor) >= position(&cursor),
                    "the cursor never moves back"
                );
                got.extend(seen(&page.changes));
                cursor = page.cursor;
                if done && !page.more {
                    break;
                }
                if !page.more {
                    // Polling pace.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            got
        }
    });

    let mut writers = Vec::new();
    for (r, client) in [one.client.clone(), two.client.clone()]
        .into_iter()
        .enumerate()
    {
        let r = i64::try_from(r).expect("small");
        for t in 0..TASKS {
            let client = client.clone();
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..PER_TASK {
                    let user = format!("load-{}", (t + i) % USERS);
                    let manga = (r * TASKS + t) * 1000 + i + 1;
                    let ack = client
                        .clone()
                        .update_progress(update_req(&user, manga, "1"))
                        .await
                        .expect("update")
                        .into_inner();
                    acked.push(Seen::of_update(&ack));
                }
                acked
            }));
        }
    }
    let mut acked: Vec<Seen> = Vec::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer"));
    }
    assert_eq!(
        acked.len(),
        usize::try_from(2 * TASKS * PER_TASK).expect("fits")
    );
    let cursors: HashSet<String> = acked.iter().map(|c| c.cursor.clone()).collect();
    assert_eq!(cursors.len(), acked.len(), "every ack has its own cursor");
    tail.wait_for(&cursors, "the watcher to see every acknowledged change")
        .await;
    let marker = Seen::of_update(&two.update("marker", 1, "1").await);
    tail.wait_for(&HashSet::from([marker.cursor.clone()]), "the marker")
        .await;
    stop.store(true, Ordering::Release);
    let synced = syncer.await.expect("sync loop");

    let events = tail.seen();
    exactly_once_in_order(
        &events,
        &acked,
        &HashSet::from([marker.cursor.clone()]),
        "global watcher",
    );
    assert_eq!(events.len(), acked.len() + 1);
    // Hybrid positions come from a clock; the SQL stores' are dense.
    for pair in events.windows(2).filter(|_| backend != Backend::Hybrid) {
        assert_eq!(
            pair[1].position(),
            pair[0].position() + 1,
            "no position skipped: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    assert!(
        tail.ends().is_empty(),
        "the stream stayed open: {:?}",
        tail.ends()
    );

    let mine: Vec<Seen> = acked.iter().filter(|c| c.user == follow).cloned().collect();
    exactly_once_in_order(&synced, &mine, &HashSet::new(), "sync loop");
    assert_eq!(synced.len(), mine.len());
}

// --- 6. hybrid: killed Redis connections --------------------------------

/// `CLIENT KILL TYPE normal` cuts every connection of both replicas (cache,
/// relay, batch writer) several times while writes go on. Writes that fail
/// meanwhile (UNAVAILABLE) are not counted; each acknowledged one must reach
/// both watchers exactly once, in position order, either because the relay
/// resumed after its last position or because the watcher's stream ended
/// and the watch was reopened from its last cursor. Never a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_connections_never_leave_a_silent_gap() {
    const TASKS: i64 = 8;
    const PER_TASK: i64 = 150;
    const KILLS: usize = 6;
    let one = spawn_app(Backend::Hybrid).await;
    let two = spawn_replica(&one, &[]).await;
    let start = one.update("kill", 1, "1").await.cursor;
    let tails = [
        Tail::start(&one.client, &start, true).await,
        Tail::start(&two.client, &start, true).await,
    ];

    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for t in 0..TASKS {
        let client = if t % 2 == 0 {
            one.client.clone()
        } else {
            two.client.clone()
        };
        let count = count.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0);
            for i in 0..PER_TASK {
                let req = update_req(&format!("kill-{}", i % 4), t * 1000 + i + 1, "1");
                match client.clone().update_progress(req).await {
                    Ok(ack) => {
                        // Distinct records: an acknowledged write is applied.
                        acked.push(Seen::of_update(&ack.into_inner()));
                        count.fetch_add(1, Ordering::Release);
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status}");
                        failed += 1;
                    }
                }
            }
            (acked, failed)
        }));
    }
    let redis = one.redis_conn().await;
    let mut killed = Vec::new();
    let total = usize::try_from(TASKS * PER_TASK).expect("fits");
    for k in 1..=KILLS {
        // Spread the kills over the run: the next after more writes landed.
        let _ = testkit::wait_until(WAIT, "more acknowledged writes", || {
            std::future::ready(count.load(Ordering::Acquire) >= k * total / (KILLS + 2))
        })
        .await;
        let n: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut redis.clone())
            .await
            .expect("CLIENT KILL");
        killed.push(n);
    }
    let (mut acked, mut failed) = (Vec::new(), 0);
    for writer in writers {
        let (a, f) = writer.await.expect("writer");
        acked.extend(a);
        failed += f;
    }
    assert!(
        killed.iter().all(|&n| n > 0),
        "connections were killed: {killed:?}"
    );
    assert!(!acked.is_empty());
    // After the last kill: a marker write (retried until acknowledged).
    let marker: Arc<Mutex<Option<Seen>>> = Arc::default();
    testkit::wait_until(WAIT, "a write to succeed again", || {
        let (client, marker) = (one.client.clone(), marker.clone());
        async move {
            match client
                .clone()
                .update_progress(update_req("marker", 1, "1"))
                .await
            {
                Ok(ack) => {
                    *marker.lock().expect("not poisoned") =
                        Some(Seen::of_update(&ack.into_inner()));
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await
    .expect("Redis back");
    let marker = marker
        .lock()
        .expect("not poisoned")
        .clone()
        .expect("marker");
    let mut cursors: HashSet<String> = acked.iter().map(|c| c.cursor.clone()).collect();
    cursors.insert(marker.cursor.clone());
    for (i, tail) in tails.iter().enumerate() {
        tail.wait_for(
            &cursors,
            &format!("watcher {i} to see every acknowledged change"),
        )
        .await;
        let events = tail.seen();
        // An unacknowledged write may have been applied (its reply was cut):
        // it may arrive, but like any other only once.
        let extra: HashSet<String> = events
            .iter()
            .filter(|c| !cursors.contains(&c.cursor))
            .map(|c| c.cursor.clone())
            .collect();
        assert!(
            extra.len() <= failed,
            "watcher {i}: {} unacknowledged, {failed} failed",
            extra.len()
        );
        let mut all = acked.clone();
        all.push(marker.clone());
        exactly_once_in_order(
            &events,
            &all,
            &extra,
            &format!(
                "watcher {i} (kills {killed:?}, {failed} failed writes, stream ends {:?})",
                tail.ends()
            ),
        );
    }
}

// --- 7. devices ---------------------------------------------------------

/// The rule tested: a record's device is the device of its last applied
/// change, so an applied update without a device clears it (absent), and
/// an update that is not applied changes nothing.
async fn devices_are_stored_returned_and_validated(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = "dev";
    let with_device = |manga: i64, chapter: &str, device: Option<&str>| pb::UpdateProgressRequest {
        device: device.map(str::to_owned),
        ..update_req(user, manga, chapter)
    };
    let mut events = watch_with(&app.client, &[user], "").await.expect("watch");
    let start = sync(&app, user, "", 0).await.cursor;

    let ack = app
        .send(with_device(1, "1", Some("Phone")))
        .await
        .expect("ok");
    assert_eq!(
        ack.progress.expect("record").device.as_deref(),
        Some("Phone")
    );
    let device_of = |app: &TestApp| {
        let client = app.client.clone();
        async move {
            let got = client
                .clone()
                .get_progress(pb::GetProgressRequest {
                    user_id: user.into(),
                    manga_id: 1,
                })
                .await
                .expect("get")
                .into_inner()
                .device;
            let listed = client
                .clone()
                .list_progress(pb::ListProgressRequest {
                    user_id: user.into(),
                    ..Default::default()
                })
                .await
                .expect("list")
                .into_inner()
                .items
                .into_iter()
                .find(|p| p.manga_id == 1)
                .expect("listed")
                .device;
            let full = sync_with(&client, user, "", 0).await.expect("sync");
            let synced = full
                .changes
                .iter()
                .find_map(|c| c.progress.clone().filter(|p| p.manga_id == 1))
                .expect("synced")
                .device;
            assert_eq!(got, listed, "get and list agree");
            assert_eq!(got, synced, "get and sync agree");
            got
        }
    };
    assert_eq!(device_of(&app).await.as_deref(), Some("Phone"));
    let ev = next(&mut events).await;
    assert_eq!(
        ev.progress.expect("record").device.as_deref(),
        Some("Phone")
    );

    // Not applied (behind): the device stays.
    let ack = app
        .send(with_device(1, "0.5", Some("Tablet")))
        .await
        .expect("ok");
    assert!(!ack.applied);
    assert_eq!(
        ack.progress.expect("record").device.as_deref(),
        Some("Phone")
    );
    assert_eq!(device_of(&app).await.as_deref(), Some("Phone"));

    // Applied without a device: absent.
    let ack = app.send(with_device(1, "2", None)).await.expect("ok");
    assert!(ack.applied);
    assert_eq!(ack.progress.expect("record").device, None);
    assert_eq!(device_of(&app).await, None);
    let ev = next(&mut events).await;
    assert_eq!(ev.progress.expect("record").device, None);

    // 64 bytes of printable UTF-8 (multi-byte included) is the longest.
    let longest = "📱".repeat(16);
    let ack = app
        .send(with_device(1, "3", Some(&longest)))
        .await
        .expect("ok");
    assert_eq!(ack.progress.expect("record").device, Some(longest.clone()));
    assert_eq!(device_of(&app).await, Some(longest.clone()));
    let ev = next(&mut events).await;
    assert_eq!(ev.progress.expect("record").device, Some(longest.clone()));
    // A catch-up from before shows it too.
    let caught_up = sync(&app, user, &start, 0).await;
    let p = caught_up.changes[0].progress.clone().expect("record");
    assert_eq!(p.device, Some(longest.clone()));

    for bad in [
        String::new(),
        "x".repeat(65),
        format!("{longest}x"),
        "tab\tlet".into(),
        "nul\0".into(),
        "line\nbreak".into(),
        "\u{7f}del".into(),
    ] {
        invalid_naming(
            app.send(with_device(1, "4", Some(&bad))).await,
            "device",
            &format!("device {bad:?}"),
        );
        let batch = app
            .client
            .clone()
            .update_progress_batch(pb::UpdateProgressBatchRequest {
                updates: vec![with_device(1, "4", Some(&bad))],
            })
            .await
            .expect("batch")
            .into_inner();
        match &batch.results[0].result {
            Some(pb::update_progress_result::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32);
                assert!(e.message.contains("device"), "{e:?}");
            }
            other => panic!("batch accepted device {bad:?}: {other:?}"),
        }
    }
    assert_eq!(
        device_of(&app).await,
        Some(longest.clone()),
        "nothing changed"
    );

    if backend == Backend::Hybrid {
        // The flushed Postgres row has it too.
        app.wait_flushed().await;
        let (device,): (Option<String>,) =
            sqlx::query_as("SELECT device FROM user_progress WHERE user_id = $1 AND manga_id = 1")
                .bind(user)
                .fetch_one(&app.pg_pool().await)
                .await
                .expect("row");
        assert_eq!(device, Some(longest));
    }

    // User ids with control characters are refused by every call.
    let nul = "a\0b";
    invalid_naming(app.send(update_req(nul, 1, "1")).await, "user_id", "update");
    invalid_naming(app.get(nul, 1).await, "user_id", "get");
    invalid_naming(
        app.list(pb::ListProgressRequest {
            user_id: nul.into(),
            ..Default::default()
        })
        .await,
        "user_id",
        "list",
    );
    invalid_naming(delete_on(&app.client, nul, 1).await, "user_id", "delete");
    invalid_naming(sync_with(&app.client, nul, "", 0).await, "user_id", "sync");
    invalid_naming(
        app.send(update_req("bell\u{7}", 1, "1")).await,
        "user_id",
        "update (BEL)",
    );
    let batch = app
        .client
        .clone()
        .update_progress_batch(pb::UpdateProgressBatchRequest {
            updates: vec![update_req(nul, 1, "1")],
        })
        .await
        .expect("batch")
        .into_inner();
    match &batch.results[0].result {
        Some(pb::update_progress_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert!(e.message.contains("user_id"), "{e:?}");
        }
        other => panic!("batch accepted a NUL user id: {other:?}"),
    }
}

// --- 8. rows from before the change log ---------------------------------

async fn migrator(engine: &str) -> sqlx::migrate::Migrator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("migrations")
        .join(engine);
    sqlx::migrate::Migrator::new(dir).await.expect("migrations")
}

/// The service on a database holding old rows: they read without a device,
/// appear in a full sync with positions, and later changes get cursors.
async fn old_rows_still_read(app: &TestApp) {
    let user = "old";
    let got = app.get(user, 1).await.expect("old row");
    assert_eq!(
        (
            got.chapter.as_str(),
            got.page,
            got.version,
            got.device.as_deref()
        ),
        ("12.5", 3, 2, None)
    );
    let listed = app
        .list(pb::ListProgressRequest {
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .items;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|p| p.device.is_none()));

    let full = sync(app, user, "", 0).await;
    assert!(!full.more);
    let synced = seen(&full.changes);
    assert_eq!(
        synced
            .iter()
            .map(|c| (c.kind, c.manga))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([(UPDATED, 1), (UPDATED, 2)])
    );
    assert!(
        full.changes
            .iter()
            .all(|c| c.progress.as_ref().is_some_and(|p| p.device.is_none()))
    );
    for pair in synced.windows(2) {
        assert!(pair[1].position() > pair[0].position());
    }
    assert!(position(&full.cursor) >= synced[1].position());

    let mut acked = Acked::default();
    let changed = update(app, &mut acked, user, 1, "13").await;
    assert_eq!(changed.version, 3, "versions continue");
    assert!(changed.position() > position(&full.cursor));
    delete(app, &mut acked, user, 2).await;
    let caught_up = sync(app, user, &full.cursor, 0).await;
    assert_eq!(seen(&caught_up.changes), acked.latest(Some(user)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_from_before_the_change_log_still_read() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("progress.db").display());
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::from_str(&url)
                .expect("url")
                .create_if_missing(true),
        )
        .await
        .expect("open");
    migrator("sqlite")
        .await
        .run_to(1, &pool)
        .await
        .expect("0001 only");
    let now_us = chrono::Utc::now().timestamp_micros();
    sqlx::query(
        "INSERT INTO user_progress
           (user_id, manga_id, chapter_hundredths, page, status, version, updated_at_us)
         VALUES ('old', 1, 1250, 3, 'reading', 2, ?), ('old', 2, 500, 0, 'completed', 1, ?)",
    )
    .bind(now_us - 3_600_000_000)
    .bind(now_us - 7_200_000_000)
    .execute(&pool)
    .await
    .expect("old rows");
    pool.close().await;

    let app = spawn_app_on(dir, url, &[]).await;
    old_rows_still_read(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_from_before_the_change_log_still_read() {
    let url = testkit::fresh_database().await.expect("database");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect");
    migrator("postgres")
        .await
        .run_to(3, &pool)
        .await
        .expect("0001-0003 only");
    sqlx::query(
        "INSERT INTO user_progress (user_id, manga_id, current_chapter, page, status, version, updated_at)
         VALUES ('old', 1, 12.5, 3, 'reading', 2, now() - interval '1 hour'),
                ('old', 2, 5, 0, 'completed', 1, now() - interval '2 hours')",
    )
    .execute(&pool)
    .await
    .expect("old rows");
    pool.close().await;

    let app = spawn_app_on(tempfile::tempdir().expect("dir"), url, &[]).await;
    old_rows_still_read(&app).await;
}

// --- 9. retention -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_retention_expires() {
    let mut app = spawn_app_with(Backend::Sqlite, &["--change-retention", "1ms"]).await;
    let user = "ret";
    app.update(user, 1, "1").await;
    let old = app.update(user, 2, "1").await.cursor;
    let deleted = delete_on(&app.client, user, 1).await.expect("deleted");
    // The prune runs at startup (and every minute): restart to run it.
    app.restart().await;
    let client = app.client.clone();
    testkit::wait_until(WAIT, "the old cursor to expire", || {
        let client = client.clone();
        let old = old.clone();
        async move {
            matches!(sync_with(&client, user, &old, 0).await, Err(s) if s.code() == Code::OutOfRange)
        }
    })
    .await
    .expect("the delete marker is pruned and the cursor before it expired");
    out_of_range(sync_with(&app.client, user, &old, 0).await, "sync");
    out_of_range(
        watch_with(&app.client, &[user], &old).await,
        "watch one user",
    );
    out_of_range(watch_with(&app.client, &[], &old).await, "watch everyone");
    // From the delete on, nothing was lost: that cursor still works.
    assert!(sync(&app, user, &deleted, 0).await.changes.is_empty());
    // A device whose cursor expired starts over without one.
    let full = sync(&app, user, "", 0).await;
    assert_eq!(
        seen(&full.changes)
            .iter()
            .map(|c| c.manga)
            .collect::<Vec<_>>(),
        vec![2]
    );
    let next_change = app.update(user, 3, "1").await.cursor;
    let caught_up = sync(&app, user, &full.cursor, 0).await;
    assert_eq!(
        seen(&caught_up.changes)
            .iter()
            .map(|c| c.cursor.clone())
            .collect::<Vec<_>>(),
        vec![next_change]
    );
}

// --- a create and a delete in one commit ---------------------------------

/// Creates and deletes of one record sent back to back, many at once, so
/// that (in the SQL stores) some pairs share a group-commit batch. Whoever
/// holds the create's cursor (its writer got it in the ack; a watcher in
/// the event) must learn of the delete when it syncs from there.
async fn a_delete_after_a_create_in_one_commit_is_not_lost(backend: Backend) {
    use futures::StreamExt;
    let app = spawn_app(backend).await;
    let user = "ghost";
    let pairs: Vec<Option<(i64, String, String)>> = futures::stream::iter(1..=400_i64)
        .map(|manga| {
            let client = app.client.clone();
            async move {
                let create = tokio::spawn({
                    let client = client.clone();
                    async move {
                        client
                            .clone()
                            .update_progress(update_req(user, manga, "1"))
                            .await
                    }
                });
                tokio::task::yield_now().await;
                let deleted = delete_on(&client, user, manga).await;
                let created = create.await.expect("task").expect("update").into_inner();
                match deleted {
                    Ok(cursor) => Some((manga, Seen::of_update(&created).cursor, cursor)),
                    // The delete came first: nothing to check.
                    Err(status) if status.code() == Code::NotFound => None,
                    Err(status) => panic!("delete: {status}"),
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let pairs: Vec<(i64, String, String)> = pairs.into_iter().flatten().collect();
    assert!(!pairs.is_empty());
    let mut lost = Vec::new();
    for (manga, created, deleted) in &pairs {
        let (changes, _, _) = sync_all(&app, user, created, 1000).await;
        match seen(&changes).into_iter().find(|c| &c.cursor == deleted) {
            Some(change) => assert_eq!(change, Seen::of_delete(user, *manga, deleted.clone())),
            None => lost.push((position(created), position(deleted))),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} deletes not seen from the create's cursor (create, delete positions): {:?}",
        lost.len(),
        pairs.len(),
        &lost[..lost.len().min(10)]
    );
}

/// A device without a cursor reads the full state in pages: the cursor of
/// a page is the position of its last record, which may be far older than
/// the read itself. Delete markers pruned since (anyone's, with higher
/// positions) must not make the next page "expired": the state was read
/// after those deletes, so nothing is missing, and a device told to start
/// over would start over forever.
async fn a_full_sync_in_pages_completes_after_a_prune(backend: Backend) {
    let mut app = spawn_app_with(backend, &["--change-retention", "1ms"]).await;
    let user = "many";
    let mut acked = Acked::default();
    for manga in 1..=5 {
        update(&app, &mut acked, user, manga, "1").await;
    }
    let before = update(&app, &mut acked, "other", 1, "1").await.cursor;
    delete(&app, &mut acked, "other", 1).await;
    // The prune runs at startup: restart, and wait until it has run.
    app.restart().await;
    let client = app.client.clone();
    testkit::wait_until(WAIT, "the delete marker to be pruned", || {
        let (client, before) = (client.clone(), before.clone());
        async move {
            matches!(sync_with(&client, "other", &before, 0).await, Err(s) if s.code() == Code::OutOfRange)
        }
    })
    .await
    .expect("pruned");

    let mut state = BTreeSet::new();
    let mut cursor = String::new();
    for page in 1.. {
        let got = match sync_with(&app.client, user, &cursor, 2).await {
            Ok(got) => got,
            Err(status) => panic!(
                "page {page} of a full sync (after {cursor:?}, the position of the last record of \
                 page {}) failed: {status}",
                page - 1
            ),
        };
        for change in seen(&got.changes) {
            match change.kind {
                UPDATED => state.insert(change.manga),
                _ => state.remove(&change.manga),
            };
        }
        cursor = got.cursor;
        if !got.more {
            break;
        }
        assert!(page < 100, "paging does not end");
    }
    assert_eq!(state, (1..=5).collect::<BTreeSet<_>>());
}

mod a_full_sync_in_pages_completes_after_a_prune {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::a_full_sync_in_pages_completes_after_a_prune(crate::helpers::Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_full_sync_in_pages_completes_after_a_prune(crate::helpers::Backend::Postgres)
            .await;
    }
}
