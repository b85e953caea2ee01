//! Where a block's shards are in the pool, and the two queues the pool drains.
//!
//! `blocks-2` rows (see `keys`):
//! - `03 ‖ id` → [`Placement`]: the erasure scheme, the shard length, and for each shard its
//!   id and the peer holding it (opaque bytes: a libp2p peer id; this layer never parses it).
//! - `04 ‖ id` → when it was queued (`u64` LE, seconds since the epoch): the block is in
//!   the *upload queue*. Written in the same transaction
//!   that first records the block, so a committed block is never forgotten by the uploader
//!   (after a crash too); removed once every shard is placed, or when the block is collected.
//! - `05 ‖ id` → shards to release on their holders (the *release queue*): a collected
//!   block's shards, or the surplus copies a repair replaced (on peers that went silent).
//!   Version 1 rows are a [`Placement`]; version 2 a plain list ([`encode_release`]).

use super::codec::DecodeError;
use super::keys;
use super::tables::*;
use super::{MetaError, ReadTx, Result, WriteTx};
use crate::ids::{BlockId, ShardId};

const VERSION: u8 = 1;

/// One shard of a placed block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlace {
    pub id: ShardId,
    /// The peer that stored it (its peer id bytes), if placed.
    pub holder: Option<Vec<u8>>,
}

/// A block's shards and holders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub data: u8,
    pub parity: u8,
    pub shard_len: u32,
    /// `data + parity` entries, data shards first.
    pub shards: Vec<ShardPlace>,
}

impl Placement {
    /// Shards placed on some peer.
    pub fn placed(&self) -> usize {
        self.shards.iter().filter(|s| s.holder.is_some()).count()
    }

    /// Every shard is placed (on distinct peers: the uploader never doubles up).
    pub fn is_full(&self) -> bool {
        self.placed() == self.shards.len()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.shards.len() * 72);
        v.extend_from_slice(&[VERSION, self.data, self.parity]);
        v.extend_from_slice(&self.shard_len.to_le_bytes());
        for s in &self.shards {
            v.extend_from_slice(&s.id.0);
            match &s.holder {
                Some(h) => {
                    v.push(h.len() as u8);
                    v.extend_from_slice(h);
                }
                None => v.push(0),
            }
        }
        v
    }

    pub fn decode(b: &[u8]) -> std::result::Result<Placement, DecodeError> {
        let bad = |version| DecodeError {
            what: "placement",
            version,
        };
        let (&[v, data, parity], rest) = b.split_first_chunk::<3>().ok_or(bad(0))?;
        if v != VERSION {
            return Err(bad(v));
        }
        let (len, mut rest) = rest.split_first_chunk::<4>().ok_or(bad(v))?;
        let n = data as usize + parity as usize;
        if data == 0 || n == 0 {
            return Err(bad(v));
        }
        let mut shards = Vec::with_capacity(n);
        for _ in 0..n {
            let (id, r) = rest.split_first_chunk::<32>().ok_or(bad(v))?;
            let (&hl, r) = r.split_first().ok_or(bad(v))?;
            let hl = hl as usize;
            if r.len() < hl {
                return Err(bad(v));
            }
            shards.push(ShardPlace {
                id: ShardId(*id),
                holder: (hl > 0).then(|| r[..hl].to_vec()),
            });
            rest = &r[hl..];
        }
        if !rest.is_empty() {
            return Err(bad(v));
        }
        Ok(Placement {
            data,
            parity,
            shard_len: u32::from_le_bytes(*len),
            shards,
        })
    }
}

const RELEASE_LIST: u8 = 2;
const RELEASE_STAMPED: u8 = 3;

/// A release row: `02 ‖ (shard id (32) ‖ holder length u8 ‖ holder)*`, or with a stamp
/// (the backup generation it was queued in, see `backup`) `03 ‖ stamp u64 LE ‖ the same`.
pub fn encode_release(stamp: u64, shards: &[ShardPlace]) -> Vec<u8> {
    let mut v = if stamp == 0 {
        vec![RELEASE_LIST]
    } else {
        let mut v = vec![RELEASE_STAMPED];
        v.extend_from_slice(&stamp.to_le_bytes());
        v
    };
    for s in shards {
        let Some(h) = &s.holder else { continue };
        v.extend_from_slice(&s.id.0);
        v.push(h.len() as u8);
        v.extend_from_slice(h);
    }
    v
}

/// The shards of a release row (any version), with their holders.
pub fn decode_release(b: &[u8]) -> std::result::Result<Vec<ShardPlace>, DecodeError> {
    Ok(decode_release_stamped(b)?.1)
}

/// A release row's stamp (0: none) and shards.
pub fn decode_release_stamped(
    b: &[u8],
) -> std::result::Result<(u64, Vec<ShardPlace>), DecodeError> {
    match b.first() {
        Some(&VERSION) => Ok((
            0,
            Placement::decode(b)?
                .shards
                .into_iter()
                .filter(|s| s.holder.is_some())
                .collect(),
        )),
        Some(&v @ (RELEASE_LIST | RELEASE_STAMPED)) => {
            let bad = || DecodeError {
                what: "release list",
                version: v,
            };
            let (stamp, mut rest) = if v == RELEASE_STAMPED {
                let (s, r) = b[1..].split_first_chunk::<8>().ok_or_else(bad)?;
                (u64::from_le_bytes(*s), r)
            } else {
                (0, &b[1..])
            };
            let mut out = Vec::new();
            while !rest.is_empty() {
                let (id, r) = rest.split_first_chunk::<32>().ok_or_else(bad)?;
                let (&hl, r) = r.split_first().ok_or_else(bad)?;
                let hl = hl as usize;
                if hl == 0 || r.len() < hl {
                    return Err(bad());
                }
                out.push(ShardPlace {
                    id: ShardId(*id),
                    holder: Some(r[..hl].to_vec()),
                });
                rest = &r[hl..];
            }
            Ok((stamp, out))
        }
        v => Err(DecodeError {
            what: "release list",
            version: v.copied().unwrap_or(0),
        }),
    }
}

/// A page of the release queue: rows to release now, and where the next page starts
/// (`None`: the end was reached). Rows a published metadata backup may still need are
/// left out of `rows` but not of the walk.
#[derive(Debug, Default)]
pub struct ReleasePage {
    pub rows: Vec<(BlockId, Vec<ShardPlace>)>,
    pub next: Option<BlockId>,
}

/// Blocks by how well the pool holds them (see `volume::remote`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Redundancy {
    /// Every shard placed on a live holder.
    pub full: u64,
    /// At least `data` shards on live holders, not all.
    pub degraded: u64,
    /// Fewer than `data` shards on live holders, but the block is on this machine.
    pub local_only: u64,
    /// Fewer than `data` shards on live holders and not on this machine: unreadable now.
    pub lost: u64,
}

fn range(
    t: &super::overlay::Table<'_>,
    kind: u8,
    after: Option<&BlockId>,
    limit: usize,
) -> Result<Vec<(BlockId, Vec<u8>)>> {
    let lo = match after {
        Some(id) => {
            let mut k = keys::block(kind, id).to_vec();
            k.push(0);
            k
        }
        None => vec![kind],
    };
    let hi = [kind + 1];
    let mut out = Vec::new();
    for row in db!(t.range::<&[u8]>(&lo[..]..&hi[..])) {
        if out.len() >= limit {
            break;
        }
        let (k, v) = db!(row);
        let id = keys::block_id_in(k.value()).ok_or_else(damaged)?;
        out.push((id, v.value().to_vec()));
    }
    Ok(out)
}

/// The value of an upload-queue row written now.
pub(super) fn queued_now() -> [u8; 8] {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_le_bytes()
}

fn damaged() -> MetaError {
    MetaError::Decode(DecodeError {
        what: "placement key",
        version: 0,
    })
}

macro_rules! impl_placement_reads {
    ($t:ty) => {
        impl $t {
            /// Where block `id`'s shards are, if any were placed.
            pub fn placement(&self, id: &BlockId) -> Result<Option<Placement>> {
                let t = db!(self.txn.open_table(BLOCKS));
                let g = db!(t.get(&keys::block(keys::PLACEMENT, id)[..]));
                Ok(match g {
                    Some(v) => Some(Placement::decode(v.value())?),
                    None => None,
                })
            }

            /// Whether `id` waits in the upload queue.
            pub fn is_queued(&self, id: &BlockId) -> Result<bool> {
                let t = db!(self.txn.open_table(BLOCKS));
                Ok(db!(t.get(&keys::block(keys::UPLOAD, id)[..])).is_some())
            }

            /// Up to `limit` blocks of the upload queue, in id order after `after`.
            pub fn upload_queue(
                &self,
                after: Option<&BlockId>,
                limit: usize,
            ) -> Result<Vec<BlockId>> {
                let t = db!(self.txn.open_table(BLOCKS));
                Ok(range(&t, keys::UPLOAD, after, limit)?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect())
            }

            /// Every block with shards to release, and those shards (held ones too). A
            /// shard a block's current placement names on the same holder is left out (a
            /// repair may have put it back there): releasing it would delete a live copy.
            pub fn release_queue(&self, limit: usize) -> Result<Vec<(BlockId, Vec<ShardPlace>)>> {
                Ok(self.release_rows(None, limit, false)?.rows)
            }

            /// The shards of release rows a published metadata backup may still need: kept
            /// under lease like placed ones until they may go.
            pub fn held_release_shards(&self) -> Result<Vec<ShardPlace>> {
                let Some(floor) = self.sb_value(super::backup::SB_RELEASE_FLOOR)? else {
                    return Ok(Vec::new());
                };
                let t = db!(self.txn.open_table(BLOCKS));
                let mut out = Vec::new();
                for (_, v) in range(&t, keys::RELEASE, None, usize::MAX)? {
                    let (stamp, shards) = decode_release_stamped(&v)?;
                    if stamp >= floor {
                        out.extend(shards);
                    }
                }
                Ok(out)
            }

            /// Release rows a published metadata backup may still need (see `backup`).
            pub fn release_held(&self) -> Result<u64> {
                let floor = self.sb_value(super::backup::SB_RELEASE_FLOOR)?;
                let t = db!(self.txn.open_table(BLOCKS));
                let mut n = 0;
                for (_, v) in range(&t, keys::RELEASE, None, usize::MAX)? {
                    let (stamp, _) = decode_release_stamped(&v)?;
                    n += u64::from(floor.is_some_and(|f| stamp >= f));
                }
                Ok(n)
            }

            /// A page of the release queue from the block after `after` on, `limit` rows
            /// looked at, without the rows still held for the metadata backup.
            pub fn release_queue_after(
                &self,
                after: Option<&BlockId>,
                limit: usize,
            ) -> Result<ReleasePage> {
                self.release_rows(after, limit, true)
            }

            fn release_rows(
                &self,
                after: Option<&BlockId>,
                limit: usize,
                skip_held: bool,
            ) -> Result<ReleasePage> {
                let floor = if skip_held {
                    self.sb_value(super::backup::SB_RELEASE_FLOOR)?
                } else {
                    None
                };
                let t = db!(self.txn.open_table(BLOCKS));
                let mut page = ReleasePage::default();
                let rows = range(&t, keys::RELEASE, after, limit)?;
                if rows.len() == limit {
                    page.next = rows.last().map(|(id, _)| *id);
                }
                for (id, v) in rows {
                    let (stamp, mut shards) = decode_release_stamped(&v)?;
                    if floor.is_some_and(|f| stamp >= f) {
                        continue;
                    }
                    if let Some(p) = db!(t.get(&keys::block(keys::PLACEMENT, &id)[..])) {
                        let p = Placement::decode(p.value())?;
                        shards.retain(|s| !p.shards.contains(s));
                    }
                    page.rows.push((id, shards));
                }
                Ok(page)
            }

            /// Up to `limit` placements, in block id order after `after`.
            pub fn placements(
                &self,
                after: Option<&BlockId>,
                limit: usize,
            ) -> Result<Vec<(BlockId, Placement)>> {
                let t = db!(self.txn.open_table(BLOCKS));
                range(&t, keys::PLACEMENT, after, limit)?
                    .into_iter()
                    .map(|(id, v)| Ok((id, Placement::decode(&v)?)))
                    .collect()
            }

            /// How many blocks have a placement.
            pub fn placement_count(&self) -> Result<u64> {
                let t = db!(self.txn.open_table(BLOCKS));
                Ok(range(&t, keys::PLACEMENT, None, usize::MAX)?.len() as u64)
            }

            /// Blocks in the upload queue, the sealed bytes they hold, and when the oldest
            /// was queued (seconds since the epoch).
            pub fn upload_totals(&self) -> Result<(u64, u64, Option<u64>)> {
                let t = db!(self.txn.open_table(BLOCKS));
                let (mut n, mut bytes, mut oldest) = (0u64, 0u64, None::<u64>);
                for (id, v) in range(&t, keys::UPLOAD, None, usize::MAX)? {
                    n += 1;
                    if let Ok(at) = <[u8; 8]>::try_from(&v[..]) {
                        let at = u64::from_le_bytes(at);
                        oldest = Some(oldest.map_or(at, |o| o.min(at)));
                    }
                    if let Some(v) = db!(t.get(&keys::block(keys::RECORD, &id)[..])) {
                        bytes += super::codec::BlockRecord::decode(v.value())?.sealed_len as u64;
                    }
                }
                Ok((n, bytes, oldest))
            }

            /// How many shards of ours each holder has (holder bytes → count).
            pub fn shards_by_holder(&self) -> Result<std::collections::HashMap<Vec<u8>, u64>> {
                let t = db!(self.txn.open_table(BLOCKS));
                let mut out = std::collections::HashMap::new();
                for (_, v) in range(&t, keys::PLACEMENT, None, usize::MAX)? {
                    for s in Placement::decode(&v)?.shards {
                        if let Some(h) = s.holder {
                            *out.entry(h).or_default() += 1;
                        }
                    }
                }
                Ok(out)
            }

            /// Every block's redundancy; `local(id)` says whether its sealed bytes are on
            /// this machine (inline blocks always are), `live(shard)` whether a placed shard's
            /// holder still counts.
            pub fn redundancy(
                &self,
                mut local: impl FnMut(&BlockId) -> bool,
                mut live: impl FnMut(&ShardPlace) -> bool,
            ) -> Result<Redundancy> {
                let t = db!(self.txn.open_table(BLOCKS));
                let mut r = Redundancy::default();
                let lo = [keys::RECORD];
                let hi = [keys::RECORD + 1];
                for row in db!(t.range::<&[u8]>(&lo[..]..&hi[..])) {
                    let (k, _) = db!(row);
                    let id = keys::block_id_in(k.value()).ok_or_else(damaged)?;
                    let p = match db!(t.get(&keys::block(keys::PLACEMENT, &id)[..])) {
                        Some(v) => Some(Placement::decode(v.value())?),
                        None => None,
                    };
                    let placed = p.as_ref().map_or(0, |p| {
                        p.shards
                            .iter()
                            .filter(|s| s.holder.is_some() && live(s))
                            .count()
                    });
                    let data = p.as_ref().map_or(usize::MAX, |p| p.data as usize);
                    if p.as_ref().is_some_and(|p| placed == p.shards.len()) {
                        r.full += 1;
                    } else if placed >= data {
                        r.degraded += 1;
                    } else if db!(t.get(&keys::block(keys::INLINE, &id)[..])).is_some()
                        || local(&id)
                    {
                        r.local_only += 1;
                    } else {
                        r.lost += 1;
                    }
                }
                Ok(r)
            }
        }
    };
}

impl_placement_reads!(ReadTx);
impl_placement_reads!(WriteTx);

impl WriteTx {
    /// Records where `id`'s shards are. `done`: every shard is placed, the block leaves the
    /// upload queue. If the block was freed meanwhile, its shards go to the release queue
    /// instead. Returns whether the block is still live.
    pub fn set_placement(&mut self, id: &BlockId, p: &Placement, done: bool) -> Result<bool> {
        let t = db!(self.txn.open_table(BLOCKS));
        let live = db!(t.get(&keys::block(keys::RECORD, id)[..])).is_some()
            || db!(t.get(&keys::block(keys::GC, id)[..])).is_some();
        if live {
            db!(t.insert(&keys::block(keys::PLACEMENT, id)[..], &p.encode()[..]));
            if done {
                db!(t.remove(&keys::block(keys::UPLOAD, id)[..]));
            }
        } else {
            db!(t.remove(&keys::block(keys::UPLOAD, id)[..]));
            let stamp = self.release_stamp()?;
            self.add_release(id, &p.shards, stamp)?;
        }
        Ok(live)
    }

    /// Records a repaired placement of a live block, and the copies it replaced for
    /// release. If the block was freed meanwhile, every shard goes to the release queue.
    /// Returns whether the block is still live.
    pub fn set_repair(
        &mut self,
        id: &BlockId,
        p: &Placement,
        surplus: &[ShardPlace],
    ) -> Result<bool> {
        let live = {
            let t = db!(self.txn.open_table(BLOCKS));
            let live = db!(t.get(&keys::block(keys::PLACEMENT, id)[..])).is_some()
                && db!(t.get(&keys::block(keys::RECORD, id)[..])).is_some();
            if live {
                db!(t.insert(&keys::block(keys::PLACEMENT, id)[..], &p.encode()[..]));
            }
            live
        };
        // Copies a repair replaced: a published backup still names their holders until the
        // next one, so they are held like freed blocks' shards.
        let stamp = self.release_stamp()?;
        self.add_release(id, surplus, stamp)?;
        if !live {
            self.add_release(id, &p.shards, stamp)?;
        }
        Ok(live)
    }

    /// Adds shards (those with a holder) to `id`'s release row, keeping what it had. `stamp`:
    /// the backup generation the shards were freed in, or 0 for copies no backup names
    /// (the row keeps the highest stamp of what it holds).
    pub fn add_release(&mut self, id: &BlockId, shards: &[ShardPlace], stamp: u64) -> Result<()> {
        if !shards.iter().any(|s| s.holder.is_some()) {
            return Ok(());
        }
        let t = db!(self.txn.open_table(BLOCKS));
        let key = keys::block(keys::RELEASE, id);
        let (old_stamp, mut all) = match db!(t.get(&key[..])) {
            Some(v) => decode_release_stamped(v.value())?,
            None => (0, Vec::new()),
        };
        let stamp = stamp.max(old_stamp);
        for s in shards.iter().filter(|s| s.holder.is_some()) {
            if !all.contains(s) {
                all.push(s.clone());
            }
        }
        db!(t.insert(&key[..], &encode_release(stamp, &all)[..]));
        Ok(())
    }

    /// Puts `id` in the upload queue (a block recorded before the pool existed, or whose
    /// shards must be placed again).
    pub fn enqueue_upload(&mut self, id: &BlockId) -> Result<()> {
        db!(db!(self.txn.open_table(BLOCKS))
            .insert(&keys::block(keys::UPLOAD, id)[..], &queued_now()[..]));
        Ok(())
    }

    /// Forgets a released block (its shards were released, or are beyond reach for good).
    pub fn released(&mut self, id: &BlockId) -> Result<()> {
        db!(db!(self.txn.open_table(BLOCKS)).remove(&keys::block(keys::RELEASE, id)[..]));
        Ok(())
    }

    /// A collected block leaves the upload queue and its shards go to the release queue.
    pub(super) fn retire_placement(&mut self, id: &BlockId) -> Result<()> {
        let t = db!(self.txn.open_table(BLOCKS));
        db!(t.remove(&keys::block(keys::UPLOAD, id)[..]));
        let p = db!(t.remove(&keys::block(keys::PLACEMENT, id)[..])).map(|g| g.value().to_vec());
        if let Some(p) = p {
            let stamp = self.release_stamp()?;
            self.add_release(id, &Placement::decode(&p)?.shards, stamp)?;
        }
        Ok(())
    }

    /// Puts every recorded block that has no complete placement in the upload queue
    /// (volumes made before the pool): once, flagged in the superblock.
    pub fn enqueue_unplaced_once(&mut self) -> Result<u64> {
        {
            let sb = db!(self.txn.open_table(SUPERBLOCK));
            if db!(sb.get("upload_queue")).is_some() {
                return Ok(0);
            }
        }
        let t = db!(self.txn.open_table(BLOCKS));
        let mut ids = Vec::new();
        {
            let lo = [keys::RECORD];
            let hi = [keys::RECORD + 1];
            for row in db!(t.range::<&[u8]>(&lo[..]..&hi[..])) {
                let (k, _) = db!(row);
                ids.push(keys::block_id_in(k.value()).ok_or_else(damaged)?);
            }
        }
        let mut n = 0;
        for id in ids {
            let full = match db!(t.get(&keys::block(keys::PLACEMENT, &id)[..])) {
                Some(v) => Placement::decode(v.value())?.is_full(),
                None => false,
            };
            if !full {
                db!(t.insert(&keys::block(keys::UPLOAD, &id)[..], &queued_now()[..]));
                n += 1;
            }
        }
        db!(db!(self.txn.open_table(SUPERBLOCK)).insert("upload_queue", 1));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_round_trips_and_rejects_junk() {
        let p = Placement {
            data: 3,
            parity: 2,
            shard_len: 1000,
            shards: (0..5)
                .map(|i| ShardPlace {
                    id: ShardId([i; 32]),
                    holder: (i % 2 == 0).then(|| vec![i; 38]),
                })
                .collect(),
        };
        let e = p.encode();
        assert_eq!(Placement::decode(&e).unwrap(), p);
        assert_eq!(p.placed(), 3);
        assert!(!p.is_full());
        for cut in 0..e.len() {
            assert!(Placement::decode(&e[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = e.clone();
        longer.push(0);
        assert!(Placement::decode(&longer).is_err());
    }

    #[test]
    fn release_lists_round_trip_and_read_placements() {
        let shards: Vec<ShardPlace> = (1..4)
            .map(|i| ShardPlace {
                id: ShardId([i; 32]),
                holder: Some(vec![i; 38]),
            })
            .collect();
        let e = encode_release(0, &shards);
        assert_eq!(decode_release(&e).unwrap(), shards);
        let stamped = encode_release(7, &shards);
        assert_eq!(
            decode_release_stamped(&stamped).unwrap(),
            (7, shards.clone())
        );
        assert!(decode_release(&stamped[..5]).is_err());
        for cut in 1..e.len() {
            if !(e.len() - cut).is_multiple_of(71) {
                assert!(decode_release(&e[..cut]).is_err(), "cut at {cut}");
            }
        }
        let p = Placement {
            data: 2,
            parity: 1,
            shard_len: 10,
            shards: vec![
                shards[0].clone(),
                ShardPlace {
                    id: ShardId([9; 32]),
                    holder: None,
                },
                shards[2].clone(),
            ],
        };
        assert_eq!(
            decode_release(&p.encode()).unwrap(),
            vec![shards[0].clone(), shards[2].clone()]
        );
        assert!(decode_release(&[7]).is_err());
    }
}
