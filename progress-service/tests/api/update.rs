use mangahub_proto::v1 as pb;

use crate::helpers::{Backend, both_backends, spawn_app, update_req};

both_backends!(
    new_record_starts_at_version_1,
    position_moves_forward_only_unless_forced,
    named_status_applies_and_completed_is_sticky,
    chapter_is_exact_and_canonical,
);

async fn new_record_starts_at_version_1(backend: Backend) {
    let app = spawn_app(backend).await;
    let out = app.update("alice", 42, "76.5").await;
    assert!(out.applied);
    let p = out.progress.expect("record");
    assert_eq!(
        (p.user_id.as_str(), p.manga_id, p.chapter.as_str()),
        ("alice", 42, "76.5")
    );
    assert_eq!((p.page, p.status.as_str(), p.version), (0, "reading", 1));
    assert!(p.updated_at.is_some());
    assert_eq!(app.get("alice", 42).await.expect("stored"), p);
}

async fn position_moves_forward_only_unless_forced(backend: Backend) {
    let app = spawn_app(backend).await;
    app.update("bob", 1, "10").await;
    let behind = app.update("bob", 1, "9.5").await;
    assert!(!behind.applied, "a behind position is ignored");
    assert_eq!(
        behind
            .progress
            .as_ref()
            .map(|p| (p.chapter.as_str(), p.version)),
        Some(("10", 1))
    );

    let same = app.update("bob", 1, "10.00").await;
    assert!(!same.applied, "no change, no new version");

    let page_forward = app
        .send(pb::UpdateProgressRequest {
            page: 7,
            ..update_req("bob", 1, "10")
        })
        .await
        .expect("ok");
    assert!(page_forward.applied);
    assert_eq!(
        page_forward.progress.as_ref().map(|p| (p.page, p.version)),
        Some((7, 2))
    );

    let forced = app
        .send(pb::UpdateProgressRequest {
            force: true,
            ..update_req("bob", 1, "2")
        })
        .await
        .expect("ok");
    assert!(forced.applied);
    let p = forced.progress.expect("record");
    assert_eq!((p.chapter.as_str(), p.page, p.version), ("2", 0, 3));
}

async fn named_status_applies_and_completed_is_sticky(backend: Backend) {
    let app = spawn_app(backend).await;
    app.update("carol", 5, "20").await;
    let completed = app
        .send(pb::UpdateProgressRequest {
            status: Some("completed".into()),
            ..update_req("carol", 5, "1")
        })
        .await
        .expect("ok");
    assert!(
        completed.applied,
        "a named status applies even when the position is behind"
    );
    let p = completed.progress.expect("record");
    assert_eq!(
        (p.chapter.as_str(), p.status.as_str(), p.version),
        ("20", "completed", 2)
    );

    let further = app.update("carol", 5, "21").await;
    let p = further.progress.expect("record");
    assert_eq!(
        (p.chapter.as_str(), p.status.as_str(), p.version),
        ("21", "completed", 3)
    );
}

async fn chapter_is_exact_and_canonical(backend: Backend) {
    let app = spawn_app(backend).await;
    for (manga, text, canonical) in [
        (1, "76.50", "76.5"),
        (2, "76.0", "76"),
        (3, "12.25", "12.25"),
        (4, "0", "0"),
        (5, "100000", "100000"),
        (6, "0.01", "0.01"),
    ] {
        let p = app
            .update("dave", manga, text)
            .await
            .progress
            .expect("record");
        assert_eq!(p.chapter, canonical);
        assert_eq!(
            app.get("dave", manga).await.expect("stored").chapter,
            canonical
        );
    }
    app.update("dave", 7, "76.49").await;
    assert!(
        app.update("dave", 7, "76.5").await.applied,
        "76.5 is ahead of 76.49"
    );
}
