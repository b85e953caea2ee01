//! Reads: which bytes come from write buffers, stored blocks or holes; small reads that
//! decrypt only the age chunks they cover; whole-block loads through the decrypted-block
//! cache; and prefetching ahead of sequential readers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Result, Volume, VolumeError};
use crate::ids::{BlockId, InodeNo};
use crate::meta::Reader;
use crate::pipeline::{chunks, seal};

/// Reads of at most this many bytes within one block decrypt only the chunks they cover.
pub(super) const PARTIAL_READ_MAX: usize = 64 * 1024;

/// Background block loads allowed at once (see `Volume::prefetch`). More than the cores: each
/// load first waits for its block file to come off the disk, and overlapping those waits is
/// what cold sequential reads need (measured, 1 GiB cold, 3 runs each: 2 loads 630-650 MB/s,
/// 3 -> 718-728, 4 -> 788-838, 6 -> 884-901).
const MAX_PREFETCH: usize = 6;
/// How many blocks past a sequential read are loaded ahead of it (with the reader's own
/// block, fewer than the decrypted-block cache holds, so none is evicted before use).
const PREFETCH_AHEAD: u64 = 12;
const _: () = assert!((PREFETCH_AHEAD as usize) + 1 < super::cache::BLOCK_CACHE_BLOCKS);

impl Volume {
    /// Reads up to `len` bytes at `offset`.
    pub fn read(&self, ino: InodeNo, offset: u64, len: u32) -> Result<Vec<u8>> {
        let file = self.file(ino)?;
        let bs = self.block_size;
        let (end, sources, inode) = {
            let st = file.lock();
            let tx = self.meta.read()?;
            // The inode as the world sees it, for the access-time rules.
            let mut inode = self.load_inode(&tx, ino)?;
            if st.attr_dirty {
                st.stamp(&mut inode);
            }
            let end = st.size.min(offset.saturating_add(len as u64));
            if offset >= end {
                drop(st);
                self.maybe_evict(&file);
                self.touch_atime(ino, &inode, false);
                return Ok(Vec::new());
            }
            let first = offset / bs;
            let last = (end - 1) / bs;
            let mapped: BTreeMap<u64, (BlockId, Option<u32>)> = tx
                .slots_in(ino, first, last + 1 + PREFETCH_AHEAD)?
                .into_iter()
                .map(|(i, id, valid)| (i, (id, valid)))
                .collect();
            // A sequential read (it starts where the last one ended) reaching past the middle
            // of its last block: warm the next few, so decryption runs ahead of the reader on
            // the other core. Random reads must not: each would decrypt megabytes.
            // Exactly where the last read ended. (Accepting anything within a block, for
            // readahead requests that arrive out of order, gained nothing on sequential reads
            // and cost random 4 KiB reads 13%: 1 in ~100 landed near the last and prefetched.)
            let sequential = file.read_end.swap(end, Ordering::Relaxed) == offset;
            if sequential && end > last * bs + bs / 2 {
                for next in last + 1..=last + PREFETCH_AHEAD {
                    if !st.dirty.contains_key(&next)
                        && let Some((id, _)) = mapped.get(&next)
                    {
                        self.prefetch(ino, next, *id);
                    }
                }
            }
            let sources: Vec<(u64, Source)> = (first..=last)
                .map(|i| {
                    let s = match (st.dirty.get(&i), mapped.get(&i)) {
                        (Some(d), _) => Source::Dirty(d.data.clone()),
                        (None, Some((id, valid))) => Source::Stored(*id, *valid),
                        (None, None) => Source::Hole,
                    };
                    (i, s)
                })
                .collect();
            (end, sources, inode)
        };
        let mut out = vec![0u8; (end - offset) as usize];
        for (index, source) in sources {
            let bstart = index * bs;
            // Bytes of the block that count: all of it, or what a truncation left.
            let mut valid_end = bstart + bs;
            let data = match source {
                Source::Dirty(d) => d,
                Source::Stored(id, valid) => {
                    if let Some(v) = valid {
                        valid_end = bstart + u64::from(v);
                    }
                    let (from, to) = (offset.max(bstart), end.min(valid_end));
                    if from >= to {
                        continue; // past what the block holds: zeros
                    }
                    if to - from <= PARTIAL_READ_MAX as u64
                        && !self.cache.contains(&id)
                        && let Some(part) =
                            self.read_partial(ino, index, id, from - bstart, (to - from) as usize)?
                    {
                        let dst = (from - offset) as usize;
                        out[dst..dst + part.len()].copy_from_slice(&part);
                        continue;
                    }
                    self.load_block(ino, index, id)?
                }
                Source::Hole => continue,
            };
            let from = offset.max(bstart);
            let to = end.min(bstart + data.len() as u64).min(valid_end);
            if from < to {
                let dst = (from - offset) as usize..(to - offset) as usize;
                out[dst].copy_from_slice(&data[(from - bstart) as usize..(to - bstart) as usize]);
            }
        }
        self.touch_atime(ino, &inode, false);
        Ok(out)
    }

    /// Decrypts only `len` bytes at `offset` of a stored block, for small random reads (a
    /// whole-block decrypt per 4 KiB read capped random reads at ~700 IOPS). With the block's
    /// payload key cached, only the 64 KiB chunks covered are read and decrypted; else age
    /// opens the block (X25519 unwrap, header MAC) and the key is cached for the next read.
    /// `None` when the block cannot be read in part (inline, or recorded before header
    /// hashes existed).
    fn read_partial(
        &self,
        ino: InodeNo,
        index: u64,
        id: BlockId,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>> {
        let Some(record) = self.meta.read()?.block_record(&id)? else {
            return Ok(None);
        };
        let Some(header) = record.header_hash else {
            return Ok(None);
        };
        if !self.store.contains(&id) {
            return Ok(None); // in the pool only: fetched whole by `load_block`
        }
        // A block may be shorter than the block size (written only up to some point, with
        // the file extended past it later): the rest of it reads as zeros, which the caller's
        // buffer already holds.
        let len = (offset + len as u64)
            .min(record.plain_len as u64)
            .saturating_sub(offset) as usize;
        if len == 0 {
            return Ok(Some(Vec::new()));
        }
        let corrupt = |why: String| VolumeError::Corrupt {
            ino,
            index,
            block: id,
            why,
        };
        let open = || {
            self.store
                .open_file(&id)
                .map_err(|e| corrupt(e.to_string()))
        };
        if let Some(key) = self.keys_cache.get(&id) {
            match chunks::read_chunks(&key, record.plain_len as u64, open()?, offset, len) {
                Ok(bytes) => return Ok(Some(bytes)),
                // Stale (the block was sealed again under a new file key) or damaged: the
                // full path below tells which.
                Err(_) => self.keys_cache.forget(&id),
            }
        }
        let reader = std::io::BufReader::with_capacity(64 * 1024, open()?);
        let (bytes, key) =
            chunks::open_range_keyed(&self.keys.identity, &header, reader, offset, len)
                .map_err(|e| corrupt(e.to_string()))?;
        self.keys_cache.insert(id, Arc::new(key));
        Ok(Some(bytes))
    }

    /// Loads, decrypts and verifies a stored block (through the cache). A block that is not
    /// on this machine, or whose local copy fails verification, comes from the pool.
    pub(super) fn load_block(&self, ino: InodeNo, index: u64, id: BlockId) -> Result<Arc<Vec<u8>>> {
        let mut remote_tried = false;
        self.cache
            .get_or_load(id, || {
                let tx = self.meta.read().map_err(|e| e.to_string())?;
                let inline = tx.inline_block(&id).map_err(|e| e.to_string())?;
                let open = |sealed: &[u8]| {
                    seal::open(&self.keys.identity, &self.keys.dedup, id, sealed)
                        .map_err(|e| e.to_string())
                };
                if let Some(bytes) = inline {
                    return open(&bytes);
                }
                let record = tx.block_record(&id).map_err(|e| e.to_string())?;
                drop(tx);
                let local = match self.store.get(&id) {
                    Ok(bytes) => Some(bytes),
                    Err(crate::store::StoreError::Missing(_)) => None,
                    Err(e) => return Err(e.to_string()),
                };
                let local_error = match local.as_deref().map(open) {
                    Some(Ok(plain)) => return Ok(plain),
                    Some(Err(e)) => Some(e),
                    None => None,
                };
                let Some(record) = record.filter(|_| self.has_remote()) else {
                    return Err(local_error.unwrap_or_else(|| "the block file is missing".into()));
                };
                if let Some(e) = &local_error {
                    tracing::error!(target: "bitcloud::volume", block = %id.short(), error = %e, "the local copy of a block is damaged; fetching it from the pool");
                }
                remote_tried = true;
                let sealed = self.fetch_remote(&id, &record)?;
                open(&sealed)
            })
            .map_err(|why| {
                if remote_tried {
                    VolumeError::Unavailable {
                        ino,
                        index,
                        block: id,
                        why,
                    }
                } else {
                    VolumeError::Corrupt {
                        ino,
                        index,
                        block: id,
                        why,
                    }
                }
            })
    }

    /// Decrypts block `index` into the cache on a background thread, so a sequential reader
    /// finds it ready. At most [`MAX_PREFETCH`] run at once; errors are left for the real read.
    fn prefetch(&self, ino: InodeNo, index: u64, id: BlockId) {
        if self.cache.contains(&id) {
            return;
        }
        if self.prefetching.fetch_add(1, Ordering::SeqCst) >= MAX_PREFETCH {
            self.prefetching.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let Some(volume) = self.me.upgrade() else {
            self.prefetching.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("bitcloud-prefetch".into())
            .spawn(move || {
                let _ = volume.load_block(ino, index, id);
                volume.prefetching.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.prefetching.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

enum Source {
    Dirty(Arc<Vec<u8>>),
    /// A stored block, and how many of its bytes count (`None`: all).
    Stored(BlockId, Option<u32>),
    Hole,
}
