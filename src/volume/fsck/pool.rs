//! fsck of the pool (phase 4, through a mount with peers): every holder of every shard of
//! every placed block proves it has it now ([`Remote::check_shards`]). A block whose
//! holders do not all prove theirs is short of redundancy; one with fewer than `k` proved
//! shards and no local copy cannot be read back now. With `--repair`, the failed shards are
//! rebuilt on other peers at once ([`Remote::respread`]), whatever the grace period.
//!
//! The chunks of the current metadata backup (what `bitcloud recover` would bring back) are
//! audited the same way; with `--repair`, failed ones are placed anew by a backup made
//! there and then ([`Remote::respread_backup`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{Checker, ProblemKind};
use crate::ids::BlockId;
use crate::meta::Reader;
use crate::meta::placement::Placement;
use crate::volume::Result;
use crate::volume::remote::{Remote, ShardCheck};

/// Placements read per step.
const BATCH: usize = 1024;
/// Blocks checked at once (each audits all its shards at once).
const IN_FLIGHT: usize = 4;

/// What the audits of one block found, and what became of its re-spread.
struct BlockCheck {
    id: BlockId,
    placement: Placement,
    checks: Vec<ShardCheck>,
    /// `--repair` of a block short of shards: `Ok` rebuilt elsewhere, or why not.
    respread: Option<std::result::Result<(), String>>,
}

impl Checker<'_> {
    /// Phase 4 (see the module docs).
    pub(super) fn check_pool(&mut self, remote: &dyn Remote) -> Result<()> {
        let total = self.vol.meta.read()?.placement_count()?;
        self.tick("pool", 0, total, false);
        let mut done = 0u64;
        let mut after: Option<BlockId> = None;
        loop {
            let batch = self.vol.placements(after.as_ref(), BATCH)?;
            let Some((last, _)) = batch.last() else { break };
            after = Some(*last);
            let end = batch.len() < BATCH;
            let full: Vec<(BlockId, Placement)> =
                batch.into_iter().filter(|(_, p)| p.is_full()).collect();
            let repair = self.opts.repair;
            for c in audit_blocks(remote, full, repair, &mut |n| {
                self.tick("pool", done + n, total, false)
            }) {
                self.settle(c)?;
            }
            done += BATCH as u64;
            if end {
                break;
            }
        }
        self.tick("pool", total, total, false);
        self.check_backup(remote)
    }

    /// The current metadata backup's chunks (see the module docs).
    fn check_backup(&mut self, remote: &dyn Remote) -> Result<()> {
        let (seq, _) = self.vol.backup_seq()?;
        if seq == 0 {
            return Ok(());
        }
        let chunks: Vec<(BlockId, Placement)> = self
            .vol
            .meta_chunks()?
            .into_iter()
            .filter(|(_, c)| c.last_seq == seq)
            .map(|(id, c)| (id, c.placement))
            .collect();
        let total = chunks.len() as u64;
        self.tick("metadata backup", 0, total, false);
        let checks = audit_blocks(remote, chunks, false, &mut |n| {
            self.tick("metadata backup", n, total, false)
        });
        let mut failed = Vec::new();
        let mut problems = Vec::new();
        for c in checks {
            let (placed, proved) = self.tally(&c.checks);
            if proved == placed {
                continue;
            }
            let mut why = Vec::new();
            for (i, s) in c.checks.iter().enumerate() {
                if let ShardCheck::Bad(w) | ShardCheck::NoAnswer(w) = s {
                    why.push(format!("shard {i}: {w}"));
                    failed.push(c.placement.shards[i].clone());
                }
            }
            let kind = if proved < c.placement.data as usize {
                ProblemKind::UnrecoverableInPool
            } else {
                ProblemKind::ShortOfShards
            };
            problems.push(self.problem(
                kind,
                format!(
                    "metadata backup #{seq}, chunk {}: {proved} of {placed} shards proved ({})",
                    c.id.short(),
                    why.join("; ")
                ),
                vec![],
            ));
        }
        self.tick("metadata backup", total, total, false);
        if self.opts.repair && !failed.is_empty() {
            let r = remote.respread_backup(&failed);
            for p in problems {
                let pr = &mut self.report.problems[p];
                match &r {
                    Ok(()) => {
                        pr.repaired = true;
                        pr.detail
                            .push_str(" (a new backup placed it on other peers)");
                    }
                    Err(e) => pr.detail.push_str(&format!(" (not placed anew: {e})")),
                }
            }
        }
        Ok(())
    }

    /// Counts a block's (or chunk's) audits into the report: (shards placed, proved).
    fn tally(&mut self, checks: &[ShardCheck]) -> (usize, usize) {
        let placed = checks
            .iter()
            .filter(|s| **s != ShardCheck::Unplaced)
            .count();
        let proved = checks.iter().filter(|s| **s == ShardCheck::Good).count();
        self.report.shards_audited += placed as u64;
        self.report.shards_proved += proved as u64;
        (placed, proved)
    }

    fn settle(&mut self, c: BlockCheck) -> Result<()> {
        let (_, proved) = self.tally(&c.checks);
        if proved == c.checks.len() {
            return Ok(());
        }
        // While mounted the block may have been freed meanwhile.
        if self.vol.meta.read()?.block_record(&c.id)?.is_none() {
            return Ok(());
        }
        let why: Vec<String> = c
            .checks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                ShardCheck::Bad(w) | ShardCheck::NoAnswer(w) => Some(format!("shard {i}: {w}")),
                ShardCheck::Unplaced => Some(format!("shard {i}: not placed")),
                ShardCheck::Good => None,
            })
            .collect();
        let k = c.placement.data as usize;
        let local =
            self.vol.store.contains(&c.id) || self.vol.meta.read()?.inline_block(&c.id)?.is_some();
        let kind = if proved < k && !local {
            ProblemKind::UnrecoverableInPool
        } else {
            ProblemKind::ShortOfShards
        };
        let p = self.problem(
            kind,
            format!(
                "block {}: {proved} of {} shards proved ({})",
                c.id.short(),
                c.checks.len(),
                why.join("; ")
            ),
            vec![],
        );
        match c.respread {
            None => {}
            Some(Ok(())) => {
                self.report.problems[p].repaired = true;
                self.report.problems[p]
                    .detail
                    .push_str(" (rebuilt on other peers)");
            }
            Some(Err(e)) => self.report.problems[p]
                .detail
                .push_str(&format!(" (not rebuilt: {e})")),
        }
        Ok(())
    }
}

/// Audits the shards of `blocks`, [`IN_FLIGHT`] blocks at once, and with `repair`
/// re-spreads each block short of shards (from its local copy or `k` good shards; one with
/// neither fails and says so). `progress` hears how many are done, at least every second whatever the pool
/// does (a client stops waiting on a silent fsck).
fn audit_blocks(
    remote: &dyn Remote,
    blocks: Vec<(BlockId, Placement)>,
    repair: bool,
    progress: &mut dyn FnMut(u64),
) -> Vec<BlockCheck> {
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let out = parking_lot::Mutex::new(Vec::with_capacity(blocks.len()));
    let step = || {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some((id, p)) = blocks.get(i) else {
            return false;
        };
        let checks = remote.check_shards(id, p);
        let failed: Vec<usize> = (0..checks.len())
            .filter(|&i| checks[i] != ShardCheck::Good)
            .collect();
        let respread = (repair && !failed.is_empty()).then(|| remote.respread(id, p, &failed));
        out.lock().push(BlockCheck {
            id: *id,
            placement: p.clone(),
            checks,
            respread,
        });
        done.fetch_add(1, Ordering::Relaxed);
        true
    };
    let running = AtomicUsize::new(IN_FLIGHT);
    std::thread::scope(|scope| {
        for _ in 0..IN_FLIGHT {
            scope.spawn(|| {
                while step() {}
                running.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // This thread only reports.
        while running.load(Ordering::Relaxed) > 0 {
            progress(done.load(Ordering::Relaxed));
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    let mut out = out.into_inner();
    out.sort_by_key(|c| c.id);
    out
}
