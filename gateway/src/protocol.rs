//! The JSON-lines protocol of contract §5: what clients send (`Request`), what
//! the gateway answers or pushes (`ServerMessage`), and the exact shape of a
//! progress record. Chapters travel as JSON numbers whose text is parsed
//! exactly (`mangahub_model::Chapter::from_json_number`); no value here ever
//! passes through a float.

mod device;
mod request;

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use mangahub_proto::v1 as pb;
use serde::Serialize;
use serde_json::value::RawValue;

pub use device::Device;
pub use mangahub_model::Chapter;
pub use request::{
    Channel, DataError, ListQuery, ParseError, Request, SyncQuery, UpdateCommand, parse_line,
};

/// The `id` of a request, echoed verbatim (string or number text).
pub type RequestId = Box<RawValue>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    UnknownType,
    InvalidData,
    Forbidden,
    AuthRequired,
    NotFound,
    RateLimited,
    MessageTooLarge,
    TooManySubscriptions,
    Unavailable,
    SlowConsumer,
    CursorExpired,
    Internal,
}

/// A protocol-level failure answered with an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SystemCode {
    Shutdown,
    Resync,
}

/// A progress record as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub user_id: String,
    pub manga_id: i64,
    pub chapter: Box<RawValue>,
    pub page: i32,
    pub status: String,
    pub version: i64,
    pub updated_at: String,
    /// The device of the last applied change, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl Record {
    /// Converts a record of the progress service; `None` when it is malformed.
    pub fn from_pb(p: &pb::Progress) -> Option<Self> {
        let chapter: Chapter = p.chapter.parse().ok()?;
        let updated_at = p
            .updated_at
            .as_ref()
            .and_then(|t| {
                let nanos = u32::try_from(t.nanos).ok()?;
                chrono::DateTime::from_timestamp(t.seconds, nanos)
            })
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))?;
        Some(Self {
            user_id: p.user_id.clone(),
            manga_id: p.manga_id,
            chapter: chapter_json(chapter),
            page: p.page,
            status: p.status.clone(),
            version: p.version,
            updated_at,
            device: p.device.clone().filter(|d| !d.is_empty()),
            username: None,
        })
    }
}

/// A chapter as a JSON number: its canonical text, which always is one.
pub fn chapter_json(chapter: Chapter) -> Box<RawValue> {
    RawValue::from_string(chapter.to_string()).unwrap_or_default()
}

/// A change's cursor as clients get it: the service's (opaque, never
/// parsed here), absent when the service gave none.
pub fn cursor(text: &str) -> Option<&str> {
    Some(text).filter(|c| !c.is_empty())
}

#[derive(Debug, Serialize)]
pub struct RecordList {
    pub items: Vec<Record>,
    pub next_cursor: Option<String>,
}

/// One entry of a `sync_result`.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    Updated { data: Record },
    Deleted { manga_id: i64 },
}

#[derive(Debug, Serialize)]
pub struct SyncData {
    pub changes: Vec<Change>,
    pub cursor: String,
    pub more: bool,
}

#[derive(Debug, Serialize)]
pub struct MangaRef {
    pub manga_id: i64,
}

#[derive(Debug, Serialize)]
pub struct ChannelRef {
    pub channel: String,
}

#[derive(Debug, Serialize)]
pub struct SystemData<'a> {
    pub code: SystemCode,
    pub message: &'a str,
}

/// Everything the gateway writes to a client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    AuthResponse {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        success: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        username: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    },
    ProgressAck {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        applied: bool,
        /// The change's position, when applied.
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
        data: Record,
    },
    Progress {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        data: Record,
    },
    ProgressList {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        data: RecordList,
    },
    ProgressDeleted {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
        data: MangaRef,
    },
    SyncResult {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        data: SyncData,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        data: ChannelRef,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        data: ChannelRef,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    ProgressBroadcast {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
        data: &'a Record,
        timestamp: i64,
    },
    System {
        data: SystemData<'a>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        code: ErrorCode,
        message: &'a str,
    },
}

impl<'a> ServerMessage<'a> {
    /// The `type` label, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::AuthResponse { .. } => "auth_response",
            ServerMessage::ProgressAck { .. } => "progress_ack",
            ServerMessage::Progress { .. } => "progress",
            ServerMessage::ProgressList { .. } => "progress_list",
            ServerMessage::ProgressDeleted { .. } => "progress_deleted",
            ServerMessage::SyncResult { .. } => "sync_result",
            ServerMessage::Subscribed { .. } => "subscribed",
            ServerMessage::Unsubscribed { .. } => "unsubscribed",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::ProgressBroadcast { .. } => "progress_broadcast",
            ServerMessage::System { .. } => "system",
            ServerMessage::Error { .. } => "error",
        }
    }

    /// One line of the wire format, `\n` included.
    pub fn to_line(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(128).writer();
        if let Err(err) = serde_json::to_writer(&mut out, self) {
            // Only a failing `Serialize` impl can get here; ours cannot fail.
            tracing::error!(%err, "serializing a reply");
            return Bytes::from_static(
                b"{\"type\":\"error\",\"code\":\"INTERNAL\",\"message\":\"internal error\"}\n",
            );
        }
        let mut buf = out.into_inner();
        buf.put_u8(b'\n');
        buf.freeze()
    }

    pub fn error(id: Option<&'a RawValue>, reply: &'a ErrorReply) -> Self {
        ServerMessage::Error {
            id,
            code: reply.code,
            message: &reply.message,
        }
    }

    pub fn system(code: SystemCode, message: &'a str) -> Self {
        ServerMessage::System {
            data: SystemData { code, message },
        }
    }
}

#[cfg(test)]
mod tests;
