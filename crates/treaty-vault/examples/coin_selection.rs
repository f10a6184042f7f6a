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

mod common;

use std::time::Instant;

use common::{Cash, Error, Setup, arg};
use treaty_core::{Amount, AttachmentConstraint, PrivacySalt, Timestamp, TransactionBuilder, TransactionState};
use treaty_vault::{IssuerFilter, LockId};

const OUTPUTS_PER_TX: u64 = 1000;
const COIN: u64 = 100;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let states: u64 = arg(&args, "--states").map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let selections: u32 = arg(&args, "--selections").map(|s| s.parse()).transpose()?.unwrap_or(200);
    let setup = Setup::open("treaty-coin-selection", &args).await?;
    let (db, vault, alice, notary, usd) = (&setup.db, &setup.vault, &setup.alice, &setup.notary, &setup.usd);
    let owner = alice.owning_key.clone();
    let ours = setup.ours();

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
    setup.close().await;
    Ok(())
}
