//! Access times. The kernel leaves atime to a FUSE filesystem (it marks FUSE inodes
//! S_NOATIME), so the volume updates it itself on reads and directory listings, by the
//! mount's policy: `relatime` (the default, as for every Linux mount: only when atime is not
//! newer than mtime or ctime, or is a day old), `strictatime` (every read), `noatime`
//! (never), and `nodiratime` (never for directories).
//!
//! Updates are kept in memory (shown by `stat` at once) and written in one transaction at
//! the next checkpoint or fsync, as `lazytime` does on ext4: a read never pays for a metadata
//! commit, and a crash loses at most the access times since the last checkpoint.

use std::sync::atomic::Ordering;

use super::{Volume, VolumeError};
use crate::ids::InodeNo;
use crate::meta::Reader;
use crate::meta::codec::{Inode, Timestamp};

/// When reads update atime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtimePolicy {
    /// `noatime` (and every read-only mount).
    Never,
    /// `relatime`.
    #[default]
    Relative,
    /// `strictatime`.
    Strict,
}

/// The mount's atime options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtimeRules {
    pub policy: AtimePolicy,
    /// Whether directories get atime updates too (`diratime`, the default).
    pub dirs: bool,
}

impl Default for AtimeRules {
    fn default() -> AtimeRules {
        AtimeRules {
            policy: AtimePolicy::Relative,
            dirs: true,
        }
    }
}

impl AtimeRules {
    fn encode(self) -> u8 {
        let p = match self.policy {
            AtimePolicy::Never => 0,
            AtimePolicy::Relative => 1,
            AtimePolicy::Strict => 2,
        };
        p | if self.dirs { 4 } else { 0 }
    }

    fn decode(b: u8) -> AtimeRules {
        AtimeRules {
            policy: match b & 3 {
                0 => AtimePolicy::Never,
                2 => AtimePolicy::Strict,
                _ => AtimePolicy::Relative,
            },
            dirs: b & 4 != 0,
        }
    }

    /// Whether an access at `now` updates `inode`'s atime (Linux's `relatime_need_update`).
    pub fn needs_update(self, inode: &Inode, is_dir: bool, now: Timestamp) -> bool {
        if is_dir && !self.dirs {
            return false;
        }
        let a = inode.atime;
        match self.policy {
            AtimePolicy::Never => false,
            AtimePolicy::Strict => a != now,
            AtimePolicy::Relative => {
                inode.mtime >= a || inode.ctime >= a || now.secs - a.secs >= 24 * 60 * 60
            }
        }
    }
}

/// How `AtimeRules` are kept in the volume (an atomic byte, changed by SIGHUP-free remounts
/// only, read on every access).
pub(super) fn default_encoded() -> u8 {
    AtimeRules::default().encode()
}

impl Volume {
    /// Sets the mount's atime rules.
    pub fn set_atime_rules(&self, rules: AtimeRules) {
        self.atime_rules.store(rules.encode(), Ordering::Relaxed);
    }

    pub(super) fn atime_rules(&self) -> AtimeRules {
        AtimeRules::decode(self.atime_rules.load(Ordering::Relaxed))
    }

    /// Records an access of `ino` (read or listing) if the rules call for it. `inode` is its
    /// current state as the caller saw it (times still in memory overlaid).
    pub(super) fn touch_atime(&self, ino: InodeNo, inode: &Inode, is_dir: bool) {
        let mut inode = inode.clone();
        self.overlay_atime(ino, &mut inode);
        let now = Timestamp::now();
        if self.atime_rules().needs_update(&inode, is_dir, now) {
            self.atimes.lock().insert(ino, now);
            self.needs_checkpoint.store(true, Ordering::Relaxed);
        }
    }

    /// Shows an access time not yet written.
    pub(super) fn overlay_atime(&self, ino: InodeNo, inode: &mut Inode) {
        if let Some(t) = self.atimes.lock().get(&ino) {
            inode.atime = inode.atime.max(*t);
        }
    }

    /// Forgets the pending access time of `ino` (an explicit `utimens` sets it).
    pub(super) fn forget_atime(&self, ino: InodeNo) {
        self.atimes.lock().remove(&ino);
    }

    /// Writes every pending access time, in one transaction (before a checkpoint).
    pub(super) fn write_atimes(&self) -> Result<(), VolumeError> {
        let pending = std::mem::take(&mut *self.atimes.lock());
        if pending.is_empty() {
            return Ok(());
        }
        let mut tx = self.meta.write()?;
        for (ino, t) in pending {
            if let Some(mut stored) = tx.inode(ino)?
                && stored.atime < t
            {
                stored.atime = t;
                tx.put_inode(ino, &stored)?;
            }
        }
        tx.commit()?;
        self.mark_dirty();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::codec::Kind;

    fn inode(a: i64, m: i64, c: i64) -> Inode {
        let t = |secs| Timestamp { secs, nanos: 0 };
        Inode {
            kind: Kind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 0,
            rdev: 0,
            atime: t(a),
            mtime: t(m),
            ctime: t(c),
            crtime: t(0),
            stored_blocks: 0,
            reserved_blocks: 0,
            reserve_end: 0,
            parent: 0,
        }
    }

    #[test]
    fn relatime_rules() {
        let r = AtimeRules::default();
        let now = Timestamp {
            secs: 100_000,
            nanos: 0,
        };
        assert!(
            r.needs_update(&inode(50, 60, 10), false, now),
            "modified since read"
        );
        assert!(
            r.needs_update(&inode(50, 10, 60), false, now),
            "changed since read"
        );
        assert!(
            !r.needs_update(&inode(99_000, 10, 10), false, now),
            "read recently"
        );
        assert!(
            r.needs_update(&inode(10_000, 10, 10), false, now),
            "a day old"
        );
        let nodir = AtimeRules { dirs: false, ..r };
        assert!(!nodir.needs_update(&inode(50, 60, 10), true, now));
        let never = AtimeRules {
            policy: AtimePolicy::Never,
            dirs: true,
        };
        assert!(!never.needs_update(&inode(50, 60, 10), false, now));
        for rules in [r, nodir, never] {
            assert_eq!(AtimeRules::decode(rules.encode()), rules);
        }
    }
}
