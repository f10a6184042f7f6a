//! SwapIdentities over the simulated network: each side ends with the other's fresh key and
//! knows its owner; a certificate signed by the wrong key, or naming another owner, is refused
//! naming the party and the check.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;
use treaty_core::confidential::{IdentityCertificate, confidential_key};
use treaty_core::{KeyPair, PLATFORM_VERSION, PublicKey, SecureHash, TransactionSignature, X500Name};
use treaty_flows::*;
use treaty_net::sim::SimNetwork;
use treaty_testkit::key;

/// How a node misbehaves when certifying its fresh key.
#[derive(Clone, Copy, PartialEq)]
enum Forge {
    Honest,
    /// Signs the certificate with a key that is not its well-known one.
    WrongSigner,
    /// Claims another owner.
    WrongOwner,
}

struct MemoryIdentities {
    name: X500Name,
    well_known: KeyPair,
    seed: [u8; 32],
    own: Mutex<Vec<KeyPair>>,
    known: Mutex<HashMap<PublicKey, X500Name>>,
    forge: Forge,
}

impl MemoryIdentities {
    fn new(legal: &str, seed: u8, forge: Forge) -> Arc<MemoryIdentities> {
        Arc::new(MemoryIdentities {
            name: name(legal),
            well_known: key(seed).unwrap(),
            seed: [seed; 32],
            own: Mutex::default(),
            known: Mutex::default(),
            forge,
        })
    }
}

impl Keys for MemoryIdentities {
    fn owned(&self, keys: &[PublicKey]) -> Vec<PublicKey> {
        self.own.lock().unwrap().iter().map(KeyPair::public).filter(|k| keys.contains(k)).collect()
    }
    fn sign(&self, id: &SecureHash, key: &PublicKey) -> Result<TransactionSignature, FlowError> {
        let own = self.own.lock().unwrap();
        Ok(own.iter().find(|k| &k.public() == key).unwrap().sign_transaction(id, PLATFORM_VERSION))
    }
    fn sign_bytes(&self, key: &PublicKey, bytes: &[u8]) -> Result<Vec<u8>, FlowError> {
        let own = self.own.lock().unwrap();
        Ok(own.iter().find(|k| &k.public() == key).unwrap().sign(bytes))
    }
}

impl Identities for MemoryIdentities {
    async fn fresh_identity(&self) -> Result<IdentityCertificate, FlowError> {
        let mut own = self.own.lock().unwrap();
        let pair = confidential_key(&self.seed, own.len() as u32).unwrap();
        let (owner, signer) = match self.forge {
            Forge::Honest => (self.name.clone(), None),
            Forge::WrongSigner => (self.name.clone(), Some(key(99).unwrap())),
            Forge::WrongOwner => (name("O=Mallory,L=London,C=GB"), None),
        };
        let cert = IdentityCertificate::issue(pair.public(), owner, signer.as_ref().unwrap_or(&self.well_known));
        own.push(pair);
        Ok(cert)
    }
    async fn register(&self, certificate: &IdentityCertificate) -> Result<(), FlowError> {
        self.known.lock().unwrap().insert(certificate.key.clone(), certificate.owner.clone());
        Ok(())
    }
    async fn owner_of(&self, key: &PublicKey) -> Result<Option<X500Name>, FlowError> {
        Ok(self.known.lock().unwrap().get(key).cloned())
    }
    fn well_known_key(&self, party: &X500Name) -> Option<PublicKey> {
        [(ALICE, 41u8), (BOB, 42u8)].iter().find(|(n, _)| &name(n) == party).map(|(_, s)| key(*s).unwrap().public())
    }
}

fn registry(ids: Arc<MemoryIdentities>) -> Registry {
    let mut r = Registry::new();
    let i = ids.clone();
    r.flow("Swap", 1, move |ctx: FlowContext, _: serde_json::Value| {
        let ids = i.clone();
        async move {
            let session = ctx.initiate(&name(BOB)).await?;
            let s = swap_identities(&ctx, &session, &ids).await?;
            Ok(json!({ "mine": s.mine.owning_key.to_string(), "theirs": s.theirs.owning_key.to_string() }))
        }
    });
    r.responder("Swap", move |ctx: FlowContext| {
        let ids = ids.clone();
        async move {
            let session = ctx.initiating_session().unwrap();
            swap_identities(&ctx, &session, &ids).await.map(|_| ())
        }
    });
    r
}

async fn swap(bob_forges: Forge) -> (FlowRecord, Arc<MemoryIdentities>, Arc<MemoryIdentities>) {
    let (net, dir) = (SimNetwork::new(), Directory::default());
    let (alice_ids, bob_ids) = (MemoryIdentities::new(ALICE, 41, Forge::Honest), MemoryIdentities::new(BOB, 42, bob_forges));
    let alice = Node::start(&net, &dir, ALICE, &Disk::default(), registry(alice_ids.clone()), EngineOptions::default()).await;
    let _bob = Node::start(&net, &dir, BOB, &Disk::default(), registry(bob_ids.clone()), EngineOptions::default()).await;
    let id = alice.engine.start("Swap", json!({}), None).await.unwrap();
    (finished(&alice.engine, id).await, alice_ids, bob_ids)
}

#[tokio::test]
async fn each_side_gets_the_others_fresh_key_and_its_owner() {
    let (r, alice, bob) = swap(Forge::Honest).await;
    let out = result(&r);
    let (mine, theirs): (PublicKey, PublicKey) =
        (out["mine"].as_str().unwrap().parse().unwrap(), out["theirs"].as_str().unwrap().parse().unwrap());
    assert_eq!(mine, confidential_key(&[41; 32], 0).unwrap().public(), "Alice's first key from her seed");
    assert_eq!(bob.owner_of(&mine).await.unwrap(), Some(name(ALICE)));
    assert_eq!(alice.owner_of(&theirs).await.unwrap(), Some(name(BOB)));
    assert_ne!(mine, key(41).unwrap().public(), "not her well-known key");
}

#[tokio::test]
async fn a_certificate_not_signed_by_the_well_known_key_is_refused() {
    let (r, alice, _) = swap(Forge::WrongSigner).await;
    assert_eq!(r.status, FlowStatus::Failed);
    let err = r.error.unwrap();
    assert!(err.contains("SwapIdentities with O=Bob") && err.contains("not signed by its well-known key"), "{err}");
    assert!(alice.known.lock().unwrap().is_empty(), "nothing recorded");
}

#[tokio::test]
async fn a_certificate_naming_another_owner_is_refused() {
    let (r, _, _) = swap(Forge::WrongOwner).await;
    assert_eq!(r.status, FlowStatus::Failed);
    let err = r.error.unwrap();
    assert!(err.contains("names O=Mallory") && err.contains("as the key's owner"), "{err}");
}
