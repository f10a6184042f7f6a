//! What the vault examples share: a cash-like fungible state, their arguments, and a vault
//! over a database (`--url`, or a SQLite file in a temporary directory) with the parties that
//! own, issue and notarise the states.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use treaty_core::{AbstractParty, Amount, ContractState, Currency, Issued, KeyPair, Party, PartyAndReference, PublicKey, SignatureScheme};
use treaty_storage::Database;
use treaty_vault::{FungibleColumns, Vault, fungible};

pub type Error = Box<dyn std::error::Error>;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cash {
    pub amount: Amount<Issued<Currency>>,
    pub owner: AbstractParty,
}

impl ContractState for Cash {
    const TYPE_ID: &'static str = "example.Cash";
    const CONTRACT: &'static str = "example.CashContract";
    fn participants(&self) -> Vec<AbstractParty> {
        vec![self.owner.clone()]
    }
}

/// The value after `name` on the command line.
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// A vault with the cash state registered, and who holds, issues and notarises it.
pub struct Setup {
    /// The temporary directory (the SQLite file, unless `--url` named another database).
    pub dir: PathBuf,
    pub db: Database,
    pub vault: Vault,
    pub alice: Party,
    pub notary: Party,
    /// US dollars issued by the bank.
    pub usd: Issued<Currency>,
}

impl Setup {
    /// Opens the database of `--url` (default: a SQLite file in a new temporary directory
    /// named after `name`) and its vault.
    pub async fn open(name: &str, args: &[String]) -> Result<Setup, Error> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let url = arg(args, "--url").unwrap_or_else(|| format!("sqlite://{}", dir.join("vault.db").display()));
        let db = Database::open(&url, &dir).await?;
        let vault = Vault::open(&db).await?;
        vault.register(fungible(|c: &Cash| FungibleColumns::issued(&c.owner, &c.amount)))?;
        let key = |seed: u8| -> Result<PublicKey, Error> { Ok(KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32])?.public()) };
        let alice = Party { name: "O=Alice,L=London,C=GB".parse()?, owning_key: key(1)? };
        let bank = Party { name: "O=Bank,L=Zurich,C=CH".parse()?, owning_key: key(2)? };
        let notary = Party { name: "O=Notary,L=Zurich,C=CH".parse()?, owning_key: key(3)? };
        let usd = Issued { issuer: PartyAndReference { party: bank.into(), reference: vec![1] }, product: Currency::new("USD")? };
        Ok(Setup { dir, db, vault, alice, notary, usd })
    }

    /// Whether a key is one of this vault's own (Alice's).
    pub fn ours(&self) -> impl Fn(&PublicKey) -> bool + use<> {
        let k = self.alice.owning_key.clone();
        move |p: &PublicKey| *p == k
    }

    /// Closes the database and removes the temporary directory.
    pub async fn close(self) {
        self.db.close().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
