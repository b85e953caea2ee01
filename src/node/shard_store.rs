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
//!
//! Every copy has a lease (see [`lease`](super::lease)): its expiry on this node's clock is
//! kept in the header, set by the put and by each renewal. [`ShardStore::sweep`] moves
//! copies past their lease to `trash/` (still served, and renewed back if the owner asks)
//! and deletes them after the trash period.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use file::{
    DISK_MARGIN, FIXED_HEADER, MAGIC, RESERVED, free_space, header_len, owner_tag, parse_name,
    read_header, write_expiry,
};

use super::lease::{LeaseTerms, now_secs};
use super::protocol::{MAX_SHARD, Refusal};
use crate::ids::ShardId;

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

/// One owner's copy of a shard.
#[derive(Clone, Debug)]
struct Copy {
    owner: String,
    len: u32,
    /// End of the lease, seconds on this node's clock.
    expires: u64,
    /// Past its lease, in `trash/` until `expires + trash`.
    trashed: bool,
}

#[derive(Default)]
struct Index {
    copies: HashMap<ShardId, Vec<Copy>>,
    /// Bytes held under lease, including puts being written.
    used: u64,
    /// Bytes in the trash (not counted against the offer).
    trash: u64,
    by_owner: HashMap<String, u64>,
    /// Copies being written now: a second put of the same copy waits its turn (`Busy`).
    writing: std::collections::HashSet<(ShardId, String)>,
}

impl Index {
    fn copy_mut(&mut self, id: &ShardId, owner: &str) -> Option<&mut Copy> {
        self.copies
            .get_mut(id)?
            .iter_mut()
            .find(|c| c.owner == owner)
    }

    fn add(&mut self, id: ShardId, copy: Copy) {
        let len = u64::from(copy.len);
        if copy.trashed {
            self.trash += len;
        } else {
            self.used += len;
            *self.by_owner.entry(copy.owner.clone()).or_default() += len;
        }
        self.copies.entry(id).or_default().push(copy);
    }

    fn remove(&mut self, id: &ShardId, owner: &str) -> Option<Copy> {
        let copies = self.copies.get_mut(id)?;
        let pos = copies.iter().position(|c| c.owner == owner)?;
        let copy = copies.remove(pos);
        if copies.is_empty() {
            self.copies.remove(id);
        }
        let len = u64::from(copy.len);
        if copy.trashed {
            self.trash = self.trash.saturating_sub(len);
        } else {
            self.used = self.used.saturating_sub(len);
            if let Some(u) = self.by_owner.get_mut(&copy.owner) {
                *u = u.saturating_sub(len);
            }
        }
        Some(copy)
    }
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Copies whose lease ran out, moved to the trash.
    pub trashed: u64,
    /// Copies deleted from the trash.
    pub deleted: u64,
    pub deleted_bytes: u64,
}

/// The shards this node holds for others.
pub struct ShardStore {
    dir: PathBuf,
    offer: std::sync::atomic::AtomicU64,
    /// Most bytes one owner may hold here (`u64::MAX`: the whole offer).
    per_owner: std::sync::atomic::AtomicU64,
    terms: Mutex<LeaseTerms>,
    index: Mutex<Index>,
}

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardStore({})", self.dir.display())
    }
}

impl ShardStore {
    /// Opens (creating) the store in `dir`, offering `offer` bytes to the pool, with the
    /// default lease terms.
    pub fn open(dir: &Path, offer: u64) -> Result<ShardStore, ShardStoreError> {
        Self::open_with(dir, offer, LeaseTerms::default())
    }

    /// Opens (creating) the store in `dir` with lease terms `terms`.
    pub fn open_with(
        dir: &Path,
        offer: u64,
        terms: LeaseTerms,
    ) -> Result<ShardStore, ShardStoreError> {
        for sub in ["shards", "tmp", "quarantine", "trash"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| io(dir, e))?;
        }
        // Leftovers of puts interrupted by a crash: never acknowledged.
        if let Ok(rd) = fs::read_dir(dir.join("tmp")) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let now = now_secs();
        let mut index = Index::default();
        let shards = dir.join("shards");
        let mut files = Vec::new();
        for sub in fs::read_dir(&shards).map_err(|e| io(&shards, e))?.flatten() {
            if let Ok(rd) = fs::read_dir(sub.path()) {
                files.extend(rd.flatten().map(|f| (f, false)));
            }
        }
        let trash = dir.join("trash");
        files.extend(
            fs::read_dir(&trash)
                .map_err(|e| io(&trash, e))?
                .flatten()
                .map(|f| (f, true)),
        );
        for (f, trashed) in files {
            let name = f.file_name();
            let Some((id, owner)) = name.to_str().and_then(parse_name) else {
                continue;
            };
            let path = f.path();
            let size = f.metadata().map(|m| m.len()).map_err(|e| io(&path, e))?;
            let (header, expires) = read_header(&path).unwrap_or((0, 0));
            // A copy written before leases existed: a full lease from now.
            let expires = if expires == 0 {
                now + terms.lease.as_secs()
            } else {
                expires
            };
            let len = size.saturating_sub(header as u64) as u32;
            index.add(
                id,
                Copy {
                    owner,
                    len,
                    expires,
                    trashed,
                },
            );
        }
        Ok(ShardStore {
            dir: dir.to_path_buf(),
            offer: std::sync::atomic::AtomicU64::new(offer),
            per_owner: std::sync::atomic::AtomicU64::new(u64::MAX),
            terms: Mutex::new(terms),
            index: Mutex::new(index),
        })
    }

    fn path_of(&self, id: &ShardId, owner: &str, trashed: bool) -> PathBuf {
        let hex = id.to_hex();
        if trashed {
            self.dir.join("trash").join(format!("{hex}-{owner}"))
        } else {
            self.dir
                .join("shards")
                .join(&hex[..2])
                .join(format!("{hex}-{owner}"))
        }
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

    /// The lease and trash periods.
    pub fn terms(&self) -> LeaseTerms {
        *self.terms.lock()
    }

    /// Bytes held under lease (and being written).
    pub fn used(&self) -> u64 {
        self.index.lock().used
    }

    /// Bytes in the trash.
    pub fn trash_bytes(&self) -> u64 {
        self.index.lock().trash
    }

    /// Bytes held for `owner`.
    pub fn used_by(&self, owner: &[u8]) -> u64 {
        let tag = owner_tag(owner);
        self.index.lock().by_owner.get(&tag).copied().unwrap_or(0)
    }

    /// Number of shard copies held under lease.
    pub fn count(&self) -> usize {
        self.index
            .lock()
            .copies
            .values()
            .flatten()
            .filter(|c| !c.trashed)
            .count()
    }

    /// Stores `bytes` as shard `id` for `owner` (synced before returning `Stored`). A copy
    /// already held has its lease renewed.
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
        let expires = now_secs() + self.terms().lease.as_secs();
        {
            let mut ix = self.index.lock();
            if ix.copy_mut(id, &tag).is_some() {
                drop(ix);
                self.renew_one(&tag, id, expires)?;
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
            if !ix.writing.insert((*id, tag.clone())) {
                return Ok(PutOutcome::Refused(Refusal::Busy));
            }
            ix.used += len; // counted now: concurrent puts cannot overrun the offer
        }
        let written = self.write_copy(owner, &tag, id, bytes, expires);
        let mut ix = self.index.lock();
        ix.writing.remove(&(*id, tag.clone()));
        ix.used -= len;
        match written {
            Ok(()) => {
                ix.add(
                    *id,
                    Copy {
                        owner: tag,
                        len: len as u32,
                        expires,
                        trashed: false,
                    },
                );
                Ok(PutOutcome::Stored)
            }
            Err(e) => {
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
        expires: u64,
    ) -> Result<(), ShardStoreError> {
        let final_path = self.path_of(id, tag, false);
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp =
            self.dir
                .join("tmp")
                .join(format!("{}-{tag}-{}-{n}", id.to_hex(), std::process::id()));
        let result = (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            let mut header = Vec::with_capacity(FIXED_HEADER + owner.len() + RESERVED);
            header.extend_from_slice(MAGIC);
            header.push(1);
            header.push(owner.len() as u8);
            header.extend_from_slice(&[0, 0]);
            header.extend_from_slice(owner);
            let mut reserved = [0u8; RESERVED];
            reserved[..8].copy_from_slice(&expires.to_le_bytes());
            header.extend_from_slice(&reserved);
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

    /// The bytes of shard `id` (any owner's copy, also one in the trash), verified. A copy
    /// that fails verification is quarantined and not returned.
    pub fn get(&self, id: &ShardId) -> Result<Option<Vec<u8>>, ShardStoreError> {
        let copies: Vec<(String, bool)> = match self.index.lock().copies.get(id) {
            Some(c) => c.iter().map(|c| (c.owner.clone(), c.trashed)).collect(),
            None => return Ok(None),
        };
        for (owner, trashed) in copies {
            let path = self.path_of(id, &owner, trashed);
            let mut data = Vec::new();
            match File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Moved by a sweep or a renewal meanwhile, or deleted behind our back.
                    if !self.path_of(id, &owner, !trashed).exists() {
                        self.index.lock().remove(id, &owner);
                    }
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
            self.index.lock().remove(id, &owner);
        }
        Ok(None)
    }

    /// Which of `ids` are held for `owner` under lease.
    pub fn has(&self, owner: &[u8], ids: &[ShardId]) -> Vec<bool> {
        let tag = owner_tag(owner);
        let mut ix = self.index.lock();
        ids.iter()
            .map(|id| ix.copy_mut(id, &tag).is_some_and(|c| !c.trashed))
            .collect()
    }

    /// Renews `owner`'s leases on `ids` (a copy in the trash comes back); says which are
    /// held. The new expiry is written into each copy's header (not synced: a crash loses at
    /// most a renewal, and owners renew at a third of the lease).
    pub fn renew(&self, owner: &[u8], ids: &[ShardId]) -> Result<Vec<bool>, ShardStoreError> {
        self.renew_at(owner, ids, now_secs())
    }

    /// [`renew`](Self::renew) as if the clock said `now`.
    fn renew_at(
        &self,
        owner: &[u8],
        ids: &[ShardId],
        now: u64,
    ) -> Result<Vec<bool>, ShardStoreError> {
        let tag = owner_tag(owner);
        let expires = now + self.terms().lease.as_secs();
        ids.iter()
            .map(|id| self.renew_one(&tag, id, expires))
            .collect()
    }

    fn renew_one(&self, tag: &str, id: &ShardId, expires: u64) -> Result<bool, ShardStoreError> {
        let mut ix = self.index.lock();
        let Some(copy) = ix.copy_mut(id, tag) else {
            return Ok(false);
        };
        let mut copy = copy.clone();
        let from = self.path_of(id, tag, copy.trashed);
        if copy.trashed {
            let to = self.path_of(id, tag, false);
            fs::create_dir_all(to.parent().expect("shard paths have a parent"))
                .map_err(|e| io(&to, e))?;
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ix.remove(id, tag);
                    return Ok(false);
                }
                Err(e) => return Err(io(&from, e)),
            }
            ix.remove(id, tag);
            copy.trashed = false;
            copy.expires = expires;
            tracing::info!(target: "bitcloud::node", shard = %id.short(), "a renewed shard came back from the trash");
            write_expiry(&to, expires).map_err(|e| io(&to, e))?;
            ix.add(*id, copy);
            return Ok(true);
        }
        match write_expiry(&from, expires) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ix.remove(id, tag);
                return Ok(false);
            }
            Err(e) => return Err(io(&from, e)),
        }
        if let Some(c) = ix.copy_mut(id, tag) {
            c.expires = expires;
        }
        Ok(true)
    }

    /// Moves copies whose lease ran out by `now` to the trash, and deletes those whose trash
    /// period ended too.
    pub fn sweep(&self, now: u64) -> Result<Swept, ShardStoreError> {
        let trash = self.terms().trash.as_secs();
        let due: Vec<(ShardId, String)> = {
            let ix = self.index.lock();
            ix.copies
                .iter()
                .flat_map(|(id, cs)| {
                    cs.iter()
                        .filter(|c| c.expires <= now && (!c.trashed || c.expires + trash <= now))
                        .map(|c| (*id, c.owner.clone()))
                })
                .collect()
        };
        let mut swept = Swept::default();
        for (id, owner) in due {
            let mut ix = self.index.lock();
            // Checked again: a renewal may have come in since.
            let Some(copy) = ix.copy_mut(&id, &owner).map(|c| c.clone()) else {
                continue;
            };
            let path = self.path_of(&id, &owner, copy.trashed);
            if copy.trashed && copy.expires + trash <= now {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path, e)),
                }
                ix.remove(&id, &owner);
                swept.deleted += 1;
                swept.deleted_bytes += u64::from(copy.len);
            } else if !copy.trashed && copy.expires <= now {
                let to = self.path_of(&id, &owner, true);
                match fs::rename(&path, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        ix.remove(&id, &owner);
                        continue;
                    }
                    Err(e) => return Err(io(&path, e)),
                }
                ix.remove(&id, &owner);
                ix.add(
                    id,
                    Copy {
                        trashed: true,
                        ..copy
                    },
                );
                swept.trashed += 1;
            }
        }
        Ok(swept)
    }

    /// Removes `owner`'s copies of `ids` (also from the trash); returns how many there
    /// were. Only the owner that stored a copy can release it.
    pub fn release(&self, owner: &[u8], ids: &[ShardId]) -> Result<u32, ShardStoreError> {
        let tag = owner_tag(owner);
        let mut released = 0;
        for id in ids {
            let mut ix = self.index.lock();
            let Some(trashed) = ix.copy_mut(id, &tag).map(|c| c.trashed) else {
                continue;
            };
            let path = self.path_of(id, &tag, trashed);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, e)),
            }
            ix.remove(id, &tag);
            released += 1;
        }
        Ok(released)
    }
}

mod file;
#[cfg(test)]
mod tests;
