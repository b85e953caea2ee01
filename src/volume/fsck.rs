//! `fsck`: checks a volume end to end and repairs what can be repaired on this machine.
//!
//! Up to four phases, each reporting progress:
//! 1. **metadata**, over one read snapshot (consistent even while mounted): every inode and
//!    directory entry decodes, every entry names a live inode in a live directory, link
//!    counts match the entries, every inode is reachable, sealed names, symlink targets and
//!    xattrs authenticate, every block-map slot points at a known block, and every block's
//!    refcount equals the slots that point at it;
//! 2. **data** (`fsck/data.rs`): every block is read (from its file or the inline table),
//!    decrypted and checked against its block id, i.e. every byte of every file is verified
//!    (`verify_data`; else only its presence and size);
//! 3. **store**: block files that no metadata references (leftovers of a crash);
//! 4. **pool** (through a mount with peers, not with `--quick`): every holder of every shard
//!    proves it has it now (`fsck/pool.rs`); `--repair` rebuilds failed shards elsewhere.
//!
//! Repairs: stray block files are deleted (also while mounted: under the same pins lock that
//! guards garbage collection). Metadata repairs (refcounts, link counts, dangling entries and
//! slots) are made only when the volume is not mounted (`online == false`), in one write
//! transaction. Through a mount with a pool, `--repair` rebuilds a damaged local block
//! from its shards. Data the pool does not hold cannot be repaired from this machine alone:
//! the report names the affected files.

mod data;
mod pool;
mod report;
mod reserved;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

pub use report::{FsckProgress, FsckReport, Problem, ProblemKind};

use super::{Result, Volume, xattr};
use crate::ids::{BlockId, InodeNo};
use crate::meta::Reader;
use crate::meta::codec::{BlockRecord, Kind, decode_sealed};
use crate::names::{Domain, Tag};

/// What to check and whether to repair (also the request `bitcloud fsck` sends a mount).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct FsckOptions {
    /// Decrypt and verify every block (else check presence and size only).
    pub verify_data: bool,
    pub repair: bool,
    /// The volume is mounted: metadata is live, so only stray files are repaired.
    pub online: bool,
}

/// How often (in items) the metadata phase reports progress.
const PROGRESS_EVERY: u64 = 4096;

/// What the metadata phase learned about one inode.
#[derive(Clone, Copy)]
struct InodeFacts {
    kind: Kind,
    nlink: u32,
    /// Entries naming it.
    links: u32,
    /// Subdirectories (for a directory's expected link count).
    subdirs: u32,
    /// One entry naming it (parent, tag), for building its path.
    name: Option<(InodeNo, Tag)>,
    /// Blocks fallocate reserved, as the inode counts them.
    reserved: u64,
}

/// Every inode, by number.
type InodeTable = HashMap<InodeNo, InodeFacts>;

/// A repair to make in the offline write transaction.
enum Fix {
    Refcount(BlockId, u64),
    DropSlot(InodeNo, u64),
    Nlink(InodeNo, u32),
    DropEntry(InodeNo, Tag),
    Reserved(InodeNo, u64),
    Unreserve(InodeNo, u64),
}

struct Checker<'a> {
    vol: &'a Volume,
    opts: FsckOptions,
    report: FsckReport,
    /// Problems and the fixes that would repair them (index into `report.problems`).
    fixes: Vec<(usize, Fix)>,
    progress: &'a mut dyn FnMut(&FsckProgress),
}

impl Checker<'_> {
    fn problem(&mut self, kind: ProblemKind, detail: String, paths: Vec<String>) -> usize {
        self.report.problems.push(Problem {
            kind,
            detail,
            paths,
            repaired: false,
        });
        self.report.problems.len() - 1
    }

    fn fixable(&mut self, kind: ProblemKind, detail: String, paths: Vec<String>, fix: Fix) {
        let i = self.problem(kind, detail, paths);
        self.fixes.push((i, fix));
    }

    fn tick(&mut self, phase: &str, done: u64, total: u64, bytes: bool) {
        (self.progress)(&FsckProgress {
            phase: phase.into(),
            done,
            total,
            bytes,
        });
    }
}

impl Volume {
    /// Checks the volume (see the module docs); `progress` hears how far each phase is.
    pub fn fsck(
        &self,
        opts: FsckOptions,
        progress: &mut dyn FnMut(&FsckProgress),
    ) -> Result<FsckReport> {
        let started = Instant::now();
        let mut c = Checker {
            vol: self,
            opts,
            report: FsckReport {
                report_version: 1,
                online: opts.online,
                data_verified: opts.verify_data,
                ..FsckReport::default()
            },
            fixes: Vec::new(),
            progress,
        };
        let snap = self.meta.read()?;
        let (inodes, blocks) = c.check_metadata(&snap)?;
        let bad = c.check_data(&blocks)?;
        if !bad.is_empty() {
            c.name_affected_files(&snap, &inodes, &bad)?;
        }
        c.check_store(&blocks)?;
        drop(snap);
        let remote = self.remote.remote.read().clone();
        if opts.verify_data
            && let Some(remote) = remote
        {
            c.check_pool(remote.as_ref())?;
        }
        if opts.repair && !opts.online && !c.fixes.is_empty() {
            c.apply_fixes()?;
        }
        c.report.seconds = started.elapsed().as_secs_f64();
        Ok(c.report)
    }
}

impl Checker<'_> {
    /// Phase 1. Returns what it learned of inodes and the block records to verify.
    fn check_metadata(
        &mut self,
        snap: &crate::meta::ReadTx,
    ) -> Result<(InodeTable, Vec<(BlockId, BlockRecord)>)> {
        let sizes = snap.table_sizes()?;
        // Three passes over the fs rows (inodes, entries, slots), one over the block rows.
        let total = 3 * sizes.fs_rows + sizes.block_rows;
        let mut done = 0u64;
        let mut inodes: HashMap<InodeNo, InodeFacts> = HashMap::new();
        let mut damaged = Vec::new();
        snap.each_inode(|ino, inode| match inode {
            Ok(i) => {
                inodes.insert(
                    ino,
                    InodeFacts {
                        kind: i.kind,
                        nlink: i.nlink,
                        links: 0,
                        subdirs: 0,
                        name: None,
                        reserved: i.reserved_blocks,
                    },
                );
            }
            Err(e) => damaged.push(format!("inode {ino}: {e}")),
        })?;
        for d in damaged.drain(..) {
            self.problem(ProblemKind::DamagedRecord, d, vec![]);
        }
        done += sizes.fs_rows;
        self.tick("metadata", done, total, false);
        self.report.inodes = inodes.len() as u64;
        self.report.files = inodes.values().filter(|f| f.kind == Kind::File).count() as u64;
        self.report.directories = inodes.values().filter(|f| f.kind == Kind::Dir).count() as u64;

        // Directory entries: parents and children exist, kinds agree, names authenticate.
        let mut entries = Vec::new();
        snap.each_dirent(|parent, tag, d| entries.push((parent, tag, d)))?;
        for (n, (parent, tag, d)) in entries.into_iter().enumerate() {
            self.report.entries += 1;
            if (n as u64).is_multiple_of(PROGRESS_EVERY) {
                self.tick("metadata", done + n as u64, total, false);
            }
            let d = match d {
                Ok(d) => d,
                Err(e) => {
                    self.problem(
                        ProblemKind::DamagedRecord,
                        format!("entry in directory {parent}: {e}"),
                        vec![],
                    );
                    continue;
                }
            };
            let parent_ok = inodes.get(&parent).is_some_and(|p| p.kind == Kind::Dir);
            let child_kind = inodes.get(&d.child).map(|c| c.kind);
            if !parent_ok || child_kind.is_none() {
                let why = if parent_ok {
                    format!("names inode {} which does not exist", d.child)
                } else {
                    format!("sits in {parent}, which is not a directory")
                };
                self.fixable(
                    ProblemKind::DanglingEntry,
                    format!("entry in directory {parent} {why}"),
                    vec![],
                    Fix::DropEntry(parent, tag),
                );
                continue;
            }
            if child_kind != Some(d.kind) {
                self.problem(
                    ProblemKind::DamagedRecord,
                    format!(
                        "entry in directory {parent} says inode {} is a {:?}, the inode says {:?}",
                        d.child,
                        d.kind,
                        child_kind.expect("checked above")
                    ),
                    vec![],
                );
            }
            if self
                .vol
                .names
                .open(Domain::DirEntry, parent.0, &tag, &d.sealed_name)
                .is_err()
            {
                self.problem(
                    ProblemKind::DamagedName,
                    format!("the name of inode {} in directory {parent}", d.child),
                    vec![],
                );
            }
            let child = inodes.get_mut(&d.child).expect("checked above");
            child.links += 1;
            child.name.get_or_insert((parent, tag));
            if d.kind == Kind::Dir {
                inodes.get_mut(&parent).expect("checked above").subdirs += 1;
            }
        }
        done += sizes.fs_rows;

        // Link counts and reachability; symlink targets and xattrs authenticate.
        let orphans: HashSet<InodeNo> = snap.orphan_list()?.into_iter().collect();
        let mut inos: Vec<InodeNo> = inodes.keys().copied().collect();
        inos.sort();
        for ino in inos {
            let f = inodes[&ino];
            let expected = match f.kind {
                Kind::Dir => 2 + f.subdirs,
                _ => f.links,
            };
            if ino != InodeNo::ROOT && f.links == 0 {
                if !orphans.contains(&ino) {
                    self.problem(
                        ProblemKind::UnreachableInode,
                        format!("inode {ino} ({:?}) is named by no directory", f.kind),
                        vec![],
                    );
                }
            } else if f.nlink != expected {
                self.fixable(
                    ProblemKind::LinkCount,
                    format!(
                        "inode {ino} has link count {}, {expected} entries name it",
                        f.nlink
                    ),
                    vec![path_of(self.vol, snap, &inodes, ino)],
                    Fix::Nlink(ino, expected),
                );
            }
            if f.kind == Kind::Symlink {
                let ok = snap.symlink(ino)?.is_some_and(|stored| {
                    decode_sealed(&stored).is_ok_and(|(tag, ct)| {
                        self.vol
                            .names
                            .open(Domain::Symlink, ino.0, &tag, ct)
                            .is_ok()
                    })
                });
                if !ok {
                    self.problem(
                        ProblemKind::DamagedName,
                        format!("the target of symlink {ino}"),
                        vec![path_of(self.vol, snap, &inodes, ino)],
                    );
                }
            }
            for (tag, stored) in snap.xattrs(ino)? {
                if !xattr::authentic(&self.vol.names, ino, &tag, &stored) {
                    self.problem(
                        ProblemKind::DamagedName,
                        format!("an extended attribute of inode {ino}"),
                        vec![path_of(self.vol, snap, &inodes, ino)],
                    );
                }
            }
        }

        // Block-map slots point at known blocks of live files; refcounts add up.
        let mut records: HashMap<BlockId, BlockRecord> = HashMap::new();
        let mut bad_records = Vec::new();
        snap.each_block(|id, r| match r {
            Ok(r) => {
                records.insert(id, r);
            }
            Err(e) => bad_records.push(format!("block {}: {e}", id.short())),
        })?;
        let mut refs: HashMap<BlockId, u64> = HashMap::new();
        let mut slot_problems = Vec::new();
        snap.each_slot(|ino, index, id| {
            let live = inodes.get(&ino).is_some_and(|f| f.kind == Kind::File);
            match id {
                Ok(id) if live && records.contains_key(&id) => *refs.entry(id).or_default() += 1,
                Ok(id) => slot_problems.push((ino, index, Some(id), live)),
                Err(_) => slot_problems.push((ino, index, None, live)),
            }
        })?;
        for d in bad_records {
            self.problem(ProblemKind::DamagedRecord, d, vec![]);
        }
        for (ino, index, id, live) in slot_problems {
            let what = match (id, live) {
                (_, false) => format!("file {ino} does not exist"),
                (Some(id), true) => format!("block {} is unknown", id.short()),
                (None, true) => "the slot does not decode".into(),
            };
            let paths = if live {
                vec![format!(
                    "{} (block {index})",
                    path_of(self.vol, snap, &inodes, ino)
                )]
            } else {
                vec![]
            };
            self.fixable(
                ProblemKind::DanglingSlot,
                format!("block {index} of file {ino}: {what}"),
                paths,
                Fix::DropSlot(ino, index),
            );
        }
        done += sizes.fs_rows;
        let mut blocks: Vec<(BlockId, BlockRecord)> = records.into_iter().collect();
        blocks.sort_by_key(|(id, _)| *id);
        for (id, r) in &blocks {
            let actual = refs.get(id).copied().unwrap_or(0);
            if actual != r.refcount {
                self.fixable(
                    ProblemKind::RefcountMismatch,
                    format!(
                        "block {} has refcount {}, {actual} slots point at it",
                        id.short(),
                        r.refcount
                    ),
                    vec![],
                    Fix::Refcount(*id, actual),
                );
            }
        }
        done += sizes.block_rows;
        self.check_reservations(snap, &inodes)?;
        self.tick("metadata", done, total, false);
        self.report.blocks = blocks.len() as u64;
        Ok((inodes, blocks))
    }
}

impl Checker<'_> {
    /// Adds to each damaged block's problem the files (and block indexes) that use it.
    fn name_affected_files(
        &mut self,
        snap: &crate::meta::ReadTx,
        inodes: &HashMap<InodeNo, InodeFacts>,
        bad: &HashMap<BlockId, usize>,
    ) -> Result<()> {
        let mut users: Vec<(usize, InodeNo, u64)> = Vec::new();
        snap.each_slot(|ino, index, id| {
            if let Ok(id) = id
                && let Some(&i) = bad.get(&id)
            {
                users.push((i, ino, index));
            }
        })?;
        for (i, ino, index) in users {
            let path = path_of(self.vol, snap, inodes, ino);
            self.report.problems[i]
                .paths
                .push(format!("{path} (bytes {} ..)", index * self.vol.block_size));
        }
        Ok(())
    }

    /// Phase 3: block files no metadata references. Deleted with `repair`, under the pins
    /// lock and after re-checking, exactly as garbage collection deletes.
    fn check_store(&mut self, blocks: &[(BlockId, BlockRecord)]) -> Result<()> {
        let known: HashSet<BlockId> = blocks.iter().map(|(id, _)| *id).collect();
        let files = self.vol.store.list()?;
        let total = files.len() as u64;
        self.tick("store", 0, total, false);
        for (n, id) in files.iter().enumerate() {
            if (n as u64).is_multiple_of(PROGRESS_EVERY) {
                self.tick("store", n as u64, total, false);
            }
            if known.contains(id) {
                continue;
            }
            let pins = self.vol.pins.lock();
            // A pinned id is being sealed; one committed since the snapshot is known now.
            if pins.contains_key(id) || self.vol.meta.read()?.block_is_known(id)? {
                continue;
            }
            let path = self.vol.store.path_of(id);
            if !path.exists() {
                continue;
            }
            let repaired = self.opts.repair && self.vol.store.delete(id).is_ok();
            drop(pins);
            let i = self.problem(
                ProblemKind::StrayBlockFile,
                format!("{} is referenced by nothing", path.display()),
                vec![],
            );
            self.report.problems[i].repaired = repaired;
        }
        self.tick("store", total, total, false);
        Ok(())
    }

    /// Makes the metadata repairs in one transaction (volume not mounted).
    fn apply_fixes(&mut self) -> Result<()> {
        let mut tx = self.vol.meta.write()?;
        for (_, fix) in &self.fixes {
            match fix {
                Fix::Refcount(id, n) => tx.fix_refcount(id, *n)?,
                Fix::DropSlot(ino, index) => tx.drop_slot(*ino, *index)?,
                Fix::DropEntry(parent, tag) => tx.remove_dirent(*parent, tag)?,
                Fix::Nlink(ino, n) => {
                    if let Some(mut inode) = tx.inode(*ino)? {
                        inode.nlink = *n;
                        tx.put_inode(*ino, &inode)?;
                    }
                }
                Fix::Reserved(ino, n) => {
                    if let Some(mut inode) = tx.inode(*ino)? {
                        inode.reserved_blocks = *n;
                        tx.put_inode(*ino, &inode)?;
                    }
                }
                Fix::Unreserve(ino, index) => {
                    tx.take_reserved(*ino, *index)?;
                }
            }
        }
        tx.commit()?;
        self.vol.checkpoint()?;
        for (i, _) in &self.fixes {
            self.report.problems[*i].repaired = true;
        }
        Ok(())
    }
}

/// The path of `ino` inside the volume, from the first entry naming each ancestor; names that
/// fail to decrypt show as `?<inode>`.
fn path_of(
    vol: &Volume,
    snap: &crate::meta::ReadTx,
    inodes: &HashMap<InodeNo, InodeFacts>,
    ino: InodeNo,
) -> String {
    let mut parts = Vec::new();
    let mut cur = ino;
    while cur != InodeNo::ROOT && parts.len() < 4096 {
        let Some((parent, tag)) = inodes.get(&cur).and_then(|f| f.name) else {
            parts.push(format!("<unreachable inode {cur}>"));
            break;
        };
        let name = snap
            .dirent(parent, &tag)
            .ok()
            .flatten()
            .and_then(|d| {
                vol.names
                    .open(Domain::DirEntry, parent.0, &tag, &d.sealed_name)
                    .ok()
            })
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .unwrap_or_else(|| format!("?{cur}"));
        parts.push(name);
        cur = parent;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests;
