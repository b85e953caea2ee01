//! The status report: what `bitcloud status` prints, built from the metadata counts, the
//! pool's queues and the node's peer table. The JSON form is a stable interface: fields are
//! only ever added, except `redundancy`, which became an object (block counts by how well
//! the pool holds them) when the pool arrived; its old text is `redundancy_summary`.

use serde::{Deserialize, Serialize};

use crate::meta::Counts;
use crate::meta::placement::Redundancy;
use crate::units::bytes as human;

/// A snapshot of the volume, as `status --json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
    /// Sealed (encrypted) bytes of all distinct blocks.
    pub stored_bytes: u64,
    /// Bytes dedup saved: referenced minus unique.
    pub dedup_saved_bytes: u64,
    /// Bytes holes (sparse regions, zero blocks) saved.
    pub sparse_saved_bytes: u64,
    pub blocks: BlockStates,
    /// Blocks by redundancy: `full` (every shard placed), `degraded` (readable from the
    /// pool, some shards missing), `local_only` (the pool cannot rebuild it; this machine
    /// has it), `lost` (neither).
    pub redundancy: Redundancy,
    /// The same in words.
    #[serde(default)]
    pub redundancy_summary: String,
    /// Erasure scheme of new blocks, "K+M".
    #[serde(default)]
    pub shards: String,
    /// Bytes written but not yet durable on this machine's disk (write buffers and block
    /// files not yet fsynced); 0 when not mounted.
    #[serde(default)]
    pub pending_bytes: u64,
    /// Metadata changes committed since the mount started, and how many of them are durable:
    /// once `durable_changes` reaches a value `committed_changes` had, everything committed
    /// up to then survives a crash. Both 0 when not mounted.
    #[serde(default)]
    pub committed_changes: u64,
    #[serde(default)]
    pub durable_changes: u64,
    /// The upload queue.
    #[serde(default)]
    pub upload: UploadReport,
    /// Local copies of blocks.
    #[serde(default)]
    pub cache: CacheReport,
    /// This process's node (when mounted).
    #[serde(default)]
    pub node: Option<NodeReport>,
    /// Peers known to the node.
    #[serde(default)]
    pub peers: Vec<PeerReport>,
    /// Space this machine stores for others (when it offers some).
    #[serde(default)]
    pub store: Option<StoreReport>,
    /// What the pool's upkeep did since the mount started.
    #[serde(default)]
    pub healing: HealingReport,
    /// The volume's metadata in the pool (what `bitcloud recover` brings back).
    #[serde(default)]
    pub backup: BackupReport,
}

/// The volume's metadata backup in the pool.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupReport {
    /// "published", "publishing", "failing", "not yet published", "never published"
    /// (offline, none yet), "superseded" (the volume was recovered elsewhere), or "" with
    /// no pool.
    pub state: String,
    /// Sequence of the newest backup published (0: none).
    pub seq: u64,
    /// When it was published (seconds since the epoch), and how long ago.
    pub published_at: Option<u64>,
    pub age_secs: Option<u64>,
    /// Chunks the kept backups use (manifests included) and their sealed bytes.
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Of those, the newest backup's.
    #[serde(default)]
    pub current_chunks: u64,
    #[serde(default)]
    pub current_bytes: u64,
    /// Peers that took the current root record the last time it was given (mounted only).
    pub root_holders: u64,
    /// Collected blocks whose shards are held because a kept backup may name them.
    pub releases_held: u64,
    pub last_error: Option<String>,
    /// The change count (`committed_changes`) the newest backup covers (mounted only).
    #[serde(default)]
    pub changes_covered: Option<u64>,
}

/// The pool's upkeep since the mount started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HealingReport {
    /// Shards rebuilt and placed by repairs.
    pub repaired_shards: u64,
    /// Leases renewed on holders.
    pub renewed_leases: u64,
}

/// Blocks by state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BlockStates {
    /// Blocks referenced by files (each counted once).
    pub local_only: u64,
    /// Unreferenced, waiting for a durable checkpoint before deletion.
    pub awaiting_gc: u64,
}

/// Blocks waiting for the pool.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UploadReport {
    pub pending_blocks: u64,
    pub pending_bytes: u64,
    /// Seconds the oldest block has waited.
    pub oldest_pending_secs: Option<u64>,
    /// Collected blocks whose shards are still to be released.
    #[serde(default)]
    pub releases_pending: u64,
}

/// The local block files.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CacheReport {
    pub used_bytes: u64,
    /// `None`: no limit.
    pub limit_bytes: Option<u64>,
}

/// A node: its peer id and listen addresses (each ending in `/p2p/<id>`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeReport {
    pub id: String,
    pub listen: Vec<String>,
}

/// One known peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerReport {
    pub id: String,
    pub addresses: Vec<String>,
    pub connected: bool,
    /// Last ping round trip.
    pub latency_ms: Option<f64>,
    /// When it was last connected or answered (seconds since the epoch).
    pub last_seen: Option<u64>,
    /// It stores shards (speaks the shard protocol).
    pub storage: bool,
    pub offered_bytes: u64,
    pub used_bytes: u64,
    /// Of that, what this volume stores there.
    #[serde(default)]
    pub used_by_us_bytes: u64,
    /// Shards of this volume's blocks it holds.
    pub our_shards: u64,
    /// Shards of this volume's metadata backup it holds.
    #[serde(default)]
    pub our_backup_shards: u64,
    pub failed_requests: u64,
    pub bad_shards: u64,
    /// Shards it stored for us and no longer had when asked.
    #[serde(default)]
    pub lost_shards: u64,
    pub bad_messages: u64,
    /// Reputation in (0, 1] (docs/pool.md); below 0.5 the peer is banned.
    #[serde(default)]
    pub score: f64,
    #[serde(default)]
    pub audits_passed: u64,
    #[serde(default)]
    pub audits_failed: u64,
    /// Its requests refused for flooding this node.
    #[serde(default)]
    pub floods: u64,
}

/// The shards this machine stores for others.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StoreReport {
    pub offered_bytes: u64,
    pub used_bytes: u64,
    pub shards: u64,
    /// Copies whose lease ran out, deleted after the trash period.
    #[serde(default)]
    pub trash_bytes: u64,
    #[serde(default)]
    pub lease_secs: u64,
}

impl StatusReport {
    pub fn from_counts(c: &Counts, block_size: u64) -> StatusReport {
        StatusReport {
            report_version: 2,
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
            redundancy: Redundancy {
                local_only: c.blocks,
                ..Redundancy::default()
            },
            redundancy_summary: String::new(),
            shards: String::new(),
            pending_bytes: 0,
            committed_changes: 0,
            durable_changes: 0,
            upload: UploadReport::default(),
            cache: CacheReport::default(),
            node: None,
            peers: Vec::new(),
            store: None,
            healing: HealingReport::default(),
            backup: BackupReport::default(),
        }
    }

    /// Fills the pool figures and the summary line from them.
    pub fn set_pool(&mut self, r: &crate::volume::remote::RemoteStatus) {
        self.redundancy = r.redundancy;
        self.blocks.local_only = r.redundancy.local_only;
        self.upload = UploadReport {
            pending_blocks: r.pending_blocks,
            pending_bytes: r.pending_bytes,
            oldest_pending_secs: r.oldest_pending_secs,
            releases_pending: r.releases_pending,
        };
        self.cache = CacheReport {
            used_bytes: r.cache_used_bytes,
            limit_bytes: r.cache_limit_bytes,
        };
        self.healing = HealingReport {
            repaired_shards: r.counters.repaired_shards,
            renewed_leases: r.counters.renewed_leases,
        };
        let b = &r.backup;
        let now = crate::volume::backup::unix_now();
        let live = r.backup_live.clone().unwrap_or_default();
        let state = if live.superseded.is_some() {
            "superseded"
        } else if r.backup_live.is_none() {
            if b.seq > 0 {
                "published"
            } else {
                "never published"
            }
        } else if live.busy {
            "publishing"
        } else if live.last_error.is_some() {
            "failing"
        } else if b.seq == 0 {
            "not yet published"
        } else {
            "published"
        };
        self.backup = BackupReport {
            state: state.into(),
            seq: b.seq,
            published_at: b.published_at,
            age_secs: b.published_at.map(|t| now.saturating_sub(t)),
            chunks: b.chunks,
            chunk_bytes: b.chunk_bytes,
            current_chunks: b.current_chunks,
            current_bytes: b.current_bytes,
            root_holders: live.root_holders,
            releases_held: b.releases_held,
            last_error: live.superseded.or(live.last_error),
            changes_covered: live.changes_covered,
        };
        self.summarize();
    }

    fn summarize(&mut self) {
        let r = &self.redundancy;
        let total = r.full + r.degraded + r.local_only + r.lost;
        self.redundancy_summary = if total == 0 {
            "no blocks yet".into()
        } else if r.lost > 0 {
            format!(
                "{} blocks LOST (neither here nor rebuildable from the pool)",
                r.lost
            )
        } else if r.full == total {
            "every block at full redundancy in the pool".into()
        } else if r.full + r.degraded == total {
            format!("every block in the pool; {} degraded", r.degraded)
        } else {
            format!(
                "{} of {total} blocks only on this machine{}",
                r.local_only,
                if self.peers.iter().any(|p| p.connected && p.storage) {
                    ""
                } else {
                    " (no storage peers connected)"
                }
            )
        };
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
        let blocks = self.redundancy.full
            + self.redundancy.degraded
            + self.redundancy.local_only
            + self.redundancy.lost;
        s.push_str(&format!(
            "  stored       {} sealed in {} blocks of up to {}\n",
            human(self.stored_bytes),
            blocks,
            human(self.block_size)
        ));
        s.push_str(&format!(
            "  savings      dedup {}, sparse {}\n",
            human(self.dedup_saved_bytes),
            human(self.sparse_saved_bytes)
        ));
        let r = &self.redundancy;
        s.push_str(&format!(
            "  redundancy   {} full, {} degraded, {} local only, {} lost{}\n",
            r.full,
            r.degraded,
            r.local_only,
            r.lost,
            if self.shards.is_empty() {
                String::new()
            } else {
                format!(" (shards {})", self.shards)
            }
        ));
        s.push_str(&format!(
            "               {dim}{}{reset}\n",
            self.redundancy_summary
        ));
        let u = &self.upload;
        s.push_str(&format!(
            "  upload       {} in {} blocks waiting{}\n",
            human(u.pending_bytes),
            u.pending_blocks,
            u.oldest_pending_secs
                .map(|t| format!(", oldest {}", crate::units::duration(t)))
                .unwrap_or_default()
        ));
        s.push_str(&format!(
            "  cache        {} of {}\n",
            human(self.cache.used_bytes),
            self.cache.limit_bytes.map_or("no limit".to_string(), human)
        ));
        s.push_str(&format!(
            "  blocks       {} awaiting gc\n",
            self.blocks.awaiting_gc
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
        let b = &self.backup;
        if b.seq > 0 || !b.state.is_empty() && self.peers.iter().any(|p| p.storage) {
            let when = b
                .age_secs
                .map(|a| format!(", {} ago", crate::units::duration(a)))
                .unwrap_or_default();
            let line = if b.seq > 0 {
                format!(
                    "backup #{}{when} ({} chunks, {}){}",
                    b.seq,
                    b.current_chunks,
                    human(b.current_bytes),
                    if b.root_holders > 0 {
                        format!(", root on {} peers", b.root_holders)
                    } else {
                        String::new()
                    }
                )
            } else {
                "not in the pool yet".into()
            };
            s.push_str(&format!("  metadata     {line} [{}]\n", b.state));
            if let Some(e) = &b.last_error {
                s.push_str(&format!("               {dim}{e}{reset}\n"));
            }
        }
        if let Some(n) = &self.node {
            if self.mounted {
                s.push_str(&format!(
                    "  upkeep       {} shards repaired, {} leases renewed since the mount\n",
                    self.healing.repaired_shards, self.healing.renewed_leases
                ));
            }
            s.push_str(&node_lines(n, &self.peers, self.store.as_ref()));
        }
        s
    }
}

/// The node's lines of a report (shared with `bitcloud node`'s status).
pub fn node_lines(n: &NodeReport, peers: &[PeerReport], store: Option<&StoreReport>) -> String {
    let mut s = String::new();
    s.push_str(&format!("  node         {}\n", n.id));
    for a in &n.listen {
        s.push_str(&format!("               {a}\n"));
    }
    if let Some(st) = store {
        s.push_str(&format!(
            "  offered      {} of {} used by others ({} shards{})\n",
            human(st.used_bytes),
            human(st.offered_bytes),
            st.shards,
            if st.trash_bytes > 0 {
                format!(", {} expired in the trash", human(st.trash_bytes))
            } else {
                String::new()
            }
        ));
    }
    let on_others: u64 = peers.iter().map(|p| p.used_by_us_bytes).sum();
    if on_others > 0 {
        s.push_str(&format!(
            "  on others    {} of ours on {} peers\n",
            human(on_others),
            peers.iter().filter(|p| p.used_by_us_bytes > 0).count()
        ));
    }
    let connected = peers.iter().filter(|p| p.connected).count();
    s.push_str(&format!(
        "  peers        {} known, {} connected\n",
        peers.len(),
        connected
    ));
    for p in peers {
        s.push_str(&format!(
            "    {} {} {}{} free {} ours {}{}\n",
            p.id,
            if p.connected { "up  " } else { "down" },
            p.latency_ms
                .map(|l| format!("{l:.1} ms "))
                .unwrap_or_default(),
            p.addresses.first().map(String::as_str).unwrap_or("-"),
            human(p.offered_bytes.saturating_sub(p.used_bytes)),
            p.our_shards + p.our_backup_shards,
            { format!(" {}", peer_health(p)) }
        ));
    }
    s
}

/// A peer's reputation in a few words: score, audits passed of those run, last seen (when
/// not connected), and what went wrong.
pub fn peer_health(p: &PeerReport) -> String {
    let mut s = format!(
        "score {:.2} audits {}/{}",
        p.score,
        p.audits_passed,
        p.audits_passed + p.audits_failed
    );
    if !p.connected {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match p.last_seen {
            Some(t) => s.push_str(&format!(
                " last seen {} ago",
                crate::units::duration(now.saturating_sub(t))
            )),
            None => s.push_str(" never seen"),
        }
    }
    if p.bad_shards + p.lost_shards > 0 {
        s.push_str(&format!(" BAD {} LOST {}", p.bad_shards, p.lost_shards));
    }
    if p.floods > 0 {
        s.push_str(&format!(" FLOODS {}", p.floods));
    }
    if p.score < crate::node::peers::BANNED_BELOW {
        s.push_str(" BANNED");
    }
    s
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

    #[test]
    fn json_keys_that_must_keep_their_names() {
        let mut r = StatusReport::from_counts(&Counts::default(), 1 << 20);
        r.node = Some(NodeReport {
            id: "x".into(),
            listen: vec!["/ip4/127.0.0.1/tcp/1/p2p/x".into()],
        });
        let v = serde_json::to_value(&r).unwrap();
        for path in [
            "/redundancy/full",
            "/redundancy/degraded",
            "/redundancy/local_only",
            "/redundancy/lost",
            "/upload/pending_bytes",
            "/cache/used_bytes",
            "/peers",
            "/node/id",
            "/node/listen",
            "/backup/state",
            "/backup/seq",
        ] {
            assert!(v.pointer(path).is_some(), "{path} missing");
        }
    }
}
