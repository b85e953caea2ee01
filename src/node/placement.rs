//! Where a block's shards go: weighted rendezvous hashing (highest random weight) over
//! BLAKE3, one shard per failure domain.
//!
//! For a block, every candidate peer gets the score `weight / -ln(u)`, with `u` in (0, 1)
//! from `BLAKE3(key ‖ peer)`; the shards go to the best-scoring peers, skipping a peer
//! whose failure domain (its host: peers behind one IP fail together) already has one. The
//! order is deterministic (every machine computes the same one from the same inputs), a
//! peer joining or leaving moves only the shards it wins or held, and a peer's share grows
//! with its weight (free space, later its score). The key is derived from the block with
//! the volume's secret, so nobody else can tell which peers hold a volume's shards.
//!
//! Pure: callers pass the candidates; nothing here knows about connections.

/// A peer that may receive shards.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Stable bytes of the peer's identity (its peer id).
    pub peer: Vec<u8>,
    /// Peers with the same domain fail together (same host); one shard per domain.
    pub domain: Vec<u8>,
    /// Relative share (> 0): free space offered, scaled by reputation.
    pub weight: f64,
}

/// The score of `peer` for `key`.
pub fn score(key: &[u8; 32], peer: &[u8], weight: f64) -> f64 {
    let mut h = blake3::Hasher::new_derive_key("bitcloud 2026-12 shard placement v1");
    h.update(key);
    h.update(&(peer.len() as u32).to_le_bytes());
    h.update(peer);
    let bytes = h.finalize();
    let x = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"));
    // u in (0, 1): never 0 (ln would be -inf) nor 1 (division by zero).
    let u = (x as f64 + 0.5) / 18_446_744_073_709_551_616.0;
    weight / -u.ln()
}

/// Candidates in the order they should receive a block's shards, best first, at most one
/// per domain; `n` at most. Candidates with no weight are never chosen.
pub fn rank(key: &[u8; 32], candidates: &[Candidate], n: usize) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.weight > 0.0 && c.weight.is_finite())
        .map(|(i, c)| (score(key, &c.peer, c.weight), i))
        .collect();
    // Highest score first; ties (practically impossible) by peer bytes, to stay deterministic.
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| candidates[a.1].peer.cmp(&candidates[b.1].peer))
    });
    let mut used_domains: Vec<&[u8]> = Vec::new();
    let mut out = Vec::new();
    for (_, i) in scored {
        if out.len() == n {
            break;
        }
        let d = candidates[i].domain.as_slice();
        if used_domains.contains(&d) {
            continue;
        }
        used_domains.push(d);
        out.push(i);
    }
    out
}

/// The candidates a block can still take shards on: neither one of its `holders` nor in a
/// holder's domain (indexes into `all`).
pub fn free(all: &[Candidate], holders: &[Vec<u8>]) -> Vec<usize> {
    let used: Vec<&[u8]> = all
        .iter()
        .filter(|c| holders.contains(&c.peer))
        .map(|c| c.domain.as_slice())
        .collect();
    (0..all.len())
        .filter(|&i| !holders.contains(&all[i].peer) && !used.contains(&all[i].domain.as_slice()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                peer: format!("peer-{i}").into_bytes(),
                domain: format!("host-{i}").into_bytes(),
                weight: 1.0,
            })
            .collect()
    }

    fn key(i: u64) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn distinct_domains_deterministic_and_stable() {
        let mut c = cands(10);
        c[3].domain = c[2].domain.clone(); // two peers on one host
        let r = rank(&key(1), &c, 8);
        assert_eq!(r.len(), 8);
        assert_eq!(r, rank(&key(1), &c, 8), "deterministic");
        assert!(!(r.contains(&2) && r.contains(&3)), "one shard per host");
        // Removing a peer that was not chosen changes nothing; removing a chosen one moves
        // only its shard.
        let all = rank(&key(1), &c, 9);
        let gone = all[0];
        let rest: Vec<Candidate> = c
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != gone)
            .map(|(_, x)| x.clone())
            .collect();
        let after: Vec<Vec<u8>> = rank(&key(1), &rest, 8)
            .into_iter()
            .map(|i| rest[i].peer.clone())
            .collect();
        let before: Vec<Vec<u8>> = all[1..].iter().map(|&i| c[i].peer.clone()).collect();
        assert_eq!(after, before);
        // Fewer domains than asked: as many as there are.
        assert_eq!(rank(&key(2), &cands(3), 8).len(), 3);
        let mut none = cands(2);
        none[0].weight = 0.0;
        assert_eq!(rank(&key(2), &none, 8), vec![1]);
    }

    #[test]
    fn load_follows_weight_and_spreads_evenly() {
        let mut c = cands(20);
        c[0].weight = 3.0;
        let mut load = [0usize; 20];
        for b in 0..20_000 {
            for i in rank(&key(b), &c, 1) {
                load[i] += 1;
            }
        }
        let mean_others = load[1..].iter().sum::<usize>() as f64 / 19.0;
        let ratio = load[0] as f64 / mean_others;
        assert!((2.5..3.5).contains(&ratio), "weight 3 got {ratio:.2}x");
        let (lo, hi) = (
            *load[1..].iter().min().unwrap() as f64,
            *load[1..].iter().max().unwrap() as f64,
        );
        assert!(
            hi / mean_others < 1.15 && lo / mean_others > 0.85,
            "{lo} {hi} {mean_others}"
        );
    }
}
