//! What `fsck` found: the report (a stable JSON interface, fields only added), its problems,
//! the progress events sent while it runs, and the human rendering.

use serde::{Deserialize, Serialize};

/// One progress event: `done` of `total` in the current phase.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FsckProgress {
    /// `metadata`, `data` or `store`.
    pub phase: String,
    pub done: u64,
    pub total: u64,
    /// Whether `done`/`total` count bytes (else items).
    pub bytes: bool,
}

/// The kinds of problem fsck knows.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A block's bytes fail decryption or verification.
    DamagedBlock,
    /// A block the metadata references has no bytes anywhere.
    MissingBlock,
    /// A block's refcount differs from the block-map slots that point at it.
    RefcountMismatch,
    /// A block-map slot points at an unknown block or belongs to no file.
    DanglingSlot,
    /// A directory entry names an inode (or sits in a directory) that does not exist.
    DanglingEntry,
    /// An inode's link count differs from the entries that name it.
    LinkCount,
    /// An inode no directory entry names (and not an open, unlinked file).
    UnreachableInode,
    /// A sealed name, symlink target or xattr fails authentication.
    DamagedName,
    /// A metadata record does not decode.
    DamagedRecord,
    /// A block file no metadata references (leftover of a crash; only wastes space).
    StrayBlockFile,
    /// fallocate reservations that disagree with their file (only miscounts space).
    Reservation,
    /// Holders of some of a block's shards failed or missed an audit just now: the block
    /// has less redundancy in the pool than its scheme promises.
    ShortOfShards,
    /// Fewer than `k` of a block's shards proved, and no local copy: the block cannot be
    /// read back now.
    UnrecoverableInPool,
}

impl ProblemKind {
    fn label(self) -> &'static str {
        match self {
            ProblemKind::DamagedBlock => "damaged block",
            ProblemKind::MissingBlock => "missing block",
            ProblemKind::RefcountMismatch => "wrong reference count",
            ProblemKind::DanglingSlot => "dangling block reference",
            ProblemKind::DanglingEntry => "dangling directory entry",
            ProblemKind::LinkCount => "wrong link count",
            ProblemKind::UnreachableInode => "unreachable inode",
            ProblemKind::DamagedName => "damaged encrypted name",
            ProblemKind::DamagedRecord => "damaged metadata record",
            ProblemKind::StrayBlockFile => "stray block file",
            ProblemKind::Reservation => "wrong space reservation",
            ProblemKind::ShortOfShards => "block short of shards in the pool",
            ProblemKind::UnrecoverableInPool => "block not recoverable from the pool",
        }
    }

    /// Whether the problem loses or hides user data (as opposed to wasting space or
    /// miscounting).
    pub fn loses_data(self) -> bool {
        matches!(
            self,
            ProblemKind::DamagedBlock
                | ProblemKind::MissingBlock
                | ProblemKind::DanglingSlot
                | ProblemKind::DamagedName
                | ProblemKind::DamagedRecord
                | ProblemKind::UnreachableInode
                | ProblemKind::UnrecoverableInPool
        )
    }
}

/// One thing found wrong.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// What exactly, with ids.
    pub detail: String,
    /// Files affected (paths inside the volume), when known.
    pub paths: Vec<String>,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

/// The outcome of a check, as `fsck --json` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FsckReport {
    pub report_version: u32,
    /// Checked through a running mount (else with the volume opened by fsck itself).
    pub online: bool,
    pub inodes: u64,
    pub files: u64,
    pub directories: u64,
    pub entries: u64,
    pub blocks: u64,
    /// Sealed bytes read, decrypted and checked against their block ids.
    pub bytes_verified: u64,
    /// Whether block contents were verified (else only their presence).
    pub data_verified: bool,
    pub problems: Vec<Problem>,
    pub seconds: f64,
    /// Shards audited on their holders (through a mount with a pool).
    #[serde(default)]
    pub shards_audited: u64,
    /// Of those, shards whose holder proved it has them.
    #[serde(default)]
    pub shards_proved: u64,
}

impl FsckReport {
    /// Problems `--repair` did not (or could not) fix.
    pub fn unrepaired(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }

    /// The report for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "checked {} files, {} directories, {} entries, {} blocks ({} verified) in {:.1} s{}\n",
            self.files,
            self.directories,
            self.entries,
            self.blocks,
            if self.data_verified {
                crate::units::bytes(self.bytes_verified)
            } else {
                "presence only, not".into()
            },
            self.seconds,
            if self.online {
                ", through the running mount"
            } else {
                ""
            },
        );
        if self.shards_audited > 0 {
            out.push_str(&format!(
                "pool: {} of {} shards proved by their holders\n",
                self.shards_proved, self.shards_audited
            ));
        }
        if self.problems.is_empty() {
            out.push_str("no problems found\n");
            return out;
        }
        for p in &self.problems {
            out.push_str(&format!(
                "{}{}: {}\n",
                if p.repaired { "repaired " } else { "" },
                p.kind.label(),
                p.detail
            ));
            for path in p.paths.iter().take(20) {
                out.push_str(&format!("    {path}\n"));
            }
            if p.paths.len() > 20 {
                out.push_str(&format!("    ... and {} more\n", p.paths.len() - 20));
            }
        }
        let left = self.unrepaired();
        let fixed = self.problems.len() - left;
        out.push_str(&format!(
            "{} problem{} found, {fixed} repaired, {left} left\n",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" },
        ));
        if self
            .problems
            .iter()
            .any(|p| !p.repaired && p.kind.loses_data())
        {
            out.push_str(
                "Data damaged here and not rebuildable from the pool now: bring the peers that \
                 hold it back, or restore the files listed from a backup, or delete them.\n",
            );
        }
        if self
            .problems
            .iter()
            .any(|p| !p.repaired && p.kind == ProblemKind::ShortOfShards)
        {
            out.push_str(
                "Run `bitcloud fsck --repair` while mounted to rebuild the missing shards on \
                 other peers now (the repairer does it by itself after pool.repair_grace_secs).\n",
            );
        }
        if self
            .problems
            .iter()
            .any(|p| !p.repaired && !p.kind.loses_data() && p.kind != ProblemKind::ShortOfShards)
        {
            out.push_str(if self.online {
                "Unmount, then run `bitcloud fsck --repair` to fix the metadata problems.\n"
            } else {
                "Run `bitcloud fsck --repair` to fix what can be fixed.\n"
            });
        }
        out
    }
}
