//! Request signatures checked in batches.
//!
//! A non-validating notary's main cost per request is checking the request signature. Callers
//! hand theirs to a [`RequestVerifier`] and wait; its thread takes whatever has queued (up to
//! its batch size) and checks it as one batch ([`treaty_core::verify_many`]: about twice as
//! fast per signature), answering each caller with its own verdict. Under load the batches
//! fill by themselves; a lone request is a batch of one, checked as usual.

use std::sync::mpsc;

use tokio::sync::oneshot;
use treaty_core::PublicKey;

/// The most signatures checked in one batch.
pub const MAX_VERIFY_BATCH: usize = 256;

struct Job {
    key: PublicKey,
    message: Vec<u8>,
    signature: Vec<u8>,
    reply: oneshot::Sender<bool>,
}

/// A thread that checks signatures in batches. Dropping it stops the thread once the queue is
/// empty.
pub struct RequestVerifier {
    jobs: mpsc::Sender<Job>,
}

impl RequestVerifier {
    /// Starts the thread; batches hold at most `max_batch` signatures.
    pub fn start(max_batch: usize) -> RequestVerifier {
        let (jobs, queue) = mpsc::channel::<Job>();
        let max_batch = max_batch.max(1);
        let spawned = std::thread::Builder::new().name("notary-verify".into()).spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let items: Vec<(&PublicKey, &[u8], &[u8])> =
                    batch.iter().map(|j| (&j.key, j.message.as_slice(), j.signature.as_slice())).collect();
                let verdicts = treaty_core::verify_many(&items);
                drop(items);
                for (job, ok) in batch.into_iter().zip(verdicts) {
                    // The caller may have given up waiting; nothing to do then.
                    let _ = job.reply.send(ok);
                }
            }
        });
        if let Err(e) = spawned {
            // Without the thread every job's reply is dropped, and `verify` checks inline.
            tracing::warn!("cannot start the request-signature thread, checking inline: {e}");
        }
        RequestVerifier { jobs }
    }

    /// Whether `signature` is `key`'s over `message`. If the thread is gone (it cannot start,
    /// or it panicked), the signature is checked here instead.
    pub async fn verify(&self, key: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
        let (reply, verdict) = oneshot::channel();
        let job = Job { key: key.clone(), message: message.to_vec(), signature: signature.to_vec(), reply };
        if self.jobs.send(job).is_ok()
            && let Ok(ok) = verdict.await
        {
            return ok;
        }
        key.verify(message, signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_core::{KeyPair, SignatureScheme};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_each_get_their_own_verdict() {
        let verifier = std::sync::Arc::new(RequestVerifier::start(MAX_VERIFY_BATCH));
        let key = KeyPair::from_seed(SignatureScheme::Ed25519, [3; 32]).unwrap();
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..500u32 {
            let (verifier, public) = (verifier.clone(), key.public());
            let message = i.to_le_bytes().to_vec();
            let mut signature = key.sign(&message);
            let forged = i % 17 == 5;
            if forged {
                signature[7] ^= 1;
            }
            calls.spawn(async move { (forged, verifier.verify(&public, &message, &signature).await) });
        }
        let mut n = 0;
        while let Some(done) = calls.join_next().await {
            let (forged, ok) = done.unwrap();
            assert_eq!(ok, !forged);
            n += 1;
        }
        assert_eq!(n, 500);
    }
}
