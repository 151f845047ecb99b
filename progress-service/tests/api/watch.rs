use std::time::Duration;

use futures::StreamExt;
use mangahub_proto::v1 as pb;
use tonic::{Code, Streaming};

use crate::helpers::{Backend, TestApp, both_backends, spawn_app, spawn_app_with, update_req};

both_backends!(
    watchers_get_matching_events_in_order,
    a_stalled_watcher_never_slows_writers
);

const WAIT: Duration = Duration::from_secs(15);

async fn watch(app: &TestApp, users: &[&str], mangas: &[i64]) -> Streaming<pb::ProgressEvent> {
    app.client
        .clone()
        .watch_progress(pb::WatchProgressRequest {
            user_ids: users.iter().map(|u| (*u).to_owned()).collect(),
            manga_ids: mangas.to_vec(),
            ..Default::default()
        })
        .await
        .expect("watch opens")
        .into_inner()
}

async fn next(stream: &mut Streaming<pb::ProgressEvent>) -> pb::ProgressEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("event arrives in time")
        .expect("stream healthy")
        .expect("stream open")
}

fn summary(ev: &pb::ProgressEvent) -> (i32, String, i64, String) {
    let p = ev.progress.clone().unwrap_or_default();
    (ev.kind, p.user_id, p.manga_id, p.chapter)
}

async fn watchers_get_matching_events_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut by_user = watch(&app, &["w1"], &[]).await;
    let mut by_manga = watch(&app, &[], &[7]).await;
    let mut by_both = watch(&app, &["w2"], &[7]).await;
    let mut everything = watch(&app, &[], &[]).await;

    app.send(pb::UpdateProgressRequest {
        origin: "conn-1".into(),
        private: true,
        ..update_req("w1", 1, "1")
    })
    .await
    .expect("ok");
    app.update("w2", 7, "2").await;
    app.update("w1", 7, "3").await;
    app.update("w1", 7, "1").await; // behind: not applied, no event
    app.delete("w1", 1).await.expect("deleted");

    let updated = pb::EventKind::Updated as i32;
    let deleted = pb::EventKind::Deleted as i32;
    let first = next(&mut by_user).await;
    assert_eq!(summary(&first), (updated, "w1".into(), 1, "1".into()));
    assert_eq!((first.origin.as_str(), first.private), ("conn-1", true));
    assert_eq!(
        summary(&next(&mut by_user).await),
        (updated, "w1".into(), 7, "3".into())
    );
    assert_eq!(
        summary(&next(&mut by_user).await),
        (deleted, "w1".into(), 1, String::new())
    );

    assert_eq!(
        summary(&next(&mut by_manga).await),
        (updated, "w2".into(), 7, "2".into())
    );
    assert_eq!(
        summary(&next(&mut by_manga).await),
        (updated, "w1".into(), 7, "3".into())
    );

    assert_eq!(
        summary(&next(&mut by_both).await),
        (updated, "w2".into(), 7, "2".into())
    );

    let all: Vec<_> = [
        next(&mut everything).await,
        next(&mut everything).await,
        next(&mut everything).await,
        next(&mut everything).await,
    ]
    .iter()
    .map(summary)
    .collect();
    assert_eq!(
        all,
        vec![
            (updated, "w1".into(), 1, "1".into()),
            (updated, "w2".into(), 7, "2".into()),
            (updated, "w1".into(), 7, "3".into()),
            (deleted, "w1".into(), 1, String::new()),
        ]
    );
    // The filtered streams saw nothing else: a fresh marker event is next.
    app.update("w2", 7, "9").await;
    assert_eq!(
        summary(&next(&mut by_both).await),
        (updated, "w2".into(), 7, "9".into())
    );
}

async fn a_stalled_watcher_never_slows_writers(backend: Backend) {
    let app = spawn_app_with(backend, &["--watch-buffer", "16"]).await;
    let mut stalled = watch(&app, &[], &[]).await;
    let updates = 5000;
    let acked = futures::stream::iter(1..=updates)
        .map(|manga| {
            let app = &app;
            async move { app.send(update_req("busy", manga, "1")).await }
        })
        .buffer_unordered(64)
        .filter(|r| std::future::ready(r.is_ok()))
        .count();
    let acked = tokio::time::timeout(Duration::from_secs(120), acked)
        .await
        .expect("writers are not held up by a watcher that never reads");
    assert_eq!(acked, updates as usize);

    // The watcher was cut off with a lag error instead of holding anyone up.
    let mut received = 0;
    let end = loop {
        match tokio::time::timeout(WAIT, stalled.message())
            .await
            .expect("stream moves")
        {
            Ok(Some(_)) => received += 1,
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    let status = end.expect("the lagging watcher gets an error");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(received < updates, "it lost events and was told so");
}
