//! The redb tables of the metadata database. Names carry a version suffix: a format change
//! adds new tables and a migration rather than reinterpreting old bytes.
//!
//! Keys are big-endian byte strings (see `codec`), values are versioned encodings.

use redb::TableDefinition;

/// Volume parameters: `format`, `block_size`, `next_ino`.
pub const SUPERBLOCK: TableDefinition<&str, u64> = TableDefinition::new("superblock-1");
/// inode number -> `codec::Inode`.
pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes-1");
/// parent ino BE || name tag -> `codec::Dirent` (name sealed with `names`).
pub const DIRENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dirents-1");
/// ino BE || block index BE -> block id (32 bytes). Absent slots are holes.
pub const BLOCKMAP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blockmap-1");
/// block id -> `codec::BlockRecord` (refcount > 0).
pub const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks-1");
/// block id -> epoch in which its refcount reached zero; the file is deleted later.
pub const GC: TableDefinition<&[u8], u64> = TableDefinition::new("gc-1");
/// symlink ino -> tag || sealed target.
pub const SYMLINKS: TableDefinition<u64, &[u8]> = TableDefinition::new("symlinks-1");
/// ino BE || xattr-name tag -> sealed name and value (see `volume::xattr`).
pub const XATTRS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("xattrs-1");
/// block id -> sealed bytes, for blocks small enough to live in the database instead of a
/// file of their own (see `volume::commit::INLINE_MAX`).
pub const INLINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inline-1");
/// Unlinked inodes still open when last committed; deleted at the next mount.
pub const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans-1");
/// ino BE || block index BE -> (): slots reserved by fallocate, not yet stored.
pub const PREALLOC: TableDefinition<&[u8], ()> = TableDefinition::new("prealloc-1");
