//! The golden test vector: a fixed transaction (fixed keys, salt and components) whose id and
//! full encoding are checked in. Any change to the encoding or to the id's construction fails
//! here. If a change is intended (a new protocol version), regenerate with
//! `TREATY_BLESS=1 cargo test -p treaty-core --test golden` and say why in the commit.

mod common;

use common::*;
use treaty_core::*;

const GOLDEN: &str = include_str!("golden/transaction.txt");

fn golden_transaction() -> SignedTransaction {
    let w = World::new();
    let board = CompositeKey::build(
        2,
        vec![
            WeightedKey { key: keypair(20).public(), weight: 1 },
            WeightedKey { key: p256_keypair(21).public(), weight: 1 },
            WeightedKey { key: keypair(22).public(), weight: 2 },
        ],
    )
    .unwrap();
    let input = StateRef { txhash: SecureHash::sha256(b"golden input"), index: 3 };
    let reference = StateRef { txhash: SecureHash::sha256(b"golden reference"), index: 0 };
    let owner = AbstractParty::Anonymous(AnonymousParty { owning_key: board.clone() });
    let wtx = TransactionBuilder::new(Some(w.notary.clone()))
        .input(input)
        .output(w.token(&w.bob, 700))
        .output(
            TransactionState::new(&Token { owner, amount: 300 }, TOKEN, w.notary.clone(), AttachmentConstraint::Signature(board.clone()))
                .with_encumbrance(0),
        )
        .command(Command::new(&TokenCommand::Move, vec![w.alice.owning_key.clone(), board]))
        .attachment(token_attachment().id)
        .reference(reference)
        .time_window(TimeWindow::between("2026-11-22T09:00:00Z".parse().unwrap(), "2026-11-22T09:05:00Z".parse().unwrap()).unwrap())
        .network_parameters(SecureHash::sha256(b"golden parameters"))
        .summary("Move 1000 tokens")
        .build(PrivacySalt([0x42; 32]))
        .unwrap();
    let id = wtx.id();
    SignedTransaction::new(wtx, vec![w.alice_key.sign_transaction(&id, 1), p256_keypair(21).sign_transaction(&id, 1)])
}

fn field<'a>(name: &str) -> &'a str {
    GOLDEN
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("golden file lacks {name}"))
}

#[test]
fn golden_transaction_encoding_and_id_are_stable() {
    let stx = golden_transaction();
    let hex = hex::encode(stx.to_bytes());
    if std::env::var_os("TREATY_BLESS").is_some() {
        let body = format!(
            "# Golden test vector: see tests/golden.rs. Regenerate only for an intended protocol change.\nid={}\ntx_bytes_sha256={}\nsigned_transaction_hex={}\n",
            stx.id(),
            SecureHash::sha256(stx.tx().bytes()),
            hex
        );
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/transaction.txt"), body).unwrap();
        return;
    }
    assert_eq!(stx.id().to_string(), field("id"), "the transaction id construction changed");
    assert_eq!(SecureHash::sha256(stx.tx().bytes()).to_string(), field("tx_bytes_sha256"), "the transaction encoding changed");
    assert_eq!(hex, field("signed_transaction_hex"), "the signed transaction encoding changed");
}

#[test]
fn golden_bytes_decode_to_the_same_transaction() {
    let bytes = hex::decode(field("signed_transaction_hex")).unwrap();
    let stx = SignedTransaction::from_bytes(&bytes, &Limits::default()).unwrap();
    assert_eq!(stx.id().to_string(), field("id"));
    assert_eq!(stx.to_bytes(), bytes);
    stx.verify_signatures_present().unwrap();
    assert_eq!(stx.tx().components().summaries, vec!["Move 1000 tokens".to_string()]);
    assert_eq!(stx.tx().components().outputs[1].encumbrance, Some(0));
}
