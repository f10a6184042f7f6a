//! `node.toml`: a node's configuration.
//!
//! ```toml
//! legal_name = "O=Alice,L=London,C=GB"
//!
//! [p2p]
//! listen = "127.0.0.1:40101"        # also the address published in the node info
//!
//! [rpc]
//! listen = "127.0.0.1:40102"
//! tls = true                        # default; false (plain HTTP/2) only on a loopback address
//! max_connections = 256             # default: client connections served at once
//!
//! [network_map]
//! url = "http://127.0.0.1:40100"
//! trusted_key = "ed25519:…"         # the network-map key parameters must be signed by
//! poll_seconds = 2                  # optional, default 30
//!
//! [database]
//! url = "sqlite://node.db"          # relative paths are relative to the node directory
//!
//! [notary]                          # only on notary nodes
//! validating = false
//! # for a member of a notary cluster (docs/notary.md, "Notary clusters of nodes"):
//! service_name = "O=Notary,L=Zurich,C=CH"   # the service identity (keys/service.key)
//! raft_listen = "127.0.0.1:40103"           # its Raft replica, for the other members only
//!
//! [[notary.replicas]]                       # every member, this node included
//! id = 1
//! address = "127.0.0.1:40103"
//! name = "CN=Replica 1,O=Notary,L=Zurich,C=CH"
//!
//! [coins]                           # optional: background merging and splitting of this node's cash
//! interval_seconds = 30             # how often to look (default 30)
//! merge_above = 64                  # more unlocked states than this of one token: merge the smallest
//! max_inputs = 50                   # states one merge takes at most (default 50, 2 to 200)
//! split_below = 4                   # fewer states than this of one token: split the largest
//! split_into = 8                    # into this many (default 8, 2 to 100)
//!
//! [metrics]                         # optional: Prometheus text at http://LISTEN/metrics
//! listen = "127.0.0.1:40109"
//! ```
//!
//! `[coins]` is off unless present, and needs `merge_above`, `split_below` or both. The node
//! only carries it to its applications ([`crate::node::NodeServices::coins`]); the finance app
//! acts on it (docs/finance.md, "Keeping coins in shape"). So that the task never undoes its own
//! work, `merge_above` must be at least `split_below - 2 + max(split_into, max_inputs)`: a split
//! (of one of at most `split_below - 1` states into `split_into`) never leaves more than
//! `merge_above` states, and a merge (of `max_inputs` of more than `merge_above`) never leaves
//! fewer than `split_below`.
//!
//! Every error names the file, the key and what is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use treaty_core::{PublicKey, SecureHash, X500Name};

/// A node's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's legal name (X.500).
    pub legal_name: String,
    /// Peer-to-peer listener.
    pub p2p: Listen,
    /// Client RPC listener and users.
    pub rpc: RpcConfig,
    /// Where the network map is and whose signature it must carry.
    pub network_map: NetworkMapConfig,
    /// The node database.
    pub database: DatabaseConfig,
    /// Present on notary nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notary: Option<NotaryConfig>,
    /// Background merging and splitting of the node's fungible states; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coins: Option<CoinsConfig>,
    /// The monitoring endpoint; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Listen>,
}

/// The most states one merge takes (`[coins] max_inputs`, and the `CashMerge` flow's
/// `max_inputs`): a bound on the transaction, its verification and its back-chain.
pub const MAX_MERGE_INPUTS: u64 = 200;
/// The most states one split makes (`[coins] split_into`, and the `CashSplit` flow's `into`).
pub const MAX_SPLIT_INTO: u64 = 100;

/// `[coins]`: when the node's background task merges many small states of one token into one
/// and splits a large one into several, so coin selections stay small and concurrent payments
/// find enough distinct states. Counts are of the node's unconsumed states per token and
/// issuer: for merging the unlocked ones, for splitting all (coins locked by payments in flight
/// are not free, but not missing either).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoinsConfig {
    /// Seconds between looks at the vault (default 30, at least 1).
    #[serde(default = "CoinsConfig::default_interval")]
    pub interval_seconds: u64,
    /// Merge when a token has more unlocked states than this; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_above: Option<u64>,
    /// The most states one merge takes, smallest first (default 50, 2 to [`MAX_MERGE_INPUTS`]).
    #[serde(default = "CoinsConfig::default_max_inputs")]
    pub max_inputs: u64,
    /// Split the largest unlocked state when a token has fewer states than this, locked ones
    /// included (at least 2); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_below: Option<u64>,
    /// How many states a split makes (default 8, 2 to [`MAX_SPLIT_INTO`]).
    #[serde(default = "CoinsConfig::default_split_into")]
    pub split_into: u64,
}

impl CoinsConfig {
    fn default_interval() -> u64 {
        30
    }
    fn default_max_inputs() -> u64 {
        50
    }
    fn default_split_into() -> u64 {
        8
    }

    /// How often the task looks.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_seconds)
    }

    /// Checks the values alone and together: the key at fault and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.interval_seconds == 0 {
            return Err(("coins.interval_seconds", "must be at least 1".into()));
        }
        if self.merge_above.is_none() && self.split_below.is_none() {
            return Err(("coins", "does nothing: set merge_above, split_below or both (or remove the section)".into()));
        }
        if !(2..=MAX_MERGE_INPUTS).contains(&self.max_inputs) {
            return Err(("coins.max_inputs", format!("{} is not between 2 and {MAX_MERGE_INPUTS}", self.max_inputs)));
        }
        if !(2..=MAX_SPLIT_INTO).contains(&self.split_into) {
            return Err(("coins.split_into", format!("{} is not between 2 and {MAX_SPLIT_INTO}", self.split_into)));
        }
        if self.merge_above == Some(0) {
            return Err(("coins.merge_above", "must be at least 1 (merge when a token has more states than this)".into()));
        }
        if let Some(below) = self.split_below
            && below < 2
        {
            return Err(("coins.split_below", format!("{below} would never split: a split needs a state (at least 2)")));
        }
        if let (Some(above), Some(below)) = (self.merge_above, self.split_below) {
            let most = self.split_into.max(self.max_inputs);
            let needed = below - 2 + most;
            if above < needed {
                let what = if self.split_into >= self.max_inputs {
                    format!(
                        "a split of one of {} states into {} leaves {needed}, which would be merged at once",
                        below - 1,
                        self.split_into
                    )
                } else {
                    let taken = self.max_inputs.min(above + 1);
                    format!("a merge of {taken} of {} states leaves {}, which would be split at once", above + 1, above + 2 - taken)
                };
                return Err((
                    "coins.merge_above",
                    format!(
                        "{above} is below split_below - 2 + max(split_into, max_inputs) = {needed}: {what}; raise merge_above or lower the others"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A listening address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// `host:port`.
    pub listen: String,
}

/// Client RPC: where it listens and who may use it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcConfig {
    /// `host:port`.
    pub listen: String,
    /// Serve RPC over TLS with the node's RPC certificate (`certs/rpc.der`, issued by the
    /// node CA). Default true; plain HTTP/2 (`false`) is allowed only on a loopback address.
    #[serde(default = "yes")]
    pub tls: bool,
    /// The users; with none, every call is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<RpcUser>,
    /// Most client connections open at once, those still in their TLS handshake included;
    /// past it a new connection is closed at once (and logged). Default
    /// [`DEFAULT_RPC_MAX_CONNECTIONS`].
    #[serde(default = "default_rpc_max_connections")]
    pub max_connections: usize,
}

/// The RPC connections a node serves at once unless `rpc.max_connections` says otherwise:
/// well under the usual limit of 1,024 open files, so a flood of connections is turned away
/// before it takes the descriptors the node's own database and peers need.
pub const DEFAULT_RPC_MAX_CONNECTIONS: usize = 256;

/// The most `rpc.max_connections` may be: far more than one process has file descriptors for.
pub const MAX_RPC_CONNECTIONS: usize = 1_000_000;

fn default_rpc_max_connections() -> usize {
    DEFAULT_RPC_MAX_CONNECTIONS
}

fn yes() -> bool {
    true
}

/// An RPC user: authenticated by password, by client certificate (mutual TLS), or either.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcUser {
    /// The user name (sent as `treaty-user` metadata).
    pub name: String,
    /// The password's Argon2id hash in PHC form (`$argon2id$v=19$…`); see [`hash_password`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// SHA-256 of the DER client certificate that authenticates this user over mutual TLS
    /// (hex, colons allowed: what `openssl x509 -noout -fingerprint -sha256` prints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
    /// What the user may do: `ALL`, `StartFlow.<name>`, `StartFlow.*`, `ReadFlows`, `KillFlow`,
    /// `RetryFlow`, `ReadNetwork`, `ReadVault`, `Drain`, `UploadAttachment`, `DownloadAttachment`,
    /// `Shutdown`.
    pub permissions: Vec<String>,
}

/// Permissions an RPC user can hold.
pub const PERMISSIONS: &[&str] = &[
    "ALL",
    "StartFlow.*",
    "ReadFlows",
    "KillFlow",
    "RetryFlow",
    "ReadNetwork",
    "ReadVault",
    "Drain",
    "UploadAttachment",
    "DownloadAttachment",
    "Shutdown",
];

/// Reads a certificate fingerprint written as 64 hex digits, optionally in colon-separated
/// pairs and in either case.
pub fn parse_fingerprint(text: &str) -> Result<SecureHash, String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    hex.parse::<SecureHash>().map_err(|_| format!("{text:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"))
}

/// Hashes an RPC password with Argon2id (default parameters, random salt), in PHC form.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// The network map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkMapConfig {
    /// Base URL.
    pub url: String,
    /// The key network parameters must be signed by (`ed25519:<hex>` or `p256:<hex>`).
    pub trusted_key: String,
    /// Seconds between polls of the map (default 30; a bootstrapped local network uses 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_seconds: Option<u64>,
}

/// The database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (relative to the node directory) or `postgres://…`.
    pub url: String,
}

/// Notary settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotaryConfig {
    /// Whether this notary validates whole transactions.
    pub validating: bool,
    /// For a cluster member: the service identity's legal name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// For a cluster member: where its Raft replica listens (`host:port`) for the other
    /// members and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_listen: Option<String>,
    /// For a cluster member: every replica of the cluster, this node included (static
    /// membership: changing it is a new cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaConfig>,
}

/// One replica of a notary cluster, in `[[notary.replicas]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Its Raft id (unique in the cluster, not 0).
    pub id: u64,
    /// Where its Raft replica listens (`host:port`).
    pub address: String,
    /// The member node's legal name (on its TLS certificate).
    pub name: String,
}

/// A cluster member's part in its cluster, as checked at load.
#[derive(Clone, Debug)]
pub struct ClusterMember {
    /// The service identity's legal name.
    pub service: X500Name,
    /// This node's Raft id.
    pub id: u64,
    /// Where this node's replica listens.
    pub listen: SocketAddr,
    /// Every replica: id → (address, legal name).
    pub replicas: std::collections::BTreeMap<u64, (String, X500Name)>,
}

/// Checks a cluster member's `[notary]` section: the service name, its replica's address,
/// and the replicas (ids unique and not 0, names valid, this node one of them).
fn cluster_member(n: &NotaryConfig, me: &X500Name, taken: &[SocketAddr]) -> Result<ClusterMember, (&'static str, String)> {
    let service = n
        .service_name
        .as_deref()
        .ok_or(("notary.service_name", "a cluster member must name its service identity".to_string()))?
        .parse::<X500Name>()
        .map_err(|e| ("notary.service_name", e.to_string()))?;
    let listen = n.raft_listen.clone().ok_or(("notary.raft_listen", "a cluster member must say where its replica listens".into()))?;
    let addr: SocketAddr = listen.parse().map_err(|e| ("notary.raft_listen", format!("{listen:?} is not host:port: {e}")))?;
    if taken.contains(&addr) {
        return Err(("notary.raft_listen", format!("{addr} is also the p2p or rpc address")));
    }
    if n.replicas.is_empty() {
        return Err(("notary.replicas", "a cluster member must list every replica of its cluster".into()));
    }
    let mut replicas = std::collections::BTreeMap::new();
    for r in &n.replicas {
        let name = r.name.parse::<X500Name>().map_err(|e| ("notary.replicas", format!("replica {}: {:?}: {e}", r.id, r.name)))?;
        if r.id == 0 {
            return Err(("notary.replicas", format!("replica {name}: ids start at 1")));
        }
        if replicas.insert(r.id, (r.address.clone(), name)).is_some() {
            return Err(("notary.replicas", format!("replica id {} is given twice", r.id)));
        }
    }
    let id = replicas
        .iter()
        .find(|(_, (_, name))| name == me)
        .map(|(id, _)| *id)
        .ok_or(("notary.replicas", format!("this node ({me}) is not one of the replicas")))?;
    Ok(ClusterMember { service, id, listen: addr, replicas })
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {error}")]
    Io {
        /// The file.
        file: String,
        /// The error.
        error: std::io::Error,
    },
    /// Not valid TOML, a missing key, an unknown key or a wrong type.
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A value that is present but wrong.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A configuration loaded and checked, with typed values.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// The file as written.
    pub raw: NodeConfig,
    /// The node directory (the file's directory).
    pub dir: PathBuf,
    /// The legal name.
    pub legal_name: X500Name,
    /// Peer-to-peer address.
    pub p2p: SocketAddr,
    /// RPC address.
    pub rpc: SocketAddr,
    /// Whether RPC is served over TLS.
    pub rpc_tls: bool,
    /// The trusted network-map key.
    pub network_map_key: PublicKey,
    /// How often to poll the network map.
    pub poll_interval: Duration,
    /// Its part in a notary cluster, if a member.
    pub cluster: Option<ClusterMember>,
    /// Where the metrics are served (plain HTTP, `GET /metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl NodeConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io { file: file.clone(), error })?;
        Self::parse(&text, path)
    }

    /// Checks configuration text as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<LoadedConfig, ConfigError> {
        let file = path.display().to_string();
        let raw: NodeConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax { file: file.clone(), message: e.to_string().trim_end().replace('\n', " ") })?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { file: file.clone(), key, message };
        let legal_name = raw.legal_name.parse::<X500Name>().map_err(|e| invalid("legal_name", e.to_string()))?;
        let addr = |key: &'static str, v: &str| v.parse::<SocketAddr>().map_err(|e| invalid(key, format!("{v:?} is not host:port ({e})")));
        let p2p = addr("p2p.listen", &raw.p2p.listen)?;
        let rpc = addr("rpc.listen", &raw.rpc.listen)?;
        if !raw.rpc.tls && !rpc.ip().is_loopback() {
            return Err(invalid(
                "rpc.tls",
                format!(
                    "plain-text RPC (tls = false) is allowed only on a loopback address, not {rpc}: passwords would cross the network in clear"
                ),
            ));
        }
        if !(1..=MAX_RPC_CONNECTIONS).contains(&raw.rpc.max_connections) {
            return Err(invalid(
                "rpc.max_connections",
                format!("must be from 1 to {MAX_RPC_CONNECTIONS}, not {}", raw.rpc.max_connections),
            ));
        }
        let mut fingerprints = std::collections::BTreeMap::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, user) in raw.rpc.users.iter().enumerate() {
            let key = "rpc.users";
            if user.name.is_empty() {
                return Err(invalid(key, format!("user {} has an empty name", i + 1)));
            }
            // One entry per name: with two, the last one's permissions went with the first
            // one's certificate.
            if !names.insert(user.name.as_str()) {
                return Err(invalid(key, format!("user {:?} is listed twice", user.name)));
            }
            if user.password_hash.is_none() && user.certificate_sha256.is_none() {
                return Err(invalid(key, format!("user {:?} has neither password_hash nor certificate_sha256", user.name)));
            }
            if let Some(hash) = &user.password_hash {
                argon2::PasswordHash::new(hash)
                    .map_err(|e| invalid(key, format!("password_hash of user {:?} is not an Argon2 PHC string ({e})", user.name)))?;
            }
            if let Some(fingerprint) = &user.certificate_sha256 {
                let f =
                    parse_fingerprint(fingerprint).map_err(|e| invalid(key, format!("certificate_sha256 of user {:?}: {e}", user.name)))?;
                if !raw.rpc.tls {
                    return Err(invalid(key, format!("user {:?} has a certificate_sha256, which needs rpc.tls = true", user.name)));
                }
                if let Some(other) = fingerprints.insert(f, &user.name) {
                    return Err(invalid(key, format!("users {other:?} and {:?} have the same certificate_sha256", user.name)));
                }
            }
            for p in &user.permissions {
                if !PERMISSIONS.contains(&p.as_str()) && p.strip_prefix("StartFlow.").is_none_or(|f| f.is_empty()) {
                    return Err(invalid(
                        key,
                        format!(
                            "user {:?}: unknown permission {p:?} (known: {}, StartFlow.<flow name>)",
                            user.name,
                            PERMISSIONS.join(", ")
                        ),
                    ));
                }
            }
        }
        if p2p == rpc {
            return Err(invalid("rpc.listen", format!("{rpc} is also the p2p address")));
        }
        let metrics = match &raw.metrics {
            Some(m) => {
                let at = addr("metrics.listen", &m.listen)?;
                if at.port() != 0 && (at == p2p || at == rpc) {
                    return Err(invalid("metrics.listen", format!("{at} is also the p2p or RPC address")));
                }
                Some(at)
            }
            None => None,
        };
        if !raw.network_map.url.starts_with("http://") {
            return Err(invalid(
                "network_map.url",
                format!("{:?} must start with http:// (the map serves only signed data)", raw.network_map.url),
            ));
        }
        let poll_interval = match raw.network_map.poll_seconds {
            Some(0) => return Err(invalid("network_map.poll_seconds", "must be at least 1".into())),
            Some(s) => Duration::from_secs(s),
            None => Duration::from_secs(30),
        };
        let network_map_key =
            raw.network_map.trusted_key.parse::<PublicKey>().map_err(|e| invalid("network_map.trusted_key", e.to_string()))?;
        if !raw.database.url.starts_with("sqlite://") && !raw.database.url.starts_with("postgres://") {
            return Err(invalid("database.url", format!("{:?} must start with sqlite:// or postgres://", raw.database.url)));
        }
        let cluster = match raw.notary.as_ref() {
            Some(n) if n.service_name.is_some() || n.raft_listen.is_some() || !n.replicas.is_empty() => {
                Some(cluster_member(n, &legal_name, &[p2p, rpc]).map_err(|(key, reason)| invalid(key, reason))?)
            }
            _ => None,
        };
        if let Some(coins) = &raw.coins {
            coins.check().map_err(|(key, reason)| invalid(key, reason))?;
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let rpc_tls = raw.rpc.tls;
        Ok(LoadedConfig { raw, dir, legal_name, p2p, rpc, rpc_tls, network_map_key, poll_interval, cluster, metrics })
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ed25519:8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";

    fn text(replace: &str, with: &str) -> String {
        let good = format!(
            "legal_name = \"O=Alice,L=London,C=GB\"\n[p2p]\nlisten = \"127.0.0.1:40101\"\n[rpc]\nlisten = \"127.0.0.1:40102\"\n[network_map]\nurl = \"http://127.0.0.1:40100\"\ntrusted_key = \"{KEY}\"\n[database]\nurl = \"sqlite://node.db\"\n"
        );
        good.replace(replace, with)
    }

    fn err(t: &str) -> String {
        NodeConfig::parse(t, Path::new("/nodes/alice/node.toml")).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_loads_and_round_trips() {
        let c = NodeConfig::parse(&text("", ""), Path::new("/nodes/alice/node.toml")).unwrap();
        assert_eq!(c.legal_name.to_string(), "O=Alice, L=London, C=GB");
        assert_eq!(c.dir, PathBuf::from("/nodes/alice"));
        assert_eq!(NodeConfig::parse(&c.raw.to_toml(), Path::new("x/node.toml")).unwrap().raw, c.raw);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let e = err(&text("127.0.0.1:40101", "localhost-ish"));
        assert!(e.starts_with("/nodes/alice/node.toml: key `p2p.listen`:") && e.contains("not host:port"), "{e}");
        let e = err(&text("O=Alice,L=London,C=GB", "O=Alice,L=London"));
        assert!(e.contains("key `legal_name`") && e.contains("missing required attribute C"), "{e}");
        let e = err(&text("sqlite://node.db", "mysql://x"));
        assert!(e.contains("key `database.url`"), "{e}");
        let e = err(&text(KEY, "rsa:00"));
        assert!(e.contains("key `network_map.trusted_key`"), "{e}");
        let e = err(&text("127.0.0.1:40102", "127.0.0.1:40101"));
        assert!(e.contains("key `rpc.listen`") && e.contains("also the p2p address"), "{e}");
        // Unknown and missing keys, and bad TOML, come from the parser with the key named.
        let e = err(&text("[database]", "[database]\ncolour = \"blue\""));
        assert!(e.contains("colour"), "{e}");
        let e = err(&text("legal_name = \"O=Alice,L=London,C=GB\"\n", ""));
        assert!(e.contains("legal_name"), "{e}");
        let e = err("legal_name = ");
        assert!(e.starts_with("/nodes/alice/node.toml:"), "{e}");
    }

    #[test]
    fn rpc_is_tls_unless_plain_text_is_asked_for_on_a_loopback_address() {
        let c = NodeConfig::parse(&text("", ""), Path::new("/nodes/alice/node.toml")).unwrap();
        assert!(c.rpc_tls && c.raw.rpc.tls);
        let plain = text("listen = \"127.0.0.1:40102\"", "listen = \"127.0.0.1:40102\"\ntls = false");
        assert!(!NodeConfig::parse(&plain, Path::new("/nodes/alice/node.toml")).unwrap().rpc_tls);
        let e = err(&text("listen = \"127.0.0.1:40102\"", "listen = \"0.0.0.0:40102\"\ntls = false"));
        assert!(e.contains("key `rpc.tls`") && e.contains("only on a loopback address"), "{e}");
    }

    #[test]
    fn rpc_connections_are_bounded_by_default_and_the_bound_is_checked() {
        let c = NodeConfig::parse(&text("", ""), Path::new("/nodes/alice/node.toml")).unwrap();
        assert_eq!(c.raw.rpc.max_connections, DEFAULT_RPC_MAX_CONNECTIONS);
        let set = |n: &str| text("listen = \"127.0.0.1:40102\"", &format!("listen = \"127.0.0.1:40102\"\nmax_connections = {n}"));
        assert_eq!(NodeConfig::parse(&set("8"), Path::new("/n/node.toml")).unwrap().raw.rpc.max_connections, 8);
        let e = err(&set("0"));
        assert!(e.contains("key `rpc.max_connections`") && e.contains("must be from 1 to 1000000, not 0"), "{e}");
        let e = err(&set("9223372036854775807"));
        assert!(e.contains("key `rpc.max_connections`") && e.contains("not 9223372036854775807"), "{e}");
    }

    #[test]
    fn rpc_users_need_a_password_or_a_certificate_fingerprint() {
        let fp = "AB:".repeat(31) + "AB";
        let user = |extra: &str| {
            text("[network_map]", &format!("[[rpc.users]]\nname = \"ops\"\npermissions = [\"ReadFlows\"]\n{extra}\n[network_map]"))
        };
        let c = NodeConfig::parse(&user(&format!("certificate_sha256 = \"{fp}\"")), Path::new("/n/node.toml")).unwrap();
        assert_eq!(parse_fingerprint(c.raw.rpc.users[0].certificate_sha256.as_deref().unwrap()).unwrap().to_string(), "AB".repeat(32));
        let e = err(&user(""));
        assert!(e.contains("key `rpc.users`") && e.contains("neither password_hash nor certificate_sha256"), "{e}");
        let e = err(&user("certificate_sha256 = \"abc\""));
        assert!(e.contains("certificate_sha256 of user \"ops\"") && e.contains("not a SHA-256 fingerprint"), "{e}");
        let e = err(&user(&format!("certificate_sha256 = \"{fp}\""))
            .replace("listen = \"127.0.0.1:40102\"", "listen = \"127.0.0.1:40102\"\ntls = false"));
        assert!(e.contains("needs rpc.tls = true"), "{e}");
        let twice = user(&format!(
            "certificate_sha256 = \"{fp}\"\n[[rpc.users]]\nname = \"ops\"\npermissions = [\"ALL\"]\ncertificate_sha256 = \"{}\"",
            "CD:".repeat(31) + "CD"
        ));
        let e = err(&twice);
        assert!(e.contains("key `rpc.users`") && e.contains("user \"ops\" is listed twice"), "{e}");
    }

    #[test]
    fn coins_is_off_by_default_and_its_values_are_checked_alone_and_together() {
        let plain = NodeConfig::parse(&text("", ""), Path::new("/n/node.toml")).unwrap();
        assert!(plain.raw.coins.is_none(), "off unless configured");
        let coins = |body: &str| text("", "") + "[coins]\n" + body + "\n";
        let good = coins("interval_seconds = 30\nmerge_above = 64\nmax_inputs = 50\nsplit_below = 4\nsplit_into = 8");
        let c = NodeConfig::parse(&good, Path::new("/n/node.toml")).unwrap();
        let section = c.raw.coins.clone().unwrap();
        assert_eq!(
            section,
            CoinsConfig { interval_seconds: 30, merge_above: Some(64), max_inputs: 50, split_below: Some(4), split_into: 8 }
        );
        assert_eq!(section.interval(), Duration::from_secs(30));
        assert_eq!(NodeConfig::parse(&c.raw.to_toml(), Path::new("/n/node.toml")).unwrap().raw, c.raw, "round-trips");
        // Defaults, and either half alone.
        let merge_only = NodeConfig::parse(&coins("merge_above = 10"), Path::new("/n/node.toml")).unwrap().raw.coins.unwrap();
        assert_eq!((merge_only.interval_seconds, merge_only.max_inputs, merge_only.split_into, merge_only.split_below), (30, 50, 8, None));
        assert!(NodeConfig::parse(&coins("split_below = 2\nsplit_into = 100"), Path::new("/n/node.toml")).is_ok());
        // The exact bound: 4 - 2 + max(8, 50) = 52.
        assert!(NodeConfig::parse(&good.replace("merge_above = 64", "merge_above = 52"), Path::new("/n/node.toml")).is_ok());

        let cases = [
            ("", "key `coins`: does nothing: set merge_above, split_below or both"),
            ("merge_above = 10\ninterval_seconds = 0", "key `coins.interval_seconds`: must be at least 1"),
            ("merge_above = 0", "key `coins.merge_above`: must be at least 1"),
            ("merge_above = 300\nmax_inputs = 1", "key `coins.max_inputs`: 1 is not between 2 and 200"),
            ("merge_above = 300\nmax_inputs = 201", "key `coins.max_inputs`: 201 is not between 2 and 200"),
            ("split_below = 4\nsplit_into = 1", "key `coins.split_into`: 1 is not between 2 and 100"),
            ("split_below = 4\nsplit_into = 101", "key `coins.split_into`: 101 is not between 2 and 100"),
            ("split_below = 1", "key `coins.split_below`: 1 would never split"),
            // A split would be merged at once: 3 states, one split into 40, make 42 > 40.
            (
                "merge_above = 40\nmax_inputs = 10\nsplit_below = 4\nsplit_into = 40",
                "key `coins.merge_above`: 40 is below split_below - 2 + max(split_into, max_inputs) = 42: a split of one of 3 states into 40 leaves 42, which would be merged at once",
            ),
            // A merge would be split at once: 65 states, 50 merged, leave 16 < 20.
            (
                "merge_above = 64\nmax_inputs = 50\nsplit_below = 20",
                "key `coins.merge_above`: 64 is below split_below - 2 + max(split_into, max_inputs) = 68: a merge of 50 of 65 states leaves 16, which would be split at once",
            ),
            ("merge_above = 10\ncolour = \"blue\"", "colour"),
            ("merge_above = -1", "merge_above"),
        ];
        for (body, expected) in cases {
            let e = err(&coins(body));
            assert!(e.starts_with("/nodes/alice/node.toml: ") && e.contains(expected), "{body:?}: {e}");
        }
    }

    #[test]
    fn a_cluster_member_must_name_its_service_its_replica_and_itself_among_the_replicas() {
        let member = |notary: &str| text("", "") + notary + "\n";
        let replicas = "[[notary.replicas]]\nid = 1\naddress = \"127.0.0.1:40103\"\nname = \"O=Alice,L=London,C=GB\"\n[[notary.replicas]]\nid = 2\naddress = \"127.0.0.1:40203\"\nname = \"O=Bob,L=Paris,C=FR\"";
        let good = member(&format!(
            "[notary]\nvalidating = false\nservice_name = \"O=Notary,L=Zurich,C=CH\"\nraft_listen = \"127.0.0.1:40103\"\n{replicas}"
        ));
        let c = NodeConfig::parse(&good, Path::new("/n/node.toml")).unwrap();
        let cluster = c.cluster.as_ref().unwrap();
        assert_eq!((cluster.id, cluster.replicas.len()), (1, 2));
        assert_eq!(cluster.service.to_string(), "O=Notary, L=Zurich, C=CH");
        assert_eq!(NodeConfig::parse(&c.raw.to_toml(), Path::new("/n/node.toml")).unwrap().raw, c.raw, "round-trips");

        let e = err(&good.replace("raft_listen = \"127.0.0.1:40103\"\n", ""));
        assert!(e.contains("key `notary.raft_listen`") && e.contains("must say where its replica listens"), "{e}");
        let e = err(&good.replace("raft_listen = \"127.0.0.1:40103\"", "raft_listen = \"127.0.0.1:40101\""));
        assert!(e.contains("key `notary.raft_listen`") && e.contains("also the p2p or rpc address"), "{e}");
        let e = err(&good.replace("service_name = \"O=Notary,L=Zurich,C=CH\"\n", ""));
        assert!(e.contains("key `notary.service_name`"), "{e}");
        let e = err(&good.replace("O=Alice,L=London,C=GB\"\n[[", "O=Carol,L=London,C=GB\"\n[["));
        assert!(e.contains("key `notary.replicas`") && e.contains("is not one of the replicas"), "{e}");
        let e = err(&good.replace("id = 2", "id = 1"));
        assert!(e.contains("replica id 1 is given twice"), "{e}");
        // A single notary node has none of it.
        let single = NodeConfig::parse(&member("[notary]\nvalidating = true"), Path::new("/n/node.toml")).unwrap();
        assert!(single.cluster.is_none() && single.raw.notary.is_some());
    }
}
