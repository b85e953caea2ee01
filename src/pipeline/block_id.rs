//! Block ids: a keyed BLAKE3 hash of the plaintext, so identical blocks in one volume share an
//! id (dedup) while the id reveals nothing to anyone without the volume's dedup key.

use crate::ids::BlockId;

/// The secret key that turns plaintext into block ids. Derived from the identity (see `keys`).
#[derive(Clone)]
pub struct DedupKey(pub [u8; 32]);

impl std::fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DedupKey(..)")
    }
}

impl Drop for DedupKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// The id of a plaintext block under `key`.
pub fn block_id(key: &DedupKey, plaintext: &[u8]) -> BlockId {
    BlockId(*blake3::keyed_hash(&key.0, plaintext).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_id_other_key_other_id() {
        let a = DedupKey([1; 32]);
        let b = DedupKey([2; 32]);
        assert_eq!(block_id(&a, b"hello"), block_id(&a, b"hello"));
        assert_ne!(block_id(&a, b"hello"), block_id(&a, b"hellp"));
        assert_ne!(block_id(&a, b"hello"), block_id(&b, b"hello"));
    }
}
