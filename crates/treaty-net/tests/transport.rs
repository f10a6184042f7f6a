//! Mutual TLS between two endpoints over real TCP on 127.0.0.1: who is let in, who is refused,
//! and frames over the size limit.

mod common;

use std::sync::{Arc, RwLock};

use common::*;
use tokio::net::TcpListener;
use treaty_net::pki::RevocationList;
use treaty_net::transport::{self, TlsIdentity, TransportError};

fn identity(net: &Network, n: Node, revoked: RevocationList) -> TlsIdentity {
    TlsIdentity {
        chain: vec![n.tls.cert.clone(), n.node_ca.cert.clone(), net.doorman.cert.clone()],
        key: Arc::new(n.tls.key),
        root: Arc::new(net.root.cert.clone()),
        revoked: Arc::new(RwLock::new(revoked)),
    }
}

/// Serves one connection: reads a frame (limit `limit`), answers "hello <peer>". Returns the
/// peer's name or the reason the connection failed.
async fn serve_once(server: TlsIdentity, limit: u64) -> (String, tokio::task::JoinHandle<Result<String, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let acceptor = transport::acceptor(&server).unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let (mut tls, peer) = transport::accept(&acceptor, tcp).await.map_err(|e| e.to_string())?;
        let msg = transport::read_frame(&mut tls, limit).await.map_err(|e| e.to_string())?;
        assert_eq!(msg, b"ping");
        transport::write_frame(&mut tls, format!("hello {peer}").as_bytes()).await.map_err(|e| e.to_string())?;
        Ok(peer.to_string())
    });
    (addr, task)
}

async fn ping(addr: &str, client: &TlsIdentity, expected: &str) -> Result<String, String> {
    let mut tls = transport::connect(addr, client, &name(expected)).await.map_err(|e| e.to_string())?;
    transport::write_frame(&mut tls, b"ping").await.map_err(|e| e.to_string())?;
    let reply = transport::read_frame(&mut tls, 1024).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8(reply).unwrap())
}

#[tokio::test]
async fn members_connect_and_learn_each_others_names() {
    let net = network(10);
    let alice = identity(&net, node(&net, "O=Alice,L=London,C=GB", 20), none());
    let bob = identity(&net, node(&net, "O=Bob,L=Paris,C=FR", 30), none());
    let (addr, server) = serve_once(bob, 1024).await;
    assert_eq!(ping(&addr, &alice, "O=Bob,L=Paris,C=FR").await.unwrap(), "hello O=Alice, L=London, C=GB");
    assert_eq!(server.await.unwrap().unwrap(), "O=Alice, L=London, C=GB");
}

#[tokio::test]
async fn a_server_that_is_not_the_expected_party_is_refused() {
    let net = network(10);
    let alice = identity(&net, node(&net, "O=Alice,L=London,C=GB", 20), none());
    let bob = identity(&net, node(&net, "O=Bob,L=Paris,C=FR", 30), none());
    let (addr, server) = serve_once(bob, 1024).await;
    let err = ping(&addr, &alice, "O=Carol,L=Berlin,C=DE").await.unwrap_err();
    assert!(err.contains("is for O=Carol, L=Berlin, C=DE"), "{err}");
    assert!(server.await.unwrap().is_err(), "the server sees the handshake fail too");
}

#[tokio::test]
async fn another_networks_nodes_are_refused_in_both_directions() {
    let ours = network(10);
    let theirs = network(50);
    let alice = identity(&ours, node(&ours, "O=Alice,L=London,C=GB", 20), none());
    // An intruder with a certificate from another network's CA, who knows our root.
    let mut mallory_as_alice = identity(&theirs, node(&theirs, "O=Alice,L=London,C=GB", 60), none());
    mallory_as_alice.root = Arc::new(ours.root.cert.clone());
    // We connect to their server: our client refuses it.
    let (addr, server) = serve_once(identity(&theirs, node(&theirs, "O=Bob,L=Paris,C=FR", 61), none()), 1024).await;
    let err = ping(&addr, &alice, "O=Bob,L=Paris,C=FR").await.unwrap_err();
    assert!(err.contains("not trusted by this network"), "{err}");
    let _ = server.await;
    // Their client connects to our server: our server refuses it.
    let (addr, server) = serve_once(identity(&ours, node(&ours, "O=Bob,L=Paris,C=FR", 30), none()), 1024).await;
    assert!(ping(&addr, &mallory_as_alice, "O=Bob,L=Paris,C=FR").await.is_err());
    let err = server.await.unwrap().unwrap_err();
    assert!(err.contains("not trusted by this network"), "{err}");
}

#[tokio::test]
async fn a_revoked_node_is_refused() {
    let net = network(10);
    let alice = identity(&net, node(&net, "O=Alice,L=London,C=GB", 20), none());
    let mut revoked = none();
    revoked.names.insert(name("O=Alice,L=London,C=GB"));
    let bob = identity(&net, node(&net, "O=Bob,L=Paris,C=FR", 30), revoked);
    let (addr, server) = serve_once(bob, 1024).await;
    assert!(ping(&addr, &alice, "O=Bob,L=Paris,C=FR").await.is_err());
    let err = server.await.unwrap().unwrap_err();
    assert!(err.contains("O=Alice, L=London, C=GB is revoked"), "{err}");
}

#[tokio::test]
async fn an_oversized_frame_is_refused_and_others_still_get_through() {
    let net = network(10);
    let alice = identity(&net, node(&net, "O=Alice,L=London,C=GB", 20), none());
    let bob_node = node(&net, "O=Bob,L=Paris,C=FR", 30);
    let bob = identity(&net, bob_node, none());
    // The server accepts at most 2 bytes per frame; "ping" is 4.
    let (addr, server) = serve_once(bob.clone(), 2).await;
    assert!(ping(&addr, &alice, "O=Bob,L=Paris,C=FR").await.is_err());
    assert_eq!(server.await.unwrap().unwrap_err(), TransportError::FrameTooLarge { size: 4, limit: 2 }.to_string());
    // The next connection with normal frames is served.
    let (addr, server) = serve_once(bob, 1024).await;
    ping(&addr, &alice, "O=Bob,L=Paris,C=FR").await.unwrap();
    server.await.unwrap().unwrap();
}
