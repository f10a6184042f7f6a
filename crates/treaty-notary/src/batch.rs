//! The queue between callers and a provider's single writer (group commit).
//!
//! Callers put a [`Job`] on a bounded channel and wait on a oneshot. The writer takes
//! everything queued (up to the batch limit), applies it in one storage transaction, makes it
//! durable, and only then answers each caller. While it commits, new requests queue up and form
//! the next batch, so the cost of a durable commit is shared by every request that arrived
//! during the previous one; [`Linger`] keeps the callers it just answered from missing it.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use treaty_core::Timestamp;

use crate::apply::Rules;
use crate::error::NotaryError;
use crate::request::CommitRequest;

/// One caller's request, waiting for the writer.
#[derive(Debug)]
pub(crate) struct Job {
    /// The request.
    pub request: CommitRequest,
    /// The notary's time for it.
    pub now: Timestamp,
    /// Where its answer goes.
    pub reply: oneshot::Sender<Result<(), NotaryError>>,
}

/// An answer per job, or one failure for the whole batch.
pub(crate) type BatchResult = Result<Vec<Result<(), NotaryError>>, NotaryError>;

/// Checks what needs no state, enqueues the request and waits for the writer's answer.
pub(crate) async fn submit(queue: &mpsc::Sender<Job>, rules: &Rules, request: CommitRequest, now: Timestamp) -> Result<(), NotaryError> {
    rules.check_request(&request)?;
    let (reply, answer) = oneshot::channel();
    queue.send(Job { request, now, reply }).await.map_err(|_| NotaryError::Stopped("the writer is no longer accepting requests".into()))?;
    answer.await.map_err(|_| NotaryError::Stopped("the writer ended before answering (see the log for why)".into()))?
}

/// Sends every job its answer (a caller that has gone away is not an error: if its request was
/// committed, a retry is answered the same).
pub(crate) fn answer(jobs: &mut Vec<Job>, result: BatchResult) {
    match result {
        Ok(answers) => {
            for (job, answer) in jobs.drain(..).zip(answers) {
                let _ = job.reply.send(answer);
            }
        }
        Err(failure) => {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(failure.clone()));
            }
        }
    }
}

/// The longest a writer waits for more requests before committing a batch.
pub const MAX_LINGER: Duration = Duration::from_millis(1);

/// How long a writer waits for more requests before it commits a batch.
///
/// Callers answered by one batch come back within microseconds with their next request, but
/// a writer that started the next batch at once would hold only the first of them and make
/// the rest wait a whole commit: batches would alternate between tiny and full, halving
/// throughput. So when fewer requests are queued than the previous batch held, the writer
/// waits for the others — until as many are queued, for at most a quarter of its last commit's
/// duration and never more than [`MAX_LINGER`]. Under light load the previous batch was small,
/// and it does not wait at all.
#[derive(Debug, Default)]
pub(crate) struct Linger {
    /// The size of the previous batch.
    expected: usize,
    /// How long the previous batch took to commit.
    last_commit: Duration,
}

impl Linger {
    /// Records a committed batch.
    pub fn committed(&mut self, size: usize, took: Duration) {
        self.expected = size;
        self.last_commit = took;
    }

    fn target(&self, max_batch: usize) -> (usize, Instant) {
        (self.expected.min(max_batch), Instant::now() + (self.last_commit / 4).min(MAX_LINGER))
    }

    /// Adds queued jobs to `jobs` as explained above, sleeping in short steps (for a writer on
    /// a thread of its own).
    pub fn wait_blocking(&self, queue: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, max_batch: usize) {
        let (target, deadline) = self.target(max_batch);
        while jobs.len() < target {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() >= deadline => return,
                // Short sleeps leave the (possibly only other) core to the callers.
                Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_micros(20)),
            }
        }
    }

    /// The same for a writer task: it yields to the runtime between looks (tokio's timer is too
    /// coarse for sub-millisecond waits).
    pub async fn wait_async(&self, queue: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, max_batch: usize) {
        let (target, deadline) = self.target(max_batch);
        while jobs.len() < target {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() >= deadline => return,
                Err(mpsc::error::TryRecvError::Empty) => tokio::task::yield_now().await,
            }
        }
    }
}
