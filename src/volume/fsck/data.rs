//! fsck phase 2: every block's bytes, read from its file, the inline table or (evicted)
//! the pool, decrypted and checked against its id; with `--repair` through a mount with
//! peers, a damaged or missing local block is rebuilt from its shards.

use std::collections::HashMap;
use std::time::Instant;

use super::{Checker, ProblemKind};
use crate::ids::BlockId;
use crate::meta::Reader;
use crate::meta::codec::BlockRecord;
use crate::pipeline::seal;
use crate::volume::{Result, Volume};

impl Checker<'_> {
    /// Phase 2: every block's bytes, on all cores (this thread and up to three more).
    /// Returns the blocks found damaged or missing.
    pub(super) fn check_data(
        &mut self,
        blocks: &[(BlockId, BlockRecord)],
    ) -> Result<HashMap<BlockId, usize>> {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        let total: u64 = blocks.iter().map(|(_, r)| r.sealed_len as u64).sum();
        let next = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let failures = parking_lot::Mutex::new(Vec::new());
        let (vol, verify) = (self.vol, self.opts.verify_data);
        // Checks the next unclaimed block; false when none is left. Shared by every thread.
        let step = || {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((id, r)) = blocks.get(i) else {
                return false;
            };
            if let Err(e) = check_block(vol, verify, id, r) {
                failures.lock().push((i, e));
            }
            done.fetch_add(r.sealed_len as u64, Ordering::Relaxed);
            true
        };
        let helpers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4)
            - 1;
        self.tick("data", 0, total, true);
        std::thread::scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|| while step() {});
            }
            // This thread works too, and reports progress between blocks.
            let mut last_tick = Instant::now();
            while step() {
                if last_tick.elapsed().as_millis() >= 100 {
                    self.tick("data", done.load(Ordering::Relaxed), total, true);
                    last_tick = Instant::now();
                }
            }
        });
        self.tick("data", total, total, true);
        let mut failures = failures.into_inner();
        failures.sort_by_key(|(i, _)| *i);
        let mut bad = HashMap::new();
        let mut failed_bytes = 0;
        for (i, (kind, why)) in failures {
            let (id, r) = &blocks[i];
            failed_bytes += r.sealed_len as u64;
            // While mounted the block may have been freed (and its file collected) after the
            // snapshot: only a block that is still referenced is a problem.
            if self.opts.online && self.vol.meta.read()?.block_record(id)?.is_none() {
                continue;
            }
            let p = self.problem(kind, format!("block {}: {why}", id.short()), vec![]);
            // Through a mount with a pool, --repair rebuilds the local copy from the shards
            // and checks it again.
            if self.opts.repair && self.vol.has_remote() {
                let restored = self
                    .vol
                    .restore_from_pool(id, r)
                    .and_then(|()| check_block(self.vol, true, id, r).map_err(|(_, why)| why));
                match restored {
                    Ok(()) => {
                        self.report.problems[p].repaired = true;
                        self.report.problems[p]
                            .detail
                            .push_str(" (rebuilt from the pool)");
                    }
                    Err(e) => self.report.problems[p]
                        .detail
                        .push_str(&format!(" (not rebuilt from the pool: {e})")),
                }
            }
            bad.insert(*id, p);
        }
        if verify {
            self.report.bytes_verified = total - failed_bytes;
        }
        Ok(bad)
    }
}

/// Reads one block (inline bytes or its file) and checks its size and header, and with
/// `verify_data` decrypts it and checks it against its id.
fn check_block(
    vol: &Volume,
    verify_data: bool,
    id: &BlockId,
    r: &BlockRecord,
) -> std::result::Result<(), (ProblemKind, String)> {
    let damaged = |why: String| (ProblemKind::DamagedBlock, why);
    let inline = vol
        .meta
        .read()
        .and_then(|tx| tx.inline_block(id))
        .map_err(|e| damaged(format!("reading the inline table: {e}")))?;
    let in_pool = || {
        vol.meta
            .read()
            .and_then(|tx| tx.placement(id))
            .ok()
            .flatten()
            .is_some_and(|p| p.is_full())
    };
    let sealed = match inline {
        Some(bytes) => bytes,
        // Evicted from the local cache: the pool holds it. Checked through the pool when
        // one is attached and data is verified; offline, only its placement is known.
        None if !vol.store.contains(id) && in_pool() => {
            if !verify_data || !vol.has_remote() {
                return Ok(());
            }
            vol.fetch_remote(id, r).map_err(|e| {
                (
                    ProblemKind::MissingBlock,
                    format!("not on this machine, and the pool could not give it: {e}"),
                )
            })?
        }
        None if !verify_data => {
            let path = vol.store.path_of(id);
            return match std::fs::metadata(&path) {
                Ok(m) if m.len() == r.sealed_len as u64 => Ok(()),
                Ok(m) => Err(damaged(format!(
                    "{} is {} bytes, {} expected",
                    path.display(),
                    m.len(),
                    r.sealed_len
                ))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err((
                    ProblemKind::MissingBlock,
                    format!("{} does not exist", path.display()),
                )),
                Err(e) => Err(damaged(format!("{}: {e}", path.display()))),
            };
        }
        None => vol.store.get(id).map_err(|e| match e {
            crate::store::StoreError::Missing(_) => (
                ProblemKind::MissingBlock,
                format!("{} does not exist", vol.store.path_of(id).display()),
            ),
            e => damaged(e.to_string()),
        })?,
    };
    if sealed.len() != r.sealed_len as usize {
        return Err(damaged(format!(
            "{} sealed bytes, {} expected",
            sealed.len(),
            r.sealed_len
        )));
    }
    if let Some(h) = r.header_hash
        && seal::header_hash(&sealed) != Some(h)
    {
        return Err(damaged(
            "its age header differs from the one recorded".into(),
        ));
    }
    if verify_data {
        let plain = seal::open(&vol.keys.identity, &vol.keys.dedup, *id, &sealed)
            .map_err(|e| damaged(e.to_string()))?;
        if plain.len() != r.plain_len as usize {
            return Err(damaged(format!(
                "{} plaintext bytes, {} expected",
                plain.len(),
                r.plain_len
            )));
        }
    }
    Ok(())
}
