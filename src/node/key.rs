//! The node's libp2p identity: an ed25519 key in its own file (`node.key`, mode 0600), made
//! on first start. It is not derived from the volume's identity: a storage node has no
//! volume, and a mount's peer id says nothing about whose volume it serves.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use libp2p::identity::Keypair;

/// Loads the key at `path`, or makes and stores a new one if there is none.
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).with_context(|| {
            format!(
                "{} is not a node key (delete it to make a new one: the node gets a new peer id)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .context("encoding the new node key")?;
            store(path, &bytes)?;
            Ok(key)
        }
        Err(e) => bail!("reading the node key {}: {e}", path.display()),
    }
}

/// Writes a node key (its protobuf encoding, checked) to `path`, replacing what is there:
/// a volume recovered from the pool takes back the peer id that owns its shards.
pub fn store(path: &Path, bytes: &[u8]) -> Result<()> {
    Keypair::from_protobuf_encoding(bytes).context("the node key to store is not valid")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("key.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        let a = load_or_create(&p).unwrap();
        let b = load_or_create(&p).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, b"junk").unwrap();
        assert!(
            load_or_create(&p)
                .unwrap_err()
                .to_string()
                .contains("not a node key")
        );
    }
}
