//! Volume root records: the one mutable thing a volume keeps in the pool. Pure: no I/O.
//!
//! A record says "the newest copy of this volume's metadata is described by `payload`",
//! with a sequence number (higher is newer) and an ed25519 signature by the volume's root
//! key. Nodes keep, per *locator* (the root key's public half), the record with the highest
//! sequence whose signature verifies; an owner that lost its machine asks every peer for its
//! locator and takes the highest valid answer. Nothing here can be forged or rolled back
//! without the owner's key: a node can only withhold a record (the owner asks many), never
//! serve one it made up, and no node accepts a lower sequence than it holds.
//!
//! The payload is opaque to nodes (the owner encrypts it: see `volume::backup`); a node
//! sees a public key that is not linked to anything else of the volume, a number and a few
//! hundred bytes of ciphertext.
//!
//! Layout: `BCR1` ‖ locator (32) ‖ sequence `u64` BE ‖ payload length `u16` BE ‖ payload ‖
//! signature (64) over [`DOMAIN`] ‖ everything before the signature.

use libp2p::identity::ed25519;

/// Largest record a node accepts or sends.
pub const MAX_RECORD: usize = 8 * 1024;
const MAGIC: &[u8; 4] = b"BCR1";
/// Signed before the record's bytes, so that no other signature of the key can pass as one.
const DOMAIN: &[u8] = b"bitcloud volume root record v1\0";
const FIXED: usize = 4 + 32 + 8 + 2;
const SIG: usize = 64;

/// A root record whose signature has been checked (or that was just signed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootRecord {
    /// The volume's root public key (ed25519): what nodes file the record under.
    pub locator: [u8; 32],
    pub seq: u64,
    pub payload: Vec<u8>,
    signature: [u8; SIG],
}

/// Why bytes are not a valid root record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a valid volume root record: {0}")]
pub struct RootError(pub &'static str);

/// The signing key of a volume's root records, from its 32-byte seed.
pub fn keypair(seed: &[u8; 32]) -> ed25519::Keypair {
    let mut s = *seed;
    let secret = ed25519::SecretKey::try_from_bytes(&mut s).expect("32 bytes are a valid seed");
    ed25519::Keypair::from(secret)
}

/// The locator of the records `key` signs.
pub fn locator(key: &ed25519::Keypair) -> [u8; 32] {
    key.public().to_bytes()
}

impl RootRecord {
    /// Signs `payload` as record number `seq`. The payload must fit [`MAX_RECORD`].
    pub fn sign(
        key: &ed25519::Keypair,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<RootRecord, RootError> {
        if FIXED + payload.len() + SIG > MAX_RECORD {
            return Err(RootError("payload too large"));
        }
        let locator = locator(key);
        let unsigned = unsigned_bytes(&locator, seq, &payload);
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(&unsigned);
        let sig = key.sign(&message);
        let signature: [u8; SIG] = sig.try_into().map_err(|_| RootError("signature length"))?;
        Ok(RootRecord {
            locator,
            seq,
            payload,
            signature,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = unsigned_bytes(&self.locator, self.seq, &self.payload);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes `b` and checks its signature against the locator it names.
    pub fn decode_verified(b: &[u8]) -> Result<RootRecord, RootError> {
        if b.len() > MAX_RECORD {
            return Err(RootError("too large"));
        }
        if b.len() < FIXED + SIG {
            return Err(RootError("too short"));
        }
        if &b[..4] != MAGIC {
            return Err(RootError("bad magic"));
        }
        let locator: [u8; 32] = b[4..36].try_into().expect("32 bytes");
        let seq = u64::from_be_bytes(b[36..44].try_into().expect("8 bytes"));
        let len = u16::from_be_bytes([b[44], b[45]]) as usize;
        if b.len() != FIXED + len + SIG {
            return Err(RootError("length"));
        }
        let payload = b[FIXED..FIXED + len].to_vec();
        let signature: [u8; SIG] = b[FIXED + len..].try_into().expect("64 bytes");
        let public =
            ed25519::PublicKey::try_from_bytes(&locator).map_err(|_| RootError("bad locator"))?;
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(&b[..FIXED + len]);
        if !public.verify(&message, &signature) {
            return Err(RootError("bad signature"));
        }
        Ok(RootRecord {
            locator,
            seq,
            payload,
            signature,
        })
    }
}

fn unsigned_bytes(locator: &[u8; 32], seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + payload.len() + SIG);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(locator);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_record_verifies_and_any_change_does_not() {
        let key = keypair(&[7; 32]);
        let r = RootRecord::sign(&key, 42, b"ciphertext".to_vec()).unwrap();
        let bytes = r.encode();
        assert_eq!(RootRecord::decode_verified(&bytes).unwrap(), r);
        assert_eq!(r.locator, locator(&key));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                RootRecord::decode_verified(&bad).is_err(),
                "byte {i} flipped still verifies"
            );
        }
        assert!(RootRecord::decode_verified(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(RootRecord::decode_verified(&longer).is_err());
    }

    #[test]
    fn another_key_cannot_sign_for_a_locator() {
        let owner = keypair(&[1; 32]);
        let thief = keypair(&[2; 32]);
        let forged = RootRecord::sign(&thief, u64::MAX, b"mine now".to_vec()).unwrap();
        let mut bytes = forged.encode();
        bytes[4..36].copy_from_slice(&locator(&owner));
        assert_eq!(
            RootRecord::decode_verified(&bytes),
            Err(RootError("bad signature"))
        );
    }

    #[test]
    fn sizes_are_bounded() {
        let key = keypair(&[3; 32]);
        assert!(RootRecord::sign(&key, 1, vec![0; MAX_RECORD]).is_err());
        let most = MAX_RECORD - FIXED - SIG;
        let r = RootRecord::sign(&key, 1, vec![0; most]).unwrap();
        assert_eq!(r.encode().len(), MAX_RECORD);
        assert!(RootRecord::decode_verified(&vec![0; MAX_RECORD + 1]).is_err());
    }
}
