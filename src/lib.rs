//! bitcloud: a virtual hard disk whose blocks are encrypted, erasure-coded and (with the
//! nodepool) spread over peers.
//!
//! Module map, top to bottom (dependencies point down only; see ARCHITECTURE.md):
//! - [`cli`]: clap commands (`init`, `mount`, `umount`, `status`).
//! - [`daemon`]: the mount's lifecycle: signals, stale-mount recovery, checkpoints, shutdown.
//! - [`fuse`]: the fuser adapter; translation and errno replies only.
//! - [`volume`]: POSIX semantics over the metadata store and the block pipeline.
//! - [`meta`]: the redb metadata database (tables, versioned encodings, refcounts, gc epochs).
//! - [`pool`]: the owner side of the nodepool: uploads, pool reads, releases, the cache.
//! - [`node`]: the libp2p node: shard protocol, shard store, peers, placement ranking.
//! - [`store`]: sealed blocks as atomic, content-addressed local files.
//! - [`pipeline`]: pure block transforms: block id, age sealing, Reed-Solomon shards.
//! - [`names`]: deterministic authenticated encryption of names stored in metadata.
//! - [`keys`]: the identity file and every key derived from it.
//! - [`config`]: paths (XDG or `--home`) and `config.toml`.
//! - [`ids`]: id newtypes.
//! - [`units`]: byte sizes, rates and durations for people.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod fuse;
pub mod ids;
pub mod keys;
pub mod meta;
pub mod names;
pub mod node;
pub mod pipeline;
pub mod pool;
pub mod store;
pub mod units;
pub mod volume;
