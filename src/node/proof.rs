//! Proofs of storage: a holder proves it still has chosen 1 KiB chunks of a shard, and the
//! owner checks the proof against the shard id alone (the shard id is the BLAKE3 hash of the
//! shard, and BLAKE3 is a Merkle tree: bao-tree encodes the chunks with the hashes on their
//! path to the root). The owner keeps nothing per challenge; the chunks are picked at random
//! for each audit, so a proof cannot be prepared in advance without keeping the data.
//!
//! The holder computes the tree from the shard it keeps (hashing a shard of a few hundred
//! KiB costs well under a millisecond), so nothing beside the shard is stored. Pure: no I/O.
//!
//! Detection: an audit of `t` random chunks catches a holder missing a fraction `f` of a
//! shard with probability `1 - (1 - f)^t`; with [`AUDIT_CHUNKS`] = 32, 10 % missing is
//! caught 96.6 % of the time per audit, 25 % missing 99.99 %, a deleted shard always. A
//! proof of 32 chunks is about 32 × (1 KiB + 64 B × tree depth) ≈ 50 KiB for a 256 KiB shard.

use bao_tree::io::outboard::{EmptyOutboard, PreOrderMemOutboard};
use bao_tree::io::sync::{decode_ranges, encode_ranges_validated};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

use crate::ids::ShardId;

/// Chunks asked per audit.
pub const AUDIT_CHUNKS: usize = 32;
/// Most chunks one audit request may name.
pub const MAX_AUDIT_CHUNKS: usize = 64;
/// Largest proof a node sends or an owner reads (64 chunks with their paths, with room).
pub const MAX_PROOF: u32 = 1 << 20;
/// Chunks are BLAKE3's: 1 KiB.
const CHUNK: u64 = 1024;

/// How many 1 KiB chunks a shard of `len` bytes has.
pub fn chunks_of(len: u32) -> u32 {
    (u64::from(len).div_ceil(CHUNK)).max(1) as u32
}

/// Up to `n` distinct random chunk numbers of a shard of `len` bytes, in order.
pub fn pick_chunks(len: u32, n: usize) -> Vec<u32> {
    let total = chunks_of(len);
    if (total as usize) <= n {
        return (0..total).collect();
    }
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < n {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).expect("the OS random source");
        // Modulo bias over 2^64 is negligible for any shard size.
        picked.insert((u64::from_le_bytes(b) % u64::from(total)) as u32);
    }
    picked.into_iter().collect()
}

fn ranges(chunks: &[u32]) -> ChunkRanges {
    let mut r = ChunkRanges::empty();
    for &c in chunks {
        r.union_with(&ChunkRanges::from(
            ChunkNum(u64::from(c))..ChunkNum(u64::from(c) + 1),
        ));
    }
    r
}

/// The proof that `shard` holds `chunks` (the holder's side).
pub fn prove(shard: &[u8], chunks: &[u32]) -> Result<Vec<u8>, String> {
    let outboard = PreOrderMemOutboard::create(shard, BlockSize::ZERO);
    let mut proof = Vec::new();
    encode_ranges_validated(shard, &outboard, &ranges(chunks), &mut proof)
        .map_err(|e| format!("cannot prove: {e}"))?;
    Ok(proof)
}

/// Whether `proof` shows `chunks` of the shard `id` of `len` bytes (the owner's side).
pub fn verify(id: &ShardId, len: u32, chunks: &[u32], proof: &[u8]) -> bool {
    let tree = BaoTree::new(u64::from(len), BlockSize::ZERO);
    let outboard = EmptyOutboard {
        tree,
        root: bao_tree::blake3::Hash::from(id.0),
    };
    let mut reader = proof;
    let mut sink: Vec<u8> = Vec::new();
    decode_ranges(&mut reader, &ranges(chunks), &mut sink, outboard).is_ok() && reader.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn an_honest_holder_passes_and_a_damaged_or_wrong_one_fails() {
        for len in [1usize, 1000, 1024, 1025, 100_000, 349_526] {
            let data = shard(len, 7);
            let id = ShardId(*blake3::hash(&data).as_bytes());
            let chunks = pick_chunks(len as u32, AUDIT_CHUNKS);
            let proof = prove(&data, &chunks).unwrap();
            assert!(verify(&id, len as u32, &chunks, &proof), "len {len}");
            // Proof of other chunks, of another shard, cut short, or with a flipped byte.
            if chunks_of(len as u32) > AUDIT_CHUNKS as u32 {
                let other = pick_chunks(len as u32, AUDIT_CHUNKS);
                if other != chunks {
                    assert!(!verify(&id, len as u32, &other, &proof));
                }
            }
            let other_shard = shard(len, 8);
            let p2 = prove(&other_shard, &chunks).unwrap();
            assert!(!verify(&id, len as u32, &chunks, &p2));
            assert!(!verify(&id, len as u32, &chunks, &proof[..proof.len() - 1]));
            let mut flipped = proof.clone();
            let i = flipped.len() / 2;
            flipped[i] ^= 1;
            assert!(!verify(&id, len as u32, &chunks, &flipped));
            let mut longer = proof.clone();
            longer.push(0);
            assert!(!verify(&id, len as u32, &chunks, &longer));
        }
    }

    #[test]
    fn a_holder_missing_part_of_a_shard_cannot_prove_it() {
        let len = 256 * 1024;
        let data = shard(len, 3);
        let id = ShardId(*blake3::hash(&data).as_bytes());
        // It kept the first 90 % and made up the rest.
        let mut kept = data.clone();
        for b in &mut kept[len * 9 / 10..] {
            *b = 0;
        }
        let caught = (0..200)
            .filter(|_| {
                let chunks = pick_chunks(len as u32, AUDIT_CHUNKS);
                let proof = prove(&kept, &chunks).unwrap_or_default();
                !verify(&id, len as u32, &chunks, &proof)
            })
            .count();
        // 1 - 0.9^32 = 96.6 % per audit; 200 audits catch it well over 150 times.
        assert!(caught > 150, "caught {caught} of 200");
    }

    #[test]
    fn proofs_are_small() {
        let len = 256 * 1024;
        let data = shard(len, 1);
        let chunks = pick_chunks(len as u32, AUDIT_CHUNKS);
        let proof = prove(&data, &chunks).unwrap();
        assert!(proof.len() < 64 * 1024, "{}", proof.len());
        assert!((proof.len() as u32) < MAX_PROOF);
    }
}
