//! Shared fixtures: a network (root, doorman, map key) written in the bootstrap layout, nodes
//! with signed node infos, and a map server on 127.0.0.1.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use treaty_core::{KeyPair, NetworkParameters, Party, PublicKey, SignatureScheme, X500Name, encoding};
use treaty_net::keystore;
use treaty_net::map::{NodeInfo, kinds};
use treaty_net::pki::{self, CertRole, CertifiedKey, RevocationList, Validity};
use treaty_net::signed::Signed;
use treaty_netmap::{Clock, MapServer, NetmapError};

pub const NOW: u64 = 1_795_000_000; // 2026-11-18

pub fn clock() -> Clock {
    Arc::new(|| NOW)
}

pub fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed(SignatureScheme::Ed25519, [seed; 32]).unwrap()
}

pub fn name(s: &str) -> X500Name {
    s.parse().unwrap()
}

pub fn validity(years: i64) -> Validity {
    let now = NOW as i64;
    Validity { not_before: now - 86_400, not_after: now + years * 365 * 86_400 }
}

pub fn serial(n: u8) -> [u8; 16] {
    [n; 16]
}

pub struct Network {
    pub root: CertifiedKey,
    pub doorman: CertifiedKey,
    pub map_key: KeyPair,
}

pub fn network(seed: u8) -> Network {
    let v = validity(10);
    let root = pki::root_ca(name("O=Treaty Root,L=London,C=GB"), key(seed), v, serial(seed)).unwrap();
    let doorman = root.issue(name("O=Treaty Doorman,L=London,C=GB"), key(seed + 1), CertRole::DoormanCa, v, serial(seed + 1)).unwrap();
    Network { root, doorman, map_key: key(seed + 2) }
}

pub struct Node {
    pub name: X500Name,
    pub node_ca: CertifiedKey,
    pub identity: CertifiedKey,
}

pub fn node(net: &Network, legal: &str, seed: u8) -> Node {
    let v = validity(5);
    let node_ca = net.doorman.issue(name(legal), key(seed), CertRole::NodeCa, v, serial(seed)).unwrap();
    let identity = node_ca.issue(name(legal), key(seed + 1), CertRole::LegalIdentity, v, serial(seed + 1)).unwrap();
    Node { name: name(legal), node_ca, identity }
}

pub fn info(net: &Network, node: &Node, serial: u64, platform_version: u32) -> NodeInfo {
    NodeInfo {
        addresses: vec![format!("127.0.0.1:{}", 10_000 + serial), "10.0.0.1:10000".into()],
        platform_version,
        legal_identity: Party { name: node.name.clone(), owning_key: node.identity.key.public() },
        identity_chain: vec![node.identity.cert.clone(), node.node_ca.cert.clone(), net.doorman.cert.clone()],
        serial,
    }
}

pub fn signed_info(net: &Network, node: &Node, serial: u64) -> Signed {
    Signed::sign(kinds::NODE_INFO, &info(net, node, serial, 1), &node.identity.key)
}

/// Writes a network directory as `treaty network bootstrap` writes `DIR/network/`, in a
/// scratch directory of the test's own.
pub fn layout(test: &str, net: &Network, params: &NetworkParameters) -> treaty_testkit::Scratch {
    let dir = treaty_testkit::scratch!(&format!("netmap-{test}"));
    std::fs::write(dir.join("root.der"), &net.root.cert).unwrap();
    std::fs::write(dir.join("doorman.der"), &net.doorman.cert).unwrap();
    keystore::write_key(&dir.join("network-map.key"), &net.map_key).unwrap();
    let p = Signed::sign(kinds::NETWORK_PARAMETERS, params, &net.map_key);
    std::fs::write(dir.join("network-parameters.signed"), encoding::encode(&p)).unwrap();
    let r = Signed::sign(kinds::REVOCATION_LIST, &RevocationList::default(), &net.map_key);
    std::fs::write(dir.join("revocations.signed"), encoding::encode(&r)).unwrap();
    std::fs::write(dir.join("network.toml"), "# test\nlisten = \"127.0.0.1:0\"\nnodes = []\n").unwrap();
    dir
}

pub fn map_public(net: &Network) -> PublicKey {
    net.map_key.public()
}

pub struct Running {
    pub url: String,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NetmapError>>,
}

impl Running {
    /// Stops the server and waits until it has stopped listening.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

pub async fn start(dir: &Path) -> Running {
    start_on(dir, "127.0.0.1:0".parse().unwrap()).await
}

pub async fn start_on(dir: &Path, addr: SocketAddr) -> Running {
    let server = MapServer::load_with_clock(dir, clock()).unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    Running { url: format!("http://{addr}"), addr, stop: Some(tx), task }
}

/// A raw HTTP/1.1 exchange: returns the status and the body as text. The body is written
/// concurrently with reading the response (the server may answer before reading it all).
pub async fn raw(addr: SocketAddr, method: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
