//! The network map service.
//!
//! Reads the network directory `treaty network bootstrap` writes (`DIR/network/`: `root.der`,
//! `network-map.key`, `network-parameters.signed`, `revocations.signed`, `network.toml`) and
//! serves, over plain HTTP (everything served is signed; see the crate docs):
//!
//! | Request | Response |
//! |---|---|
//! | `POST /network-map/publish` (BCS `Signed` node info) | 200, or 400/413 with a plain-text reason |
//! | `GET /network-map` | the signed [`NetworkMap`] document, with an `ETag`; 304 on `If-None-Match` |
//! | `GET /network-map/node-info/{hash}` | a signed node info |
//! | `GET /network-map/network-parameters/{hash}` | the signed network parameters |
//! | `GET /network-map/revocations/{hash}` | the signed revocation list |
//!
//! Accepted node infos are kept in `DIR/network/node-infos/<hash>.signed` (written to a temporary
//! file, then renamed into place) and loaded again on start. `revocations.signed` is re-read
//! whenever it changes on disk (checked on every publish and map request), so an operator can
//! [`revoke`] a node while the map runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};
use treaty_core::{KeyPair, NetworkParameters, PublicKey, SecureHash, X500Name, encoding};
use treaty_net::keystore;
use treaty_net::map::{NodeInfo, kinds, verify_parameters};
use treaty_net::pki::RevocationList;
use treaty_net::signed::Signed;

use crate::{Clock, NETWORK_MAP_KIND, NetmapError, NetworkMap, signed_hash, system_clock};

/// The largest body `POST /network-map/publish` accepts (1 MiB); larger ones get 413.
pub const MAX_PUBLISH_BYTES: usize = 1024 * 1024;

/// File names inside the network directory (`DIR/network/`).
pub mod files {
    /// The root CA certificate (DER): node infos must chain to it.
    pub const ROOT_CERT: &str = "root.der";
    /// The network-map signing key (a `treaty-key v1` file, mode 0600).
    pub const MAP_KEY: &str = "network-map.key";
    /// The network parameters: BCS of a `Signed` of kind `network-parameters`.
    pub const PARAMETERS: &str = "network-parameters.signed";
    /// The revocation list: BCS of a `Signed` of kind `revocation-list`.
    pub const REVOCATIONS: &str = "revocations.signed";
    /// The map's configuration (`listen = "host:port"`).
    pub const CONFIG: &str = "network.toml";
    /// The directory accepted node infos are kept in, one `<hash>.signed` file each.
    pub const NODE_INFOS: &str = "node-infos";
}

/// A signed document as served: its bytes and the hash it is served under.
#[derive(Clone)]
struct Doc {
    bytes: Bytes,
    hash: SecureHash,
}

impl Doc {
    fn new(signed: &Signed) -> Doc {
        Doc { bytes: Bytes::from(encoding::encode(signed)), hash: signed_hash(signed) }
    }
}

/// A published node info.
struct HeldNode {
    doc: Doc,
    serial: u64,
}

/// Identifies one version of a file on disk (a rename changes the inode).
type Fingerprint = (Option<SystemTime>, u64, u64);

fn fingerprint(meta: &std::fs::Metadata) -> Fingerprint {
    (meta.modified().ok(), meta.len(), meta.ino())
}

struct Revocations {
    doc: Doc,
    list: RevocationList,
    fingerprint: Option<Fingerprint>,
}

struct Inner {
    parameters: Doc,
    params: NetworkParameters,
    revocations: Revocations,
    nodes: BTreeMap<X500Name, HeldNode>,
    by_hash: BTreeMap<SecureHash, X500Name>,
    /// The signed map document, rebuilt when something on it changes.
    map: Option<Doc>,
}

struct Shared {
    dir: PathBuf,
    root: Vec<u8>,
    map_key: KeyPair,
    clock: Clock,
    inner: Mutex<Inner>,
}

/// The network map service, loaded from a network directory.
pub struct MapServer {
    shared: Shared,
}

fn read_file(path: &Path) -> Result<Vec<u8>, NetmapError> {
    std::fs::read(path).map_err(|e| NetmapError::io(path, e))
}

/// Reads a BCS-encoded [`Signed`] from `path` and checks it with `check`.
fn read_signed<T>(path: &Path, check: impl FnOnce(&Signed) -> Result<T, String>) -> Result<(Signed, T), NetmapError> {
    let bytes = read_file(path)?;
    let signed: Signed =
        encoding::decode(&bytes).map_err(|e| NetmapError::malformed(path, format!("not a BCS-encoded signed document: {e}")))?;
    let value = check(&signed).map_err(|reason| NetmapError::malformed(path, reason))?;
    Ok((signed, value))
}

fn read_revocations(path: &Path, map_key: &PublicKey) -> Result<(Signed, RevocationList), NetmapError> {
    read_signed(path, |s| {
        s.verify::<RevocationList>(kinds::REVOCATION_LIST, map_key)
            .map_err(|e| format!("not a revocation list signed by the network-map key: {e}"))
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NetmapError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| NetmapError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| NetmapError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| NetmapError::io(path, e))?;
    // Make the rename itself durable.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| NetmapError::io(dir, e))
}

fn node_info_path(dir: &Path, hash: &SecureHash) -> PathBuf {
    dir.join(files::NODE_INFOS).join(format!("{hash}.signed"))
}

/// Loads the node infos kept in `DIR/node-infos/`. A file that no longer verifies (an expired
/// certificate, a root that changed) is skipped with a warning. Revocation is not applied: a
/// revoked node stays listed and the map's revocation list tells nodes to refuse it.
fn load_node_infos(dir: &Path, root: &[u8], now: u64) -> Result<BTreeMap<X500Name, HeldNode>, NetmapError> {
    let infos_dir = dir.join(files::NODE_INFOS);
    let mut nodes: BTreeMap<X500Name, HeldNode> = BTreeMap::new();
    let entries = match std::fs::read_dir(&infos_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(nodes),
        Err(e) => return Err(NetmapError::io(&infos_dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| NetmapError::io(&infos_dir, e))?.path();
        let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        if file_name.starts_with('.') || !file_name.ends_with(".signed") {
            continue;
        }
        let bytes = read_file(&path)?;
        let loaded =
            encoding::decode::<Signed>(&bytes).map_err(|e| format!("not a BCS-encoded signed node info: {e}")).and_then(|signed| {
                NodeInfo::verify(&signed, root, &RevocationList::default(), now).map(|i| (signed, i)).map_err(|e| e.to_string())
            });
        let (signed, info) = match loaded {
            Ok(loaded) => loaded,
            Err(reason) => {
                warn!(file = %path.display(), %reason, "skipping a stored node info that no longer verifies");
                continue;
            }
        };
        let name = info.legal_identity.name.clone();
        if nodes.get(&name).is_some_and(|held| held.serial >= info.serial) {
            continue;
        }
        nodes.insert(name, HeldNode { doc: Doc::new(&signed), serial: info.serial });
    }
    Ok(nodes)
}

/// Parses the `listen = "host:port"` line of `network.toml`.
fn listen_address(config: &Path) -> Result<String, NetmapError> {
    let text = std::fs::read_to_string(config).map_err(|e| NetmapError::io(config, e))?;
    text.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "listen")
        .map(|(_, value)| value.trim().trim_matches('"').to_string())
        .filter(|addr| !addr.is_empty())
        .ok_or_else(|| NetmapError::malformed(config, "no listen = \"host:port\" line"))
}

/// Adds `name` to the network's revocation list (`DIR/network/revocations.signed`), re-signed
/// with `DIR/network/network-map.key` and its epoch incremented, replacing the file atomically.
/// A running map picks the change up on its next request. Returns the list now in force
/// (unchanged if `name` was already revoked).
pub fn revoke(network_dir: &Path, name: &X500Name) -> Result<RevocationList, NetmapError> {
    let key = keystore::read_key(&network_dir.join(files::MAP_KEY))?;
    let path = network_dir.join(files::REVOCATIONS);
    let (_, mut list) = read_revocations(&path, &key.public())?;
    if !list.names.insert(name.clone()) {
        return Ok(list);
    }
    list.epoch = list.epoch.saturating_add(1);
    let signed = Signed::sign(kinds::REVOCATION_LIST, &list, &key);
    write_atomic(&path, &encoding::encode(&signed))?;
    info!(%name, epoch = list.epoch, "revoked");
    Ok(list)
}

/// Loads the network directory and serves the map on the `listen` address of `network.toml`
/// until the process ends.
pub async fn run(network_dir: &Path) -> Result<(), NetmapError> {
    let addr = listen_address(&network_dir.join(files::CONFIG))?;
    let server = MapServer::load(network_dir)?;
    let listener = TcpListener::bind(&addr).await.map_err(|error| NetmapError::Serve { addr: addr.clone(), error })?;
    server.serve(listener, std::future::pending()).await
}

type Refusal = (StatusCode, String);

fn bad(message: String) -> Refusal {
    (StatusCode::BAD_REQUEST, message)
}

impl MapServer {
    /// Loads the map from a network directory (`DIR/network/` as bootstrapped), checking node
    /// info validity by the system clock.
    pub fn load(network_dir: &Path) -> Result<MapServer, NetmapError> {
        MapServer::load_with_clock(network_dir, system_clock())
    }

    /// Like [`MapServer::load`], with the clock certificate validity is checked by.
    pub fn load_with_clock(network_dir: &Path, clock: Clock) -> Result<MapServer, NetmapError> {
        let root = read_file(&network_dir.join(files::ROOT_CERT))?;
        let map_key = keystore::read_key(&network_dir.join(files::MAP_KEY))?;
        let trusted = map_key.public();
        let (parameters, params) = read_signed(&network_dir.join(files::PARAMETERS), |s| {
            verify_parameters(s, &trusted).map_err(|e| format!("not network parameters signed by the network-map key: {e}"))
        })?;
        let rev_path = network_dir.join(files::REVOCATIONS);
        let fp = std::fs::metadata(&rev_path).map(|m| fingerprint(&m)).ok();
        let (revocations, list) = read_revocations(&rev_path, &trusted)?;
        let nodes = load_node_infos(network_dir, &root, clock())?;
        let by_hash = nodes.iter().map(|(name, held)| (held.doc.hash, name.clone())).collect();
        info!(dir = %network_dir.display(), nodes = nodes.len(), "network map loaded");
        let inner = Inner {
            parameters: Doc::new(&parameters),
            params,
            revocations: Revocations { doc: Doc::new(&revocations), list, fingerprint: fp },
            nodes,
            by_hash,
            map: None,
        };
        Ok(MapServer { shared: Shared { dir: network_dir.to_path_buf(), root, map_key, clock, inner: Mutex::new(inner) } })
    }

    /// The HTTP routes, for embedding the map in another server.
    pub fn into_router(self) -> Router {
        Router::new()
            .route("/network-map", get(get_map))
            .route("/network-map/publish", post(publish))
            .route("/network-map/node-info/{hash}", get(get_node_info))
            .route("/network-map/network-parameters/{hash}", get(get_parameters))
            .route("/network-map/revocations/{hash}", get(get_revocations))
            .fallback(|uri: Uri| async move { (StatusCode::NOT_FOUND, format!("no such network map endpoint: {uri}")) })
            .with_state(Arc::new(self.shared))
    }

    /// Serves the map on `listener` until `shutdown` completes, then finishes the requests in
    /// progress and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NetmapError> {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "an unknown address".into());
        info!(%addr, "network map serving");
        axum::serve(listener, self.into_router()).with_graceful_shutdown(shutdown).await.map_err(|error| NetmapError::Serve { addr, error })
    }
}

impl Shared {
    /// Re-reads `revocations.signed` if it changed on disk. A file that does not verify is
    /// ignored (with a warning) and the list in force kept.
    fn refresh_revocations(&self, inner: &mut Inner) {
        let path = self.dir.join(files::REVOCATIONS);
        let fp = match std::fs::metadata(&path) {
            Ok(meta) => fingerprint(&meta),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot check the revocation list; keeping the one in force");
                return;
            }
        };
        if inner.revocations.fingerprint == Some(fp) {
            return;
        }
        inner.revocations.fingerprint = Some(fp);
        match read_revocations(&path, &self.map_key.public()) {
            Ok((signed, list)) => {
                let doc = Doc::new(&signed);
                if doc.hash != inner.revocations.doc.hash {
                    info!(epoch = list.epoch, names = list.names.len(), keys = list.keys.len(), "revocation list changed");
                    inner.revocations.doc = doc;
                    inner.revocations.list = list;
                    inner.map = None;
                }
            }
            Err(e) => warn!(error = %e, "ignoring the changed revocation list; keeping the one in force"),
        }
    }

    async fn publish(&self, body: &[u8]) -> Result<String, Refusal> {
        let signed: Signed = encoding::decode_bounded(body, MAX_PUBLISH_BYTES)
            .map_err(|e| bad(format!("the body is not a BCS-encoded signed node info: {e}")))?;
        if signed.kind != kinds::NODE_INFO {
            return Err(bad(format!("expected a signed {}, got a signed {:?}", kinds::NODE_INFO, signed.kind)));
        }
        let mut inner = self.inner.lock().await;
        self.refresh_revocations(&mut inner);
        let info = NodeInfo::verify(&signed, &self.root, &inner.revocations.list, (self.clock)())
            .map_err(|e| bad(format!("node info refused: {e}")))?;
        let name = info.legal_identity.name.clone();
        let minimum = inner.params.minimum_platform_version;
        if info.platform_version < minimum {
            return Err(bad(format!(
                "node info refused: {name} runs platform version {}, but this network requires at least {minimum}",
                info.platform_version
            )));
        }
        let doc = Doc::new(&signed);
        let previous = inner.nodes.get(&name).map(|held| (held.doc.hash, held.serial));
        if let Some((hash, serial)) = previous {
            if hash == doc.hash {
                return Ok(format!("node info {} for {name} is already published", doc.hash));
            }
            if info.serial <= serial {
                return Err(bad(format!(
                    "node info refused: serial {} for {name} is not higher than the serial {serial} already published; \
                     increment the serial when republishing",
                    info.serial
                )));
            }
        }
        let path = node_info_path(&self.dir, &doc.hash);
        let bytes = doc.bytes.clone();
        let written = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| NetmapError::io(dir, e))?;
            }
            write_atomic(&path, &bytes)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot store a node info");
                return Err((StatusCode::INTERNAL_SERVER_ERROR, format!("the network map cannot store the node info: {e}")));
            }
            Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, format!("the network map cannot store the node info: {e}"))),
        }
        if let Some((old, _)) = previous {
            inner.by_hash.remove(&old);
            let old_path = node_info_path(&self.dir, &old);
            if let Err(e) = std::fs::remove_file(&old_path) {
                warn!(file = %old_path.display(), error = %e, "cannot remove a superseded node info");
            }
        }
        let hash = doc.hash;
        inner.by_hash.insert(hash, name.clone());
        inner.nodes.insert(name.clone(), HeldNode { doc, serial: info.serial });
        inner.map = None;
        info!(%name, %hash, serial = info.serial, "node info published");
        Ok(format!("accepted node info {hash} for {name} (serial {})", info.serial))
    }

    async fn current_map(&self) -> Doc {
        let mut inner = self.inner.lock().await;
        self.refresh_revocations(&mut inner);
        if let Some(doc) = &inner.map {
            return doc.clone();
        }
        let map = NetworkMap {
            node_infos: inner.by_hash.keys().copied().collect(),
            parameters: inner.parameters.hash,
            revocations: inner.revocations.doc.hash,
        };
        let doc = Doc::new(&Signed::sign(NETWORK_MAP_KIND, &map, &self.map_key));
        debug!(hash = %doc.hash, nodes = map.node_infos.len(), "network map document rebuilt");
        inner.map = Some(doc.clone());
        doc
    }
}

fn text(status: StatusCode, message: String) -> Response {
    let mut response = (status, message).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Serves a signed document with its ETag (the quoted hash of the body), or 304 if the client
/// already holds it.
fn serve_doc(doc: &Doc, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", doc.hash);
    let mut response = if etag_matches(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(doc.bytes.clone()));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        r
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

async fn publish(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, format!("the node info is larger than the {MAX_PUBLISH_BYTES} bytes accepted"));
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_PUBLISH_BYTES as u64) {
        return too_large();
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_PUBLISH_BYTES).await {
        Ok(body) => body,
        Err(e) if is_length_limit(&e) => return too_large(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")),
    };
    match shared.publish(&body).await {
        Ok(message) => text(StatusCode::OK, message),
        Err((status, message)) => {
            info!(%status, %message, "publish refused");
            text(status, message)
        }
    }
}

/// Whether reading a body failed because it exceeded its length limit.
fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

async fn get_map(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    serve_doc(&shared.current_map().await, &headers)
}

fn parse_hash(what: &str, s: &str) -> Result<SecureHash, String> {
    s.parse().map_err(|_| format!("malformed {what} hash {s:?}: expected 64 hex digits"))
}

async fn get_node_info(State(shared): State<Arc<Shared>>, UrlPath(hash): UrlPath<String>, headers: HeaderMap) -> Response {
    let hash = match parse_hash("node info", &hash) {
        Ok(h) => h,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let inner = shared.inner.lock().await;
    match inner.by_hash.get(&hash).and_then(|name| inner.nodes.get(name)) {
        Some(held) => serve_doc(&held.doc, &headers),
        None => text(StatusCode::NOT_FOUND, format!("no node info with hash {hash} is on this network map")),
    }
}

async fn get_parameters(State(shared): State<Arc<Shared>>, UrlPath(hash): UrlPath<String>, headers: HeaderMap) -> Response {
    let hash = match parse_hash("network parameters", &hash) {
        Ok(h) => h,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let inner = shared.inner.lock().await;
    if inner.parameters.hash == hash {
        serve_doc(&inner.parameters, &headers)
    } else {
        text(
            StatusCode::NOT_FOUND,
            format!("no network parameters with hash {hash}; the parameters in force are {}", inner.parameters.hash),
        )
    }
}

async fn get_revocations(State(shared): State<Arc<Shared>>, UrlPath(hash): UrlPath<String>, headers: HeaderMap) -> Response {
    let hash = match parse_hash("revocation list", &hash) {
        Ok(h) => h,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let mut inner = shared.inner.lock().await;
    shared.refresh_revocations(&mut inner);
    if inner.revocations.doc.hash == hash {
        serve_doc(&inner.revocations.doc, &headers)
    } else {
        text(StatusCode::NOT_FOUND, format!("no revocation list with hash {hash}; the list in force is {}", inner.revocations.doc.hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_is_read_from_network_toml() {
        let dir = std::env::temp_dir().join(format!("treaty-netmap-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join(files::CONFIG);
        std::fs::write(&config, "# map\nlisten = \"127.0.0.1:20000\"\nnodes = [\"a\"]\n").unwrap();
        assert_eq!(listen_address(&config).unwrap(), "127.0.0.1:20000");
        std::fs::write(&config, "nodes = []\n").unwrap();
        let e = listen_address(&config).unwrap_err();
        assert!(e.to_string().contains("network.toml") && e.to_string().contains("listen"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"A\", W/\"B\""));
        assert!(etag_matches(&h, "\"A\"") && etag_matches(&h, "\"B\"") && !etag_matches(&h, "\"C\""));
        assert!(!etag_matches(&HeaderMap::new(), "\"A\""));
    }
}
