//! The rows the group-commit writer wrote or read last, by key: a batch
//! whose keys are all here needs no read before it writes.
//!
//! Postgres: a stale entry (another replica wrote the row) makes the guarded
//! write fail, and the batch is planned again on fresh rows. A cached row the
//! batch does not write (its updates were no-ops) has no guard, so the store
//! reads those rows again before answering and plans again if one changed
//! (`postgres.rs`): no answer carries a record older than the stored one.
//! SQLite: the file is locked to one service process, so entries cannot go
//! stale.

use std::collections::HashMap;

use super::group_commit::{Loaded, Writes};
use crate::domain::{Progress, ProgressKey};

#[derive(Default)]
pub(crate) struct RowCache {
    rows: std::sync::Mutex<HashMap<ProgressKey, Progress>>,
}

const ROW_CACHE_MAX: usize = 200_000;

impl RowCache {
    /// Splits `keys` into cached rows and the keys that must be read.
    pub fn lookup(&self, keys: &[ProgressKey]) -> (Loaded, Vec<ProgressKey>) {
        let mut loaded = Loaded::new();
        let mut missing = Vec::new();
        if let Ok(rows) = self.rows.lock() {
            for key in keys {
                match rows.get(key) {
                    Some(p) => drop(loaded.insert(key.clone(), p.clone())),
                    None => missing.push(key.clone()),
                }
            }
        } else {
            missing = keys.to_vec();
        }
        (loaded, missing)
    }

    /// Keeps `rows` as the current state of their keys.
    pub fn remember(&self, rows: impl IntoIterator<Item = Progress>) {
        if let Ok(mut cache) = self.rows.lock() {
            if cache.len() > ROW_CACHE_MAX {
                cache.clear();
            }
            for p in rows {
                cache.insert(p.key.clone(), p);
            }
        }
    }

    /// After a batch committed: the rows it read, overlaid by what it wrote.
    pub fn committed(&self, loaded: Loaded, writes: Writes) {
        let written = writes
            .inserts
            .into_iter()
            .map(|(p, _)| p)
            .chain(writes.updates.into_iter().map(|(p, _, _)| p));
        self.remember(loaded.into_values().chain(written));
        let deleted: Vec<ProgressKey> = writes.deletes.into_iter().map(|(k, _, _)| k).collect();
        self.forget(&deleted);
    }

    pub fn forget(&self, keys: &[ProgressKey]) {
        if let Ok(mut cache) = self.rows.lock() {
            for key in keys {
                cache.remove(key);
            }
        }
    }
}
