//! What a node runs: keeps a verified view of the network from the map, and survives the map
//! being down.
//!
//! [`MapFollower::start`] loads the node's cached [`MapSnapshot`], re-verifies it and publishes
//! it as the first [`NetworkView`] (so the node works while the map is down); with no usable
//! cache it fetches from the map, retrying with back-off until it succeeds. It then polls the
//! map with a conditional GET: an unchanged map costs one 304; a changed one is checked against
//! the trusted network-map key and only the documents the node does not hold are fetched. Every
//! node info is verified against the root certificate and the map's revocation list; invalid
//! and revoked ones are left out of the view. Failures back off exponentially with jitter and
//! keep the last view.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use treaty_core::{NetworkParameters, PublicKey, SecureHash, X500Name};
use treaty_net::map::{MapCache, MapSnapshot, NodeInfo, NodeInfoError, kinds, verify_parameters};
use treaty_net::pki::{PkiError, RevocationList};
use treaty_net::signed::Signed;

use crate::client::{Fetched, MapClient};
use crate::{Clock, NETWORK_MAP_KIND, NetmapError, NetworkMap, signed_hash, system_clock};

/// Exponential back-off with jitter: retry `n` (from 0) waits a random time between half and
/// all of `initial · 2ⁿ`, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s doubling to 60 s.
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// Back-off from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max }
    }

    /// The delay before retry `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self.initial.checked_mul(1u32 << attempt.min(30)).unwrap_or(self.max).min(self.max);
        full / 2 + full.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// A node's verified view of the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkView {
    /// The network parameters in force.
    pub parameters: NetworkParameters,
    /// [`NetworkParameters::hash`]: the hash transactions name the parameters by.
    pub parameters_hash: SecureHash,
    /// The hash the map serves the signed parameters under ([`signed_hash`]).
    pub parameters_document: SecureHash,
    /// The revocation list in force.
    pub revocations: RevocationList,
    /// The nodes on the network whose node infos verify, by legal name (revoked ones and ones
    /// below the minimum platform version excluded).
    pub nodes: BTreeMap<X500Name, NodeInfo>,
    /// Whether this view comes from the node's cache and the map has not confirmed it since.
    pub from_cache: bool,
    /// When the map documents behind it were fetched (seconds since the Unix epoch).
    pub fetched_at_secs: u64,
}

impl NetworkView {
    /// The node info of `name`, if it is on the network.
    pub fn node(&self, name: &X500Name) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    /// The addresses of `name`, in order of preference, if it is on the network.
    pub fn addresses(&self, name: &X500Name) -> Option<&[String]> {
        self.nodes.get(name).map(|n| n.addresses.as_slice())
    }

    /// Whether `name` is revoked on this network.
    pub fn is_revoked(&self, name: &X500Name) -> bool {
        self.revocations.names.contains(name)
    }
}

/// What the follower holds: the documents of the last map, as signed.
#[derive(Clone)]
struct Held {
    etag: Option<String>,
    parameters: Signed,
    parameters_document: SecureHash,
    params: NetworkParameters,
    revocations: Signed,
    revocations_document: SecureHash,
    revoked: RevocationList,
    node_infos: BTreeMap<SecureHash, Signed>,
    fetched_at_secs: u64,
}

impl Held {
    fn snapshot(&self) -> MapSnapshot {
        MapSnapshot {
            parameters: self.parameters.clone(),
            revocations: self.revocations.clone(),
            node_infos: self.node_infos.values().cloned().collect(),
            etag: self.etag.clone(),
            fetched_at_secs: self.fetched_at_secs,
        }
    }

    fn view(&self, root: &[u8], now: u64, from_cache: bool) -> NetworkView {
        let mut nodes: BTreeMap<X500Name, NodeInfo> = BTreeMap::new();
        for (hash, signed) in &self.node_infos {
            match NodeInfo::verify(signed, root, &self.revoked, now) {
                Ok(info) if info.platform_version < self.params.minimum_platform_version => {
                    debug!(node = %info.legal_identity.name, version = info.platform_version, "leaving out a node below the minimum platform version");
                }
                Ok(info) => {
                    let name = info.legal_identity.name.clone();
                    if nodes.get(&name).is_none_or(|held| held.serial < info.serial) {
                        nodes.insert(name, info);
                    }
                }
                Err(NodeInfoError::Certificate(PkiError::Revoked(name))) => debug!(%hash, %name, "leaving out a revoked node"),
                Err(e) => warn!(%hash, error = %e, "leaving out a node info that does not verify"),
            }
        }
        NetworkView {
            parameters: self.params.clone(),
            parameters_hash: self.params.hash(),
            parameters_document: self.parameters_document,
            revocations: self.revoked.clone(),
            nodes,
            from_cache,
            fetched_at_secs: self.fetched_at_secs,
        }
    }
}

/// Follows one network map for a node. Build it, then [`MapFollower::start`] it.
pub struct MapFollower<C: MapCache> {
    client: MapClient,
    trusted_key: PublicKey,
    root: Vec<u8>,
    cache: Arc<C>,
    poll_interval: Duration,
    backoff: Backoff,
    clock: Clock,
}

impl<C: MapCache> MapFollower<C> {
    /// A follower of the map `client` talks to, trusting documents signed by `trusted_key`
    /// (the network-map key) and node infos chaining to `root_der`, keeping its snapshot in
    /// `cache`, polling every `poll_interval`. Back-off defaults to [`Backoff::default`], the
    /// clock to the system clock.
    pub fn new(client: MapClient, trusted_key: PublicKey, root_der: Vec<u8>, cache: Arc<C>, poll_interval: Duration) -> MapFollower<C> {
        MapFollower { client, trusted_key, root: root_der, cache, poll_interval, backoff: Backoff::default(), clock: system_clock() }
    }

    /// The same follower with another back-off after failures.
    pub fn with_backoff(mut self, backoff: Backoff) -> MapFollower<C> {
        self.backoff = backoff;
        self
    }

    /// The same follower with another clock (certificate validity is checked by it).
    pub fn with_clock(mut self, clock: Clock) -> MapFollower<C> {
        self.clock = clock;
        self
    }

    /// Produces the first view — from the cache if it holds a snapshot that still verifies,
    /// otherwise from the map (retrying with back-off until the map answers; wrap this in a
    /// timeout to give up) — then spawns the polling task. The task ends when every receiver
    /// is dropped, or when aborted through the handle.
    pub async fn start(self) -> Result<(watch::Receiver<Arc<NetworkView>>, JoinHandle<()>), NetmapError> {
        let mut from_cache = None;
        if let Some(snapshot) = self.cache.load().await? {
            match self.held_from_snapshot(snapshot) {
                Ok(held) => from_cache = Some(held),
                Err(e) => warn!(error = %e, "ignoring the cached network map: it no longer verifies"),
            }
        }
        let (held, view, first_delay) = match from_cache {
            Some(held) => {
                let view = held.view(&self.root, (self.clock)(), true);
                info!(nodes = view.nodes.len(), "network view loaded from the cache");
                (held, view, Duration::ZERO)
            }
            None => {
                let mut attempt = 0u32;
                loop {
                    match self.poll(None).await {
                        Ok(Some(held)) => {
                            let held = self.save(held).await;
                            let view = held.view(&self.root, (self.clock)(), false);
                            info!(nodes = view.nodes.len(), "network view fetched from the map");
                            break (held, view, self.poll_interval);
                        }
                        Ok(None) => warn!("the network map answered 'not modified' to an unconditional request"),
                        Err(e) => warn!(error = %e, "cannot fetch the network map; retrying"),
                    }
                    tokio::time::sleep(self.backoff.delay(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        let (tx, rx) = watch::channel(Arc::new(view));
        let task = tokio::spawn(self.run(held, tx, first_delay));
        Ok((rx, task))
    }

    async fn run(self, mut held: Held, tx: watch::Sender<Arc<NetworkView>>, first_delay: Duration) {
        let mut delay = first_delay;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match self.poll(Some(&held)).await {
                Ok(None) => {
                    if tx.borrow().from_cache {
                        // The map confirms the cached view.
                        let mut view = (**tx.borrow()).clone();
                        view.from_cache = false;
                        view.fetched_at_secs = (self.clock)();
                        held.fetched_at_secs = view.fetched_at_secs;
                        tx.send_replace(Arc::new(view));
                    }
                    failures = 0;
                }
                Ok(Some(new)) => {
                    held = self.save(new).await;
                    let view = held.view(&self.root, (self.clock)(), false);
                    info!(nodes = view.nodes.len(), revocation_epoch = view.revocations.epoch, "network view updated");
                    tx.send_replace(Arc::new(view));
                    failures = 0;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(error = %e, failures, "cannot poll the network map; keeping the last view");
                }
            }
            delay = if failures == 0 { self.poll_interval } else { self.backoff.delay(failures - 1) };
        }
    }

    /// Saves a snapshot; on failure forgets the entity tag so the next poll fetches (and saves)
    /// again.
    async fn save(&self, mut held: Held) -> Held {
        if let Err(e) = self.cache.save(&held.snapshot()).await {
            warn!(error = %e, "cannot save the network map snapshot; will retry on the next poll");
            held.etag = None;
        }
        held
    }

    fn held_from_snapshot(&self, snapshot: MapSnapshot) -> Result<Held, NetmapError> {
        let invalid = |what: &'static str, reason: String| NetmapError::Invalid { url: "cache".into(), what, reason };
        let params =
            verify_parameters(&snapshot.parameters, &self.trusted_key).map_err(|e| invalid("network parameters", e.to_string()))?;
        let revoked: RevocationList = snapshot
            .revocations
            .verify(kinds::REVOCATION_LIST, &self.trusted_key)
            .map_err(|e| invalid("revocation list", e.to_string()))?;
        Ok(Held {
            etag: snapshot.etag,
            parameters_document: signed_hash(&snapshot.parameters),
            parameters: snapshot.parameters,
            params,
            revocations_document: signed_hash(&snapshot.revocations),
            revocations: snapshot.revocations,
            revoked,
            node_infos: snapshot.node_infos.into_iter().map(|s| (signed_hash(&s), s)).collect(),
            fetched_at_secs: snapshot.fetched_at_secs,
        })
    }

    /// One poll: `None` if the map has not changed since `held`.
    async fn poll(&self, held: Option<&Held>) -> Result<Option<Held>, NetmapError> {
        let invalid = |what: &'static str, reason: String| NetmapError::Invalid { url: self.client.url().to_string(), what, reason };
        let (signed, etag) = match self.client.fetch_map(held.and_then(|h| h.etag.as_deref())).await? {
            Fetched::NotModified => return Ok(None),
            Fetched::Map { signed, etag } => (signed, etag),
        };
        let map: NetworkMap = signed.verify(NETWORK_MAP_KIND, &self.trusted_key).map_err(|e| invalid("network map", e.to_string()))?;

        let (parameters, params) = match held.filter(|h| h.parameters_document == map.parameters) {
            Some(h) => (h.parameters.clone(), h.params.clone()),
            None => {
                let signed = self.client.parameters(&map.parameters).await?;
                let params = verify_parameters(&signed, &self.trusted_key).map_err(|e| invalid("network parameters", e.to_string()))?;
                if let Some(h) = held
                    && params.epoch < h.params.epoch
                {
                    return Err(invalid(
                        "network parameters",
                        format!("epoch {} is older than the epoch {} held", params.epoch, h.params.epoch),
                    ));
                }
                (signed, params)
            }
        };
        let (revocations, revoked) = match held.filter(|h| h.revocations_document == map.revocations) {
            Some(h) => (h.revocations.clone(), h.revoked.clone()),
            None => {
                let signed = self.client.revocations(&map.revocations).await?;
                let revoked: RevocationList =
                    signed.verify(kinds::REVOCATION_LIST, &self.trusted_key).map_err(|e| invalid("revocation list", e.to_string()))?;
                if let Some(h) = held
                    && revoked.epoch < h.revoked.epoch
                {
                    return Err(invalid(
                        "revocation list",
                        format!("epoch {} is older than the epoch {} held", revoked.epoch, h.revoked.epoch),
                    ));
                }
                (signed, revoked)
            }
        };
        let mut node_infos = BTreeMap::new();
        for hash in &map.node_infos {
            if let Some(signed) = held.and_then(|h| h.node_infos.get(hash)) {
                node_infos.insert(*hash, signed.clone());
                continue;
            }
            match self.client.node_info(hash).await {
                Ok(signed) => {
                    node_infos.insert(*hash, signed);
                }
                // Superseded since the map was fetched: the next map lists its replacement.
                Err(NetmapError::NotFound { .. }) => debug!(%hash, "a node info on the map is gone; skipping it"),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(Held {
            etag: Some(etag),
            parameters_document: map.parameters,
            parameters,
            params,
            revocations_document: map.revocations,
            revocations,
            revoked,
            node_infos,
            fetched_at_secs: (self.clock)(),
        }))
    }
}

/// Publishes `signed` in the background, retrying with [`Backoff::default`] while the map is
/// unreachable or failing; the task ends with `Ok` once the map accepts it, or with the map's
/// refusal.
pub fn publish_until_accepted(client: MapClient, signed: Signed) -> JoinHandle<Result<(), NetmapError>> {
    publish_until_accepted_with(client, signed, Backoff::default())
}

/// [`publish_until_accepted`] with another back-off.
pub fn publish_until_accepted_with(client: MapClient, signed: Signed, backoff: Backoff) -> JoinHandle<Result<(), NetmapError>> {
    tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            match client.publish(&signed).await {
                Ok(()) => {
                    info!(url = client.url(), "node info published");
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.delay(attempt);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot publish the node info; retrying");
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    warn!(error = %e, "the network map refused the node info");
                    return Err(e);
                }
            }
        }
    })
}
