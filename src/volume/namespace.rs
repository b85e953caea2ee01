//! Names: lookup, creation of every inode kind, hard links, unlink, rmdir, rename (with
//! RENAME_NOREPLACE and RENAME_EXCHANGE), readdir and readlink.
//!
//! Each operation is one write transaction that reads its preconditions inside the
//! transaction, so concurrent callers are serialized by redb rather than racing. Names are
//! sealed with [`NameCipher`](crate::names::NameCipher) scoped to the parent directory.

use std::collections::HashMap;

use super::{Attr, Caller, Result, Volume, VolumeError, check_name};
use crate::ids::InodeNo;
use crate::meta::codec::{Dirent, Inode, Kind, Timestamp, decode_sealed, encode_sealed};
use crate::meta::{Reader, WriteTx};
use crate::names::{Domain, Tag};

/// How `rename` treats an existing destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the destination if it exists (plain rename(2)).
    Replace,
    /// Fail with `Exists` if the destination exists.
    NoReplace,
    /// Atomically swap source and destination; both must exist.
    Exchange,
}

/// What to create with [`Volume::create_node`].
#[derive(Clone, Copy, Debug)]
pub struct NewNode<'a> {
    pub kind: Kind,
    /// Permission bits (the kernel has applied the umask).
    pub mode: u32,
    /// Device number, for device nodes.
    pub rdev: u32,
    /// A symlink's target.
    pub target: Option<&'a [u8]>,
}

impl NewNode<'_> {
    /// A node of `kind` with `mode` and nothing else.
    pub fn of(kind: Kind, mode: u32) -> NewNode<'static> {
        NewNode {
            kind,
            mode,
            rdev: 0,
            target: None,
        }
    }
}

/// One directory entry returned by [`Volume::readdir`].
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// Opaque resume cookie: pass it back to continue after this entry.
    pub cookie: u64,
    pub ino: InodeNo,
    pub kind: Kind,
    pub name: Vec<u8>,
    /// Filled when asked for (readdirplus).
    pub attr: Option<Attr>,
}

/// Orphans deleted per transaction by `reap_orphans`: small, so an unlink waits little for
/// the write lock meanwhile.
const REAP_BATCH: usize = 64;
/// Quiet time after which orphans are deleted.
const REAP_WHEN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// Orphans that are deleted at the next checkpoint, quiet or not.
const REAP_PENDING_MAX: u64 = 20_000;

/// First cookie used for real entries ("." is 1, ".." is 2).
const FIRST_COOKIE: u64 = 3;

/// Low bits of a tag's 64-bit prefix that a cookie drops. Cookies are directory offsets
/// (`d_off`, `telldir`), and the kernel's `loff_t` is signed: a cookie at or above 2^63 makes
/// `lseek(dirfd, d_off)` fail with EINVAL. Dropping two bits leaves room for the reserved
/// cookies below [`FIRST_COOKIE`] and keeps every cookie below 2^62 + 3.
const COOKIE_SHIFT: u32 = 2;
/// The largest cookie an entry can have.
const MAX_COOKIE: u64 = (u64::MAX >> COOKIE_SHIFT) + FIRST_COOKIE;

/// The resume cookie of the entry with `tag`: its tag's order, so a listing resumed from any
/// cookie neither skips nor repeats entries, however the directory changed meanwhile.
fn cookie_of(tag: &Tag) -> u64 {
    (tag_prefix(tag) >> COOKIE_SHIFT) + FIRST_COOKIE
}

fn tag_prefix(tag: &Tag) -> u64 {
    u64::from_be_bytes(tag[..8].try_into().expect("tags are 16 bytes"))
}

/// The greatest key an entry with `cookie` can have: a listing resumes after it. (Two tags
/// that share their top 62 bits share a cookie; with 2^62 values that is vanishingly rare,
/// and such a pair is returned or skipped together.)
fn resume_after(cookie: u64) -> Tag {
    let prefix = ((cookie - FIRST_COOKIE) << COOKIE_SHIFT) | ((1 << COOKIE_SHIFT) - 1);
    let mut t = [0xffu8; 16];
    t[..8].copy_from_slice(&prefix.to_be_bytes());
    t
}

/// Inodes touched by one transaction, written back together at the end.
struct Work {
    inodes: HashMap<InodeNo, Inode>,
}

impl Work {
    fn new() -> Work {
        Work {
            inodes: HashMap::new(),
        }
    }

    fn get(&mut self, tx: &WriteTx, ino: InodeNo) -> Result<&mut Inode> {
        Ok(match self.inodes.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(tx.inode(ino)?.ok_or(VolumeError::NotFound)?)
            }
        })
    }

    fn dir(&mut self, tx: &WriteTx, ino: InodeNo) -> Result<&mut Inode> {
        let inode = self.get(tx, ino)?;
        if inode.kind != Kind::Dir {
            return Err(VolumeError::NotDir);
        }
        Ok(inode)
    }
}

impl Volume {
    fn dirent_tag(&self, parent: InodeNo, name: &[u8]) -> Tag {
        self.names.tag(Domain::DirEntry, parent.0, name)
    }

    fn sealed_dirent(
        &self,
        parent: InodeNo,
        name: &[u8],
        child: InodeNo,
        kind: Kind,
    ) -> (Tag, Dirent) {
        let (tag, ct) = self.names.seal(Domain::DirEntry, parent.0, name);
        (
            tag,
            Dirent {
                child,
                kind,
                sealed_name: ct,
            },
        )
    }

    /// Finds `name` in directory `parent`.
    pub fn lookup(&self, parent: InodeNo, name: &[u8]) -> Result<Attr> {
        let tx = self.meta.read()?;
        if name == b"." {
            // Any inode, not only directories: the kernel resolves a file handle of an inode
            // it no longer caches by looking up "." of its number (export support).
            let inode = self.live_inode(&tx, parent)?;
            return Ok(self.attr_of(parent, inode));
        }
        let dir = self.load_inode(&tx, parent)?;
        if dir.kind != Kind::Dir {
            return Err(VolumeError::NotDir);
        }
        let child = match name {
            b"." => parent,
            b".." => InodeNo(dir.parent),
            _ => {
                if name.len() > super::NAME_MAX {
                    return Err(VolumeError::NameTooLong);
                }
                tx.dirent(parent, &self.dirent_tag(parent, name))?
                    .ok_or(VolumeError::NotFound)?
                    .child
            }
        };
        let inode = self.load_inode(&tx, child)?;
        Ok(self.attr_of(child, inode))
    }

    /// Creates an inode of `kind` named `name` in `parent`. `target` is a symlink's target.
    pub fn create_node(
        &self,
        parent: InodeNo,
        name: &[u8],
        node: NewNode<'_>,
        caller: Caller,
    ) -> Result<Attr> {
        let NewNode {
            kind,
            mode,
            rdev,
            target,
        } = node;
        check_name(name)?;
        if let Some(t) = target
            && (t.len() > super::SYMLINK_MAX || t.is_empty())
        {
            return Err(if t.is_empty() {
                VolumeError::NotFound
            } else {
                VolumeError::NameTooLong
            });
        }
        let now = Timestamp::now();
        let mut tx = self.meta.write()?;
        let mut work = Work::new();
        let dir = work.dir(&tx, parent)?;
        if dir.nlink == 0 {
            return Err(VolumeError::NotFound);
        }
        let tag = self.dirent_tag(parent, name);
        if tx.dirent(parent, &tag)?.is_some() {
            return Err(VolumeError::Exists);
        }
        let dir_sgid = dir.perm & 0o2000 != 0;
        let gid = if dir_sgid { dir.gid } else { caller.gid };
        let mut perm = (mode & 0o7777) as u16;
        if kind == Kind::Dir {
            if dir_sgid {
                perm |= 0o2000;
            }
            dir.nlink += 1;
        }
        dir.mtime = now;
        dir.ctime = now;
        let ino = tx.alloc_ino()?;
        let inode = Inode {
            kind,
            perm,
            uid: caller.uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: target.map(|t| t.len() as u64).unwrap_or(0),
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            stored_blocks: 0,
            reserved_blocks: 0,
            reserve_end: 0,
            parent: if kind == Kind::Dir { parent.0 } else { 0 },
        };
        tx.put_inode(ino, &inode)?;
        let (tag, dirent) = self.sealed_dirent(parent, name, ino, kind);
        tx.put_dirent(parent, &tag, &dirent)?;
        if let Some(t) = target {
            let (ttag, ct) = self.names.seal(Domain::Symlink, ino.0, t);
            tx.put_symlink(ino, &encode_sealed(&ttag, &ct))?;
        }
        for (i, node) in &work.inodes {
            tx.put_inode(*i, node)?;
        }
        tx.commit()?;
        self.mark_dirty();
        self.note_fresh(ino);
        Ok(self.attr_of(ino, inode))
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: InodeNo) -> Result<Vec<u8>> {
        let tx = self.meta.read()?;
        let inode = self.load_inode(&tx, ino)?;
        if inode.kind != Kind::Symlink {
            return Err(VolumeError::Invalid("not a symlink"));
        }
        let stored = tx.symlink(ino)?.ok_or(VolumeError::NotFound)?;
        let (tag, ct) = decode_sealed(&stored)?;
        Ok(self.names.open(Domain::Symlink, ino.0, &tag, ct)?)
    }

    /// Adds hard link `newname` in `newparent` to `ino`.
    pub fn link(&self, ino: InodeNo, newparent: InodeNo, newname: &[u8]) -> Result<Attr> {
        check_name(newname)?;
        let now = Timestamp::now();
        let mut tx = self.meta.write()?;
        let mut work = Work::new();
        let dir = work.dir(&tx, newparent)?;
        if dir.nlink == 0 {
            return Err(VolumeError::NotFound);
        }
        dir.mtime = now;
        dir.ctime = now;
        let tag = self.dirent_tag(newparent, newname);
        if tx.dirent(newparent, &tag)?.is_some() {
            return Err(VolumeError::Exists);
        }
        let inode = work.get(&tx, ino)?;
        if inode.kind == Kind::Dir {
            return Err(VolumeError::NotPermitted("hard links to directories"));
        }
        if inode.nlink == 0 {
            return Err(VolumeError::NotFound);
        }
        if inode.nlink >= 65_000 {
            return Err(VolumeError::TooManyLinks);
        }
        inode.nlink += 1;
        inode.ctime = now;
        let kind = inode.kind;
        let (tag, dirent) = self.sealed_dirent(newparent, newname, ino, kind);
        tx.put_dirent(newparent, &tag, &dirent)?;
        for (i, node) in &work.inodes {
            tx.put_inode(*i, node)?;
        }
        let inode = work.inodes[&ino].clone();
        tx.commit()?;
        self.mark_dirty();
        self.note_fresh(ino);
        Ok(self.attr_of(ino, inode))
    }

    /// Drops one link of `ino`. At zero it becomes an *orphan*: deleted by the next
    /// [`reap_orphans`](Volume::reap_orphans) once nothing holds it open (or at the next
    /// mount after a crash). Deleting a file's block references, xattrs and the rest in the
    /// unlink itself cost it another table and most of its time; batched, it is cheap.
    fn drop_link(
        &self,
        tx: &mut WriteTx,
        work: &mut Work,
        ino: InodeNo,
        now: Timestamp,
    ) -> Result<()> {
        let inode = work.get(tx, ino)?;
        inode.ctime = now;
        if inode.kind == Kind::Dir {
            inode.nlink = 0;
        } else {
            inode.nlink = inode.nlink.saturating_sub(1);
        }
        if inode.nlink == 0 {
            tx.add_orphan(ino)?;
            self.orphans_pending
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Deletes every orphan nothing holds open, in batches of one transaction each. Returns
    /// how many were deleted. The checkpoint calls it (through [`reap_when_due`]), so the
    /// blocks of the deleted inodes are collected by that same checkpoint.
    ///
    /// [`reap_when_due`]: Volume::reap_when_due
    pub fn reap_orphans(&self) -> Result<u64> {
        use std::sync::atomic::Ordering;
        if self.orphans_pending.swap(0, Ordering::Relaxed) == 0 {
            return Ok(0);
        }
        let mut reaped = 0;
        let orphans = self.meta.read()?.orphan_list()?;
        for batch in orphans.chunks(REAP_BATCH) {
            let mut tx = self.meta.write()?;
            let mut n = 0;
            for &ino in batch {
                // Checked under the write transaction: an open after it sees the inode gone.
                if self.is_open(ino) || self.open_dirs.lock().contains_key(&ino) {
                    continue;
                }
                if tx.inode(ino)?.is_none_or(|i| i.nlink == 0) {
                    tx.remove_inode(ino)?;
                    n += 1;
                }
            }
            tx.commit()?;
            self.mark_dirty();
            reaped += n;
        }
        Ok(reaped)
    }

    /// Whether unlinked inodes wait for deletion (the daemon's tick checkpoints for them).
    pub fn orphans_waiting(&self) -> bool {
        self.orphans_pending
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    }

    /// [`reap_orphans`](Volume::reap_orphans) when it will not slow anyone down: once no
    /// namespace change came for [`REAP_WHEN_IDLE`], or when many orphans wait (so they
    /// cannot pile up under a steady load), or when `now` is asked (unmount, full disk).
    /// Deleting is then out of the way of a burst of unlinks (XFS defers inode inactivation
    /// to background workers for the same reason).
    pub fn reap_when_due(&self, now: bool) -> Result<u64> {
        use std::sync::atomic::Ordering;
        let pending = self.orphans_pending.load(Ordering::Relaxed);
        if pending == 0 {
            return Ok(0);
        }
        let idle = self.last_change.lock().elapsed() >= REAP_WHEN_IDLE;
        if now || idle || pending >= REAP_PENDING_MAX {
            return self.reap_orphans();
        }
        Ok(0)
    }

    fn remove_entry(&self, parent: InodeNo, name: &[u8], want_dir: bool) -> Result<()> {
        if name.len() > super::NAME_MAX {
            return Err(VolumeError::NameTooLong);
        }
        let now = Timestamp::now();
        let mut tx = self.meta.write()?;
        let mut work = Work::new();
        work.dir(&tx, parent)?;
        let tag = self.dirent_tag(parent, name);
        let entry = tx.dirent(parent, &tag)?.ok_or(VolumeError::NotFound)?;
        let is_dir = entry.kind == Kind::Dir;
        if want_dir && !is_dir {
            return Err(VolumeError::NotDir);
        }
        if !want_dir && is_dir {
            return Err(VolumeError::IsDir);
        }
        if is_dir && !tx.list_dir(entry.child, None, 1)?.is_empty() {
            return Err(VolumeError::NotEmpty);
        }
        tx.remove_dirent(parent, &tag)?;
        let dir = work.get(&tx, parent)?;
        dir.mtime = now;
        dir.ctime = now;
        if is_dir {
            dir.nlink = dir.nlink.saturating_sub(1);
        }
        self.drop_link(&mut tx, &mut work, entry.child, now)?;
        for (i, node) in &work.inodes {
            tx.put_inode(*i, node)?;
        }
        tx.commit()?;
        self.mark_dirty();
        Ok(())
    }

    /// Removes a non-directory entry.
    pub fn unlink(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        self.remove_entry(parent, name, false)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(VolumeError::Invalid("rmdir of ."));
        }
        if name == b".." {
            return Err(VolumeError::NotEmpty);
        }
        self.remove_entry(parent, name, true)
    }

    /// Renames `parent/name` to `newparent/newname`.
    pub fn rename(
        &self,
        parent: InodeNo,
        name: &[u8],
        newparent: InodeNo,
        newname: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        check_name(name)?;
        check_name(newname)?;
        let now = Timestamp::now();
        let mut tx = self.meta.write()?;
        let mut work = Work::new();
        work.dir(&tx, parent)?;
        work.dir(&tx, newparent)?;
        let src_tag = self.dirent_tag(parent, name);
        let dst_tag = self.dirent_tag(newparent, newname);
        let src = tx.dirent(parent, &src_tag)?.ok_or(VolumeError::NotFound)?;
        let dst = tx.dirent(newparent, &dst_tag)?;
        let dst_child = dst.as_ref().map(|d| d.child);
        if src.kind == Kind::Dir && self.is_ancestor(&tx, src.child, newparent)? {
            return Err(VolumeError::Invalid("cannot move a directory into itself"));
        }
        match (mode, &dst) {
            (RenameMode::Exchange, None) => return Err(VolumeError::NotFound),
            (RenameMode::NoReplace, Some(_)) => return Err(VolumeError::Exists),
            _ => {}
        }
        if let Some(d) = &dst
            && d.child == src.child
        {
            return Ok(()); // two links to one inode: rename(2) does nothing
        }
        if mode == RenameMode::Exchange {
            let dst = dst.expect("checked above");
            if dst.kind == Kind::Dir && self.is_ancestor(&tx, dst.child, parent)? {
                return Err(VolumeError::Invalid("cannot move a directory into itself"));
            }
            let (t1, d1) = self.sealed_dirent(newparent, newname, src.child, src.kind);
            let (t2, d2) = self.sealed_dirent(parent, name, dst.child, dst.kind);
            tx.put_dirent(newparent, &t1, &d1)?;
            tx.put_dirent(parent, &t2, &d2)?;
            self.reparent(&tx, &mut work, src.child, parent, newparent, now)?;
            self.reparent(&tx, &mut work, dst.child, newparent, parent, now)?;
        } else {
            if let Some(d) = &dst {
                match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                    (true, false) => return Err(VolumeError::NotDir),
                    (false, true) => return Err(VolumeError::IsDir),
                    (true, true) if !tx.list_dir(d.child, None, 1)?.is_empty() => {
                        return Err(VolumeError::NotEmpty);
                    }
                    _ => {}
                }
                if d.kind == Kind::Dir {
                    let np = work.get(&tx, newparent)?;
                    np.nlink = np.nlink.saturating_sub(1);
                }
                self.drop_link(&mut tx, &mut work, d.child, now)?;
            }
            tx.remove_dirent(parent, &src_tag)?;
            let (t1, d1) = self.sealed_dirent(newparent, newname, src.child, src.kind);
            tx.put_dirent(newparent, &t1, &d1)?;
            self.reparent(&tx, &mut work, src.child, parent, newparent, now)?;
        }
        for p in [parent, newparent] {
            let dir = work.get(&tx, p)?;
            dir.mtime = now;
            dir.ctime = now;
        }
        for (i, node) in &work.inodes {
            tx.put_inode(*i, node)?;
        }
        tx.commit()?;
        self.mark_dirty();
        // An fsync of a renamed file makes the rename durable too (as on ext4, and as
        // "write a temp file, fsync, rename" expects): its next fsync is the full one.
        self.note_fresh(src.child);
        if let (RenameMode::Exchange, Some(d)) = (mode, dst_child) {
            self.note_fresh(d);
        }
        Ok(())
    }

    /// Records that `child` moved from directory `from` to `to` (ctime, and for directories
    /// the parent pointer and both parents' link counts).
    fn reparent(
        &self,
        tx: &WriteTx,
        work: &mut Work,
        child: InodeNo,
        from: InodeNo,
        to: InodeNo,
        now: Timestamp,
    ) -> Result<()> {
        let inode = work.get(tx, child)?;
        inode.ctime = now;
        if inode.kind == Kind::Dir && from != to {
            inode.parent = to.0;
            let f = work.get(tx, from)?;
            f.nlink = f.nlink.saturating_sub(1);
            work.get(tx, to)?.nlink += 1;
        }
        Ok(())
    }

    /// Whether directory `dir` is `node` or one of its ancestors.
    fn is_ancestor(&self, tx: &WriteTx, dir: InodeNo, mut node: InodeNo) -> Result<bool> {
        for _ in 0..4096 {
            if node == dir {
                return Ok(true);
            }
            if node == InodeNo::ROOT {
                return Ok(false);
            }
            node = InodeNo(tx.inode(node)?.ok_or(VolumeError::NotFound)?.parent);
        }
        Err(VolumeError::Invalid("directory tree too deep or looped"))
    }

    /// Entries of directory `ino` after `cookie` (0 = from the start; "." and ".." are the
    /// caller's), at most `limit`, with attributes if `plus`.
    pub fn readdir(
        &self,
        ino: InodeNo,
        cookie: u64,
        limit: usize,
        plus: bool,
    ) -> Result<Vec<DirEntry>> {
        let tx = self.meta.read()?;
        let dir = self.load_inode(&tx, ino)?;
        if dir.kind != Kind::Dir {
            return Err(VolumeError::NotDir);
        }
        let after = (cookie >= FIRST_COOKIE).then(|| resume_after(cookie.min(MAX_COOKIE)));
        if cookie < FIRST_COOKIE {
            // A listing starts: an access of the directory.
            self.touch_atime(ino, &dir, true);
        }
        let rows = tx.list_dir(ino, after.as_ref(), limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for (tag, d) in rows {
            let name = self
                .names
                .open(Domain::DirEntry, ino.0, &tag, &d.sealed_name)?;
            let attr = if plus {
                Some(self.attr_of(d.child, self.load_inode(&tx, d.child)?))
            } else {
                None
            };
            out.push(DirEntry {
                cookie: cookie_of(&tag),
                ino: d.child,
                kind: d.kind,
                name,
                attr,
            });
        }
        Ok(out)
    }

    /// Opens directory `ino` for reading. While it is open it outlives its removal: `fstat`
    /// still works (with nlink 0), and the inode is freed at the last [`releasedir`].
    ///
    /// [`releasedir`]: Volume::releasedir
    pub fn opendir(&self, ino: InodeNo) -> Result<()> {
        // Count first, check after: a removal that runs in between sees it open.
        let already_open = {
            let mut open = self.open_dirs.lock();
            let n = open.entry(ino).or_insert(0);
            *n += 1;
            *n > 1
        };
        let checked = self.getattr(ino).and_then(|a| match a.inode.kind {
            // Removed and held by nobody before us (a stale file handle).
            _ if a.inode.nlink == 0 && !already_open => Err(VolumeError::NotFound),
            Kind::Dir => Ok(()),
            _ => Err(VolumeError::NotDir),
        });
        if checked.is_err() {
            self.forget_open_dir(ino);
        }
        checked
    }

    /// Closes a handle of directory `ino`; the last close frees it if it was removed.
    pub fn releasedir(&self, ino: InodeNo) -> Result<()> {
        if !self.forget_open_dir(ino) {
            return Ok(());
        }
        // Removed while open: the removal parked it as an orphan. Take the write transaction
        // first, then re-check that nobody opened it meanwhile.
        let mut tx = self.meta.write()?;
        if self.open_dirs.lock().contains_key(&ino) {
            return Ok(());
        }
        if tx.inode(ino)?.is_some_and(|i| i.nlink == 0) {
            tx.remove_inode(ino)?;
            tx.commit()?;
            self.mark_dirty();
        }
        Ok(())
    }

    /// Drops one open count of `ino`; whether it was the last.
    fn forget_open_dir(&self, ino: InodeNo) -> bool {
        let mut open = self.open_dirs.lock();
        match open.get_mut(&ino) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                open.remove(&ino);
                true
            }
            None => false,
        }
    }

    /// The parent of directory `ino` (for "..").
    pub fn parent_of(&self, ino: InodeNo) -> Result<InodeNo> {
        let inode = self.load_inode(&self.meta.read()?, ino)?;
        Ok(InodeNo(inode.parent.max(1)))
    }
}
