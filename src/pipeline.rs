//! The block pipeline: pure, synchronous transformations of one block, and nothing else.
//!
//! Write direction: plaintext block -> [`block_id`] -> [`seal`] (age, to the volume recipient)
//! -> [`erasure::encode`] into k data + m parity shards. Read direction: any k shards ->
//! verify each against its [`ShardId`](crate::ids::ShardId) -> decode -> open (decrypt) -> verify
//! the plaintext against its [`BlockId`](crate::ids::BlockId).
//!
//! No I/O, no threads, no database here: callers decide where bytes come from and go to.
//! That keeps every step unit-testable at boundary sizes.

pub mod block_id;
pub mod chunks;
pub mod erasure;
pub mod seal;

use crate::ids::{BlockId, ShardId};

/// Everything that can go wrong turning stored bytes back into a verified plaintext block.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("sealed block could not be decrypted (damaged or not ours): {0}")]
    Decrypt(String),
    #[error("block {0:?} decrypted to bytes whose id does not match")]
    BlockIdMismatch(BlockId),
    #[error("shard {0:?} does not match its id")]
    ShardCorrupt(ShardId),
    #[error("only {have} good shards, {need} needed")]
    NotEnoughShards { have: usize, need: usize },
    #[error("erasure decoding failed: {0}")]
    Erasure(String),
}

/// Failure to seal a block: only possible if age itself fails, which is a bug or OOM.
#[derive(Debug, thiserror::Error)]
#[error("age encryption failed: {0}")]
pub struct SealError(pub String);
