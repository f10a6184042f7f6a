//! Constraint checks, propagation rules and namespace ownership, one case per rule, each
//! asserting the specific error.

mod common;

use common::*;
use treaty_core::*;
use treaty_sandbox::{ConstraintError, SandboxError};

fn constraint_err(r: Result<treaty_sandbox::RunOutcome, SandboxError>) -> ConstraintError {
    match r {
        Err(SandboxError::Constraint(c)) => c,
        other => panic!("expected a constraint error, got {other:?}"),
    }
}

#[test]
fn hash_constraint() {
    let mut f = Fixture::new();
    let other = f.upload(&contracts_bundle(&[TOKEN], &[&key(40)]));
    let input = f.issue(5);
    // Same code: accepted.
    assert!(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, f.hash_constraint(), f.token_attachment)).is_ok());
    // Different code under the same hash constraint: refused, naming both.
    let err = constraint_err(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, f.hash_constraint(), other)));
    assert_eq!(err, ConstraintError::HashMismatch { contract: TOKEN.into(), required: f.token_attachment, attachment: other });
}

#[test]
fn signature_constraint_with_composite_keys() {
    let mut f = Fixture::new();
    let (k1, k2, k3) = (key(41), key(42), key(43));
    let two_of_three =
        CompositeKey::build(2, [&k1, &k2, &k3].iter().map(|k| WeightedKey { key: k.public(), weight: 1 }).collect()).unwrap();
    let sig = AttachmentConstraint::Signature(two_of_three);
    let signed = f.upload(&contracts_bundle(&[TOKEN], &[&k1, &k3]));
    let once = f.upload(&contracts_bundle(&[TOKEN], &[&k2]));
    let input = f.issue_with(5, sig.clone(), signed);
    assert!(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, sig.clone(), signed)).is_ok());
    let err = constraint_err(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, sig, once)));
    assert_eq!(err, ConstraintError::SignatureNotFulfilled { contract: TOKEN.into(), attachment: once });
}

#[test]
fn whitelist_constraint() {
    let f0 = Fixture::new();
    let mut params = NetworkParameters::default();
    params.whitelisted_contracts.insert(TOKEN.into(), vec![f0.token_attachment]);
    let mut f = Fixture::with_params(params);
    let unlisted = f.upload(&contracts_bundle(&[TOKEN], &[&key(44)]));
    let input = f.issue_with(5, AttachmentConstraint::WhitelistedByNetwork, f.token_attachment);
    assert!(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, AttachmentConstraint::WhitelistedByNetwork, f.token_attachment)).is_ok());
    let err = constraint_err(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, AttachmentConstraint::WhitelistedByNetwork, unlisted)));
    assert_eq!(err, ConstraintError::NotWhitelisted { contract: TOKEN.into(), attachment: unlisted });
}

#[test]
fn always_accept_only_on_development_networks() {
    let mut f = Fixture::new();
    let input = f.issue_with(5, AttachmentConstraint::AlwaysAccept, f.token_attachment);
    let ltx = f.move_ltx(input, 5, AttachmentConstraint::AlwaysAccept, f.token_attachment);
    let err = constraint_err(f.sandbox().run_contract(TOKEN, &ltx));
    assert_eq!(err, ConstraintError::AlwaysAcceptOutsideDevelopment { contract: TOKEN.into() });
    f.params.development = true;
    assert!(f.sandbox().run_contract(TOKEN, &ltx).is_ok());
}

#[test]
fn hash_may_migrate_to_signature_only_to_the_namespace_owners_code() {
    // Where the network reserves the contract's namespace to k, a hash-constrained state moves
    // to Signature(k) with k's signed code.
    let k = key(45);
    let mut f = Fixture::new();
    let signed = f.upload(&contracts_bundle(&[TOKEN], &[&k]));
    let input = f.issue(5); // hash constraint on the unsigned attachment
    // The network then reserves the namespace (its parameters change).
    f.params.package_ownership.insert("test".into(), k.public());
    let to_sig = AttachmentConstraint::Signature(k.public());
    assert!(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, to_sig.clone(), signed)).is_ok());
    // With the old, unsigned code it cannot: the new constraint is not fulfilled.
    let err = constraint_err(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, to_sig, f.token_attachment)));
    assert!(matches!(err, ConstraintError::SignatureNotFulfilled { .. } | ConstraintError::NamespaceOwnership { .. }), "{err}");

    // Without a reservation anyone may sign code defining the contract: signing it does not
    // let it replace the state's own code (it would take the state from its owner).
    let mut f = Fixture::new();
    let thief = key(49);
    let theirs = f.upload(&contracts_bundle(&[TOKEN], &[&thief]));
    let input = f.issue(5);
    let err =
        constraint_err(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, AttachmentConstraint::Signature(thief.public()), theirs)));
    assert!(matches!(err, ConstraintError::HashMismatch { .. }), "{err}");
}

#[test]
fn whitelist_may_migrate_to_signature_with_whitelisted_code() {
    let f0 = Fixture::new();
    let k = key(46);
    let signed_id = SecureHash::sha256(&contracts_bundle(&[TOKEN], &[&k]));
    let mut params = NetworkParameters::default();
    params.whitelisted_contracts.insert(TOKEN.into(), vec![f0.token_attachment, signed_id]);
    let mut f = Fixture::with_params(params);
    let signed = f.upload(&contracts_bundle(&[TOKEN], &[&k]));
    let input = f.issue_with(5, AttachmentConstraint::WhitelistedByNetwork, f.token_attachment);
    assert!(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, AttachmentConstraint::Signature(k.public()), signed)).is_ok());
    // Signed code the network has not whitelisted cannot take the state over.
    let other = key(50);
    let unlisted = f.upload(&contracts_bundle(&[TOKEN], &[&other]));
    let err =
        constraint_err(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, AttachmentConstraint::Signature(other.public()), unlisted)));
    assert!(matches!(err, ConstraintError::NotWhitelisted { .. }), "{err}");
}

#[test]
fn illegal_transitions_are_refused() {
    let mut f = Fixture::new();
    let k = key(47);
    let signed = f.upload(&contracts_bundle(&[TOKEN], &[&k]));
    let sig = AttachmentConstraint::Signature(k.public());
    // Signature → hash.
    let input = f.issue_with(5, sig.clone(), signed);
    let err = constraint_err(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, AttachmentConstraint::Hash(signed), signed)));
    assert!(
        matches!(&err, ConstraintError::IllegalTransition { from, to, .. } if from.starts_with("signature") && to.starts_with("hash")),
        "{err}"
    );
    // Signature(k) → Signature(other key), even if the code is signed by both.
    let k2 = key(48);
    let both = f.upload(&contracts_bundle(&[TOKEN], &[&k, &k2]));
    let input = f.issue_with(5, sig.clone(), both);
    let err = constraint_err(f.sandbox().run_contract(TOKEN, &f.move_ltx(input, 5, AttachmentConstraint::Signature(k2.public()), both)));
    assert!(matches!(err, ConstraintError::IllegalTransition { .. }), "{err}");
    // Whitelist → hash.
    let mut params = NetworkParameters::default();
    params.whitelisted_contracts.insert(TOKEN.into(), vec![f.token_attachment]);
    let mut g = Fixture::with_params(params);
    let input = g.issue_with(5, AttachmentConstraint::WhitelistedByNetwork, g.token_attachment);
    let err = constraint_err(g.sandbox().run_contract(TOKEN, &g.move_ltx(input, 5, g.hash_constraint(), g.token_attachment)));
    assert!(
        matches!(&err, ConstraintError::IllegalTransition { from, to, .. } if from == "whitelisted-by-network" && to.starts_with("hash")),
        "{err}"
    );
    // Hash → always-accept, even on a development network.
    let mut dev = Fixture::new();
    dev.params.development = true;
    let input = dev.issue(5);
    let err = constraint_err(
        dev.sandbox().run_contract(TOKEN, &dev.move_ltx(input, 5, AttachmentConstraint::AlwaysAccept, dev.token_attachment)),
    );
    assert!(matches!(&err, ConstraintError::IllegalTransition { to, .. } if to == "always-accept"), "{err}");
    // Always-accept → hash is fine on a development network (tightening).
    let input = dev.issue_with(5, AttachmentConstraint::AlwaysAccept, dev.token_attachment);
    assert!(dev.sandbox().run_contract(TOKEN, &dev.move_ltx(input, 5, dev.hash_constraint(), dev.token_attachment)).is_ok());
}

#[test]
fn reserved_namespaces_need_the_owners_signature() {
    let owner = key(50);
    let mut params = NetworkParameters::default();
    params.package_ownership.insert("test".into(), owner.public());
    let store = treaty_sandbox::MemoryAttachmentStore::new(params.clone());
    use treaty_sandbox::AttachmentStore;
    // Upload refuses an unsigned bundle defining test.Token...
    let err = store.upload(&contracts_bundle(&[TOKEN], &[])).unwrap_err();
    assert!(
        matches!(&err, SandboxError::Constraint(ConstraintError::NamespaceOwnership { namespace, .. }) if namespace == "test"),
        "{err}"
    );
    assert_eq!(err.code(), "CONSTRAINT-NAMESPACE");
    // ...and accepts one signed by the owner.
    store.upload(&contracts_bundle(&[TOKEN], &[&owner])).unwrap();
    // Verification refuses unsigned code too (it may have arrived by another route).
    let mut f = Fixture::new();
    let input = f.issue(5);
    let ltx = f.move_ltx(input, 5, f.hash_constraint(), f.token_attachment);
    let err = treaty_sandbox::Sandbox::new(params).unwrap().run_contract(TOKEN, &ltx).unwrap_err();
    assert!(matches!(err, SandboxError::Constraint(ConstraintError::NamespaceOwnership { .. })), "{err}");
}
