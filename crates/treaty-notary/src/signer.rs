//! Batch signing: one signature over the Merkle root of every transaction id that is ready at
//! once, each client getting its own copy with its inclusion proof
//! ([`TransactionSignature::for_batch_member`]); signature checking everywhere accepts those.
//!
//! The provider's group commit answers a whole batch of callers at the same moment, so their
//! ids reach the signer together. The signer is one task: it takes the first id waiting, lets
//! the other callers woken with it queue theirs (one scheduler turn), and signs everything
//! queued, up to [`BatchSigner::max_batch`] ids, with one Ed25519 (or ECDSA) signature. A lone
//! id gets an ordinary signature. The signer's cost per transaction falls with load instead of
//! rising: at 20,000 notarisations a second, signing each one alone would take 40% of a core.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};
use treaty_core::merkle::batch_root;
use treaty_core::{KeyPair, PLATFORM_VERSION, SecureHash, TransactionSignature};

type Job = (SecureHash, oneshot::Sender<TransactionSignature>);

/// Signs transaction ids for a notary, in batches when several are ready at once.
pub struct BatchSigner {
    key: Arc<KeyPair>,
    max_batch: usize,
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl BatchSigner {
    /// A signer with `key`, signing up to `max_batch` ids at once (1: never batch).
    pub fn new(key: KeyPair, max_batch: usize) -> BatchSigner {
        BatchSigner { key: Arc::new(key), max_batch: max_batch.max(1), queue: OnceLock::new() }
    }

    /// The most ids one signature covers.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The signing key.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The same key, signing at most `max_batch` ids at once.
    pub fn with_max_batch(self, max_batch: usize) -> BatchSigner {
        BatchSigner { key: self.key, max_batch: max_batch.max(1), queue: OnceLock::new() }
    }

    /// The notary's signature over `tx_id`: an ordinary one, or a batch signature with proof.
    pub async fn sign(&self, tx_id: SecureHash) -> TransactionSignature {
        if self.max_batch == 1 {
            return self.key.sign_transaction(&tx_id, PLATFORM_VERSION);
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.key.clone(), self.max_batch, rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if queue.send((tx_id, reply)).is_ok()
            && let Ok(signature) = answer.await
        {
            return signature;
        }
        // The signer task is gone (its runtime shut down): sign here.
        self.key.sign_transaction(&tx_id, PLATFORM_VERSION)
    }
}

async fn run(key: Arc<KeyPair>, max_batch: usize, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Callers woken by the same commit are runnable now: let them queue their ids.
        tokio::task::yield_now().await;
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        sign_batch(&key, &mut batch);
    }
}

fn sign_batch(key: &KeyPair, batch: &mut Vec<Job>) {
    if batch.len() == 1 {
        let (id, reply) = batch.remove(0);
        let _ = reply.send(key.sign_transaction(&id, PLATFORM_VERSION));
        return;
    }
    let ids: Vec<SecureHash> = batch.iter().map(|(id, _)| *id).collect();
    let (root, proofs) = batch_root(&ids);
    let signature = key.sign_batch_root(&root, PLATFORM_VERSION);
    for ((_, reply), proof) in batch.drain(..).zip(proofs) {
        // A caller that gave up (its flow ended) just drops its answer.
        let _ = reply.send(TransactionSignature::for_batch_member(&signature, proof));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use treaty_core::SignatureScheme;

    fn id(i: u32) -> SecureHash {
        SecureHash::sha256(&i.to_le_bytes())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_ids_share_a_batch_signature_that_verifies_for_each() {
        let key = KeyPair::from_seed(SignatureScheme::Ed25519, [7; 32]).unwrap();
        let public = key.public();
        let signer = Arc::new(BatchSigner::new(key, 64));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let signer = signer.clone();
            tasks.spawn(async move { (i, signer.sign(id(i)).await) });
        }
        let mut batched = 0;
        for (i, sig) in tasks.join_all().await {
            assert_eq!(sig.by, public);
            sig.verify(&id(i)).expect("each member's signature verifies for its own id");
            assert!(sig.verify(&id(i + 1000)).is_err(), "and for no other");
            batched += usize::from(sig.batch_proof.is_some());
        }
        assert!(batched > 0, "200 ids at once were signed in batches");
    }

    #[tokio::test]
    async fn a_lone_id_or_a_batch_of_one_gets_an_ordinary_signature() {
        let signer = BatchSigner::new(KeyPair::from_seed(SignatureScheme::Ed25519, [7; 32]).unwrap(), 1);
        let sig = signer.sign(id(1)).await;
        assert!(sig.batch_proof.is_none());
        sig.verify(&id(1)).unwrap();
        let signer = BatchSigner::new(KeyPair::from_seed(SignatureScheme::Ed25519, [7; 32]).unwrap(), 64);
        let sig = signer.sign(id(2)).await;
        assert!(sig.batch_proof.is_none(), "nobody else was waiting");
        sig.verify(&id(2)).unwrap();
    }
}
