//! Client → gateway messages. A line is parsed in two steps: the envelope
//! (`type`, `id`, `data`) first, so that every error can echo the `id`, then
//! `data` for the named type, field by field, so that `INVALID_DATA` names the
//! field at fault.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use mangahub_model::limits::{
    DEFAULT_LIST_LIMIT, DEFAULT_SYNC_LIMIT, MAX_MANGA_ID, MAX_PAGE, MAX_PAGE_SIZE,
};
use mangahub_model::{Chapter, Status};

use super::device::Device;
use super::{ErrorCode, ErrorReply, RequestId};

/// A subscription target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Manga(i64),
    Global,
}

impl Channel {
    pub fn label(self) -> String {
        match self {
            Channel::Manga(id) => format!("manga:{id}"),
            Channel::Global => "global".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateCommand {
    pub manga_id: i64,
    pub chapter: Chapter,
    pub page: i32,
    pub status: Option<Status>,
    pub force: bool,
    pub private: bool,
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub updated_since: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// A `sync`: the changes after `cursor` (none: the full current state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncQuery {
    pub cursor: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A bad `device` fails the authentication, so it is kept for the
    /// `auth_response` rather than refused as `INVALID_DATA`.
    Auth {
        token: Option<String>,
        device: Result<Option<Device>, DataError>,
    },
    ProgressUpdate(UpdateCommand),
    GetProgress {
        manga_id: i64,
    },
    ListProgress(ListQuery),
    DeleteProgress {
        manga_id: i64,
    },
    Sync(SyncQuery),
    Subscribe(Channel),
    Unsubscribe(Channel),
    Ping,
}

impl Request {
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Auth { .. } => "auth",
            Request::ProgressUpdate(_) => "progress_update",
            Request::GetProgress { .. } => "get_progress",
            Request::ListProgress(_) => "list_progress",
            Request::DeleteProgress { .. } => "delete_progress",
            Request::Sync(_) => "sync",
            Request::Subscribe(_) => "subscribe",
            Request::Unsubscribe(_) => "unsubscribe",
            Request::Ping => "ping",
        }
    }
}

/// A field that is missing, mistyped or out of range (the message names it).
pub type DataError = mangahub_model::ValidationError;

/// Why a line was not a request; `id` is set whenever the line had one.
#[derive(Debug)]
pub struct ParseError {
    pub id: Option<RequestId>,
    pub reply: ErrorReply,
}

impl ParseError {
    /// A message longer than `MAX_MESSAGE_BYTES` (it has no readable `id`).
    pub fn too_large() -> Self {
        Self::new(
            None,
            ErrorCode::MessageTooLarge,
            "message longer than MAX_MESSAGE_BYTES; skipped without reading it",
        )
    }

    /// A WebSocket binary message: the protocol is JSON in text frames.
    pub fn binary() -> Self {
        Self::new(
            None,
            ErrorCode::InvalidMessage,
            "binary frames are not accepted: send each JSON message as a text frame",
        )
    }

    fn new(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            reply: ErrorReply::new(code, message.into()),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Parses one line (without its `\n`) into its `id` and request.
pub fn parse_line(line: &[u8]) -> (Option<RequestId>, Result<Request, ParseError>) {
    let Ok(text) = std::str::from_utf8(line) else {
        return (
            None,
            Err(ParseError::new(
                None,
                ErrorCode::InvalidJson,
                "message is not valid UTF-8",
            )),
        );
    };
    let not_an_object = || {
        let (code, message) = match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => (
                ErrorCode::InvalidMessage,
                "message must be an object with a string \"type\"".to_owned(),
            ),
            Err(err) => (ErrorCode::InvalidJson, format!("invalid JSON: {err}")),
        };
        (None, Err(ParseError::new(None, code, message)))
    };
    if !text.trim_start().starts_with('{') {
        return not_an_object();
    }
    let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(text) else {
        return not_an_object();
    };
    let id = match envelope.id {
        None => None,
        Some(raw) if is_string_or_number(raw) => Some(raw.to_owned()),
        Some(_) => {
            return (
                None,
                Err(ParseError::new(
                    None,
                    ErrorCode::InvalidMessage,
                    "\"id\" must be a string or a number",
                )),
            );
        }
    };
    let kind = match envelope
        .kind
        .map(|raw| serde_json::from_str::<String>(raw.get()))
    {
        Some(Ok(kind)) => kind,
        _ => {
            return (
                id.clone(),
                Err(ParseError::new(
                    id,
                    ErrorCode::InvalidMessage,
                    "message must be an object with a string \"type\"",
                )),
            );
        }
    };
    let request = parse_request(&kind, envelope.data).map_err(|err| match err {
        RequestError::UnknownType => ParseError::new(
            id.clone(),
            ErrorCode::UnknownType,
            format!("unknown message type {kind:?}"),
        ),
        RequestError::Data(err) => {
            ParseError::new(id.clone(), ErrorCode::InvalidData, err.to_string())
        }
    });
    (id, request)
}

fn is_string_or_number(raw: &RawValue) -> bool {
    matches!(
        raw.get().as_bytes().first(),
        Some(b'"' | b'-' | b'0'..=b'9')
    )
}

enum RequestError {
    UnknownType,
    Data(DataError),
}

impl From<DataError> for RequestError {
    fn from(err: DataError) -> Self {
        RequestError::Data(err)
    }
}

#[derive(Deserialize, Default)]
struct Fields<'a> {
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    device: Option<&'a RawValue>,
    #[serde(borrow, default)]
    manga_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    chapter: Option<&'a RawValue>,
    #[serde(borrow, default)]
    page: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<&'a RawValue>,
    #[serde(borrow, default)]
    force: Option<&'a RawValue>,
    #[serde(borrow, default)]
    private: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    updated_since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cursor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
}

/// The one list of request types: the type picks how its `data` is read;
/// `data` is parsed only for a known type, so an unknown one is always
/// `UNKNOWN_TYPE`.
fn parse_request(kind: &str, data: Option<&RawValue>) -> Result<Request, RequestError> {
    let parse: fn(Fields<'_>) -> Result<Request, DataError> = match kind {
        "auth" => |f| {
            Ok(Request::Auth {
                token: opt_string("token", f.token).ok().flatten(),
                device: device(f.device),
            })
        },
        "progress_update" => |f| {
            Ok(Request::ProgressUpdate(UpdateCommand {
                manga_id: manga_id(f.manga_id)?,
                chapter: chapter(f.chapter)?,
                page: page(f.page)?,
                status: status(f.status)?,
                force: opt_bool("force", f.force)?,
                private: opt_bool("private", f.private)?,
                user_id: opt_string("user_id", f.user_id)?,
            }))
        },
        "get_progress" => |f| {
            Ok(Request::GetProgress {
                manga_id: manga_id(f.manga_id)?,
            })
        },
        "list_progress" => |f| {
            Ok(Request::ListProgress(ListQuery {
                updated_since: updated_since(f.updated_since)?,
                limit: limit(f.limit, DEFAULT_LIST_LIMIT)?,
                cursor: cursor(f.cursor)?,
            }))
        },
        "delete_progress" => |f| {
            Ok(Request::DeleteProgress {
                manga_id: manga_id(f.manga_id)?,
            })
        },
        "sync" => |f| {
            Ok(Request::Sync(SyncQuery {
                cursor: cursor(f.cursor)?,
                limit: limit(f.limit, DEFAULT_SYNC_LIMIT)?,
            }))
        },
        "subscribe" => |f| Ok(Request::Subscribe(channel(f.manga_id, f.channel)?)),
        "unsubscribe" => |f| Ok(Request::Unsubscribe(channel(f.manga_id, f.channel)?)),
        "ping" => |_| Ok(Request::Ping),
        _ => return Err(RequestError::UnknownType),
    };
    let fields = match data {
        None => Fields::default(),
        Some(raw) if raw.get().starts_with('{') => serde_json::from_str(raw.get())
            .map_err(|err| DataError::new("data", err.to_string()))?,
        Some(_) => return Err(DataError::new("data", "must be an object").into()),
    };
    Ok(parse(fields)?)
}

fn int(field: &'static str, raw: &RawValue, min: i64, max: i64) -> Result<i64, DataError> {
    serde_json::from_str::<i64>(raw.get())
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| DataError::new(field, format!("must be an integer between {min} and {max}")))
}

fn manga_id(raw: Option<&RawValue>) -> Result<i64, DataError> {
    let raw = raw.ok_or_else(|| DataError::new("manga_id", "is required"))?;
    int("manga_id", raw, 1, MAX_MANGA_ID)
}

fn chapter(raw: Option<&RawValue>) -> Result<Chapter, DataError> {
    let raw = raw.ok_or_else(|| DataError::new("chapter", "is required"))?;
    if raw.get().starts_with('"') {
        return Err(DataError::new("chapter", "must be a number, not a string"));
    }
    Ok(Chapter::from_json_number(raw.get())?)
}

fn page(raw: Option<&RawValue>) -> Result<i32, DataError> {
    match raw {
        None => Ok(0),
        Some(raw) => int("page", raw, 0, i64::from(MAX_PAGE))
            .and_then(|p| i32::try_from(p).map_err(|_| DataError::new("page", "out of range"))),
    }
}

fn status(raw: Option<&RawValue>) -> Result<Option<Status>, DataError> {
    opt_string("status", raw)?
        .map(|status| status.parse::<Status>())
        .transpose()
}

fn opt_bool(field: &'static str, raw: Option<&RawValue>) -> Result<bool, DataError> {
    match raw {
        None => Ok(false),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| DataError::new(field, "must be true or false")),
    }
}

fn opt_string(field: &'static str, raw: Option<&RawValue>) -> Result<Option<String>, DataError> {
    raw.map(|raw| {
        serde_json::from_str::<String>(raw.get())
            .map_err(|_| DataError::new(field, "must be a string"))
    })
    .transpose()
}

fn updated_since(
    raw: Option<&RawValue>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, DataError> {
    let Some(text) = opt_string("updated_since", raw)? else {
        return Ok(None);
    };
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|t| Some(t.with_timezone(&chrono::Utc)))
        .map_err(|_| DataError::new("updated_since", "must be an RFC 3339 timestamp"))
}

fn limit(raw: Option<&RawValue>, default: u32) -> Result<u32, DataError> {
    match raw {
        None => Ok(default),
        Some(raw) => int("limit", raw, 1, i64::from(MAX_PAGE_SIZE))
            .and_then(|l| u32::try_from(l).map_err(|_| DataError::new("limit", "out of range"))),
    }
}

/// An opaque cursor; an empty one counts as absent.
fn cursor(raw: Option<&RawValue>) -> Result<Option<String>, DataError> {
    Ok(opt_string("cursor", raw)?.filter(|c| !c.is_empty()))
}

fn device(raw: Option<&RawValue>) -> Result<Option<Device>, DataError> {
    opt_string("device", raw)?
        .map(|name| Device::parse(&name))
        .transpose()
}

fn channel(manga: Option<&RawValue>, channel: Option<&RawValue>) -> Result<Channel, DataError> {
    match (manga, opt_string("channel", channel)?) {
        (Some(raw), None) => Ok(Channel::Manga(int("manga_id", raw, 1, MAX_MANGA_ID)?)),
        (None, Some(name)) => {
            if name == "global" {
                return Ok(Channel::Global);
            }
            name.strip_prefix("manga:")
                .and_then(|id| id.parse::<i64>().ok())
                .filter(|id| (1..=MAX_MANGA_ID).contains(id))
                .map(Channel::Manga)
                .ok_or_else(|| DataError::new("channel", "must be \"global\" or \"manga:<id>\""))
        }
        (Some(_), Some(_)) => Err(DataError::new(
            "channel",
            "give either manga_id or channel, not both",
        )),
        (None, None) => Err(DataError::new(
            "manga_id",
            "manga_id or channel is required",
        )),
    }
}
