//! Conversions between the volume's types and fuser's: the one errno table ([`errno_of`]),
//! attributes, file types and times, the caller of a request, and the log line of a failed
//! request.

use fuser::{Errno, FileAttr, FileType, Generation, INodeNo, Request, TimeOrNow};

use crate::meta::codec::{Kind, Timestamp};
use crate::volume::{Attr, Caller, TimeSet, VolumeError};

/// The errno for each volume error.
pub fn errno_of(e: &VolumeError) -> Errno {
    match e {
        VolumeError::NotFound => Errno::ENOENT,
        VolumeError::Exists => Errno::EEXIST,
        VolumeError::NotDir => Errno::ENOTDIR,
        VolumeError::IsDir => Errno::EISDIR,
        VolumeError::NotEmpty => Errno::ENOTEMPTY,
        VolumeError::NameTooLong => Errno::ENAMETOOLONG,
        VolumeError::Invalid(_) => Errno::EINVAL,
        VolumeError::NotPermitted(_) => Errno::EPERM,
        VolumeError::NoXattr => Errno::from_i32(libc::ENODATA),
        VolumeError::Range { .. } => Errno::from_i32(libc::ERANGE),
        VolumeError::NotSupported(_) => Errno::from_i32(libc::EOPNOTSUPP),
        VolumeError::FileTooBig => Errno::from_i32(libc::EFBIG),
        VolumeError::TooManyLinks => Errno::from_i32(libc::EMLINK),
        VolumeError::NoSpace => Errno::from_i32(libc::ENOSPC),
        VolumeError::BadHandle => Errno::EBADF,
        VolumeError::Corrupt { .. } => Errno::EIO,
        VolumeError::Meta(_) => Errno::EIO,
        VolumeError::Store(_) => Errno::EIO,
        VolumeError::Seal(_) => Errno::EIO,
        VolumeError::ShuttingDown => Errno::EIO,
        VolumeError::Unavailable { .. } => Errno::EIO,
        VolumeError::PoolTimeout { .. } => Errno::EIO,
    }
}

pub(super) fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

pub(super) fn to_fuse(a: &Attr) -> FileAttr {
    let i = &a.inode;
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: i.size,
        blocks: a.blocks512,
        atime: i.atime.to_system(),
        mtime: i.mtime.to_system(),
        ctime: i.ctime.to_system(),
        crtime: i.crtime.to_system(),
        kind: file_type(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The generation the kernel puts in file handles (NFS export, `open_by_handle_at`) beside
/// the inode number. Derived from the creation time, so it is the same after a remount and
/// differs for an inode number reused after a crash rolled the allocator back. The kernel
/// keeps 32 bits.
pub(super) fn generation(a: &Attr) -> Generation {
    let c = a.inode.crtime;
    let mixed = (c.secs as u64).wrapping_mul(0x9E37_79B9) ^ u64::from(c.nanos);
    Generation(mixed & 0xffff_ffff)
}

pub(super) fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(s) => TimeSet::At(Timestamp::from_system(s)),
    }
}

/// Logs a failed request once, at a level that fits the error, and returns its errno.
pub(super) fn fail(op: &str, ino: u64, e: &VolumeError) -> Errno {
    let errno = errno_of(e);
    match e {
        VolumeError::Corrupt { .. }
        | VolumeError::Meta(_)
        | VolumeError::Store(_)
        | VolumeError::Seal(_)
        | VolumeError::Unavailable { .. }
        | VolumeError::PoolTimeout { .. }
        | VolumeError::NoSpace => {
            tracing::error!(target: "bitcloud::fuse", op, ino, errno = errno.code(), error = %e, "request failed")
        }
        _ => {
            tracing::debug!(target: "bitcloud::fuse", op, ino, errno = errno.code(), error = %e, "request failed")
        }
    }
    errno
}

pub(super) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}
