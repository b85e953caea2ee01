//! The status report: what `bitcloud status` prints, built from the metadata counts. The
//! JSON form is a stable interface (fields are only ever added).

use serde::Serialize;

use crate::meta::Counts;
use crate::units::bytes as human;

/// A snapshot of the volume, as `status --json` prints it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct StatusReport {
    /// Format version of this report.
    pub report_version: u32,
    /// Whether a `bitcloud mount` of this volume is running.
    pub mounted: bool,
    /// Where it is mounted (when it is).
    pub mountpoint: Option<String>,
    pub pid: Option<u32>,
    pub block_size: u64,
    pub files: u64,
    pub directories: u64,
    pub inodes: u64,
    /// Sum of file sizes.
    pub logical_bytes: u64,
    /// Plaintext bytes of all block references (holes excluded, shared blocks counted each time).
    pub referenced_bytes: u64,
    /// Plaintext bytes of distinct stored blocks.
    pub unique_bytes: u64,
    /// Sealed (encrypted) bytes stored locally.
    pub stored_bytes: u64,
    /// Bytes dedup saved: referenced minus unique.
    pub dedup_saved_bytes: u64,
    /// Bytes holes (sparse regions, zero blocks) saved.
    pub sparse_saved_bytes: u64,
    pub blocks: BlockStates,
    /// Redundancy: with no peers, every block is local only.
    pub redundancy: String,
    /// Bytes written but not yet durable on this machine's disk (write buffers and block
    /// files not yet fsynced); 0 when not mounted. Added in 0.1 after `report_version` 1 was
    /// first published, hence the default.
    #[serde(default)]
    pub pending_bytes: u64,
    /// Metadata changes committed since the mount started, and how many of them are durable:
    /// once `durable_changes` reaches a value `committed_changes` had, everything committed
    /// up to then survives a crash. Both 0 when not mounted.
    #[serde(default)]
    pub committed_changes: u64,
    #[serde(default)]
    pub durable_changes: u64,
}

/// Blocks by state.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct BlockStates {
    /// Sealed and stored on this machine only (no peers yet).
    pub local_only: u64,
    /// Unreferenced, waiting for a durable checkpoint before deletion.
    pub awaiting_gc: u64,
}

impl StatusReport {
    pub fn from_counts(c: &Counts, block_size: u64) -> StatusReport {
        StatusReport {
            report_version: 1,
            mounted: false,
            mountpoint: None,
            pid: None,
            block_size,
            files: c.files,
            directories: c.dirs,
            inodes: c.inodes,
            logical_bytes: c.logical_bytes,
            referenced_bytes: c.referenced_plain_bytes,
            unique_bytes: c.block_plain_bytes,
            stored_bytes: c.block_sealed_bytes,
            dedup_saved_bytes: c.referenced_plain_bytes.saturating_sub(c.block_plain_bytes),
            sparse_saved_bytes: c.logical_bytes.saturating_sub(c.referenced_plain_bytes),
            blocks: BlockStates {
                local_only: c.blocks,
                awaiting_gc: c.gc_pending,
            },
            redundancy: "local only: no peers configured (single-node mode)".into(),
            pending_bytes: 0,
            committed_changes: 0,
            durable_changes: 0,
        }
    }

    /// The human-readable form; `color` adds ANSI colours (only on a terminal).
    pub fn render(&self, color: bool) -> String {
        let (bold, green, dim, reset) = if color {
            ("\x1b[1m", "\x1b[32m", "\x1b[2m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        let state = match (&self.mounted, &self.mountpoint) {
            (true, Some(m)) => format!(
                "{green}mounted{reset} at {m} (pid {})",
                self.pid.unwrap_or(0)
            ),
            _ => "not mounted".to_string(),
        };
        let mut s = String::new();
        s.push_str(&format!("{bold}bitcloud volume{reset}: {state}\n"));
        s.push_str(&format!(
            "  files        {} files, {} directories ({} inodes)\n",
            self.files, self.directories, self.inodes
        ));
        s.push_str(&format!("  logical      {}\n", human(self.logical_bytes)));
        s.push_str(&format!(
            "  stored       {} sealed in {} blocks of up to {}\n",
            human(self.stored_bytes),
            self.blocks.local_only,
            human(self.block_size)
        ));
        s.push_str(&format!(
            "  savings      dedup {}, sparse {}\n",
            human(self.dedup_saved_bytes),
            human(self.sparse_saved_bytes)
        ));
        s.push_str(&format!(
            "  blocks       {} local only, {} awaiting gc\n",
            self.blocks.local_only, self.blocks.awaiting_gc
        ));
        if self.mounted {
            s.push_str(&format!(
                "  pending      {} not yet on disk{}\n",
                human(self.pending_bytes),
                if self.pending_bytes == 0 {
                    ""
                } else {
                    " (next checkpoint)"
                }
            ));
        }
        s.push_str(&format!("  redundancy   {dim}{}{reset}\n", self.redundancy));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savings_are_derived_from_counts() {
        let c = Counts {
            files: 2,
            logical_bytes: 10 << 20,
            referenced_plain_bytes: 4 << 20,
            block_plain_bytes: 2 << 20,
            ..Counts::default()
        };
        let r = StatusReport::from_counts(&c, 1 << 20);
        assert_eq!(r.dedup_saved_bytes, 2 << 20);
        assert_eq!(r.sparse_saved_bytes, 6 << 20);
        assert!(!r.render(false).contains('\x1b'));
        assert!(r.render(true).contains('\x1b'));
    }
}
