//! fsync through the journal (`journal`), durable commits that keep the journal right, and
//! its replay after a crash.
//!
//! A file's fsync is journalled when everything about it the journal cannot express is
//! already durable: the inode exists in the last durable commit, and its mode, owner, times
//! set by hand, xattrs and links have not changed since ([`Undurable::fresh`]). Otherwise,
//! and for directories, fsync makes the whole volume durable as before.
//!
//! A journalled fsync writes, for the file: the smallest size it was truncated to since its
//! last journalled fsync, the block-map slots committed meanwhile (each as committed, or a
//! hole), the byte ranges of its dirty blocks written meanwhile, and its size and times, in
//! that order; replaying them in order over the last durable state gives the file as it was
//! at the fsync. Slot records point at block files: those are synced before the records.
//!
//! Lock order: the journal, then a file's state, then a redb write transaction, then the
//! `undurable` map (never the other way round).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::journal::Record;
use super::{Result, Volume, VolumeError};
use crate::ids::{BlockId, InodeNo};
use crate::meta::codec::BlockRecord;

/// A committed block-map slot: the block (with inline bytes) or a hole.
pub(super) type SlotState = Option<(BlockId, BlockRecord, Option<Vec<u8>>)>;

/// A file's slots changed since the last durable commit, by index: commit count, the slot
/// as committed, and the valid length a later truncation left it (see `clip_slot`).
type Slots = BTreeMap<u64, (u64, SlotState, Option<u32>)>;

/// What changed since the last durable commit that a journalled fsync must write, and which
/// files must not be journalled at all. Entries carry the commit count when they were made,
/// so a durable commit drops exactly those it covers.
#[derive(Default)]
pub(super) struct Undurable {
    fresh: HashMap<InodeNo, u64>,
    slots: HashMap<InodeNo, Slots>,
    truncated: HashMap<InodeNo, (u64, u64)>,
    /// Files with records in the journal's current epoch.
    journalled: HashSet<InodeNo>,
}

impl Undurable {
    fn durable_upto(&mut self, upto: u64) {
        self.fresh.retain(|_, n| *n > upto);
        for slots in self.slots.values_mut() {
            slots.retain(|_, (n, _, _)| *n > upto);
        }
        self.slots.retain(|_, s| !s.is_empty());
        self.truncated.retain(|_, (n, _)| *n > upto);
        self.journalled.clear();
    }
}

impl Volume {
    fn commit_no(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    /// `ino` changed in a way the journal does not record (created, chmod, chown, utimes,
    /// xattrs, links): its fsync makes the volume durable until the next durable commit.
    pub(super) fn note_fresh(&self, ino: InodeNo) {
        let n = self.commit_no();
        self.undurable.lock().fresh.insert(ino, n);
    }

    /// Slot (`ino`, `index`) was committed with `state`.
    pub(super) fn note_slot(&self, ino: InodeNo, index: u64, state: SlotState) {
        let n = self.commit_no();
        self.undurable
            .lock()
            .slots
            .entry(ino)
            .or_default()
            .insert(index, (n, state, None));
    }

    /// `ino` was truncated to `size`: slots from `keep_blocks` on are gone, and the `edge`
    /// slot (index, bytes kept), if any, holds only the head of its block.
    pub(super) fn note_truncate(
        &self,
        ino: InodeNo,
        size: u64,
        keep_blocks: u64,
        edge: Option<(u64, u32)>,
    ) {
        let n = self.commit_no();
        let mut u = self.undurable.lock();
        if let Some(slots) = u.slots.get_mut(&ino) {
            slots.retain(|i, _| *i < keep_blocks);
            if let Some((index, len)) = edge
                && let Some(entry) = slots.get_mut(&index)
            {
                entry.2 = Some(entry.2.map_or(len, |c| c.min(len)));
            }
        }
        let t = u.truncated.entry(ino).or_insert((n, size));
        *t = (n, t.1.min(size));
    }

    /// Flushes `ino` and makes it durable: through the journal when allowed (see module
    /// doc), else the whole volume.
    pub fn fsync(&self, ino: InodeNo) -> Result<()> {
        // A seal of this file that failed is reported here, as by flush.
        let open = self.files.lock().get(&ino).cloned();
        if let Some(e) = open.and_then(|f| f.lock().error.take()) {
            return Err(e);
        }
        if let Some((min, timeout)) = self.sync_remote() {
            // The pool must hold the file's blocks: seal and commit them, then wait.
            self.fsync_full(ino)?;
            return self.wait_placed(ino, min, timeout);
        }
        if self.undurable.lock().fresh.contains_key(&ino) {
            return self.fsync_full(ino);
        }
        let journalled = self.fsync_journalled(ino);
        match journalled {
            Ok(true) => Ok(()),
            Ok(false) => self.fsync_full(ino),
            Err(e) => {
                tracing::warn!(target: "bitcloud::volume", %ino, error = %e, "journalled fsync failed; making the volume durable instead");
                self.fsync_full(ino)
            }
        }
    }

    fn fsync_full(&self, ino: InodeNo) -> Result<()> {
        self.flush(ino)?;
        // Durability only: freeing overwritten blocks is left to the periodic checkpoint.
        self.make_durable()?;
        Ok(())
    }

    /// Writes `ino`'s changes to the journal; `false` if it is not a regular file.
    ///
    /// Dirty blocks written over much of their length are sealed instead (and journalled as
    /// slots): copying them whole into the journal would cost as much as sealing them.
    fn fsync_journalled(&self, ino: InodeNo) -> Result<bool> {
        let mut held = self.journal.hold();
        let mut writes = Vec::new();
        let file = self.files.lock().get(&ino).cloned();
        if let Some(f) = &file {
            let bs = self.block_size;
            let jobs = {
                let mut st = f.lock();
                super::file::queue_where(f, &mut st, |d| {
                    let written: u64 = d.unlogged.iter().map(|(a, b)| u64::from(b - a)).sum();
                    written >= bs / 4
                })
            };
            self.dispatch(jobs, false);
            let mut st = f.lock();
            while st.in_flight > 0 {
                f.changed.wait(&mut st);
            }
            if let Some(e) = st.error.take() {
                return Err(e);
            }
        }
        let (size, mtime, ctime) = match &file {
            Some(f) => {
                let mut st = f.lock();
                let bs = self.block_size;
                for (index, d) in st.dirty.iter_mut() {
                    for (from, to) in std::mem::take(&mut d.unlogged) {
                        let to = (to as usize).min(d.data.len());
                        let from = (from as usize).min(to);
                        if from < to {
                            writes.push(Record::Write {
                                ino,
                                offset: index * bs + from as u64,
                                data: d.data[from..to].to_vec(),
                            });
                        }
                    }
                }
                (st.size, st.mtime, st.ctime)
            }
            None => {
                let inode = self.load_inode(&self.meta.read()?, ino)?;
                if inode.kind != crate::meta::codec::Kind::File {
                    return Ok(false);
                }
                (inode.size, inode.mtime, inode.ctime)
            }
        };
        let (truncated, slots) = {
            let mut u = self.undurable.lock();
            (u.truncated.remove(&ino), u.slots.remove(&ino))
        };
        let mut records = Vec::new();
        if let Some((_, size)) = truncated {
            records.push(Record::Truncate { ino, size });
        }
        let mut block_files = false;
        for (index, (_, block, clip)) in slots.into_iter().flatten() {
            block_files |= matches!(&block, Some((_, _, None)));
            records.push(Record::Slot {
                ino,
                index,
                block,
                clip,
            });
        }
        records.extend(writes);
        records.push(Record::Size {
            ino,
            size,
            mtime,
            ctime,
        });
        if block_files {
            // Slot records name block files: those must be on disk before the records are.
            self.store.sync_pending()?;
        }
        held.append(&records)?;
        self.undurable.lock().journalled.insert(ino);
        Ok(true)
    }

    /// Makes everything committed so far durable: the dirty blocks of journalled files are
    /// sealed first, then block files, then the metadata, recording the journal epoch so
    /// its records are not replayed again (see `journal`). Returns the gc epoch now covered.
    pub fn make_durable(&self) -> Result<u64> {
        self.write_atimes()?;
        let mut held = self.journal.hold();
        if held.has_frames() {
            let inos: Vec<InodeNo> = self.undurable.lock().journalled.iter().copied().collect();
            for ino in inos {
                self.flush(ino)?;
            }
        }
        // Every commit counted so far has finished (the count follows the commit).
        let upto = self.commits.load(Ordering::SeqCst);
        self.needs_checkpoint.store(false, Ordering::Relaxed);
        self.store.sync_pending()?;
        let durable = self.meta.begin_durable()?;
        // Blocks sealed since the sync above may be committed already: with commits held
        // off, their files go to disk before the metadata that names them.
        self.store.sync_pending()?;
        // Only an epoch with records needs recording (and a new one): an empty durable
        // commit changes no page, which matters on a full disk.
        let covered = if held.has_frames() {
            let covered = durable.commit(Some(held.epoch()))?;
            held.start_next_epoch();
            covered
        } else {
            durable.commit(None)?
        };
        self.undurable.lock().durable_upto(upto);
        self.durable_commits.fetch_max(upto, Ordering::SeqCst);
        Ok(covered)
    }

    /// Re-applies what the journal holds beyond the last durable commit (after a crash).
    /// Runs at open, before anything else looks at block files. Returns the records applied.
    pub(super) fn replay_journal(&self) -> Result<usize> {
        let durable = self.meta.journal_epoch()?;
        let (records, last) = self.journal.read_pending(durable)?;
        let mut touched = std::collections::BTreeSet::new();
        for r in &records {
            let ino = match r {
                Record::Write { ino, .. }
                | Record::Slot { ino, .. }
                | Record::Truncate { ino, .. }
                | Record::Size { ino, .. } => *ino,
            };
            match self.apply(r) {
                Ok(()) => {
                    touched.insert(ino);
                }
                Err(VolumeError::NotFound) => {}
                Err(e) => {
                    tracing::error!(target: "bitcloud::volume", %ino, error = %e, "a journal record could not be applied");
                }
            }
        }
        for ino in touched {
            self.flush(ino)?;
        }
        self.journal.hold().resume_after(last, !records.is_empty());
        Ok(records.len())
    }

    fn apply(&self, r: &Record) -> Result<()> {
        match r {
            Record::Write { ino, offset, data } => {
                self.write(*ino, *offset, data)?;
            }
            Record::Truncate { ino, size } => self.truncate(*ino, *size)?,
            Record::Size {
                ino,
                size,
                mtime,
                ctime,
            } => {
                let file = self.file(*ino)?;
                if file.lock().size != *size {
                    self.truncate(*ino, *size)?;
                }
                let mut st = file.lock();
                st.mtime = *mtime;
                st.ctime = *ctime;
                st.attr_dirty = true;
            }
            Record::Slot {
                ino,
                index,
                block,
                clip,
            } => {
                if let Some((id, _, None)) = block
                    && !self.store.contains(id)
                {
                    tracing::error!(target: "bitcloud::volume", %ino, index, block = %id.short(), "a journalled block file is missing; the slot keeps its durable block");
                    return Ok(());
                }
                let file = self.file(*ino)?;
                let mut st = file.lock();
                // The slot as committed supersedes bytes an earlier record wrote into it.
                st.dirty.remove(index);
                let mut tx = self.meta.write()?;
                let mut inode = self.load_inode(&tx, *ino)?;
                let delta =
                    tx.set_block(*ino, *index, block.as_ref().map(|(id, r, _)| (*id, *r)))?;
                if let Some((id, _, Some(bytes))) = block {
                    tx.put_inline(id, bytes)?;
                }
                if let Some(len) = clip {
                    tx.clip_slot(*ino, *index, *len)?;
                }
                if block.is_some() && tx.take_reserved(*ino, *index)? {
                    inode.reserved_blocks = inode.reserved_blocks.saturating_sub(1);
                }
                inode.stored_blocks = inode.stored_blocks.saturating_add_signed(delta);
                tx.put_inode(*ino, &inode)?;
                tx.commit()?;
                self.mark_dirty();
            }
        }
        Ok(())
    }
}
