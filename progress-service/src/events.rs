//! The in-process change stream: every applied update and delete, in commit
//! order per record, fanned out to `WatchProgress` streams.
//!
//! A `broadcast` channel never blocks the publisher; a watcher that falls more
//! than `capacity` events behind is told it lagged (see `grpc::watch`).

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::{Progress, ProgressKey};
use crate::store::WriteMeta;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Updated(Progress),
    Deleted(ProgressKey),
}

impl Change {
    pub fn key(&self) -> &ProgressKey {
        match self {
            Change::Updated(p) => &p.key,
            Change::Deleted(k) => k,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub change: Change,
    pub meta: WriteMeta,
}

#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<ChangeEvent>>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    pub fn publish(&self, event: ChangeEvent) {
        // No receiver is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeEvent>> {
        self.tx.subscribe()
    }
}
