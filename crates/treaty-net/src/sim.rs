//! An in-memory network with injectable latency, loss and partitions (white paper: "for
//! debugging and teaching"). Nodes listen on `sim:` addresses; links carry whole frames with a
//! configurable delay, drop frames at a configurable rate (a lost frame behaves like a lost
//! acknowledgement or a dead connection: the sender times out and retries), and refuse or
//! silently drop traffic between partitioned nodes.
//!
//! For unit tests and simulation only: what nodes run is [`crate::messaging::TlsConnector`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use treaty_core::X500Name;

use crate::messaging::{Connector, Link};
use crate::transport::TransportError;

/// Fault settings, changeable while the network runs.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Added to every frame's delivery.
    pub latency: Duration,
    /// Extra random delay, uniformly up to this (order within a link is kept).
    pub jitter: Duration,
    /// Probability in [0, 1] that a frame is lost.
    pub loss: f64,
}

#[derive(Default)]
struct State {
    faults: Faults,
    listeners: HashMap<String, (X500Name, mpsc::UnboundedSender<(SimLink, X500Name)>)>,
    partitions: HashSet<(X500Name, X500Name)>,
    frames_lost: u64,
}

/// The simulated network.
#[derive(Clone, Default)]
pub struct SimNetwork {
    state: Arc<Mutex<State>>,
}

fn gone() -> TransportError {
    TransportError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "simulated link closed"))
}

impl SimNetwork {
    /// A network with no faults.
    pub fn new() -> SimNetwork {
        SimNetwork::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        self.with(|s| s.faults = faults);
    }

    /// Cuts `a` and `b` apart: new links between them are refused, frames in flight are lost.
    pub fn partition(&self, a: &X500Name, b: &X500Name) {
        self.with(|s| {
            s.partitions.insert((a.clone(), b.clone()));
            s.partitions.insert((b.clone(), a.clone()));
        });
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.with(|s| s.partitions.clear());
    }

    /// Frames lost so far (to loss or partitions).
    pub fn frames_lost(&self) -> u64 {
        self.with(|s| s.frames_lost)
    }

    /// Starts listening as `name` at `address` (e.g. `sim:alice`); links arrive on the
    /// returned channel with the connecting peer's name. Dropping the receiver stops listening.
    pub fn listen(&self, address: &str, name: &X500Name) -> mpsc::UnboundedReceiver<(SimLink, X500Name)> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.with(|s| s.listeners.insert(address.to_string(), (name.clone(), tx)));
        rx
    }

    /// Stops listening at `address` (a node going down).
    pub fn unlisten(&self, address: &str) {
        self.with(|s| s.listeners.remove(address));
    }

    /// A connector for links opened by `me`.
    pub fn connector(&self, me: &X500Name) -> SimConnector {
        SimConnector { net: self.clone(), me: me.clone() }
    }

    fn pipe(&self, from: &X500Name, to: &X500Name) -> (mpsc::UnboundedSender<Vec<u8>>, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let net = self.clone();
        let (from, to) = (from.clone(), to.clone());
        // The delivery task keeps frames in order: each leaves no earlier than the one before.
        tokio::spawn(async move {
            let mut not_before = Instant::now();
            while let Some(frame) = rx.recv().await {
                let (faults, cut) = net.with(|s| (s.faults.clone(), s.partitions.contains(&(from.clone(), to.clone()))));
                let lost = cut || (faults.loss > 0.0 && rand::rng().random_bool(faults.loss.min(1.0)));
                if lost {
                    net.with(|s| s.frames_lost += 1);
                    continue;
                }
                let jitter = if faults.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_micros(rand::rng().random_range(0..=faults.jitter.as_micros() as u64))
                };
                let at = (Instant::now() + faults.latency + jitter).max(not_before);
                not_before = at;
                tokio::time::sleep_until(at).await;
                if out_tx.send(frame).is_err() {
                    return;
                }
            }
        });
        (tx, out_rx)
    }
}

/// One end of a simulated link.
pub struct SimLink {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Link for SimLink {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        self.tx.send(frame).map_err(|_| gone())
    }
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        self.rx.recv().await.ok_or_else(gone)
    }
}

/// Opens simulated links.
pub struct SimConnector {
    net: SimNetwork,
    me: X500Name,
}

impl Connector for SimConnector {
    type Link = SimLink;

    async fn connect(&self, address: &str, expected: &X500Name) -> Result<SimLink, TransportError> {
        let refused = |why: &str| TransportError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why.to_string()));
        let (name, listener) = self
            .net
            .with(|s| s.listeners.get(address).map(|(n, l)| (n.clone(), l.clone())))
            .ok_or_else(|| refused("nothing listens there"))?;
        if &name != expected {
            return Err(refused(&format!("{address} is {name}, not {expected}")));
        }
        if self.net.with(|s| s.partitions.contains(&(self.me.clone(), name.clone()))) {
            return Err(refused("partitioned"));
        }
        let (to_server, from_client) = self.net.pipe(&self.me, &name);
        let (to_client, from_server) = self.net.pipe(&name, &self.me);
        listener.send((SimLink { tx: to_client, rx: from_client }, self.me.clone())).map_err(|_| refused("listener gone"))?;
        Ok(SimLink { tx: to_server, rx: from_server })
    }
}
