use std::collections::HashSet;

use mangahub_proto::v1 as pb;
use tonic::Code;

use crate::helpers::{Backend, both_backends, spawn_app};

both_backends!(
    get_missing_is_not_found,
    list_pages_in_order_without_gaps,
    list_filters_by_updated_since
);

async fn get_missing_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        app.get("nobody", 1).await.expect_err("absent").code(),
        Code::NotFound
    );
}

async fn list_pages_in_order_without_gaps(backend: Backend) {
    let app = spawn_app(backend).await;
    for manga in 1..=250 {
        app.update("lister", manga, "1").await;
    }
    app.update("someone-else", 1, "1").await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .list(pb::ListProgressRequest {
                user_id: "lister".into(),
                page_size: 100,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page");
        pages += 1;
        seen.extend(page.items);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    let ids: HashSet<i64> = seen.iter().map(|p| p.manga_id).collect();
    assert_eq!(ids.len(), 250, "no record twice");
    assert!(seen.iter().all(|p| p.user_id == "lister"));
    let order: Vec<_> = seen
        .iter()
        .map(|p| {
            let t = p.updated_at.expect("time");
            (t.seconds, t.nanos, p.manga_id)
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "ordered by (updated_at, manga_id)");

    let default_page = app
        .list(pb::ListProgressRequest {
            user_id: "lister".into(),
            ..Default::default()
        })
        .await
        .expect("page");
    assert_eq!(default_page.items.len(), 100, "default page size");
}

async fn list_filters_by_updated_since(backend: Backend) {
    let app = spawn_app(backend).await;
    for manga in 1..=3 {
        app.update("delta", manga, "1").await;
    }
    let mark = app.get("delta", 3).await.expect("stored").updated_at;
    app.update("delta", 4, "1").await;
    app.update("delta", 1, "2").await;
    let page = app
        .list(pb::ListProgressRequest {
            user_id: "delta".into(),
            updated_since: mark,
            ..Default::default()
        })
        .await
        .expect("page");
    let ids: Vec<i64> = page.items.iter().map(|p| p.manga_id).collect();
    assert_eq!(
        ids,
        vec![4, 1],
        "only records updated after the mark, oldest first"
    );
}
