//! Erasure coding of sealed blocks with Reed-Solomon (GF(2^8), `reed-solomon-erasure` with its
//! SIMD backend): a sealed block is cut into `k` equal data shards (the last zero-padded) plus
//! `m` parity shards; any `k` of the `k + m` rebuild it. Every shard is named by
//! `blake3(shard bytes)`, so a wrong or altered shard is rejected before it can poison a decode.
//!
//! On a single machine the volume stores whole sealed blocks; shards are what the nodepool
//! spreads over distinct peers.

use reed_solomon_erasure::galois_8::ReedSolomon;

use super::OpenError;
use crate::ids::ShardId;

/// The shape of an erasure code: `data` shards needed, `parity` shards that may be lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheme {
    pub data: usize,
    pub parity: usize,
}

impl Scheme {
    /// Total shards per block.
    pub fn total(&self) -> usize {
        self.data + self.parity
    }

    /// Bytes in each shard of a sealed block of `sealed_len` bytes.
    pub fn shard_len(&self, sealed_len: usize) -> usize {
        sealed_len.div_ceil(self.data).max(1)
    }
}

/// The id of one shard.
pub fn shard_id(shard: &[u8]) -> ShardId {
    ShardId(*blake3::hash(shard).as_bytes())
}

/// Splits `sealed` into `scheme.total()` shards (data shards first).
pub fn encode(scheme: Scheme, sealed: &[u8]) -> Result<Vec<Vec<u8>>, OpenError> {
    let rs = ReedSolomon::new(scheme.data, scheme.parity)
        .map_err(|e| OpenError::Erasure(format!("{e:?}")))?;
    let len = scheme.shard_len(sealed.len());
    let mut shards: Vec<Vec<u8>> = (0..scheme.total())
        .map(|i| {
            let mut shard = vec![0u8; len];
            if i < scheme.data {
                let start = (i * len).min(sealed.len());
                let end = ((i + 1) * len).min(sealed.len());
                shard[..end - start].copy_from_slice(&sealed[start..end]);
            }
            shard
        })
        .collect();
    rs.encode(&mut shards)
        .map_err(|e| OpenError::Erasure(format!("{e:?}")))?;
    Ok(shards)
}

/// Rebuilds a sealed block of `sealed_len` bytes from whatever shards are at hand.
///
/// `shards[i]` is shard number `i` if it was fetched; each is checked against `ids[i]` and
/// dropped if it does not match. Fails with `NotEnoughShards` when fewer than `k` remain.
pub fn decode(
    scheme: Scheme,
    ids: &[ShardId],
    shards: Vec<Option<Vec<u8>>>,
    sealed_len: usize,
) -> Result<Vec<u8>, OpenError> {
    if ids.len() != scheme.total() || shards.len() != scheme.total() {
        return Err(OpenError::Erasure(
            "wrong number of shards for the scheme".into(),
        ));
    }
    let len = scheme.shard_len(sealed_len);
    let mut checked: Vec<Option<Vec<u8>>> = shards
        .into_iter()
        .zip(ids)
        .map(|(shard, id)| shard.filter(|s| s.len() == len && shard_id(s) == *id))
        .collect();
    let have = checked.iter().filter(|s| s.is_some()).count();
    if have < scheme.data {
        return Err(OpenError::NotEnoughShards {
            have,
            need: scheme.data,
        });
    }
    let rs = ReedSolomon::new(scheme.data, scheme.parity)
        .map_err(|e| OpenError::Erasure(format!("{e:?}")))?;
    rs.reconstruct_data(&mut checked)
        .map_err(|e| OpenError::Erasure(format!("{e:?}")))?;
    let mut sealed = Vec::with_capacity(len * scheme.data);
    for shard in checked.into_iter().take(scheme.data) {
        sealed.extend_from_slice(&shard.expect("reconstruct_data fills every data shard"));
    }
    sealed.truncate(sealed_len);
    Ok(sealed)
}

/// Reports which of `shards` do not match their ids (for audits and fsck).
pub fn find_corrupt(ids: &[ShardId], shards: &[Vec<u8>]) -> Vec<usize> {
    shards
        .iter()
        .zip(ids)
        .enumerate()
        .filter(|(_, (s, id))| shard_id(s) != **id)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SCHEME: Scheme = Scheme { data: 4, parity: 2 };

    fn ids_of(shards: &[Vec<u8>]) -> Vec<ShardId> {
        shards.iter().map(|s| shard_id(s)).collect()
    }

    #[test]
    fn boundary_sizes_round_trip() {
        // 1 byte; a shard edge -1, exact, +1; several shards with a ragged tail.
        for len in [
            1usize,
            4 * 1000 - 1,
            4 * 1000,
            4 * 1000 + 1,
            1_048_576 + 333,
        ] {
            let sealed: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let shards = encode(SCHEME, &sealed).unwrap();
            assert_eq!(shards.len(), 6);
            let ids = ids_of(&shards);
            let all = shards.into_iter().map(Some).collect();
            assert_eq!(decode(SCHEME, &ids, all, len).unwrap(), sealed, "len {len}");
        }
    }

    #[test]
    fn too_few_shards_is_an_error() {
        let sealed = vec![9u8; 1000];
        let shards = encode(SCHEME, &sealed).unwrap();
        let ids = ids_of(&shards);
        let mut partial: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
        partial[0] = None;
        partial[2] = None;
        partial[5] = None;
        assert!(matches!(
            decode(SCHEME, &ids, partial, 1000),
            Err(OpenError::NotEnoughShards { have: 3, need: 4 })
        ));
    }

    proptest! {
        /// Any k of the k+m shards rebuild the sealed block exactly.
        #[test]
        fn any_k_of_n_decode(len in 1usize..20_000, lost in proptest::sample::subsequence((0..6).collect::<Vec<_>>(), 0..=2)) {
            let sealed: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let shards = encode(SCHEME, &sealed).unwrap();
            let ids = ids_of(&shards);
            let mut partial: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
            for i in &lost { partial[*i] = None; }
            prop_assert_eq!(decode(SCHEME, &ids, partial, len).unwrap(), sealed);
        }

        /// Any altered shard is caught by its id and never reaches the decoder.
        #[test]
        fn altered_shard_is_caught(len in 1usize..5_000, which in 0usize..6, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let sealed: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
            let shards = encode(SCHEME, &sealed).unwrap();
            let ids = ids_of(&shards);
            let mut bad = shards.clone();
            let p = pos.index(bad[which].len());
            bad[which][p] ^= 1 << bit;
            prop_assert_eq!(find_corrupt(&ids, &bad), vec![which]);
            // With the altered shard plus the loss of the other parity budget, decode must
            // still be exact (the bad shard is dropped) or refuse; never return wrong bytes.
            let mut partial: Vec<Option<Vec<u8>>> = bad.into_iter().map(Some).collect();
            partial[(which + 1) % 6] = None;
            prop_assert_eq!(decode(SCHEME, &ids, partial, len).unwrap(), sealed);
        }
    }
}
