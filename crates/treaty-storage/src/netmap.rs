//! The network-map component: [`MapCache`] over `treaty_network_map` (one row: parameters,
//! revocations, etag, fetched_at) and `treaty_network_map_nodes` (one row per node info, in
//! map order, with the node's legal name so a CLI can list them without decoding).

use sqlx::Row;
use treaty_core::encoding;
use treaty_net::map::{MapCache, MapSnapshot, NodeInfo};
use treaty_net::messaging::StoreError;
use treaty_net::signed::Signed;

use crate::db::{Database, multi_row_sql, with_pool, write_tx};
use crate::error::{Context, StorageError};

/// [`MapCache`] in the node database. Clone freely.
#[derive(Clone, Debug)]
pub struct SqlMapCache {
    db: Database,
}

/// One node info of the cached map, for listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedNode {
    /// Position on the map (0-based).
    pub position: u64,
    /// The legal name it claims, if its content decodes.
    pub name: Option<String>,
    /// [`NodeInfo::hash`] of it.
    pub hash: treaty_core::SecureHash,
    /// The signed node info.
    pub signed: Signed,
}

impl Database {
    /// The network-map cache.
    pub fn network_map(&self) -> SqlMapCache {
        SqlMapCache { db: self.clone() }
    }
}

fn decode_signed(table: &'static str, key: String, bytes: &[u8]) -> Result<Signed, StorageError> {
    encoding::decode(bytes).map_err(|e| StorageError::Corrupt { table, key, reason: e.to_string() })
}

impl SqlMapCache {
    /// Replaces the cached snapshot (one transaction).
    pub async fn store(&self, snapshot: &MapSnapshot) -> Result<(), StorageError> {
        let what = "writing treaty_network_map";
        let parameters = encoding::encode(&snapshot.parameters);
        let revocations = encoding::encode(&snapshot.revocations);
        let fetched_at = i64::try_from(snapshot.fetched_at_secs).unwrap_or(i64::MAX);
        let nodes: Vec<NodeRow> = snapshot
            .node_infos
            .iter()
            .enumerate()
            .map(|(i, signed)| {
                let name = encoding::decode::<NodeInfo>(&signed.raw).ok().map(|n| n.legal_identity.name.to_string());
                (i64::try_from(i).unwrap_or(i64::MAX), name, NodeInfo::hash(signed).as_bytes().to_vec(), encoding::encode(signed))
            })
            .collect();
        write_tx!(self.db, what, tx => {
            sqlx::query("DELETE FROM treaty_network_map_nodes").execute(&mut *tx).await.ctx(what)?;
            sqlx::query("DELETE FROM treaty_network_map").execute(&mut *tx).await.ctx(what)?;
            sqlx::query("INSERT INTO treaty_network_map (id, parameters, revocations, etag, fetched_at) VALUES (1, $1, $2, $3, $4)")
                .bind(parameters.as_slice())
                .bind(revocations.as_slice())
                .bind(snapshot.etag.as_deref())
                .bind(fetched_at)
                .execute(&mut *tx)
                .await
                .ctx(what)?;
            for chunk in crate::db::chunks(&nodes) {
                let sql = multi_row_sql("INSERT INTO treaty_network_map_nodes (position, name, node_info_hash, signed) VALUES", 4, &[], chunk.len(), "");
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (position, name, hash, signed) in chunk {
                    q = q.bind(*position).bind(name.as_deref()).bind(hash.as_slice()).bind(signed.as_slice());
                }
                q.execute(&mut *tx).await.ctx("writing treaty_network_map_nodes")?;
            }
        });
        Ok(())
    }

    /// The cached snapshot, if any (read in one transaction, so never half of two saves).
    pub async fn fetch(&self) -> Result<Option<MapSnapshot>, StorageError> {
        let what = "reading treaty_network_map";
        type Header = (Vec<u8>, Vec<u8>, Option<String>, i64);
        let (header, rows): (Option<Header>, Vec<NodeRow>) = write_tx!(self.db, what, tx => {
            let row = sqlx::query("SELECT parameters, revocations, etag, fetched_at FROM treaty_network_map WHERE id = 1").fetch_optional(&mut *tx).await.ctx(what)?;
            let header = row.map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).transpose().ctx(what)?;
            let rows = sqlx::query(SELECT_NODES).fetch_all(&mut *tx).await.ctx(what)?;
            (header, rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect::<Result<_, sqlx::Error>>().ctx(what)?)
        });
        let Some((parameters, revocations, etag, fetched_at)) = header else {
            return Ok(None);
        };
        let node_infos = nodes_from(rows)?.into_iter().map(|n| n.signed).collect();
        Ok(Some(MapSnapshot {
            parameters: decode_signed("treaty_network_map", "parameters".into(), &parameters)?,
            revocations: decode_signed("treaty_network_map", "revocations".into(), &revocations)?,
            node_infos,
            etag,
            fetched_at_secs: u64::try_from(fetched_at).unwrap_or(0),
        }))
    }

    /// The cached node infos, in map order.
    pub async fn nodes(&self) -> Result<Vec<CachedNode>, StorageError> {
        let what = "reading treaty_network_map_nodes";
        let rows: Vec<NodeRow> = with_pool!(self.db, pool => {
            let rows = sqlx::query(SELECT_NODES).fetch_all(pool).await.ctx(what)?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect::<Result<_, sqlx::Error>>().ctx(what)?
        });
        nodes_from(rows)
    }
}

/// position, name, node_info_hash, signed.
type NodeRow = (i64, Option<String>, Vec<u8>, Vec<u8>);

const SELECT_NODES: &str = "SELECT position, name, node_info_hash, signed FROM treaty_network_map_nodes ORDER BY position";

fn nodes_from(rows: Vec<NodeRow>) -> Result<Vec<CachedNode>, StorageError> {
    rows.into_iter()
        .map(|(position, name, hash, signed)| {
            let key = format!("position {position}");
            let hash = <[u8; 32]>::try_from(hash.as_slice()).map(treaty_core::SecureHash).map_err(|_| StorageError::Corrupt {
                table: "treaty_network_map_nodes",
                key: key.clone(),
                reason: "node_info_hash is not 32 bytes".into(),
            })?;
            Ok(CachedNode {
                position: u64::try_from(position).unwrap_or(0),
                name,
                hash,
                signed: decode_signed("treaty_network_map_nodes", key, &signed)?,
            })
        })
        .collect()
}

impl MapCache for SqlMapCache {
    async fn load(&self) -> Result<Option<MapSnapshot>, StoreError> {
        Ok(self.fetch().await?)
    }

    async fn save(&self, snapshot: &MapSnapshot) -> Result<(), StoreError> {
        Ok(self.store(snapshot).await?)
    }
}
