//! The queue between callers and a provider's single writer (group commit).
//!
//! Callers put a [`Job`] on a bounded channel and wait on a oneshot. The writer takes
//! everything queued (up to the batch limit), applies it in one storage transaction, makes it
//! durable, and only then answers each caller. While it commits, new requests queue up and form
//! the next batch, so the cost of a durable commit is shared by every request that arrived
//! during the previous one.

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
