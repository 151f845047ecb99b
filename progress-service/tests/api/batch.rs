//! `UpdateProgressBatch`: many updates in one call, applied in the order given,
//! each with its own result.

use mangahub_proto::v1 as pb;
use pb::update_progress_result::Result as Item;
use tonic::Code;

use crate::helpers::{Backend, both_backends, spawn_app, update_req};

both_backends!(
    a_batch_applies_in_order_and_answers_each_update,
    a_full_batch_of_distinct_records_is_written_whole,
    an_oversized_batch_is_refused_whole
);

async fn a_batch_applies_in_order_and_answers_each_update(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut updates: Vec<pb::UpdateProgressRequest> = (1..=100)
        .map(|chapter| update_req("pipeliner", 9, &chapter.to_string()))
        .collect();
    // An invalid one in the middle, and one behind the stored position.
    updates.insert(50, update_req("pipeliner", 9, "1e3"));
    updates.push(update_req("pipeliner", 9, "3"));
    updates.push(update_req("pipeliner", 10, "1"));

    let results = app.send_batch(updates).await;
    assert_eq!(results.len(), 103, "one result per update");
    let item = |n: usize| results[n].result.clone().expect("a result");
    let ok = |n: usize| match item(n) {
        Item::Ok(response) => response,
        Item::Error(err) => panic!("update {n} failed: {err:?}"),
    };

    // Chapters 1..=100 applied one after another: versions 1..=100.
    for (n, chapter) in (0..50).chain(51..101).zip(1..=100) {
        let response = ok(n);
        let progress = response.progress.expect("record");
        assert!(response.applied, "update {n}");
        assert_eq!(progress.chapter, chapter.to_string(), "update {n}");
        assert_eq!(progress.version, chapter, "update {n}");
    }
    match item(50) {
        Item::Error(err) => {
            assert_eq!(err.code, Code::InvalidArgument as i32);
            assert!(err.message.contains("chapter"), "{}", err.message);
        }
        Item::Ok(response) => panic!("an invalid chapter was accepted: {response:?}"),
    }
    let behind = ok(101);
    assert!(!behind.applied, "a position behind is not applied");
    assert_eq!(behind.progress.expect("record").chapter, "100");
    assert!(ok(102).applied, "another record in the same batch");

    let stored = app.get("pipeliner", 9).await.expect("stored");
    assert_eq!((stored.chapter.as_str(), stored.version), ("100", 100));
}

/// 1000 records in one call: more rows than one SQL statement takes
/// (SQLite writes them in several statements of one transaction).
async fn a_full_batch_of_distinct_records_is_written_whole(backend: Backend) {
    let app = spawn_app(backend).await;
    let updates = (1..=1000)
        .map(|manga| update_req("shelf", manga, &(manga % 97 + 1).to_string()))
        .collect();
    let results = app.send_batch(updates).await;
    assert_eq!(results.len(), 1000);
    let mut cursors = std::collections::HashSet::new();
    for (n, result) in results.into_iter().enumerate() {
        match result.result.expect("a result") {
            Item::Ok(response) => {
                assert!(response.applied, "update {n}");
                assert!(
                    cursors.insert(response.cursor),
                    "update {n}: a cursor of its own"
                );
            }
            Item::Error(err) => panic!("update {n} failed: {err:?}"),
        }
    }
    let listed = app
        .list(pb::ListProgressRequest {
            user_id: "shelf".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("listed")
        .items;
    assert_eq!(listed.len(), 1000, "every record stored");
    for p in listed {
        assert_eq!(
            p.chapter,
            (p.manga_id % 97 + 1).to_string(),
            "manga {}",
            p.manga_id
        );
        assert_eq!(p.version, 1, "manga {}", p.manga_id);
    }
}

async fn an_oversized_batch_is_refused_whole(backend: Backend) {
    let app = spawn_app(backend).await;
    let updates = (1..=1001)
        .map(|chapter| update_req("greedy", 1, &chapter.to_string()))
        .collect();
    let err = app
        .client
        .clone()
        .update_progress_batch(pb::UpdateProgressBatchRequest { updates })
        .await
        .expect_err("more than 1000 updates");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 1000"), "{}", err.message());
    let missing = app.get("greedy", 1).await.expect_err("nothing was applied");
    assert_eq!(missing.code(), Code::NotFound);
}
