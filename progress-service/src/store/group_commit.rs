//! Group commit for the SQL stores: concurrent writes queue up, one writer task
//! per shard takes everything queued (up to `max_batch`) into one transaction,
//! and every caller's ack waits for that commit.
//!
//! Keys are routed to a fixed shard, so a record's writes are planned in
//! arrival order and never race inside one process. Each row write is guarded
//! by the version it was planned against; if another process changed the row
//! meanwhile, the batch is rolled back and planned again on fresh rows.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{self, Progress, ProgressKey, UpdateCommand, UpdateOutcome};
use crate::events::{Change, ChangeEvent, EventBus, WriteMeta};
use crate::store::StoreError;

const QUEUE_PER_SHARD: usize = 4096;
const MAX_CONFLICT_RETRIES: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Most writes one transaction takes.
    pub max_batch: usize,
    /// Writer tasks (transactions in flight at once).
    pub shards: usize,
}

/// Row writes for one batch, each guarded by the version loaded for it and
/// stamped with the position offset of its record's last change.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    pub inserts: Vec<(Progress, Stamp)>,
    pub updates: Vec<(Progress, i64, Stamp)>,
    pub deletes: Vec<(ProgressKey, i64, Stamp)>,
    /// Records created and deleted within the batch: no row, only a delete
    /// marker (guarded by the row still being absent), so a reader holding
    /// the create's cursor (its ack, a live event) learns of the delete.
    pub markers: Vec<(ProgressKey, Stamp)>,
    /// Positions the batch takes: one per applied change, in order.
    pub positions: i32,
    /// Every applied change in order (several of one record included), at
    /// its position offset: a store that keeps a change-by-change log (Postgres
    /// alone) writes one entry each.
    pub log: Vec<(i32, Change, WriteMeta)>,
}

impl Writes {
    /// The records whose row (or delete marker) the batch writes.
    pub fn keys(&self) -> impl Iterator<Item = &ProgressKey> {
        self.inserts
            .iter()
            .map(|(p, _)| &p.key)
            .chain(self.updates.iter().map(|(p, _, _)| &p.key))
            .chain(self.deletes.iter().map(|(k, _, _)| k))
            .chain(self.markers.iter().map(|(k, _)| k))
    }

    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.updates.is_empty()
            && self.deletes.is_empty()
            && self.markers.is_empty()
    }
}

/// A row's place in the batch's positions (1-based; the store adds its base)
/// and who made its last change.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stamp {
    pub offset: i32,
    pub meta: WriteMeta,
}

pub(crate) enum Committed {
    /// Written; the batch's positions follow `base`.
    Yes { base: i64 },
    /// A guard did not match: the transaction was rolled back.
    Conflict,
}

pub(crate) type Loaded = HashMap<ProgressKey, Progress>;

/// The engine-specific half: one transaction that loads rows and writes a plan.
#[async_trait]
pub(crate) trait SqlBatch: Send + Sync + 'static {
    /// Whether `load_and_write` runs its SQL on the calling thread (a
    /// synchronous driver). The writers then get a thread of their own.
    fn blocks(&self) -> bool {
        false
    }

    async fn load_and_write(
        &self,
        keys: &[ProgressKey],
        plan: &mut (dyn for<'a> FnMut(&'a Loaded) -> Writes + Send),
    ) -> Result<Committed, StoreError>;
}

enum Op {
    Update {
        cmd: UpdateCommand,
        meta: WriteMeta,
        reply: oneshot::Sender<Result<UpdateOutcome, StoreError>>,
    },
    Delete {
        key: ProgressKey,
        meta: WriteMeta,
        reply: oneshot::Sender<Result<Option<i64>, StoreError>>,
    },
}

impl Op {
    fn key(&self) -> &ProgressKey {
        match self {
            Op::Update { cmd, .. } => &cmd.key,
            Op::Delete { key, .. } => key,
        }
    }
}

enum Outcome {
    Update(UpdateOutcome),
    /// The delete's position offset, when the record existed.
    Delete(Option<i64>),
}

pub(crate) struct GroupCommit {
    shards: RwLock<Option<Vec<mpsc::Sender<Op>>>>,
    /// Fires once every writer has committed what was queued to it.
    done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl GroupCommit {
    /// `events`: publish each committed change (a single-process store);
    /// `None` where a log tailer publishes them (Postgres).
    pub fn start(
        sql: Arc<dyn SqlBatch>,
        events: Option<EventBus>,
        config: GroupCommitConfig,
    ) -> std::io::Result<Self> {
        let blocks = sql.blocks();
        let mut senders = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..config.shards.max(1) {
            let (tx, rx) = mpsc::channel(QUEUE_PER_SHARD);
            senders.push(tx);
            let writer = Writer {
                sql: sql.clone(),
                events: events.clone(),
                max_batch: config.max_batch.max(1),
            };
            writers.push(writer.run(rx));
        }
        let all_done = async move {
            let tasks: Vec<_> = writers.into_iter().map(tokio::spawn).collect();
            for task in tasks {
                let _ = task.await;
            }
        };
        let (finished, done) = oneshot::channel();
        if blocks {
            // A runtime of its own on its own thread: the blocking SQL stalls
            // nothing else, and the batch loop never waits behind other tasks.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name("group-commit".into())
                .spawn(move || {
                    runtime.block_on(all_done);
                    let _ = finished.send(());
                })?;
        } else {
            tokio::spawn(async move {
                all_done.await;
                let _ = finished.send(());
            });
        }
        Ok(Self {
            shards: RwLock::new(Some(senders)),
            done: tokio::sync::Mutex::new(Some(done)),
        })
    }

    pub async fn update(
        &self,
        cmd: UpdateCommand,
        meta: WriteMeta,
    ) -> Result<UpdateOutcome, StoreError> {
        let answer = self.queue_update(cmd, meta).await?;
        answer.await.map_err(|_| closed())?
    }

    /// Queues every update in order before waiting for any, so they share
    /// commits; a record's updates stay in order (one shard, FIFO).
    pub async fn update_many(
        &self,
        cmds: Vec<(UpdateCommand, WriteMeta)>,
    ) -> Vec<Result<UpdateOutcome, StoreError>> {
        let mut queued = Vec::with_capacity(cmds.len());
        for (cmd, meta) in cmds {
            queued.push(self.queue_update(cmd, meta).await);
        }
        let mut outcomes = Vec::with_capacity(queued.len());
        for answer in queued {
            outcomes.push(match answer {
                Ok(answer) => answer
                    .await
                    .map_err(|_| closed())
                    .and_then(|outcome| outcome),
                Err(err) => Err(err),
            });
        }
        outcomes
    }

    /// Puts an update on its shard's queue; the receiver gets its outcome
    /// once committed.
    async fn queue_update(
        &self,
        cmd: UpdateCommand,
        meta: WriteMeta,
    ) -> Result<oneshot::Receiver<Result<UpdateOutcome, StoreError>>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let key = cmd.key.clone();
        self.submit(&key, Op::Update { cmd, meta, reply }).await?;
        Ok(answer)
    }

    pub async fn delete(
        &self,
        key: ProgressKey,
        meta: WriteMeta,
    ) -> Result<Option<i64>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit(&key.clone(), Op::Delete { key, meta, reply })
            .await?;
        rx.await.map_err(|_| closed())?
    }

    async fn submit(&self, key: &ProgressKey, op: Op) -> Result<(), StoreError> {
        let shard = {
            let guard = self.shards.read().map_err(|_| closed())?;
            let senders = guard.as_ref().ok_or_else(closed)?;
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut hasher);
            senders[(hasher.finish() % senders.len() as u64) as usize].clone()
        };
        shard.send(op).await.map_err(|_| closed())
    }

    /// Stops taking writes and waits until every queued one is committed.
    pub async fn close(&self) {
        if let Ok(mut guard) = self.shards.write() {
            guard.take();
        }
        if let Some(done) = self.done.lock().await.take() {
            let _ = done.await;
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("store is shutting down".into())
}

struct Writer {
    sql: Arc<dyn SqlBatch>,
    events: Option<EventBus>,
    max_batch: usize,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while rx.recv_many(&mut batch, self.max_batch).await > 0 {
            let size = batch.len();
            let started = std::time::Instant::now();
            self.commit(&mut batch).await;
            let took = started.elapsed();
            metrics::histogram!("progress_group_commit_size").record(size as f64);
            metrics::histogram!("progress_group_commit_seconds").record(took.as_secs_f64());
            tracing::trace!(size, ?took, "group commit");
        }
    }

    async fn commit(&self, ops: &mut Vec<Op>) {
        let mut keys: Vec<ProgressKey> = ops.iter().map(|op| op.key().clone()).collect();
        keys.sort();
        keys.dedup();
        let mut result = Err(StoreError::Internal("write conflict persisted".into()));
        for _ in 0..MAX_CONFLICT_RETRIES {
            let now = domain::now();
            let mut planned = None;
            let attempt = self
                .sql
                .load_and_write(&keys, &mut |loaded| {
                    let (writes, outcomes, events) = plan(ops, loaded, now);
                    planned = Some((outcomes, events));
                    writes
                })
                .await;
            match attempt {
                Ok(Committed::Yes { base }) => {
                    result = planned
                        .map(|(outcomes, events)| (outcomes, events, base))
                        .ok_or_else(|| StoreError::Internal("batch was not planned".into()));
                    break;
                }
                Ok(Committed::Conflict) => continue,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        match result {
            Ok((outcomes, events, base)) => {
                if let Some(bus) = &self.events {
                    for mut event in events {
                        event.position += base;
                        bus.publish(event);
                    }
                }
                for (op, outcome) in ops.drain(..).zip(outcomes) {
                    reply(op, Ok(outcome.positioned(base)));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, writes = ops.len(), "group commit failed");
                for op in ops.drain(..) {
                    reply(op, Err(err.clone()));
                }
            }
        }
    }
}

impl Outcome {
    /// Turns position offsets into positions.
    fn positioned(self, base: i64) -> Self {
        match self {
            Outcome::Update(mut out) => {
                out.position = out.position.map(|offset| base + offset);
                Outcome::Update(out)
            }
            Outcome::Delete(offset) => Outcome::Delete(offset.map(|offset| base + offset)),
        }
    }
}

fn reply(op: Op, result: Result<Outcome, StoreError>) {
    // A caller that went away no longer needs its answer; the write stands.
    match (op, result) {
        (Op::Update { reply, .. }, Ok(Outcome::Update(out))) => drop(reply.send(Ok(out))),
        (Op::Delete { reply, .. }, Ok(Outcome::Delete(existed))) => drop(reply.send(Ok(existed))),
        (Op::Update { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (Op::Delete { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (Op::Update { reply, .. }, Ok(_)) => drop(reply.send(Err(mismatch()))),
        (Op::Delete { reply, .. }, Ok(_)) => drop(reply.send(Err(mismatch()))),
    }
}

fn mismatch() -> StoreError {
    StoreError::Internal("batch outcome out of step".into())
}

/// Applies `ops` in order to the loaded rows: the outcome of each op, the
/// events to publish, and the row writes that make the final state durable.
/// Positions are offsets 1.. in the order the changes were applied; the
/// store adds the base it took when it committed.
fn plan(
    ops: &[Op],
    loaded: &Loaded,
    now: chrono::DateTime<chrono::Utc>,
) -> (Writes, Vec<Outcome>, Vec<ChangeEvent>) {
    let mut state: HashMap<&ProgressKey, (Option<Progress>, Stamp)> = HashMap::new();
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut events = Vec::new();
    let mut log = Vec::new();
    let mut offset: i32 = 0;
    for op in ops {
        let key = op.key();
        let (current, stamp) = state
            .entry(key)
            .or_insert_with(|| (loaded.get(key).cloned(), Stamp::default()));
        match op {
            Op::Update { cmd, meta, .. } => {
                let mut out = domain::apply_update(current.as_ref(), cmd, now);
                if out.applied {
                    offset += 1;
                    *current = Some(out.progress.clone());
                    *stamp = Stamp {
                        offset,
                        meta: meta.clone(),
                    };
                    out.position = Some(i64::from(offset));
                    log.push((offset, Change::Updated(out.progress.clone()), meta.clone()));
                    events.push(ChangeEvent {
                        change: Change::Updated(out.progress.clone()),
                        meta: meta.clone(),
                        position: i64::from(offset),
                    });
                }
                outcomes.push(Outcome::Update(out));
            }
            Op::Delete { meta, .. } => {
                if current.take().is_some() {
                    offset += 1;
                    *stamp = Stamp {
                        offset,
                        meta: meta.clone(),
                    };
                    log.push((offset, Change::Deleted(key.clone()), meta.clone()));
                    events.push(ChangeEvent {
                        change: Change::Deleted(key.clone()),
                        meta: meta.clone(),
                        position: i64::from(offset),
                    });
                    outcomes.push(Outcome::Delete(Some(i64::from(offset))));
                } else {
                    outcomes.push(Outcome::Delete(None));
                }
            }
        }
    }
    let mut writes = Writes {
        positions: offset,
        log,
        ..Writes::default()
    };
    for (key, (last, stamp)) in state {
        if stamp.offset == 0 {
            continue;
        }
        match (loaded.get(key), last) {
            (None, Some(p)) => writes.inserts.push((p, stamp)),
            (Some(before), Some(p)) => writes.updates.push((p, before.version, stamp)),
            (Some(before), None) => writes.deletes.push((key.clone(), before.version, stamp)),
            // Created and deleted within the batch: the create's position
            // was acknowledged (and published), so the delete must be in the
            // log after it.
            (None, None) => writes.markers.push((key.clone(), stamp)),
        }
    }
    (writes, outcomes, events)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::domain::{Chapter, Status};

    fn key(manga_id: i64) -> ProgressKey {
        ProgressKey::new("u", manga_id).expect("key")
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_700_000_000_000_000).expect("time")
    }

    fn update(manga_id: i64, hundredths: i64) -> Op {
        let (reply, _) = oneshot::channel();
        Op::Update {
            cmd: UpdateCommand {
                key: key(manga_id),
                chapter: Chapter::from_hundredths(hundredths).expect("chapter"),
                page: 0,
                status: None,
                force: false,
                device: None,
            },
            meta: WriteMeta::default(),
            reply,
        }
    }

    fn delete(manga_id: i64) -> Op {
        let (reply, _) = oneshot::channel();
        Op::Delete {
            key: key(manga_id),
            meta: WriteMeta::default(),
            reply,
        }
    }

    fn stored(manga_id: i64, hundredths: i64, version: i64) -> (ProgressKey, Progress) {
        let progress = Progress {
            key: key(manga_id),
            chapter: Chapter::from_hundredths(hundredths).expect("chapter"),
            page: 0,
            status: Status::Reading,
            version,
            updated_at: now() - chrono::Duration::seconds(1),
            device: None,
        };
        (key(manga_id), progress)
    }

    #[test]
    fn a_batch_takes_one_position_per_applied_change_in_order() {
        let loaded: Loaded = [stored(1, 500, 3)].into();
        // 1: forward (applied), behind (not), forward again; 2: created.
        let ops = [
            update(1, 600),
            update(1, 100),
            update(2, 100),
            update(1, 700),
        ];
        let (writes, outcomes, events) = plan(&ops, &loaded, now());
        let positions: Vec<Option<i64>> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Update(out) => out.position,
                Outcome::Delete(position) => *position,
            })
            .collect();
        assert_eq!(positions, [Some(1), None, Some(2), Some(3)]);
        assert_eq!(writes.positions, 3);
        assert_eq!(
            events.iter().map(|e| e.position).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // Every change is in the log, the row written once at its last state,
        // guarded by the version it was planned on.
        assert_eq!(writes.log.len(), 3);
        assert_eq!(writes.updates.len(), 1);
        let (row, guard, stamp) = &writes.updates[0];
        assert_eq!(
            (row.chapter.hundredths(), row.version, *guard, stamp.offset),
            (700, 5, 3, 3)
        );
        assert_eq!(writes.inserts.len(), 1);
        assert_eq!(writes.inserts[0].1.offset, 2);
    }

    #[test]
    fn a_no_op_batch_writes_nothing() {
        let loaded: Loaded = [stored(1, 500, 3)].into();
        let (writes, outcomes, events) = plan(&[update(1, 500), delete(9)], &loaded, now());
        assert!(writes.is_empty() && writes.log.is_empty() && events.is_empty());
        assert_eq!(writes.positions, 0);
        assert!(
            matches!(&outcomes[0], Outcome::Update(out) if !out.applied && out.progress.version == 3)
        );
        assert!(matches!(outcomes[1], Outcome::Delete(None)));
    }

    #[test]
    fn a_record_created_and_deleted_in_one_batch_leaves_a_delete_marker() {
        let (writes, _, events) = plan(&[update(4, 100), delete(4)], &Loaded::new(), now());
        assert!(writes.inserts.is_empty() && writes.deletes.is_empty());
        assert_eq!(writes.markers.len(), 1);
        assert_eq!(writes.markers[0].1.offset, 2, "after the create's position");
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn a_stored_record_deleted_then_created_again_starts_over_at_version_1() {
        let loaded: Loaded = [stored(1, 500, 7)].into();
        let (writes, outcomes, _) = plan(&[delete(1), update(1, 100)], &loaded, now());
        assert!(matches!(outcomes[0], Outcome::Delete(Some(1))));
        assert!(matches!(&outcomes[1], Outcome::Update(out) if out.progress.version == 1));
        // One row write: the new record, guarded by the deleted one's version.
        assert_eq!(writes.updates.len(), 1);
        assert_eq!((writes.updates[0].0.version, writes.updates[0].1), (1, 7));
    }
}
