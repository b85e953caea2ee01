//! Extended attributes. Names and values are sealed with the name cipher scoped to the inode
//! (so they are as private as file names); the row key is the name's tag, so lookups are one
//! index probe. `system.*` (POSIX ACLs) is refused rather than stored and ignored.

use super::{Result, Volume, VolumeError};
use crate::ids::InodeNo;
use crate::meta::Reader;
use crate::meta::codec::Timestamp;
use crate::names::{Domain, TAG_LEN};

/// Largest value accepted, as the Linux VFS (XATTR_SIZE_MAX).
pub const XATTR_VALUE_MAX: usize = 65536;
/// Longest name, as the Linux VFS (XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;

/// A read-only virtual attribute telling where a file's data stands: `writing` (buffered in
/// memory, not yet sealed), `local` (sealed on this machine only), `uploading` (waiting for
/// the pool), `degraded` (in the pool, readable, short of full redundancy), `redundant`
/// (every shard placed). See `remote::FileState`.
/// Not listed by listxattr, so copying tools do not try to copy it.
pub const STATE_XATTR: &[u8] = b"user.bitcloud.state";

/// What `setxattr` does when the attribute exists or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    Any,
    /// Fail with `Exists` if present (XATTR_CREATE).
    Create,
    /// Fail with `NoXattr` if absent (XATTR_REPLACE).
    Replace,
}

fn encode(name_ct: &[u8], value_tag: &[u8; TAG_LEN], value_ct: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + name_ct.len() + TAG_LEN + value_ct.len());
    v.extend_from_slice(&(name_ct.len() as u16).to_le_bytes());
    v.extend_from_slice(name_ct);
    v.extend_from_slice(value_tag);
    v.extend_from_slice(value_ct);
    v
}

/// Whether a stored xattr record decodes and both its sealed name and value authenticate
/// (for `fsck`).
pub(super) fn authentic(
    names: &crate::names::NameCipher,
    ino: InodeNo,
    tag: &[u8; TAG_LEN],
    stored: &[u8],
) -> bool {
    decode(stored).is_ok_and(|(name_ct, vtag, vct)| {
        names.open(Domain::XattrName, ino.0, tag, name_ct).is_ok()
            && names.open(Domain::XattrValue, ino.0, &vtag, vct).is_ok()
    })
}

fn decode(v: &[u8]) -> Result<(&[u8], [u8; TAG_LEN], &[u8])> {
    let bad = || VolumeError::Invalid("damaged xattr record");
    let n = u16::from_le_bytes(v.get(..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let name = v.get(2..2 + n).ok_or_else(bad)?;
    let tag: [u8; TAG_LEN] = v
        .get(2 + n..2 + n + TAG_LEN)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    Ok((name, tag, &v[2 + n + TAG_LEN..]))
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(VolumeError::Invalid("empty xattr name"));
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(VolumeError::Range {
            needed: XATTR_NAME_MAX,
        });
    }
    if name.starts_with(b"system.") {
        return Err(VolumeError::NotSupported("system.* xattrs (POSIX ACLs)"));
    }
    Ok(())
}

impl Volume {
    /// Sets xattr `name` of `ino`.
    pub fn setxattr(&self, ino: InodeNo, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        check_name(name)?;
        if name == STATE_XATTR {
            return Err(VolumeError::NotPermitted(
                "user.bitcloud.state is read-only",
            ));
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(VolumeError::Range {
                needed: XATTR_VALUE_MAX,
            });
        }
        let mut tx = self.meta.write()?;
        let mut inode = self.load_inode(&tx, ino)?;
        let tag = self.names.tag(Domain::XattrName, ino.0, name);
        let exists = tx.xattr(ino, &tag)?.is_some();
        match (mode, exists) {
            (XattrMode::Create, true) => return Err(VolumeError::Exists),
            (XattrMode::Replace, false) => return Err(VolumeError::NoXattr),
            _ => {}
        }
        let (_, name_ct) = self.names.seal(Domain::XattrName, ino.0, name);
        let (vtag, vct) = self.names.seal(Domain::XattrValue, ino.0, value);
        tx.put_xattr(ino, &tag, &encode(&name_ct, &vtag, &vct))?;
        inode.ctime = Timestamp::now();
        tx.put_inode(ino, &inode)?;
        tx.commit()?;
        self.mark_dirty();
        self.note_fresh(ino);
        Ok(())
    }

    /// The value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: InodeNo, name: &[u8]) -> Result<Vec<u8>> {
        if name == STATE_XATTR {
            self.getattr(ino)?;
            return Ok(self.file_state(ino)?.as_str().as_bytes().to_vec());
        }
        if name.starts_with(b"system.") {
            return Err(VolumeError::NoXattr);
        }
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(VolumeError::Range {
                needed: XATTR_NAME_MAX,
            });
        }
        let tx = self.meta.read()?;
        self.load_inode(&tx, ino)?;
        let tag = self.names.tag(Domain::XattrName, ino.0, name);
        let stored = tx.xattr(ino, &tag)?.ok_or(VolumeError::NoXattr)?;
        let (_, vtag, vct) = decode(&stored)?;
        Ok(self.names.open(Domain::XattrValue, ino.0, &vtag, vct)?)
    }

    /// Every xattr name of `ino`, each followed by a NUL byte (listxattr(2) format).
    pub fn listxattr(&self, ino: InodeNo) -> Result<Vec<u8>> {
        let tx = self.meta.read()?;
        self.load_inode(&tx, ino)?;
        let mut out = Vec::new();
        for (tag, stored) in tx.xattrs(ino)? {
            let (name_ct, _, _) = decode(&stored)?;
            out.extend_from_slice(&self.names.open(Domain::XattrName, ino.0, &tag, name_ct)?);
            out.push(0);
        }
        Ok(out)
    }

    /// Removes xattr `name` of `ino`.
    pub fn removexattr(&self, ino: InodeNo, name: &[u8]) -> Result<()> {
        if name.starts_with(b"system.") {
            return Err(VolumeError::NoXattr);
        }
        let mut tx = self.meta.write()?;
        let mut inode = self.load_inode(&tx, ino)?;
        let tag = self.names.tag(Domain::XattrName, ino.0, name);
        if !tx.remove_xattr(ino, &tag)? {
            return Err(VolumeError::NoXattr);
        }
        inode.ctime = Timestamp::now();
        tx.put_inode(ino, &inode)?;
        tx.commit()?;
        self.mark_dirty();
        self.note_fresh(ino);
        Ok(())
    }
}
