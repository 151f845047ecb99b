//! One client connection, on either transport: authentication within `AUTH_TIMEOUT`, then an
//! in-order request loop with per-connection and per-user rate limits. The
//! idle timeout is enforced by one sweeper for all connections (`sweep_idle`),
//! not by a timer per connection. Replies and pushed events share the connection's outbound
//! queue, drained by its writer task.
//!
//! The transports differ only in framing: the loop reads `Frame`s from a
//! `FrameSource` (JSON lines on TCP, text messages on a WebSocket) and
//! queues whole messages, which the outbound queue frames for the wire.
//!
//! The task's future stays small while idle (request handling is boxed), so
//! that an idle connection costs little memory.

pub mod frames;
pub mod lines;
pub mod websocket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use governor::Quota;
use serde_json::value::RawValue;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::{Authenticator, Identity};
use crate::backend::Replicas;
use crate::config::Config;
use crate::fanout::{
    Conn, Fanout, Flushers, Framing, IntoWriter, Limiter, Outbound, Outgoing, limiter, quota,
};
use crate::handlers::{self, Context, Reply, Session};
use crate::protocol::{
    Device, ErrorCode, ErrorReply, ParseError, Request, ServerMessage, SystemCode, parse_line,
};
use bytes::BytesMut;
use frames::{Frame, FrameSource, ReadSource};
use lines::LineReader;
use websocket::MessageReader;

/// What every connection shares.
pub struct Shared {
    pub context: Context,
    pub auth: Authenticator,
    pub tasks: TaskTracker,
    pub auth_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_drain: Duration,
    pub max_message_bytes: usize,
    pub outbound_queue_bytes: u32,
    pub conn_quota: Quota,
    pub flushers: Arc<Flushers>,
}

impl Shared {
    /// Everything connections share, from the configuration; the replicas
    /// are connected lazily, so this needs a Tokio runtime but no network.
    pub fn new(config: &Config, replicas: Arc<Replicas>) -> anyhow::Result<Self> {
        let (user_rate, user_burst) = config.user_rate();
        Ok(Self {
            context: handlers::Context {
                replicas,
                fanout: Arc::new(Fanout::new(quota(user_rate, user_burst))),
                grpc_timeout: config.grpc_timeout,
                max_subscriptions: config.max_subscriptions,
            },
            auth: Authenticator::from_config(config)?,
            tasks: TaskTracker::new(),
            auth_timeout: config.auth_timeout,
            idle_timeout: config.idle_timeout,
            shutdown_drain: config.shutdown_drain,
            max_message_bytes: config.max_message_bytes(),
            outbound_queue_bytes: config.outbound_queue_bytes,
            conn_quota: quota(config.rate_limit_per_sec, config.rate_limit_burst),
            flushers: Flushers::per_core(),
        })
    }
}

const SHUTDOWN_MESSAGE: &str = "the gateway is shutting down; reconnect shortly";

/// Bytes the future `serve` returns for a plain TCP connection may take:
/// an idle connection's task is this future plus Tokio's task header, so
/// every idle connection pays it (a unit test guards it). What keeps it small:
/// - the accept loop spawns the future `serve` returns as it is (wrapping it
///   in another `async` block stores it twice);
/// - `serve_frames` and `request_loop` return `async move` blocks, because
///   an `async fn` keeps a second copy of its arguments;
/// - the session is matched by reference, not moved into a second binding;
/// - the idle wait polls the socket's read readiness in place
///   (`poll_read_ready`), so it stores no readiness future at all (Tokio's
///   `ready()` future is 136 bytes);
/// - everything used only while a line is handled, authentication and the
///   close path are boxed;
/// - the tracing span lives in the outbound state and is attached only to
///   the boxed parts, which are the ones that log (40 bytes);
/// - the stop signal is one `Notified` on the connection's own `Notify`
///   (`Outbound::stopped`), not a child cancellation token (one more
///   allocation per connection);
/// - the rate limiters use the standard monotonic clock (40 bytes, against
///   72 with governor's default clock).
///
/// The same budget holds a WebSocket connection's future
/// (`serve_websocket`), whose reader also keeps the frame being read (16
/// bytes: the masking key is turned as payload arrives, so no phase is
/// kept) and a pointer to the message being joined (boxed). The handshake
/// runs in a task of its own, which spawns this future once upgraded, so an
/// idle WebSocket pays no more.
///
/// Today: 384 bytes (TCP) and 400 (WebSocket) as the tests build them; the
/// spawned task wraps each in the tracker's 8 bytes, 392 and 408 in release.
/// Tokio's task cell adds 96 bytes of header and trailer and is
/// 128-aligned, so the task allocation is 512 bytes up to a future of 408
/// in release and 640 above: the budget keeps the smaller size class. Check
/// a layout with
/// `RUSTC_BOOTSTRAP=1 cargo rustc --release -p gateway --bin gateway --
/// -Zprint-type-sizes` (the spawned futures are built in the binary).
pub const IDLE_FUTURE_BUDGET: usize = 400;

/// Serves one TCP connection until it closes, is dropped, or the server
/// stops. `slot` (its place under `MAX_CONNECTIONS`) is released at the end.
///
/// Spawn the returned future itself: wrapping it in another `async` block
/// would store it twice in the task.
pub fn serve<R, W>(
    shared: Arc<Shared>,
    reader: R,
    writer: W,
    id: u64,
    stop: CancellationToken,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send
where
    R: ReadSource,
    W: IntoWriter,
{
    let out = open(&shared, id, stop, writer.into_writer(), Framing::Lines);
    let lines = LineReader::new(reader, shared.max_message_bytes);
    serve_frames(shared, lines, out, slot)
}

/// Serves one WebSocket connection after its handshake; `leftover` is what
/// the client sent after its handshake request.
pub fn serve_websocket<R, W>(
    shared: Arc<Shared>,
    reader: R,
    leftover: BytesMut,
    writer: W,
    id: u64,
    stop: CancellationToken,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send
where
    R: ReadSource,
    W: IntoWriter,
{
    let out = open(&shared, id, stop, writer.into_writer(), Framing::WebSocket);
    let messages = MessageReader::new(reader, leftover, shared.max_message_bytes, out.clone());
    serve_frames(shared, messages, out, slot)
}

/// The connection's outbound queue (holding its span), built before its
/// future: what the future captures, it keeps for its whole life, so it
/// captures this rather than its ingredients.
fn open(
    shared: &Shared,
    id: u64,
    stop: CancellationToken,
    writer: crate::fanout::Writer,
    framing: Framing,
) -> Conn {
    // Kept in the outbound state and attached to the boxed parts of the
    // connection that log (see `serve_frames`), not to the whole future:
    // every idle connection's task would carry it.
    let transport = match framing {
        Framing::Lines => "tcp",
        Framing::WebSocket => "websocket",
    };
    let span = tracing::debug_span!(
        "connection",
        conn_id = id,
        transport,
        user_id = tracing::field::Empty
    );
    metrics::gauge!("gateway_connections").increment(1.0);
    Outbound::new(
        id,
        shared.outbound_queue_bytes,
        framing,
        stop,
        writer,
        shared.flushers.clone(),
        span,
    )
}

/// An `async move` block rather than an `async fn`: an `async fn` keeps a
/// second copy of its arguments, and every idle connection would pay for it.
/// Each part that can log runs in the connection's span (`Outbound::span`);
/// the idle wait does not.
#[allow(clippy::manual_async_fn)]
fn serve_frames<S: FrameSource>(
    shared: Arc<Shared>,
    mut lines: S,
    out: Conn,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut opened = Box::pin(authenticate(&shared, &mut lines, &out).instrument(out.span()))
            .await
            .map(|auth| open_session(&shared, &out, auth));
        // Used in place (by reference), so the session is stored once.
        if let Some((session, user_limiter)) = &mut opened {
            request_loop(&shared, &mut lines, session, user_limiter).await;
            shared.context.fanout.leave(
                &session.identity.user_id,
                out.id(),
                &session.subscriptions,
            );
        }
        drop(opened);
        // Boxed: its timers must not size every idle connection's task.
        Box::pin(out.finish().instrument(out.span())).await;
        metrics::gauge!("gateway_connections").decrement(1.0);
        drop(slot);
    }
}

/// What a successful `auth` established.
struct Authenticated {
    identity: Identity,
    device: Option<Device>,
    /// The `id` of the `auth` line, echoed on its reply.
    id: Option<Box<RawValue>>,
}

/// Registers an authenticated connection and answers its `auth`.
fn open_session(shared: &Shared, out: &Conn, auth: Authenticated) -> (Session, Arc<Limiter>) {
    let Authenticated {
        identity,
        device,
        id,
    } = auth;
    out.span().record("user_id", &*identity.user_id);
    let user_limiter = shared.context.fanout.join(&identity, out);
    // From here on the server's shutdown reaches this connection through
    // `Outbound::stop` (the server cancels its token, then stops every
    // registered connection); one that registered after that pass stops itself.
    if out.server_stopping() {
        out.stop();
    }
    send(
        out,
        &Reply::new(&ServerMessage::AuthResponse {
            id: id.as_deref(),
            success: true,
            user_id: Some(&identity.user_id),
            username: identity.username.as_deref(),
            error: None,
        }),
    );
    let session = Session {
        conn: out.clone(),
        identity,
        device,
        subscriptions: Vec::new(),
    };
    (session, user_limiter)
}

fn send(out: &Conn, reply: &Reply) {
    metrics::counter!("gateway_messages_out_total", "type" => reply.kind).increment(1);
    out.reply(reply.line.clone());
}

fn send_shutdown(out: &Conn) {
    metrics::counter!("gateway_messages_out_total", "type" => "system").increment(1);
    let notice = ServerMessage::system(SystemCode::Shutdown, SHUTDOWN_MESSAGE).to_line();
    out.push_control(&Outgoing::new(notice));
}

/// The first message, past pings.
async fn first_message<S: FrameSource>(lines: &mut S) -> std::io::Result<Frame> {
    loop {
        match lines.next().await? {
            Frame::Skip => {}
            frame => return Ok(frame),
        }
    }
}

/// Reads the first message; it must be a valid `auth`.
async fn authenticate<S: FrameSource>(
    shared: &Shared,
    lines: &mut S,
    out: &Conn,
) -> Option<Authenticated> {
    // Not registered yet, so the server's `stop` does not reach this
    // connection: it watches the server's token itself.
    let frame = tokio::select! {
        () = out.server_stopped() => {
            send_shutdown(out);
            return None;
        }
        () = out.stopped() => return None,
        frame = tokio::time::timeout(shared.auth_timeout, first_message(lines)) => frame,
    };
    let fail = |reason: &'static str| {
        metrics::counter!("gateway_auth_failures_total", "reason" => reason).increment(1);
    };
    let line = match frame {
        Err(_) => {
            fail("timeout");
            tracing::debug!("no auth message before the deadline");
            return None;
        }
        Ok(Err(_) | Ok(Frame::Eof | Frame::Skip)) => return None,
        Ok(Ok(other)) => other,
    };
    let (id, request) = match &line {
        Frame::Line(line) => parse_line(line),
        _ => (None, Err(ParseError::too_large())),
    };
    metrics::counter!("gateway_messages_in_total", "type" => request.as_ref().map_or("invalid", Request::kind))
        .increment(1);
    let (token, device) = match request {
        Ok(Request::Auth { token, device }) => (token, device),
        _ => {
            fail("auth_required");
            let reply = ErrorReply::new(
                ErrorCode::AuthRequired,
                "the first message must be {\"type\":\"auth\",\"data\":{\"token\":\"<JWT>\"}}",
            );
            send(out, &Reply::error(id.as_deref(), &reply));
            return None;
        }
    };
    let verified = token
        .as_deref()
        .ok_or(crate::auth::AuthError::Malformed)
        .and_then(|t| shared.auth.verify(t));
    let refusal = match (verified, device) {
        (Ok(identity), Ok(device)) => {
            return Some(Authenticated {
                identity,
                device,
                id,
            });
        }
        (Err(err), _) => {
            fail(err.reason());
            tracing::debug!(reason = err.reason(), "authentication failed");
            "invalid token".to_owned()
        }
        (Ok(_), Err(err)) => {
            fail("device");
            tracing::debug!(%err, "authentication failed: bad device name");
            err.to_string()
        }
    };
    send(
        out,
        &Reply::new(&ServerMessage::AuthResponse {
            id: id.as_deref(),
            success: false,
            user_id: None,
            username: None,
            error: Some(&refusal),
        }),
    );
    None
}

/// What the request loop does after one line.
enum Step {
    Next,
    /// The server stops: say `SHUTDOWN` (unless dropped) and close.
    Stop,
    /// The connection is over (EOF, read error, dropped).
    Close,
}

/// Waits while idle in a small future; reading and handling a line happen in
/// a boxed future that exists only while there is input, so an idle
/// connection's task stays small. (An `async move` block, not an `async fn`,
/// for the same reason as `serve_frames`.)
#[allow(clippy::manual_async_fn)]
fn request_loop<'a, S: FrameSource>(
    shared: &'a Shared,
    lines: &'a mut S,
    session: &'a mut Session,
    user_limiter: &'a Limiter,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        let conn_limiter = limiter(shared.conn_quota);
        loop {
            if !lines.has_buffered() {
                let readable = tokio::select! {
                    biased;
                    () = session.conn.stopped() => Step::Stop,
                    ready = lines.wait_readable() => if ready.is_ok() { Step::Next } else { Step::Close },
                };
                match readable {
                    Step::Next => {}
                    Step::Stop => break,
                    Step::Close => return,
                }
            }
            let limits = [&conn_limiter, user_limiter];
            let span = session.conn.span();
            match Box::pin(next_request(shared, lines, session, limits).instrument(span)).await {
                Step::Next => {}
                Step::Stop => break,
                Step::Close => return,
            }
        }
        if !session.conn.is_kicked() {
            send_shutdown(&session.conn);
        }
    }
}

/// Most `progress_update` lines answered by one call to the progress service.
const MAX_PIPELINED: usize = 128;

/// One line, checked against the rate limits and parsed.
enum Admitted {
    Request(Option<Box<RawValue>>, Request),
    /// Answered without doing anything (rate limited, malformed).
    Refused(Reply),
    /// Traffic that needs no answer (a WebSocket ping or pong).
    Skip,
    /// EOF or a read error.
    Close,
}

fn admit(frame: std::io::Result<Frame>, limits: [&Limiter; 2]) -> Admitted {
    let (id, request) = match frame {
        Err(_) | Ok(Frame::Eof) => return Admitted::Close,
        Ok(Frame::Skip) => return Admitted::Skip,
        Ok(Frame::TooLarge) => (None, Err(ParseError::too_large())),
        Ok(Frame::Binary) => (None, Err(ParseError::binary())),
        Ok(Frame::Line(line)) => parse_line(&line),
    };
    let kind = request.as_ref().map_or("invalid", Request::kind);
    metrics::counter!("gateway_messages_in_total", "type" => kind).increment(1);
    if limits.iter().any(|limiter| limiter.check().is_err()) {
        metrics::counter!("gateway_rate_limited_total").increment(1);
        let reply = ErrorReply::new(ErrorCode::RateLimited, "Rate limit exceeded");
        return Admitted::Refused(Reply::error(id.as_deref(), &reply));
    }
    match request {
        Ok(request) => Admitted::Request(id, request),
        Err(err) => Admitted::Refused(Reply::error(err.id.as_deref(), &err.reply)),
    }
}

/// Reads one line and answers it. A `progress_update` takes with it the
/// lines the client already sent behind it, up to the first that is not an
/// update: those updates go out as one call (`handlers::updates`), and their
/// replies still come in line order.
async fn next_request<S: FrameSource>(
    shared: &Shared,
    lines: &mut S,
    session: &mut Session,
    limits: [&Limiter; 2],
) -> Step {
    let out = session.conn.clone();
    let frame = tokio::select! {
        biased;
        () = out.stopped() => return Step::Stop,
        frame = lines.next() => frame,
    };
    out.touch();
    let mut next = admit(frame, limits);
    loop {
        let (id, request) = match next {
            Admitted::Close => return Step::Close,
            Admitted::Skip => return Step::Next,
            Admitted::Refused(reply) => {
                send(&out, &reply);
                return Step::Next;
            }
            Admitted::Request(id, request) => (id, request),
        };
        let (answered, then) = match request {
            // More lines already sent behind this update: answer them as a run.
            Request::ProgressUpdate(cmd) => match lines.try_next() {
                Some(frame) => {
                    let first = handlers::Pipelined::Update { id, cmd };
                    let (run, then) = gather(lines, limits, first, frame);
                    let handling = handlers::updates(&shared.context, session, run);
                    (answer(shared, &out, handling).await, then)
                }
                None => {
                    let request = Request::ProgressUpdate(cmd);
                    let handling =
                        handlers::handle(&shared.context, session, id.as_deref(), request);
                    (
                        answer(shared, &out, async { Some(handling.await) }).await,
                        None,
                    )
                }
            },
            request => {
                let handling = handlers::handle(&shared.context, session, id.as_deref(), request);
                (
                    answer(shared, &out, async { Some(handling.await) }).await,
                    None,
                )
            }
        };
        if !answered {
            return Step::Close;
        }
        match then {
            Some(admitted) => next = admitted,
            None => return Step::Next,
        }
    }
}

/// The run of lines behind a `progress_update`: `frame` and whatever else is
/// there without waiting, up to `MAX_PIPELINED` lines, ending before the first
/// line that is not an update (returned to be handled after the run).
fn gather<S: FrameSource>(
    lines: &mut S,
    limits: [&Limiter; 2],
    first: handlers::Pipelined,
    frame: std::io::Result<Frame>,
) -> (Vec<handlers::Pipelined>, Option<Admitted>) {
    let mut run = vec![first];
    let mut frame = Some(frame);
    while let Some(line) = frame.take() {
        match admit(line, limits) {
            Admitted::Request(id, Request::ProgressUpdate(cmd)) => {
                run.push(handlers::Pipelined::Update { id, cmd });
            }
            Admitted::Refused(reply) => run.push(handlers::Pipelined::Answered(reply)),
            other => return (run, Some(other)),
        }
        if run.len() < MAX_PIPELINED {
            frame = lines.try_next();
        }
    }
    (run, None)
}

/// Runs a request's handling and sends its replies; `false` when the
/// connection must close instead. When the server stops meanwhile it says
/// `SHUTDOWN` and gives the handling the drain period to finish (its replies
/// are sent after `SHUTDOWN`), then the connection closes.
async fn answer<T: IntoIterator<Item = Reply>>(
    shared: &Shared,
    out: &Conn,
    handling: impl Future<Output = T>,
) -> bool {
    let mut handling = Box::pin(handling);
    tokio::select! {
        biased;
        replies = &mut handling => {
            replies.into_iter().for_each(|reply| send(out, &reply));
            true
        }
        () = out.stopped() => {
            if out.is_kicked() {
                return false;
            }
            send_shutdown(out);
            match tokio::time::timeout(shared.shutdown_drain, handling).await {
                Ok(replies) => replies.into_iter().for_each(|reply| send(out, &reply)),
                Err(_) => tracing::warn!("in-flight request cut off by the shutdown drain"),
            }
            false
        }
    }
}

/// Closes authenticated connections that sent nothing for `IDLE_TIMEOUT`.
/// One pass over the registry every eighth of the timeout (10 ms to 5 s), so
/// a connection closes between one timeout and 1.125 timeouts after its last line.
pub async fn sweep_idle(shared: Arc<Shared>, stop: CancellationToken) {
    let every = (shared.idle_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let limit = u64::try_from(shared.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::fanout::outbound::clock_ms();
        shared.context.fanout.for_each_connection(|conn| {
            if conn.idle_ms(now) >= limit {
                conn.expire();
            }
        });
    }
}

#[cfg(test)]
#[path = "connection/tests.rs"]
mod tests;
