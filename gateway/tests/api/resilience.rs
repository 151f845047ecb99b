//! The progress service goes away and comes back; the gateway and its
//! clients stay connected throughout.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{Progress, spawn_app};

#[tokio::test]
async fn a_service_outage_gives_unavailable_and_recovery_needs_no_reconnect() {
    let mut app = spawn_app().await;
    let mut phone = app.authed("ruth").await;
    let mut tablet = app.authed("ruth").await;
    let mut fan = app.authed("sam").await;
    fan.subscribe(json!({"channel":"global"})).await;
    phone.update(1, 1.0).await;
    assert_eq!(tablet.recv().await["channel"], "user");
    assert_eq!(fan.recv().await["channel"], "global");

    let progress = app.progress.take().expect("progress service");
    let addr = progress.addr;
    progress.stop().await;
    let deadline = Instant::now() + crate::helpers::WAIT;
    while app.readiness.is_ready() {
        assert!(
            Instant::now() < deadline,
            "readiness follows the event stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let reply = phone
        .request(json!({"type":"progress_update","id":"down","data":{"manga_id":1,"chapter":2}}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "UNAVAILABLE");
    assert_eq!(reply["id"], "down");
    assert!(started.elapsed() < Duration::from_secs(5), "answered fast");
    // A pipelined run (one batch call) fails line by line, in order.
    let mut run = String::new();
    for id in ["p1", "p2", "p3"] {
        run += &json!({"type":"progress_update","id":id,"data":{"manga_id":1,"chapter":2}})
            .to_string();
        run.push('\n');
    }
    phone.send_raw(run.as_bytes()).await;
    for id in ["p1", "p2", "p3"] {
        let reply = phone.recv().await;
        assert_eq!(
            (&reply["id"], &reply["code"]),
            (&json!(id), &json!("UNAVAILABLE")),
            "{reply}"
        );
    }
    for kind in ["get_progress", "delete_progress"] {
        let reply = phone
            .request(json!({"type":kind,"data":{"manga_id":1}}))
            .await;
        assert_eq!(reply["code"], "UNAVAILABLE", "{reply}");
    }
    assert_eq!(
        phone.request(json!({"type":"list_progress"})).await["code"],
        "UNAVAILABLE"
    );
    assert_eq!(phone.request(json!({"type":"ping"})).await["type"], "pong");

    app.progress = Some(Progress::start(addr, &app.db).await);

    // Every connected client is told to resync once the stream is back.
    for c in [&mut phone, &mut tablet, &mut fan] {
        let system = c.recv_type("system").await;
        assert_eq!(system["data"]["code"], "RESYNC", "{system}");
    }
    let ack = phone.update(1, 3.0).await;
    assert_eq!(ack["type"], "progress_ack", "{ack}");
    assert_eq!(ack["data"]["chapter"], 3);
    assert_eq!(ack["data"]["version"], 2, "the data survived the restart");
    let event = tablet.recv().await;
    assert_eq!(event["type"], "progress_broadcast");
    assert_eq!(event["data"]["chapter"], 3);
    assert_eq!(fan.recv().await["data"]["chapter"], 3);
}
