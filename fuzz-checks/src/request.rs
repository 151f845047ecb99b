//! `request`: the gateway's request parsing on arbitrary lines. It never
//! panics; an accepted request, written back as a JSON line, parses to the
//! same request and `id`; a refused one gives an error reply that is one
//! valid JSON line echoing the `id`.

use gateway::protocol::{Channel, Request, ServerMessage, parse_line};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub fn check(data: &[u8]) {
    let (id, parsed) = parse_line(data);
    match parsed {
        Ok(request) => {
            let line = to_line(id.as_deref(), &request);
            let (id_again, again) = parse_line(line.as_bytes());
            assert_eq!(
                id_again.as_ref().map(|i| i.get()),
                id.as_ref().map(|i| i.get()),
                "{line}"
            );
            let again = again.unwrap_or_else(|e| panic!("{line} refused: {:?}", e.reply));
            assert_eq!(comparable(&again), comparable(&request), "{line}");
        }
        Err(err) => {
            assert_eq!(
                err.id.as_ref().map(|i| i.get()),
                id.as_ref().map(|i| i.get())
            );
            let reply = ServerMessage::error(err.id.as_deref(), &err.reply).to_line();
            check_error_reply(&reply, id.as_deref());
        }
    }
}

/// The request with an auth `device` error reduced to its field: the
/// rejected name itself is not kept, so it cannot be written back.
fn comparable(request: &Request) -> (Request, Option<&'static str>) {
    match request {
        Request::Auth {
            token,
            device: Err(err),
        } => (
            Request::Auth {
                token: token.clone(),
                device: Ok(None),
            },
            Some(err.field),
        ),
        other => (other.clone(), None),
    }
}

fn to_line(id: Option<&RawValue>, request: &Request) -> String {
    // Raw JSON texts: a chapter goes back as its exact text, never a float.
    let mut data: Vec<(&str, String)> = Vec::new();
    let mut put = |name: &'static str, value: Value| data.push((name, value.to_string()));
    match request {
        Request::Auth { token, device } => {
            if let Some(token) = token {
                put("token", json!(token));
            }
            match device {
                Ok(Some(device)) => put("device", json!(device.as_str())),
                Ok(None) => {}
                // Any name the gateway refuses gives the same `device` error.
                Err(_) => put("device", json!("")),
            }
        }
        Request::ProgressUpdate(u) => {
            put("manga_id", json!(u.manga_id));
            put("page", json!(u.page));
            if let Some(status) = &u.status {
                put("status", json!(status.as_str()));
            }
            put("force", json!(u.force));
            put("private", json!(u.private));
            if let Some(user) = &u.user_id {
                put("user_id", json!(user));
            }
        }
        Request::GetProgress { manga_id } | Request::DeleteProgress { manga_id } => {
            put("manga_id", json!(manga_id));
        }
        Request::ListProgress(q) => {
            if let Some(since) = q.updated_since {
                put(
                    "updated_since",
                    json!(since.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                );
            }
            put("limit", json!(q.limit));
            if let Some(cursor) = &q.cursor {
                put("cursor", json!(cursor));
            }
        }
        Request::Sync(q) => {
            if let Some(cursor) = &q.cursor {
                put("cursor", json!(cursor));
            }
            put("limit", json!(q.limit));
        }
        Request::Subscribe(channel) | Request::Unsubscribe(channel) => match channel {
            Channel::Manga(id) => put("manga_id", json!(id)),
            Channel::Global => put("channel", json!("global")),
        },
        Request::Ping => {}
    }
    if let Request::ProgressUpdate(u) = request {
        data.push(("chapter", u.chapter.to_string()));
    }
    let data: Vec<String> = data
        .iter()
        .map(|(name, value)| format!("{}:{value}", json!(name)))
        .collect();
    let id = id
        .map(|id| format!(",\"id\":{}", id.get()))
        .unwrap_or_default();
    format!(
        "{{\"type\":{}{id},\"data\":{{{}}}}}",
        json!(request.kind()),
        data.join(",")
    )
}

#[derive(Deserialize)]
struct ErrorLine<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    code: String,
    message: String,
}

/// One line, valid JSON (numbers are kept as text: an `id` such as `1e400`
/// is valid JSON that a float would not hold), echoing `id`.
fn check_error_reply(reply: &[u8], id: Option<&RawValue>) {
    let (last, body) = reply.split_last().expect("a reply is never empty");
    assert_eq!(*last, b'\n');
    assert!(!body.contains(&b'\n'), "a reply is one line");
    let text = std::str::from_utf8(body).expect("a reply is UTF-8");
    let line: ErrorLine<'_> = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(line.kind, "error");
    assert!(!line.code.is_empty() && !line.message.is_empty(), "{text}");
    assert_eq!(line.id.map(RawValue::get), id.map(RawValue::get), "{text}");
}
