//! Random access into a sealed block with its payload key in hand.
//!
//! Opening an age file costs an X25519 unwrap of the file key and a header parse: about half
//! of a small random read (perf). [`open_range_keyed`] does a range read through age as
//! [`super::seal::open_range`] does, and also hands back the block's [`PayloadKey`] (derived
//! from the file key exactly as age derives it). With that key, [`read_chunks`] decrypts only
//! the 64 KiB payload chunks a range covers, each authenticated by ChaCha20-Poly1305 under its
//! position and last-chunk flag (age's STREAM construction), so a wrong key, a moved chunk
//! or a truncated block fails instead of returning wrong bytes.

use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom};

use age::secrecy::ExposeSecret;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use zeroize::Zeroizing;

use super::OpenError;
use super::seal::{header_hash, header_len};

/// Plaintext bytes per age payload chunk.
pub const CHUNK: u64 = 64 * 1024;
/// Poly1305 tag after each chunk.
const TAG: u64 = 16;

/// The key of one sealed block's payload, and where the payload starts in its file.
pub struct PayloadKey {
    key: Zeroizing<[u8; 32]>,
    payload_start: u64,
}

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PayloadKey(payload at {})", self.payload_start)
    }
}

/// An identity that remembers the file key it unwraps.
struct Capture<'a> {
    inner: &'a age::x25519::Identity,
    file_key: RefCell<Option<Zeroizing<[u8; 16]>>>,
}

impl age::Identity for Capture<'_> {
    fn unwrap_stanza(
        &self,
        stanza: &age_core::format::Stanza,
    ) -> Option<Result<age_core::format::FileKey, age::DecryptError>> {
        let unwrapped = age::Identity::unwrap_stanza(self.inner, stanza)?;
        Some(unwrapped.map(|fk| {
            let bytes = Zeroizing::new(*fk.expose_secret());
            *self.file_key.borrow_mut() = Some(bytes.clone());
            age_core::format::FileKey::new(Box::new(*bytes))
        }))
    }
}

fn decrypt_err(e: &dyn std::fmt::Display) -> OpenError {
    OpenError::Decrypt(e.to_string())
}

/// Decrypts `len` bytes at `offset` as `seal::open_range` does (the header must hash to
/// `expected_header`), and returns the block's payload key with them.
pub fn open_range_keyed<R: Read + Seek>(
    identity: &age::x25519::Identity,
    expected_header: &[u8; 32],
    mut sealed: R,
    offset: u64,
    len: usize,
) -> Result<(Vec<u8>, PayloadKey), OpenError> {
    let mut head = Vec::with_capacity(4096);
    (&mut sealed)
        .take(4096)
        .read_to_end(&mut head)
        .map_err(|e| decrypt_err(&e))?;
    if header_hash(&head).as_ref() != Some(expected_header) {
        return Err(OpenError::Decrypt(
            "age header does not match the recorded one".into(),
        ));
    }
    let header_and_nonce = header_len(&head).expect("a hashed header has a length");
    let nonce = head[header_and_nonce - 16..header_and_nonce].to_vec();
    sealed
        .seek(SeekFrom::Start(0))
        .map_err(|e| decrypt_err(&e))?;
    let capture = Capture {
        inner: identity,
        file_key: RefCell::new(None),
    };
    let decryptor = age::Decryptor::new(sealed).map_err(|e| decrypt_err(&e))?;
    // age checks the header MAC under the file key here: a key it accepts is the real one.
    let mut reader = decryptor
        .decrypt(std::iter::once(&capture as &dyn age::Identity))
        .map_err(|e| decrypt_err(&e))?;
    reader
        .seek(SeekFrom::Start(offset))
        .map_err(|e| decrypt_err(&e))?;
    let mut out = Vec::with_capacity(len);
    reader
        .take(len as u64)
        .read_to_end(&mut out)
        .map_err(|e| decrypt_err(&e))?;
    let file_key = capture
        .file_key
        .into_inner()
        .ok_or_else(|| OpenError::Decrypt("no file key was unwrapped".into()))?;
    let key = PayloadKey {
        key: Zeroizing::new(age_core::primitives::hkdf(
            &nonce,
            b"payload",
            &file_key[..],
        )),
        payload_start: header_and_nonce as u64,
    };
    Ok((out, key))
}

/// Decrypts `len` bytes at `offset` of a block of `plain_len` plaintext bytes, reading only
/// the payload chunks they cover.
pub fn read_chunks<R: Read + Seek>(
    key: &PayloadKey,
    plain_len: u64,
    mut sealed: R,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, OpenError> {
    let end = offset.saturating_add(len as u64).min(plain_len);
    let mut out = Vec::with_capacity(len);
    if offset >= end {
        return Ok(out);
    }
    let cipher = ChaCha20Poly1305::new((&*key.key).into());
    let last_chunk = (plain_len - 1) / CHUNK;
    let mut buf = vec![0u8; (CHUNK + TAG) as usize];
    for chunk in offset / CHUNK..=(end - 1) / CHUNK {
        let start = chunk * CHUNK;
        let plain = (plain_len - start).min(CHUNK) as usize;
        sealed
            .seek(SeekFrom::Start(key.payload_start + chunk * (CHUNK + TAG)))
            .map_err(|e| decrypt_err(&e))?;
        let data = &mut buf[..plain + TAG as usize];
        sealed.read_exact(data).map_err(|e| decrypt_err(&e))?;
        let (text, tag) = data.split_at_mut(plain);
        let mut nonce = [0u8; 12];
        nonce[3..11].copy_from_slice(&chunk.to_be_bytes());
        nonce[11] = u8::from(chunk == last_chunk);
        cipher
            .decrypt_in_place_detached((&nonce).into(), &[], text, (&*tag).into())
            .map_err(|_| {
                OpenError::Decrypt(format!("payload chunk {chunk} failed authentication"))
            })?;
        let from = (offset.max(start) - start) as usize;
        let to = (end.min(start + CHUNK) - start) as usize;
        out.extend_from_slice(&text[from..to]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::seal::seal;
    use std::io::Cursor;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn keyed_reads_match_the_plaintext_at_every_boundary() {
        let identity = age::x25519::Identity::generate();
        for len in [1usize, 65_535, 65_536, 65_537, 200_000, 3 * 65_536, 1 << 20] {
            let plain = pattern(len);
            let sealed = seal(&identity.to_public(), &plain).unwrap();
            let hh = header_hash(&sealed).unwrap();
            let (first, key) = open_range_keyed(
                &identity,
                &hh,
                Cursor::new(&sealed),
                10.min(len as u64 - 1),
                1,
            )
            .unwrap();
            assert_eq!(first, plain[10.min(len - 1)..][..1]);
            let n = len as u64;
            let cuts = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, n / 2, n - 1];
            for &off in cuts.iter().filter(|o| **o < n) {
                for want in [1usize, 100, 4096, CHUNK as usize, 70_000, len] {
                    let got = read_chunks(&key, n, Cursor::new(&sealed), off, want).unwrap();
                    let end = (off as usize + want).min(len);
                    assert_eq!(
                        got,
                        plain[off as usize..end],
                        "len {len} off {off} want {want}"
                    );
                }
            }
            assert!(
                read_chunks(&key, n, Cursor::new(&sealed), n, 10)
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn a_wrong_key_length_or_byte_fails_authentication() {
        let identity = age::x25519::Identity::generate();
        let plain = pattern(200_000);
        let sealed = seal(&identity.to_public(), &plain).unwrap();
        let other = seal(&identity.to_public(), &plain).unwrap();
        let hh = header_hash(&sealed).unwrap();
        let (_, key) = open_range_keyed(&identity, &hh, Cursor::new(&sealed), 0, 1).unwrap();
        // The same plaintext sealed again has another file key: the cached key must not open it.
        assert!(read_chunks(&key, 200_000, Cursor::new(&other), 0, 10).is_err());
        // A plaintext length that moves the last-chunk flag is caught.
        assert!(read_chunks(&key, 150_000, Cursor::new(&sealed), 140_000, 10).is_err());
        // A flipped byte in a chunk is caught.
        let mut bad = sealed.clone();
        let at = key.payload_start as usize + 70_000;
        bad[at] ^= 1;
        assert!(read_chunks(&key, 200_000, Cursor::new(&bad), 65_536, 10).is_err());
        assert!(read_chunks(&key, 200_000, Cursor::new(&bad), 0, 10).is_ok());
    }
}
