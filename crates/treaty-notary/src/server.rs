//! The notary as a process of its own: a [`NotaryService`] (with its batch signer) served over
//! mutual TLS, answering [`ServerRequest`]s on the [`crate::mux`] framing — BCS in
//! length-delimited frames, many requests in flight on one connection, matched by id.
//!
//! - **Who asks** is the party at the other end of the connection: its TLS certificate (checked
//!   against the network root) names it, and the server's configuration lists the requesting
//!   parties it knows, name → key. Every request's signature is checked with that key; a name
//!   the server does not know is refused as a bad request signature.
//! - **Non-validating** requests carry a tear-off ([`NotarisationRequest`]) and go through
//!   [`NotaryService::notarise`].
//! - **Validating** requests ([`WholeTransactionRequest`]) carry the whole signed transaction
//!   and the transactions its inputs and references point at (one level of back-chain). A
//!   validating server checks the request, then verifies the transaction completely —
//!   resolution against those transactions and its configured contract attachments,
//!   structure, every signature but its own, contracts in the wasm sandbox — then commits and
//!   signs. It does not verify the dependencies themselves (their ids are checked: they are
//!   the transactions the inputs name): resolving and verifying the whole back-chain is what a
//!   notary node does once per transaction and remembers, see `docs/notary.md`.
//! - **Limits**: a request frame over [`ServerFile::max_request_bytes`] is read and thrown
//!   away and answered [`RequestRejected::TooLarge`]; the connection carries on. At most
//!   [`MAX_IN_FLIGHT`] requests are handled at once; beyond that the server stops reading
//!   until answers go out.
//! - **Providers**, by configuration: a redb file (one machine), a PostgreSQL database, or a
//!   Raft cluster of replica processes reached as a client ([`ClusterClient`]): an answer
//!   then means committed by a majority of the replicas.
//!
//! `treaty-notary-server CONFIG.toml` runs one ([`ServerFile`] documents the file); the
//! calling side is [`crate::client::NotaryClient`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use treaty_core::{
    Attachment, KeyPair, MapResolver, NetworkParameters, Party, PublicKey, SecureHash, SignedTransaction, Timestamp, VerifyOptions,
    X500Name, encoding, verify_transaction,
};
use treaty_net::pki::RevocationList;
use treaty_net::transport::{self, TlsIdentity};
use treaty_netmap::MapSection;
use treaty_sandbox::Sandbox;
use treaty_storage::Database;

use crate::PostgresUniquenessProvider;
use crate::apply::Rules;
use crate::error::NotaryError;
use crate::mux::{self, Incoming, reply, write_frames};
use crate::provider::{UniquenessConfig, UniquenessProvider};
use crate::raft::{ClusterClient, ReplicaId, TlsPeer};
use crate::service::{NotarisationRequest, NotaryAnswer, NotaryRefusal, NotaryService};
use crate::single_node::RedbUniquenessProvider;

/// The largest request a server reads by default: a transaction at the network's default size
/// limit (10 MiB) and a little more for its dependencies and signatures.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 16 << 20;

/// The largest response a client reads (a status, or an answer: a signature with its batch
/// proof, or a refusal naming up to [`crate::DEFAULT_MAX_INPUTS`] conflicting states).
pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// The most requests one server handles at once (across connections); beyond it, it stops
/// reading until answers go out.
pub const MAX_IN_FLIGHT: usize = 16_384;

/// How long a closing server waits for the requests it is handling to be answered.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to a notary server.
#[derive(Debug, Serialize, Deserialize)]
pub enum ServerRequest {
    /// Notarise a tear-off (non-validating).
    Notarise(NotarisationRequest),
    /// Notarise a whole transaction (validating; a non-validating server checks what it would
    /// of a tear-off and does not verify).
    NotariseWhole(Box<WholeTransactionRequest>),
    /// How the server is configured.
    Status,
}

/// A whole transaction for a validating notary, with the transactions its inputs and
/// references point at.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WholeTransactionRequest {
    /// The transaction, signed by everyone but the notary.
    pub transaction: SignedTransaction,
    /// The transactions that created its inputs and references (each once).
    pub dependencies: Vec<SignedTransaction>,
    /// The requesting party's signature over [`crate::request_signing_bytes`].
    pub signature: Vec<u8>,
}

/// A server's answer to one [`ServerRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ServerResponse {
    /// The notary's signature, or its refusal.
    Answer(NotaryAnswer),
    /// The request could not be handled as a request (too large, undecodable).
    Rejected(RequestRejected),
    /// To [`ServerRequest::Status`].
    Status(ServerStatus),
}

/// Why a server did not handle a frame as a request at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestRejected {
    /// The frame is over the server's request size limit; it was read and dropped.
    #[error("the request of {size} bytes exceeds this notary's limit of {limit} bytes")]
    TooLarge {
        /// The frame's size.
        size: u64,
        /// The server's limit.
        limit: u64,
    },
    /// The frame is not a request of this protocol.
    #[error("the request cannot be decoded: {reason}")]
    Undecodable {
        /// The decoder's reason.
        reason: String,
    },
}

impl RequestRejected {
    /// The stable code (`NOTARY-REQUEST-TOO-LARGE`, `NOTARY-REQUEST-UNDECODABLE`).
    pub fn code(&self) -> &'static str {
        match self {
            RequestRejected::TooLarge { .. } => "NOTARY-REQUEST-TOO-LARGE",
            RequestRejected::Undecodable { .. } => "NOTARY-REQUEST-UNDECODABLE",
        }
    }
}

/// How a server is configured, as it tells clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The notary's identity.
    pub identity: Party,
    /// Whether it verifies whole transactions.
    pub validating: bool,
    /// Its uniqueness provider: `single`, `postgres` or `raft`.
    pub provider: String,
    /// The largest request it reads.
    pub max_request_bytes: u64,
    /// The most inputs it accepts in one transaction.
    pub max_inputs: u64,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration file, or a file it names, is missing or wrong.
    #[error("notary server configuration {path}: {reason}")]
    Config {
        /// The file at fault.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The listening address cannot be bound.
    #[error("the notary server cannot listen on {address}: {reason}")]
    Listen {
        /// The address.
        address: String,
        /// Why (port in use, not a local address, ...).
        reason: String,
    },
    /// The uniqueness provider cannot be opened or reached.
    #[error("{0}")]
    Provider(#[from] NotaryError),
}

impl ServerError {
    /// The stable code (`NOTARY-SERVER-CONFIG`, `NOTARY-SERVER-LISTEN`, or the provider's).
    pub fn code(&self) -> &'static str {
        match self {
            ServerError::Config { .. } => "NOTARY-SERVER-CONFIG",
            ServerError::Listen { .. } => "NOTARY-SERVER-LISTEN",
            ServerError::Provider(e) => e.code(),
        }
    }
}

/// Where a server's uniqueness log lives (the `[provider]` table of a [`ServerFile`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderFile {
    /// One redb file ([`RedbUniquenessProvider`]).
    Single {
        /// The file (created if missing).
        path: PathBuf,
    },
    /// A PostgreSQL database ([`PostgresUniquenessProvider`]).
    Postgres {
        /// `postgres://user@host:port/database`.
        url: String,
    },
    /// A Raft cluster of replica processes (`treaty-raft-replica`), reached over mutual TLS.
    Raft {
        /// Every replica: where it listens and the name on its certificate.
        replicas: Vec<ReplicaAddress>,
        /// How long to wait at start for the cluster to elect a leader (default 30 s).
        #[serde(default)]
        wait_for_leader_secs: Option<u64>,
    },
}

/// One replica in a [`ProviderFile::Raft`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaAddress {
    /// Its id in the cluster.
    pub id: ReplicaId,
    /// `host:port`.
    pub address: String,
    /// The X.500 name on its TLS certificate.
    pub name: String,
}

/// A party allowed to ask this notary, in a [`ServerFile`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyFile {
    /// Its X.500 legal name (the name on its TLS certificate).
    pub name: String,
    /// Its identity key, as `ed25519:HEX` (what its request signatures verify with).
    pub key: String,
}

/// The configuration file of a notary server process (TOML), as read by
/// `treaty-notary-server`:
///
/// ```toml
/// name = "O=Notary,L=Zurich,C=CH"        # the service identity
/// identity_key = "identity.key"          # a treaty key file (mode 0600): signs notarisations
/// listen = "127.0.0.1:0"                 # port 0: any free port (printed when ready)
/// root_cert = "root.der"
/// tls_chain = ["tls.der", "node-ca.der", "doorman.der"]
/// tls_key = "tls.key"
/// validating = false
/// # optional: max_request_bytes = 16777216, max_inputs = 10000
/// # optional: verify_batch = 256         # request signatures per batch check; 0: one by one
/// # optional: max_pending = 10000         # requests waiting for their commit; beyond: Overloaded
/// # validating only: the contract attachments (bundles) it trusts
/// # attachments = ["contracts.bundle"]
///
/// [provider]
/// kind = "single"                        # or "postgres" (url = ...) or "raft" ([[provider.replicas]]
///                                        # with id, address, name of each replica)
/// path = "uniqueness.redb"
///
/// [[parties]]                            # every party that may ask
/// name = "O=Alice,L=London,C=GB"
/// key = "ed25519:…"
/// ```
///
/// Relative paths are relative to the file's directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// The notary's X.500 name.
    pub name: String,
    /// Its identity key file.
    pub identity_key: PathBuf,
    /// `host:port` to listen on.
    pub listen: String,
    /// The network root certificate (DER).
    pub root_cert: PathBuf,
    /// Its TLS certificate chain (DER files): TLS certificate, node CA, doorman.
    pub tls_chain: Vec<PathBuf>,
    /// Its TLS key (a treaty key file).
    pub tls_key: PathBuf,
    /// Whether it verifies whole transactions.
    #[serde(default)]
    pub validating: bool,
    /// The largest request it reads (default [`DEFAULT_MAX_REQUEST_BYTES`]).
    #[serde(default)]
    pub max_request_bytes: Option<u64>,
    /// The most inputs per transaction (default [`crate::DEFAULT_MAX_INPUTS`]).
    #[serde(default)]
    pub max_inputs: Option<u64>,
    /// Request signatures checked in one batch, at most (default
    /// [`crate::verifier::MAX_VERIFY_BATCH`]; 0: each on its own, on the request's task).
    #[serde(default)]
    pub verify_batch: Option<usize>,
    /// Requests that may wait for their commit at once (default
    /// [`crate::service::DEFAULT_MAX_PENDING`]); beyond, they are refused `Overloaded` with an
    /// estimated wait.
    #[serde(default)]
    pub max_pending: Option<usize>,
    /// Validating only: the contract attachment bundles it trusts.
    #[serde(default)]
    pub attachments: Vec<PathBuf>,
    /// Its uniqueness provider.
    pub provider: ProviderFile,
    /// The network map to follow for the revocation list (optional): a revoked party's
    /// handshake and requests are refused. Without it nobody is revoked here.
    #[serde(default)]
    pub network_map: Option<MapSection>,
    /// The parties that may ask.
    #[serde(default)]
    pub parties: Vec<PartyFile>,
    /// The directory relative paths are relative to (set by [`ServerFile::load`]).
    #[serde(skip)]
    pub base: PathBuf,
}

impl ServerFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<ServerFile, ServerError> {
        let bad = |reason: String| ServerError::Config { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut file: ServerFile = toml::from_str(&text).map_err(|e| bad(format!("not a notary server configuration: {e}")))?;
        file.base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(file)
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base.join(p) }
    }

    fn bad(&self, what: &Path, reason: impl std::fmt::Display) -> ServerError {
        ServerError::Config { path: what.display().to_string(), reason: reason.to_string() }
    }

    fn read(&self, p: &Path) -> Result<Vec<u8>, ServerError> {
        let p = self.resolve(p);
        std::fs::read(&p).map_err(|e| self.bad(&p, e))
    }

    fn identity(&self) -> Result<(Party, KeyPair), ServerError> {
        let name: X500Name = self.name.parse().map_err(|e| self.bad(&self.base, format!("name {:?}: {e}", self.name)))?;
        let path = self.resolve(&self.identity_key);
        let key = treaty_net::keystore::read_key(&path).map_err(|e| self.bad(&path, e))?;
        Ok((Party { name, owning_key: key.public() }, key))
    }

    fn tls(&self) -> Result<TlsIdentity, ServerError> {
        let key_path = self.resolve(&self.tls_key);
        Ok(TlsIdentity {
            chain: self.tls_chain.iter().map(|p| self.read(p)).collect::<Result<_, _>>()?,
            key: Arc::new(treaty_net::keystore::read_key(&key_path).map_err(|e| self.bad(&key_path, e))?),
            root: Arc::new(self.read(&self.root_cert)?),
            revoked: Arc::default(),
        })
    }

    /// Follows the configured map's revocation list into `tls.revoked` (waiting a little for
    /// a first list), if a map is configured.
    async fn follow_map(&self, tls: &TlsIdentity) -> Result<(), ServerError> {
        if let Some(map) = &self.network_map {
            let follower = map.follower(&self.base, tls.root.as_ref().clone()).map_err(|reason| self.bad(&self.base, reason))?;
            treaty_netmap::follow_revocations(follower, tls.revoked.clone(), treaty_netmap::revocations::FIRST_LIST_WAIT).await;
        }
        Ok(())
    }

    fn parties(&self) -> Result<HashMap<X500Name, Party>, ServerError> {
        let mut parties = HashMap::new();
        for p in &self.parties {
            let name: X500Name = p.name.parse().map_err(|e| self.bad(&self.base, format!("party {:?}: {e}", p.name)))?;
            let key: PublicKey = p.key.parse().map_err(|e| self.bad(&self.base, format!("party {}: key {:?}: {e}", p.name, p.key)))?;
            key.validate().map_err(|e| self.bad(&self.base, format!("party {}: {e}", p.name)))?;
            parties.insert(name.clone(), Party { name, owning_key: key });
        }
        Ok(parties)
    }

    fn validator(&self) -> Result<Validator, ServerError> {
        let params = NetworkParameters::default();
        let sandbox = Sandbox::new(params.clone()).map_err(|e| self.bad(&self.base, format!("cannot create the contract sandbox: {e}")))?;
        let mut attachments = Vec::new();
        for p in &self.attachments {
            let bytes = self.read(p)?;
            let checked = treaty_sandbox::check_attachment(&bytes, &params).map_err(|e| self.bad(&self.resolve(p), e))?;
            attachments.push(checked);
        }
        Ok(Validator { sandbox, attachments })
    }

    async fn provider(&self, tls: &TlsIdentity, config: UniquenessConfig) -> Result<Hosted, ServerError> {
        Ok(match &self.provider {
            ProviderFile::Single { path } => Hosted::Single(Arc::new(RedbUniquenessProvider::open(self.resolve(path), config).await?)),
            ProviderFile::Postgres { url } => {
                let db = Database::open(url, &self.base)
                    .await
                    .map_err(|e| NotaryError::Open { location: url.clone(), reason: e.to_string() })?;
                Hosted::Postgres(Arc::new(PostgresUniquenessProvider::open(&db, config).await?), db)
            }
            ProviderFile::Raft { replicas, wait_for_leader_secs } => {
                let mut peers = Vec::new();
                for r in replicas {
                    let name =
                        r.name.parse().map_err(|e| self.bad(&self.base, format!("replica {}: name {:?}: {e}", r.address, r.name)))?;
                    peers.push((r.id, TlsPeer { address: r.address.clone(), name }));
                }
                let wait = Duration::from_secs(wait_for_leader_secs.unwrap_or(30));
                Hosted::Raft(Arc::new(ClusterClient::connect(tls.clone(), peers, wait).await?))
            }
        })
    }

    /// Loads keys, certificates and attachments, opens the provider (for Raft: waits until the
    /// cluster has a leader), binds the listener and starts serving.
    pub async fn start(&self) -> Result<(NotaryServer, SocketAddr), ServerError> {
        let (identity, key) = self.identity()?;
        let tls = self.tls()?;
        let parties = self.parties()?;
        self.follow_map(&tls).await?;
        let validator = if self.validating { Some(self.validator()?) } else { None };
        let mut rules = Rules::default();
        if let Some(max) = self.max_inputs {
            rules.max_inputs = usize::try_from(max).unwrap_or(usize::MAX);
        }
        let acceptor = transport::acceptor(&tls).map_err(|e| self.bad(&self.resolve(&self.tls_key), e))?;
        let listener = TcpListener::bind(&self.listen).await.map_err(|e| ServerError::Listen {
            address: self.listen.clone(),
            reason: if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("the port is in use by another process ({e})")
            } else {
                e.to_string()
            },
        })?;
        let addr = listener.local_addr().map_err(|e| ServerError::Listen { address: self.listen.clone(), reason: e.to_string() })?;
        let hosted = self.provider(&tls, UniquenessConfig { rules, ..UniquenessConfig::default() }).await?;
        let service = NotaryService::new(identity.clone(), key, hosted.provider())
            .map_err(|e| self.bad(&self.resolve(&self.identity_key), e))?
            .validating(self.validating)
            .with_request_batch(self.verify_batch.unwrap_or(crate::verifier::MAX_VERIFY_BATCH))
            .with_max_pending(self.max_pending.unwrap_or(crate::service::DEFAULT_MAX_PENDING));
        let max_request_bytes = self.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
        let status = ServerStatus {
            identity,
            validating: self.validating,
            provider: hosted.kind().into(),
            max_request_bytes,
            max_inputs: u64::try_from(rules.max_inputs).unwrap_or(u64::MAX),
        };
        let revoked = tls.revoked.clone();
        let served = Arc::new(Served { service, parties, revoked, validator, max_request_bytes, status });
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let accepting = tokio::spawn(accept_loop(listener, acceptor, served.clone(), in_flight.clone(), connections.clone()));
        Ok((NotaryServer { served: Some(served), hosted, in_flight, connections, accepting }, addr))
    }
}

/// The provider a server hosts, kept so it can be closed properly.
enum Hosted {
    Single(Arc<RedbUniquenessProvider>),
    Postgres(Arc<PostgresUniquenessProvider>, Database),
    Raft(Arc<ClusterClient>),
}

impl Hosted {
    fn provider(&self) -> Arc<dyn UniquenessProvider> {
        match self {
            Hosted::Single(p) => p.clone(),
            Hosted::Postgres(p, _) => p.clone(),
            Hosted::Raft(p) => p.clone(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Hosted::Single(_) => "single",
            Hosted::Postgres(..) => "postgres",
            Hosted::Raft(_) => "raft",
        }
    }

    async fn close(self) {
        match self {
            Hosted::Single(p) => match Arc::try_unwrap(p) {
                Ok(p) => p.close().await,
                Err(_) => tracing::warn!("the redb provider is still in use; dropped without waiting for its writer"),
            },
            Hosted::Postgres(p, db) => {
                if let Ok(p) = Arc::try_unwrap(p) {
                    p.close().await;
                }
                db.close().await;
            }
            Hosted::Raft(_) => {}
        }
    }
}

/// A validating server's verifier: the sandbox and the contract attachments it trusts.
struct Validator {
    sandbox: Sandbox,
    attachments: Vec<Attachment>,
}

impl Validator {
    /// Verifies `stx` completely against `dependencies` (which must be what its inputs and
    /// references name) and the trusted attachments; only `notary`'s signature may be missing.
    fn verify(&self, stx: &SignedTransaction, dependencies: &[SignedTransaction], notary: &PublicKey) -> Result<(), String> {
        let mut resolver = MapResolver::default();
        for d in dependencies {
            // The id is computed from the dependency's own bytes, so a forged dependency
            // cannot stand in for the transaction an input names.
            resolver.add_transaction(d.tx());
        }
        for a in &self.attachments {
            resolver.add_attachment(a.clone());
        }
        verify_transaction(stx, &resolver, &self.sandbox, &VerifyOptions { allowed_missing: vec![notary.clone()] })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// What a server's connections share.
struct Served {
    service: NotaryService,
    parties: HashMap<X500Name, Party>,
    /// The map's revocation list (empty without a map): checked at each request too, since a
    /// connection opened before a revocation stays open.
    revoked: Arc<std::sync::RwLock<RevocationList>>,
    validator: Option<Validator>,
    max_request_bytes: u64,
    status: ServerStatus,
}

/// The notary's clock.
fn now() -> Timestamp {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    Timestamp(i64::try_from(micros).unwrap_or(i64::MAX))
}

impl Served {
    fn requester(&self, tx_id: SecureHash, peer: &X500Name) -> Result<&Party, NotaryRefusal> {
        if self.revoked.read().unwrap_or_else(|p| p.into_inner()).names.contains(peer) {
            return Err(NotaryRefusal::RequestSignatureInvalid { tx_id, requester: format!("{peer} (revoked on the network)") });
        }
        self.parties
            .get(peer)
            .ok_or_else(|| NotaryRefusal::RequestSignatureInvalid { tx_id, requester: format!("{peer} (not a party this notary knows)") })
    }

    async fn notarise(&self, request: NotarisationRequest, peer: &X500Name) -> NotaryAnswer {
        let tx_id = request.transaction.id;
        if self.validator.is_some() {
            return Err(NotaryRefusal::TransactionInvalid {
                tx_id,
                reason: format!(
                    "{} is a validating notary: it needs the whole transaction with its dependencies, not a tear-off",
                    self.status.identity.name
                ),
            });
        }
        let requester = self.requester(tx_id, peer)?;
        self.service.notarise(&request, requester, now()).await
    }

    async fn notarise_whole(&self, request: WholeTransactionRequest, peer: &X500Name) -> NotaryAnswer {
        let stx = &request.transaction;
        let tx_id = stx.id();
        let requester = self.requester(tx_id, peer)?;
        // The cheap checks first (notary, request signature), then the whole verification.
        self.service.check_whole(stx, &request.signature, requester)?;
        if let Some(validator) = &self.validator {
            validator
                .verify(stx, &request.dependencies, &self.service.public_key())
                .map_err(|reason| NotaryRefusal::TransactionInvalid { tx_id, reason })?;
        }
        self.service.commit_whole(stx, requester, now()).await
    }

    async fn handle(&self, request: ServerRequest, peer: &X500Name) -> ServerResponse {
        match request {
            ServerRequest::Notarise(r) => ServerResponse::Answer(self.notarise(r, peer).await),
            ServerRequest::NotariseWhole(r) => ServerResponse::Answer(self.notarise_whole(*r, peer).await),
            ServerRequest::Status => ServerResponse::Status(self.status.clone()),
        }
    }
}

/// A running notary server. [`close`](Self::close) it to stop: it stops taking requests,
/// answers those it is handling and closes its provider.
pub struct NotaryServer {
    served: Option<Arc<Served>>,
    hosted: Hosted,
    in_flight: Arc<Semaphore>,
    connections: Arc<Mutex<JoinSet<()>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl NotaryServer {
    /// Stops accepting connections and reading requests, waits (up to ten seconds) for the
    /// requests being handled to be answered, and closes the provider (a redb file is flushed
    /// and released).
    pub async fn close(mut self) {
        self.accepting.abort();
        let _ = (&mut self.accepting).await;
        let mut connections = std::mem::take(&mut *self.connections.lock().unwrap_or_else(|p| p.into_inner()));
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
        if tokio::time::timeout(CLOSE_TIMEOUT, self.in_flight.acquire_many(all)).await.is_err() {
            tracing::warn!("requests were still being handled {CLOSE_TIMEOUT:?} after the server began closing");
        }
        // The handlers are done: this is the last holder of the service (and its provider).
        drop(self.served.take());
        self.hosted.close().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    served: Arc<Served>,
    in_flight: Arc<Semaphore>,
    connections: Arc<Mutex<JoinSet<()>>>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, served, in_flight) = (acceptor.clone(), served.clone(), in_flight.clone());
        let mut connections = connections.lock().unwrap_or_else(|p| p.into_inner());
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, transport::accept(&acceptor, tcp)).await {
                Ok(Ok((stream, peer))) => serve(served, Box::new(stream), peer, in_flight).await,
                Ok(Err(e)) => tracing::info!(error = %e, "refused a connection"),
                Err(_) => tracing::info!("a connection did not complete its handshake in time"),
            }
        });
    }
}

/// Serves one connection until it closes: reads requests, handles each in a task of its own
/// (so a slow commit does not hold up the next request), answers in any order.
async fn serve(served: Arc<Served>, stream: mux::BoxStream, peer: X500Name, in_flight: Arc<Semaphore>) {
    let peer = Arc::new(peer);
    let limit = served.max_request_bytes;
    let (mut read, write) = tokio::io::split(stream);
    let (out, queued) = mpsc::unbounded_channel();
    // Ends once every response is written (all senders gone) or the connection breaks.
    tokio::spawn(write_frames(write, queued));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let bytes = match mux::read_request(&mut read, limit).await {
            Ok(Incoming::Frame(bytes)) => bytes,
            Ok(Incoming::TooLarge { id: Some(id), size }) => {
                reply(&out, id, &ServerResponse::Rejected(RequestRejected::TooLarge { size, limit }));
                continue;
            }
            Ok(Incoming::TooLarge { id: None, .. }) | Err(_) => return,
        };
        let (served, peer, out) = (served.clone(), peer.clone(), out.clone());
        tokio::spawn(async move {
            match encoding::decode_bounded::<(u64, ServerRequest)>(&bytes, limit as usize) {
                Ok((id, request)) => reply(&out, id, &served.handle(request, &peer).await),
                Err(e) => {
                    if let Some(id) = bytes.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes) {
                        reply(&out, id, &ServerResponse::Rejected(RequestRejected::Undecodable { reason: e.to_string() }));
                    }
                }
            }
            drop(permit);
        });
    }
}
