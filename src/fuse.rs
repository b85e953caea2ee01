//! The FUSE adapter: implements `fuser::Filesystem` on top of [`Volume`] and does nothing
//! else. It converts arguments, replies, and maps every [`VolumeError`] to one errno in
//! [`errno_of`] (an exhaustive match: a new variant does not compile until it has an errno).
//! Each failed request is logged once here, with its op, inode and error chain.
//!
//! Caching: the kernel caches attributes for [`ATTR_TTL`] and names for [`ENTRY_TTL`]. Every
//! reply to an operation that changes link counts or ctimes carries fresh attributes, and the
//! kernel invalidates the attributes of inodes touched by link/unlink/rename itself.
//!
//! This file is the one `impl Filesystem` (a trait impl cannot be split across files, hence
//! its ~600 lines); the conversions it uses are in `fuse/convert.rs`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::ids::InodeNo as Ino;
use crate::meta::codec::{Kind, Timestamp};
use crate::volume::{NewNode, RenameMode, SetAttr, Volume, Wait, XattrMode};

mod convert;
mod offload;

pub use convert::errno_of;
use convert::{caller, fail, file_type, generation, time_set, to_fuse};

/// How long the kernel may cache attributes. Short: the volume changes some behind the
/// kernel's back (st_blocks as blocks are sealed, access times).
pub const ATTR_TTL: Duration = Duration::from_secs(1);
/// How long the kernel may cache a name's lookup. Names change only through this mount, so
/// the kernel sees every change and drops or updates its entries itself; a long lifetime
/// saves a LOOKUP round trip per path walked (measured: 40-60% of the unlinks of a large
/// directory needed one with 1 s).
pub const ENTRY_TTL: Duration = Duration::from_secs(60);

/// Threads answering reads that wait for the pool (each waits at most
/// `pool.read_timeout`).
const POOL_READ_THREADS: usize = 32;
/// Threads answering requests that wait on this machine (fsync, seals, whole-block loads):
/// enough for concurrent fsyncs to share one journal write.
const LOCAL_WAIT_THREADS: usize = 16;

/// The filesystem served to the kernel.
pub struct BitcloudFs {
    volume: Arc<Volume>,
    /// Requests that wait for the pool.
    pool_waits: offload::Offload,
    /// Requests that wait on this machine.
    local_waits: offload::Offload,
}

impl std::fmt::Debug for BitcloudFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BitcloudFs")
    }
}

impl BitcloudFs {
    pub fn new(volume: Arc<Volume>) -> BitcloudFs {
        BitcloudFs {
            volume,
            pool_waits: offload::Offload::new("bitcloud-poolread", POOL_READ_THREADS, 256),
            local_waits: offload::Offload::new("bitcloud-wait", LOCAL_WAIT_THREADS, 256),
        }
    }

    /// Runs `answer` here if it is quick, else on the threads for what it may wait for.
    fn answer(&self, wait: Wait, answer: impl FnOnce(&Volume) + Send + 'static) {
        let pool = match wait {
            Wait::Quick => return answer(&self.volume),
            Wait::Local => &self.local_waits,
            Wait::Pool => &self.pool_waits,
        };
        let volume = self.volume.clone();
        pool.run(move || answer(&volume));
    }
}

impl Filesystem for BitcloudFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // File handles (NFS re-export, open_by_handle_at): the kernel may look up "." of
            // any inode number and ".." of a directory; generations come from `generation`.
            InitFlags::FUSE_EXPORT_SUPPORT,
        ] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    /// The session has ended: the requests still being answered elsewhere (a release
    /// waiting for its seals, a read waiting for the pool) finish before the volume's
    /// final flush.
    fn destroy(&mut self) {
        self.local_waits.finish();
        self.pool_waits.finish();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.volume.lookup(Ino(parent.0), name.as_bytes()) {
            Ok(a) => reply.entry_with_ttls(&ATTR_TTL, &ENTRY_TTL, &to_fuse(&a), generation(&a)),
            Err(e) => reply.error(fail("lookup", parent.0, &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.volume.getattr(Ino(ino.0)) {
            Ok(a) => reply.attr(&ATTR_TTL, &to_fuse(&a)),
            Err(e) => reply.error(fail("getattr", ino.0, &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let req = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(Timestamp::from_system),
        };
        // A truncation may read in and re-seal its new last block.
        let wait = if size.is_some() {
            Wait::Local
        } else {
            Wait::Quick
        };
        self.answer(wait, move |v| match v.setattr(Ino(ino.0), req) {
            Ok(a) => reply.attr(&ATTR_TTL, &to_fuse(&a)),
            Err(e) => reply.error(fail("setattr", ino.0, &e)),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.volume.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(fail("readlink", ino.0, &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            libc::S_IFDIR => Kind::Dir,
            _ => return reply.error(Errno::EINVAL),
        };
        match self.volume.create_node(
            Ino(parent.0),
            name.as_bytes(),
            NewNode {
                kind,
                mode,
                rdev,
                target: None,
            },
            caller(req),
        ) {
            Ok(a) => reply.entry_with_ttls(&ATTR_TTL, &ENTRY_TTL, &to_fuse(&a), generation(&a)),
            Err(e) => reply.error(fail("mknod", parent.0, &e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.volume.create_node(
            Ino(parent.0),
            name.as_bytes(),
            NewNode {
                kind: Kind::Dir,
                mode,
                rdev: 0,
                target: None,
            },
            caller(req),
        ) {
            Ok(a) => reply.entry_with_ttls(&ATTR_TTL, &ENTRY_TTL, &to_fuse(&a), generation(&a)),
            Err(e) => reply.error(fail("mkdir", parent.0, &e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.volume.unlink(Ino(parent.0), name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("unlink", parent.0, &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.volume.rmdir(Ino(parent.0), name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rmdir", parent.0, &e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        match self.volume.create_node(
            Ino(parent.0),
            link_name.as_bytes(),
            NewNode {
                kind: Kind::Symlink,
                mode: 0o777,
                rdev: 0,
                target: Some(target),
            },
            caller(req),
        ) {
            Ok(a) => reply.entry_with_ttls(&ATTR_TTL, &ENTRY_TTL, &to_fuse(&a), generation(&a)),
            Err(e) => reply.error(fail("symlink", parent.0, &e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL);
        };
        match self.volume.rename(
            Ino(parent.0),
            name.as_bytes(),
            Ino(newparent.0),
            newname.as_bytes(),
            mode,
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rename", parent.0, &e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self
            .volume
            .link(Ino(ino.0), Ino(newparent.0), newname.as_bytes())
        {
            Ok(a) => reply.entry_with_ttls(&ATTR_TTL, &ENTRY_TTL, &to_fuse(&a), generation(&a)),
            Err(e) => reply.error(fail("link", ino.0, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let access = flags.0 & libc::O_ACCMODE;
        let open = crate::volume::OpenFlags {
            read: access != libc::O_WRONLY,
            write: access != libc::O_RDONLY,
        };
        match self.volume.open(Ino(ino.0), open) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(fail("open", ino.0, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let wait = self.volume.read_wait(Ino(ino.0), offset, size as u64);
        self.answer(wait, move |v| match v.read(Ino(ino.0), offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(fail("read", ino.0, &e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let write = move |v: &Volume, data: &[u8], reply: ReplyWrite| match v.write(
            Ino(ino.0),
            offset,
            data,
        ) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(fail("write", ino.0, &e)),
        };
        match self
            .volume
            .write_wait(Ino(ino.0), offset, data.len() as u64)
        {
            Wait::Quick => write(&self.volume, data, reply),
            // The request's buffer is the reader's: a write answered elsewhere takes a copy.
            wait => {
                let data = data.to_vec();
                self.answer(wait, move |v| write(v, &data, reply));
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let wait = self.volume.close_wait(Ino(ino.0));
        self.answer(wait, move |v| match v.close(Ino(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("flush", ino.0, &e)),
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let wait = self.volume.release_wait(fh.0);
        self.answer(wait, move |v| match v.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("release", ino.0, &e)),
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.answer(Wait::Local, move |v| match v.fsync(Ino(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fsync", ino.0, &e)),
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.volume.opendir(Ino(ino.0)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", ino.0, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match self.volume.releasedir(Ino(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("releasedir", ino.0, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = Ino(ino.0);
        if offset == 0 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset <= 1 {
            let parent = match self.volume.parent_of(dir) {
                Ok(p) => p,
                Err(e) => return reply.error(fail("readdir", ino.0, &e)),
            };
            if reply.add(INodeNo(parent.0), 2, FileType::Directory, "..") {
                return reply.ok();
            }
        }
        let mut cookie = offset;
        loop {
            let entries = match self.volume.readdir(dir, cookie, 128, false) {
                Ok(e) => e,
                Err(e) => return reply.error(fail("readdir", ino.0, &e)),
            };
            if entries.is_empty() {
                return reply.ok();
            }
            for e in entries {
                if reply.add(
                    INodeNo(e.ino.0),
                    e.cookie,
                    file_type(e.kind),
                    OsStr::from_bytes(&e.name),
                ) {
                    return reply.ok();
                }
                cookie = e.cookie;
            }
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = Ino(ino.0);
        if offset <= 1 {
            let me = match self.volume.getattr(dir) {
                Ok(a) => a,
                Err(e) => return reply.error(fail("readdirplus", ino.0, &e)),
            };
            if offset == 0 && reply.add(ino, 1, ".", &ATTR_TTL, &to_fuse(&me), generation(&me)) {
                return reply.ok();
            }
            let parent = match self
                .volume
                .parent_of(dir)
                .and_then(|p| self.volume.getattr(p))
            {
                Ok(a) => a,
                Err(e) => return reply.error(fail("readdirplus", ino.0, &e)),
            };
            if reply.add(
                INodeNo(parent.ino.0),
                2,
                "..",
                &ATTR_TTL,
                &to_fuse(&parent),
                generation(&parent),
            ) {
                return reply.ok();
            }
        }
        let mut cookie = offset;
        loop {
            let entries = match self.volume.readdir(dir, cookie, 128, true) {
                Ok(e) => e,
                Err(e) => return reply.error(fail("readdirplus", ino.0, &e)),
            };
            if entries.is_empty() {
                return reply.ok();
            }
            for e in entries {
                let a = e.attr.as_ref().expect("readdir with plus fills attrs");
                if reply.add(
                    INodeNo(e.ino.0),
                    e.cookie,
                    OsStr::from_bytes(&e.name),
                    &ATTR_TTL,
                    &to_fuse(a),
                    generation(a),
                ) {
                    return reply.ok();
                }
                cookie = e.cookie;
            }
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.answer(Wait::Local, move |v| match v.make_durable() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fail("fsyncdir", ino.0, &e)),
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.volume.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_avail,
                s.files,
                s.files_free,
                s.block_size,
                crate::volume::NAME_MAX as u32,
                s.block_size,
            ),
            Err(e) => reply.error(fail("statfs", ino.0, &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        match self
            .volume
            .setxattr(Ino(ino.0), name.as_bytes(), value, mode)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("setxattr", ino.0, &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.volume.getxattr(Ino(ino.0), name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(Errno::from_i32(libc::ERANGE)),
            Err(e) => reply.error(fail("getxattr", ino.0, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.volume.listxattr(Ino(ino.0)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(Errno::from_i32(libc::ERANGE)),
            Err(e) => reply.error(fail("listxattr", ino.0, &e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.volume.removexattr(Ino(ino.0), name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("removexattr", ino.0, &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions); this only says it exists.
        match self.volume.getattr(Ino(ino.0)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fail("access", ino.0, &e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let v = &self.volume;
        let created = v
            .create_node(
                Ino(parent.0),
                name.as_bytes(),
                NewNode {
                    kind: Kind::File,
                    mode,
                    rdev: 0,
                    target: None,
                },
                caller(req),
            )
            .and_then(|a| Ok((v.open(a.ino, crate::volume::OpenFlags::write_only())?, a)));
        match created {
            // One lifetime for name and attributes here (fuser): the name's. The attributes
            // of a new, empty file change behind the kernel's back only when it is written,
            // and the kernel drops them itself after a write.
            Ok((fh, a)) => reply.created(
                &ENTRY_TTL,
                &to_fuse(&a),
                generation(&a),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(fail("create", parent.0, &e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let who = caller(req);
        self.answer(Wait::Local, move |v| {
            match v.fallocate(Ino(ino.0), offset, length, mode, who) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("fallocate", ino.0, &e)),
            }
        });
    }
}
