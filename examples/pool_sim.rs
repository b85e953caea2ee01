//! The nodepool at scale, simulated: placement balance, repair traffic after losing 10 % of
//! the nodes, time back to full redundancy, and the owner's metadata per block.
//!
//! A faithful model, not a second implementation: shards are placed by the pool's own
//! code (`node::placement::rank` over candidates weighted by free space, one shard per
//! failure domain, `placement::free` for a repair's new holders), candidates' free space
//! is refreshed every [`REFRESH`] blocks as the real `Info` polling does, and repair follows
//! the repairer's rules (a block below `k + margin` live shards has exactly its missing
//! indices rebuilt, from `k` shards fetched from the pool when there is no local copy).
//! What it does not model is the network: time is traffic over a link speed.
//!
//! ```text
//! cargo run --release --example pool_sim            # 200 nodes, 100,000 blocks
//! cargo run --example pool_sim -- --quick           # 200 nodes, 10,000 blocks
//! cargo nextest run -E 'test(a_quick_simulation)'    # the same, as CI runs it
//! cargo run --example pool_sim -- --nodes 500 --blocks 200000
//! ```
//! Exits 1 when an aim is missed (balance over 1.5x, repair reading more than k times the
//! lost bytes, a block lost).

use bitcloud::ids::ShardId;
use bitcloud::meta::placement::{Placement, ShardPlace};
use bitcloud::node::placement::{Candidate, free, rank};

/// Candidates' free space is refreshed this often (in blocks placed).
const REFRESH: usize = 1000;
const SHARD: u64 = 256 << 10;

struct Node {
    peer: Vec<u8>,
    domain: Vec<u8>,
    offer: u64,
    used: u64,
    alive: bool,
}

struct Args {
    nodes: usize,
    blocks: usize,
    k: usize,
    m: usize,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 200,
        blocks: 100_000,
        k: 4,
        m: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut num = |what: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        match x.as_str() {
            "--quick" => a.blocks = 10_000,
            "--shards" => {
                let v = it.next().unwrap_or_default();
                let (k, m) = v.split_once('+').expect("--shards K+M");
                (a.k, a.m) = (k.parse().expect("K"), m.parse().expect("M"));
            }
            "--nodes" => a.nodes = num("--nodes"),
            "--blocks" => a.blocks = num("--blocks"),
            other => {
                panic!("unknown argument {other:?} (--quick, --nodes N, --blocks N, --shards K+M)")
            }
        }
    }
    a
}

/// A deterministic stream of u64s (splitmix64), so every run gives the same numbers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn candidates(nodes: &[Node]) -> Vec<Candidate> {
    nodes
        .iter()
        .filter(|n| n.alive)
        .map(|n| Candidate {
            peer: n.peer.clone(),
            domain: n.domain.clone(),
            weight: n.offer.saturating_sub(n.used) as f64,
        })
        .collect()
}

fn key(block: usize) -> [u8; 32] {
    *blake3::hash(format!("block {block}").as_bytes()).as_bytes()
}

/// Max and min of `load(node) / mean` over the live nodes.
fn spread(nodes: &[Node], load: impl Fn(&Node) -> f64) -> (f64, f64) {
    let live: Vec<f64> = nodes.iter().filter(|n| n.alive).map(load).collect();
    let mean = live.iter().sum::<f64>() / live.len() as f64;
    let max = live.iter().cloned().fold(f64::MIN, f64::max);
    let min = live.iter().cloned().fold(f64::MAX, f64::min);
    (max / mean, min / mean)
}

struct Pool {
    k: usize,
    m: usize,
    nodes: Vec<Node>,
    /// Per block, the node index of each shard.
    blocks: Vec<Vec<usize>>,
}

impl Pool {
    fn new(
        scheme: (usize, usize),
        count: usize,
        mixed: bool,
        shared_hosts: usize,
        rng: &mut Rng,
    ) -> Pool {
        let nodes = (0..count)
            .map(|i| Node {
                peer: blake3::hash(format!("peer {i}").as_bytes()).as_bytes()[..].to_vec(),
                // The first `shared_hosts` pairs of nodes share a host.
                domain: if i < 2 * shared_hosts {
                    format!("host {}", i / 2).into_bytes()
                } else {
                    format!("host {i}").into_bytes()
                },
                offer: if mixed {
                    (1 + rng.next() % 8) * (100 << 30)
                } else {
                    400 << 30
                },
                used: 0,
                alive: true,
            })
            .collect();
        Pool {
            k: scheme.0,
            m: scheme.1,
            nodes,
            blocks: Vec::new(),
        }
    }

    fn index_of(&self) -> std::collections::HashMap<Vec<u8>, usize> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.peer.clone(), i))
            .collect()
    }

    fn place(&mut self, count: usize) {
        let index = self.index_of();
        let mut cands = candidates(&self.nodes);
        for b in 0..count {
            if b % REFRESH == 0 {
                cands = candidates(&self.nodes);
            }
            let chosen = rank(&key(b), &cands, self.k + self.m);
            assert_eq!(chosen.len(), self.k + self.m, "too few domains");
            let holders: Vec<usize> = chosen.iter().map(|&c| index[&cands[c].peer]).collect();
            for &h in &holders {
                self.nodes[h].used += SHARD;
            }
            self.blocks.push(holders);
        }
    }
}

/// What a repair pass did.
#[derive(Default)]
struct Repair {
    blocks_repaired: u64,
    blocks_left_degraded: u64,
    blocks_lost: u64,
    shards_lost: u64,
    read_bytes: u64,
    written_bytes: u64,
}

/// One pass of the repairer over every block with `margin` (live shards below `k + margin`
/// are repaired), every owner's local copy evicted (the worst case: rebuilt from `k`
/// shards).
fn repair(pool: &mut Pool, margin: usize) -> Repair {
    let index = pool.index_of();
    let mut r = Repair::default();
    let mut cands = candidates(&pool.nodes);
    for b in 0..pool.blocks.len() {
        if b % REFRESH == 0 {
            cands = candidates(&pool.nodes);
        }
        let holders = &pool.blocks[b];
        let missing: Vec<usize> = (0..holders.len())
            .filter(|&i| !pool.nodes[holders[i]].alive)
            .collect();
        r.shards_lost += missing.len() as u64;
        let live = holders.len() - missing.len();
        if live < pool.k {
            r.blocks_lost += 1;
            continue;
        }
        if live >= pool.k + margin {
            if !missing.is_empty() {
                r.blocks_left_degraded += 1;
            }
            continue;
        }
        let live_peers: Vec<Vec<u8>> = holders
            .iter()
            .filter(|&&h| pool.nodes[h].alive)
            .map(|&h| pool.nodes[h].peer.clone())
            .collect();
        let free_idx = free(&cands, &live_peers);
        let free_cands: Vec<Candidate> = free_idx.iter().map(|&i| cands[i].clone()).collect();
        let chosen = rank(&key(b), &free_cands, missing.len());
        assert_eq!(chosen.len(), missing.len(), "too few free domains");
        r.read_bytes += pool.k as u64 * SHARD;
        for (&i, &c) in missing.iter().zip(&chosen) {
            let h = index[&free_cands[c].peer];
            pool.nodes[h].used += SHARD;
            pool.blocks[b][i] = h;
            r.written_bytes += SHARD;
        }
        r.blocks_repaired += 1;
    }
    r
}

fn kill_tenth(pool: &mut Pool, rng: &mut Rng) -> usize {
    let n = pool.nodes.len();
    let mut killed = 0;
    while killed < n / 10 {
        let i = (rng.next() % n as u64) as usize;
        if pool.nodes[i].alive {
            pool.nodes[i].alive = false;
            pool.nodes[i].used = 0;
            killed += 1;
        }
    }
    killed
}

fn binomial(n: usize, j: usize) -> f64 {
    (0..j).map(|i| (n - i) as f64 / (i + 1) as f64).product()
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn main() {
    let failed = run(&args());
    if !failed.is_empty() {
        eprintln!("pool_sim: aims missed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// CI runs the quick simulation as a test (`[[example]] test = true` in Cargo.toml).
#[test]
fn a_quick_simulation_meets_its_aims() {
    let failed = run(&Args {
        nodes: 200,
        blocks: 10_000,
        k: 4,
        m: 4,
    });
    assert!(failed.is_empty(), "aims missed: {failed:?}");
}

/// Runs the simulation, printing as it goes; returns the aims missed.
fn run(a: &Args) -> Vec<&'static str> {
    let (k, m) = (a.k, a.m);
    let mut rng = Rng(20_261_202);
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    println!(
        "pool simulation: {} nodes, {} blocks of {} KiB sealed as {k}+{m} shards of {} KiB \
         (placement and repair decisions by bitcloud's own code)",
        a.nodes,
        a.blocks,
        (SHARD * k as u64) >> 10,
        SHARD >> 10
    );

    // 1. Balance, equal offers, every node its own host.
    let mut pool = Pool::new((k, m), a.nodes, false, 0, &mut rng);
    pool.place(a.blocks);
    let (hi, lo) = spread(&pool.nodes, |n| n.used as f64);
    println!(
        "balance, equal offers:            most loaded node {hi:.2}x the mean, least {lo:.2}x  (aim <= 1.5x)"
    );
    if hi > 1.5 {
        failed.push("balance with equal offers");
    }

    // 2. Balance, offers from 100 to 800 GiB, a fifth of the nodes sharing a host in pairs.
    let mut mixed = Pool::new((k, m), a.nodes, true, a.nodes / 10, &mut rng);
    mixed.place(a.blocks);
    let (hi_m, lo_m) = spread(&mixed.nodes, |n| n.used as f64 / n.offer as f64);
    println!(
        "balance, offers 100-800 GiB, 20% of nodes in shared hosts: fullest node {hi_m:.2}x the mean fill, emptiest {lo_m:.2}x  (aim <= 1.5x)"
    );
    if hi_m > 1.5 {
        failed.push("balance with mixed offers");
    }

    // 3. 10 % of the nodes vanish; the repairer runs (default margin: any lost shard).
    let killed = kill_tenth(&mut pool, &mut rng);
    let r = repair(&mut pool, m);
    let lost = r.shards_lost * SHARD;
    let read_ratio = r.read_bytes as f64 / lost as f64;
    let total_ratio = (r.read_bytes + r.written_bytes) as f64 / lost as f64;
    println!(
        "{killed} nodes vanish: {} shards ({:.1} GiB) lost, {} blocks lost, {} repaired",
        r.shards_lost,
        gib(lost),
        r.blocks_lost,
        r.blocks_repaired
    );
    println!(
        "repair traffic (margin {m}, no local copies): read {:.1} GiB = {read_ratio:.2}x the lost bytes (aim <= {k}x), \
         written {:.1} GiB = 1.00x, in all {total_ratio:.2}x",
        gib(r.read_bytes),
        gib(r.written_bytes)
    );
    if read_ratio > k as f64 {
        failed.push("repair traffic");
    }
    // Losing a tenth of the pool in one instant, before any repair, loses the blocks with
    // more than m shards there: the scheme's own odds, not something repair can change.
    let p = killed as f64 / a.nodes as f64;
    let n = k + m;
    let odds: f64 = (m + 1..=n)
        .map(|j| binomial(n, j) * p.powi(j as i32) * (1.0 - p).powi((n - j) as i32))
        .sum();
    println!(
        "blocks lost to a simultaneous loss of {:.0} % of nodes: {} of {} (expected {:.1} by the {k}+{m} odds, {odds:.1e} per block; a wider scheme such as --shards 8+8 makes it negligible)",
        p * 100.0,
        r.blocks_lost,
        a.blocks,
        odds * a.blocks as f64
    );
    let after = repair(&mut pool, m);
    assert_eq!(after.blocks_repaired, 0, "one pass repairs everything");
    let (hi_r, _) = spread(&pool.nodes, |n| n.used as f64);
    println!(
        "after repair: every surviving block at {k}+{m} again; most loaded node {hi_r:.2}x the mean"
    );
    for (name, bytes_per_sec) in [("1 Gbit/s", 125e6), ("100 Mbit/s", 12.5e6)] {
        let secs = (r.read_bytes + r.written_bytes) as f64 / bytes_per_sec;
        println!(
            "time to full redundancy at the owner's {name}: repair_grace (default 3600 s) + {:.0} s of transfer \
             ({:.1} h in all)",
            secs,
            (3600.0 + secs) / 3600.0
        );
    }

    // 4. A lazier margin: fewer, larger repairs, blocks left below full redundancy.
    let mut lazy = Pool::new((k, m), a.nodes, false, 0, &mut Rng(7));
    lazy.place(a.blocks);
    kill_tenth(&mut lazy, &mut Rng(7));
    let l = repair(&mut lazy, 2);
    println!(
        "with pool.repair_margin = 2: {} blocks repaired, reading {:.2}x the bytes rebuilt; {} left degraded (>= {} live shards)",
        l.blocks_repaired,
        l.read_bytes as f64 / l.written_bytes.max(1) as f64,
        l.blocks_left_degraded,
        k + 2
    );

    // 5. The owner's metadata per block: the placement row as stored (real ed25519 peer ids).
    let placement = Placement {
        data: k as u8,
        parity: m as u8,
        shard_len: SHARD as u32,
        shards: (0..k + m)
            .map(|i| ShardPlace {
                id: ShardId(*blake3::hash(&[i as u8]).as_bytes()),
                holder: Some(
                    libp2p::identity::Keypair::generate_ed25519()
                        .public()
                        .to_peer_id()
                        .to_bytes(),
                ),
            })
            .collect(),
    };
    let row = placement.encode().len();
    println!(
        "owner metadata per block: placement row {row} bytes ({:.3} % of a {} KiB block); \
         nothing per block held in memory (repair, audit and renewal walk the table 1024 rows at a time)",
        row as f64 * 100.0 / (SHARD * k as u64) as f64,
        (SHARD * k as u64) >> 10
    );
    println!("simulated in {:.1} s", started.elapsed().as_secs_f64());
    failed
}
