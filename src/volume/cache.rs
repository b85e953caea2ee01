//! A small cache of decrypted, verified blocks, so that a sequential reader asking for 128 KiB
//! at a time does not decrypt the same block eight times. Bounded by entry count; least
//! recently used entries go first.
//!
//! Loads are single-flight: when several FUSE threads miss on the same block at once (the
//! kernel issues readahead requests in parallel), one decrypts and the others wait for it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::ids::BlockId;
use crate::pipeline::chunks::PayloadKey;

/// Decrypted blocks kept (each up to the block size: 16 MiB at the default 1 MiB).
pub(super) const BLOCK_CACHE_BLOCKS: usize = 16;

type Loading = Arc<OnceLock<Result<Arc<Vec<u8>>, String>>>;

pub(super) struct BlockCache {
    capacity: usize,
    entries: Mutex<VecDeque<(BlockId, Arc<Vec<u8>>)>>,
    loading: Mutex<HashMap<BlockId, Loading>>,
}

impl BlockCache {
    pub(super) fn new(capacity: usize) -> BlockCache {
        BlockCache {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
            loading: Mutex::new(HashMap::new()),
        }
    }

    /// The cached block, or the result of `load` run once for all concurrent callers.
    pub(super) fn get_or_load(
        &self,
        id: BlockId,
        load: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<Arc<Vec<u8>>, String> {
        if let Some(hit) = self.get(&id) {
            return Ok(hit);
        }
        let cell = self.loading.lock().entry(id).or_default().clone();
        let result = cell.get_or_init(|| load().map(Arc::new)).clone();
        if let Ok(data) = &result {
            self.insert(id, data.clone());
        }
        let mut loading = self.loading.lock();
        if loading.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            loading.remove(&id);
        }
        result
    }

    /// Whether `id` is cached (without touching its recency).
    pub(super) fn contains(&self, id: &BlockId) -> bool {
        self.entries.lock().iter().any(|(k, _)| k == id)
    }

    pub(super) fn get(&self, id: &BlockId) -> Option<Arc<Vec<u8>>> {
        let mut e = self.entries.lock();
        let pos = e.iter().position(|(k, _)| k == id)?;
        let hit = e.remove(pos).expect("position is in range");
        let data = hit.1.clone();
        e.push_front(hit);
        Some(data)
    }

    pub(super) fn insert(&self, id: BlockId, data: Arc<Vec<u8>>) {
        let mut e = self.entries.lock();
        if let Some(pos) = e.iter().position(|(k, _)| *k == id) {
            e.remove(pos);
        }
        e.push_front((id, data));
        e.truncate(self.capacity);
    }

    pub(super) fn forget(&self, id: &BlockId) {
        self.entries.lock().retain(|(k, _)| k != id);
    }
}

/// Payload keys of recently read blocks (see `pipeline::chunks`): a small read of a block
/// whose key is here decrypts one 64 KiB chunk and nothing else. Bounded by entry count
/// (oldest inserted goes first); an entry is ~100 bytes, so the default covers 16 GiB of
/// 1 MiB blocks in under 2 MiB. A key is only a shortcut: if it fails to open its block
/// (the block was collected and sealed again under a new file key), the caller forgets it
/// and takes the full path.
type KeyMap = HashMap<BlockId, Arc<PayloadKey>>;

pub(super) struct KeyCache {
    capacity: usize,
    /// The keys, and their ids in insertion order (eviction order).
    inner: Mutex<(KeyMap, VecDeque<BlockId>)>,
}

impl KeyCache {
    pub(super) fn new(capacity: usize) -> KeyCache {
        KeyCache {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    pub(super) fn get(&self, id: &BlockId) -> Option<Arc<PayloadKey>> {
        self.inner.lock().0.get(id).cloned()
    }

    pub(super) fn insert(&self, id: BlockId, key: Arc<PayloadKey>) {
        let mut guard = self.inner.lock();
        let (map, order) = &mut *guard;
        if map.insert(id, key).is_none() {
            order.push_back(id);
        }
        while map.len() > self.capacity {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
    }

    pub(super) fn forget(&self, id: &BlockId) {
        let mut guard = self.inner.lock();
        let (map, order) = &mut *guard;
        if map.remove(id).is_some() {
            order.retain(|x| x != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let c = BlockCache::new(2);
        let (a, b, d) = (BlockId([1; 32]), BlockId([2; 32]), BlockId([3; 32]));
        c.insert(a, Arc::new(vec![1]));
        c.insert(b, Arc::new(vec![2]));
        assert!(c.get(&a).is_some());
        c.insert(d, Arc::new(vec![3]));
        assert!(c.get(&b).is_none());
        assert!(c.get(&a).is_some() && c.get(&d).is_some());
        c.forget(&a);
        assert!(c.get(&a).is_none());
    }
}
