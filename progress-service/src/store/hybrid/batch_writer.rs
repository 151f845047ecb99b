//! The write-behind: drains the Redis Stream through the consumer group into
//! Postgres in batches, and removes entries only after their batch committed.
//!
//! One task per replica; its consumer name is the replica id, stable across
//! restarts, so at start (and whenever it regains its lease) the writer first
//! flushes the entries its consumer still holds: a replica restarted after a
//! crash drains what its previous run had read at once. Entries of consumers
//! that do not come back are claimed after `claim_idle`; while Postgres is down
//! the batch is retried with backoff and the queue grows. Re-applying an entry
//! is harmless (writes are guarded by the change sequence), losing one is not.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mangahub_ops::Backoff;

use redis::Script;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
use sqlx::postgres::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cache::redis_error;
use super::codec::{self, WireChange};
use super::pg::{self, Batch};
use crate::domain::ProgressKey;
use crate::store::StoreError;

const MAX_BLOCK: Duration = Duration::from_secs(1);
const GAUGE_EVERY: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long shutdown keeps trying to flush before leaving entries queued
/// (another replica, or this one after a restart, takes them over).
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub max_batch: usize,
    pub interval: Duration,
    pub claim_idle: Duration,
    pub ttl_secs: u64,
    pub tombstone_retention: Duration,
}

pub struct BatchWriter {
    /// Dedicated connection: blocking reads would stall a shared one.
    conn: ConnectionManager,
    pool: PgPool,
    consumer: String,
    /// Whether this process holds its replica id's lease (`lease.rs`); without
    /// it the writer reads and flushes nothing.
    leased: watch::Receiver<bool>,
    flushed: Script,
    config: WriterConfig,
    stop: CancellationToken,
    give_up_at: Option<Instant>,
}

/// A decoded queue entry; `change` is `None` when it could not be decoded.
struct Entry {
    id: String,
    seq: i64,
    change: Option<WireChange>,
    raw: StreamId,
}

impl BatchWriter {
    pub fn new(
        conn: ConnectionManager,
        pool: PgPool,
        consumer: String,
        leased: watch::Receiver<bool>,
        config: WriterConfig,
        stop: CancellationToken,
    ) -> Self {
        Self {
            conn,
            pool,
            consumer,
            leased,
            flushed: Script::new(include_str!("flushed.lua")),
            config,
            stop,
            give_up_at: None,
        }
    }

    #[tracing::instrument(name = "batch_writer", skip_all, fields(consumer = %self.consumer))]
    pub async fn run(mut self) {
        let max = self.config.max_batch.max(1);
        let claim_every = (self.config.claim_idle / 2).max(Duration::from_millis(200));
        let mut held: Vec<Entry> = Vec::with_capacity(max);
        let mut deadline: Option<Instant> = None;
        let start = Instant::now();
        let (mut last_gauges, mut last_claim, mut last_prune) = (None, None, Some(start));
        let mut backoff = Backoff::default();
        // Whether the lease was held at the last turn; a fresh hold (the
        // start, or the lease regained) first flushes this consumer's entries.
        let mut had_lease = false;
        while !self.stop.is_cancelled() {
            if !*self.leased.borrow() {
                // Another process with this REPLICA_ID flushes them now; what
                // is held stays pending under the shared consumer name.
                held.clear();
                deadline = None;
                had_lease = false;
                tokio::select! {
                    () = self.stop.cancelled() => {}
                    changed = self.leased.changed() => if changed.is_err() {
                        // The lease task is gone (only at shutdown).
                        tokio::time::sleep(MAX_BLOCK).await;
                    },
                    () = tokio::time::sleep(MAX_BLOCK) => {}
                }
                continue;
            }
            if !had_lease {
                had_lease = true;
                self.recover_own().await;
            }
            let now = Instant::now();
            if last_gauges.is_none_or(|t: Instant| now - t >= GAUGE_EVERY) {
                last_gauges = Some(now);
                let prune = last_prune.is_none_or(|t: Instant| now - t >= PRUNE_EVERY);
                if self.queue_gauges(prune).await && prune {
                    last_prune = Some(now);
                }
            }
            if held.is_empty() && last_claim.is_none_or(|t: Instant| now - t >= claim_every) {
                last_claim = Some(now);
                self.claim_abandoned().await;
            }
            let block = match deadline {
                None => self.config.interval.min(MAX_BLOCK),
                Some(d) => d.saturating_duration_since(now).min(MAX_BLOCK),
            };
            match self.read_new(max - held.len(), Some(block)).await {
                Ok(entries) => {
                    backoff.reset();
                    held.extend(entries);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reading the write-behind queue failed");
                    if let Err(err) = super::create_group(self.conn.clone()).await {
                        tracing::debug!(error = %err, "consumer group not recreated");
                    }
                    self.pause(&mut backoff).await;
                }
            }
            if held.is_empty() {
                continue;
            }
            let due = *deadline.get_or_insert_with(|| Instant::now() + self.config.interval);
            if held.len() >= max || Instant::now() >= due {
                self.flush(&mut held).await;
                deadline = None;
            }
        }
        if *self.leased.borrow() {
            self.drain(held).await;
        } else {
            tracing::info!("batch writer stopped without its lease; entries stay queued");
        }
    }

    /// Flushes the entries this consumer read and did not acknowledge: what a
    /// previous run with this replica id had read when it died, or what this
    /// one held when it lost its lease. Failures leave them pending; they are
    /// claimed after `claim_idle` like any idle entry.
    async fn recover_own(&mut self) {
        let max = self.config.max_batch.max(1);
        let mut after = "0-0".to_owned();
        let mut recovered = 0usize;
        while !self.stop.is_cancelled() {
            let mut entries = match self.read(&after, max, None).await {
                Ok(entries) if entries.is_empty() => break,
                Ok(entries) => entries,
                Err(err) => {
                    tracing::warn!(error = %err, "reading this consumer's pending entries failed");
                    break;
                }
            };
            if let Some(last) = entries.last() {
                after.clone_from(&last.id);
            }
            recovered += entries.len();
            if !self.flush(&mut entries).await {
                break;
            }
        }
        if recovered > 0 {
            tracing::info!(
                entries = recovered,
                "flushed the entries this replica had read before its restart"
            );
            metrics::counter!("progress_queue_recovered_total").increment(recovered as u64);
        }
    }

    /// At shutdown: flush what is held, then what is still queued, for a while.
    async fn drain(&mut self, mut held: Vec<Entry>) {
        self.give_up_at
            .get_or_insert_with(|| Instant::now() + SHUTDOWN_FLUSH);
        loop {
            if !held.is_empty() && !self.flush(&mut held).await {
                break;
            }
            if self.gave_up() {
                break;
            }
            match self.read_new(self.config.max_batch.max(1), None).await {
                Ok(entries) if entries.is_empty() => break,
                Ok(entries) => held = entries,
                Err(err) => {
                    tracing::warn!(error = %err, "queue unreadable at shutdown; entries stay queued");
                    break;
                }
            }
        }
        tracing::info!("batch writer stopped");
    }

    /// After a stop, keeps trying for `SHUTDOWN_FLUSH`, then gives up.
    fn gave_up(&mut self) -> bool {
        if self.stop.is_cancelled() {
            let at = *self
                .give_up_at
                .get_or_insert_with(|| Instant::now() + SHUTDOWN_FLUSH);
            return Instant::now() >= at;
        }
        false
    }

    async fn pause(&self, backoff: &mut Backoff) {
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = self.stop.cancelled(), if self.give_up_at.is_none() => {}
        }
    }

    /// New entries (never delivered to any consumer).
    async fn read_new(
        &self,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, StoreError> {
        self.read(">", count, block).await
    }

    /// `XREADGROUP` from `id`: `>` for new entries, an id for this consumer's
    /// own pending entries after it (`BLOCK` is ignored then).
    async fn read(
        &self,
        id: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(codec::GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(codec::STREAM).arg(id);
        let mut conn = self.conn.clone();
        let reply: Option<StreamReadReply> =
            cmd.query_async(&mut conn).await.map_err(redis_error)?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(decode)
            .collect())
    }

    /// Takes over entries another (crashed) consumer held for `claim_idle`.
    async fn claim_abandoned(&mut self) {
        let idle_ms = self.config.claim_idle.as_millis() as u64;
        let mut start = "0-0".to_owned();
        loop {
            let mut conn = self.conn.clone();
            let reply: Result<StreamAutoClaimReply, _> = redis::cmd("XAUTOCLAIM")
                .arg(codec::STREAM)
                .arg(codec::GROUP)
                .arg(&self.consumer)
                .arg(idle_ms)
                .arg(&start)
                .arg("COUNT")
                .arg(self.config.max_batch.max(1))
                .query_async(&mut conn)
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) => {
                    tracing::warn!(error = %err, "claiming abandoned queue entries failed");
                    return;
                }
            };
            if !reply.claimed.is_empty() {
                tracing::info!(
                    entries = reply.claimed.len(),
                    "claimed entries of a dead consumer"
                );
                metrics::counter!("progress_queue_claimed_total")
                    .increment(reply.claimed.len() as u64);
                let mut entries: Vec<Entry> = reply.claimed.into_iter().map(decode).collect();
                if !self.flush(&mut entries).await {
                    return;
                }
            }
            if reply.next_stream_id == "0-0" || self.stop.is_cancelled() {
                return;
            }
            start = reply.next_stream_id;
        }
    }

    /// Commits `entries` to Postgres (retrying while it is down), then
    /// acknowledges them. `false` only when shutdown gave up.
    async fn flush(&mut self, entries: &mut Vec<Entry>) -> bool {
        let batch = collapse(entries);
        let mut backoff = Backoff::default();
        let started = Instant::now();
        if !batch.is_empty() {
            loop {
                match pg::write_batch(&self.pool, &batch).await {
                    Ok(()) => break,
                    Err(err) => {
                        metrics::counter!("progress_postgres_errors_total").increment(1);
                        tracing::warn!(error = %err, records = batch.len(), "batch commit failed; retrying");
                        if self.gave_up() {
                            return false;
                        }
                        self.pause(&mut backoff).await;
                    }
                }
            }
            let took = started.elapsed();
            metrics::histogram!("progress_batch_size").record(batch.len() as f64);
            metrics::histogram!("progress_batch_duration_seconds").record(took.as_secs_f64());
            metrics::counter!("progress_batch_rows_total").increment(batch.len() as u64);
            if took.as_secs_f64() > 0.0 {
                metrics::gauge!("progress_batch_rows_per_second")
                    .set(batch.len() as f64 / took.as_secs_f64());
            }
        }
        backoff.reset();
        loop {
            match self.acknowledge(entries, &batch).await {
                Ok(()) => break,
                Err(err) => {
                    // Committed but not acknowledged: the entries stay pending
                    // and are applied again later, which changes nothing.
                    tracing::warn!(error = %err, "acknowledging a committed batch failed; retrying");
                    if self.gave_up() {
                        return false;
                    }
                    self.pause(&mut backoff).await;
                }
            }
        }
        entries.clear();
        true
    }

    async fn acknowledge(&self, entries: &[Entry], batch: &Batch) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let bad: Vec<&Entry> = entries.iter().filter(|e| e.change.is_none()).collect();
        for entry in bad {
            tracing::error!(id = %entry.id, "undecodable queue entry moved to the dead letters");
            let mut cmd = redis::cmd("XADD");
            cmd.arg(codec::DEAD_LETTERS)
                .arg("*")
                .arg("id")
                .arg(&entry.id);
            for (field, value) in &entry.raw.map {
                let value: Vec<u8> = redis::from_redis_value_ref(value).unwrap_or_default();
                cmd.arg(field).arg(value);
            }
            let _: redis::Value = cmd.query_async(&mut conn).await.map_err(redis_error)?;
        }
        let flushed: Vec<(char, &ProgressKey, i64)> = batch
            .upserts
            .iter()
            .map(|(p, seq)| ('u', &p.key, *seq))
            .chain(batch.deletes.iter().map(|(k, seq)| ('d', k, *seq)))
            .collect();
        for (ids, records) in ack_calls(entries, &flushed) {
            let mut inv = self.flushed.prepare_invoke();
            inv.key(codec::STREAM)
                .arg(codec::GROUP)
                .arg(self.config.ttl_secs)
                .arg(ids.len());
            for entry in ids {
                inv.arg(&entry.id);
            }
            for (op, key, seq) in records {
                inv.key(codec::hash_key(key))
                    .key(codec::tomb_key(key))
                    .key(codec::pending_key(&key.user_id))
                    .arg(op.to_string())
                    .arg(seq_text(*seq));
            }
            let _: i64 = inv.invoke_async(&mut conn).await.map_err(redis_error)?;
        }
        Ok(())
    }

    /// Queue length and oldest entry age; with `prune`, also drops Postgres
    /// tombstones no queued change can need. `false` when Redis failed.
    async fn queue_gauges(&self, prune: bool) -> bool {
        let mut conn = self.conn.clone();
        let reply: Result<(u64, StreamRangeReply), _> = redis::pipe()
            .cmd("XLEN")
            .arg(codec::STREAM)
            .cmd("XRANGE")
            .arg(codec::STREAM)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await;
        let Ok((len, first)) = reply else {
            return false;
        };
        metrics::gauge!("progress_queue_length").set(len as f64);
        let oldest = first.ids.first();
        let age_ms = oldest
            .and_then(|e| e.id.split_once('-'))
            .and_then(|(ms, _)| ms.parse::<i64>().ok())
            .map_or(0, |ms| (chrono::Utc::now().timestamp_millis() - ms).max(0));
        metrics::gauge!("progress_queue_oldest_age_seconds").set(age_ms as f64 / 1000.0);
        if prune {
            let floor = oldest.map_or(i64::MAX, |e| decode(e.clone()).seq);
            match crate::store::postgres::prune_tombstones(
                &self.pool,
                self.config.tombstone_retention,
                floor,
            )
            .await
            {
                Ok(n) if n > 0 => tracing::info!(tombstones = n, "pruned old tombstones"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "pruning tombstones failed"),
            }
        }
        true
    }
}

/// Most records, or most entry ids, one acknowledgement script call takes
/// (at most about half a millisecond of Redis time).
const ACK_CHUNK: usize = 128;

/// A committed batch's acknowledgement calls: `(entry ids, records)` each.
/// Redis runs one script at a time, so the batch goes in several short calls
/// and no update waits behind a whole batch's. The records' calls (their TTL,
/// their pending mark) come first and the entries' after them: a crash in
/// between leaves entries queued, flushed again later, which changes nothing;
/// never a record still marked pending without an entry to clear it.
fn ack_calls<'a, E, R>(
    entries: &'a [E],
    records: &'a [R],
) -> impl Iterator<Item = (&'a [E], &'a [R])> {
    let record_calls = records.chunks(ACK_CHUNK).map(|part| (&[][..], part));
    let entry_calls = entries.chunks(ACK_CHUNK).map(|part| (part, &[][..]));
    record_calls.chain(entry_calls)
}

/// Sequences are written as plain integers by the scripts (`%.0f`).
fn seq_text(seq: i64) -> String {
    seq.to_string()
}

fn decode(raw: StreamId) -> Entry {
    let seq = raw.get::<i64>("s").unwrap_or(0);
    let change = raw
        .get::<Vec<u8>>("c")
        .ok_or_else(|| "no change field".to_owned())
        .and_then(|c| WireChange::decode(&c))
        .and_then(|c| c.progress().map(|_| c));
    if let Err(err) = &change {
        tracing::error!(id = %raw.id, error = %err, "bad queue entry");
    }
    Entry {
        id: raw.id.clone(),
        seq,
        change: change.ok().filter(|_| seq > 0),
        raw,
    }
}

/// The newest change per record (highest sequence) of a set of entries.
fn collapse(entries: &[Entry]) -> Batch {
    let mut newest: HashMap<ProgressKey, (i64, &WireChange)> = HashMap::new();
    for entry in entries {
        let Some(change) = &entry.change else {
            continue;
        };
        let slot = newest.entry(change.key()).or_insert((entry.seq, change));
        if entry.seq >= slot.0 {
            *slot = (entry.seq, change);
        }
    }
    let mut batch = Batch::default();
    for (key, (seq, change)) in newest {
        match change.progress() {
            Ok(Some(p)) => batch.upserts.push((p, seq)),
            Ok(None) => batch.deletes.push((key, seq)),
            Err(_) => {}
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Progress, Status};
    use crate::events::WriteMeta;

    fn entry(seq: i64, manga: i64, chapter: i64, delete: bool) -> Entry {
        let key = ProgressKey::new("u", manga).expect("key");
        let change = if delete {
            WireChange::deleted(&key, &WriteMeta::default())
        } else {
            let p = Progress {
                key,
                chapter: crate::domain::Chapter::from_hundredths(chapter).expect("chapter"),
                page: 0,
                status: Status::Reading,
                version: seq,
                updated_at: chrono::DateTime::from_timestamp_micros(seq).expect("time"),
                device: None,
            };
            WireChange::updated(&p, &WriteMeta::default())
        };
        Entry {
            id: format!("{seq}-0"),
            seq,
            change: Some(change),
            raw: StreamId::default(),
        }
    }

    #[test]
    fn a_batch_is_acknowledged_in_short_calls_records_before_entries() {
        let entries: Vec<u32> = (0..300).collect();
        let records: Vec<u32> = (0..200).collect();
        let calls: Vec<(&[u32], &[u32])> = ack_calls(&entries, &records).collect();
        let shape: Vec<(usize, usize)> = calls.iter().map(|(e, r)| (e.len(), r.len())).collect();
        assert_eq!(shape, [(0, 128), (0, 72), (128, 0), (128, 0), (44, 0)]);
        let acked: Vec<u32> = calls.iter().flat_map(|(e, _)| e.iter().copied()).collect();
        let cleared: Vec<u32> = calls.iter().flat_map(|(_, r)| r.iter().copied()).collect();
        assert_eq!((acked, cleared), (entries, records), "each once, in order");
    }

    #[test]
    fn collapse_keeps_the_newest_change_per_record() {
        let entries = vec![
            entry(3, 1, 300, false),
            entry(1, 1, 100, false),
            entry(2, 2, 200, false),
            entry(4, 2, 0, true),
            entry(5, 3, 500, false),
        ];
        let batch = collapse(&entries);
        let mut upserts: Vec<(i64, i64)> = batch
            .upserts
            .iter()
            .map(|(p, seq)| (p.key.manga_id, *seq))
            .collect();
        upserts.sort();
        assert_eq!(upserts, vec![(1, 3), (3, 5)]);
        assert_eq!(
            batch
                .deletes
                .iter()
                .map(|(k, s)| (k.manga_id, *s))
                .collect::<Vec<_>>(),
            vec![(2, 4)]
        );
    }
}
