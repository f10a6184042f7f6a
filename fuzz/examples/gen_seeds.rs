//! Writes a seed corpus of valid encodings for the fuzz targets:
//! `corpus/signed_transaction/`, `corpus/filtered_transaction/`, `corpus/public_key/`,
//! `corpus/wire_frame/` and `corpus/signed_node_info/` under the directory given as the first
//! argument (default: `corpus`).
//!
//! Run from the fuzz dir: `cargo +nightly run --example gen_seeds -- corpus`.
//! Everything is deterministic (fixed seeds and salts), so file names are stable.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use treaty_core::merkle::batch_root;
use treaty_core::*;
use treaty_net::map::{NodeInfo, kinds};
use treaty_net::messaging::MessageId;
use treaty_net::messaging::wire::{Frame, PROTOCOL_VERSION, WireMessage};
use treaty_net::pki::{self, CertRole, RevocationList, Validity};
use treaty_net::signed::Signed;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Token {
    owner: AbstractParty,
    amount: u64,
}

impl ContractState for Token {
    const TYPE_ID: &'static str = "test.Token";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TokenCommand {
    Issue,
    Move,
}

impl CommandType for TokenCommand {
    const TYPE_ID: &'static str = "test.Token.Command";
}

const TOKEN: &str = "test.Token";

fn keypair(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).expect("valid seed")
}

fn p256_keypair(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::EcdsaP256Sha256, [seed; 32]).expect("valid seed")
}

fn party(name: &str, key: &PublicKey) -> Party {
    Party { name: name.parse().expect("valid name"), owning_key: key.clone() }
}

fn salt(n: u8) -> PrivacySalt {
    let mut s = [0x5a; 32];
    s[0] = n;
    PrivacySalt(s)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write seed");
}

/// A fixed message id (`MessageId` wraps a `uuid::Uuid`, which BCS encodes as 16 length-prefixed
/// bytes; decoding them avoids a `uuid` dependency and keeps ids deterministic).
fn message_id(n: u8) -> MessageId {
    encoding::decode(&encoding::encode(&vec![n; 16])).expect("16 bytes are a message id")
}

/// Frames as a peer sends them on a link: batches (empty, one message, several with derived ids
/// and a binary payload), acks and refusals.
fn wire_frame_seeds(dir: &Path) {
    let first = message_id(1);
    let msg = |id: MessageId, session: u64, topic: &str, payload: &[u8]| WireMessage {
        id,
        session,
        topic: topic.into(),
        payload: payload.to_vec(),
    };
    let frames = [
        ("messages_one", Frame::Messages { version: PROTOCOL_VERSION, messages: vec![msg(first, 7, "platform.session.init", b"hello")] }),
        (
            "messages_many",
            Frame::Messages {
                version: PROTOCOL_VERSION,
                messages: vec![
                    msg(message_id(2), 0, "", b""),
                    msg(MessageId::derived(&first, "reply"), u64::MAX, "platform.session.data", &[0, 1, 2, 0xfe, 0xff]),
                    msg(MessageId::derived(&first, "ack"), 1 << 40, "platform.flow.end", &[0x5a; 300]),
                ],
            },
        ),
        ("messages_empty", Frame::Messages { version: PROTOCOL_VERSION, messages: vec![] }),
        ("messages_future_version", Frame::Messages { version: 2, messages: vec![msg(message_id(3), 1, "x", b"y")] }),
        ("ack", Frame::Ack(vec![first, MessageId::derived(&first, "reply"), message_id(2)])),
        ("ack_empty", Frame::Ack(vec![])),
        ("refused", Frame::Refused("x".into())),
        ("refused_long", Frame::Refused("protocol version 2 is not spoken here (1 is)".into())),
    ];
    for (i, (name, frame)) in frames.iter().enumerate() {
        let bytes = encoding::encode(frame);
        let back: Frame = encoding::decode(&bytes).expect("seed must decode");
        assert_eq!(&back, frame, "seed {name} does not round-trip");
        write(dir, &format!("seed-{i}-{name}.bin"), &bytes);
    }
}

/// What the network map serves: signed node infos whose identity chains are real certificates
/// (root → doorman → node CA → identity, Ed25519 so the DER is deterministic) and a signed
/// revocation list.
fn signed_node_info_seeds(dir: &Path) {
    const NOW: i64 = 1_795_000_000; // what the fuzz target verifies at
    let validity = Validity { not_before: NOW - 86_400, not_after: NOW + 10 * 365 * 86_400 };
    let name = |s: &str| -> X500Name { s.parse().expect("valid name") };
    let serial = |n: u8| [n; 16];
    let root = pki::root_ca(name("O=Treaty Root,L=London,C=GB"), keypair(10), validity, serial(10)).expect("root");
    let doorman =
        root.issue(name("O=Treaty Doorman,L=London,C=GB"), keypair(11), CertRole::DoormanCa, validity, serial(11)).expect("doorman");
    let map_key = keypair(12);

    let mut seeds: Vec<(String, Signed)> = Vec::new();
    for (n, (legal, seed)) in
        [("O=Alice,L=London,C=GB", 20u8), ("CN=Notary Service,OU=Ops,O=Notary,L=Zurich,ST=ZH,C=CH", 30)].into_iter().enumerate()
    {
        let node_ca = doorman.issue(name(legal), keypair(seed), CertRole::NodeCa, validity, serial(seed)).expect("node CA");
        let identity =
            node_ca.issue(name(legal), keypair(seed + 1), CertRole::LegalIdentity, validity, serial(seed + 1)).expect("identity");
        let tls = node_ca.issue(name(legal), keypair(seed + 2), CertRole::Tls, validity, serial(seed + 2)).expect("tls");
        let info = NodeInfo {
            addresses: if n == 0 { vec!["127.0.0.1:10001".into()] } else { vec!["notary.example:10002".into(), "[::1]:10002".into()] },
            platform_version: PLATFORM_VERSION,
            legal_identity: party(legal, &identity.key.public()),
            identity_chain: vec![identity.cert.clone(), node_ca.cert.clone(), doorman.cert.clone()],
            serial: 1 + n as u64,
        };
        let signed = Signed::sign(kinds::NODE_INFO, &info, &identity.key);
        assert_eq!(
            NodeInfo::verify(&signed, &root.cert, &RevocationList::default(), NOW as u64).expect("seed node info must verify"),
            info
        );
        seeds.push((format!("node_info_{n}"), signed.clone()));

        if n == 0 {
            // The same node info with the root appended to the chain, and one whose leaf is the
            // node's TLS certificate instead of its identity certificate (verification fails).
            let mut to_root = info.clone();
            to_root.identity_chain.push(root.cert.clone());
            to_root.serial += 10;
            seeds.push(("node_info_to_root".into(), Signed::sign(kinds::NODE_INFO, &to_root, &identity.key)));
            let mut wrong_leaf = info.clone();
            wrong_leaf.identity_chain[0] = tls.cert.clone();
            seeds.push(("node_info_tls_leaf".into(), Signed::sign(kinds::NODE_INFO, &wrong_leaf, &identity.key)));
            // A tampered signature.
            let mut bad = signed.clone();
            bad.signature[0] ^= 1;
            seeds.push(("node_info_bad_signature".into(), bad));
        }
        if n == 1 {
            let revoked = RevocationList {
                names: [name("O=Mallory,L=Madrid,C=ES"), name(legal)].into_iter().collect(),
                keys: [pki::spki_hash(&tls.cert).expect("spki"), SecureHash::sha256(b"some key")].into_iter().collect(),
                epoch: 3,
            };
            assert!(NodeInfo::verify(seeds.last().map(|(_, s)| s).expect("just pushed"), &root.cert, &revoked, NOW as u64).is_err());
            seeds.push(("revocation_list".into(), Signed::sign(kinds::REVOCATION_LIST, &revoked, &map_key)));
        }
    }
    seeds.push(("revocation_list_empty".into(), Signed::sign(kinds::REVOCATION_LIST, &RevocationList::default(), &map_key)));

    for (i, (name, signed)) in seeds.iter().enumerate() {
        let bytes = encoding::encode(signed);
        let back: Signed = encoding::decode(&bytes).expect("seed must decode");
        assert_eq!(encoding::encode(&back), bytes, "seed {name} is not canonical");
        write(dir, &format!("seed-{i}-{name}.bin"), &bytes);
    }
}

fn main() {
    let out: PathBuf = std::env::args().nth(1).unwrap_or_else(|| "corpus".into()).into();
    let (st_dir, ft_dir, pk_dir) = (out.join("signed_transaction"), out.join("filtered_transaction"), out.join("public_key"));
    let (wf_dir, ni_dir) = (out.join("wire_frame"), out.join("signed_node_info"));
    for d in [&st_dir, &ft_dir, &pk_dir, &wf_dir, &ni_dir] {
        fs::create_dir_all(d).expect("create corpus dir");
    }

    let (alice_key, bob_key, notary_key, p256_notary_key, carol_p256) =
        (keypair(1), keypair(2), keypair(3), p256_keypair(4), p256_keypair(5));
    let alice = party("O=Alice,L=London,C=GB", &alice_key.public());
    let bob = party("O=Bob,L=New York,C=US", &bob_key.public());
    let notary = party("O=Notary,L=Zurich,C=CH", &notary_key.public());
    let other_notary = party("O=Other Notary,L=Paris,C=FR", &p256_notary_key.public());
    let composite = CompositeKey::build(
        2,
        vec![
            WeightedKey { key: alice_key.public(), weight: 1 },
            WeightedKey { key: bob_key.public(), weight: 1 },
            WeightedKey { key: carol_p256.public(), weight: 2 },
        ],
    )
    .expect("valid composite");
    let nested = CompositeKey::any_of(vec![composite.clone(), notary_key.public()]).expect("valid nested composite");
    let attachment = SecureHash::sha256(b"token contract code");
    let token = |owner: AbstractParty, amount: u64, constraint: AttachmentConstraint| {
        TransactionState::new(&Token { owner, amount }, TOKEN, notary.clone(), constraint)
    };

    // Public keys: both leaf schemes, a flat and a nested composite.
    for (i, k) in [alice_key.public(), carol_p256.public(), composite.clone(), nested.clone()].iter().enumerate() {
        write(&pk_dir, &format!("seed-{i}.bin"), &encoding::encode(k));
    }

    let mut txs: Vec<(&str, WireTransaction, Vec<TransactionSignature>)> = Vec::new();

    // 1. An issue, signed by the owner.
    let issue = TransactionBuilder::new(Some(notary.clone()))
        .output(token(alice.clone().into(), 100, AttachmentConstraint::Hash(attachment)))
        .command(Command::new(&TokenCommand::Issue, vec![alice_key.public()]))
        .attachment(attachment)
        .build(salt(1))
        .expect("valid issue");
    let sigs = vec![alice_key.sign_transaction(&issue.id(), PLATFORM_VERSION)];
    txs.push(("issue", issue.clone(), sigs));

    // 2. A move using every group: input, reference, time window, parameters, summary.
    let input = StateRef { txhash: issue.id(), index: 0 };
    let mv = TransactionBuilder::new(Some(notary.clone()))
        .input(input)
        .reference(StateRef { txhash: SecureHash::sha256(b"reference tx"), index: 3 })
        .output(token(bob.clone().into(), 60, AttachmentConstraint::Signature(composite.clone())))
        .output(
            token(AbstractParty::Anonymous(AnonymousParty { owning_key: carol_p256.public() }), 40, AttachmentConstraint::AlwaysAccept)
                .with_encumbrance(0),
        )
        .command(Command::new(&TokenCommand::Move, vec![alice_key.public(), composite.clone()]))
        .attachment(attachment)
        .time_window(TimeWindow::between(Timestamp::from_secs(1_700_000_000), Timestamp::from_secs(1_700_000_600)).expect("window"))
        .network_parameters(SecureHash::sha256(b"network parameters"))
        .summary("Move 100 tokens")
        .build(salt(2))
        .expect("valid move");
    let id = mv.id();
    let sigs = vec![
        alice_key.sign_transaction(&id, PLATFORM_VERSION),
        carol_p256.sign_transaction(&id, PLATFORM_VERSION),
        notary_key.sign_transaction(&id, PLATFORM_VERSION),
    ];
    txs.push(("move", mv.clone(), sigs));

    // 3. A notary change, notarised by a batch signature from a P-256 notary.
    let nc = TransactionBuilder::new(Some(notary.clone()))
        .input(StateRef { txhash: mv.id(), index: 0 })
        .output(token(bob.clone().into(), 60, AttachmentConstraint::WhitelistedByNetwork))
        .time_window(TimeWindow::From(Timestamp::from_secs(1_700_001_000)))
        .kind(TransactionKind::NotaryChange { new_notary: other_notary.clone() })
        .build(salt(3))
        .expect("valid notary change");
    let (root, proofs) = batch_root(&[SecureHash::sha256(b"other tx"), nc.id(), mv.id()]);
    let batch_sig = p256_notary_key.sign_batch_root(&root, PLATFORM_VERSION);
    let sigs = vec![bob_key.sign_transaction(&nc.id(), PLATFORM_VERSION), TransactionSignature::for_batch_member(&batch_sig, proofs[1].clone())];
    txs.push(("notary_change", nc, sigs));

    // 4. A contract upgrade, unsigned.
    let up = TransactionBuilder::new(Some(notary.clone()))
        .input(StateRef { txhash: issue.id(), index: 0 })
        .output(token(alice.clone().into(), 100, AttachmentConstraint::Hash(SecureHash::sha256(b"v2"))))
        .time_window(TimeWindow::Until(Timestamp::from_secs(1_800_000_000)))
        .kind(TransactionKind::ContractUpgrade { upgraded_contract: "test.TokenV2".into(), upgraded_attachment: SecureHash::sha256(b"v2") })
        .build(salt(4))
        .expect("valid upgrade");
    txs.push(("upgrade_unsigned", up, vec![]));

    // 5. A tx with no notary and a tampered signature (decodes; verification fails).
    let nn = TransactionBuilder::new(None)
        .output(token(bob.clone().into(), 1, AttachmentConstraint::Hash(attachment)))
        .command(Command::new(&TokenCommand::Issue, vec![nested.clone()]))
        .summary("Issue 1 token")
        .summary("second line")
        .build(salt(5))
        .expect("valid no-notary tx");
    let mut bad = notary_key.sign_transaction(&nn.id(), PLATFORM_VERSION);
    bad.bytes[0] ^= 1;
    txs.push(("bad_signature", nn, vec![bad, bob_key.sign_transaction(&SecureHash::sha256(b"another id"), 7)]));

    for (i, (name, wtx, sigs)) in txs.iter().enumerate() {
        let stx = SignedTransaction::new(wtx.clone(), sigs.clone());
        let bytes = stx.to_bytes();
        let back = SignedTransaction::from_bytes(&bytes, &Limits::default()).expect("seed must decode");
        assert_eq!(back.to_bytes(), bytes, "seed {name} is not canonical");
        write(&st_dir, &format!("seed-{i}-{name}.bin"), &bytes);

        // Tear-offs of the same transaction: what a non-validating notary sees, all groups
        // whole (proves empty groups empty), a partial reveal, and a single component.
        let tear_offs = [
            ("notary", FilteredTransaction::reveal_groups(wtx, &FilteredTransaction::NOTARY_GROUPS)),
            ("all", FilteredTransaction::reveal_groups(wtx, &ComponentGroup::ALL)),
            ("partial", FilteredTransaction::build(wtx, |g, i| g == ComponentGroup::Outputs && i == 0 || g == ComponentGroup::Commands, |_| false)),
            ("inputs", FilteredTransaction::build(wtx, |g, _| g == ComponentGroup::Inputs, |g| g == ComponentGroup::Inputs)),
        ];
        for (tname, ftx) in tear_offs {
            ftx.verify().expect("seed tear-off must verify");
            write(&ft_dir, &format!("seed-{i}-{name}-{tname}.bin"), &encoding::encode(&ftx));
        }
    }

    wire_frame_seeds(&wf_dir);
    signed_node_info_seeds(&ni_dir);

    let count = |d: &Path| fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    println!(
        "seeds in {}: signed_transaction {}, filtered_transaction {}, public_key {}, wire_frame {}, signed_node_info {}",
        out.display(),
        count(&st_dir),
        count(&ft_dir),
        count(&pk_dir),
        count(&wf_dir),
        count(&ni_dir)
    );
}
