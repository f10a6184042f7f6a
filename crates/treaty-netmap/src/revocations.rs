//! What a process that is not a node runs to refuse revoked members: a notary server or a Raft
//! replica follows the map ([`MapFollower`]) only for its revocation list, which its mutual-TLS
//! handshakes check ([`treaty_net::transport::TlsIdentity::revoked`]).
//!
//! The list survives restarts in a [`FileMapCache`], so a process restarted while the map is
//! down still refuses whom it refused before.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use treaty_core::{PublicKey, encoding};
use treaty_net::map::{MapCache, MapSnapshot};
use treaty_net::messaging::StoreError;
use treaty_net::pki::RevocationList;

use crate::{MapClient, MapFollower};

/// How long [`follow_revocations`] waits for a first list (from the cache or the map) before it
/// lets its caller serve with none.
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

/// A `[network_map]` section of a notary server's or replica's configuration file: the map to
/// take the revocation list from. The same keys as a node's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSection {
    /// The map's base URL (`http://…`; everything it serves is signed).
    pub url: String,
    /// The network-map key the map's documents must be signed by (`ed25519:<hex>`, as in a
    /// node's `node.toml`).
    pub trusted_key: String,
    /// Seconds between polls (default 30).
    #[serde(default)]
    pub poll_seconds: Option<u64>,
    /// Where the last map fetched is kept (default `network-map.snapshot` next to the
    /// configuration file).
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

impl MapSection {
    /// Checks the section; relative paths are taken from `base`. An error names the key.
    pub fn follower(&self, base: &Path, root_der: Vec<u8>) -> Result<MapFollower<FileMapCache>, String> {
        if !self.url.starts_with("http://") {
            return Err(format!("network_map.url {:?} must start with http:// (the map serves only signed data)", self.url));
        }
        let key: PublicKey = self.trusted_key.parse().map_err(|e| format!("network_map.trusted_key {:?}: {e}", self.trusted_key))?;
        let poll = match self.poll_seconds {
            Some(0) => return Err("network_map.poll_seconds must be at least 1".into()),
            Some(n) => Duration::from_secs(n),
            None => Duration::from_secs(30),
        };
        let client = MapClient::new(&self.url).map_err(|e| format!("network_map.url {:?}: {e}", self.url))?;
        let cache = self.cache.clone().unwrap_or_else(|| PathBuf::from("network-map.snapshot"));
        let cache = if cache.is_absolute() { cache } else { base.join(cache) };
        Ok(MapFollower::new(client, key, root_der, Arc::new(FileMapCache::new(cache)), poll))
    }
}

/// A [`MapCache`] in one file: the snapshot's BCS encoding, replaced atomically (written to a
/// temporary file, synced, renamed over the old one).
pub struct FileMapCache {
    path: PathBuf,
}

impl FileMapCache {
    /// A cache kept at `path`.
    pub fn new(path: PathBuf) -> FileMapCache {
        FileMapCache { path }
    }
}

impl MapCache for FileMapCache {
    async fn load(&self) -> Result<Option<MapSnapshot>, StoreError> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::read(path)
        })
        .await
        .map_err(|e| StoreError::permanent(format!("reading {}: {e}", path.display())))?;
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::permanent(format!("reading {}: {e}", path.display()))),
        };
        match encoding::decode::<MapSnapshot>(&bytes) {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(e) => {
                // Refetched from the map; the file is replaced at the next save.
                warn!("ignoring {}: not a network map snapshot ({e})", path.display());
                Ok(None)
            }
        }
    }

    async fn save(&self, snapshot: &MapSnapshot) -> Result<(), StoreError> {
        let path = self.path.clone();
        let bytes = encoding::encode(snapshot);
        tokio::task::spawn_blocking(move || {
            let mut temp = path.clone().into_os_string();
            temp.push(format!(".{}.tmp", std::process::id()));
            let temp = PathBuf::from(temp);
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = std::fs::File::create(&temp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                std::fs::rename(&temp, &path)
            };
            write().map_err(|e| StoreError::transient(format!("writing {}: {e}", path.display())))
        })
        .await
        .map_err(|e| StoreError::permanent(format!("writing the network map snapshot: {e}")))?
    }
}

/// Keeps `revoked` equal to the map's revocation list, from the first view `follower` produces
/// (its cache, else the map) on. Waits up to `first_wait` for that first view: a caller then
/// serves knowing whom to refuse, or, when neither the cache nor the map has answered by then
/// (logged), with the list `revoked` already held until the map answers.
pub async fn follow_revocations(
    follower: MapFollower<FileMapCache>,
    revoked: Arc<RwLock<RevocationList>>,
    first_wait: Duration,
) -> JoinHandle<()> {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (mut views, _poller) = match follower.start().await {
            Ok(started) => started,
            Err(e) => {
                warn!("cannot follow the network map's revocation list: {e}");
                return;
            }
        };
        let mut first = Some(first_tx);
        loop {
            let list = views.borrow_and_update().revocations.clone();
            let changed = {
                let mut held = revoked.write().unwrap_or_else(|p| p.into_inner());
                let changed = *held != list;
                *held = list;
                changed
            };
            if changed {
                let held = revoked.read().unwrap_or_else(|p| p.into_inner());
                info!(epoch = held.epoch, revoked = held.names.len(), "revocation list in force");
            }
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
            if views.changed().await.is_err() {
                return;
            }
        }
    });
    if tokio::time::timeout(first_wait, first_rx).await.is_err() {
        warn!("no revocation list yet (no cached map, and the network map has not answered): serving without one until it does");
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str, key: &str, poll: Option<u64>) -> MapSection {
        MapSection { url: url.into(), trusted_key: key.into(), poll_seconds: poll, cache: None }
    }

    #[test]
    fn a_bad_section_is_refused_naming_the_key() {
        let key = treaty_core::KeyPair::from_seed(treaty_core::SignatureScheme::Ed25519, [7; 32]).unwrap().public().to_string();
        let base = Path::new("/tmp");
        let err = |s: MapSection| s.follower(base, vec![]).err().unwrap_or_default();
        assert!(err(section("https://map", &key, None)).contains("network_map.url"));
        assert!(err(section("http://map", "ed25519:zz", None)).contains("network_map.trusted_key"));
        assert!(err(section("http://map", &key, Some(0))).contains("network_map.poll_seconds"));
        assert!(section("http://127.0.0.1:1", &key, Some(5)).follower(base, vec![]).is_ok());
    }

    #[tokio::test]
    async fn the_file_cache_keeps_a_snapshot_and_ignores_garbage() {
        let dir = std::env::temp_dir().join(format!("treaty-map-cache-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = FileMapCache::new(dir.join("network-map.snapshot"));
        assert_eq!(cache.load().await.unwrap(), None);
        let key = treaty_core::KeyPair::from_seed(treaty_core::SignatureScheme::Ed25519, [7; 32]).unwrap();
        let signed = treaty_net::signed::Signed::sign("revocation-list", &RevocationList::default(), &key);
        let snapshot =
            MapSnapshot { parameters: signed.clone(), revocations: signed, node_infos: vec![], etag: Some("e".into()), fetched_at_secs: 7 };
        cache.save(&snapshot).await.unwrap();
        assert_eq!(cache.load().await.unwrap(), Some(snapshot));
        std::fs::write(dir.join("network-map.snapshot"), b"not a snapshot").unwrap();
        assert_eq!(cache.load().await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
