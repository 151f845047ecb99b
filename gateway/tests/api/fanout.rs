//! Who receives which `progress_broadcast`, and labelled how.

use std::time::Duration;

use mangahub_proto::v1 as pb;
use serde_json::json;

use super::helpers::spawn_app;

const QUIET: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_users_second_device_receives_the_update_and_the_origin_only_its_ack() {
    let app = spawn_app().await;
    let mut phone = app.authed("alice").await;
    let mut tablet = app.authed("alice").await;
    let ack = phone.update(42, 76.5).await;
    assert_eq!(ack["type"], "progress_ack");

    let event = tablet.recv().await;
    assert_eq!(event["type"], "progress_broadcast", "{event}");
    assert_eq!(event["channel"], "user");
    assert_eq!(event["data"]["user_id"], "alice");
    assert_eq!(event["data"]["username"], "alice-name");
    assert_eq!(event["data"]["manga_id"], 42);
    assert_eq!(event["data"]["chapter"], 76.5);
    assert_eq!(event["data"]["version"], 1);
    assert!(event["timestamp"].is_u64(), "{event}");
    assert!(
        event["data"]["updated_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    phone.assert_silent(QUIET).await;

    // Deletes reach the other devices too.
    let deleted = phone
        .request(json!({"type":"delete_progress","data":{"manga_id":42}}))
        .await;
    assert_eq!(deleted["type"], "progress_deleted");
    let event = tablet.recv().await;
    assert_eq!(
        event,
        json!({"type":"progress_deleted","channel":"user","cursor":deleted["cursor"],"data":{"manga_id":42}})
    );
    phone.assert_silent(QUIET).await;
}

#[tokio::test]
async fn manga_and_global_subscribers_receive_public_updates() {
    let app = spawn_app().await;
    let mut publisher = app.authed("pub").await;
    let mut manga_fan = app.authed("fan").await;
    let mut other_manga = app.authed("other").await;
    let mut everyone = app.authed("watcher").await;
    manga_fan.subscribe(json!({"manga_id": 7})).await;
    other_manga.subscribe(json!({"manga_id": 8})).await;
    everyone.subscribe(json!({"channel": "global"})).await;

    publisher.update(7, 3.0).await;
    let event = manga_fan.recv().await;
    assert_eq!(event["type"], "progress_broadcast");
    assert_eq!(event["channel"], "manga:7");
    assert_eq!(event["data"]["user_id"], "pub");
    assert_eq!(event["data"]["username"], "pub-name");
    let event = everyone.recv().await;
    assert_eq!(event["channel"], "global");
    assert_eq!(event["data"]["manga_id"], 7);

    publisher.update(8, 1.0).await;
    assert_eq!(other_manga.recv().await["channel"], "manga:8");
    assert_eq!(everyone.recv().await["data"]["manga_id"], 8);
    manga_fan.assert_silent(QUIET).await;

    // After unsubscribing nothing more arrives.
    manga_fan
        .request(json!({"type":"unsubscribe","data":{"manga_id":7}}))
        .await;
    publisher.update(7, 4.0).await;
    assert_eq!(everyone.recv().await["data"]["chapter"], 4);
    manga_fan.assert_silent(QUIET).await;
}

#[tokio::test]
async fn a_private_update_reaches_only_the_users_own_devices() {
    let app = spawn_app().await;
    let mut phone = app.authed("pat").await;
    let mut tablet = app.authed("pat").await;
    let mut stranger = app.authed("stranger").await;
    stranger.subscribe(json!({"channel":"global"})).await;
    stranger.subscribe(json!({"manga_id": 5})).await;
    let ack = phone
        .request(json!({"type":"progress_update","data":{"manga_id":5,"chapter":2,"private":true}}))
        .await;
    assert_eq!(ack["applied"], true);
    let event = tablet.recv().await;
    assert_eq!(event["channel"], "user");
    stranger.assert_silent(QUIET).await;
}

#[tokio::test]
async fn each_event_arrives_once_labelled_by_the_first_matching_channel() {
    let app = spawn_app().await;
    let mut phone = app.authed("una").await;
    let mut tablet = app.authed("una").await;
    let mut fan = app.authed("vic").await;
    for c in [&mut tablet, &mut fan] {
        c.subscribe(json!({"manga_id": 11})).await;
        c.subscribe(json!({"channel": "global"})).await;
    }
    phone.update(11, 1.0).await;
    assert_eq!(tablet.recv().await["channel"], "user");
    assert_eq!(fan.recv().await["channel"], "manga:11");
    phone.update(12, 1.0).await;
    assert_eq!(tablet.recv().await["channel"], "user");
    assert_eq!(fan.recv().await["channel"], "global");
    tablet.assert_silent(QUIET).await;
    fan.assert_silent(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn an_update_made_over_grpc_reaches_tcp_clients() {
    let app = spawn_app().await;
    let mut device = app.authed("wes").await;
    let mut fan = app.authed("xena").await;
    fan.subscribe(json!({"channel":"global"})).await;
    let mut grpc = app.grpc().await;
    grpc.update_progress(pb::UpdateProgressRequest {
        user_id: "wes".into(),
        manga_id: 99,
        chapter: "12.50".into(),
        page: 4,
        status: None,
        force: false,
        private: false,
        origin: "another-service".into(),
        ..Default::default()
    })
    .await
    .expect("gRPC update");
    let event = device.recv().await;
    assert_eq!(event["channel"], "user");
    assert_eq!(event["data"]["chapter"], 12.5);
    assert_eq!(event["data"]["page"], 4);
    assert_eq!(event["data"]["username"], "wes-name");
    let event = fan.recv().await;
    assert_eq!(event["channel"], "global");

    // A user with no connection: no username known.
    grpc.update_progress(pb::UpdateProgressRequest {
        user_id: "offline".into(),
        manga_id: 1,
        chapter: "1".into(),
        ..Default::default()
    })
    .await
    .expect("gRPC update");
    let event = fan.recv().await;
    assert_eq!(event["data"]["user_id"], "offline");
    assert!(event["data"].get("username").is_none(), "{event}");
}

#[tokio::test]
async fn forbidden_updates_write_nothing_and_broadcast_nothing() {
    let app = spawn_app().await;
    let mut c = app.authed("yuri").await;
    let mut fan = app.authed("zed").await;
    fan.subscribe(json!({"channel":"global"})).await;
    let reply = c
        .request(json!({"type":"progress_update","id":"f","data":{"manga_id":3,"chapter":5,"user_id":"zed"}}))
        .await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "FORBIDDEN");
    assert_eq!(reply["id"], "f");
    let mine = c
        .request(
            json!({"type":"progress_update","data":{"manga_id":3,"chapter":5,"user_id":"yuri"}}),
        )
        .await;
    assert_eq!(mine["type"], "progress_ack", "own user_id is fine");
    assert_eq!(fan.recv().await["data"]["user_id"], "yuri");
    let theirs = fan
        .request(json!({"type":"get_progress","data":{"manga_id":3}}))
        .await;
    assert_eq!(theirs["code"], "NOT_FOUND", "nothing written for zed");
}
