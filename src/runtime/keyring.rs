//! Gateway keys created at run time (`modelgate keys create` with a
//! PostgreSQL store), beside the config file's `keys:`.
//!
//! The ring holds them compiled against the current snapshot's teams, so a
//! store key counts against its team's limits exactly as a config key does.
//! `server` refreshes it when the store announces a change (LISTEN/NOTIFY)
//! and every few seconds as a safety net, and after each config reload
//! (teams may have changed). A request reads it with one atomic load.
//!
//! A config key wins over a store key of the same name or secret: the file
//! is what an operator edited last by hand.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::snapshot::{KeyEntry, Snapshot};
use crate::config::schema::KeyConfig;

type Keys = HashMap<[u8; 32], Arc<KeyEntry>>;

#[derive(Default)]
pub struct KeyRing {
    keys: ArcSwap<Keys>,
}

impl KeyRing {
    /// The store key whose sha256 is `presented_hash` (constant-time
    /// compare, as for config keys).
    pub fn find(&self, presented_hash: &[u8; 32]) -> Option<Arc<KeyEntry>> {
        use subtle::ConstantTimeEq;
        let keys = self.keys.load();
        let entry = keys.get(presented_hash)?;
        bool::from(entry.hash().ct_eq(presented_hash)).then(|| Arc::clone(entry))
    }

    /// Store keys in the ring.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Compile `rows` against `snap` and make them the ring. A row that does
    /// not compile (a bad glob, a name or secret a config key already has)
    /// is left out, and said so in the returned warnings; the others work.
    pub fn replace(&self, snap: &Snapshot, rows: &[KeyConfig]) -> Vec<String> {
        let (keys, warnings) = snap.compile_store_keys(rows);
        self.keys.store(Arc::new(keys));
        warnings
    }
}
