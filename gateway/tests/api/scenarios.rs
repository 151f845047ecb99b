//! The original project's integration suite, against this protocol.

use std::time::{Duration, Instant};

use serde_json::json;

use super::helpers::{spawn_app, spawn_app_with, token};

#[tokio::test]
async fn multi_client_broadcast_reaches_5_clients() {
    let app = spawn_app().await;
    let mut listeners = Vec::new();
    for i in 0..5 {
        let mut c = app.authed(&format!("listener-{i}")).await;
        c.subscribe(json!({"channel":"global"})).await;
        listeners.push(c);
    }
    let mut sender = app.authed("sender").await;
    sender.update(77, 10.0).await;
    for c in &mut listeners {
        let event = c.recv().await;
        assert_eq!(event["type"], "progress_broadcast");
        assert_eq!(event["data"]["user_id"], "sender");
        assert_eq!(event["data"]["chapter"], 10);
    }
}

#[tokio::test]
async fn concurrent_users_10_by_5_updates() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for u in 0..10 {
        let mut c = app.authed(&format!("reader-{u}")).await;
        tasks.push(tokio::spawn(async move {
            for m in 1..=5 {
                let ack = c
                    .update(m, f64::from(u32::try_from(m).unwrap_or(0) * 10))
                    .await;
                assert_eq!(ack["type"], "progress_ack", "{ack}");
            }
            let list = c.request(json!({"type":"list_progress"})).await;
            let items = list["data"]["items"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert_eq!(items.len(), 5, "{list}");
            for item in items {
                assert_eq!(item["chapter"], item["manga_id"].as_i64().unwrap_or(0) * 10);
            }
        }));
    }
    for t in tasks {
        t.await.expect("user task");
    }
}

#[tokio::test]
async fn rapid_updates_1_to_100_end_at_100() {
    let app = spawn_app_with(&["--rate-limit-per-sec", "1000", "--rate-limit-burst", "1000"]).await;
    let mut c = app.authed("rapid").await;
    let mut batch = String::new();
    for chapter in 1..=100 {
        batch.push_str(
            &json!({"type":"progress_update","data":{"manga_id":5,"chapter":chapter}}).to_string(),
        );
        batch.push('\n');
    }
    c.send_raw(batch.as_bytes()).await;
    for _ in 1..=100 {
        assert_eq!(c.recv().await["type"], "progress_ack");
    }
    let stored = c
        .request(json!({"type":"get_progress","data":{"manga_id":5}}))
        .await;
    assert_eq!(stored["data"]["chapter"], 100);
    assert_eq!(stored["data"]["version"], 100);
}

#[tokio::test]
async fn connect_send_close_100_cycles_all_succeed() {
    let app = spawn_app().await;
    let mut ok = 0;
    for i in 0..100 {
        let mut c = app.client().await;
        let auth = c
            .request(json!({"type":"auth","data":{"token":token(&format!("cycle-{}", i % 7))}}))
            .await;
        let pong = c.request(json!({"type":"ping","id":i})).await;
        if auth["success"] == true && pong["id"] == i {
            ok += 1;
        }
    }
    assert_eq!(ok, 100);
}

#[tokio::test]
async fn invalid_messages_then_a_valid_one() {
    let app = spawn_app().await;
    let mut c = app.authed("mixed").await;
    for bad in [
        &b"hello"[..],
        b"{}",
        b"{\"type\":\"nope\"}",
        b"{\"type\":\"progress_update\"}",
    ] {
        c.send_raw(bad).await;
        c.send_raw(b"\n").await;
        assert_eq!(c.recv().await["type"], "error");
    }
    let ack = c.update(3, 2.0).await;
    assert_eq!(ack["type"], "progress_ack");
}

#[tokio::test]
async fn graceful_shutdown_with_10_clients_finishes_within_10s() {
    let mut app = spawn_app().await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(app.authed(&format!("bye-{i}")).await);
    }
    let mut silent = app.client().await;
    let started = Instant::now();
    let result = app.shutdown().await;
    assert!(result.is_ok(), "run returned {result:?}");
    for c in &mut clients {
        let seen = c.until_closed().await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0]["type"], "system");
        assert_eq!(seen[0]["data"]["code"], "SHUTDOWN");
    }
    silent.until_closed().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    // No longer accepting.
    assert!(
        tokio::net::TcpStream::connect(app.client_addr())
            .await
            .is_err()
    );
}
