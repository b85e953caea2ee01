//! The write buffer: dirty blocks (plaintext newer than the block map) of open files, and the
//! volume-wide budget that bounds their memory.
//!
//! Every dirty block is charged one block size against [`WriteBudget`] from the moment it
//! enters a file's [`DirtyBlocks`] until it leaves (committed, truncated away, dropped). A
//! writer that finds the budget exceeded queues its own file's blocks for sealing and waits
//! for them (see `Volume::write`), so the buffer never grows past the budget by more than
//! the blocks one write call touches. Partial blocks also leave the buffer by age: the
//! daemon's tick seals blocks dirty for longer than `writeback_secs` (`Volume::write_back`),
//! which bounds what a crash can lose from files that are written and never fsynced, as the
//! kernel's dirty-page expiry does for local filesystems.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The default write buffer: room for random writes over a 256 MiB working set before they
/// turn into read-modify-write of whole blocks.
pub const DEFAULT_WRITE_BUFFER: u64 = 256 << 20;

/// Bytes of dirty blocks in the whole volume, against a limit.
#[derive(Debug)]
pub(super) struct WriteBudget {
    used: AtomicU64,
    /// Highest `used` since the last `take_peak`.
    peak: AtomicU64,
    limit: AtomicU64,
    /// What one dirty block is charged.
    block: u64,
}

impl WriteBudget {
    pub(super) fn new(block: u64, limit: u64) -> WriteBudget {
        WriteBudget {
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
            block,
        }
    }

    pub(super) fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Whether dirty blocks take more than the limit.
    pub(super) fn over(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.limit.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, blocks: usize) {
        let bytes = blocks as u64 * self.block;
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// The most the buffer held since the last call.
    pub(super) fn take_peak(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }

    fn release(&self, blocks: usize) {
        self.used
            .fetch_sub(blocks as u64 * self.block, Ordering::Relaxed);
    }
}

/// One dirty block.
pub(super) struct Dirty {
    pub data: Arc<Vec<u8>>,
    pub seq: u64,
    /// Handed to a sealer and not written since.
    pub queued: bool,
    /// When this version became dirty (first write since it was last queued).
    pub since: Instant,
    /// Byte ranges written since the fsync journal last took them (`volume::journal`).
    pub unlogged: Vec<(u32, u32)>,
}

/// Ranges kept apart per dirty block before they are merged into one.
const MAX_RANGES: usize = 32;

impl Dirty {
    /// Notes bytes `from..to` as written and not yet journalled.
    pub(super) fn note_written(&mut self, from: u32, to: u32) {
        let r = &mut self.unlogged;
        r.push((from, to));
        r.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(r.len());
        for &(a, b) in r.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        if merged.len() > MAX_RANGES {
            let lo = merged.first().map_or(0, |x| x.0);
            let hi = merged.last().map_or(0, |x| x.1);
            merged = vec![(lo, hi)];
        }
        *r = merged;
    }
}

/// A file's dirty blocks by block index, charged to the volume's budget. Read access goes
/// through `Deref`; every change that adds or removes a block goes through these methods.
pub(super) struct DirtyBlocks {
    map: BTreeMap<u64, Dirty>,
    budget: Arc<WriteBudget>,
}

impl DirtyBlocks {
    pub(super) fn new(budget: Arc<WriteBudget>) -> DirtyBlocks {
        DirtyBlocks {
            map: BTreeMap::new(),
            budget,
        }
    }

    pub(super) fn insert(&mut self, index: u64, d: Dirty) {
        if self.map.insert(index, d).is_none() {
            self.budget.charge(1);
        }
    }

    pub(super) fn get_mut(&mut self, index: &u64) -> Option<&mut Dirty> {
        self.map.get_mut(index)
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&u64, &mut Dirty)> {
        self.map.iter_mut()
    }

    pub(super) fn remove(&mut self, index: &u64) -> Option<Dirty> {
        let d = self.map.remove(index);
        if d.is_some() {
            self.budget.release(1);
        }
        d
    }

    pub(super) fn retain(&mut self, keep: impl FnMut(&u64, &mut Dirty) -> bool) {
        let before = self.map.len();
        self.map.retain(keep);
        self.budget.release(before - self.map.len());
    }

    pub(super) fn clear(&mut self) {
        self.budget.release(self.map.len());
        self.map.clear();
    }
}

impl std::ops::Deref for DirtyBlocks {
    type Target = BTreeMap<u64, Dirty>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Drop for DirtyBlocks {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirty() -> Dirty {
        Dirty {
            data: Arc::new(vec![1]),
            seq: 0,
            queued: false,
            since: Instant::now(),
            unlogged: Vec::new(),
        }
    }

    #[test]
    fn written_ranges_merge() {
        let mut d = dirty();
        d.note_written(10, 20);
        d.note_written(30, 40);
        d.note_written(15, 31);
        d.note_written(50, 60);
        assert_eq!(d.unlogged, vec![(10, 40), (50, 60)]);
        for i in 0..40 {
            d.note_written(100 + i * 10, 105 + i * 10);
        }
        assert!(d.unlogged.len() <= MAX_RANGES, "ranges stay few");
        for i in 0..40 {
            let at = 100 + i * 10;
            assert!(
                d.unlogged.iter().any(|&(a, b)| a <= at && at + 5 <= b),
                "{at} covered"
            );
        }
    }

    #[test]
    fn every_way_out_releases_what_came_in() {
        let budget = Arc::new(WriteBudget::new(10, 25));
        let mut a = DirtyBlocks::new(budget.clone());
        let mut b = DirtyBlocks::new(budget.clone());
        a.insert(0, dirty());
        a.insert(0, dirty()); // replaces: no second charge
        a.insert(1, dirty());
        b.insert(5, dirty());
        assert_eq!(budget.used(), 30);
        assert!(budget.over());
        a.remove(&1);
        a.remove(&1);
        assert_eq!(budget.used(), 20);
        assert!(!budget.over());
        b.insert(6, dirty());
        b.retain(|i, _| *i == 6);
        assert_eq!(budget.used(), 20);
        a.clear();
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
