//! Reading and writing the shard protocol's frames and bodies on a libp2p stream, with a
//! deadline on every step: a frame must arrive within [`FRAME_TIMEOUT`], and a body must keep
//! moving (each piece of up to [`PIECE`] bytes within [`PROGRESS_TIMEOUT`]), so a peer that
//! stops answering (frozen, cut off) is noticed in bounded time while a slow link that moves
//! still completes.

use std::time::Duration;

use libp2p::Stream;
use libp2p::futures::{AsyncReadExt, AsyncWriteExt};

use super::protocol::{self, FrameError, MAX_SHARD};

pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(10);
const PIECE: usize = 64 * 1024;

/// Failures on the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("timed out")]
    Timeout,
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

async fn timed<T>(
    d: Duration,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, WireError> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(WireError::Timeout),
    }
}

/// Reads one frame (without its length prefix), bounded by `protocol::MAX_FRAME`.
pub async fn read_frame(s: &mut Stream) -> Result<Vec<u8>, WireError> {
    let mut head = [0u8; 4];
    timed(FRAME_TIMEOUT, s.read_exact(&mut head)).await?;
    let len = protocol::frame_len(head)?;
    let mut body = vec![0u8; len];
    timed(FRAME_TIMEOUT, s.read_exact(&mut body)).await?;
    Ok(body)
}

/// Writes bytes (a frame, a body), each piece within the progress deadline, then flushes.
pub async fn write_all(s: &mut Stream, bytes: &[u8]) -> Result<(), WireError> {
    for piece in bytes.chunks(PIECE) {
        timed(PROGRESS_TIMEOUT, s.write_all(piece)).await?;
    }
    timed(PROGRESS_TIMEOUT, s.flush()).await
}

/// Reads a body of `len` bytes (at most [`MAX_SHARD`]), each piece within the progress
/// deadline. Memory grows only as the bytes arrive.
pub async fn read_body(s: &mut Stream, len: u32) -> Result<Vec<u8>, WireError> {
    if len > MAX_SHARD {
        return Err(FrameError("body too large").into());
    }
    let len = len as usize;
    let mut out = Vec::with_capacity(len.min(PIECE));
    let mut piece = vec![0u8; PIECE.min(len.max(1))];
    while out.len() < len {
        let want = (len - out.len()).min(PIECE);
        timed(PROGRESS_TIMEOUT, s.read_exact(&mut piece[..want])).await?;
        out.extend_from_slice(&piece[..want]);
    }
    Ok(out)
}

/// Half-closes our side (the peer sees the end of the request or response).
pub async fn close(s: &mut Stream) -> Result<(), WireError> {
    timed(FRAME_TIMEOUT, s.close()).await
}
