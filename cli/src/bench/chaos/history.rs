//! What the devices observed, Jepsen's "history": every update they sent and
//! how it ended, every session with what it received, every error. Times are
//! offsets from the run's start on this process's monotonic clock, so one
//! device's observations compare with another's.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

/// An offset from the run's start.
pub type At = Duration;

/// A progress record as a reply or event carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub manga: i64,
    /// The chapter × 100 (chapters have at most two fractional digits).
    pub chapter_cents: i64,
    pub page: i64,
    pub status: String,
    pub version: i64,
}

#[derive(Deserialize)]
struct RecordJson {
    manga_id: i64,
    chapter: serde_json::Number,
    #[serde(default)]
    page: i64,
    status: String,
    version: i64,
}

impl Record {
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        let raw: RecordJson = serde_json::from_str(json)?;
        Ok(Self {
            manga: raw.manga_id,
            chapter_cents: cents(&raw.chapter)
                .ok_or_else(|| anyhow::anyhow!("chapter {} is not a decimal", raw.chapter))?,
            page: raw.page,
            status: raw.status,
            version: raw.version,
        })
    }
}

/// A JSON chapter number × 100.
fn cents(number: &serde_json::Number) -> Option<i64> {
    match number.as_i64() {
        Some(whole) => whole.checked_mul(100),
        // Display-only precision: at most two fractional digits are allowed.
        None => number.as_f64().map(|f| (f * 100.0).round() as i64),
    }
}

/// How an update ended, as its device saw it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `progress_ack`: `record` is the stored record it answered with.
    Acked {
        applied: bool,
        record: Record,
        cursor: Option<String>,
        at: At,
    },
    /// An error reply (`UNAVAILABLE`, …; the code is in the device's errors).
    Refused,
    /// The connection broke before the reply: it may or may not have applied.
    Dropped,
    /// No reply within the client's timeout; the connection was closed.
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub manga: i64,
    /// Unique per user across all their devices: identifies the attempt in
    /// any record or event that carries it.
    pub chapter: i64,
    pub sent: At,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A `progress_broadcast` pushed by the gateway.
    Live,
    /// A change in a `sync_result` of a catch-up (after connecting or `RESYNC`).
    Sync,
    /// A change in the final `sync`: only for the convergence check, never
    /// kept as a session's receipt.
    Final,
}

#[derive(Debug, Clone)]
pub struct Receipt {
    pub record: Record,
    pub via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The gateway closed it or it broke (a killed gateway).
    Dropped,
    /// A request got no reply in time; the client closed it.
    TimedOut,
    /// Closed by the client after the final checks.
    Final,
    /// Still open when the device gave up (a deadline passed).
    Abandoned,
}

/// One authenticated connection of a device.
#[derive(Debug, Clone)]
pub struct Session {
    pub gateway: usize,
    /// When the auth reply arrived: the gateway had registered it by then.
    pub opened: At,
    pub closed: At,
    pub end: SessionEnd,
    pub receipts: Vec<Receipt>,
    pub resyncs: Vec<At>,
}

#[derive(Debug, Clone)]
pub struct ErrorEvent {
    pub at: At,
    /// `connect`, `update`, `sync`, `list` or `read`.
    pub op: &'static str,
    /// A gateway error code, or what happened to the connection.
    pub kind: String,
}

/// Everything one device observed.
#[derive(Debug, Clone, Default)]
pub struct DeviceLog {
    pub user: usize,
    pub device: usize,
    pub attempts: Vec<Attempt>,
    pub sessions: Vec<Session>,
    pub errors: Vec<ErrorEvent>,
    /// The device's records after its final `sync` (None: it never got there).
    pub synced: Option<HashMap<i64, Record>>,
    /// Its final `list_progress`, every page.
    pub listed: Option<HashMap<i64, Record>>,
    /// The other devices of its user whose final marker update it never heard.
    pub markers_missing: Vec<usize>,
}
