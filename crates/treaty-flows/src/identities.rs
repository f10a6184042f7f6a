//! `SwapIdentities` (white paper "Confidential identities"): two parties each make a fresh key
//! for one deal and show each other — only each other — which well-known identity owns it.
//!
//! Each side:
//! 1. takes a fresh key from its seed ([`Identities::fresh_identity`]: derived by SLIP-0010 at
//!    the next index, certified by its well-known identity key, stored before it is used) — a
//!    journaled step, so a replay after a crash uses the same key;
//! 2. draws a 32-byte nonce (journaled) and exchanges it, initiator first;
//! 3. sends its certificate and a signature by the fresh key over both nonces and the key
//!    ([`possession_bytes`]): proof that it holds the key *now*, in this exchange;
//! 4. checks the other's: the certificate names the session's party and verifies with that
//!    party's well-known key from the network map, and the possession signature verifies with
//!    the certified key. Then it records the other's certificate; the responder confirms that
//!    it has, so when the initiator's flow ends both sides know.
//!
//! Afterwards either side can put the other's fresh key in a transaction (an
//! [`AnonymousParty`]); observers who see the transaction learn nothing of who owns it.

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use treaty_core::confidential::{IdentityCertificate, possession_bytes};
use treaty_core::{AnonymousParty, PublicKey, SecureHash, X500Name};

use crate::context::{FlowContext, Session};
use crate::error::FlowError;
use crate::signatures::Keys;

/// A node's confidential identities, as the flows see them.
pub trait Identities: Keys {
    /// A fresh key of this node's, certified by its well-known identity and stored (durable,
    /// and signable through [`Keys`]) before this returns.
    fn fresh_identity(&self) -> impl Future<Output = Result<IdentityCertificate, FlowError>> + Send;
    /// Records a counterparty's certificate, already checked. Idempotent.
    fn register(&self, certificate: &IdentityCertificate) -> impl Future<Output = Result<(), FlowError>> + Send;
    /// The well-known owner of a confidential key, if this node knows it.
    fn owner_of(&self, key: &PublicKey) -> impl Future<Output = Result<Option<X500Name>, FlowError>> + Send;
    /// A party's well-known identity key (from the network map).
    fn well_known_key(&self, party: &X500Name) -> Option<PublicKey>;
}

/// What each side sends after the nonces.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct IdentityProof {
    certificate: IdentityCertificate,
    /// The fresh key's signature over [`possession_bytes`].
    possession: Vec<u8>,
}

/// The keys the two sides will use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwappedIdentities {
    /// This node's fresh key.
    pub mine: AnonymousParty,
    /// The counterparty's fresh key, whose owner is now known here.
    pub theirs: AnonymousParty,
}

/// Runs `SwapIdentities` on `session` (both sides call it; the session's initiator goes
/// first). Fails naming the party and the check when the counterparty's certificate or proof
/// does not hold.
pub async fn swap_identities<I: Identities>(ctx: &FlowContext, session: &Session, ids: &Arc<I>) -> Result<SwappedIdentities, FlowError> {
    let certificate: IdentityCertificate = {
        let ids = ids.clone();
        ctx.side_effect("treaty.swap-identities.fresh-key", |_| async move { ids.fresh_identity().await }).await?
    };
    let mine: SecureHash = ctx.side_effect("treaty.swap-identities.nonce", |_| async { Ok(SecureHash(rand::random())) }).await?;
    let theirs: SecureHash = if session.initiator {
        ctx.send(session, &mine).await?;
        ctx.receive(session).await?
    } else {
        let theirs = ctx.receive(session).await?;
        ctx.send(session, &mine).await?;
        theirs
    };
    let (initiator_nonce, responder_nonce) = if session.initiator { (mine, theirs) } else { (theirs, mine) };
    let possession = ids.sign_bytes(&certificate.key, &possession_bytes(&initiator_nonce, &responder_nonce, &certificate.key))?;
    let proof: IdentityProof = ctx.send_and_receive(session, &IdentityProof { certificate: certificate.clone(), possession }).await?;
    let refuse = |what: String| FlowError::Exception(format!("SwapIdentities with {}: {what}", session.party));
    if proof.certificate.owner != session.party {
        return Err(refuse(format!("its certificate names {} as the key's owner", proof.certificate.owner)));
    }
    let well_known = ids.well_known_key(&session.party).ok_or_else(|| refuse("its well-known key is not on the network map".into()))?;
    proof.certificate.verify(&well_known).map_err(|e| refuse(format!("its certificate is not signed by its well-known key ({e})")))?;
    proof
        .certificate
        .key
        .verify(&possession_bytes(&initiator_nonce, &responder_nonce, &proof.certificate.key), &proof.possession)
        .map_err(|e| refuse(format!("it did not prove it holds key {} ({e})", proof.certificate.key.short())))?;
    ids.register(&proof.certificate).await?;
    // The responder confirms it has recorded the initiator's key: when the initiator's flow
    // ends, both sides can name each other's key.
    if session.initiator {
        let _recorded: bool = ctx.receive(session).await?;
    } else {
        ctx.send(session, &true).await?;
    }
    Ok(SwappedIdentities {
        mine: AnonymousParty { owning_key: certificate.key },
        theirs: AnonymousParty { owning_key: proof.certificate.key },
    })
}
