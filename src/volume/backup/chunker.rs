//! Cutting the metadata dump into chunks at content-defined points, so that a change to a
//! few rows changes only the chunks that hold them: the next backup uploads those and
//! reuses the rest. Pure.
//!
//! A cut comes after an entry with a probability of its size over [`TARGET`], decided by a
//! keyed hash of its table and key alone (not of its position or of what came before), so
//! cut points stay where they were when rows elsewhere change. Chunks are at least [`MIN`]
//! (except at the end of a section: sections end chunks, so a change in one table never
//! moves the chunks of another) and at most the caller's `max` (a single larger entry
//! makes a chunk of its own).

use crate::meta::backup::push_entry;
use crate::pipeline::block_id::DedupKey;

/// Average chunk size aimed at. Smaller chunks upload less per change but cost more shards
/// and manifest entries (about 600 bytes each with 4+4).
pub const TARGET: u64 = 128 * 1024;
/// No cut before a chunk has this much.
pub const MIN: usize = 16 * 1024;

/// Gathers dump entries into chunks.
pub struct Chunker<'k> {
    key: &'k DedupKey,
    max: usize,
    buf: Vec<u8>,
}

impl<'k> Chunker<'k> {
    pub fn new(key: &'k DedupKey, max: usize) -> Chunker<'k> {
        Chunker {
            key,
            max: max.max(MIN),
            buf: Vec::new(),
        }
    }

    /// Adds an entry; returns the chunks it completed (zero, one or two).
    pub fn push(&mut self, table: u8, key: &[u8], value: &[u8]) -> Vec<Vec<u8>> {
        let mut done = Vec::new();
        let len = 2 + 1 + key.len() + 4 + value.len();
        if !self.buf.is_empty() && self.buf.len() + len > self.max {
            done.push(std::mem::take(&mut self.buf));
        }
        push_entry(&mut self.buf, table, key, value);
        if self.buf.len() >= self.max || (self.buf.len() >= MIN && self.cuts_after(table, key, len))
        {
            done.push(std::mem::take(&mut self.buf));
        }
        done
    }

    /// Ends a section: what is gathered becomes a chunk.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
    }

    fn cuts_after(&self, table: u8, key: &[u8], len: usize) -> bool {
        let mut h = blake3::Hasher::new_keyed(&self.key.0);
        h.update(b"cut");
        h.update(&[table]);
        h.update(key);
        let x = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8"));
        // P(cut) = len / TARGET: the expected bytes between cuts is TARGET.
        u128::from(x) * u128::from(TARGET) < (len as u128) << 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: u64, skip: Option<u64>) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .filter(|i| Some(*i) != skip)
            .map(|i| {
                (
                    i.to_be_bytes().to_vec(),
                    vec![(i % 251) as u8; 40 + (i % 300) as usize],
                )
            })
            .collect()
    }

    fn cut(rows: &[(Vec<u8>, Vec<u8>)], max: usize) -> Vec<Vec<u8>> {
        let key = DedupKey([5; 32]);
        let mut c = Chunker::new(&key, max);
        let mut out = Vec::new();
        for (k, v) in rows {
            out.extend(c.push(1, k, v));
        }
        out.extend(c.finish());
        out
    }

    #[test]
    fn chunks_keep_every_entry_and_their_bounds() {
        let all = rows(20_000, None);
        let chunks = cut(&all, 1 << 20);
        let joined: Vec<u8> = chunks.concat();
        let mut expect = Vec::new();
        for (k, v) in &all {
            push_entry(&mut expect, 1, k, v);
        }
        assert_eq!(joined, expect);
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        let mean = total / chunks.len();
        assert!(
            (TARGET as usize / 2..TARGET as usize * 2).contains(&mean),
            "mean chunk {mean} bytes"
        );
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= MIN && c.len() <= 1 << 20);
            assert!(
                crate::meta::backup::entries(c).is_ok(),
                "chunks hold whole entries"
            );
        }
        let small = cut(&all, 64 * 1024);
        assert!(small.iter().all(|c| c.len() <= 64 * 1024));
    }

    #[test]
    fn one_changed_row_changes_one_or_two_chunks() {
        let before = cut(&rows(20_000, None), 1 << 20);
        let after = cut(&rows(20_000, Some(9_999)), 1 << 20);
        let old: std::collections::HashSet<&Vec<u8>> = before.iter().collect();
        let new_chunks = after.iter().filter(|c| !old.contains(c)).count();
        assert!(before.len() > 20);
        assert!(
            new_chunks <= 2,
            "{new_chunks} of {} chunks changed",
            after.len()
        );
    }
}
