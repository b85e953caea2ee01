//! From dirty block to committed block-map slot: hashing, dedup lookup, sealing and storing
//! (`seal_block`, on sealer threads or inline), and the commit that points the slot at the
//! block if it is still the current version (`finish_seal`). Block ids being sealed are
//! *pinned* until committed, so garbage collection never deletes a file a seal counts on.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::file::FileState;
use super::sealer::SealJob;
use super::{Result, Volume, VolumeError};
use crate::ids::{BlockId, InodeNo};
use crate::meta::Reader;
use crate::meta::codec::BlockRecord;
use crate::pipeline::{block_id::block_id, seal};

/// Blocks of at most this many plaintext bytes are stored inside the metadata database
/// rather than as files: a file per small block costs an ext4 inode allocation, a rename and
/// a later unlink, which dominated small-file creation.
pub(super) const INLINE_MAX: usize = 32 * 1024;

/// A sealed block ready to be committed.
pub(super) struct SealedBlock {
    id: BlockId,
    record: BlockRecord,
    /// Sealed bytes to store in the database (small blocks), or `None` if already stored.
    inline: Option<Vec<u8>>,
    _pin: PinGuard,
}

impl SealedBlock {
    /// What the fsync journal records for a slot holding this block.
    pub(super) fn slot_state(&self) -> (BlockId, BlockRecord, Option<Vec<u8>>) {
        (self.id, self.record, self.inline.clone())
    }
}

type PinMap = Arc<Mutex<std::collections::HashMap<BlockId, usize>>>;

/// Block ids being sealed and not yet committed (see `Volume::pins`).
#[derive(Default)]
pub(super) struct Pins(PinMap);

impl Pins {
    pub(super) fn lock(&self) -> MutexGuard<'_, std::collections::HashMap<BlockId, usize>> {
        self.0.lock()
    }

    fn pin(&self, id: BlockId) -> PinGuard {
        *self.0.lock().entry(id).or_default() += 1;
        PinGuard {
            pins: self.0.clone(),
            id,
        }
    }
}

/// Unpins its block id when dropped.
pub(super) struct PinGuard {
    pins: PinMap,
    id: BlockId,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = self.pins.lock();
        if let Some(n) = pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

impl Volume {
    /// Hands jobs to the sealer threads; seals here any the sealer refuses (stopping), or all
    /// of them when `inline`.
    pub(super) fn dispatch(&self, jobs: Vec<SealJob>, inline: bool) {
        for job in jobs {
            let refused = if inline {
                Err(job)
            } else {
                self.sealer.submit(job)
            };
            if let Err(job) = refused {
                let r = self.seal_for_slot(job.file.ino, job.index, &job.data);
                self.finish_seal(job, r);
            }
        }
    }

    /// Hashes, encrypts and stores one plaintext block. `None` for an all-zero block: it
    /// becomes a hole and is not stored. A block of at most [`INLINE_MAX`] bytes is not
    /// written to a file: its sealed bytes travel with the result into the metadata commit.
    pub(super) fn seal_block(&self, plain: &[u8]) -> Result<Option<SealedBlock>> {
        if is_all_zero(plain) {
            return Ok(None);
        }
        let id = block_id(&self.keys.dedup, plain);
        // Pinned until committed or dropped: gc leaves this id's file alone meanwhile.
        let pin = self.pins.pin(id);
        let known = {
            let tx = self.meta.read()?;
            match tx.block_record(&id)? {
                // Its bytes are here, or the pool holds them whole (evicted from the cache).
                Some(r)
                    if tx.inline_block(&id)?.is_some()
                        || self.store.contains(&id)
                        || tx.placement(&id)?.is_some_and(|p| p.is_full()) =>
                {
                    Some(r)
                }
                _ => None,
            }
        };
        let (record, inline) = match known {
            Some(r) => (BlockRecord { refcount: 0, ..r }, None),
            None => {
                let sealed = self
                    .headers
                    .take()
                    .and_then(|h| seal::seal_prepared(h, plain))
                    .map_err(|e| VolumeError::Seal(e.to_string()))?;
                let mut record = BlockRecord {
                    refcount: 0,
                    plain_len: plain.len() as u32,
                    sealed_len: sealed.len() as u32,
                    header_hash: None,
                };
                if plain.len() <= INLINE_MAX {
                    (record, Some(sealed))
                } else {
                    // The header of the file on disk, which may be another sealer's.
                    record.header_hash = self.store.put(&id, &sealed)?;
                    (record, None)
                }
            }
        };
        Ok(Some(SealedBlock {
            id,
            record,
            inline,
            _pin: pin,
        }))
    }

    /// [`seal_block`](Self::seal_block) for slot (`ino`, `index`): if the disk is full and the
    /// slot was reserved by fallocate, the reservation gives back one block's space and the
    /// seal tries once more (the space was promised), with every other seal held off.
    pub(super) fn seal_for_slot(
        &self,
        ino: InodeNo,
        index: u64,
        plain: &[u8],
    ) -> Result<Option<SealedBlock>> {
        let first = {
            let _writing = self.space.read();
            self.seal_block(plain)
        };
        match first {
            Err(VolumeError::NoSpace) => {
                // Exclusive: no other seal of ours can take the space given back before
                // this block is written into it.
                let _alone = self.space.write();
                if self.release_for(ino, index)? {
                    self.seal_block(plain)
                } else {
                    Err(VolumeError::NoSpace)
                }
            }
            r => r,
        }
    }

    /// Points slot (`ino`, `index`) at `block` in `tx`, storing inline bytes with it.
    pub(super) fn apply_block(
        tx: &mut crate::meta::WriteTx,
        ino: InodeNo,
        index: u64,
        block: Option<&SealedBlock>,
    ) -> Result<i64> {
        let delta = tx.set_block(ino, index, block.map(|b| (b.id, b.record)))?;
        if let Some(SealedBlock {
            id,
            inline: Some(bytes),
            ..
        }) = block
        {
            tx.put_inline(id, bytes)?;
        }
        Ok(delta)
    }

    /// Commits a finished seal if its block is still current (see module doc).
    pub(super) fn finish_seal(&self, job: SealJob, result: Result<Option<SealedBlock>>) {
        let file = job.file;
        let mut st = file.lock();
        st.in_flight -= 1;
        let current = st
            .dirty
            .get(&job.index)
            .is_some_and(|d| d.seq == job.seq && d.queued);
        if current {
            let outcome =
                result.and_then(|block| self.commit_block(file.ino, job.index, block, &st));
            match outcome {
                Ok(stored) => {
                    // The plaintext is at hand: the next read or partial write of this block
                    // need not decrypt it again (random I/O seals and re-reads constantly).
                    if let Some(id) = stored {
                        self.cache.insert(id, job.data.clone());
                    }
                    st.dirty.remove(&job.index);
                    if st.dirty.is_empty() && st.in_flight == 0 {
                        st.attr_dirty = false;
                    }
                }
                Err(e) => {
                    tracing::error!(target: "bitcloud::volume", ino = %file.ino, index = job.index, error = %e, "sealing a block failed");
                    if let Some(d) = st.dirty.get_mut(&job.index) {
                        d.queued = false;
                    }
                    st.error.get_or_insert(e);
                }
            }
        }
        drop(st);
        file.changed.notify_all();
        // The last seal of a closed file (`Volume::close` does not wait for it).
        self.maybe_evict(&file);
    }

    /// Commits a sealed block into its slot; returns its id if one was stored (not a hole).
    fn commit_block(
        &self,
        ino: InodeNo,
        index: u64,
        block: Option<SealedBlock>,
        st: &FileState,
    ) -> Result<Option<BlockId>> {
        let mut tx = self.meta.write()?;
        let Some(mut inode) = tx.inode(ino)? else {
            return Ok(None); // deleted meanwhile
        };
        let delta = Self::apply_block(&mut tx, ino, index, block.as_ref())?;
        inode.stored_blocks = inode.stored_blocks.saturating_add_signed(delta);
        if block.is_some() && tx.take_reserved(ino, index)? {
            inode.reserved_blocks = inode.reserved_blocks.saturating_sub(1);
        }
        st.stamp(&mut inode);
        tx.put_inode(ino, &inode)?;
        tx.commit()?;
        self.mark_dirty();
        self.note_slot(ino, index, block.as_ref().map(SealedBlock::slot_state));
        Ok(block.map(|b| b.id))
    }
}

/// Whether every byte is zero (compares 64 bytes at a time: a byte loop was visible in
/// profiles of sequential writes).
fn is_all_zero(data: &[u8]) -> bool {
    let chunks = data.chunks_exact(64);
    let tail = chunks.remainder();
    chunks.into_iter().all(|c| c == [0u8; 64]) && tail.iter().all(|b| *b == 0)
}
