//! A node's store of the shards peers placed on it.
//!
//! One file per (shard, owner): `shards/<2 hex>/<shard id>-<owner tag>`, a header (magic,
//! version, the owner's peer id, reserved room for lease and proof data) followed by the
//! shard's bytes. Each owner has its own copy, so one owner's release never removes what
//! another stored; in practice shards never coincide (age makes every sealed block unique).
//!
//! A put is verified (the bytes must hash to the id), refused whole when it does not fit the
//! offer or the disk (never half stored: it is written to `tmp/`, synced, then linked into
//! place and the directory synced, before it is acknowledged), and counted against the
//! offer from the moment it is accepted. A get re-verifies the bytes: a damaged copy is moved
//! to `quarantine/` and reported missing, never sent. The index (which copies exist, how much
//! each owner uses) is rebuilt from the file names and headers at start.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::protocol::{MAX_SHARD, Refusal};
use crate::ids::ShardId;

const MAGIC: &[u8; 4] = b"BCS1";
/// magic, version, owner length, 2 reserved bytes, then the owner and 32 reserved bytes.
const FIXED_HEADER: usize = 8;
const RESERVED: usize = 32;
/// Free space a put must leave on the disk.
const DISK_MARGIN: u64 = 64 << 20;

/// Identifies an owner in file names: 8 bytes of BLAKE3 of its peer id, in hex.
fn owner_tag(owner: &[u8]) -> String {
    let h = blake3::hash(owner);
    h.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Failures of the store itself (not refusals).
#[derive(Debug, thiserror::Error)]
pub enum ShardStoreError {
    #[error("shard store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path, source: std::io::Error) -> ShardStoreError {
    ShardStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The outcome of a put.
#[derive(Debug)]
pub enum PutOutcome {
    Stored,
    Refused(Refusal),
}

#[derive(Default)]
struct Index {
    /// shard -> (owner tag, length) of each copy.
    copies: HashMap<ShardId, Vec<(String, u32)>>,
    /// Bytes held, including puts being written.
    used: u64,
    by_owner: HashMap<String, u64>,
}

/// The shards this node holds for others.
pub struct ShardStore {
    dir: PathBuf,
    offer: std::sync::atomic::AtomicU64,
    /// Most bytes one owner may hold here (`u64::MAX`: the whole offer).
    per_owner: std::sync::atomic::AtomicU64,
    index: Mutex<Index>,
}

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardStore({})", self.dir.display())
    }
}

impl ShardStore {
    /// Opens (creating) the store in `dir`, offering `offer` bytes to the pool.
    pub fn open(dir: &Path, offer: u64) -> Result<ShardStore, ShardStoreError> {
        for sub in ["shards", "tmp", "quarantine"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| io(dir, e))?;
        }
        // Leftovers of puts interrupted by a crash: never acknowledged.
        if let Ok(rd) = fs::read_dir(dir.join("tmp")) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut index = Index::default();
        let shards = dir.join("shards");
        for sub in fs::read_dir(&shards).map_err(|e| io(&shards, e))?.flatten() {
            let Ok(rd) = fs::read_dir(sub.path()) else {
                continue;
            };
            for f in rd.flatten() {
                let name = f.file_name();
                let Some((id, owner)) = name.to_str().and_then(parse_name) else {
                    continue;
                };
                let len = f
                    .metadata()
                    .map(|m| m.len())
                    .map_err(|e| io(&f.path(), e))?
                    .saturating_sub(header_len_of(&f.path()).unwrap_or(0) as u64);
                index.used += len;
                *index.by_owner.entry(owner.clone()).or_default() += len;
                index
                    .copies
                    .entry(id)
                    .or_default()
                    .push((owner, len as u32));
            }
        }
        Ok(ShardStore {
            dir: dir.to_path_buf(),
            offer: std::sync::atomic::AtomicU64::new(offer),
            per_owner: std::sync::atomic::AtomicU64::new(u64::MAX),
            index: Mutex::new(index),
        })
    }

    fn path_of(&self, id: &ShardId, owner: &str) -> PathBuf {
        let hex = id.to_hex();
        self.dir
            .join("shards")
            .join(&hex[..2])
            .join(format!("{hex}-{owner}"))
    }

    /// Bytes offered to the pool.
    pub fn offered(&self) -> u64 {
        self.offer.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Caps what one owner may hold here (so one peer cannot take the whole offer).
    pub fn set_per_owner(&self, bytes: u64) {
        self.per_owner
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Most bytes one owner may hold here.
    pub fn per_owner(&self) -> u64 {
        self.per_owner.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes held (and being written).
    pub fn used(&self) -> u64 {
        self.index.lock().used
    }

    /// Bytes held for `owner`.
    pub fn used_by(&self, owner: &[u8]) -> u64 {
        let tag = owner_tag(owner);
        self.index.lock().by_owner.get(&tag).copied().unwrap_or(0)
    }

    /// Number of shard copies held.
    pub fn count(&self) -> usize {
        self.index.lock().copies.values().map(|v| v.len()).sum()
    }

    /// Stores `bytes` as shard `id` for `owner` (synced before returning `Stored`).
    pub fn put(
        &self,
        owner: &[u8],
        id: &ShardId,
        bytes: &[u8],
    ) -> Result<PutOutcome, ShardStoreError> {
        if bytes.len() as u64 > u64::from(MAX_SHARD) {
            return Ok(PutOutcome::Refused(Refusal::TooBig));
        }
        if crate::pipeline::erasure::shard_id(bytes) != *id {
            return Ok(PutOutcome::Refused(Refusal::BadHash));
        }
        let tag = owner_tag(owner);
        let len = bytes.len() as u64;
        {
            let mut ix = self.index.lock();
            if ix
                .copies
                .get(id)
                .is_some_and(|c| c.iter().any(|(o, _)| *o == tag))
            {
                return Ok(PutOutcome::Stored); // already held for this owner
            }
            if ix.used + len > self.offered() {
                return Ok(PutOutcome::Refused(Refusal::OfferFull));
            }
            let owner_used = ix.by_owner.get(&tag).copied().unwrap_or(0);
            if owner_used + len > self.per_owner() {
                // This owner's share is used up; others may still store here.
                return Ok(PutOutcome::Refused(Refusal::OfferFull));
            }
            if free_space(&self.dir).is_some_and(|free| free < len + DISK_MARGIN) {
                return Ok(PutOutcome::Refused(Refusal::DiskFull));
            }
            ix.used += len; // counted now: concurrent puts cannot overrun the offer
        }
        let written = self.write_copy(owner, &tag, id, bytes);
        let mut ix = self.index.lock();
        match written {
            Ok(()) => {
                *ix.by_owner.entry(tag.clone()).or_default() += len;
                ix.copies.entry(*id).or_default().push((tag, len as u32));
                Ok(PutOutcome::Stored)
            }
            Err(e) => {
                ix.used -= len;
                if let ShardStoreError::Io { source, .. } = &e
                    && matches!(
                        source.raw_os_error(),
                        Some(libc::ENOSPC) | Some(libc::EDQUOT)
                    )
                {
                    return Ok(PutOutcome::Refused(Refusal::DiskFull));
                }
                Err(e)
            }
        }
    }

    fn write_copy(
        &self,
        owner: &[u8],
        tag: &str,
        id: &ShardId,
        bytes: &[u8],
    ) -> Result<(), ShardStoreError> {
        let final_path = self.path_of(id, tag);
        let tmp =
            self.dir
                .join("tmp")
                .join(format!("{}-{tag}-{}", id.to_hex(), std::process::id()));
        let result = (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            let mut header = Vec::with_capacity(FIXED_HEADER + owner.len() + RESERVED);
            header.extend_from_slice(MAGIC);
            header.push(1);
            header.push(owner.len() as u8);
            header.extend_from_slice(&[0, 0]);
            header.extend_from_slice(owner);
            header.extend_from_slice(&[0u8; RESERVED]);
            f.write_all(&header)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            let parent = final_path.parent().expect("shard paths have a parent");
            fs::create_dir_all(parent)?;
            match fs::hard_link(&tmp, &final_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            File::open(parent)?.sync_all()?;
            Ok(())
        })();
        let _ = fs::remove_file(&tmp);
        result.map_err(|e| io(&final_path, e))
    }

    /// The bytes of shard `id` (any owner's copy), verified. A copy that fails verification
    /// is quarantined and not returned.
    pub fn get(&self, id: &ShardId) -> Result<Option<Vec<u8>>, ShardStoreError> {
        let owners: Vec<String> = match self.index.lock().copies.get(id) {
            Some(c) => c.iter().map(|(o, _)| o.clone()).collect(),
            None => return Ok(None),
        };
        for owner in owners {
            let path = self.path_of(id, &owner);
            let mut data = Vec::new();
            match File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.forget(id, &owner);
                    continue;
                }
                Err(e) => return Err(io(&path, e)),
            }
            let body = header_len(&data).map(|h| &data[h..]);
            if let Some(body) = body
                && crate::pipeline::erasure::shard_id(body) == *id
            {
                return Ok(Some(body.to_vec()));
            }
            tracing::error!(target: "bitcloud::node", shard = %id.short(), "a stored shard is damaged; moved to quarantine");
            let _ = fs::rename(
                &path,
                self.dir
                    .join("quarantine")
                    .join(path.file_name().expect("shard files have names")),
            );
            self.forget(id, &owner);
        }
        Ok(None)
    }

    fn forget(&self, id: &ShardId, owner: &str) {
        let mut ix = self.index.lock();
        let Some(copies) = ix.copies.get_mut(id) else {
            return;
        };
        let Some(pos) = copies.iter().position(|(o, _)| o == owner) else {
            return;
        };
        let (_, len) = copies.remove(pos);
        if copies.is_empty() {
            ix.copies.remove(id);
        }
        ix.used = ix.used.saturating_sub(u64::from(len));
        if let Some(u) = ix.by_owner.get_mut(owner) {
            *u = u.saturating_sub(u64::from(len));
        }
    }

    /// Which of `ids` are held for `owner`.
    pub fn has(&self, owner: &[u8], ids: &[ShardId]) -> Vec<bool> {
        let tag = owner_tag(owner);
        let ix = self.index.lock();
        ids.iter()
            .map(|id| {
                ix.copies
                    .get(id)
                    .is_some_and(|c| c.iter().any(|(o, _)| *o == tag))
            })
            .collect()
    }

    /// Removes `owner`'s copies of `ids`; returns how many there were. Only the owner that
    /// stored a copy can release it.
    pub fn release(&self, owner: &[u8], ids: &[ShardId]) -> Result<u32, ShardStoreError> {
        let tag = owner_tag(owner);
        let mut released = 0;
        for id in ids {
            let held = self
                .index
                .lock()
                .copies
                .get(id)
                .is_some_and(|c| c.iter().any(|(o, _)| *o == tag));
            if !held {
                continue;
            }
            let path = self.path_of(id, &tag);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, e)),
            }
            self.forget(id, &tag);
            released += 1;
        }
        Ok(released)
    }
}

/// The length of a shard file's header, from its first bytes.
fn header_len(data: &[u8]) -> Option<usize> {
    if data.len() < FIXED_HEADER || &data[..4] != MAGIC || data[4] != 1 {
        return None;
    }
    let h = FIXED_HEADER + data[5] as usize + RESERVED;
    (data.len() >= h).then_some(h)
}

fn header_len_of(path: &Path) -> Option<usize> {
    let mut f = File::open(path).ok()?;
    let mut head = [0u8; FIXED_HEADER];
    f.read_exact(&mut head).ok()?;
    (&head[..4] == MAGIC && head[4] == 1).then(|| FIXED_HEADER + head[5] as usize + RESERVED)
}

fn parse_name(name: &str) -> Option<(ShardId, String)> {
    let (hex, owner) = name.split_once('-')?;
    (owner.len() == 16 && owner.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| ShardId::from_hex(hex).map(|id| (id, owner.to_string())))
        .flatten()
}

/// Bytes available to us on the filesystem holding `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::erasure::shard_id;

    #[test]
    fn put_get_release_with_offer_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), 10_000).unwrap();
        let a = vec![1u8; 4000];
        let b = vec![2u8; 4000];
        let (ia, ib) = (shard_id(&a), shard_id(&b));
        assert!(matches!(
            s.put(b"alice", &ia, &a).unwrap(),
            PutOutcome::Stored
        ));
        assert!(
            matches!(s.put(b"alice", &ia, &a).unwrap(), PutOutcome::Stored),
            "idempotent"
        );
        assert!(matches!(
            s.put(b"alice", &ia, &b).unwrap(),
            PutOutcome::Refused(Refusal::BadHash)
        ));
        assert!(matches!(
            s.put(b"bob", &ib, &b).unwrap(),
            PutOutcome::Stored
        ));
        assert!(matches!(
            s.put(b"bob", &ia, &a).unwrap(),
            PutOutcome::Refused(Refusal::OfferFull)
        ));
        assert_eq!(s.used(), 8000);
        assert_eq!(s.used_by(b"alice"), 4000);
        assert_eq!(s.get(&ia).unwrap().unwrap(), a);
        assert_eq!(s.has(b"alice", &[ia, ib]), vec![true, false]);
        // Bob cannot release Alice's shard.
        assert_eq!(s.release(b"bob", &[ia]).unwrap(), 0);
        assert!(s.get(&ia).unwrap().is_some());
        // Reopened: the index comes back from the files.
        drop(s);
        let s = ShardStore::open(dir.path(), 10_000).unwrap();
        assert_eq!((s.used(), s.count()), (8000, 2));
        assert_eq!(s.release(b"alice", &[ia, ib]).unwrap(), 1);
        assert!(s.get(&ia).unwrap().is_none());
        assert_eq!(s.used(), 4000);
    }

    #[test]
    fn one_owner_cannot_take_more_than_its_share() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), 10_000).unwrap();
        s.set_per_owner(5_000);
        let shard = |b: u8| {
            let v = vec![b; 3000];
            (shard_id(&v), v)
        };
        let (i1, s1) = shard(1);
        let (i2, s2) = shard(2);
        assert!(matches!(
            s.put(b"alice", &i1, &s1).unwrap(),
            PutOutcome::Stored
        ));
        assert!(matches!(
            s.put(b"alice", &i2, &s2).unwrap(),
            PutOutcome::Refused(Refusal::OfferFull)
        ));
        // Another owner still has room.
        assert!(matches!(
            s.put(b"bob", &i2, &s2).unwrap(),
            PutOutcome::Stored
        ));
        assert_eq!(s.used_by(b"alice"), 3000);
    }

    #[test]
    fn damaged_copies_are_quarantined_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShardStore::open(dir.path(), 1 << 20).unwrap();
        let a = vec![7u8; 5000];
        let id = shard_id(&a);
        s.put(b"alice", &id, &a).unwrap();
        let path = s.path_of(&id, &owner_tag(b"alice"));
        let mut raw = std::fs::read(&path).unwrap();
        let n = raw.len();
        raw[n - 1] ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert!(s.get(&id).unwrap().is_none());
        assert!(!path.exists());
        assert_eq!(s.used(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("quarantine"))
                .unwrap()
                .count(),
            1
        );
    }
}
