#![allow(clippy::unwrap_used)]

use super::*;

fn parse(line: &str) -> (Option<String>, Result<Request, (ErrorCode, String)>) {
    let (id, result) = parse_line(line.as_bytes());
    (
        id.map(|id| id.get().to_owned()),
        result.map_err(|e| (e.reply.code, e.reply.message.into_owned())),
    )
}

#[test]
fn envelope_errors_have_their_codes() {
    assert_eq!(parse("{nope").1.unwrap_err().0, ErrorCode::InvalidJson);
    assert_eq!(parse("[1,2]").1.unwrap_err().0, ErrorCode::InvalidMessage);
    assert_eq!(
        parse("{\"type\":5}").1.unwrap_err().0,
        ErrorCode::InvalidMessage
    );
    let (id, res) = parse("{\"type\":\"chat\",\"id\":7}");
    assert_eq!(id.as_deref(), Some("7"));
    assert_eq!(res.unwrap_err().0, ErrorCode::UnknownType);
    let (id, res) = parse("{\"id\":\"a\",\"type\":\"get_progress\",\"data\":{\"manga_id\":\"x\"}}");
    assert_eq!(id.as_deref(), Some("\"a\""));
    let (code, message) = res.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidData);
    assert!(message.starts_with("manga_id"), "{message}");
}

#[test]
fn update_fields_are_validated() {
    let ok = parse(
        r#"{"type":"progress_update","data":{"manga_id":42,"chapter":76.50,"page":3,"status":"completed","private":true}}"#,
    )
    .1
    .unwrap();
    let Request::ProgressUpdate(cmd) = ok else {
        panic!("not an update: {ok:?}");
    };
    assert_eq!(cmd.chapter.to_string(), "76.5");
    assert_eq!(cmd.page, 3);
    assert!(cmd.private);
    let (code, message) =
        parse(r#"{"type":"progress_update","data":{"manga_id":42,"chapter":"76"}}"#)
            .1
            .unwrap_err();
    assert_eq!(code, ErrorCode::InvalidData);
    assert!(message.starts_with("chapter"), "{message}");
}

#[test]
fn records_serialize_with_numeric_chapters() {
    let line = ServerMessage::ProgressAck {
        id: None,
        applied: true,
        cursor: None,
        data: record(),
    }
    .to_line();
    let text = text(&line);
    assert!(text.contains("\"chapter\":76.5,"), "{text}");
    assert!(text.starts_with("{\"type\":\"progress_ack\""), "{text}");
    assert!(text.ends_with("}\n"));
}

fn record() -> Record {
    Record {
        user_id: "u1".into(),
        manga_id: 42,
        chapter: chapter_json("76.5".parse::<Chapter>().unwrap()),
        page: 0,
        status: "reading".into(),
        version: 1,
        updated_at: "2024-01-01T00:00:00.000Z".into(),
        device: None,
        username: None,
    }
}

fn text(line: &Bytes) -> &str {
    std::str::from_utf8(line).unwrap()
}

#[test]
fn acks_carry_the_cursor_and_records_their_device_when_known() {
    let line = ServerMessage::ProgressAck {
        id: None,
        applied: true,
        cursor: Some("c-7"),
        data: Record {
            device: Some("phone".into()),
            ..record()
        },
    }
    .to_line();
    let value: serde_json::Value = serde_json::from_str(text(&line)).unwrap();
    assert_eq!(value["cursor"], "c-7");
    assert_eq!(value["data"]["device"], "phone");
    let line = ServerMessage::ProgressAck {
        id: None,
        applied: false,
        cursor: None,
        data: record(),
    }
    .to_line();
    let value: serde_json::Value = serde_json::from_str(text(&line)).unwrap();
    assert!(value.get("cursor").is_none(), "{value}");
    assert!(value["data"].get("device").is_none(), "{value}");
}

#[test]
fn sync_results_list_updates_and_deletes() {
    let line = ServerMessage::SyncResult {
        id: Some(&RawValue::from_string("3".into()).unwrap()),
        data: SyncData {
            changes: vec![
                Change::Updated { data: record() },
                Change::Deleted { manga_id: 7 },
            ],
            cursor: "c-9".into(),
            more: false,
        },
    }
    .to_line();
    let value: serde_json::Value = serde_json::from_str(text(&line)).unwrap();
    assert_eq!(value["type"], "sync_result");
    assert_eq!(value["id"], 3);
    assert_eq!(value["data"]["changes"][0]["op"], "updated");
    assert_eq!(value["data"]["changes"][0]["data"]["manga_id"], 42);
    assert_eq!(
        value["data"]["changes"][1],
        serde_json::json!({"op":"deleted","manga_id":7})
    );
    assert_eq!(value["data"]["cursor"], "c-9");
    assert_eq!(value["data"]["more"], false);
}

#[test]
fn sync_requests_are_validated() {
    let sync = |data: &str| parse(&format!(r#"{{"type":"sync","data":{data}}}"#)).1;
    assert_eq!(
        sync("{}").unwrap(),
        Request::Sync(SyncQuery {
            cursor: None,
            limit: 500
        })
    );
    assert_eq!(
        sync(r#"{"cursor":"abc","limit":1000}"#).unwrap(),
        Request::Sync(SyncQuery {
            cursor: Some("abc".into()),
            limit: 1000
        })
    );
    assert_eq!(
        sync(r#"{"cursor":""}"#).unwrap(),
        Request::Sync(SyncQuery {
            cursor: None,
            limit: 500
        }),
        "an empty cursor is no cursor"
    );
    for bad in [r#"{"limit":0}"#, r#"{"limit":1001}"#, r#"{"limit":"5"}"#] {
        let (code, message) = sync(bad).unwrap_err();
        assert_eq!(code, ErrorCode::InvalidData);
        assert!(message.starts_with("limit"), "{message}");
    }
    let (code, message) = sync(r#"{"cursor":5}"#).unwrap_err();
    assert_eq!(code, ErrorCode::InvalidData);
    assert!(message.starts_with("cursor"), "{message}");
    assert_eq!(
        parse(r#"{"type":"sync"}"#).1.unwrap(),
        Request::Sync(SyncQuery {
            cursor: None,
            limit: 500
        })
    );
}

#[test]
fn an_auth_keeps_a_bad_device_for_its_reply() {
    let auth = |data: &str| match parse(&format!(r#"{{"type":"auth","data":{data}}}"#)).1 {
        Ok(Request::Auth { token, device }) => (token, device),
        other => panic!("not an auth: {other:?}"),
    };
    assert_eq!(auth(r#"{"token":"t"}"#), (Some("t".into()), Ok(None)));
    assert_eq!(
        auth(r#"{"token":"t","device":"Ruth's tablet 📱"}"#).1,
        Ok(Some(Device::parse("Ruth's tablet 📱").unwrap()))
    );
    let long = "x".repeat(65);
    for bad in [
        "\"\"".to_owned(),
        format!("\"{long}\""),
        r#""tab\tbed""#.to_owned(),
        r#""nul\u0000""#.to_owned(),
        r#""del\u007f""#.to_owned(),
        "5".to_owned(),
    ] {
        let device = auth(&format!(r#"{{"token":"t","device":{bad}}}"#)).1;
        let err = device.expect_err(&bad);
        assert!(err.to_string().starts_with("device: "), "{err}");
    }
    // 64 bytes of multi-byte characters is the limit, not 64 characters.
    assert!(Device::parse(&"é".repeat(32)).is_ok());
    assert!(Device::parse(&"é".repeat(33)).is_err());
}

#[test]
fn every_request_type_is_known_and_others_are_not() {
    for kind in [
        "auth",
        "progress_update",
        "get_progress",
        "list_progress",
        "delete_progress",
        "sync",
        "subscribe",
        "unsubscribe",
        "ping",
    ] {
        let (code, _) = parse(&format!(r#"{{"type":"{kind}","data":5}}"#))
            .1
            .unwrap_err();
        assert_eq!(code, ErrorCode::InvalidData, "{kind} is known");
    }
    let (code, _) = parse(r#"{"type":"resync","data":5}"#).1.unwrap_err();
    assert_eq!(code, ErrorCode::UnknownType);
}
