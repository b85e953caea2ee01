//! Sealing: a plaintext block becomes a standard age file encrypted to the volume's X25519
//! recipient, so a user holding the identity can decrypt any reassembled block with the stock
//! `age` tool. Opening decrypts (age authenticates every 64 KiB chunk) and then checks the
//! plaintext against its block id, so a block can never be returned under the wrong name.
//!
//! The files are written here rather than by the age crate's encryptor, in two steps, so
//! that the expensive one can be done ahead of time on another thread: [`prepare_header`]
//! draws a fresh random file key, wraps it to the recipient (age's own X25519 recipient code:
//! an ephemeral key and a Diffie-Hellman, ~60 us, most of a small file's seal) and computes
//! the header with its MAC; [`seal_prepared`] adds a random nonce and the payload (age's
//! STREAM: ChaCha20-Poly1305 over 64 KiB chunks under a key derived from the file key and the
//! nonce). Every block still has its own file key and ephemeral share, exactly as age makes
//! them; the tests decrypt the output with the age crate.

use base64::Engine;
use base64::prelude::BASE64_STANDARD_NO_PAD;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use hmac::Mac;
use zeroize::Zeroizing;

use super::block_id::{DedupKey, block_id};
use super::chunks::CHUNK;
use super::{OpenError, SealError};
use crate::ids::BlockId;

/// An age header made ahead of time for one block: its file key and the header bytes
/// (version line, the X25519 stanza, the MAC line).
pub struct PreparedHeader {
    file_key: Zeroizing<[u8; 16]>,
    header: Vec<u8>,
}

impl std::fmt::Debug for PreparedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedHeader({} bytes)", self.header.len())
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, SealError> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::getrandom(&mut b[..]).map_err(|e| SealError(format!("no randomness: {e}")))?;
    Ok(b)
}

/// Draws a file key and wraps it to `recipient`: the public-key half of sealing a block.
pub fn prepare_header(recipient: &age::x25519::Recipient) -> Result<PreparedHeader, SealError> {
    let file_key = random::<16>()?;
    let wrapped = {
        let fk = age_core::format::FileKey::new(Box::new(*file_key));
        age::Recipient::wrap_file_key(recipient, &fk).map_err(|e| SealError(e.to_string()))?
    };
    let mut header = b"age-encryption.org/v1\n".to_vec();
    for stanza in &wrapped.0 {
        header.extend_from_slice(b"-> ");
        header.extend_from_slice(stanza.tag.as_bytes());
        for arg in &stanza.args {
            header.push(b' ');
            header.extend_from_slice(arg.as_bytes());
        }
        header.push(b'\n');
        // The body in base64 lines of 64 columns; the last line is short, empty if need be.
        let body = BASE64_STANDARD_NO_PAD.encode(&stanza.body);
        let mut rest = body.as_bytes();
        while rest.len() >= 64 {
            header.extend_from_slice(&rest[..64]);
            header.push(b'\n');
            rest = &rest[64..];
        }
        header.extend_from_slice(rest);
        header.push(b'\n');
    }
    header.extend_from_slice(b"---");
    let mac_key = Zeroizing::new(age_core::primitives::hkdf(&[], b"header", &file_key[..]));
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&mac_key[..])
        .map_err(|e| SealError(e.to_string()))?;
    mac.update(&header);
    header.push(b' ');
    header.extend_from_slice(
        BASE64_STANDARD_NO_PAD
            .encode(mac.finalize().into_bytes())
            .as_bytes(),
    );
    header.push(b'\n');
    Ok(PreparedHeader { file_key, header })
}

/// Encrypts one plaintext block under a prepared header (the symmetric half of sealing).
pub fn seal_prepared(prepared: PreparedHeader, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let nonce = random::<16>()?;
    let payload_key = Zeroizing::new(age_core::primitives::hkdf(
        &nonce[..],
        b"payload",
        &prepared.file_key[..],
    ));
    let aead = ChaCha20Poly1305::new((&*payload_key).into());
    let chunks = plaintext.len().div_ceil(CHUNK as usize).max(1);
    let mut out = Vec::with_capacity(prepared.header.len() + 16 + plaintext.len() + 16 * chunks);
    out.extend_from_slice(&prepared.header);
    out.extend_from_slice(&nonce[..]);
    for i in 0..chunks {
        let from = i * CHUNK as usize;
        let to = (from + CHUNK as usize).min(plaintext.len());
        // age's STREAM nonce: an 11-byte big-endian chunk counter and a last-chunk flag.
        let mut n = [0u8; 12];
        n[3..11].copy_from_slice(&(i as u64).to_be_bytes());
        n[11] = u8::from(i + 1 == chunks);
        let start = out.len();
        out.extend_from_slice(&plaintext[from..to]);
        let tag = aead
            .encrypt_in_place_detached((&n).into(), &[], &mut out[start..])
            .map_err(|e| SealError(e.to_string()))?;
        out.extend_from_slice(&tag);
    }
    Ok(out)
}

/// Encrypts one plaintext block to `recipient` (both halves at once).
pub fn seal(recipient: &age::x25519::Recipient, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    seal_prepared(prepare_header(recipient)?, plaintext)
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

    /// Our files are age's format: the age crate's decryptor reads them at every boundary
    /// size (round_trip_at_boundary_sizes goes through it too, via `open`), and a header
    /// with a flipped bit fails its MAC.
    #[test]
    fn prepared_headers_make_standard_age_files() {
        let identity = age::x25519::Identity::generate();
        for &len in INTERESTING_SIZES {
            let plain = pattern(len);
            let sealed =
                seal_prepared(prepare_header(&identity.to_public()).unwrap(), &plain).unwrap();
            let got = age::decrypt(&identity, &sealed).unwrap();
            assert_eq!(got, plain, "len {len}");
        }
        let sealed = seal(&identity.to_public(), b"x").unwrap();
        let mac_line = sealed.windows(4).position(|w| w == b"--- ").unwrap();
        let mut bad = sealed.clone();
        bad[mac_line - 3] ^= 1; // inside the stanza body, before the MAC
        assert!(age::decrypt(&identity, &bad).is_err());
        // Two seals of the same bytes share nothing: file key, share and nonce are fresh.
        let again = seal(&identity.to_public(), b"x").unwrap();
        assert_ne!(sealed[..mac_line], again[..mac_line]);
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
