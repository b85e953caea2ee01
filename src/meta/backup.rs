//! The rows behind the volume's metadata backup in the pool (`volume::backup` builds and
//! publishes it): what a backup contains, the rows that track its chunks, and writing a
//! database back from a backup.
//!
//! A backup is the database's rows in key order, as *dump entries*: `key length u16 LE ‖
//! table (1) ‖ key ‖ value length u32 LE ‖ value`, table 0 the superblock (key: the name,
//! value: `u64` LE), 1 `fs-2`, 2 `blocks-2`. Left out: inline block bytes (`01`: the pool
//! holds those blocks like any other), the upload queue (`04`: a backup is published only
//! once what it names is placed), the release queue (`05`: publishing a backup queues the
//! chunks it replaces for release, so with those rows in it every backup would change the
//! next one; a restored volume leaves such shards to expire with their leases), the
//! backup's own chunk rows (`06`: the manifest lists them, and they change with every
//! backup) and the superblock values in [`VOLATILE`].
//!
//! `blocks-2` `06` ‖ chunk id → [`MetaChunk`]: a chunk of a published (or publishing)
//! backup, its size and where its shards are.
//!
//! Superblock names: `backup_gen` (the generation: bumped when a backup's snapshot is
//! taken; release rows are stamped with it), `release_floor` (release rows stamped at or
//! above it are held: a published backup may still name their shards), `backup_seq` (the
//! sequence of the last root record published), `instance` (which copy of the volume this
//! is: a recovered volume gets a new one, so each can tell the other's records).

use std::collections::BTreeSet;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase};

use super::codec::DecodeError;
use super::keys;
use super::placement::Placement;
use super::tables::*;
use super::{MetaError, MetaStore, ReadTx, Result, WriteTx};
use crate::ids::BlockId;

pub const SB_BACKUP_GEN: &str = "backup_gen";
pub const SB_RELEASE_FLOOR: &str = "release_floor";
pub const SB_BACKUP_SEQ: &str = "backup_seq";
pub const SB_INSTANCE: &str = "instance";
/// The generation of the newest published backup.
pub const SB_PUBLISHED_GEN: &str = "published_gen";
/// When the newest backup was published (seconds since the epoch).
pub const SB_BACKUP_TIME: &str = "backup_time";

/// Superblock values a backup leaves out: they change with every backup or fsync and mean
/// nothing on another machine (a restore sets its own).
pub const VOLATILE: &[&str] = &[
    SB_BACKUP_GEN,
    SB_RELEASE_FLOOR,
    SB_BACKUP_SEQ,
    SB_INSTANCE,
    SB_PUBLISHED_GEN,
    SB_BACKUP_TIME,
    "journal_epoch",
];

/// Why a dump stopped when a block it names cannot be read from the pool (see [`dump`]).
pub const STALE: &str = "a block the snapshot names is not in the pool any more";

/// Dump entry tables.
pub const T_SUPERBLOCK: u8 = 0;
pub const T_FS: u8 = 1;
pub const T_BLOCKS: u8 = 2;

const CHUNK_VERSION: u8 = 1;

/// A chunk of the metadata backup in the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaChunk {
    /// The newest backup (root sequence) that uses it.
    pub last_seq: u64,
    pub plain_len: u32,
    pub sealed_len: u32,
    pub placement: Placement,
}

impl MetaChunk {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![CHUNK_VERSION];
        v.extend_from_slice(&self.last_seq.to_le_bytes());
        v.extend_from_slice(&self.plain_len.to_le_bytes());
        v.extend_from_slice(&self.sealed_len.to_le_bytes());
        v.extend_from_slice(&self.placement.encode());
        v
    }

    pub fn decode(b: &[u8]) -> std::result::Result<MetaChunk, DecodeError> {
        let bad = DecodeError {
            what: "metadata chunk",
            version: b.first().copied().unwrap_or(0),
        };
        if b.len() < 17 || b[0] != CHUNK_VERSION {
            return Err(bad);
        }
        Ok(MetaChunk {
            last_seq: u64::from_le_bytes(b[1..9].try_into().expect("8")),
            plain_len: u32::from_le_bytes(b[9..13].try_into().expect("4")),
            sealed_len: u32::from_le_bytes(b[13..17].try_into().expect("4")),
            placement: Placement::decode(&b[17..])?,
        })
    }
}

macro_rules! impl_backup_reads {
    ($t:ty) => {
        impl $t {
            /// A superblock value.
            pub fn sb_value(&self, name: &str) -> Result<Option<u64>> {
                let sb = db!(self.txn.open_table(SUPERBLOCK));
                Ok(db!(sb.get(name)).map(|g| g.value()))
            }

            /// One chunk row of the backup.
            pub fn meta_chunk(&self, id: &BlockId) -> Result<Option<MetaChunk>> {
                let t = db!(self.txn.open_table(BLOCKS));
                Ok(match db!(t.get(&keys::block(keys::META_CHUNK, id)[..])) {
                    Some(v) => Some(MetaChunk::decode(v.value())?),
                    None => None,
                })
            }

            /// Every chunk row of the backup, in id order.
            pub fn meta_chunks(&self) -> Result<Vec<(BlockId, MetaChunk)>> {
                let t = db!(self.txn.open_table(BLOCKS));
                let (lo, hi) = ([keys::META_CHUNK], [keys::META_CHUNK + 1]);
                let mut out = Vec::new();
                for row in db!(t.range::<&[u8]>(&lo[..]..&hi[..])) {
                    let (k, v) = db!(row);
                    let id = keys::block_id_in(k.value()).ok_or_else(damaged)?;
                    out.push((id, MetaChunk::decode(v.value())?));
                }
                Ok(out)
            }
        }
    };
}

impl_backup_reads!(ReadTx);
impl_backup_reads!(WriteTx);

fn damaged() -> MetaError {
    MetaError::Decode(DecodeError {
        what: "metadata chunk key",
        version: 0,
    })
}

impl WriteTx {
    pub fn set_sb_value(&mut self, name: &str, value: u64) -> Result<()> {
        db!(db!(self.txn.open_table(SUPERBLOCK)).insert(name, value));
        Ok(())
    }

    pub fn put_meta_chunk(&mut self, id: &BlockId, c: &MetaChunk) -> Result<()> {
        db!(db!(self.txn.open_table(BLOCKS))
            .insert(&keys::block(keys::META_CHUNK, id)[..], &c.encode()[..]));
        Ok(())
    }

    pub fn remove_meta_chunk(&mut self, id: &BlockId) -> Result<()> {
        db!(db!(self.txn.open_table(BLOCKS)).remove(&keys::block(keys::META_CHUNK, id)[..]));
        Ok(())
    }

    /// The stamp of a release row written now: the backup generation.
    pub(super) fn release_stamp(&self) -> Result<u64> {
        Ok(self.sb_value(SB_BACKUP_GEN)?.unwrap_or(0))
    }
}

/// The `blocks-2` key of a chunk row.
pub fn meta_chunk_key(id: &BlockId) -> [u8; 33] {
    keys::block(keys::META_CHUNK, id)
}

/// Appends one dump entry to `out`.
pub fn push_entry(out: &mut Vec<u8>, table: u8, key: &[u8], value: &[u8]) {
    out.extend_from_slice(&((key.len() + 1) as u16).to_le_bytes());
    out.push(table);
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// One entry of a dump.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub table: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// The entries of a piece of a dump that holds whole entries.
pub fn entries(mut b: &[u8]) -> std::result::Result<Vec<Entry<'_>>, DecodeError> {
    let bad = || DecodeError {
        what: "metadata backup entry",
        version: 0,
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let (kl, r) = b.split_first_chunk::<2>().ok_or_else(bad)?;
        let kl = u16::from_le_bytes(*kl) as usize;
        if kl == 0 || r.len() < kl + 4 {
            return Err(bad());
        }
        let (table, key) = (r[0], &r[1..kl]);
        if table > T_BLOCKS {
            return Err(bad());
        }
        let vl = u32::from_le_bytes(r[kl..kl + 4].try_into().expect("4")) as usize;
        let r = &r[kl + 4..];
        if r.len() < vl {
            return Err(bad());
        }
        out.push(Entry {
            table,
            key,
            value: &r[..vl],
        });
        b = &r[vl..];
    }
    Ok(out)
}

/// Where a section of the dump ends (the chunker cuts there, so a change in one table
/// never moves the chunks of another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Superblock,
    Fs,
    Blocks,
}

/// Emits every row of the backup taken at `at`, in key order, through `emit(table, key,
/// value)`, and `end(section)` after each section. Placement rows are taken from `now` (a
/// later snapshot) where it has one with at least `k` shards placed: `at` may predate the
/// placement of blocks that were queued then (`queued`, which the caller checked `now`
/// places) or a repair since. A block live at `at` that neither snapshot places on `k`
/// peers stops the dump with `MetaError::Aborted(STALE)`: take a new snapshot.
pub fn dump(
    at: &ReadTx,
    now: &ReadTx,
    queued: &BTreeSet<BlockId>,
    mut emit: impl FnMut(u8, &[u8], &[u8]) -> Result<()>,
    mut end: impl FnMut(Section) -> Result<()>,
) -> Result<()> {
    let sb = db!(at.txn.open_table(SUPERBLOCK));
    for (name, v) in db!(sb.entries()) {
        if !VOLATILE.contains(&name.as_str()) {
            emit(T_SUPERBLOCK, name.as_bytes(), &v.to_le_bytes())?;
        }
    }
    end(Section::Superblock)?;
    let fs = db!(at.txn.open_table(FS));
    for row in db!(fs.iter()) {
        let (k, v) = db!(row);
        emit(T_FS, k.value(), v.value())?;
    }
    end(Section::Fs)?;
    let blocks = db!(at.txn.open_table(BLOCKS));
    let later = db!(now.txn.open_table(BLOCKS));
    for kind in [keys::RECORD, keys::GC] {
        for row in db!(blocks.range::<&[u8]>(&[kind][..]..&[kind + 1][..])) {
            let (k, v) = db!(row);
            emit(T_BLOCKS, k.value(), v.value())?;
        }
    }
    // Placements: every block `at` placed or queued, with its newest placement from which
    // it can be read (a block freed and written again since has new shards, maybe not yet
    // placed: the old ones are held for this backup).
    let mut queued = queued.iter().peekable();
    let readable = |v: &[u8]| -> Result<bool> {
        let p = Placement::decode(v)?;
        Ok(p.placed() >= p.data as usize)
    };
    let mut placement_of = |id: &BlockId, then: Option<&[u8]>| -> Result<()> {
        let key = keys::block(keys::PLACEMENT, id);
        let newer = db!(later.get(&key[..]));
        let newer = newer.as_ref().map(|v| v.value());
        let chosen = match (newer, then) {
            (Some(v), _) if readable(v)? => Some(v),
            (_, Some(t)) if readable(t)? => Some(t),
            _ => None,
        };
        match chosen {
            Some(v) => emit(T_BLOCKS, &key, v),
            // A live block the pool cannot give back: not a backup to publish.
            None if db!(blocks.get(&keys::block(keys::RECORD, id)[..])).is_some() => {
                Err(MetaError::Aborted(STALE.into()))
            }
            // Freed at the snapshot: nobody reads it.
            None => match newer.or(then) {
                Some(v) => emit(T_BLOCKS, &key, v),
                None => Ok(()),
            },
        }
    };
    let (lo, hi) = ([keys::PLACEMENT], [keys::PLACEMENT + 1]);
    for row in db!(blocks.range::<&[u8]>(&lo[..]..&hi[..])) {
        let (k, v) = db!(row);
        let id = keys::block_id_in(k.value()).ok_or_else(damaged)?;
        while let Some(q) = queued.next_if(|q| **q < id) {
            placement_of(q, None)?;
        }
        queued.next_if(|q| **q == id);
        placement_of(&id, Some(v.value()))?;
    }
    for q in queued {
        placement_of(q, None)?;
    }
    end(Section::Blocks)
}

/// Rows written per redb transaction while restoring.
const RESTORE_BATCH: usize = 20_000;

impl MetaStore {
    /// Creates the database at `path` from a backup's entries, given in pieces of whole
    /// entries by `next` (`None` at the end), then `extra` superblock values. The file is
    /// written beside `path` and renamed into place once complete and durable.
    pub fn restore(
        path: &Path,
        mut next: impl FnMut() -> std::result::Result<Option<Vec<u8>>, String>,
        extra: &[(&str, u64)],
    ) -> std::result::Result<MetaStore, String> {
        let tmp = path.with_extension("restoring");
        let _ = std::fs::remove_file(&tmp);
        let db = Database::builder()
            .set_cache_size(super::META_CACHE_BYTES)
            .create(&tmp)
            .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        let redb_err = |e: redb::Error| format!("writing {}: {e}", tmp.display());
        let mut rows = 0usize;
        let mut txn = db.begin_write().map_err(|e| redb_err(e.into()))?;
        txn.set_durability(Durability::None)
            .map_err(|e| redb_err(e.into()))?;
        while let Some(piece) = next()? {
            let es = entries(&piece).map_err(|e| e.to_string())?;
            {
                let mut sb = txn.open_table(SUPERBLOCK).map_err(|e| redb_err(e.into()))?;
                let mut fs = txn.open_table(FS).map_err(|e| redb_err(e.into()))?;
                let mut blocks = txn.open_table(BLOCKS).map_err(|e| redb_err(e.into()))?;
                for e in es {
                    match e.table {
                        T_SUPERBLOCK => {
                            let name = std::str::from_utf8(e.key)
                                .map_err(|_| "a superblock name is not UTF-8".to_string())?;
                            let v: [u8; 8] = e
                                .value
                                .try_into()
                                .map_err(|_| "a superblock value is not 8 bytes".to_string())?;
                            sb.insert(name, u64::from_le_bytes(v))
                                .map_err(|e| redb_err(e.into()))?;
                        }
                        T_FS => {
                            fs.insert(e.key, e.value).map_err(|e| redb_err(e.into()))?;
                        }
                        _ => {
                            blocks
                                .insert(e.key, e.value)
                                .map_err(|e| redb_err(e.into()))?;
                        }
                    }
                    rows += 1;
                }
            }
            if rows >= RESTORE_BATCH {
                txn.commit().map_err(|e| redb_err(e.into()))?;
                txn = db.begin_write().map_err(|e| redb_err(e.into()))?;
                txn.set_durability(Durability::None)
                    .map_err(|e| redb_err(e.into()))?;
                rows = 0;
            }
        }
        {
            let mut sb = txn.open_table(SUPERBLOCK).map_err(|e| redb_err(e.into()))?;
            for (name, v) in extra {
                sb.insert(*name, *v).map_err(|e| redb_err(e.into()))?;
            }
        }
        txn.set_durability(Durability::Immediate)
            .map_err(|e| redb_err(e.into()))?;
        txn.commit().map_err(|e| redb_err(e.into()))?;
        {
            let check = db.begin_read().map_err(|e| redb_err(e.into()))?;
            let sb = check
                .open_table(SUPERBLOCK)
                .map_err(|_| "the backup has no superblock".to_string())?;
            if sb.get("format").ok().flatten().is_none() {
                return Err("the backup has no format in its superblock".into());
            }
        }
        drop(db);
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("renaming into {}: {e}", path.display()))?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        MetaStore::open(path).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;
    use crate::meta::placement::ShardPlace;

    #[test]
    fn entries_round_trip_and_reject_junk() {
        let mut b = Vec::new();
        push_entry(&mut b, T_FS, b"key", b"value");
        push_entry(&mut b, T_SUPERBLOCK, b"format", &2u64.to_le_bytes());
        push_entry(&mut b, T_BLOCKS, &[0; 33], b"");
        let es = entries(&b).unwrap();
        assert_eq!(es.len(), 3);
        assert_eq!(
            es[0],
            Entry {
                table: T_FS,
                key: b"key",
                value: b"value"
            }
        );
        for cut in 1..b.len() {
            if entries(&b[..cut]).is_ok() {
                // Only a cut at an entry boundary parses.
                assert!(cut == 15 || cut == 15 + 21, "cut at {cut}");
            }
        }
        let mut bad = b.clone();
        bad[2] = 9;
        assert!(entries(&bad).is_err(), "unknown table");
    }

    #[test]
    fn chunk_rows_round_trip() {
        let c = MetaChunk {
            last_seq: 9,
            plain_len: 1000,
            sealed_len: 1200,
            placement: Placement {
                data: 2,
                parity: 1,
                shard_len: 600,
                shards: (0..3)
                    .map(|i| ShardPlace {
                        id: ShardId([i; 32]),
                        holder: Some(vec![i; 38]),
                    })
                    .collect(),
            },
        };
        assert_eq!(MetaChunk::decode(&c.encode()).unwrap(), c);
        assert!(MetaChunk::decode(&c.encode()[..16]).is_err());
    }
}
