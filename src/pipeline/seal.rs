//! Sealing: a plaintext block becomes a standard age file encrypted to the volume's X25519
//! recipient, so a user holding the identity can decrypt any reassembled block with the stock
//! `age` tool. Opening decrypts (age authenticates every 64 KiB chunk) and then checks the
//! plaintext against its block id, so a block can never be returned under the wrong name.

use super::block_id::{DedupKey, block_id};
use super::{OpenError, SealError};
use crate::ids::BlockId;

/// Encrypts one plaintext block to `recipient`.
pub fn seal(recipient: &age::x25519::Recipient, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    // As age::encrypt, but with the output sized once: header (~200 bytes), 16-byte nonce,
    // and a 16-byte tag per 64 KiB chunk.
    let encrypt = || -> Result<Vec<u8>, age::EncryptError> {
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))?;
        let mut sealed = Vec::with_capacity(plaintext.len() + plaintext.len() / 4096 + 512);
        let mut writer = encryptor.wrap_output(&mut sealed)?;
        std::io::Write::write_all(&mut writer, plaintext)?;
        writer.finish()?;
        Ok(sealed)
    };
    encrypt().map_err(|e| SealError(e.to_string()))
}

/// Decrypts a sealed block and verifies that its plaintext has id `expected`.
pub fn open(
    identity: &age::x25519::Identity,
    dedup_key: &DedupKey,
    expected: BlockId,
    sealed: &[u8],
) -> Result<Vec<u8>, OpenError> {
    // Binary age only (no armor detection layer: it costs a copy), into a buffer sized once.
    let decrypt = || -> Result<Vec<u8>, age::DecryptError> {
        let decryptor = age::Decryptor::new_buffered(sealed)?;
        let mut reader = decryptor.decrypt(std::iter::once(identity as &dyn age::Identity))?;
        let mut plaintext = Vec::with_capacity(sealed.len());
        std::io::Read::read_to_end(&mut reader, &mut plaintext)?;
        Ok(plaintext)
    };
    let plaintext = decrypt().map_err(|e| OpenError::Decrypt(e.to_string()))?;
    if block_id(dedup_key, &plaintext) != expected {
        return Err(OpenError::BlockIdMismatch(expected));
    }
    Ok(plaintext)
}

/// Length of a sealed block's age header plus the 16-byte payload nonce: the prefix that fixes
/// the file key and payload key. `None` if `sealed` does not start with a whole header.
pub fn header_len(sealed: &[u8]) -> Option<usize> {
    let mac_line = sealed.windows(5).position(|w| w == b"\n--- ")? + 1;
    let end = mac_line + sealed[mac_line..].iter().position(|b| *b == b'\n')? + 1;
    let with_nonce = end + 16;
    (with_nonce <= sealed.len()).then_some(with_nonce)
}

/// `blake3` of the header and nonce (see [`header_len`]).
pub fn header_hash(sealed: &[u8]) -> Option<[u8; 32]> {
    header_len(sealed).map(|n| *blake3::hash(&sealed[..n]).as_bytes())
}

/// Decrypts `len` bytes at `offset` of a sealed block without decrypting the rest.
///
/// Trust comes from `expected_header`: equal header bytes unwrap to the same file key, and
/// age authenticates every 64 KiB chunk under it together with the chunk's position, so the
/// bytes returned are exactly those sealed when the header hash was recorded.
pub fn open_range<R: std::io::Read + std::io::Seek>(
    identity: &age::x25519::Identity,
    expected_header: &[u8; 32],
    sealed: R,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, OpenError> {
    super::chunks::open_range_keyed(identity, expected_header, sealed, offset, len)
        .map(|(bytes, _key)| bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes where block handling changes: empty, one byte, around age's 64 KiB chunk, and
    /// around the default block size.
    const INTERESTING_SIZES: &[usize] = &[
        0,                    // empty block: still a valid age file
        1,                    // smallest non-empty
        65_535,               // one byte short of an age STREAM chunk
        65_536,               // exactly one chunk
        65_537,               // spills into a second chunk
        1024 * 1024 - 1,      // default block size - 1
        1024 * 1024,          // default block size
        1024 * 1024 + 1,      // block size + 1 (never produced by the volume, still must work)
        3 * 1024 * 1024 + 17, // several chunks, odd tail
    ];

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trip_at_boundary_sizes() {
        let identity = age::x25519::Identity::generate();
        let key = DedupKey([7; 32]);
        for &len in INTERESTING_SIZES {
            let plain = pattern(len);
            let id = block_id(&key, &plain);
            let sealed = seal(&identity.to_public(), &plain).unwrap();
            assert!(sealed.len() > plain.len(), "len {len}");
            if len >= 64 {
                assert!(
                    !sealed.windows(64).any(|w| w == &plain[..64]),
                    "plaintext visible in sealed block of {len} bytes"
                );
            }
            assert_eq!(
                open(&identity, &key, id, &sealed).unwrap(),
                plain,
                "len {len}"
            );
        }
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let identity = age::x25519::Identity::generate();
        let key = DedupKey([7; 32]);
        let plain = pattern(100_000);
        let id = block_id(&key, &plain);
        let sealed = seal(&identity.to_public(), &plain).unwrap();
        for pos in [0, 10, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x40;
            assert!(
                open(&identity, &key, id, &bad).is_err(),
                "flip at {pos} not caught"
            );
        }
        let truncated = &sealed[..sealed.len() - 1];
        assert!(open(&identity, &key, id, truncated).is_err());
    }

    #[test]
    fn ranges_decrypt_alone_and_a_foreign_header_is_refused() {
        let identity = age::x25519::Identity::generate();
        let plain = pattern(300_000);
        let sealed = seal(&identity.to_public(), &plain).unwrap();
        let h = header_hash(&sealed).unwrap();
        for (off, len) in [
            (0usize, 10usize),
            (65_530, 20),
            (131_072, 4096),
            (299_990, 100),
        ] {
            let got = open_range(
                &identity,
                &h,
                std::io::Cursor::new(&sealed),
                off as u64,
                len,
            )
            .unwrap();
            let end = (off + len).min(plain.len());
            assert_eq!(got, &plain[off..end], "range {off}+{len}");
        }
        // Another valid age file for the same recipient is not accepted in its place.
        let other = seal(&identity.to_public(), &plain).unwrap();
        assert!(open_range(&identity, &h, std::io::Cursor::new(&other), 0, 10).is_err());
        // A flipped payload byte fails that chunk's authentication.
        let mut bad = sealed.clone();
        let n = bad.len();
        bad[n - 100] ^= 1;
        assert!(open_range(&identity, &h, std::io::Cursor::new(&bad), 299_000, 900).is_err());
    }

    #[test]
    fn wrong_id_is_caught() {
        let identity = age::x25519::Identity::generate();
        let key = DedupKey([7; 32]);
        let sealed = seal(&identity.to_public(), b"abc").unwrap();
        let other = block_id(&key, b"abd");
        assert!(matches!(
            open(&identity, &key, other, &sealed),
            Err(OpenError::BlockIdMismatch(_))
        ));
    }

    #[test]
    fn other_identity_cannot_open() {
        let owner = age::x25519::Identity::generate();
        let thief = age::x25519::Identity::generate();
        let key = DedupKey([7; 32]);
        let sealed = seal(&owner.to_public(), b"secret").unwrap();
        let id = block_id(&key, b"secret");
        assert!(matches!(
            open(&thief, &key, id, &sealed),
            Err(OpenError::Decrypt(_))
        ));
    }
}
