use futures::StreamExt;

use crate::helpers::{Backend, both_backends, spawn_app};

both_backends!(concurrent_writers_on_one_key_lose_nothing);

async fn concurrent_writers_on_one_key_lose_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let writers = 64;
    let per_writer = 5;
    // Each writer sends its own chapters; interleaving decides which apply.
    let results: Vec<_> = futures::stream::iter(0..writers)
        .map(|w| {
            let app = &app;
            async move {
                let mut applied = 0;
                for i in 0..per_writer {
                    let chapter = (i * writers + w + 1).to_string();
                    if app.update("race", 1, &chapter).await.applied {
                        applied += 1;
                    }
                }
                applied
            }
        })
        .buffer_unordered(writers as usize)
        .collect()
        .await;
    let applied: i64 = results.iter().sum();
    let stored = app.get("race", 1).await.expect("stored");
    assert_eq!(stored.version, applied, "one version per applied update");
    assert_eq!(
        stored.chapter,
        (writers * per_writer).to_string(),
        "the furthest chapter wins"
    );
}

/// Two Postgres-alone replicas race on the same keys: each row write is
/// guarded by the version it was planned on, so none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_postgres_lose_no_update() {
    let a = crate::helpers::spawn_app(Backend::Postgres).await;
    let b = crate::helpers::spawn_replica(&a, &[]).await;
    let applied: Vec<i64> = futures::stream::iter(0..200)
        .map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            async move {
                let manga = i % 4 + 1;
                i64::from(
                    app.update("shared", manga, &(i + 1).to_string())
                        .await
                        .applied,
                )
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut versions = 0;
    for manga in 1..=4 {
        let stored = a.get("shared", manga).await.expect("stored");
        versions += stored.version;
        let furthest = (0..200).filter(|i| i % 4 + 1 == manga).max().map(|i| i + 1);
        assert_eq!(
            Some(stored.chapter),
            furthest.map(|c| c.to_string()),
            "manga {manga}"
        );
    }
    assert_eq!(
        versions,
        applied.iter().sum::<i64>(),
        "one version per applied update"
    );
}

/// Postgres alone: replica `a` caches a row, replica `b` moves it forward,
/// then `a` receives an update that is behind. The no-op's answer must carry
/// the stored record (`b`'s), not `a`'s cached copy — alone, and in a batch
/// whose other update is applied (one commit, the stale row unwritten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_never_answers_with_a_row_another_replica_moved_on() {
    use mangahub_proto::v1 as pb;
    use pb::update_progress_result::Result as Item;

    let a = crate::helpers::spawn_app(Backend::Postgres).await;
    let b = crate::helpers::spawn_replica(&a, &[]).await;
    for manga in [1, 2] {
        let first = a.update("stale", manga, "5").await;
        assert_eq!(first.progress.expect("record").version, 1);
        let moved = b.update("stale", manga, "10").await;
        assert!(moved.applied);
        assert_eq!(moved.progress.expect("record").version, 2);
    }

    let behind = a.update("stale", 1, "3").await;
    assert!(!behind.applied, "behind the stored position");
    let record = behind.progress.expect("record");
    assert_eq!(
        (record.chapter.as_str(), record.version),
        ("10", 2),
        "the answer carries the stored record"
    );

    let results = a
        .client
        .clone()
        .update_progress_batch(pb::UpdateProgressBatchRequest {
            updates: vec![
                crate::helpers::update_req("stale", 2, "4"),
                crate::helpers::update_req("stale", 3, "1"),
            ],
        })
        .await
        .expect("batch served")
        .into_inner()
        .results;
    let ok = |n: usize| match results[n].result.clone().expect("a result") {
        Item::Ok(response) => response,
        Item::Error(err) => panic!("update {n} failed: {err:?}"),
    };
    let behind = ok(0);
    assert!(!behind.applied);
    let record = behind.progress.expect("record");
    assert_eq!((record.chapter.as_str(), record.version), ("10", 2));
    assert!(ok(1).applied, "the other record is written");

    // The applied path still guards: `a` writes over `b`'s change correctly.
    let ahead = a.update("stale", 1, "11").await;
    assert!(ahead.applied);
    assert_eq!(ahead.progress.expect("record").version, 3);
}
