//! `ProgressService` implementation: validate, call the store, map the result.

use std::collections::HashSet;
use std::sync::Arc;

use mangahub_proto::WATCH_CURSOR_HEADER;
use mangahub_proto::v1 as pb;
use mangahub_proto::v1::progress_service_server::ProgressService;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::invalid;
use crate::changelog::{LogCursor, LogError, LogPage, LogQuery};
use crate::domain::{ProgressKey, UpdateOutcome, ValidationError, validate_user_id};
use crate::events::{ChangeEvent, EventBus, Subscription};
use crate::store::{Cursor, DynStore, ListQuery, WriteMeta};
use mangahub_model::limits::{
    DEFAULT_LIST_LIMIT, DEFAULT_SYNC_LIMIT, MAX_BATCH_UPDATES, MAX_PAGE_SIZE,
};

/// Changes one replay read takes.
const REPLAY_PAGE: usize = 1000;
/// Events queued per watch stream between the event bus and HTTP/2.
const WATCH_STREAM_QUEUE: usize = 1024;

#[derive(Clone)]
pub struct ProgressApi {
    store: DynStore,
    events: EventBus,
    /// Ends every watch stream at shutdown, so the server can drain.
    shutdown: CancellationToken,
}

impl ProgressApi {
    pub fn new(store: DynStore, events: EventBus, shutdown: CancellationToken) -> Self {
        Self {
            store,
            events,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl ProgressService for ProgressApi {
    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id, manga_id = request.get_ref().manga_id))]
    async fn update_progress(
        &self,
        request: Request<pb::UpdateProgressRequest>,
    ) -> Result<Response<pb::UpdateProgressResponse>, Status> {
        let req = request.into_inner();
        let cmd = convert::update_command(&req).map_err(invalid)?;
        let meta = WriteMeta {
            origin: req.origin,
            private: req.private,
        };
        let out = timed("update", self.store.update(cmd, meta)).await?;
        Ok(Response::new(applied(&out, self.store.epoch())))
    }

    #[tracing::instrument(skip_all, fields(updates = request.get_ref().updates.len()))]
    async fn update_progress_batch(
        &self,
        request: Request<pb::UpdateProgressBatchRequest>,
    ) -> Result<Response<pb::UpdateProgressBatchResponse>, Status> {
        let updates = request.into_inner().updates;
        if updates.len() > MAX_BATCH_UPDATES {
            return Err(invalid(ValidationError::new(
                "updates",
                format!("at most {MAX_BATCH_UPDATES} per call"),
            )));
        }
        // Invalid updates are answered in place; the rest go to the store in order.
        let mut results: Vec<Option<pb::update_progress_result::Result>> = Vec::new();
        let mut cmds = Vec::with_capacity(updates.len());
        for req in &updates {
            match convert::update_command(req) {
                Ok(cmd) => {
                    let meta = WriteMeta {
                        origin: req.origin.clone(),
                        private: req.private,
                    };
                    cmds.push((cmd, meta));
                    results.push(None);
                }
                Err(err) => results.push(Some(batch_error(invalid(err)))),
            }
        }
        let mut outcomes = timed("update_batch", self.store.update_many(cmds))
            .await
            .into_iter();
        let results = results
            .into_iter()
            .map(|answered| {
                let result = answered.unwrap_or_else(|| match outcomes.next() {
                    Some(Ok(out)) => {
                        pb::update_progress_result::Result::Ok(applied(&out, self.store.epoch()))
                    }
                    Some(Err(err)) => batch_error(Status::from(err)),
                    None => batch_error(Status::internal("batch outcome out of step")),
                });
                pb::UpdateProgressResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(pb::UpdateProgressBatchResponse { results }))
    }

    async fn get_progress(
        &self,
        request: Request<pb::GetProgressRequest>,
    ) -> Result<Response<pb::Progress>, Status> {
        let req = request.into_inner();
        let key = ProgressKey::new(req.user_id, req.manga_id).map_err(invalid)?;
        match timed("get", self.store.get(&key)).await? {
            Some(p) => Ok(Response::new(convert::progress(&p))),
            None => Err(not_found(&key)),
        }
    }

    async fn list_progress(
        &self,
        request: Request<pb::ListProgressRequest>,
    ) -> Result<Response<pb::ListProgressResponse>, Status> {
        let req = request.into_inner();
        validate_user_id(&req.user_id).map_err(invalid)?;
        let page_size = match u32::try_from(req.page_size) {
            Ok(0) => DEFAULT_LIST_LIMIT,
            Ok(n) if n <= MAX_PAGE_SIZE => n,
            _ => {
                return Err(invalid(ValidationError::new(
                    "page_size",
                    format!("must be between 0 and {MAX_PAGE_SIZE}"),
                )));
            }
        };
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(Cursor::decode(token).map_err(invalid)?),
        };
        let updated_since = req
            .updated_since
            .as_ref()
            .map(|t| convert::from_timestamp("updated_since", t))
            .transpose()
            .map_err(invalid)?;
        let query = ListQuery {
            user_id: req.user_id,
            updated_since,
            after,
            limit: page_size + 1,
        };
        let mut items = timed("list", self.store.list(&query)).await?;
        let next_page_token = if items.len() > page_size as usize {
            items.truncate(page_size as usize);
            items
                .last()
                .map(|p| Cursor::after(p).encode())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListProgressResponse {
            items: items.iter().map(convert::progress).collect(),
            next_page_token,
        }))
    }

    async fn delete_progress(
        &self,
        request: Request<pb::DeleteProgressRequest>,
    ) -> Result<Response<pb::DeleteProgressResponse>, Status> {
        let req = request.into_inner();
        let key = ProgressKey::new(req.user_id, req.manga_id).map_err(invalid)?;
        let meta = WriteMeta {
            origin: req.origin,
            private: false,
        };
        match timed("delete", self.store.delete(key.clone(), meta)).await? {
            Some(position) => Ok(Response::new(pb::DeleteProgressResponse {
                cursor: convert::cursor(self.store.epoch(), position),
            })),
            None => Err(not_found(&key)),
        }
    }

    /// One page of a user's changes after a cursor (deletes included), or
    /// of the full state when `after` is empty.
    async fn sync_progress(
        &self,
        request: Request<pb::SyncProgressRequest>,
    ) -> Result<Response<pb::SyncProgressResponse>, Status> {
        let req = request.into_inner();
        validate_user_id(&req.user_id).map_err(invalid)?;
        let limit = match u32::try_from(req.limit) {
            Ok(0) => DEFAULT_SYNC_LIMIT as usize,
            Ok(n) if n <= MAX_PAGE_SIZE => n as usize,
            _ => {
                return Err(invalid(ValidationError::new(
                    "limit",
                    format!("must be between 0 and {MAX_PAGE_SIZE}"),
                )));
            }
        };
        let epoch = self.store.epoch();
        let (query, complete_at) = match req.after.as_str() {
            // The full state: records only.
            "" => {
                let query = LogQuery {
                    user_id: Some(req.user_id),
                    after: 0,
                    limit: limit + 1,
                    deletes: false,
                    deletes_after: 0,
                };
                (query, None)
            }
            text => {
                let cursor = self.cursor_of(text)?;
                let query = LogQuery::after(Some(req.user_id), &cursor, limit + 1);
                (query, cursor.complete_at)
            }
        };
        let full_state = !query.deletes;
        let mut page = timed("sync", self.store.read_log(&query)).await?;
        let more = page.changes.len() > limit;
        page.changes.truncate(limit);
        let next = page.next_after(limit, query.after);
        // A page of a full state (or the rest of one) is complete up to the
        // head the first page was read at, apart from records after `next`:
        // the holder needs only the deletes after that head.
        let complete_at = match (full_state, complete_at) {
            (true, _) => Some(page.head),
            (false, at) => at,
        }
        .filter(|at| more && *at > next);
        let cursor = LogCursor {
            complete_at,
            ..LogCursor::at(epoch, next)
        };
        Ok(Response::new(pb::SyncProgressResponse {
            changes: page
                .changes
                .iter()
                .map(|e| convert::event(e, epoch))
                .collect(),
            cursor: cursor.encode(),
            more,
        }))
    }

    type WatchProgressStream = ReceiverStream<Result<pb::ProgressEvent, Status>>;

    async fn watch_progress(
        &self,
        request: Request<pb::WatchProgressRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        let req = request.into_inner();
        let filter = Arc::new(WatchFilter {
            users: req.user_ids.into_iter().collect(),
            mangas: req.manga_ids.into_iter().collect(),
        });
        // Subscribed before the backlog is read: a change committed while it
        // is read arrives live too, and is skipped there by position.
        let subscription = self.events.subscribe();
        let (tx, rx) = mpsc::channel(WATCH_STREAM_QUEUE);
        let mut live_after = None;
        let replay = match req.after.as_str() {
            "" => {
                // Live only: changes after the head, which the caller gets as
                // a cursor to resume from even before the first event.
                live_after = Some(timed("watch_head", self.store.log_head()).await?);
                None
            }
            text => {
                let cursor = self.cursor_of(text)?;
                // The first page is read here, so an expired cursor fails the call.
                let query = filter.log_query(&cursor);
                let first = timed("watch_replay", self.store.read_log(&query)).await?;
                Some((query, first))
            }
        };
        let watcher = Watcher {
            store: self.store.clone(),
            filter,
            tx,
            shutdown: self.shutdown.clone(),
        };
        let head = live_after.map(|head| convert::cursor(self.store.epoch(), head));
        tokio::spawn(watcher.run(subscription, replay, live_after));
        let mut response = Response::new(ReceiverStream::new(rx));
        if let Some(value) = head.and_then(|c| c.parse().ok()) {
            response.metadata_mut().insert(WATCH_CURSOR_HEADER, value);
        }
        Ok(response)
    }
}

impl ProgressApi {
    /// A cursor given as `after`; one of another log (another database, or
    /// a wiped one) is expired.
    fn cursor_of(&self, text: &str) -> Result<LogCursor, Status> {
        let cursor = LogCursor::decode("after", text).map_err(invalid)?;
        if cursor.epoch != self.store.epoch() {
            return Err(LogError::Expired.into());
        }
        Ok(cursor)
    }
}

/// The response for one update, counted in `progress_updates_total{applied}`.
fn applied(out: &UpdateOutcome, epoch: &str) -> pb::UpdateProgressResponse {
    metrics::counter!("progress_updates_total", "applied" => if out.applied { "true" } else { "false" })
        .increment(1);
    pb::UpdateProgressResponse {
        applied: out.applied,
        progress: Some(convert::progress(&out.progress)),
        cursor: out
            .position
            .filter(|_| out.applied)
            .map(|p| convert::cursor(epoch, p))
            .unwrap_or_default(),
    }
}

fn batch_error(status: Status) -> pb::update_progress_result::Result {
    pb::update_progress_result::Result::Error(pb::UpdateProgressError {
        code: status.code() as i32,
        message: status.message().to_owned(),
    })
}

/// Records how long a store call took (`progress_store_seconds{op}`), errors included.
async fn timed<T>(op: &'static str, call: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let result = call.await;
    metrics::histogram!("progress_store_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    result
}

fn not_found(key: &ProgressKey) -> Status {
    Status::not_found(format!(
        "no progress for user {} and manga {}",
        key.user_id, key.manga_id
    ))
}

struct WatchFilter {
    users: HashSet<String>,
    mangas: HashSet<i64>,
}

impl WatchFilter {
    fn matches(&self, ev: &ChangeEvent) -> bool {
        let key = ev.change.key();
        (self.users.is_empty() || self.users.contains(&key.user_id))
            && (self.mangas.is_empty() || self.mangas.contains(&key.manga_id))
    }

    /// The log read a replay starts with: one user's changes when the
    /// filter names exactly one, else everyone's (filtered here).
    fn log_query(&self, cursor: &LogCursor) -> LogQuery {
        let user_id = match self.users.len() {
            1 => self.users.iter().next().cloned(),
            _ => None,
        };
        LogQuery::after(user_id, cursor, REPLAY_PAGE)
    }
}

/// Moves matching changes to one watcher: first the replay after its
/// cursor, page by page, then live events past the replay's end. Writers
/// never wait for it: when it falls `WATCH_BUFFER` events behind, the stream
/// ends with `RESOURCE_EXHAUSTED` and the watcher resumes from its cursor.
struct Watcher {
    store: DynStore,
    filter: Arc<WatchFilter>,
    tx: mpsc::Sender<Result<pb::ProgressEvent, Status>>,
    shutdown: CancellationToken,
}

impl Watcher {
    async fn run(
        self,
        mut sub: Subscription,
        replay: Option<(LogQuery, LogPage)>,
        live_after: Option<i64>,
    ) {
        let epoch = self.store.epoch().to_owned();
        // Live events at or before this position were in the replay (or,
        // live only, before the cursor the caller was given).
        let mut seen = live_after.unwrap_or(i64::MIN);
        if let Some((mut query, mut page)) = replay {
            loop {
                let after = query.after;
                let full = page.changes.len() >= query.limit;
                for ev in &page.changes {
                    if self.filter.matches(ev) && !self.send(Ok(convert::event(ev, &epoch))).await {
                        return;
                    }
                }
                query.after = page.next_after(query.limit, after);
                seen = query.after;
                if !full {
                    break;
                }
                page = match timed("watch_replay", self.store.read_log(&query)).await {
                    Ok(page) => page,
                    Err(err) => {
                        self.send(Err(err.into())).await;
                        return;
                    }
                };
            }
        }
        loop {
            let item = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.tx.closed() => return,
                _ = sub.gaps.changed() => Err(Status::unavailable(
                    "the change feed was interrupted; watch again from your last cursor",
                )),
                received = sub.events.recv() => match received {
                    Ok(ev) if ev.position > seen && self.filter.matches(&ev) => {
                        Ok(convert::event(&ev, &epoch))
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        metrics::counter!("progress_watch_lagged_total").increment(1);
                        Err(Status::resource_exhausted(format!(
                            "watcher fell {missed} events behind; watch again from your last cursor"
                        )))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let last = item.is_err();
            if !self.send(item).await || last {
                return;
            }
        }
    }

    /// `false` when the watcher is gone or the service is stopping.
    async fn send(&self, item: Result<pb::ProgressEvent, Status>) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            sent = self.tx.send(item) => sent.is_ok(),
        }
    }
}
