//! Keys: the user's age X25519 identity and every volume key derived from it.
//!
//! The identity file is the one secret a user must keep: every other key is derived from it
//! with BLAKE3's `derive_key` under a fixed context string, so the identity alone recovers the
//! whole volume. The identity file is written with mode 0600, either in clear (said plainly by
//! `init`) or wrapped with age's scrypt passphrase encryption (ASCII-armored age file).
//!
//! Derived keys live in memory only and are zeroized on drop.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use age::secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::pipeline::block_id::DedupKey;

const CTX_DEDUP: &str = "bitcloud 2026-11 volume dedup key v1";
const CTX_NAME_MAC: &str = "bitcloud 2026-11 name siv mac key v1";
const CTX_NAME_ENC: &str = "bitcloud 2026-11 name siv stream key v1";
const CTX_SIGNING: &str = "bitcloud 2026-11 volume ed25519 seed v1";
const CTX_VOLUME_ID: &str = "bitcloud 2026-11 volume id v1";
const CTX_JOURNAL: &str = "bitcloud 2026-12 fsync journal key v1";
const CTX_PLACEMENT: &str = "bitcloud 2026-12 shard placement key v1";
const CTX_META_CHUNK: &str = "bitcloud 2026-12 metadata backup chunk key v1";

/// Errors reading or writing the identity file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("identity file {path} not found: run `bitcloud init` first")]
    Missing { path: String },
    #[error(
        "identity file {path} is passphrase-protected: set BITCLOUD_PASSPHRASE or pass --passphrase-file"
    )]
    NeedPassphrase { path: String },
    #[error("wrong passphrase for identity file {path}")]
    WrongPassphrase { path: String },
    #[error("identity file {path} is damaged or not an age identity: {why}")]
    Malformed { path: String, why: String },
    #[error("i/o on identity file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Every key of one volume, all derived from the identity.
pub struct VolumeKeys {
    pub identity: age::x25519::Identity,
    pub recipient: age::x25519::Recipient,
    pub dedup: DedupKey,
    /// Key of the deterministic name encryption (SIV tag).
    pub name_mac: Zeroizing<[u8; 32]>,
    /// Key of the name encryption's keystream.
    pub name_enc: Zeroizing<[u8; 32]>,
    /// Seed of the volume's ed25519 signing key (used by the nodepool's signed root records).
    pub signing_seed: Zeroizing<[u8; 32]>,
    /// Public, stable id of the volume (hash of the recipient, not secret).
    pub volume_id: [u8; 32],
    /// Key of the fsync journal's frames (ChaCha20-Poly1305).
    pub journal: Zeroizing<[u8; 32]>,
    /// Keys where a block's shards go (`node::placement`): nobody without it can tell
    /// which peers hold a given volume's shards from the block ids.
    pub placement: Zeroizing<[u8; 32]>,
    /// Key of the ids (and cut points) of the metadata backup's chunks: never equal to a
    /// block id, and not computable without the identity.
    pub meta_chunk: DedupKey,
}

impl std::fmt::Debug for VolumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeKeys({})", self.recipient)
    }
}

impl VolumeKeys {
    /// Derives every volume key from an identity.
    pub fn derive(identity: age::x25519::Identity) -> Self {
        let secret = identity.to_string();
        let material = secret.expose_secret().as_bytes();
        let recipient = identity.to_public();
        let volume_id = blake3::derive_key(CTX_VOLUME_ID, recipient.to_string().as_bytes());
        VolumeKeys {
            dedup: DedupKey(blake3::derive_key(CTX_DEDUP, material)),
            name_mac: Zeroizing::new(blake3::derive_key(CTX_NAME_MAC, material)),
            name_enc: Zeroizing::new(blake3::derive_key(CTX_NAME_ENC, material)),
            signing_seed: Zeroizing::new(blake3::derive_key(CTX_SIGNING, material)),
            journal: Zeroizing::new(blake3::derive_key(CTX_JOURNAL, material)),
            placement: Zeroizing::new(blake3::derive_key(CTX_PLACEMENT, material)),
            meta_chunk: DedupKey(blake3::derive_key(CTX_META_CHUNK, material)),
            volume_id,
            recipient,
            identity,
        }
    }
}

/// Writes a new identity file at `path` (mode 0600), protected by `passphrase` if given.
/// Refuses to overwrite an existing file.
pub fn create_identity_file(
    path: &Path,
    passphrase: Option<&SecretString>,
) -> Result<age::x25519::Identity, KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let identity = age::x25519::Identity::generate();
    let secret = identity.to_string();
    let mut body = Zeroizing::new(format!(
        "# bitcloud identity: this file alone recovers the whole volume. Keep a copy safe.\n\
         # public key: {}\n{}\n",
        identity.to_public(),
        secret.expose_secret()
    ));
    if let Some(pass) = passphrase {
        let recipient = age::scrypt::Recipient::new(pass.clone());
        let wrapped = age::encrypt_and_armor(&recipient, body.as_bytes()).map_err(|e| {
            KeyError::Malformed {
                path: path.display().to_string(),
                why: e.to_string(),
            }
        })?;
        *body = wrapped;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(body.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(identity)
}

/// Whether the identity file at `path` is passphrase-protected.
pub fn is_protected(path: &Path) -> Result<bool, KeyError> {
    let text = read(path)?;
    Ok(text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"))
}

fn read(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Zeroizing::new(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KeyError::Missing {
            path: path.display().to_string(),
        }),
        Err(source) => Err(KeyError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Loads the identity at `path`, unwrapping it with `passphrase` if it is protected.
pub fn load_identity(
    path: &Path,
    passphrase: Option<&SecretString>,
) -> Result<age::x25519::Identity, KeyError> {
    let shown = path.display().to_string();
    let mut text = read(path)?;
    if text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----") {
        let Some(pass) = passphrase else {
            return Err(KeyError::NeedPassphrase { path: shown });
        };
        let identity = age::scrypt::Identity::new(pass.clone());
        let plain = age::decrypt(&identity, text.as_bytes()).map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                KeyError::WrongPassphrase {
                    path: shown.clone(),
                }
            }
            other => KeyError::Malformed {
                path: shown.clone(),
                why: other.to_string(),
            },
        })?;
        text = Zeroizing::new(String::from_utf8(plain).map_err(|_| KeyError::Malformed {
            path: shown.clone(),
            why: "not UTF-8".into(),
        })?);
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .ok_or_else(|| KeyError::Malformed {
            path: shown.clone(),
            why: "no AGE-SECRET-KEY line".into(),
        })?;
    age::x25519::Identity::from_str(line).map_err(|e| KeyError::Malformed {
        path: shown,
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn plain_identity_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.age");
        let id = create_identity_file(&path, None).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = load_identity(&path, None).unwrap();
        assert_eq!(back.to_public().to_string(), id.to_public().to_string());
        assert!(!is_protected(&path).unwrap());
        assert!(
            create_identity_file(&path, None).is_err(),
            "must not overwrite"
        );
    }

    #[test]
    fn protected_identity_needs_the_right_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.age");
        let pass = SecretString::from("correct horse".to_string());
        let id = create_identity_file(&path, Some(&pass)).unwrap();
        assert!(is_protected(&path).unwrap());
        assert!(
            !fs::read_to_string(&path)
                .unwrap()
                .contains("AGE-SECRET-KEY")
        );
        assert!(matches!(
            load_identity(&path, None),
            Err(KeyError::NeedPassphrase { .. })
        ));
        let wrong = SecretString::from("battery staple".to_string());
        assert!(matches!(
            load_identity(&path, Some(&wrong)),
            Err(KeyError::WrongPassphrase { .. })
        ));
        let back = load_identity(&path, Some(&pass)).unwrap();
        assert_eq!(back.to_public().to_string(), id.to_public().to_string());
    }

    #[test]
    fn derived_keys_are_stable_and_distinct() {
        let id = age::x25519::Identity::generate();
        let again = age::x25519::Identity::from_str(id.to_string().expose_secret()).unwrap();
        let a = VolumeKeys::derive(id);
        let b = VolumeKeys::derive(again);
        assert_eq!(a.dedup.0, b.dedup.0);
        assert_eq!(*a.name_mac, *b.name_mac);
        assert_ne!(a.dedup.0, *a.name_mac);
        assert_ne!(*a.name_mac, *a.name_enc);
    }
}
