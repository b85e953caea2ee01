//! Background sealing: full blocks produced by sequential writes are hashed, encrypted and
//! stored on worker threads, so the FUSE thread only copies bytes. The queue is bounded: when
//! the workers fall behind, writers wait (backpressure) instead of growing memory.
//!
//! A worker computes the sealed block and stores it, then hands the result back to the volume
//! (`Volume::finish_seal`), which commits the block map under the file's lock. The workers hold
//! only a weak reference to the volume, so dropping the volume stops them.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;

use super::Volume;
use super::file::OpenFile;

/// One block to seal.
pub(super) struct SealJob {
    pub file: Arc<OpenFile>,
    pub index: u64,
    pub seq: u64,
    pub data: Arc<Vec<u8>>,
}

pub(super) struct Sealer {
    tx: Mutex<Option<Sender<SealJob>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Jobs waiting per worker before writers block.
const QUEUE_PER_WORKER: usize = 4;

impl Sealer {
    pub(super) fn start(volume: Weak<Volume>, threads: usize) -> Sealer {
        let threads = threads.max(1);
        let (tx, rx) = bounded::<SealJob>(threads * QUEUE_PER_WORKER);
        let workers = (0..threads)
            .map(|i| {
                let rx: Receiver<SealJob> = rx.clone();
                let volume = volume.clone();
                std::thread::Builder::new()
                    .name(format!("bitcloud-seal-{i}"))
                    .spawn(move || {
                        lower_priority(10);
                        for job in rx {
                            let Some(v) = volume.upgrade() else { break };
                            let result = v.seal_for_slot(job.file.ino, job.index, &job.data);
                            v.finish_seal(job, result);
                        }
                    })
                    .expect("spawning a sealing thread (out of threads?)")
            })
            .collect();
        Sealer {
            tx: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
        }
    }

    /// Queues a job; blocks while the queue is full. Returns the job back if stopped.
    pub(super) fn submit(&self, job: SealJob) -> Result<(), SealJob> {
        let tx = self.tx.lock().clone();
        match tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Stops accepting jobs and waits for the workers to drain the queue.
    pub(super) fn stop(&self) {
        self.tx.lock().take();
        let workers = std::mem::take(&mut *self.workers.lock());
        let me = std::thread::current().id();
        for w in workers {
            if w.thread().id() != me {
                let _ = w.join();
            }
        }
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (on Linux the nice value is
/// per thread). Work ahead of time must not take a core from a FUSE request: on two
/// cores a header or a seal being made while a request waited for the CPU cost that
/// request ~100 us.
pub(super) fn lower_priority(nice: i32) {
    // SAFETY: setpriority has no memory effects; who = 0 is the calling thread.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r != 0 {
        tracing::debug!(target: "bitcloud::volume", error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
    }
}
