//! Upgrades of the metadata database's format, run by `MetaStore::open`.
//!
//! 1 → 2: format 1 kept ten tables; format 2 keeps the same rows in two (`tables`, `keys`).
//! Rows are copied in batches of bounded size (a redb write transaction holds its changes in
//! memory), then the old tables are dropped and the format set to 2 in one durable commit.
//! A crash in between leaves format 1 with some rows copied: the next open copies again
//! (inserts of the same keys), so the upgrade can be interrupted at any point.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::keys;
use super::tables::{BLOCKS, FS, SUPERBLOCK, v1};
use super::{MetaError, MetaStore, Result};
use crate::ids::{BlockId, InodeNo};

/// Rows copied per transaction.
const BATCH: usize = 20_000;

/// One copied row: which new table, key, value.
struct Row {
    fs: bool,
    key: Vec<u8>,
    value: Vec<u8>,
}

pub(super) fn from_v1(store: &MetaStore) -> Result<()> {
    tracing::info!(target: "bitcloud::meta", "upgrading the metadata database from format 1 to 2");
    let mut rows: Vec<Row> = Vec::new();
    let mut copied = 0u64;
    let flush = |rows: &mut Vec<Row>| -> Result<()> {
        let tx = db!(store.shared.db.begin_write());
        {
            let mut fs = db!(tx.open_table(FS));
            let mut blocks = db!(tx.open_table(BLOCKS));
            for r in rows.drain(..) {
                if r.fs {
                    db!(fs.insert(&r.key[..], &r.value[..]));
                } else {
                    db!(blocks.insert(&r.key[..], &r.value[..]));
                }
            }
        }
        db!(tx.commit());
        Ok(())
    };
    let mut push = |rows: &mut Vec<Row>, r: Row| -> Result<()> {
        rows.push(r);
        copied += 1;
        if rows.len() >= BATCH {
            flush(rows)?;
        }
        Ok(())
    };
    let rtx = db!(store.shared.db.begin_read());
    let ino_of = |k: &[u8]| InodeNo(u64::from_be_bytes(k[..8].try_into().expect("8 bytes")));
    let id_of = |k: &[u8]| BlockId(k[..32].try_into().expect("32 bytes"));
    macro_rules! each {
        ($table:expr, |$k:ident, $v:ident| $body:expr) => {
            match rtx.open_table($table) {
                Ok(t) => {
                    for row in db!(t.iter()) {
                        let (k, v) = db!(row);
                        let ($k, $v) = (k.value(), v.value());
                        $body?;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(MetaError::from_redb(e)),
            }
        };
    }
    each!(v1::INODES, |k, v| push(
        &mut rows,
        Row {
            fs: true,
            key: keys::of(InodeNo(k), keys::INODE).to_vec(),
            value: v.to_vec()
        }
    ));
    each!(v1::DIRENTS, |k, v| push(
        &mut rows,
        Row {
            fs: true,
            key: keys::tagged(
                ino_of(k),
                keys::DIRENT,
                k[8..24].try_into().expect("16-byte tag")
            )
            .to_vec(),
            value: v.to_vec()
        }
    ));
    each!(v1::BLOCKMAP, |k, v| push(
        &mut rows,
        Row {
            fs: true,
            key: keys::indexed(
                ino_of(k),
                keys::SLOT,
                u64::from_be_bytes(k[8..16].try_into().expect("8 bytes"))
            )
            .to_vec(),
            value: v.to_vec()
        }
    ));
    each!(v1::XATTRS, |k, v| push(
        &mut rows,
        Row {
            fs: true,
            key: keys::tagged(
                ino_of(k),
                keys::XATTR,
                k[8..24].try_into().expect("16-byte tag")
            )
            .to_vec(),
            value: v.to_vec()
        }
    ));
    each!(v1::SYMLINKS, |k, v| push(
        &mut rows,
        Row {
            fs: true,
            key: keys::of(InodeNo(k), keys::SYMLINK).to_vec(),
            value: v.to_vec()
        }
    ));
    each!(v1::ORPHANS, |k, _v| push(
        &mut rows,
        Row {
            fs: true,
            key: keys::orphan(InodeNo(k)).to_vec(),
            value: Vec::new()
        }
    ));
    let mut reserved = 0u64;
    each!(v1::PREALLOC, |k, _v| {
        reserved += 1;
        push(
            &mut rows,
            Row {
                fs: true,
                key: keys::indexed(
                    ino_of(k),
                    keys::RESERVED,
                    u64::from_be_bytes(k[8..16].try_into().expect("8 bytes")),
                )
                .to_vec(),
                value: Vec::new(),
            },
        )
    });
    each!(v1::BLOCKS, |k, v| push(
        &mut rows,
        Row {
            fs: false,
            key: keys::block(keys::RECORD, &id_of(k)).to_vec(),
            value: v.to_vec()
        }
    ));
    each!(v1::INLINE, |k, v| push(
        &mut rows,
        Row {
            fs: false,
            key: keys::block(keys::INLINE, &id_of(k)).to_vec(),
            value: v.to_vec()
        }
    ));
    each!(v1::GC, |k, v| push(
        &mut rows,
        Row {
            fs: false,
            key: keys::block(keys::GC, &id_of(k)).to_vec(),
            value: v.to_le_bytes().to_vec()
        }
    ));
    drop(rtx);
    flush(&mut rows)?;

    let mut tx = db!(store.shared.db.begin_write());
    db!(tx.set_durability(redb::Durability::Immediate));
    delete(&tx, v1::INODES)?;
    delete(&tx, v1::SYMLINKS)?;
    delete_unit(&tx, v1::ORPHANS)?;
    delete(&tx, v1::DIRENTS)?;
    delete(&tx, v1::BLOCKMAP)?;
    delete(&tx, v1::XATTRS)?;
    delete_unit(&tx, v1::PREALLOC)?;
    delete(&tx, v1::BLOCKS)?;
    delete(&tx, v1::INLINE)?;
    delete(&tx, v1::GC)?;
    {
        let mut sb = db!(tx.open_table(SUPERBLOCK));
        db!(sb.insert("reserved", reserved));
        db!(sb.insert("format", super::FORMAT_VERSION));
    }
    db!(tx.commit());
    tracing::info!(target: "bitcloud::meta", rows = copied, "metadata database upgraded to format 2");
    Ok(())
}

fn delete<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<()> {
    db!(tx.delete_table(table));
    Ok(())
}

fn delete_unit<K: redb::Key + 'static>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<K, ()>,
) -> Result<()> {
    db!(tx.delete_table(table));
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::Database;

    use super::*;
    use crate::meta::Reader;
    use crate::meta::codec::{BlockRecord, Dirent, Inode, Kind, Timestamp};

    /// A format-1 database (as releases before the two-table format wrote it) opens as
    /// format 2 with every row where the new code looks for it.
    #[test]
    fn format_1_databases_are_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let inode = |kind, nlink, parent| Inode {
            kind,
            perm: 0o644,
            uid: 1,
            gid: 2,
            nlink,
            size: 5,
            rdev: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
            stored_blocks: 1,
            parent,
            reserved_blocks: 1,
            reserve_end: 4096,
        };
        let id = BlockId([9; 32]);
        let gone = BlockId([8; 32]);
        let tag = [3u8; 16];
        let rec = BlockRecord {
            refcount: 1,
            plain_len: 5,
            sealed_len: 200,
            header_hash: None,
        };
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut sb = tx.open_table(SUPERBLOCK).unwrap();
                sb.insert("format", 1).unwrap();
                sb.insert("block_size", 65536).unwrap();
                sb.insert("next_ino", 10).unwrap();
                let mut t = tx.open_table(v1::INODES).unwrap();
                t.insert(1, &inode(Kind::Dir, 2, 1).encode()[..]).unwrap();
                t.insert(5, &inode(Kind::File, 1, 0).encode()[..]).unwrap();
                let d = Dirent {
                    child: InodeNo(5),
                    kind: Kind::File,
                    sealed_name: vec![1, 2, 3],
                };
                let mut k = 1u64.to_be_bytes().to_vec();
                k.extend_from_slice(&tag);
                tx.open_table(v1::DIRENTS)
                    .unwrap()
                    .insert(&k[..], &d.encode()[..])
                    .unwrap();
                let mut k = 5u64.to_be_bytes().to_vec();
                k.extend_from_slice(&0u64.to_be_bytes());
                tx.open_table(v1::BLOCKMAP)
                    .unwrap()
                    .insert(&k[..], &id.0[..])
                    .unwrap();
                tx.open_table(v1::PREALLOC)
                    .unwrap()
                    .insert(&k[..], ())
                    .unwrap();
                tx.open_table(v1::BLOCKS)
                    .unwrap()
                    .insert(&id.0[..], &rec.encode()[..])
                    .unwrap();
                tx.open_table(v1::INLINE)
                    .unwrap()
                    .insert(&id.0[..], &b"sealed"[..])
                    .unwrap();
                tx.open_table(v1::GC)
                    .unwrap()
                    .insert(&gone.0[..], 7)
                    .unwrap();
                tx.open_table(v1::SYMLINKS)
                    .unwrap()
                    .insert(5, &b"target"[..])
                    .unwrap();
                let mut k = 5u64.to_be_bytes().to_vec();
                k.extend_from_slice(&tag);
                tx.open_table(v1::XATTRS)
                    .unwrap()
                    .insert(&k[..], &b"x"[..])
                    .unwrap();
                tx.open_table(v1::ORPHANS).unwrap().insert(6, ()).unwrap();
            }
            tx.commit().unwrap();
        }
        let meta = MetaStore::open(&path).unwrap();
        assert_eq!(
            meta.superblock().unwrap().format,
            super::super::FORMAT_VERSION
        );
        let r = meta.read().unwrap();
        assert_eq!(r.inode(InodeNo(5)).unwrap().unwrap().nlink, 1);
        assert_eq!(
            r.dirent(InodeNo::ROOT, &tag).unwrap().unwrap().child,
            InodeNo(5)
        );
        assert_eq!(r.block_at(InodeNo(5), 0).unwrap(), Some(id));
        assert_eq!(r.block_record(&id).unwrap().unwrap().refcount, 1);
        assert_eq!(r.inline_block(&id).unwrap().unwrap(), b"sealed");
        assert_eq!(r.symlink(InodeNo(5)).unwrap().unwrap(), b"target");
        assert_eq!(r.xattrs(InodeNo(5)).unwrap().len(), 1);
        assert!(r.is_reserved(InodeNo(5), 0).unwrap());
        assert_eq!(r.reserved_total().unwrap(), 1);
        assert_eq!(r.orphan_list().unwrap(), vec![InodeNo(6)]);
        let mut gc = Vec::new();
        r.each_gc(|i, e| gc.push((i, e))).unwrap();
        assert_eq!(gc, vec![(gone, 7)]);
        drop(r);
        // The old tables are gone, and the upgrade does not run again.
        let r = meta.shared.db.begin_read().unwrap();
        assert!(matches!(
            r.open_table(v1::INODES),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
        drop(r);
        drop(meta);
        assert!(MetaStore::open(&path).is_ok());
    }
}
