//! The progress service goes away and comes back; the gateway and its
//! clients stay connected throughout, and the gateway resumes its event
//! stream where it left off instead of asking clients to resync.

use std::time::{Duration, Instant};

use mangahub_proto::v1 as pb;
use serde_json::json;

use super::helpers::{Progress, WAIT, spawn_app, spawn_gateway_first};

const QUIET: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_service_outage_gives_unavailable_and_recovery_needs_no_resync() {
    let mut app = spawn_app().await;
    let mut phone = app.authed("ruth").await;
    let mut tablet = app.authed("ruth").await;
    let mut fan = app.authed("sam").await;
    fan.subscribe(json!({"channel":"global"})).await;
    let first = phone.update(1, 1.0).await;
    assert_eq!(tablet.recv().await["cursor"], first["cursor"]);
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
    // Another service writes at once, likely before the gateway's stream is
    // back: it reaches the clients by the replay after the gateway's cursor,
    // or live, but either way once and with no RESYNC before it.
    let mut grpc = app.grpc().await;
    let written = grpc
        .update_progress(pb::UpdateProgressRequest {
            user_id: "ruth".into(),
            manga_id: 2,
            chapter: "7".into(),
            origin: "another-service".into(),
            ..Default::default()
        })
        .await
        .expect("gRPC update after the restart")
        .into_inner();
    for c in [&mut phone, &mut tablet, &mut fan] {
        let event = c.recv().await;
        assert_eq!(event["type"], "progress_broadcast", "no RESYNC: {event}");
        assert_eq!(event["data"]["manga_id"], 2, "{event}");
        assert_eq!(event["cursor"], json!(written.cursor), "{event}");
    }

    let ack = phone.update(1, 3.0).await;
    assert_eq!(ack["type"], "progress_ack", "{ack}");
    assert_eq!(ack["data"]["chapter"], 3);
    assert_eq!(ack["data"]["version"], 2, "the data survived the restart");
    for c in [&mut tablet, &mut fan] {
        let event = c.recv().await;
        assert_eq!(event["type"], "progress_broadcast", "{event}");
        assert_eq!(event["data"]["chapter"], 3);
        assert_eq!(event["cursor"], ack["cursor"]);
    }
    // Nothing twice, and no RESYNC later either.
    for c in [&mut phone, &mut tablet, &mut fan] {
        c.assert_silent(QUIET).await;
    }
}

/// When the gateway's cursor is unknown to the service (here: the service
/// comes back on a new, empty database), resuming is impossible and every
/// client is told `RESYNC`, once; the stream is live again afterwards.
#[tokio::test]
async fn a_cursor_the_service_cannot_resume_from_gives_one_resync() {
    let mut app = spawn_app().await;
    let mut phone = app.authed("tess").await;
    let mut tablet = app.authed("tess").await;
    phone.update(1, 1.0).await;
    assert_eq!(tablet.recv().await["type"], "progress_broadcast");

    let progress = app.progress.take().expect("progress service");
    let addr = progress.addr;
    progress.stop().await;
    let wiped = tempfile::tempdir().expect("temp dir");
    app.progress = Some(Progress::start(addr, &wiped.path().join("new.db")).await);

    for c in [&mut phone, &mut tablet] {
        let system = tokio::time::timeout(WAIT, c.recv_type("system"))
            .await
            .expect("RESYNC in time");
        assert_eq!(system["data"]["code"], "RESYNC", "{system}");
        let message = system["data"]["message"].as_str().expect("message");
        assert!(message.contains("sync"), "{message}");
    }
    let ack = phone.update(1, 2.0).await;
    assert_eq!(ack["data"]["version"], 1, "a new database: {ack}");
    let event = tablet.recv().await;
    assert_eq!(
        event["type"], "progress_broadcast",
        "one RESYNC only: {event}"
    );
    assert_eq!(event["cursor"], ack["cursor"]);
    phone.assert_silent(QUIET).await;
}

/// The service is down when the gateway starts, and a client connects
/// meanwhile. The gateway's first stream starts live (it has no cursor from
/// before), so changes made between the client's connecting and the stream
/// opening would reach it neither live nor by a replay: it is told `RESYNC`
/// once the stream is up. A client connecting after that is not.
#[tokio::test]
async fn clients_connected_before_the_first_stream_opened_are_told_to_resync() {
    let (mut app, addr) = spawn_gateway_first().await;
    let mut tablet = app.authed("uma").await;
    assert!(!app.readiness.is_ready(), "no service yet");

    app.progress = Some(Progress::start(addr, &app.db).await);
    let system = tokio::time::timeout(WAIT, tablet.recv_type("system"))
        .await
        .expect("RESYNC in time");
    assert_eq!(system["data"]["code"], "RESYNC", "{system}");
    assert!(
        tokio::time::timeout(WAIT, app.readiness.wait())
            .await
            .expect("ready in time")
    );

    let mut phone = app.authed("uma").await;
    let ack = phone.update(1, 1.0).await;
    let event = tablet.recv().await;
    assert_eq!(event["type"], "progress_broadcast", "{event}");
    assert_eq!(event["cursor"], ack["cursor"]);
    phone.assert_silent(QUIET).await;
    tablet.assert_silent(QUIET).await;
}
