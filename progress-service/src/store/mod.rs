//! Storage behind one trait. `sqlite` and `postgres` share the group-commit
//! engine in `group_commit`; the hybrid Redis + Postgres store (`hybrid`) sits
//! beside them and reuses the Postgres reads.

mod group_commit;
pub mod hybrid;
pub mod postgres;
mod row_cache;
mod rows;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::changelog::{LogError, LogPage, LogQuery};
use crate::domain::{Progress, ProgressKey, UpdateCommand, UpdateOutcome, ValidationError};
pub use crate::error::StoreError;
use crate::events::EventBus;
pub use crate::events::WriteMeta;

pub use group_commit::GroupCommitConfig;

/// Where a page of `list` starts: strictly after this `(updated_at, manga_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub updated_at_us: i64,
    pub manga_id: i64,
}

impl Cursor {
    pub fn after(p: &Progress) -> Self {
        Self {
            updated_at_us: p.updated_at.timestamp_micros(),
            manga_id: p.key.manga_id,
        }
    }

    /// Opaque page token text.
    pub fn encode(self) -> String {
        format!("{}.{}", self.updated_at_us, self.manga_id)
    }

    pub fn decode(token: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::new("page_token", "not a token returned by this service");
        let (t, m) = token.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            updated_at_us: t.parse().map_err(|_| bad())?,
            manga_id: m.parse().map_err(|_| bad())?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub user_id: String,
    /// Only records with `updated_at` strictly after this.
    pub updated_since: Option<DateTime<Utc>>,
    pub after: Option<Cursor>,
    /// Page size; stores return at most this many items.
    pub limit: u32,
}

#[async_trait]
pub trait ProgressStore: Send + Sync + 'static {
    /// Applies the update durably and publishes an event when it was applied.
    async fn update(
        &self,
        cmd: UpdateCommand,
        meta: WriteMeta,
    ) -> Result<UpdateOutcome, StoreError>;
    /// Applies the updates in the order given (so a record's updates keep
    /// their order), each with its own outcome. This default runs them one
    /// after another; stores that can queue a write without waiting for it
    /// override it, so the whole batch shares commits.
    async fn update_many(
        &self,
        cmds: Vec<(UpdateCommand, WriteMeta)>,
    ) -> Vec<Result<UpdateOutcome, StoreError>> {
        let mut outcomes = Vec::with_capacity(cmds.len());
        for (cmd, meta) in cmds {
            outcomes.push(self.update(cmd, meta).await);
        }
        outcomes
    }
    async fn get(&self, key: &ProgressKey) -> Result<Option<Progress>, StoreError>;
    /// One page in `(updated_at, manga_id)` order.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Progress>, StoreError>;
    /// Removes the record; the delete's position, or `None` when there was
    /// none. Publishes a delete event.
    async fn delete(&self, key: ProgressKey, meta: WriteMeta) -> Result<Option<i64>, StoreError>;
    /// The change log's epoch (part of every cursor).
    fn epoch(&self) -> &str;
    /// Changes after a position (see `changelog`); `Expired` when changes
    /// after it may no longer all be kept.
    async fn read_log(&self, query: &LogQuery) -> Result<LogPage, LogError>;
    /// The log's last position: every change up to it is visible.
    async fn log_head(&self) -> Result<i64, StoreError>;
    /// Cheap reachability check for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Finishes every accepted write, then stops. Later writes fail `Unavailable`.
    async fn close(&self);
}

pub type DynStore = Arc<dyn ProgressStore>;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub database_url: String,
    pub db_max_connections: u32,
    pub group_commit: GroupCommitConfig,
    pub sqlite_synchronous: crate::config::SqliteSync,
    /// How long changes and delete markers stay readable by position.
    pub change_retention: std::time::Duration,
    /// Set (with a Postgres URL) selects the hybrid Redis + Postgres store.
    pub hybrid: Option<hybrid::HybridConfig>,
}

/// Opens the store the URL selects, applying migrations first.
pub async fn open(config: &StoreConfig, events: EventBus) -> anyhow::Result<DynStore> {
    let url = config.database_url.as_str();
    if url.starts_with("sqlite:") {
        if config.hybrid.is_some() {
            tracing::warn!("REDIS_URL is ignored: the hybrid store needs a Postgres DATABASE_URL");
        }
        Ok(Arc::new(sqlite::open(config, events).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match &config.hybrid {
            Some(hybrid) => Ok(Arc::new(hybrid::open(config, hybrid, events).await?)),
            None => Ok(Arc::new(postgres::open(config, events).await?)),
        }
    } else {
        anyhow::bail!("DATABASE_URL must start with sqlite: or postgres://")
    }
}
