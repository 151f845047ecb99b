#![allow(clippy::unwrap_used)]

use super::*;

fn chapter(text: &str) -> Option<String> {
    text.parse::<Chapter>().ok().map(|c| c.to_string())
}

#[test]
fn chapters_are_parsed_exactly() {
    assert_eq!(chapter("76").as_deref(), Some("76"));
    assert_eq!(chapter("76.5").as_deref(), Some("76.5"));
    assert_eq!(chapter("76.50").as_deref(), Some("76.5"));
    assert_eq!(chapter("76.0").as_deref(), Some("76"));
    assert_eq!(chapter("12.25").as_deref(), Some("12.25"));
    assert_eq!(chapter("0.01").as_deref(), Some("0.01"));
    assert_eq!(chapter("7.65e1").as_deref(), Some("76.5"));
    assert_eq!(chapter("1E5").as_deref(), Some("100000"));
    assert_eq!(chapter("-0").as_deref(), Some("0"));
    assert_eq!(chapter("100000.00").as_deref(), Some("100000"));
    assert_eq!(chapter("76.505"), None);
    assert_eq!(chapter("100000.01"), None);
    assert_eq!(chapter("-1"), None);
    assert_eq!(chapter("1e400"), None);
    assert_eq!(chapter("1e-400"), None);
    assert_eq!(chapter("01"), None);
    assert_eq!(chapter("1."), None);
    assert_eq!(chapter("\"76\""), None);
    assert_eq!(chapter("0.1000000000000000055511151231257827"), None);
}

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
    let record = Record {
        user_id: "u1".into(),
        manga_id: 42,
        chapter: "76.5".parse::<Chapter>().unwrap().to_json(),
        page: 0,
        status: "reading".into(),
        version: 1,
        updated_at: "2024-01-01T00:00:00.000Z".into(),
        username: None,
    };
    let line = ServerMessage::ProgressAck {
        id: None,
        applied: true,
        data: record,
    }
    .to_line();
    let text = std::str::from_utf8(&line).unwrap();
    assert!(text.contains("\"chapter\":76.5,"), "{text}");
    assert!(text.starts_with("{\"type\":\"progress_ack\""), "{text}");
    assert!(text.ends_with("}\n"));
}
