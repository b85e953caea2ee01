//! Age headers made ahead of time. Wrapping a block's file key to the volume's X25519
//! recipient is most of the cost of sealing a small block (~60 us of Diffie-Hellman, perf of
//! small-file creation), and it needs nothing but the recipient, so one background thread
//! keeps a few ready (`pipeline::seal::prepare_header`) and a seal takes one. An empty pool
//! never makes a seal wait: it prepares its own header.
//!
//! The thread holds a weak reference to nothing but the channel: dropping the pool stops it.

use crossbeam_channel::{Receiver, bounded};

use crate::pipeline::seal::{self, PreparedHeader};

/// Headers kept ready: enough for a burst of small files, a few KiB of memory.
const READY: usize = 64;

pub(super) struct HeaderPool {
    ready: Receiver<PreparedHeader>,
    recipient: age::x25519::Recipient,
}

impl HeaderPool {
    pub(super) fn start(recipient: age::x25519::Recipient) -> HeaderPool {
        let (tx, rx) = bounded::<PreparedHeader>(READY);
        let r = recipient.clone();
        let spawned = std::thread::Builder::new()
            .name("bitcloud-headers".into())
            .spawn(move || {
                super::sealer::lower_priority(19);
                // Ends when the pool (the receiver) is dropped: `send` fails then.
                while let Ok(h) = seal::prepare_header(&r) {
                    if tx.send(h).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(target: "bitcloud::volume", error = %e, "no header thread: every seal wraps its own key");
        }
        HeaderPool {
            ready: rx,
            recipient,
        }
    }

    /// A ready header, or one made now.
    pub(super) fn take(&self) -> Result<PreparedHeader, crate::pipeline::SealError> {
        match self.ready.try_recv() {
            Ok(h) => Ok(h),
            Err(_) => seal::prepare_header(&self.recipient),
        }
    }
}
