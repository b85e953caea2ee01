//! The volume's metadata in the pool, volume side (no networking here; `pool::backup`
//! places the chunks and publishes the root record).
//!
//! A backup is taken at a *point*: the backup generation is bumped and a read snapshot of
//! the database taken. It may be published once every block that snapshot names is in the
//! pool on at least `k` peers: the blocks then in the upload queue are waited for
//! ([`Volume::backup_readiness`]), and if one of them is freed before it is placed, the
//! point is dropped and a new one taken. The snapshot's rows are then dumped in key order
//! (`meta::backup::dump`, with each block's newest placement) and cut into chunks at
//! content-defined points (`chunker`): a backup after a few changes reuses almost every
//! chunk of the last one. Each chunk is sealed (age, to the volume's recipient) and
//! placed like a block; its id is the keyed BLAKE3 of its plaintext under a key of its own.
//!
//! What a published backup names must stay in the pool until two newer ones are published
//! (the newest and the one before are kept): chunks carry the sequence of the last backup
//! that used them, and release rows of freed blocks are stamped with the generation they
//! were freed in and held while a kept backup may name them (`meta::backup`).

pub(crate) mod chunker;
pub mod manifest;

use std::collections::{BTreeSet, HashSet};

use super::{Result, Volume};
use crate::ids::BlockId;
use crate::keys::VolumeKeys;
use crate::meta::backup::{self as rows, MetaChunk, Section};
use crate::meta::{MetaError, ReadTx, Reader};
use crate::pipeline::seal;

/// A snapshot to back up.
pub struct BackupPoint {
    /// Its backup generation.
    pub generation: u64,
    /// The volume's change count when it was taken.
    pub commits: u64,
    /// Which copy of the volume this is.
    pub instance: u64,
    at: ReadTx,
    queued: BTreeSet<BlockId>,
}

/// Whether a point can be published yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// This many blocks it names are not yet on `k` peers.
    Waiting(usize),
    /// A block it names was freed before it was placed: take a new point.
    Stale,
}

/// Why a dump did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// A block the point names was freed (and perhaps written again) and is no longer in
    /// the pool as the point knew it: take a new point.
    #[error("{}", rows::STALE)]
    Stale,
    #[error("{0}")]
    Failed(String),
}

/// What a dump held.
#[derive(Clone, Copy, Debug, Default)]
pub struct DumpStats {
    pub rows: u64,
    pub bytes: u64,
}

/// The backup side of `status`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BackupStatus {
    /// Sequence of the newest root record published (0: none yet).
    pub seq: u64,
    /// When it was published (seconds since the epoch).
    pub published_at: Option<u64>,
    /// Chunks (and their sealed bytes) the kept backups use, the manifests included.
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Of those, the newest backup's.
    pub current_chunks: u64,
    pub current_bytes: u64,
    /// Release rows held back because a kept backup may name their shards.
    pub releases_held: u64,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Random, for instance numbers.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the system has a random source");
    u64::from_le_bytes(b)
}

/// Decrypts a chunk (or manifest) of a backup and checks it against its id.
pub fn open_chunk(
    keys: &VolumeKeys,
    id: BlockId,
    sealed: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    seal::open(&keys.identity, &keys.meta_chunk, id, sealed).map_err(|e| e.to_string())
}

/// The id of a chunk (or manifest) with this plaintext.
pub fn chunk_id(keys: &VolumeKeys, plain: &[u8]) -> BlockId {
    crate::pipeline::block_id::block_id(&keys.meta_chunk, plain)
}

/// A fresh instance number for a volume restored from the pool.
pub fn new_instance() -> u64 {
    random_u64().max(1)
}

impl Volume {
    /// How many changes the volume has seen (a backup is due when this moved).
    pub fn change_count(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes a point: bumps the backup generation (release rows stamped from now on may be
    /// named by this point) and reads a snapshot after it.
    pub fn backup_point(&self) -> Result<BackupPoint> {
        let commits = self.change_count();
        let mut tx = self.meta.write()?;
        let generation = tx.sb_value(rows::SB_BACKUP_GEN)?.unwrap_or(0) + 1;
        tx.set_sb_value(rows::SB_BACKUP_GEN, generation)?;
        if tx.sb_value(rows::SB_RELEASE_FLOOR)?.is_none() {
            // Nothing published yet: only what this point may name is held.
            tx.set_sb_value(rows::SB_RELEASE_FLOOR, generation)?;
        }
        let instance = match tx.sb_value(rows::SB_INSTANCE)? {
            Some(i) => i,
            None => {
                let i = new_instance();
                tx.set_sb_value(rows::SB_INSTANCE, i)?;
                i
            }
        };
        tx.commit()?;
        self.mark_bookkeeping();
        let at = self.meta.read()?;
        let queued = at
            .upload_queue(None, usize::MAX)?
            .into_iter()
            .collect::<BTreeSet<_>>();
        Ok(BackupPoint {
            generation,
            commits,
            instance,
            at,
            queued,
        })
    }

    /// Whether every block the point names is on at least `k` peers now.
    pub fn backup_readiness(&self, p: &BackupPoint) -> Result<Readiness> {
        let now = self.meta.read()?;
        let mut waiting = 0;
        for id in &p.queued {
            match now.placement(id)? {
                Some(pl) if pl.placed() >= pl.data as usize => {}
                _ if now.block_record(id)?.is_some() || now.is_queued(id)? => waiting += 1,
                _ => return Ok(Readiness::Stale),
            }
        }
        Ok(if waiting == 0 {
            Readiness::Ready
        } else {
            Readiness::Waiting(waiting)
        })
    }

    /// Dumps the point's rows as chunks of at most `max` bytes, handing each (id,
    /// plaintext) to `each` in order; an error from `each` stops the dump.
    pub fn backup_dump(
        &self,
        p: &BackupPoint,
        max: usize,
        mut each: impl FnMut(BlockId, Vec<u8>) -> std::result::Result<(), String>,
    ) -> std::result::Result<DumpStats, DumpError> {
        let now = self
            .meta
            .read()
            .map_err(|e| DumpError::Failed(e.to_string()))?;
        let keys = &self.keys;
        let chunker = std::cell::RefCell::new(chunker::Chunker::new(&keys.meta_chunk, max));
        let give = std::cell::RefCell::new(|c: Vec<u8>| {
            each(chunk_id(keys, &c), c).map_err(MetaError::Aborted)
        });
        let mut stats = DumpStats::default();
        rows::dump(
            &p.at,
            &now,
            &p.queued,
            |table, key, value| {
                stats.rows += 1;
                stats.bytes += (7 + key.len() + value.len()) as u64;
                let done = chunker.borrow_mut().push(table, key, value);
                for c in done {
                    (give.borrow_mut())(c)?;
                }
                Ok(())
            },
            |_: Section| {
                let done = chunker.borrow_mut().finish();
                if let Some(c) = done {
                    (give.borrow_mut())(c)?;
                }
                Ok(())
            },
        )
        .map_err(|e| match e {
            MetaError::Aborted(why) if why == rows::STALE => DumpError::Stale,
            e => DumpError::Failed(e.to_string()),
        })?;
        Ok(stats)
    }

    /// Seals a chunk (or manifest) of the backup.
    pub fn seal_chunk(&self, plain: &[u8]) -> std::result::Result<Vec<u8>, String> {
        seal::seal(&self.keys.recipient, plain).map_err(|e| e.to_string())
    }

    /// The volume's keys (the pool encrypts root payloads and opens chunks with them).
    pub fn backup_keys(&self) -> &VolumeKeys {
        &self.keys
    }

    /// The backup's chunk rows.
    pub fn meta_chunks(&self) -> Result<Vec<(BlockId, MetaChunk)>> {
        Ok(self.meta.read()?.meta_chunks()?)
    }

    /// Shards of freed blocks a kept backup may still name (renewed until they may go).
    pub fn held_release_shards(&self) -> Result<Vec<crate::meta::placement::ShardPlace>> {
        Ok(self.meta.read()?.held_release_shards()?)
    }

    /// Records a chunk placed for a backup being published. A chunk with the same id but
    /// another placement (sealed anew because its old shards were no longer all live) has
    /// its old shards released once no kept backup can name them.
    pub fn record_meta_chunk(&self, id: &BlockId, mut chunk: MetaChunk) -> Result<()> {
        let mut tx = self.meta.write()?;
        if let Some(old) = tx.meta_chunk(id)? {
            if old.placement != chunk.placement {
                let stamp = tx.sb_value(rows::SB_BACKUP_GEN)?.unwrap_or(0);
                tx.add_release(id, &old.placement.shards, stamp)?;
            }
            chunk.last_seq = old.last_seq;
        }
        tx.put_meta_chunk(id, &chunk)?;
        tx.commit()?;
        self.mark_bookkeeping();
        Ok(())
    }

    /// Records that backup `seq` (taken at generation `generation`, using `used` chunks) is
    /// published: chunks no kept backup uses are released, and release rows only older
    /// backups could name are let go.
    pub fn record_backup(&self, seq: u64, generation: u64, used: &[BlockId]) -> Result<u64> {
        let used: HashSet<BlockId> = used.iter().copied().collect();
        let mut tx = self.meta.write()?;
        let prev_seq = tx.sb_value(rows::SB_BACKUP_SEQ)?.unwrap_or(0);
        let prev_gen = tx.sb_value(rows::SB_PUBLISHED_GEN)?;
        let mut dropped = 0;
        for (id, mut c) in tx.meta_chunks()? {
            if used.contains(&id) {
                c.last_seq = seq;
                tx.put_meta_chunk(&id, &c)?;
            } else if c.last_seq < prev_seq || c.last_seq == 0 {
                tx.remove_meta_chunk(&id)?;
                tx.add_release(&id, &c.placement.shards, 0)?;
                dropped += 1;
            }
        }
        tx.set_sb_value(rows::SB_BACKUP_SEQ, seq)?;
        tx.set_sb_value(rows::SB_PUBLISHED_GEN, generation)?;
        // Both kept backups stay whole: hold what the older of them may name.
        tx.set_sb_value(
            rows::SB_RELEASE_FLOOR,
            prev_gen.unwrap_or(generation).min(generation),
        )?;
        tx.set_sb_value(rows::SB_BACKUP_TIME, unix_now())?;
        tx.commit()?;
        self.mark_bookkeeping();
        Ok(dropped)
    }

    /// The published backup's sequence and this copy's instance number.
    pub fn backup_seq(&self) -> Result<(u64, Option<u64>)> {
        let tx = self.meta.read()?;
        Ok((
            tx.sb_value(rows::SB_BACKUP_SEQ)?.unwrap_or(0),
            tx.sb_value(rows::SB_INSTANCE)?,
        ))
    }

    /// What `status` says of the backup.
    pub fn backup_status(&self) -> Result<BackupStatus> {
        backup_status_of(&self.meta.read()?)
    }
}

/// The backup figures of a snapshot (also read by `status` with no mount running).
pub fn backup_status_of(tx: &ReadTx) -> Result<BackupStatus> {
    let chunks = tx.meta_chunks()?;
    let seq = tx.sb_value(rows::SB_BACKUP_SEQ)?.unwrap_or(0);
    let current: Vec<&MetaChunk> = chunks
        .iter()
        .map(|(_, c)| c)
        .filter(|c| seq > 0 && c.last_seq == seq)
        .collect();
    Ok(BackupStatus {
        seq,
        published_at: tx.sb_value(rows::SB_BACKUP_TIME)?,
        chunks: chunks.len() as u64,
        chunk_bytes: chunks.iter().map(|(_, c)| u64::from(c.sealed_len)).sum(),
        current_chunks: current.len() as u64,
        current_bytes: current.iter().map(|c| u64::from(c.sealed_len)).sum(),
        releases_held: tx.release_held()?,
    })
}

/// What a restore brought back.
#[derive(Clone, Copy, Debug)]
pub struct Restored {
    pub counts: crate::meta::Counts,
    pub block_size: u32,
}

/// Writes the volume in `data_dir` from a backup: the dump's pieces in order from `next`
/// (`None` at the end), published as backup `seq` of generation `generation` (created at
/// `created`) with `chunks` (id, plaintext and sealed lengths, placement: the backup's own
/// chunks and manifest, kept so that they are renewed and later released). The new copy
/// gets an instance number of its own. The database appears only once it is complete.
pub fn restore(
    data_dir: &std::path::Path,
    mut next: impl FnMut() -> std::result::Result<Option<Vec<u8>>, String>,
    (seq, generation, created): (u64, u64, u64),
    chunks: Vec<(BlockId, u32, u32, crate::meta::placement::Placement)>,
) -> std::result::Result<Restored, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    // The backup's own chunk rows come after the dump, in the same restore.
    let mut tail = Vec::new();
    for (id, plain_len, sealed_len, placement) in chunks {
        let c = MetaChunk {
            last_seq: seq,
            plain_len,
            sealed_len,
            placement,
        };
        rows::push_entry(
            &mut tail,
            rows::T_BLOCKS,
            &crate::meta::backup::meta_chunk_key(&id),
            &c.encode(),
        );
    }
    let mut tail = Some(tail);
    let extra = [
        (rows::SB_BACKUP_GEN, generation),
        (rows::SB_RELEASE_FLOOR, generation),
        (rows::SB_PUBLISHED_GEN, generation),
        (rows::SB_BACKUP_SEQ, seq),
        (rows::SB_INSTANCE, new_instance()),
        (rows::SB_BACKUP_TIME, created),
    ];
    let meta = crate::meta::MetaStore::restore(
        &data_dir.join("meta.redb"),
        || match next()? {
            Some(piece) => Ok(Some(piece)),
            None => Ok(tail.take()),
        },
        &extra,
    )?;
    let block_size = meta.superblock().map_err(|e| e.to_string())?.block_size;
    let counts = meta
        .read()
        .and_then(|tx| tx.counts())
        .map_err(|e| e.to_string())?;
    drop(meta);
    crate::store::BlockStore::open(&data_dir.join("blocks")).map_err(|e| e.to_string())?;
    Ok(Restored { counts, block_size })
}

#[cfg(test)]
mod tests;
