//! The write-back layer of the metadata store: rows committed by write transactions that
//! are not yet in redb, and the table handles every read and write of the store goes
//! through (they mimic the part of redb's table API the store uses).
//!
//! A write transaction's changes go into the store's [`Rows`] (a persistent B-tree: a
//! snapshot is an O(1) clone) when it commits; the rows reach redb in one batch at each
//! durable commit (the checkpoint, fsync, unmount) or when the map grows past
//! [`FLUSH_ROWS`]. Why: a redb commit costs tens of microseconds even without fsync
//! (copy-on-write of the changed B-tree paths, page allocation, checksums), and it was most
//! of the time of an unlink or a create under FUSE (profile in ARCHITECTURE.md). Crash
//! semantics are those of the `Durability::None` commits this replaced: what no durable
//! commit covered is lost in a crash, and the database is always a state a durable commit
//! left (a durable commit writes every row the map holds in the same redb transaction).
//!
//! Consistency: a transaction reads one snapshot of the map and one redb read snapshot,
//! taken in that order. A flush writes a snapshot of the map into redb, commits, and only
//! then drops from the map the rows still equal to what it wrote; so a row missing from a
//! transaction's map snapshot is in its redb snapshot.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use redb::{ReadableTableMetadata, StorageError, TableDefinition, TableError};

use super::tables::{BLOCKS, FS, SUPERBLOCK};

/// Rows the map may hold before a commit writes them into redb itself (memory bound: a
/// row is about 200 bytes). The checkpoint (every 2 s) normally flushes long before.
pub const FLUSH_ROWS: usize = 100_000;

/// A row's key: the table's id (one byte) and the key within the table. Shared, so copying
/// a node of the persistent map copies no key bytes.
pub type RowKey = Arc<[u8]>;
/// A row's newest value; `None`: deleted.
pub type RowVal = Option<Arc<[u8]>>;
/// Rows not yet in redb, newest value of each.
pub type Rows = imbl::OrdMap<RowKey, RowVal>;

const SUPERBLOCK_ID: u8 = 0;
const FS_ID: u8 = 1;
const BLOCKS_ID: u8 = 2;

fn row_key(table: u8, key: &[u8]) -> RowKey {
    prefixed(table, key).into()
}

fn prefixed(table: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(table);
    k.extend_from_slice(key);
    k
}

type BytesTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;
type SbTable = redb::ReadOnlyTable<&'static str, u64>;

/// One redb read snapshot and the tables opened in it, shared by every transaction that
/// begins before redb's next commit. Beginning a redb read transaction and opening a table
/// in it cost a fifth of a small request's time under FUSE (a lookup in redb's table of
/// tables per table, a registered reader per transaction); the store keeps one view and
/// replaces it whenever a flush commits (see `MetaStore::read`).
pub struct RedbView {
    redb: redb::ReadTransaction,
    fs: OnceLock<Option<BytesTable>>,
    blocks: OnceLock<Option<BytesTable>>,
    sb: OnceLock<Option<SbTable>>,
}

impl RedbView {
    pub fn new(redb: redb::ReadTransaction) -> Arc<RedbView> {
        Arc::new(RedbView {
            redb,
            fs: OnceLock::new(),
            blocks: OnceLock::new(),
            sb: OnceLock::new(),
        })
    }
}

/// What one transaction sees: a snapshot of the store's rows over a redb read snapshot, and
/// (a write transaction) its own changes over both, applied to the store's rows when it
/// commits.
pub struct Txn {
    rows: Rows,
    own: Option<Mutex<BTreeMap<RowKey, RowVal>>>,
    view: Arc<RedbView>,
}

impl Txn {
    /// `rows` must be taken before `view` began (see the module doc).
    pub fn new(rows: Rows, view: Arc<RedbView>, writable: bool) -> Txn {
        Txn {
            rows,
            own: writable.then(|| Mutex::new(BTreeMap::new())),
            view,
        }
    }

    /// A handle on one table (`FS`, `BLOCKS` or `SUPERBLOCK`).
    pub fn open_table<D: Def>(&self, def: D) -> Result<D::Table<'_>, TableError> {
        def.open(self)
    }

    /// The changes this (write) transaction made; ends the transaction.
    pub fn into_changes(self) -> BTreeMap<RowKey, RowVal> {
        self.own.map(Mutex::into_inner).unwrap_or_default()
    }

    fn row(&self, key: &[u8]) -> Option<RowVal> {
        if let Some(own) = &self.own
            && let Some(v) = own.lock().get(key)
        {
            return Some(v.clone());
        }
        self.rows.get(key).cloned()
    }

    fn put(&self, key: RowKey, value: RowVal) {
        let own = self
            .own
            .as_ref()
            .expect("the metadata store wrote in a read transaction");
        own.lock().insert(key, value);
    }

    /// This transaction's rows (snapshot and own changes) with keys in `lo..hi`.
    fn rows_in(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Vec<(RowKey, RowVal)> {
        let snapshot = self
            .rows
            .range::<_, [u8]>((lo, hi))
            .map(|(k, v)| (k.clone(), v.clone()));
        let Some(own) = &self.own else {
            return snapshot.collect();
        };
        let own = own.lock();
        let mut mine = own.range::<[u8], _>((lo, hi)).peekable();
        if mine.peek().is_none() {
            return snapshot.collect();
        }
        let mut all: BTreeMap<RowKey, RowVal> = snapshot.collect();
        all.extend(mine.map(|(k, v)| (k.clone(), v.clone())));
        all.into_iter().collect()
    }

    fn redb_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        cell: &'_ OnceLock<Option<redb::ReadOnlyTable<K, V>>>,
        def: TableDefinition<'static, K, V>,
    ) -> Result<(), TableError> {
        if cell.get().is_none() {
            let table = match self.view.redb.open_table(def) {
                Ok(t) => Some(t),
                // A new database before its first flush: nothing in redb yet.
                Err(TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e),
            };
            let _ = cell.set(table);
        }
        Ok(())
    }
}

/// The table definitions a [`Txn`] can open.
pub trait Def {
    type Table<'t>;
    fn open(self, txn: &Txn) -> Result<Self::Table<'_>, TableError>;
}

impl Def for TableDefinition<'static, &'static [u8], &'static [u8]> {
    type Table<'t> = Table<'t>;
    fn open(self, txn: &Txn) -> Result<Table<'_>, TableError> {
        use redb::TableHandle;
        let (id, cell) = if self.name() == FS.name() {
            (FS_ID, &txn.view.fs)
        } else if self.name() == BLOCKS.name() {
            (BLOCKS_ID, &txn.view.blocks)
        } else {
            panic!(
                "table {} is not in the metadata store's write-back layer",
                self.name()
            )
        };
        txn.redb_table(cell, self)?;
        Ok(Table {
            id,
            txn,
            redb: cell.get().and_then(Option::as_ref),
        })
    }
}

impl Def for TableDefinition<'static, &'static str, u64> {
    type Table<'t> = Superblock<'t>;
    fn open(self, txn: &Txn) -> Result<Superblock<'_>, TableError> {
        use redb::TableHandle;
        assert_eq!(self.name(), SUPERBLOCK.name(), "unknown superblock table");
        txn.redb_table(&txn.view.sb, self)?;
        Ok(Superblock {
            txn,
            redb: txn.view.sb.get().and_then(Option::as_ref),
        })
    }
}

/// A value read from a table (the counterpart of redb's access guard).
#[derive(Clone, Debug)]
pub struct Val(Arc<[u8]>);

impl Val {
    pub fn value(&self) -> &[u8] {
        &self.0
    }
}

/// A `bytes → bytes` table as one transaction sees it.
pub struct Table<'t> {
    id: u8,
    txn: &'t Txn,
    redb: Option<&'t BytesTable>,
}

impl Table<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Val>, StorageError> {
        if let Some(v) = self.txn.row(&row_key(self.id, key)) {
            return Ok(v.map(Val));
        }
        match self.redb {
            Some(t) => Ok(t.get(key)?.map(|g| Val(g.value().into()))),
            None => Ok(None),
        }
    }

    /// Sets a row; returns its old value.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Val>, StorageError> {
        let old = self.get(key)?;
        self.txn.put(row_key(self.id, key), Some(value.into()));
        Ok(old)
    }

    /// Deletes a row; returns its old value.
    pub fn remove(&self, key: &[u8]) -> Result<Option<Val>, StorageError> {
        let old = self.get(key)?;
        if old.is_some() {
            self.txn.put(row_key(self.id, key), None);
        }
        Ok(old)
    }

    /// Rows with keys in `range`, in key order.
    pub fn range<'r, KR: Borrow<[u8]> + 'r>(
        &self,
        range: impl RangeBounds<KR> + 'r,
    ) -> Result<Merged, StorageError> {
        let own = |b: Bound<&KR>| match b {
            Bound::Included(k) => Bound::Included(k.borrow().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.borrow().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.merged(own(range.start_bound()), own(range.end_bound()))
    }

    /// Every row, in key order.
    pub fn iter(&self) -> Result<Merged, StorageError> {
        self.merged(Bound::Unbounded, Bound::Unbounded)
    }

    /// How many rows the table has.
    pub fn len(&self) -> Result<u64, StorageError> {
        let mut n = match self.redb {
            Some(t) => t.len()?,
            None => 0,
        };
        let (lo, hi) = ([self.id], [self.id + 1]);
        for (k, v) in self
            .txn
            .rows_in(Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))
        {
            let in_redb = match self.redb {
                Some(t) => t.get(&k[1..])?.is_some(),
                None => false,
            };
            match (in_redb, v.is_some()) {
                (false, true) => n += 1,
                (true, false) => n -= 1,
                _ => {}
            }
        }
        Ok(n)
    }

    /// Deletes the rows in `range` for which `keep(key, value)` is false.
    pub fn retain_in<'r, KR: Borrow<[u8]> + 'r>(
        &self,
        range: impl RangeBounds<KR> + 'r,
        mut keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let mut gone = Vec::new();
        for row in self.range(range)? {
            let (k, v) = row?;
            if !keep(k.value(), v.value()) {
                gone.push(k);
            }
        }
        for k in gone {
            self.txn.put(row_key(self.id, k.value()), None);
        }
        Ok(())
    }

    fn merged(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Result<Merged, StorageError> {
        let id = self.id;
        let plo = match &lo {
            Bound::Included(k) => Bound::Included(prefixed(id, k)),
            Bound::Excluded(k) => Bound::Excluded(prefixed(id, k)),
            Bound::Unbounded => Bound::Included(vec![id]),
        };
        let phi = match &hi {
            Bound::Included(k) => Bound::Included(prefixed(id, k)),
            Bound::Excluded(k) => Bound::Excluded(prefixed(id, k)),
            Bound::Unbounded => Bound::Excluded(vec![id + 1]),
        };
        let mine: Vec<(Box<[u8]>, RowVal)> = self
            .txn
            .rows_in(as_ref(&plo), as_ref(&phi))
            .into_iter()
            .map(|(k, v)| (k[1..].into(), v))
            .collect();
        let theirs = match self.redb {
            Some(t) => Some(t.range::<&[u8]>((as_ref(&lo), as_ref(&hi)))?),
            None => None,
        };
        Ok(Merged {
            mine: mine.into_iter().peekable(),
            theirs,
            next_theirs: None,
        })
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(&k[..]),
        Bound::Excluded(k) => Bound::Excluded(&k[..]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A row read from redb: key, value.
type Row = (Box<[u8]>, Arc<[u8]>);

/// The rows of a range: the transaction's own merged into redb's, in key order.
pub struct Merged {
    mine: std::iter::Peekable<std::vec::IntoIter<(Box<[u8]>, RowVal)>>,
    theirs: Option<redb::Range<'static, &'static [u8], &'static [u8]>>,
    next_theirs: Option<Row>,
}

impl Iterator for Merged {
    type Item = Result<(Val, Val), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.next_theirs.is_none()
                && let Some(range) = &mut self.theirs
            {
                match range.next() {
                    Some(Ok((k, v))) => {
                        self.next_theirs = Some((k.value().into(), v.value().into()));
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.theirs = None,
                }
            }
            use std::cmp::Ordering::{Equal, Greater, Less};
            let order = match (self.mine.peek(), &self.next_theirs) {
                (None, None) => return None,
                (Some(_), None) => Less,
                (None, Some(_)) => Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            if order == Equal {
                // Ours is newer: redb's copy of the row is passed over.
                self.next_theirs = None;
            }
            if order != Greater {
                let (k, v) = self.mine.next().expect("peeked");
                match v {
                    Some(v) => return Some(Ok((Val(k.into()), Val(v)))),
                    None => continue,
                }
            }
            let (k, v) = self.next_theirs.take().expect("checked");
            return Some(Ok((Val(k.into()), Val(v))));
        }
    }
}

/// A superblock value (the counterpart of redb's access guard).
#[derive(Clone, Copy, Debug)]
pub struct U64(u64);

impl U64 {
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The superblock table (`name → u64`) as one transaction sees it.
pub struct Superblock<'t> {
    txn: &'t Txn,
    redb: Option<&'t SbTable>,
}

impl Superblock<'_> {
    pub fn get(&self, key: &str) -> Result<Option<U64>, StorageError> {
        if let Some(v) = self.txn.row(&row_key(SUPERBLOCK_ID, key.as_bytes())) {
            return Ok(v.map(|v| U64(decode_u64(&v))));
        }
        match self.redb {
            Some(t) => Ok(t.get(key)?.map(|g| U64(g.value()))),
            None => Ok(None),
        }
    }

    /// Every value, in name order.
    pub fn entries(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(t) = self.redb {
            use redb::ReadableTable;
            for row in t.iter()? {
                let (k, v) = row?;
                all.insert(k.value().to_string(), v.value());
            }
        }
        let (lo, hi) = ([SUPERBLOCK_ID], [SUPERBLOCK_ID + 1]);
        for (k, v) in self
            .txn
            .rows_in(Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))
        {
            let name = String::from_utf8_lossy(&k[1..]).to_string();
            match v {
                Some(v) => all.insert(name, decode_u64(&v)),
                None => all.remove(&name),
            };
        }
        Ok(all.into_iter().collect())
    }

    pub fn insert(&self, key: &str, value: u64) -> Result<Option<U64>, StorageError> {
        let old = self.get(key)?;
        let bytes: Arc<[u8]> = value.to_le_bytes().into();
        self.txn
            .put(row_key(SUPERBLOCK_ID, key.as_bytes()), Some(bytes));
        Ok(old)
    }
}

fn decode_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    u64::from_le_bytes(b)
}

/// Writes `rows` into redb in one transaction of the given durability, with `extra` (for
/// the durable commit's own superblock values) in the same transaction. Every table is
/// opened (so a new database has them all after its first flush), unless there is nothing
/// to write: an empty durable commit changes no page, which matters on a full disk.
pub fn write_rows(
    db: &redb::Database,
    rows: &Rows,
    durability: redb::Durability,
    extra: &[(&str, u64)],
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    if !rows.is_empty() || !extra.is_empty() {
        let mut fs = txn.open_table(FS)?;
        let mut blocks = txn.open_table(BLOCKS)?;
        let mut sb = txn.open_table(SUPERBLOCK)?;
        for (k, v) in rows.iter() {
            let (id, key) = (k[0], &k[1..]);
            match id {
                SUPERBLOCK_ID => {
                    let name = std::str::from_utf8(key).expect("superblock names are ours");
                    match v {
                        Some(v) => sb.insert(name, decode_u64(v))?,
                        None => sb.remove(name)?,
                    };
                }
                _ => {
                    let t = if id == FS_ID { &mut fs } else { &mut blocks };
                    match v {
                        Some(v) => t.insert(key, &v[..])?,
                        None => t.remove(key)?,
                    };
                }
            }
        }
        for (name, value) in extra {
            sb.insert(*name, *value)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// After `flushed` is in redb: `pending` without the rows that still have the value that
/// was written (rows changed since stay; redb now holds exactly what was compared).
pub fn trim(pending: &mut Rows, flushed: &Rows) {
    if pending.ptr_eq(flushed) {
        *pending = Rows::new();
        return;
    }
    for (k, v) in flushed.iter() {
        let same = match (pending.get(k), v) {
            (Some(None), None) => true,
            (Some(Some(a)), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        };
        if same {
            pending.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ids::InodeNo;
    use crate::meta::codec::{Dirent, Kind};
    use crate::meta::{MetaStore, Reader};

    fn entry(n: u64) -> Dirent {
        Dirent {
            child: InodeNo(100 + n),
            kind: Kind::File,
            sealed_name: vec![n as u8; 3],
        }
    }

    fn tag(n: u64) -> [u8; 16] {
        let mut t = [0u8; 16];
        t[8..].copy_from_slice(&n.to_be_bytes());
        t
    }

    fn names(meta: &MetaStore) -> Vec<u64> {
        let tx = meta.read().unwrap();
        tx.list_dir(InodeNo::ROOT, None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d.child.0 - 100)
            .collect()
    }

    fn add(meta: &MetaStore, ns: impl IntoIterator<Item = u64>) {
        let mut tx = meta.write().unwrap();
        for n in ns {
            tx.put_dirent(InodeNo::ROOT, &tag(n), &entry(n)).unwrap();
        }
        tx.commit().unwrap();
    }

    fn remove(meta: &MetaStore, ns: impl IntoIterator<Item = u64>) {
        let mut tx = meta.write().unwrap();
        for n in ns {
            tx.remove_dirent(InodeNo::ROOT, &tag(n)).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn a_transaction_after_a_flush_reads_a_new_redb_view() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::create(&dir.path().join("m.redb"), 4096, 0, 0).unwrap();
        add(&meta, [1]);
        let before = meta.read().unwrap(); // holds the view of before the flush
        assert_eq!(names(&meta), vec![1]);
        meta.commit_durable().unwrap(); // 1 moves from the map into redb
        assert!(meta.shared.pending.lock().is_empty());
        assert_eq!(
            names(&meta),
            vec![1],
            "a stale view would miss the flushed row"
        );
        add(&meta, [2]);
        meta.begin_durable().unwrap().commit(None).unwrap();
        assert_eq!(names(&meta), vec![1, 2]);
        // The old transaction still reads its own snapshot: 1, from the map it took.
        let old: Vec<u64> = before
            .list_dir(InodeNo::ROOT, None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d.child.0 - 100)
            .collect();
        assert_eq!(old, vec![1]);
    }

    #[test]
    fn ranges_merge_pending_rows_over_the_database_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::create(&dir.path().join("m.redb"), 4096, 0, 0).unwrap();
        add(&meta, [1, 3, 5, 7]);
        meta.commit_durable().unwrap(); // now in redb
        assert!(meta.shared.pending.lock().is_empty());
        add(&meta, [2, 6, 8]);
        remove(&meta, [3, 8]); // one from redb, one only pending
        assert_eq!(names(&meta), vec![1, 2, 5, 6, 7]);
        // Paging from a tag in the middle, and a limit.
        let tx = meta.read().unwrap();
        let page = tx.list_dir(InodeNo::ROOT, Some(&tag(2)), 2).unwrap();
        assert_eq!(
            page.iter()
                .map(|(_, d)| d.child.0 - 100)
                .collect::<Vec<_>>(),
            vec![5, 6]
        );
        drop(tx);
        meta.commit_durable().unwrap();
        assert_eq!(names(&meta), vec![1, 2, 5, 6, 7]);
    }

    #[test]
    fn a_write_sees_its_own_rows_and_an_abandoned_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::create(&dir.path().join("m.redb"), 4096, 0, 0).unwrap();
        add(&meta, [1]);
        let mut tx = meta.write().unwrap();
        tx.put_dirent(InodeNo::ROOT, &tag(2), &entry(2)).unwrap();
        tx.remove_dirent(InodeNo::ROOT, &tag(1)).unwrap();
        assert!(tx.dirent(InodeNo::ROOT, &tag(1)).unwrap().is_none());
        assert_eq!(tx.dirent(InodeNo::ROOT, &tag(2)).unwrap(), Some(entry(2)));
        assert_eq!(tx.list_dir(InodeNo::ROOT, None, 10).unwrap().len(), 1);
        drop(tx);
        assert_eq!(names(&meta), vec![1]);
    }

    #[test]
    fn a_read_keeps_its_snapshot_across_commits_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::create(&dir.path().join("m.redb"), 4096, 0, 0).unwrap();
        add(&meta, [1, 2]);
        let before = meta.read().unwrap();
        remove(&meta, [1]);
        add(&meta, [3]);
        meta.commit_durable().unwrap();
        let seen: Vec<u64> = before
            .list_dir(InodeNo::ROOT, None, 10)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d.child.0 - 100)
            .collect();
        assert_eq!(seen, vec![1, 2]);
        assert!(before.dirent(InodeNo::ROOT, &tag(3)).unwrap().is_none());
        assert_eq!(names(&meta), vec![2, 3]);
        assert_eq!(before.table_sizes().unwrap().fs_rows, 3); // root inode + 2 entries
        assert_eq!(meta.read().unwrap().table_sizes().unwrap().fs_rows, 3);
    }

    #[test]
    fn only_durable_commits_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let meta = MetaStore::create(&path, 4096, 0, 0).unwrap();
        add(&meta, [1]);
        meta.commit_durable().unwrap();
        add(&meta, [2]);
        remove(&meta, [1]);
        // A crash now: the file as it is, opened as the next mount would.
        let crashed = dir.path().join("crashed.redb");
        std::fs::copy(&path, &crashed).unwrap();
        assert_eq!(names(&MetaStore::open(&crashed).unwrap()), vec![1]);
        // A clean close keeps everything.
        drop(meta);
        assert_eq!(names(&MetaStore::open(&path).unwrap()), vec![2]);
    }

    #[test]
    fn rows_changed_during_a_flush_stay_pending() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::create(&dir.path().join("m.redb"), 4096, 0, 0).unwrap();
        add(&meta, [1, 2]);
        let flushed = meta.shared.pending.lock().clone();
        add(&meta, [3]);
        remove(&meta, [2]);
        super::write_rows(&meta.shared.db, &flushed, redb::Durability::None, &[]).unwrap();
        meta.shared.flushed(&flushed);
        let left = meta.shared.pending.lock().len();
        assert_eq!(left, 2, "entry 3 and the deletion of 2 are not in redb yet");
        assert_eq!(names(&meta), vec![1, 3]);
    }
}
