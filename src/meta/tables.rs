//! The redb tables of the metadata database. Names carry a version suffix: a format change
//! adds new tables and a migration (`migrate`) rather than reinterpreting old bytes.
//!
//! Format 2 keeps a volume's metadata in two B-trees, because every table a transaction
//! changes costs its commit several microseconds (measured: 9 us for one table changed, 21 us
//! for three, 12 us for three keys in one table) and a POSIX change touches many kinds of
//! row. Rows of one inode sit together (`keys` gives the layout), so deleting an inode is one
//! range. Superblock values stay in a small table of their own.

use redb::TableDefinition;

/// Volume parameters: `format`, `block_size`, `next_ino`.
pub const SUPERBLOCK: TableDefinition<&str, u64> = TableDefinition::new("superblock-1");
/// Inodes, directory entries, block maps, xattrs, symlink targets, fallocate reservations and
/// orphans, keyed as `keys` says.
pub const FS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("fs-2");
/// Block records, inline block bytes and the gc queue, keyed as `keys` says.
pub const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks-2");

/// Format 1's tables, read only by `migrate`.
pub mod v1 {
    use redb::TableDefinition;

    pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes-1");
    pub const DIRENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dirents-1");
    pub const BLOCKMAP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blockmap-1");
    pub const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks-1");
    pub const GC: TableDefinition<&[u8], u64> = TableDefinition::new("gc-1");
    pub const SYMLINKS: TableDefinition<u64, &[u8]> = TableDefinition::new("symlinks-1");
    pub const XATTRS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("xattrs-1");
    pub const INLINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inline-1");
    pub const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans-1");
    pub const PREALLOC: TableDefinition<&[u8], ()> = TableDefinition::new("prealloc-1");
}
