//! The Redis half of the request path: read a record's state, compare-and-set
//! a change (hash + queue entry + event in one script), warm a record read
//! from Postgres without ever overwriting a newer one, and list a user's
//! unflushed changes for `list`.
//!
//! It also remembers the state this process itself wrote last, per record
//! (`recall`): an update of such a record is planned on it without reading
//! Redis first. The compare-and-set checks it like a state read from Redis,
//! so a stale memory (another replica wrote, the hash expired, Redis lost
//! it) costs one failed script call and a read, never a wrong write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::codec::{self, Cached, WireChange};
use crate::domain::{Progress, ProgressKey};
use crate::events::WriteMeta;
use crate::store::StoreError;

/// What Redis knows about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Cached(Cached),
    /// Deleted; the tombstone is unflushed or recently flushed.
    Deleted,
    /// Not in Redis: Postgres holds the current record, if any.
    Absent,
}

/// A record's state and the server time it was read at (the fence).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: State,
    tomb: String,
    fence_us: i64,
    /// Taken from this process's memory of its own last write, not read.
    recalled: bool,
}

impl Snapshot {
    /// From this process's memory (`Cache::recall`): good to plan a write
    /// on, which the compare-and-set verifies, but not to answer from.
    pub fn is_recalled(&self) -> bool {
        self.recalled
    }
}

/// Records remembered at most; past it the memory starts over.
const RECALL_MAX: usize = 200_000;

/// Outcome of warming the cache with a Postgres row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warm {
    /// The row is current (it was cached, or could not be proven stale).
    Row,
    /// Redis holds a newer copy: this one.
    Newer(Progress),
    Deleted,
}

#[derive(Clone)]
pub struct Cache {
    conn: ConnectionManager,
    change: Script,
    warm: Script,
    ttl_secs: u64,
    /// How long the change-log stream keeps entries (us).
    log_retention_us: i64,
    /// This process's proposal for the log epoch of a fresh Redis dataset.
    epoch_candidate: String,
    /// How old a read may be when an absent record is written or warmed: well
    /// under the TTL, so anything written after the read is still visible.
    max_fence_age_us: i64,
    /// The state this process wrote last, per record (see the module notes).
    written: Arc<Mutex<HashMap<ProgressKey, Cached>>>,
}

/// Redis down, or up but not serving yet (`LOADING` while it replays its
/// AOF after a restart, `TRYAGAIN`, …: the errors Redis means as "wait and
/// retry"), is `Unavailable`; anything else is a bug or a broken script.
pub fn redis_error(err: redis::RedisError) -> StoreError {
    if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
        || matches!(err.retry_method(), redis::RetryMethod::WaitAndRetry)
    {
        StoreError::Unavailable(format!("redis: {err}"))
    } else {
        StoreError::Internal(format!("redis: {err}"))
    }
}

impl Cache {
    pub fn new(conn: ConnectionManager, ttl: Duration, log_retention: Duration) -> Self {
        let ttl_secs = ttl.as_secs().max(2);
        Self {
            conn,
            change: Script::new(include_str!("change.lua")),
            warm: Script::new(include_str!("warm.lua")),
            ttl_secs,
            log_retention_us: i64::try_from(log_retention.as_micros()).unwrap_or(i64::MAX),
            epoch_candidate: format!(
                "{}x{}",
                std::process::id(),
                chrono::Utc::now().timestamp_micros()
            ),
            max_fence_age_us: i64::try_from(ttl_secs * 1_000_000 / 2).unwrap_or(i64::MAX),
            written: Arc::default(),
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<ProgressKey, Cached>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state this process wrote last for `key`, if it remembers one.
    pub fn recall(&self, key: &ProgressKey) -> Option<Snapshot> {
        let cached = self.written().get(key)?.clone();
        Some(Snapshot {
            state: State::Cached(cached),
            // The change script deletes the tombstone of a record it writes.
            tomb: String::new(),
            fence_us: 0,
            recalled: true,
        })
    }

    /// Remembers `record` as written at `seq` (the change script's answer).
    pub fn remember(&self, record: &Progress, seq: i64) {
        let mut written = self.written();
        if written.len() >= RECALL_MAX {
            written.clear();
        }
        written.insert(
            record.key.clone(),
            Cached {
                progress: record.clone(),
                seq: seq.to_string(),
            },
        );
    }

    /// Forgets `key` (deleted, or a write whose outcome is unknown).
    pub fn forget(&self, key: &ProgressKey) {
        self.written().remove(key);
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    pub async fn read(&self, key: &ProgressKey) -> Result<Snapshot, StoreError> {
        let mut conn = self.conn.clone();
        let (fields, tomb, (secs, micros)): (HashMap<String, String>, Option<String>, (i64, i64)) =
            redis::pipe()
                .hgetall(codec::hash_key(key))
                .get(codec::tomb_key(key))
                .cmd("TIME")
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
        let state = if !fields.is_empty() {
            State::Cached(codec::parse_hash(key, &fields)?)
        } else if tomb.is_some() {
            State::Deleted
        } else {
            State::Absent
        };
        Ok(Snapshot {
            state,
            tomb: tomb.unwrap_or_default(),
            fence_us: secs * 1_000_000 + micros,
            recalled: false,
        })
    }

    /// Writes `record` (or a delete when `None`) if the record's state is
    /// still `snap`: the change's position, or `None` when the state changed
    /// meanwhile.
    pub async fn compare_and_set(
        &self,
        snap: &Snapshot,
        key: &ProgressKey,
        record: Option<&Progress>,
        meta: &WriteMeta,
    ) -> Result<Option<i64>, StoreError> {
        let expected_seq = match &snap.state {
            State::Cached(c) => c.seq.as_str(),
            State::Deleted | State::Absent => "",
        };
        let wire = match record {
            Some(p) => WireChange::updated(p, meta),
            None => WireChange::deleted(key, meta),
        };
        let mut inv = self.change.prepare_invoke();
        inv.key(codec::hash_key(key))
            .key(codec::tomb_key(key))
            .key(codec::STREAM)
            .key(codec::pending_key(&key.user_id))
            .key(codec::SEQ_COUNTER)
            .key(codec::LOG_STREAM)
            .key(codec::LOG_EPOCH)
            .arg(expected_seq)
            .arg(&snap.tomb)
            .arg(snap.fence_us)
            .arg(self.max_fence_age_us)
            .arg(if record.is_some() { "u" } else { "d" })
            .arg(key.manga_id)
            .arg(wire.encode()?)
            .arg(self.log_retention_us)
            .arg(&self.epoch_candidate);
        if let Some(p) = record {
            for (field, value) in codec::hash_fields(p) {
                inv.arg(field).arg(value);
            }
        }
        let mut conn = self.conn.clone();
        let seq: redis::Value = inv.invoke_async(&mut conn).await.map_err(redis_error)?;
        match seq {
            redis::Value::Int(-1) => Ok(None),
            other => redis::from_redis_value::<i64>(other)
                .map(Some)
                .map_err(|e| StoreError::Internal(format!("redis: change script answered {e}"))),
        }
    }

    /// Caches a row read from Postgres after `snap` was taken, unless Redis
    /// holds something newer (returned instead) or a delete.
    pub async fn warm(
        &self,
        snap: &Snapshot,
        row: &Progress,
        seq: i64,
    ) -> Result<Warm, StoreError> {
        let mut inv = self.warm.prepare_invoke();
        inv.key(codec::hash_key(&row.key))
            .key(codec::tomb_key(&row.key))
            .arg(seq)
            .arg(self.ttl_secs)
            .arg(snap.fence_us)
            .arg(self.max_fence_age_us);
        for (field, value) in codec::hash_fields(row) {
            inv.arg(field).arg(value);
        }
        let mut conn = self.conn.clone();
        let (code, fields): (i64, HashMap<String, String>) =
            inv.invoke_async(&mut conn).await.map_err(redis_error)?;
        match code {
            0 => Ok(Warm::Deleted),
            2 => Ok(Warm::Newer(codec::parse_hash(&row.key, &fields)?.progress)),
            _ => Ok(Warm::Row),
        }
    }

    /// The user's records with unflushed changes: `(manga_id, Some(record))`
    /// for updates, `(manga_id, None)` for deletes.
    pub async fn pending_for_user(
        &self,
        user_id: &str,
    ) -> Result<Vec<(i64, Option<Progress>)>, StoreError> {
        let (_, pending) = self.pending_after(user_id, 0).await?;
        Ok(pending.into_iter().map(|(m, p, _)| (m, p)).collect())
    }

    /// The log's last position, then the user's unflushed changes after
    /// `after` with their positions, read at one instant.
    pub async fn pending_after(
        &self,
        user_id: &str,
        after: i64,
    ) -> Result<(i64, Vec<Pending>), StoreError> {
        let mut conn = self.conn.clone();
        let (head, mangas): (Option<i64>, Vec<i64>) = redis::pipe()
            .atomic()
            .get(codec::SEQ_COUNTER)
            .cmd("ZRANGE")
            .arg(codec::pending_key(user_id))
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let head = head.unwrap_or(0);
        if mangas.is_empty() {
            return Ok((head, Vec::new()));
        }
        let keys: Vec<ProgressKey> = mangas
            .iter()
            .map(|m| ProgressKey {
                user_id: user_id.to_owned(),
                manga_id: *m,
            })
            .collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.hgetall(codec::hash_key(key)).get(codec::tomb_key(key));
        }
        let replies: Vec<(HashMap<String, String>, Option<String>)> = pipe
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await
            .map_err(redis_error)?
            .chunks(2)
            .map(|pair| {
                let fields = redis::from_redis_value_ref(&pair[0]).unwrap_or_default();
                let tomb = pair
                    .get(1)
                    .and_then(|v| redis::from_redis_value_ref(v).ok())
                    .unwrap_or(None);
                (fields, tomb)
            })
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for (key, (fields, tomb)) in keys.iter().zip(replies) {
            if !fields.is_empty() {
                let cached = codec::parse_hash(key, &fields)?;
                let seq = cached.seq.parse().unwrap_or(0);
                out.push((key.manga_id, Some(cached.progress), seq));
            } else if let Some(seq) = tomb {
                out.push((key.manga_id, None, seq.parse().unwrap_or(0)));
            }
        }
        Ok((head, out))
    }
}

/// An unflushed change: manga id, the record (`None`: deleted), position.
pub type Pending = (i64, Option<Progress>, i64);

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::*;

    #[test]
    fn a_redis_still_loading_its_data_is_unavailable_not_internal() {
        let loading = RedisError::from((
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            "Redis is loading the dataset in memory",
        ));
        assert!(matches!(redis_error(loading), StoreError::Unavailable(_)));
        let script = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "ERR Error running script",
        ));
        assert!(matches!(redis_error(script), StoreError::Internal(_)));
    }
}
