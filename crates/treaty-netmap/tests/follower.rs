//! The node side: following the map, the cache, revocation, back-off and publishing retries.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::sync::watch;
use treaty_core::NetworkParameters;
use treaty_net::map::{MapCache, MemoryMapCache, kinds};
use treaty_net::signed::Signed;
use treaty_netmap::{Backoff, MapClient, MapFollower, NetmapError, NetworkView, publish_until_accepted_with, revoke};

const FAST: Backoff = Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(200) };

fn follower(net: &Network, url: &str, cache: Arc<MemoryMapCache>) -> MapFollower<MemoryMapCache> {
    let client = MapClient::new(url).unwrap().with_timeout(Duration::from_secs(2));
    MapFollower::new(client, map_public(net), net.root.cert.clone(), cache, Duration::from_millis(50))
        .with_backoff(FAST)
        .with_clock(clock())
}

/// Waits (up to 10 s) until the view satisfies `cond`.
async fn until(rx: &mut watch::Receiver<Arc<NetworkView>>, what: &str, cond: impl Fn(&NetworkView) -> bool) -> Arc<NetworkView> {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let view = rx.borrow_and_update().clone();
            if cond(&view) {
                return view;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("timed out waiting for: {what}; last view: {:?}", rx.borrow()))
}

fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], treaty_testkit::free_port()))
}

#[tokio::test]
async fn follows_new_nodes_and_revocations() {
    let net = network(1);
    let dir = layout("follow", &net, &NetworkParameters { epoch: 3, ..Default::default() });
    let server = start(&dir).await;
    let client = MapClient::new(&server.url).unwrap();
    let cache = Arc::new(MemoryMapCache::default());
    let (mut rx, task) = follower(&net, &server.url, cache.clone()).start().await.unwrap();
    {
        let view = rx.borrow();
        assert!(!view.from_cache);
        assert!(view.nodes.is_empty());
        assert_eq!(view.parameters.epoch, 3);
        assert_eq!(view.parameters_hash, view.parameters.hash());
        assert_eq!(view.fetched_at_secs, NOW);
    }

    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let bob = node(&net, "O=Bob,L=Paris,C=FR", 30);
    client.publish(&signed_info(&net, &alice, 1)).await.unwrap();
    client.publish(&signed_info(&net, &bob, 1)).await.unwrap();
    let view = until(&mut rx, "alice and bob on the map", |v| v.nodes.len() == 2).await;
    assert_eq!(view.addresses(&alice.name).unwrap()[0], "127.0.0.1:10001");
    assert_eq!(view.node(&bob.name).unwrap().legal_identity.owning_key, bob.identity.key.public());
    // The snapshot is in the cache.
    let snapshot = cache.load().await.unwrap().unwrap();
    assert_eq!(snapshot.node_infos.len(), 2);
    assert!(snapshot.etag.is_some());

    // A republished node info replaces the old one.
    client.publish(&signed_info(&net, &alice, 2)).await.unwrap();
    until(&mut rx, "alice's new address", |v| v.addresses(&alice.name).is_some_and(|a| a[0] == "127.0.0.1:10002")).await;

    // The operator revokes Bob while everything runs: he leaves every node's view.
    revoke(&dir, &bob.name).unwrap();
    let view = until(&mut rx, "bob revoked", |v| v.node(&bob.name).is_none()).await;
    assert!(view.is_revoked(&bob.name));
    assert_eq!(view.revocations.epoch, 1);
    assert!(view.node(&alice.name).is_some());

    task.abort();
    server.stop().await;
}

#[tokio::test]
async fn works_from_the_cache_while_the_map_is_down_and_recovers() {
    let net = network(1);
    let dir = layout("cache", &net, &NetworkParameters::default());
    let addr = free_addr();
    let server = start_on(&dir, addr).await;
    let client = MapClient::new(&server.url).unwrap();
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    client.publish(&signed_info(&net, &alice, 1)).await.unwrap();

    // A first run fills the cache.
    let cache = Arc::new(MemoryMapCache::default());
    let (rx, task) = follower(&net, &server.url, cache.clone()).start().await.unwrap();
    assert!(rx.borrow().node(&alice.name).is_some());
    task.abort();
    server.stop().await;

    // The node restarts while the map is down: it works from its cache.
    let (mut rx, task) = tokio::time::timeout(Duration::from_secs(5), follower(&net, &format!("http://{addr}"), cache.clone()).start())
        .await
        .expect("starting from the cache does not wait for the map")
        .unwrap();
    {
        let view = rx.borrow_and_update();
        assert!(view.from_cache);
        assert_eq!(view.addresses(&alice.name).unwrap()[0], "127.0.0.1:10001");
    }
    // Polls fail and back off, keeping the view.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.borrow().from_cache && rx.borrow().node(&alice.name).is_some());

    // The map comes back: the follower confirms its view, then follows changes.
    let server = start_on(&dir, addr).await;
    until(&mut rx, "the map confirms the cached view", |v| !v.from_cache).await;
    let bob = node(&net, "O=Bob,L=Paris,C=FR", 30);
    client.publish(&signed_info(&net, &bob, 1)).await.unwrap();
    let view = until(&mut rx, "bob appears", |v| v.node(&bob.name).is_some()).await;
    assert!(view.node(&alice.name).is_some());
    task.abort();
    server.stop().await;
}

#[tokio::test]
async fn without_a_cache_start_waits_for_the_map() {
    let net = network(1);
    let dir = layout("no-cache", &net, &NetworkParameters::default());
    let addr = free_addr();
    let starting = tokio::spawn(follower(&net, &format!("http://{addr}"), Arc::new(MemoryMapCache::default())).start());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!starting.is_finished());
    let server = start_on(&dir, addr).await;
    let (rx, task) = tokio::time::timeout(Duration::from_secs(10), starting).await.unwrap().unwrap().unwrap();
    assert!(!rx.borrow().from_cache);
    task.abort();
    server.stop().await;
}

#[tokio::test]
async fn a_cache_signed_by_another_map_key_is_not_trusted() {
    let net = network(1);
    let dir = layout("bad-cache", &net, &NetworkParameters { epoch: 9, ..Default::default() });
    let server = start(&dir).await;
    let cache = Arc::new(MemoryMapCache::default());
    let (rx, task) = follower(&net, &server.url, cache.clone()).start().await.unwrap();
    task.abort();
    drop(rx);
    // Someone swaps the cached parameters for ones signed by another key.
    let mut snapshot = cache.load().await.unwrap().unwrap();
    snapshot.parameters = Signed::sign(kinds::NETWORK_PARAMETERS, &NetworkParameters { epoch: 99, ..Default::default() }, &key(77));
    cache.save(&snapshot).await.unwrap();
    let (rx, task) = follower(&net, &server.url, cache).start().await.unwrap();
    assert!(!rx.borrow().from_cache, "the bad cache is ignored and the map fetched");
    assert_eq!(rx.borrow().parameters.epoch, 9);
    task.abort();
    server.stop().await;
}

#[tokio::test]
async fn publishing_retries_while_unreachable_and_stops_on_refusal() {
    let net = network(1);
    let dir = layout("retry", &net, &NetworkParameters::default());
    let addr = free_addr();
    let client = MapClient::new(&format!("http://{addr}")).unwrap();
    let alice = node(&net, "O=Alice,L=London,C=GB", 20);
    let publishing = publish_until_accepted_with(client.clone(), signed_info(&net, &alice, 1), FAST);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!publishing.is_finished(), "keeps retrying while the map is down");
    let server = start_on(&dir, addr).await;
    tokio::time::timeout(Duration::from_secs(10), publishing).await.unwrap().unwrap().unwrap();

    // A refusal ends the task with the map's reason.
    let mut bad = signed_info(&net, &alice, 2);
    bad.signature[0] ^= 1;
    let e =
        tokio::time::timeout(Duration::from_secs(10), publish_until_accepted_with(client, bad, FAST)).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(&e, NetmapError::Refused { status: 400, message, .. } if message.contains("signature")), "{e}");
    server.stop().await;
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let b = Backoff::default();
    for attempt in 0..10 {
        let full = Duration::from_secs(1 << attempt).min(Duration::from_secs(60));
        let d = b.delay(attempt);
        assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
    }
    assert!(b.delay(u32::MAX) <= Duration::from_secs(60));
}
