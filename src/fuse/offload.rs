//! Requests that may wait (see `volume::Wait`) are answered from thread pools of their own,
//! so that the one FUSE request thread stays free for everything else: with every peer
//! frozen and many cold reads waiting, or a writer held back by the write budget, `ls`,
//! `stat` and reads of cached files still answer at once. Replies can move between threads,
//! so the request thread hands over the reply and returns.
//!
//! Why one request thread (`mount.fuse_threads = 1`): the kernel hands each request to the
//! reader that has waited longest, so with several every request lands on a cold thread
//! (measured: create 6,516 files/s with one, 3,802 with four; every request faster).

use crossbeam_channel::{Sender, TrySendError, bounded};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of threads with a bounded queue. Dropping it (or `finish`) waits for every
/// job handed to it: a release still sealing must not race the flush at unmount.
pub(super) struct Offload {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Offload {
    /// `threads` threads named `name-N`, taking jobs from a queue of `queue`.
    pub(super) fn new(name: &str, threads: usize, queue: usize) -> Offload {
        let (tx, rx) = bounded::<Job>(queue);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    tracing::warn!(target: "bitcloud::fuse", error = %e, thread = name, "cannot start a request thread");
                }
            }
        }
        Offload {
            tx: Some(tx),
            threads: handles,
        }
    }

    /// Runs `job` on the pool; if the queue is full, here (back-pressure on the kernel).
    pub(super) fn run(&self, job: impl FnOnce() + Send + 'static) {
        let Some(tx) = &self.tx else {
            return job();
        };
        match tx.try_send(Box::new(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => job(),
        }
    }

    /// Waits for every job already handed over; later jobs run on the caller's thread.
    pub(super) fn finish(&mut self) {
        self.tx = None;
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Offload {
    fn drop(&mut self) {
        self.finish();
    }
}
