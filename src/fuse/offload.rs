//! Requests that may wait on something slow (a read of a block that must come from the
//! pool) are answered from a thread pool of their own, so that the FUSE request threads stay
//! free for everything else: with every peer frozen and many cold reads waiting, `ls`,
//! `stat` and reads of cached files still answer at once. Replies can move between threads,
//! so the request thread hands over the reply and returns.

use crossbeam_channel::{Sender, TrySendError, bounded};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of threads with a bounded queue.
pub(super) struct Offload {
    tx: Sender<Job>,
}

impl Offload {
    pub(super) fn new(threads: usize, queue: usize) -> Offload {
        let (tx, rx) = bounded::<Job>(queue);
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("bitcloud-slowread-{i}"))
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(target: "bitcloud::fuse", error = %e, "cannot start a read thread");
            }
        }
        Offload { tx }
    }

    /// Runs `job` on the pool; if the queue is full, here (back-pressure on the kernel).
    pub(super) fn run(&self, job: impl FnOnce() + Send + 'static) {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => job(),
        }
    }
}
