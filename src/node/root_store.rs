//! A node's store of volume root records (see [`root`](super::root)): for each locator, the
//! valid record with the highest sequence any peer gave it.
//!
//! One file per locator, `roots/<locator hex>` in the shard store's directory: `BCRS` ‖
//! version `01` ‖ expiry `u64` LE (seconds on this node's clock) ‖ owner length `u8` ‖ owner
//! (the peer id that last stored it) ‖ the record. Written to a temporary name, synced and
//! renamed, so a crash leaves the old record or the new one. Records are checked when put
//! and again when read back at start; a file that does not verify is removed.
//!
//! Bounds: at most [`MAX_ROOTS`] records, at most [`MAX_PER_OWNER`] stored by one peer
//! (a mount has one volume), a new one only from a peer this node stores shards for (the
//! owner gives its record to every storage peer; those holding its manifest always take
//! it); each lives for the node's lease plus trash period after the
//! last put, which the owner repeats while it runs (a few KiB now and then), like the
//! shards' leases.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;

use super::protocol::Refusal;
use super::root::RootRecord;
use super::shard_store::ShardStoreError;

/// Most records a node keeps.
pub const MAX_ROOTS: usize = 4096;
/// Most records one peer may have stored here.
pub const MAX_PER_OWNER: usize = 8;
const MAGIC: &[u8; 4] = b"BCRS";
const VERSION: u8 = 1;

struct Held {
    seq: u64,
    record: Vec<u8>,
    owner: Vec<u8>,
    expires: u64,
}

/// What a put did.
#[derive(Debug, PartialEq, Eq)]
pub enum RootPut {
    Stored,
    Refused(Refusal),
}

/// The root records a node keeps for the pool.
pub struct RootStore {
    dir: PathBuf,
    keep: Duration,
    held: Mutex<HashMap<[u8; 32], Held>>,
}

fn io(path: &Path, source: std::io::Error) -> ShardStoreError {
    ShardStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl RootStore {
    /// Opens (or creates) `dir`, keeping each record `keep` after its last put.
    pub fn open(dir: &Path, keep: Duration) -> Result<RootStore, ShardStoreError> {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut held = HashMap::new();
        for entry in fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            match fs::read(&path).ok().and_then(|b| parse_file(&b)) {
                Some((locator, h)) if hex(&locator) == name => {
                    held.insert(locator, h);
                }
                _ => {
                    tracing::warn!(target: "bitcloud::node", path = %path.display(), "removing a root record file that does not verify");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(RootStore {
            dir: dir.to_path_buf(),
            keep,
            held: Mutex::new(held),
        })
    }

    /// Keeps `bytes` for `owner` if it is a valid record newer than the one held (the same
    /// record again renews it). A record for a locator not held yet is taken only if
    /// `may_add` (the node holds shards for `owner`: peer ids cost nothing, stored shards
    /// do, so a crowd of made-up peers cannot fill the store).
    pub fn put(
        &self,
        owner: &[u8],
        bytes: &[u8],
        now: u64,
        may_add: bool,
    ) -> Result<RootPut, ShardStoreError> {
        let Ok(record) = RootRecord::decode_verified(bytes) else {
            return Ok(RootPut::Refused(Refusal::BadRecord));
        };
        let mut held = self.held.lock();
        match held.get(&record.locator) {
            Some(h) if h.seq > record.seq => return Ok(RootPut::Refused(Refusal::Stale)),
            Some(h) if h.seq == record.seq && h.record != bytes => {
                return Ok(RootPut::Refused(Refusal::Stale));
            }
            Some(_) => {}
            None => {
                let mine = held.values().filter(|h| h.owner == owner).count();
                if !may_add || held.len() >= MAX_ROOTS || mine >= MAX_PER_OWNER {
                    return Ok(RootPut::Refused(Refusal::OfferFull));
                }
            }
        }
        let h = Held {
            seq: record.seq,
            record: bytes.to_vec(),
            owner: owner.to_vec(),
            expires: now.saturating_add(self.keep.as_secs()),
        };
        self.write(&record.locator, &h)?;
        held.insert(record.locator, h);
        Ok(RootPut::Stored)
    }

    /// The record held for `locator`.
    pub fn get(&self, locator: &[u8; 32]) -> Option<Vec<u8>> {
        self.held.lock().get(locator).map(|h| h.record.clone())
    }

    /// How many records are held.
    pub fn count(&self) -> usize {
        self.held.lock().len()
    }

    /// Deletes records not renewed within their keep period. Returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let mut held = self.held.lock();
        let expired: Vec<[u8; 32]> = held
            .iter()
            .filter(|(_, h)| h.expires <= now)
            .map(|(l, _)| *l)
            .collect();
        for l in &expired {
            let _ = fs::remove_file(self.dir.join(hex(l)));
            held.remove(l);
        }
        expired.len()
    }

    fn write(&self, locator: &[u8; 32], h: &Held) -> Result<(), ShardStoreError> {
        let path = self.dir.join(hex(locator));
        let tmp = self.dir.join(format!(".tmp-{}", hex(locator)));
        let mut body = Vec::with_capacity(14 + h.owner.len() + h.record.len());
        body.extend_from_slice(MAGIC);
        body.push(VERSION);
        body.extend_from_slice(&h.expires.to_le_bytes());
        body.push(h.owner.len() as u8);
        body.extend_from_slice(&h.owner);
        body.extend_from_slice(&h.record);
        let mut f = fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(&body).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir, e))
    }
}

fn parse_file(b: &[u8]) -> Option<([u8; 32], Held)> {
    if b.len() < 14 || &b[..4] != MAGIC || b[4] != VERSION {
        return None;
    }
    let expires = u64::from_le_bytes(b[5..13].try_into().ok()?);
    let owner_len = b[13] as usize;
    let owner = b.get(14..14 + owner_len)?.to_vec();
    let record = b.get(14 + owner_len..)?.to_vec();
    let r = RootRecord::decode_verified(&record).ok()?;
    Some((
        r.locator,
        Held {
            seq: r.seq,
            record,
            owner,
            expires,
        },
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::root::{RootRecord, keypair};
    use super::*;

    fn record(seed: u8, seq: u64, payload: &[u8]) -> Vec<u8> {
        RootRecord::sign(&keypair(&[seed; 32]), seq, payload.to_vec())
            .unwrap()
            .encode()
    }

    #[test]
    fn keeps_the_highest_valid_sequence_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Duration::from_secs(100);
        let store = RootStore::open(dir.path(), keep).unwrap();
        let locator = keypair(&[1; 32]).public().to_bytes();
        assert_eq!(
            store.put(b"a", &record(1, 5, b"five"), 0, true).unwrap(),
            RootPut::Stored
        );
        assert_eq!(
            store.put(b"a", &record(1, 4, b"four"), 0, true).unwrap(),
            RootPut::Refused(Refusal::Stale),
            "a lower sequence is refused"
        );
        assert_eq!(
            store
                .put(b"b", &record(1, 5, b"other five"), 0, true)
                .unwrap(),
            RootPut::Refused(Refusal::Stale),
            "a second record with the same sequence is refused"
        );
        assert_eq!(
            store.put(b"a", &record(1, 5, b"five"), 10, true).unwrap(),
            RootPut::Stored
        );
        let mut forged = record(2, 9, b"forged");
        forged[4..36].copy_from_slice(&locator);
        assert_eq!(
            store.put(b"b", &forged, 0, true).unwrap(),
            RootPut::Refused(Refusal::BadRecord)
        );
        assert_eq!(
            store.put(b"a", &record(1, 6, b"six"), 20, true).unwrap(),
            RootPut::Stored
        );
        drop(store);
        let store = RootStore::open(dir.path(), keep).unwrap();
        let got = RootRecord::decode_verified(&store.get(&locator).unwrap()).unwrap();
        assert_eq!((got.seq, got.payload.as_slice()), (6, &b"six"[..]));
        assert_eq!(store.sweep(119), 0);
        assert_eq!(store.sweep(120), 1, "kept for `keep` after the last put");
        assert!(store.get(&locator).is_none());
        assert!(
            RootStore::open(dir.path(), keep)
                .unwrap()
                .get(&locator)
                .is_none(),
            "swept from disk too"
        );
    }

    #[test]
    fn one_peer_cannot_fill_the_store_and_damaged_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = RootStore::open(dir.path(), Duration::from_secs(100)).unwrap();
        for seed in 0..MAX_PER_OWNER as u8 {
            assert_eq!(
                store.put(b"a", &record(seed, 1, b"x"), 0, true).unwrap(),
                RootPut::Stored
            );
        }
        assert_eq!(
            store.put(b"a", &record(200, 1, b"x"), 0, true).unwrap(),
            RootPut::Refused(Refusal::OfferFull)
        );
        assert_eq!(
            store.put(b"b", &record(200, 1, b"x"), 0, true).unwrap(),
            RootPut::Stored
        );
        let victim = dir.path().join(hex(&keypair(&[0; 32]).public().to_bytes()));
        let mut b = fs::read(&victim).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&victim, b).unwrap();
        drop(store);
        let store = RootStore::open(dir.path(), Duration::from_secs(100)).unwrap();
        assert_eq!(store.count(), MAX_PER_OWNER);
        assert!(!victim.exists());
    }
}
