//! Requests of an authenticated connection → calls to the progress service or
//! to the subscription registry → one reply line. Every gRPC call has a
//! deadline, and every gRPC failure is mapped to a protocol code here, once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mangahub_proto::INVALID_FIELD_TRAILER;
use mangahub_proto::v1 as pb;
use serde_json::value::RawValue;
use tonic::Code;

use crate::auth::Identity;
use crate::backend::{self, Replicas, Retry};
use crate::fanout::{Conn, Fanout};
use crate::protocol::{
    Change, Channel, ChannelRef, Device, ErrorCode, ErrorReply, ListQuery, MangaRef, Record,
    RecordList, Request, ServerMessage, SyncData, SyncQuery, UpdateCommand, cursor,
};

/// What the handlers of every connection share: the progress-service
/// replicas, the fan-out, and the limits they apply.
pub struct Context {
    pub replicas: Arc<Replicas>,
    pub fanout: Arc<Fanout>,
    pub grpc_timeout: Duration,
    pub max_subscriptions: usize,
}

/// One authenticated connection, as the handlers see it.
pub struct Session {
    pub conn: Conn,
    pub identity: Identity,
    /// Named in `auth`; sent with every update of this connection.
    pub device: Option<Device>,
    pub subscriptions: Vec<Channel>,
}

/// A reply line and its `type` (for metrics).
pub struct Reply {
    pub kind: &'static str,
    pub line: Bytes,
}

impl Reply {
    pub fn new(message: &ServerMessage<'_>) -> Self {
        Self {
            kind: message.kind(),
            line: message.to_line(),
        }
    }

    pub fn error(id: Option<&RawValue>, reply: &ErrorReply) -> Self {
        Self::new(&ServerMessage::error(id, reply))
    }
}

pub async fn handle(
    ctx: &Context,
    session: &mut Session,
    id: Option<&RawValue>,
    request: Request,
) -> Reply {
    let result = match request {
        Request::ProgressUpdate(cmd) => update(ctx, session, id, cmd).await,
        Request::GetProgress { manga_id } => get(ctx, session, id, manga_id).await,
        Request::ListProgress(query) => list(ctx, session, id, query).await,
        Request::DeleteProgress { manga_id } => delete(ctx, session, id, manga_id).await,
        Request::Sync(query) => sync(ctx, session, id, query).await,
        Request::Subscribe(channel) => subscribe(ctx, session, id, channel),
        Request::Unsubscribe(channel) => {
            if let Some(pos) = session.subscriptions.iter().position(|c| *c == channel) {
                session.subscriptions.swap_remove(pos);
                ctx.fanout.unsubscribe(channel, session.conn.id());
            }
            Ok(Reply::new(&ServerMessage::Unsubscribed {
                id,
                data: ChannelRef {
                    channel: channel.label(),
                },
            }))
        }
        Request::Ping => Ok(Reply::new(&ServerMessage::Pong { id })),
        Request::Auth { .. } => Err(ErrorReply::new(
            ErrorCode::InvalidMessage,
            "already authenticated",
        )),
    };
    result.unwrap_or_else(|err| Reply::error(id, &err))
}

async fn update(
    ctx: &Context,
    session: &Session,
    id: Option<&RawValue>,
    cmd: UpdateCommand,
) -> Result<Reply, ErrorReply> {
    let request = update_request(ctx, session, cmd)?;
    let response = call(ctx, UPDATE_PROGRESS, Retry::NotSent, request, update_one).await?;
    ack(id, &response)
}

/// One `progress_update` line of a pipelined run, or the reply already
/// decided for a line in that run (rate limited, malformed).
pub enum Pipelined {
    Update {
        id: Option<Box<RawValue>>,
        cmd: UpdateCommand,
    },
    Answered(Reply),
}

/// Answers a run of lines the client sent without waiting, in order. Their
/// updates go to the progress service as one `UpdateProgressBatch` call, which
/// applies them in order (so one record's updates keep their order) and lets
/// them share commits.
pub async fn updates(ctx: &Context, session: &Session, run: Vec<Pipelined>) -> Vec<Reply> {
    let mut replies: Vec<Option<Reply>> = Vec::with_capacity(run.len());
    let (mut slots, mut requests) = (Vec::new(), Vec::new());
    for line in run {
        match line {
            Pipelined::Answered(reply) => replies.push(Some(reply)),
            Pipelined::Update { id, cmd } => match update_request(ctx, session, cmd) {
                Ok(request) => {
                    slots.push((replies.len(), id));
                    requests.push(request);
                    replies.push(None);
                }
                Err(err) => replies.push(Some(Reply::error(id.as_deref(), &err))),
            },
        }
    }
    let responses: Vec<Result<pb::UpdateProgressResponse, ErrorReply>> = if requests.len() > 1 {
        let batch = pb::UpdateProgressBatchRequest { updates: requests };
        let batch_call = |mut client: backend::Client, batch| async move {
            client.update_progress_batch(batch).await
        };
        match call(
            ctx,
            "UpdateProgressBatch",
            Retry::NotSent,
            batch,
            batch_call,
        )
        .await
        {
            Ok(answer) => {
                let mut results = answer.results.into_iter();
                slots.iter().map(|_| batch_result(results.next())).collect()
            }
            Err(err) => vec![Err(err); slots.len()],
        }
    } else if let Some(request) = requests.pop() {
        vec![call(ctx, UPDATE_PROGRESS, Retry::NotSent, request, update_one).await]
    } else {
        Vec::new()
    };
    for ((at, id), response) in slots.into_iter().zip(responses) {
        let reply = response.and_then(|response| ack(id.as_deref(), &response));
        replies[at] = Some(reply.unwrap_or_else(|err| Reply::error(id.as_deref(), &err)));
    }
    replies.into_iter().flatten().collect()
}

fn batch_result(
    result: Option<pb::UpdateProgressResult>,
) -> Result<pb::UpdateProgressResponse, ErrorReply> {
    use pb::update_progress_result::Result as Item;
    match result.and_then(|r| r.result) {
        Some(Item::Ok(response)) => Ok(response),
        Some(Item::Error(err)) => Err(map_status(
            "UpdateProgressBatch",
            &tonic::Status::new(Code::from_i32(err.code), err.message),
        )),
        None => {
            tracing::error!("the progress service answered a batch without this result");
            Err(internal())
        }
    }
}

/// The progress-service request for a `progress_update` of this session.
fn update_request(
    ctx: &Context,
    session: &Session,
    cmd: UpdateCommand,
) -> Result<pb::UpdateProgressRequest, ErrorReply> {
    let user_id = &session.identity.user_id;
    if cmd.user_id.as_deref().is_some_and(|u| u != &**user_id) {
        return Err(ErrorReply::new(
            ErrorCode::Forbidden,
            "user_id does not match the authenticated user",
        ));
    }
    Ok(pb::UpdateProgressRequest {
        user_id: user_id.to_string(),
        manga_id: cmd.manga_id,
        chapter: cmd.chapter.to_string(),
        page: cmd.page,
        status: cmd.status.map(|s| s.as_str().to_owned()),
        force: cmd.force,
        private: cmd.private,
        origin: ctx.fanout.origin(session.conn.id()),
        device: session.device.as_ref().map(|d| d.as_str().to_owned()),
    })
}

fn ack(id: Option<&RawValue>, response: &pb::UpdateProgressResponse) -> Result<Reply, ErrorReply> {
    Ok(Reply::new(&ServerMessage::ProgressAck {
        id,
        applied: response.applied,
        cursor: cursor(&response.cursor).filter(|_| response.applied),
        data: record(response.progress.as_ref())?,
    }))
}

async fn get(
    ctx: &Context,
    session: &Session,
    id: Option<&RawValue>,
    manga_id: i64,
) -> Result<Reply, ErrorReply> {
    let request = pb::GetProgressRequest {
        user_id: session.identity.user_id.to_string(),
        manga_id,
    };
    let get =
        |mut client: backend::Client, request| async move { client.get_progress(request).await };
    let progress = call(ctx, "GetProgress", Retry::Idempotent, request, get).await?;
    Ok(Reply::new(&ServerMessage::Progress {
        id,
        data: record(Some(&progress))?,
    }))
}

async fn list(
    ctx: &Context,
    session: &Session,
    id: Option<&RawValue>,
    query: ListQuery,
) -> Result<Reply, ErrorReply> {
    let request = pb::ListProgressRequest {
        user_id: session.identity.user_id.to_string(),
        updated_since: query.updated_since.map(|t| prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
        }),
        page_size: i32::try_from(query.limit).unwrap_or(1000),
        page_token: query.cursor.unwrap_or_default(),
    };
    let list =
        |mut client: backend::Client, request| async move { client.list_progress(request).await };
    let response = call(ctx, "ListProgress", Retry::Idempotent, request, list).await?;
    let items = response
        .items
        .iter()
        .map(|p| record(Some(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = Some(response.next_page_token).filter(|t| !t.is_empty());
    Ok(Reply::new(&ServerMessage::ProgressList {
        id,
        data: RecordList { items, next_cursor },
    }))
}

async fn delete(
    ctx: &Context,
    session: &Session,
    id: Option<&RawValue>,
    manga_id: i64,
) -> Result<Reply, ErrorReply> {
    let request = pb::DeleteProgressRequest {
        user_id: session.identity.user_id.to_string(),
        manga_id,
        origin: ctx.fanout.origin(session.conn.id()),
    };
    let delete =
        |mut client: backend::Client, request| async move { client.delete_progress(request).await };
    let response = call(ctx, "DeleteProgress", Retry::NotSent, request, delete).await?;
    Ok(Reply::new(&ServerMessage::ProgressDeleted {
        id,
        channel: None,
        cursor: cursor(&response.cursor),
        data: MangaRef { manga_id },
    }))
}

async fn sync(
    ctx: &Context,
    session: &Session,
    id: Option<&RawValue>,
    query: SyncQuery,
) -> Result<Reply, ErrorReply> {
    let request = pb::SyncProgressRequest {
        user_id: session.identity.user_id.to_string(),
        after: query.cursor.unwrap_or_default(),
        limit: i32::try_from(query.limit).unwrap_or(1000),
    };
    let sync =
        |mut client: backend::Client, request| async move { client.sync_progress(request).await };
    let response = call(ctx, SYNC_PROGRESS, Retry::Idempotent, request, sync).await?;
    let changes = response
        .changes
        .iter()
        .map(change)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Reply::new(&ServerMessage::SyncResult {
        id,
        data: SyncData {
            changes,
            cursor: response.cursor,
            more: response.more,
        },
    }))
}

fn change(event: &pb::ProgressEvent) -> Result<Change, ErrorReply> {
    match (pb::EventKind::try_from(event.kind), &event.progress) {
        (Ok(pb::EventKind::Updated), progress) => Ok(Change::Updated {
            data: record(progress.as_ref())?,
        }),
        (Ok(pb::EventKind::Deleted), Some(progress)) => Ok(Change::Deleted {
            manga_id: progress.manga_id,
        }),
        _ => {
            tracing::error!(
                kind = event.kind,
                "the progress service answered a malformed change"
            );
            Err(internal())
        }
    }
}

fn subscribe(
    ctx: &Context,
    session: &mut Session,
    id: Option<&RawValue>,
    channel: Channel,
) -> Result<Reply, ErrorReply> {
    if !session.subscriptions.contains(&channel) {
        if session.subscriptions.len() >= ctx.max_subscriptions {
            return Err(ErrorReply::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "at most {} subscriptions per connection",
                    ctx.max_subscriptions
                ),
            ));
        }
        ctx.fanout.subscribe(channel, &session.conn);
        session.subscriptions.push(channel);
    }
    Ok(Reply::new(&ServerMessage::Subscribed {
        id,
        data: ChannelRef {
            channel: channel.label(),
        },
    }))
}

fn record(progress: Option<&pb::Progress>) -> Result<Record, ErrorReply> {
    progress.and_then(Record::from_pb).ok_or_else(|| {
        tracing::error!("the progress service answered a malformed record");
        internal()
    })
}

fn internal() -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, "internal error")
}

async fn update_one(
    mut client: backend::Client,
    request: pb::UpdateProgressRequest,
) -> Result<tonic::Response<pb::UpdateProgressResponse>, tonic::Status> {
    client.update_progress(request).await
}

/// One call on a healthy replica (retried on another as `retry` allows),
/// within the gRPC deadline, timed, and its failure mapped to a reply.
async fn call<Req, T, F, Fut>(
    ctx: &Context,
    method: &'static str,
    retry: Retry,
    request: Req,
    call: F,
) -> Result<T, ErrorReply>
where
    Req: Clone,
    F: Fn(backend::Client, Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    let calling = ctx.replicas.call(method, retry, request, call);
    let result = tokio::time::timeout(ctx.grpc_timeout, calling).await;
    let (code, result) = match result {
        Ok(Ok(response)) => ("OK", Ok(response)),
        Ok(Err(status)) => (
            backend::code_label(status.code()),
            Err(map_status(method, &status)),
        ),
        Err(_) => {
            tracing::warn!(method, "progress service call timed out");
            ("TIMEOUT", Err(unavailable()))
        }
    };
    metrics::histogram!("gateway_grpc_request_duration_seconds", "method" => method, "code" => code)
        .record(started.elapsed());
    result
}

fn unavailable() -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        "progress service unavailable, retry later",
    )
}

const UPDATE_PROGRESS: &str = "UpdateProgress";
const SYNC_PROGRESS: &str = "SyncProgress";

/// Both cursor errors send the client back to a sync from scratch.
const CURSOR_EXPIRED: &str = "cursor expired: the changes after it are no longer kept (or it is from another store); sync again without a cursor";
const CURSOR_MALFORMED: &str =
    "cursor: not a cursor this service issued; sync again without a cursor";

/// `INVALID_DATA` naming the field by its protocol name. The service names
/// the field of its request in a trailer; its message starts with it.
fn invalid_field(status: &tonic::Status) -> ErrorReply {
    let field = status
        .metadata()
        .get(INVALID_FIELD_TRAILER)
        .and_then(|v| v.to_str().ok());
    let Some(field) = field else {
        return ErrorReply::new(ErrorCode::InvalidData, status.message().to_owned());
    };
    let detail = status
        .message()
        .strip_prefix(field)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(status.message());
    let name = match field {
        "page_token" | "after" => "cursor",
        "page_size" => "limit",
        other => other,
    };
    ErrorReply::new(ErrorCode::InvalidData, format!("{name}: {detail}"))
}

fn map_status(method: &'static str, status: &tonic::Status) -> ErrorReply {
    match status.code() {
        Code::NotFound => ErrorReply::new(ErrorCode::NotFound, status.message().to_owned()),
        // Only a cursor can expire (contract §6).
        Code::OutOfRange if method == SYNC_PROGRESS => {
            ErrorReply::new(ErrorCode::CursorExpired, CURSOR_EXPIRED)
        }
        // The cursor is the one field of a sync the gateway cannot check.
        Code::InvalidArgument if method == SYNC_PROGRESS => {
            ErrorReply::new(ErrorCode::InvalidData, CURSOR_MALFORMED)
        }
        Code::InvalidArgument => invalid_field(status),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted => {
            tracing::warn!(method, code = ?status.code(), message = status.message(), "progress service unavailable");
            unavailable()
        }
        // Made on this side from a broken connection (the service was killed
        // or drained mid-call), not answered by the service: the request may
        // or may not have been applied; the client retries like any outage.
        _ if backend::broken(status) => {
            tracing::warn!(method, code = ?status.code(), message = status.message(), "connection to the progress service broke mid-call");
            unavailable()
        }
        code => {
            tracing::error!(
                method,
                ?code,
                message = status.message(),
                "progress service call failed"
            );
            internal()
        }
    }
}
