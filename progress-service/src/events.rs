//! The in-process change stream: every applied update and delete, in
//! change-log position order, fanned out to `WatchProgress` streams.
//!
//! A `broadcast` channel never blocks the publisher; a watcher that falls more
//! than `capacity` events behind is told it lagged (see `grpc::service`).
//! When the feed itself has a gap it cannot fill (a replica's link to the
//! shared log lost changes that are no longer kept), `interrupt` ends every
//! watch stream so callers resume from their cursor or resync.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::domain::{Progress, ProgressKey};

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

/// Who asked for a write, carried onto its event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteMeta {
    pub origin: String,
    pub private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub change: Change,
    pub meta: WriteMeta,
    /// The change's position in the change log.
    pub position: i64,
}

#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<ChangeEvent>>,
    gaps: Arc<watch::Sender<u64>>,
}

/// One watcher's view of the bus.
pub struct Subscription {
    pub events: broadcast::Receiver<Arc<ChangeEvent>>,
    /// Changes when the feed had a gap: the watcher must end.
    pub gaps: watch::Receiver<u64>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            gaps: Arc::new(watch::Sender::new(0)),
        }
    }

    pub fn publish(&self, event: ChangeEvent) {
        // No receiver is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> Subscription {
        let mut gaps = self.gaps.subscribe();
        gaps.mark_unchanged();
        Subscription {
            events: self.tx.subscribe(),
            gaps,
        }
    }

    /// The feed lost changes it cannot replay: every current watcher ends.
    pub fn interrupt(&self) {
        metrics::counter!("progress_event_feed_gaps_total").increment(1);
        self.gaps.send_modify(|n| *n += 1);
    }
}
