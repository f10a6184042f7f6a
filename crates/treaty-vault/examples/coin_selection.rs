//! Measures coin selection in a large vault of equal coins: records N cash-like states of one
//! amount (default 100,000), then times `--selections` selections (default 200), each
//! selecting one coin's worth with [`Vault::select_fungible`] and releasing its lock.
//!
//! ```sh
//! cargo run --release -p treaty-vault --example coin_selection -- [--states N] [--selections N] \
//!     [--url sqlite://PATH | postgres://...]
//! ```
//!
//! Without `--url` it uses a SQLite file in a temporary directory, removed afterwards. Equal
//! amounts are the hard case for a selection that reads largest first, oldest first: every
//! coin ties with every other.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use treaty_core::{
    AbstractParty, Amount, AttachmentConstraint, ContractState, Currency, Issued, KeyPair, Party, PartyAndReference, PrivacySalt,
    PublicKey, SignatureScheme, Timestamp, TransactionBuilder, TransactionState,
};
use treaty_storage::Database;
use treaty_vault::{FungibleColumns, IssuerFilter, LockId, Vault, fungible};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Cash {
    amount: Amount<Issued<Currency>>,
    owner: AbstractParty,
}

impl ContractState for Cash {
    const TYPE_ID: &'static str = "example.Cash";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

const OUTPUTS_PER_TX: u64 = 1000;
const COIN: u64 = 100;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let states: u64 = arg(&args, "--states").map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let selections: u32 = arg(&args, "--selections").map(|s| s.parse()).transpose()?.unwrap_or(200);
    let dir = std::env::temp_dir().join(format!("treaty-coin-selection-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = arg(&args, "--url").unwrap_or_else(|| format!("sqlite://{}", dir.join("vault.db").display()));

    let db = Database::open(&url, &dir).await?;
    let vault = Vault::open(&db).await?;
    vault.register(fungible(|c: &Cash| FungibleColumns::issued(&c.owner, &c.amount)))?;
    let key = |seed: u8| -> Result<PublicKey, Box<dyn std::error::Error>> {
        Ok(KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32])?.public())
    };
    let alice = Party { name: "O=Alice,L=London,C=GB".parse()?, owning_key: key(1)? };
    let bank = Party { name: "O=Bank,L=Zurich,C=CH".parse()?, owning_key: key(2)? };
    let notary = Party { name: "O=Notary,L=Zurich,C=CH".parse()?, owning_key: key(3)? };
    let owner = alice.owning_key.clone();
    let ours = {
        let k = owner.clone();
        move |p: &PublicKey| *p == k
    };
    let usd = Issued { issuer: PartyAndReference { party: bank.into(), reference: vec![1] }, product: Currency::new("USD")? };

    let started = Instant::now();
    let (mut recorded, mut tx_number) = (0u64, 0u64);
    while recorded < states {
        let n = OUTPUTS_PER_TX.min(states - recorded);
        let mut b = TransactionBuilder::new(Some(notary.clone()));
        for _ in 0..n {
            let cash = Cash { amount: Amount::new(COIN, usd.clone()), owner: alice.clone().into() };
            b = b.output(TransactionState::new(&cash, "example.CashContract", notary.clone(), AttachmentConstraint::AlwaysAccept));
        }
        tx_number += 1;
        let mut salt = [0xA5u8; 32];
        salt[..8].copy_from_slice(&tx_number.to_le_bytes());
        let wtx = b.build(PrivacySalt(salt))?;
        vault.apply(&[&wtx], &ours, Timestamp::from_secs(tx_number as i64)).await?;
        recorded += n;
    }
    println!("recorded {states} coins of {COIN} USD in {:.1} s on {}", started.elapsed().as_secs_f64(), db.url());

    let token = usd.product.code();
    let started = Instant::now();
    for i in 0..selections {
        let lock = LockId(uuid::Uuid::from_u128(u128::from(i) + 1));
        let selection = vault.select_fungible(token, &IssuerFilter::Any, COIN, std::slice::from_ref(&owner), lock).await?;
        if selection.states.len() != 1 || selection.total != u128::from(COIN) {
            return Err(format!("selected {} states totalling {}, expected one coin", selection.states.len(), selection.total).into());
        }
        vault.release(lock).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{selections} selections of one coin (each locked, then released) in {secs:.2} s: {:.2} ms each",
        1000.0 * secs / f64::from(selections)
    );
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
