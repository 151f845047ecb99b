//! A connection names its device in `auth`; records say which device moved
//! them last, everywhere a record is shown.

use serde_json::json;

use super::helpers::{spawn_app, token};

#[tokio::test]
async fn the_device_is_stored_and_shown_on_every_record() {
    let app = spawn_app().await;
    let mut phone = app.authed_device("ines", "Ines's phone 📱").await;
    let mut tablet = app.authed_device("ines", "tablet").await;
    let mut fan = app.authed("jon").await;
    fan.subscribe(json!({"channel":"global"})).await;

    let ack = phone.update(8, 2.0).await;
    assert_eq!(ack["data"]["device"], "Ines's phone 📱", "{ack}");
    let event = tablet.recv().await;
    assert_eq!(event["type"], "progress_broadcast");
    assert_eq!(event["data"]["device"], "Ines's phone 📱", "{event}");
    assert_eq!(fan.recv().await["data"]["device"], "Ines's phone 📱");

    let got = tablet
        .request(json!({"type":"get_progress","data":{"manga_id":8}}))
        .await;
    assert_eq!(got["data"]["device"], "Ines's phone 📱", "{got}");

    // The tablet continues: now it is the device of the last change.
    let ack = tablet.update(8, 3.0).await;
    assert_eq!(ack["data"]["device"], "tablet", "{ack}");
    assert_eq!(phone.recv().await["data"]["device"], "tablet");
    let listed = phone.request(json!({"type":"list_progress"})).await;
    assert_eq!(listed["data"]["items"][0]["device"], "tablet", "{listed}");
    let synced = phone.sync(None, None).await;
    assert_eq!(
        synced["data"]["changes"][0]["data"]["device"], "tablet",
        "{synced}"
    );

    // A connection that names no device: records it writes say nothing.
    let mut anonymous = app.authed("ines").await;
    let ack = anonymous.update(9, 1.0).await;
    assert!(ack["data"].get("device").is_none(), "{ack}");
}

#[tokio::test]
async fn a_bad_device_name_fails_the_auth_and_closes() {
    let app = spawn_app().await;
    for device in [
        json!("x".repeat(65)),
        json!("é".repeat(33)),
        json!(""),
        json!("line\nbreak"),
        json!("bell\u{7}"),
        json!(42),
    ] {
        let mut c = app.client().await;
        let reply = c
            .request(json!({"type":"auth","id":"a","data":{"token":token("kay"),"device":device}}))
            .await;
        assert_eq!(reply["type"], "auth_response", "{reply}");
        assert_eq!(reply["id"], "a");
        assert_eq!(reply["success"], false, "{device}: {reply}");
        let error = reply["error"].as_str().expect("error");
        assert!(error.starts_with("device"), "{device}: {error}");
        assert!(c.until_closed().await.is_empty(), "closed after {device}");
    }
    // 64 bytes is fine, multi-byte characters included.
    app.authed_device("kay", &"é".repeat(32)).await;
    app.authed_device("kay", &"x".repeat(64)).await;
}

#[tokio::test]
async fn a_device_on_the_other_transport_is_the_same_users_device() {
    let app = spawn_app().await;
    let mut here = app.authed("both-ways").await;
    let mut there = app.other_client().await;
    let auth = there
        .request(json!({"type":"auth","data":{"token":token("both-ways"),"device":"web"}}))
        .await;
    assert_eq!(auth["success"], true, "{auth}");
    here.update(7, 3.0).await;
    let event = there.recv_type("progress_broadcast").await;
    assert_eq!(event["channel"], "user");
    assert_eq!(event["data"]["chapter"], 3);
    there.update(7, 4.0).await;
    let event = here.recv_type("progress_broadcast").await;
    assert_eq!(event["data"]["chapter"], 4);
    assert_eq!(event["data"]["device"], "web");
}
