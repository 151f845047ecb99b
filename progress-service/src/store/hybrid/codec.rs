//! What the hybrid store writes into Redis: key names, the compatible hash of
//! contract §3, and the change record carried by the queue and by Pub/Sub.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{self, Chapter, Progress, ProgressKey};
use crate::events::WriteMeta;
use crate::events::{Change, ChangeEvent};
use crate::store::StoreError;

/// The write-behind queue (a Redis Stream) and its consumer group.
pub const STREAM: &str = "mh:progress:changes";
pub const GROUP: &str = "progress-batch-writer";
/// Entries that could not be decoded are moved here instead of blocking the queue.
pub const DEAD_LETTERS: &str = "mh:progress:dead";
/// The change log: a Redis Stream every replica reads into its watch
/// streams, entry id `<position>-0`, trimmed to `CHANGE_RETENTION`.
pub const LOG_STREAM: &str = "mh:progress:log";
/// Random per Redis dataset: changes when Redis lost its data.
pub const LOG_EPOCH: &str = "mh:progress:log:epoch";
/// Last change sequence handed out.
pub const SEQ_COUNTER: &str = "mh:progress:seq";

/// Hash field with the change sequence of the cached copy (hybrid bookkeeping).
pub const SEQ_FIELD: &str = "seq";

pub fn hash_key(key: &ProgressKey) -> String {
    format!("progress:{}:{}", key.user_id, key.manga_id)
}

/// Marks a deleted record until (and for a TTL after) the delete is flushed.
pub fn tomb_key(key: &ProgressKey) -> String {
    format!("mh:tomb:{}:{}", key.user_id, key.manga_id)
}

/// Sorted set of a user's manga ids with unflushed changes, scored by sequence.
pub fn pending_key(user_id: &str) -> String {
    format!("mh:pending:{user_id}")
}

/// The compatible hash fields (without `seq`), as field/value pairs;
/// `device` is empty when unknown.
pub fn hash_fields(p: &Progress) -> [(&'static str, String); 8] {
    [
        ("user_id", p.key.user_id.clone()),
        ("manga_id", p.key.manga_id.to_string()),
        ("chapter", p.chapter.to_string()),
        ("page", p.page.to_string()),
        ("status", p.status.as_str().to_owned()),
        ("version", p.version.to_string()),
        (
            "updated_at",
            p.updated_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        ),
        ("device", p.device.clone().unwrap_or_default()),
    ]
}

/// A cached copy read back: the record and the sequence of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub progress: Progress,
    pub seq: String,
}

pub fn parse_hash(
    key: &ProgressKey,
    fields: &HashMap<String, String>,
) -> Result<Cached, StoreError> {
    let field = |name: &str| {
        fields
            .get(name)
            .ok_or_else(|| StoreError::Internal(format!("cached record lacks {name}")))
    };
    let bad = |name: &str| StoreError::Internal(format!("cached record has a bad {name}"));
    // Another writer of the compatible hash may give nanoseconds: keep the
    // precision every store keeps, so that the record encodes back unchanged.
    let updated_at = DateTime::parse_from_rfc3339(field("updated_at")?)
        .map_err(|_| bad("updated_at"))?
        .with_timezone(&Utc);
    let updated_at = domain::truncate_to_micros(updated_at);
    // The hash must be this record's, within the record's limits.
    if fields.get("user_id").is_some_and(|u| *u != key.user_id) {
        return Err(bad("user_id"));
    }
    if fields
        .get("manga_id")
        .is_some_and(|m| m.parse::<i64>().ok() != Some(key.manga_id))
    {
        return Err(bad("manga_id"));
    }
    let page: i64 = field("page")?.parse().map_err(|_| bad("page"))?;
    let version: i64 = field("version")?.parse().map_err(|_| bad("version"))?;
    if version < 1 {
        return Err(bad("version"));
    }
    Ok(Cached {
        progress: Progress {
            key: key.clone(),
            chapter: field("chapter")?
                .parse::<Chapter>()
                .map_err(|_| bad("chapter"))?,
            page: domain::validate_page(page).map_err(|_| bad("page"))?,
            status: field("status")?.parse().map_err(|_| bad("status"))?,
            version,
            updated_at,
            device: fields.get("device").filter(|d| !d.is_empty()).cloned(),
        },
        seq: fields.get(SEQ_FIELD).cloned().unwrap_or_default(),
    })
}

/// One applied change: the payload of a queue entry and of a Pub/Sub event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChange {
    /// `u` = the record as written, `d` = deleted.
    pub op: char,
    pub user_id: String,
    pub manga_id: i64,
    #[serde(default)]
    pub chapter_hundredths: i64,
    #[serde(default)]
    pub page: i32,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub updated_at_us: i64,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub private: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl WireChange {
    pub fn updated(p: &Progress, meta: &WriteMeta) -> Self {
        Self {
            op: 'u',
            user_id: p.key.user_id.clone(),
            manga_id: p.key.manga_id,
            chapter_hundredths: p.chapter.hundredths(),
            page: p.page,
            status: p.status.as_str().to_owned(),
            version: p.version,
            updated_at_us: p.updated_at.timestamp_micros(),
            origin: meta.origin.clone(),
            private: meta.private,
            device: p.device.clone(),
        }
    }

    pub fn deleted(key: &ProgressKey, meta: &WriteMeta) -> Self {
        Self {
            op: 'd',
            user_id: key.user_id.clone(),
            manga_id: key.manga_id,
            chapter_hundredths: 0,
            page: 0,
            status: String::new(),
            version: 0,
            updated_at_us: 0,
            origin: meta.origin.clone(),
            private: meta.private,
            device: None,
        }
    }

    pub fn encode(&self) -> Result<String, StoreError> {
        serde_json::to_string(self).map_err(|e| StoreError::Internal(e.to_string()))
    }

    pub fn decode(text: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(text).map_err(|e| e.to_string())
    }

    pub fn key(&self) -> ProgressKey {
        ProgressKey {
            user_id: self.user_id.clone(),
            manga_id: self.manga_id,
        }
    }

    /// The record of an update (`None` for a delete); fails on corrupt data.
    pub fn progress(&self) -> Result<Option<Progress>, String> {
        if self.op == 'd' {
            return Ok(None);
        }
        Ok(Some(Progress {
            key: ProgressKey::new(self.user_id.clone(), self.manga_id)
                .map_err(|e| e.to_string())?,
            chapter: Chapter::from_hundredths(self.chapter_hundredths)
                .map_err(|e| e.to_string())?,
            page: self.page,
            status: self.status.parse().map_err(|_| "bad status".to_owned())?,
            version: self.version,
            updated_at: DateTime::from_timestamp_micros(self.updated_at_us)
                .ok_or_else(|| "bad updated_at".to_owned())?,
            device: self.device.clone(),
        }))
    }

    /// The change as the event at `position` of the log.
    pub fn into_event(self, position: i64) -> Result<ChangeEvent, String> {
        let change = match self.progress()? {
            Some(p) => Change::Updated(p),
            None => Change::Deleted(self.key()),
        };
        Ok(ChangeEvent {
            change,
            meta: WriteMeta {
                origin: self.origin,
                private: self.private,
            },
            position,
        })
    }
}

/// The position in a log stream entry id `<position>-0`.
pub fn position_of(id: &str) -> Option<i64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// Adds `XRANGE` of the oldest change-log entry still kept to `pipe`; read
/// its reply with `first_position`. Trimming removes the oldest entries
/// first, so a reader whose position is below it may have lost entries.
pub fn push_oldest_entry(pipe: &mut redis::Pipeline) -> &mut redis::Pipeline {
    pipe.cmd("XRANGE")
        .arg(LOG_STREAM)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
}

pub fn first_position(reply: &redis::streams::StreamRangeReply) -> Option<i64> {
    reply.ids.first().and_then(|e| position_of(&e.id))
}

/// The event a change-log entry holds.
pub fn log_event(entry: &redis::streams::StreamId) -> Result<ChangeEvent, String> {
    let position = position_of(&entry.id).ok_or_else(|| "foreign entry id".to_owned())?;
    entry
        .get::<Vec<u8>>("c")
        .ok_or_else(|| "entry lacks its change".to_owned())
        .and_then(|c| WireChange::decode(&c))
        .and_then(|c| c.into_event(position))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn record() -> Progress {
        Progress {
            key: ProgressKey::new("alice", 42).expect("key"),
            chapter: "76.5".parse().expect("chapter"),
            page: 3,
            status: Status::OnHold,
            version: 7,
            updated_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time"),
            device: Some("Phone".into()),
        }
    }

    #[test]
    fn hash_round_trips_and_is_compatible() {
        let p = record();
        let mut fields: HashMap<String, String> = hash_fields(&p)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(fields["chapter"], "76.5");
        assert_eq!(fields["updated_at"], "2023-11-14T22:13:20.123456Z");
        fields.insert(SEQ_FIELD.into(), "9".into());
        let cached = parse_hash(&p.key, &fields).expect("parses");
        assert_eq!(cached.progress, p);
        assert_eq!(cached.seq, "9");
    }

    #[test]
    fn a_nanosecond_time_is_read_at_the_stored_precision() {
        let p = record();
        let mut fields: HashMap<String, String> = hash_fields(&p)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        fields.insert("updated_at".into(), "2023-11-14T22:13:20.123456789Z".into());
        let cached = parse_hash(&p.key, &fields).expect("parses");
        assert_eq!(cached.progress, p);
    }

    #[test]
    fn a_hash_of_another_record_or_out_of_range_values_is_refused() {
        let p = record();
        let fields: HashMap<String, String> = hash_fields(&p)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        for (name, value) in [
            ("user_id", "someone-else"),
            ("manga_id", "7"),
            ("page", "-1"),
            ("page", "100001"),
            ("version", "0"),
        ] {
            let mut bad = fields.clone();
            bad.insert(name.into(), value.into());
            let err = parse_hash(&p.key, &bad).expect_err(name);
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn wire_change_round_trips() {
        let p = record();
        let meta = WriteMeta {
            origin: "conn-1".into(),
            private: true,
        };
        let wire = WireChange::updated(&p, &meta);
        let back = WireChange::decode(wire.encode().expect("json").as_bytes()).expect("decodes");
        assert_eq!(back.progress().expect("valid"), Some(p.clone()));
        let event = back.into_event(9).expect("event");
        assert_eq!(event.meta, meta);
        assert_eq!(event.position, 9);
        let deleted = WireChange::deleted(&p.key, &meta);
        assert_eq!(deleted.progress().expect("valid"), None);
    }
}
