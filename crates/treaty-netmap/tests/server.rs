//! The map server and client over real HTTP on 127.0.0.1.

mod common;

use common::*;
use treaty_core::{NetworkParameters, SecureHash, encoding};
use treaty_net::map::{NodeInfo, kinds};
use treaty_net::signed::Signed;
use treaty_netmap::server::MAX_PUBLISH_BYTES;
use treaty_netmap::{Fetched, MapClient, NETWORK_MAP_KIND, NetmapError, NetworkMap, revoke, signed_hash};

fn refused(e: NetmapError) -> (u16, String) {
    match e {
        NetmapError::Refused { status, message, .. } => (status, message),
        other => panic!("expected a refusal, got {other}"),
    }
}

async fn map_of(client: &MapClient, net: &Network) -> NetworkMap {
    match client.fetch_map(None).await.unwrap() {
        Fetched::Map { signed, .. } => signed.verify(NETWORK_MAP_KIND, &map_public(net)).unwrap(),
        Fetched::NotModified => panic!("unconditional fetch answered 304"),
    }
}

#[tokio::test]
async fn published_node_is_on_the_map_and_served_by_hash() {
    let net = network(1);
    let dir = layout("publish", &net, &NetworkParameters::default());
    let server = start(&dir).await;
    let client = MapClient::new(&server.url).unwrap();
    assert!(map_of(&client, &net).await.node_infos.is_empty());

    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let signed = signed_info(&net, &alice, 1);
    client.publish(&signed).await.unwrap();
    // Publishing the same bytes again is idempotent.
    client.publish(&signed).await.unwrap();

    let map = map_of(&client, &net).await;
    let hash = NodeInfo::hash(&signed);
    assert_eq!(hash, signed_hash(&signed));
    assert_eq!(map.node_infos, vec![hash]);
    assert_eq!(client.node_info(&hash).await.unwrap(), signed);
    let (status, _) = raw(server.addr, "GET", &format!("/network-map/node-info/{}", hash.to_hex().to_lowercase()), vec![]).await;
    assert_eq!(status, 200, "lower-case hashes are accepted");
    // Parameters and revocations by the hashes the map lists.
    let params = client.parameters(&map.parameters).await.unwrap();
    assert_eq!(params.verify::<NetworkParameters>(kinds::NETWORK_PARAMETERS, &map_public(&net)).unwrap(), NetworkParameters::default());
    client.revocations(&map.revocations).await.unwrap();
    // The node info survives on disk.
    assert!(dir.join("node-infos").join(format!("{hash}.signed")).exists());
    server.stop().await;
}

#[tokio::test]
async fn etag_gives_not_modified_until_the_map_changes() {
    let net = network(1);
    let dir = layout("etag", &net, &NetworkParameters::default());
    let server = start(&dir).await;
    let client = MapClient::new(&server.url).unwrap();
    let Fetched::Map { signed, etag } = client.fetch_map(None).await.unwrap() else { panic!("expected a map") };
    assert_eq!(etag, format!("\"{}\"", signed_hash(&signed)));
    assert_eq!(client.fetch_map(Some(&etag)).await.unwrap(), Fetched::NotModified);
    // A change gives a new map and tag.
    client.publish(&signed_info(&net, &node(&net, "O=Alice,L=London,C=GB", 20), 1)).await.unwrap();
    let Fetched::Map { etag: new_etag, .. } = client.fetch_map(Some(&etag)).await.unwrap() else { panic!("expected a new map") };
    assert_ne!(new_etag, etag);
    assert_eq!(client.fetch_map(Some(&new_etag)).await.unwrap(), Fetched::NotModified);
    server.stop().await;
}

#[tokio::test]
async fn bad_signatures_foreign_cas_old_platforms_and_revoked_names_are_refused() {
    let net = network(1);
    let params = NetworkParameters { minimum_platform_version: 2, ..Default::default() };
    let dir = layout("refusals", &net, &params);
    let server = start(&dir).await;
    let client = MapClient::new(&server.url).unwrap();
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let good = |serial| Signed::sign(kinds::NODE_INFO, &info(&net, &alice, serial, 2), &alice.identity.key);

    // Tampered signature.
    let mut tampered = good(1);
    tampered.signature[0] ^= 1;
    let (status, message) = refused(client.publish(&tampered).await.unwrap_err());
    assert_eq!(status, 400);
    assert!(message.contains("signature does not verify"), "{message}");

    // Signed by a key other than the certified identity.
    let wrong_key = Signed::sign(kinds::NODE_INFO, &info(&net, &alice, 1, 2), &key(99));
    let (_, message) = refused(client.publish(&wrong_key).await.unwrap_err());
    assert!(message.contains("signed by"), "{message}");

    // A node certified by another network's CA.
    let other = network(50);
    let mallory = node(&other, "O=Mallory,L=Paris,C=FR", 60);
    let foreign = Signed::sign(kinds::NODE_INFO, &info(&other, &mallory, 1, 2), &mallory.identity.key);
    let (status, message) = refused(client.publish(&foreign).await.unwrap_err());
    assert_eq!(status, 400);
    assert!(message.contains("not trusted by this network"), "{message}");

    // Below the minimum platform version.
    let old = Signed::sign(kinds::NODE_INFO, &info(&net, &alice, 1, 1), &alice.identity.key);
    let (_, message) = refused(client.publish(&old).await.unwrap_err());
    assert!(message.contains("platform version 1") && message.contains("at least 2"), "{message}");

    // Not a node info at all.
    let params_doc = Signed::sign(kinds::NETWORK_PARAMETERS, &params, &net.map_key);
    let (_, message) = refused(client.publish(&params_doc).await.unwrap_err());
    assert!(message.contains("expected a signed node-info"), "{message}");

    // Revoked while the map runs: picked up from revocations.signed.
    let list = revoke(&dir, &alice.name).unwrap();
    assert_eq!(list.epoch, 1);
    assert!(list.names.contains(&alice.name));
    let (status, message) = refused(client.publish(&good(1)).await.unwrap_err());
    assert_eq!(status, 400);
    assert!(message.contains("revoked"), "{message}");
    // Revoking twice changes nothing.
    assert_eq!(revoke(&dir, &alice.name).unwrap().epoch, 1);
    server.stop().await;
}

#[tokio::test]
async fn serials_must_increase() {
    let net = network(1);
    let dir = layout("serials", &net, &NetworkParameters::default());
    let server = start(&dir).await;
    let client = MapClient::new(&server.url).unwrap();
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    client.publish(&signed_info(&net, &alice, 5)).await.unwrap();
    for stale in [4, 5] {
        // Lower, or equal with different content (the address depends on the serial, so build
        // an equal-serial variant by hand).
        let mut i = info(&net, &alice, stale, 1);
        i.addresses.push("192.0.2.1:1".into());
        let (status, message) = refused(client.publish(&Signed::sign(kinds::NODE_INFO, &i, &alice.identity.key)).await.unwrap_err());
        assert_eq!(status, 400);
        assert!(message.contains(&format!("serial {stale}")) && message.contains("not higher than the serial 5"), "{message}");
    }
    // A higher serial replaces the old node info.
    let newer = signed_info(&net, &alice, 6);
    client.publish(&newer).await.unwrap();
    let Fetched::Map { signed, .. } = client.fetch_map(None).await.unwrap() else { panic!() };
    let map: NetworkMap = signed.verify(NETWORK_MAP_KIND, &map_public(&net)).unwrap();
    assert_eq!(map.node_infos, vec![signed_hash(&newer)]);
    assert_eq!(std::fs::read_dir(dir.join("node-infos")).unwrap().count(), 1, "the superseded file is removed");
    server.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_hashes_and_bodies() {
    let net = network(1);
    let dir = layout("lookups", &net, &NetworkParameters::default());
    let server = start(&dir).await;
    let client = MapClient::new(&server.url).unwrap();
    let unknown = SecureHash::sha256(b"nothing");
    for e in [client.node_info(&unknown).await, client.parameters(&unknown).await, client.revocations(&unknown).await] {
        let e = e.unwrap_err();
        assert!(matches!(e, NetmapError::NotFound { hash, .. } if hash == unknown), "{e}");
        assert!(e.to_string().contains("has no"), "{e}");
    }
    let (status, body) = raw(server.addr, "GET", &format!("/network-map/node-info/{unknown}"), vec![]).await;
    assert_eq!(status, 404);
    assert!(body.contains("no node info with hash"), "{body}");
    for path in ["/network-map/node-info/xyz", "/network-map/network-parameters/12", "/network-map/revocations/zz"] {
        let (status, body) = raw(server.addr, "GET", path, vec![]).await;
        assert_eq!(status, 400, "{path}");
        assert!(body.contains("malformed") && body.contains("64 hex digits"), "{body}");
    }
    let (status, body) = raw(server.addr, "POST", "/network-map/publish", b"garbage".to_vec()).await;
    assert_eq!(status, 400);
    assert!(body.contains("not a BCS-encoded signed node info"), "{body}");
    let (status, body) = raw(server.addr, "POST", "/network-map/publish", vec![0u8; MAX_PUBLISH_BYTES + 1]).await;
    assert_eq!(status, 413);
    assert!(body.contains("larger than"), "{body}");
    let (status, _) = raw(server.addr, "GET", "/elsewhere", vec![]).await;
    assert_eq!(status, 404);
    let (status, _) = raw(server.addr, "GET", "/network-map/publish", vec![]).await;
    assert_eq!(status, 405);
    // The client carries a 413 as a refusal.
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let mut big = signed_info(&net, &alice, 1);
    big.raw = vec![7; 100];
    big.signature = vec![0; MAX_PUBLISH_BYTES];
    let e = client.publish(&big).await.unwrap_err();
    assert!(matches!(&e, NetmapError::Refused { status: 413, .. }) || matches!(&e, NetmapError::Unreachable { .. }), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_map_keeps_its_node_infos() {
    let net = network(1);
    let dir = layout("restart", &net, &NetworkParameters::default());
    let server = start(&dir).await;
    let client = MapClient::new(&server.url).unwrap();
    let alice = signed_info(&net, &node(&net, "O=Alice,L=London,C=GB", 20), 1);
    let bob = signed_info(&net, &node(&net, "O=Bob,L=Paris,C=FR", 30), 3);
    client.publish(&alice).await.unwrap();
    client.publish(&bob).await.unwrap();
    let before = map_of(&client, &net).await;
    server.stop().await;
    assert!(client.fetch_map(None).await.unwrap_err().is_transient());

    let server = start(&dir).await;
    let client = MapClient::new(&server.url).unwrap();
    let after = map_of(&client, &net).await;
    assert_eq!(after, before);
    assert_eq!(after.node_infos.len(), 2);
    assert_eq!(client.node_info(&signed_hash(&bob)).await.unwrap(), bob);
    // The serial held survives too.
    let (_, message) = refused(client.publish(&signed_info(&net, &node(&net, "O=Bob,L=Paris,C=FR", 30), 2)).await.unwrap_err());
    assert!(message.contains("not higher"), "{message}");
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_map_is_reported_as_unreachable() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let client = MapClient::new(&format!("http://{addr}")).unwrap();
    let e = client.fetch_map(None).await.unwrap_err();
    assert!(matches!(e, NetmapError::Unreachable { .. }), "{e}");
    assert!(e.is_transient());
    assert!(e.to_string().contains("unreachable"), "{e}");

    // A server that accepts but never answers: the timeout applies.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            conns.push(s);
        }
    });
    let client = MapClient::new(&format!("http://{addr}")).unwrap().with_timeout(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let e = client.fetch_map(None).await.unwrap_err();
    assert!(matches!(e, NetmapError::Unreachable { .. }) && e.to_string().contains("no response within"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[tokio::test]
async fn loading_names_the_missing_or_bad_file() {
    let net = network(1);
    let dir = layout("load-errors", &net, &NetworkParameters::default());
    std::fs::write(dir.join("network-parameters.signed"), b"junk").unwrap();
    let e = treaty_netmap::MapServer::load(&dir).err().unwrap();
    assert!(e.to_string().contains("network-parameters.signed") && e.to_string().contains("malformed"), "{e}");
    // Parameters signed by another key.
    let p = Signed::sign(kinds::NETWORK_PARAMETERS, &NetworkParameters::default(), &key(77));
    std::fs::write(dir.join("network-parameters.signed"), encoding::encode(&p)).unwrap();
    let e = treaty_netmap::MapServer::load(&dir).err().unwrap();
    assert!(e.to_string().contains("network-map key"), "{e}");
    std::fs::remove_file(dir.join("root.der")).unwrap();
    let e = treaty_netmap::MapServer::load(&dir).err().unwrap();
    assert!(e.to_string().contains("root.der"), "{e}");
}
