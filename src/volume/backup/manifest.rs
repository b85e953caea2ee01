//! What a published metadata backup consists of, byte by byte. Pure.
//!
//! - The *manifest* (sealed and placed in the pool like a chunk): which chunks, in order,
//!   make up the dump, and where their shards are. `BCM1` ‖ version `01` ‖ volume id (32) ‖
//!   generation `u64` ‖ created (seconds since the epoch) `u64` ‖ instance `u64` ‖ rows
//!   `u64` ‖ dump bytes `u64` ‖ chunk count `u32` ‖ that many [`ChunkRef`]s. All integers
//!   little-endian.
//! - The *root payload* (encrypted to the volume's recipient, then signed into a root
//!   record by the pool): `01` ‖ instance `u64` ‖ created `u64` ‖ generation `u64` ‖ the
//!   manifest's [`ChunkRef`] ‖ node key length `u16` ‖ node key (the owner's libp2p key, so
//!   a recovered machine is the owner of its shards: it renews and releases them).
//!
//! A [`ChunkRef`]: id (32) ‖ plaintext length `u32` ‖ sealed length `u32` ‖ placement
//! length `u32` ‖ placement (`meta::placement` v1).

use crate::ids::BlockId;
use crate::meta::codec::DecodeError;
use crate::meta::placement::Placement;

const MAGIC: &[u8; 4] = b"BCM1";
const VERSION: u8 = 1;
const PAYLOAD_VERSION: u8 = 1;

/// One sealed, placed piece of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: BlockId,
    pub plain_len: u32,
    pub sealed_len: u32,
    pub placement: Placement,
}

/// The list of a backup's chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub volume_id: [u8; 32],
    pub generation: u64,
    pub created: u64,
    pub instance: u64,
    pub rows: u64,
    pub bytes: u64,
    pub chunks: Vec<ChunkRef>,
}

/// What a root record carries, before encryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPayload {
    pub instance: u64,
    pub created: u64,
    pub generation: u64,
    pub manifest: ChunkRef,
    pub node_key: Vec<u8>,
}

fn bad(what: &'static str) -> DecodeError {
    DecodeError { what, version: 0 }
}

/// A little-endian reader over a byte slice.
struct Take<'a>(&'a [u8], &'static str);

impl<'a> Take<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(bad(self.1));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8")))
    }
    fn chunk(&mut self) -> Result<ChunkRef, DecodeError> {
        let id = BlockId(self.bytes(32)?.try_into().expect("32"));
        let plain_len = self.u32()?;
        let sealed_len = self.u32()?;
        let n = self.u32()? as usize;
        let placement = Placement::decode(self.bytes(n)?)?;
        Ok(ChunkRef {
            id,
            plain_len,
            sealed_len,
            placement,
        })
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad(self.1))
        }
    }
}

fn put_chunk(out: &mut Vec<u8>, c: &ChunkRef) {
    out.extend_from_slice(&c.id.0);
    out.extend_from_slice(&c.plain_len.to_le_bytes());
    out.extend_from_slice(&c.sealed_len.to_le_bytes());
    let p = c.placement.encode();
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&p);
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80 + self.chunks.len() * 620);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.volume_id);
        for v in [
            self.generation,
            self.created,
            self.instance,
            self.rows,
            self.bytes,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            put_chunk(&mut out, c);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Manifest, DecodeError> {
        let mut t = Take(b, "metadata backup manifest");
        if t.bytes(4)? != MAGIC {
            return Err(bad("metadata backup manifest magic"));
        }
        let v = t.bytes(1)?[0];
        if v != VERSION {
            return Err(DecodeError {
                what: "metadata backup manifest",
                version: v,
            });
        }
        let volume_id = t.bytes(32)?.try_into().expect("32");
        let (generation, created, instance, rows, bytes) =
            (t.u64()?, t.u64()?, t.u64()?, t.u64()?, t.u64()?);
        let n = t.u32()? as usize;
        // Each entry takes at least 76 bytes: a count beyond that is damage, not a reason
        // to reserve memory.
        if n > t.0.len() / 76 + 1 {
            return Err(bad("metadata backup manifest count"));
        }
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(t.chunk()?);
        }
        t.end()?;
        Ok(Manifest {
            volume_id,
            generation,
            created,
            instance,
            rows,
            bytes,
            chunks,
        })
    }
}

impl RootPayload {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PAYLOAD_VERSION];
        for v in [self.instance, self.created, self.generation] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_chunk(&mut out, &self.manifest);
        out.extend_from_slice(&(self.node_key.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.node_key);
        out
    }

    pub fn decode(b: &[u8]) -> Result<RootPayload, DecodeError> {
        let mut t = Take(b, "volume root payload");
        let v = t.bytes(1)?[0];
        if v != PAYLOAD_VERSION {
            return Err(DecodeError {
                what: "volume root payload",
                version: v,
            });
        }
        let (instance, created, generation) = (t.u64()?, t.u64()?, t.u64()?);
        let manifest = t.chunk()?;
        let n = t.u16()? as usize;
        let node_key = t.bytes(n)?.to_vec();
        t.end()?;
        Ok(RootPayload {
            instance,
            created,
            generation,
            manifest,
            node_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;
    use crate::meta::placement::ShardPlace;

    fn chunk(i: u8) -> ChunkRef {
        ChunkRef {
            id: BlockId([i; 32]),
            plain_len: 1000 + u32::from(i),
            sealed_len: 1200,
            placement: Placement {
                data: 2,
                parity: 2,
                shard_len: 600,
                shards: (0..4)
                    .map(|j| ShardPlace {
                        id: ShardId([i ^ j; 32]),
                        holder: (j != 3).then(|| vec![j; 38]),
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn manifests_and_payloads_round_trip_and_reject_damage() {
        let m = Manifest {
            volume_id: [9; 32],
            generation: 3,
            created: 1_700_000_000,
            instance: 77,
            rows: 12345,
            bytes: 999_999,
            chunks: (0..5).map(chunk).collect(),
        };
        let e = m.encode();
        assert_eq!(Manifest::decode(&e).unwrap(), m);
        for cut in 0..e.len() {
            assert!(Manifest::decode(&e[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = e.clone();
        huge[77..81].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Manifest::decode(&huge).is_err());
        let p = RootPayload {
            instance: 77,
            created: 5,
            generation: 3,
            manifest: chunk(200),
            node_key: vec![8; 68],
        };
        let e = p.encode();
        assert_eq!(RootPayload::decode(&e).unwrap(), p);
        for cut in 0..e.len() {
            assert!(RootPayload::decode(&e[..cut]).is_err(), "cut at {cut}");
        }
    }
}
