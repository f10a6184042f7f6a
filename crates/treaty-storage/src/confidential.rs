//! Confidential identities (table `treaty_confidential_identities`, ledger migration 3): the
//! node's own fresh keys, by derivation index, and its counterparties', each with the
//! certificate linking it to a well-known name (see `treaty_core::confidential`).

use sqlx::Row;
use treaty_core::confidential::IdentityCertificate;
use treaty_core::{PublicKey, X500Name, encoding};

use crate::db::{BackendKind, Database, now_millis, with_pool, write_tx};
use crate::error::{Context, StorageError};

/// Hex of a key's bytes (for error messages).
struct KeyHex<'a>(&'a [u8]);

impl std::fmt::Display for KeyHex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Confidential identities of this node and of its counterparties.
#[derive(Clone)]
pub struct ConfidentialStore {
    db: Database,
}

impl Database {
    /// The confidential identity store.
    pub fn confidential_identities(&self) -> ConfidentialStore {
        ConfidentialStore { db: self.clone() }
    }
}

fn certificate_from(key: &[u8], bytes: &[u8]) -> Result<IdentityCertificate, StorageError> {
    encoding::decode(bytes).map_err(|e| StorageError::Corrupt {
        table: "treaty_confidential_identities",
        key: KeyHex(key).to_string(),
        reason: format!("certificate: {e}"),
    })
}

impl ConfidentialStore {
    /// Takes the next derivation index for one of this node's keys: `issue(index)` derives the
    /// key and certifies it, and the certificate is stored under that index before this
    /// returns. Concurrent callers get distinct indices.
    pub async fn allocate(
        &self,
        issue: impl Fn(u32) -> Result<IdentityCertificate, String>,
    ) -> Result<(u32, IdentityCertificate), StorageError> {
        let what = "allocating a confidential key (treaty_confidential_identities)";
        let postgres = self.db.kind() == BackendKind::Postgres;
        let allocated = write_tx!(self.db, what, tx => {
            if postgres {
                // SQLite has one writer; PostgreSQL allocators queue on a lock for the index.
                sqlx::query("SELECT pg_advisory_xact_lock(7319)").execute(&mut *tx).await.ctx(what)?;
            }
            let next: i64 = sqlx::query("SELECT COALESCE(MAX(key_index) + 1, 0) FROM treaty_confidential_identities")
                .fetch_one(&mut *tx)
                .await
                .ctx(what)?
                .try_get(0)
                .ctx(what)?;
            let index = u32::try_from(next).map_err(|_| StorageError::Corrupt {
                table: "treaty_confidential_identities",
                key: "key_index".into(),
                reason: format!("the next index {next} is beyond 2^32: the seed's keys are used up"),
            })?;
            let certificate = issue(index).map_err(|reason| StorageError::Corrupt {
                table: "treaty_confidential_identities",
                key: format!("key_index {index}"),
                reason,
            })?;
            sqlx::query(
                "INSERT INTO treaty_confidential_identities (public_key, owner, certificate, key_index, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(encoding::encode(&certificate.key))
            .bind(certificate.owner.to_string())
            .bind(encoding::encode(&certificate))
            .bind(next)
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .ctx(what)?;
            (index, certificate)
        });
        Ok(allocated)
    }

    /// Records a counterparty's certificate (checked by the caller). Idempotent; a key already
    /// known keeps its first owner.
    pub async fn register(&self, certificate: &IdentityCertificate) -> Result<(), StorageError> {
        let what = format!("recording confidential key {}", certificate.key.short());
        write_tx!(self.db, what, tx => {
            sqlx::query(
                "INSERT INTO treaty_confidential_identities (public_key, owner, certificate, key_index, created_at) \
                 VALUES ($1, $2, $3, NULL, $4) ON CONFLICT (public_key) DO NOTHING",
            )
            .bind(encoding::encode(&certificate.key))
            .bind(certificate.owner.to_string())
            .bind(encoding::encode(certificate))
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .ctx(&what)?;
        });
        Ok(())
    }

    /// The certificate of a confidential key, if this node knows who owns it.
    pub async fn certificate(&self, key: &PublicKey) -> Result<Option<IdentityCertificate>, StorageError> {
        let what = format!("reading confidential key {}", key.short());
        let encoded = encoding::encode(key);
        with_pool!(self.db, pool => {
            let row = sqlx::query("SELECT certificate FROM treaty_confidential_identities WHERE public_key = $1")
                .bind(encoded.as_slice())
                .fetch_optional(pool)
                .await
                .ctx(&what)?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(certificate_from(&encoded, &r.try_get::<Vec<u8>, _>(0).ctx(&what)?)?)),
            }
        })
    }

    /// The well-known owner of a confidential key, if known.
    pub async fn owner_of(&self, key: &PublicKey) -> Result<Option<X500Name>, StorageError> {
        Ok(self.certificate(key).await?.map(|c| c.owner))
    }

    /// This node's own confidential keys, by derivation index.
    pub async fn own_keys(&self) -> Result<Vec<(u32, PublicKey)>, StorageError> {
        let what = "listing this node's confidential keys";
        with_pool!(self.db, pool => {
            let rows = sqlx::query(
                "SELECT key_index, public_key FROM treaty_confidential_identities WHERE key_index IS NOT NULL ORDER BY key_index",
            )
            .fetch_all(pool)
            .await
            .ctx(what)?;
            rows.into_iter()
                .map(|r| {
                    let index: i64 = r.try_get(0).ctx(what)?;
                    let key: Vec<u8> = r.try_get(1).ctx(what)?;
                    let corrupt = |reason: String| StorageError::Corrupt {
                        table: "treaty_confidential_identities",
                        key: KeyHex(&key).to_string(),
                        reason,
                    };
                    let index = u32::try_from(index).map_err(|_| corrupt(format!("key_index {index}")))?;
                    Ok((index, encoding::decode(&key).map_err(|e| corrupt(format!("public_key: {e}")))?))
                })
                .collect()
        })
    }
}
