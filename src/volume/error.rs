//! The volume's error type: POSIX failures in the domain's words, plus storage failures that
//! carry the ids needed to find the damage. The FUSE adapter maps each variant to exactly one
//! errno in one exhaustive match (`fuse::errno_of`); nothing else chooses errnos.

use crate::ids::{BlockId, InodeNo};
use crate::meta::MetaError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("no such extended attribute")]
    NoXattr,
    #[error("buffer too small for the result ({needed} bytes needed)")]
    Range { needed: usize },
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("file would exceed the maximum file size")]
    FileTooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("no space left on the device holding the volume")]
    NoSpace,
    #[error("bad file handle")]
    BadHandle,
    #[error("inode {ino} block {index} ({block:?}) is unreadable: {why}")]
    Corrupt {
        ino: InodeNo,
        index: u64,
        block: BlockId,
        why: String,
    },
    #[error("metadata: {0}")]
    Meta(MetaError),
    #[error("block store: {0}")]
    Store(StoreError),
    #[error("sealing a block failed: {0}")]
    Seal(String),
    #[error("the volume is shutting down")]
    ShuttingDown,
    #[error(
        "inode {ino} block {index} ({block:?}) is not on this machine and the pool could not give it: {why}"
    )]
    Unavailable {
        ino: InodeNo,
        index: u64,
        block: BlockId,
        why: String,
    },
    #[error("inode {ino}: {blocks} blocks not placed in the pool in time")]
    PoolTimeout { ino: InodeNo, blocks: usize },
}

impl From<MetaError> for VolumeError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NoSpace => VolumeError::NoSpace,
            other => VolumeError::Meta(other),
        }
    }
}

impl From<StoreError> for VolumeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSpace => VolumeError::NoSpace,
            other => VolumeError::Store(other),
        }
    }
}

impl From<crate::meta::codec::DecodeError> for VolumeError {
    fn from(e: crate::meta::codec::DecodeError) -> Self {
        VolumeError::Meta(MetaError::Decode(e))
    }
}

impl From<crate::names::NameCorrupt> for VolumeError {
    fn from(_: crate::names::NameCorrupt) -> Self {
        VolumeError::Invalid("metadata name failed authentication")
    }
}

impl VolumeError {
    /// Whether this failure is a cloned value we can hand to a second waiter (seal errors are
    /// remembered per file and reported at the next flush or fsync).
    pub fn duplicate(&self) -> VolumeError {
        match self {
            VolumeError::NoSpace => VolumeError::NoSpace,
            other => VolumeError::Seal(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, VolumeError>;
