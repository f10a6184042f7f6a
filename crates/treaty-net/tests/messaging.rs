//! Durable messaging: the messenger over the simulated network (loss, latency, partitions,
//! crashes) with the in-memory store, and over real mutual TLS on 127.0.0.1. The same
//! messenger runs over SQLite and PostgreSQL stores in nodes (crates/treaty-cli/tests).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use treaty_core::X500Name;
use treaty_net::messaging::*;
use treaty_net::pki::RevocationList;
use treaty_net::sim::{Faults, SimNetwork};
use treaty_net::transport::TlsIdentity;

fn fast() -> MessengerConfig {
    MessengerConfig {
        ack_timeout: Duration::from_millis(150),
        idle_timeout: Duration::from_millis(400),
        retry_min: Duration::from_millis(5),
        retry_max: Duration::from_millis(100),
        rescan_interval: Duration::from_millis(100),
        ..MessengerConfig::default()
    }
}

type Directory = Arc<RwLock<HashMap<X500Name, Vec<String>>>>;

fn directory(d: &Directory) -> Arc<dyn PeerDirectory> {
    let d = d.clone();
    Arc::new(move |peer: &X500Name| d.read().unwrap().get(peer).cloned().unwrap_or_default())
}

struct SimNode {
    name: X500Name,
    address: String,
    store: Arc<MemoryMessageStore>,
    messenger: Messenger<MemoryMessageStore, treaty_net::sim::SimConnector>,
    inbox: mpsc::Receiver<InboundMessage>,
    accept: tokio::task::JoinHandle<()>,
}

async fn start(net: &SimNetwork, dir: &Directory, legal: &str, store: Arc<MemoryMessageStore>, config: MessengerConfig) -> SimNode {
    let me = name(legal);
    let address = format!("sim:{legal}");
    dir.write().unwrap().insert(me.clone(), vec![address.clone()]);
    let (messenger, inbox) = Messenger::new(me.clone(), store.clone(), net.connector(&me), directory(dir), config);
    let accept = listen(net, &address, &me, &messenger);
    messenger.start().await.unwrap();
    SimNode { name: me, address, store, messenger, inbox, accept }
}

/// Serves every link the simulated network accepts at `address` with `messenger`.
fn listen(
    net: &SimNetwork,
    address: &str,
    me: &X500Name,
    messenger: &Messenger<MemoryMessageStore, treaty_net::sim::SimConnector>,
) -> tokio::task::JoinHandle<()> {
    let mut incoming = net.listen(address, me);
    let server = messenger.clone();
    tokio::spawn(async move {
        while let Some((link, peer)) = incoming.recv().await {
            let server = server.clone();
            tokio::spawn(async move { server.serve_link(link, peer).await });
        }
    })
}

/// A crash: every task stops, nothing is flushed; only the store survives.
fn crash(net: &SimNetwork, node: SimNode) -> Arc<MemoryMessageStore> {
    node.messenger.shutdown();
    node.accept.abort();
    net.unlisten(&node.address);
    node.store
}

fn msg(to: &X500Name, session: u64, n: u32) -> Outgoing {
    Outgoing { destination: to.clone(), session, topic: "test".into(), payload: n.to_be_bytes().to_vec() }
}

/// Receives `count` messages (marking them processed), failing after `within`.
async fn receive(node: &mut SimNode, count: usize, within: Duration) -> Vec<InboundMessage> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < count {
        match tokio::time::timeout_at(deadline, node.inbox.recv()).await {
            Ok(Some(m)) => {
                node.messenger.processed(&[m.id]).await.unwrap();
                got.push(m);
            }
            _ => panic!("{} received {} of {count} messages", node.name, got.len()),
        }
    }
    got
}

async fn assert_quiet(node: &mut SimNode, for_: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(for_, node.inbox.recv()).await {
        panic!("{} received an unexpected message: {m:?}", node.name);
    }
}

fn seq(m: &InboundMessage) -> u32 {
    u32::from_be_bytes(m.payload[..4].try_into().unwrap())
}

/// Every message arrives once, and within a session in the order sent.
fn assert_exactly_once_in_order(got: &[InboundMessage], sessions: u64, per_session: u32) {
    let mut by_session: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for m in got {
        by_session.entry(m.session).or_default().push(seq(m));
    }
    assert_eq!(by_session.len() as u64, sessions);
    for (session, seqs) in by_session {
        if let Some(i) = seqs.iter().enumerate().position(|(i, &n)| n != i as u32) {
            let end = (i + 8).min(seqs.len());
            panic!("session {session}: {} messages, the first out of order at {i}: {:?}", seqs.len(), &seqs[i.saturating_sub(2)..end]);
        }
        assert_eq!(seqs.len() as u32, per_session, "session {session}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_network_delivers_every_message_exactly_once_in_session_order() {
    let net = SimNetwork::new();
    net.set_faults(Faults { latency: Duration::from_millis(1), jitter: Duration::from_millis(2), loss: 0.25 });
    let dir = Directory::default();
    // Small batches: many frames, so losses certainly happen.
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), MessengerConfig { max_batch: 7, ..fast() }).await;
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    let mut carol = start(&net, &dir, "O=Carol,L=Rome,C=IT", Default::default(), fast()).await;
    for n in 0..60 {
        let batch = (0..4).flat_map(|s| [msg(&bob.name, s, n), msg(&carol.name, 10 + s, n)]).collect();
        alice.messenger.send(batch).await.unwrap();
    }
    let to_bob = receive(&mut bob, 240, Duration::from_secs(30)).await;
    let to_carol = receive(&mut carol, 240, Duration::from_secs(30)).await;
    assert_exactly_once_in_order(&to_bob, 4, 60);
    assert_exactly_once_in_order(&to_carol, 4, 60);
    assert!(to_bob.iter().all(|m| m.sender == alice.name));
    assert!(net.frames_lost() > 0, "the network lost nothing: the test proved nothing");
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
    // The last acknowledgements may be lost too: the outbox empties once a resend is acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !alice.store.outbox(&bob.name, 10).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "acknowledged messages stay in the outbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn lost_acknowledgements_cause_redelivery_that_the_inbox_drops() {
    let net = SimNetwork::new();
    net.set_faults(Faults { loss: 0.3, ..Faults::default() });
    let dir = Directory::default();
    let quick = MessengerConfig { max_batch: 1, ack_timeout: Duration::from_millis(40), ..fast() };
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), quick).await;
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    alice.messenger.send((0..40).map(|n| msg(&bob.name, 1, n)).collect()).await.unwrap();
    let got = receive(&mut bob, 40, Duration::from_secs(30)).await;
    assert_exactly_once_in_order(&got, 1, 40);
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
    assert!(bob.messenger.stats().duplicates.load(Ordering::Relaxed) > 0, "no acknowledgement was lost: the test proved nothing");
}

/// Senders choose their messages' ids, so a receiver files each under its sender: a peer that
/// sends first with an id another peer will use (it can compute a responder's ids, say) does
/// not make that peer's message a duplicate to be dropped. Each is delivered once, and a
/// resent copy from the same sender is still dropped.
#[tokio::test]
async fn an_id_another_sender_used_first_does_not_drop_a_message() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let mallory = start(&net, &dir, "O=Mallory,L=Rome,C=IT", Default::default(), fast()).await;
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    let id = MessageId::random();
    mallory.messenger.send_with_ids(vec![(id, msg(&bob.name, 1, 666))]).await.unwrap();
    let first = receive(&mut bob, 1, Duration::from_secs(10)).await;
    assert_eq!((first[0].sender.clone(), seq(&first[0])), (mallory.name.clone(), 666));
    alice.messenger.send_with_ids(vec![(id, msg(&bob.name, 1, 7))]).await.unwrap();
    let second = receive(&mut bob, 1, Duration::from_secs(10)).await;
    assert_eq!((second[0].sender.clone(), seq(&second[0])), (alice.name.clone(), 7), "Alice's message was dropped");
    assert_ne!(first[0].id, second[0].id, "two senders' messages filed under one id");
    // The same sender's copy is a duplicate still.
    let before = bob.messenger.stats().duplicates.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !alice.store.outbox(&bob.name, 10).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "Bob never acknowledged Alice's message");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    alice.messenger.send_with_ids(vec![(id, msg(&bob.name, 1, 8))]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bob.messenger.stats().duplicates.load(Ordering::Relaxed) == before {
        assert!(tokio::time::Instant::now() < deadline, "Alice's resent copy was neither dropped nor delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
}

/// A link that brings one batch and then breaks: the acknowledgement cannot be sent (the
/// sender died just after sending, say).
struct BrokenAfterOneBatch(Option<Vec<u8>>);

impl Link for BrokenAfterOneBatch {
    async fn send(&mut self, _frame: Vec<u8>) -> Result<(), treaty_net::transport::TransportError> {
        Err(treaty_net::transport::TransportError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the sender is gone")))
    }
    async fn recv(&mut self) -> Result<Vec<u8>, treaty_net::transport::TransportError> {
        self.0.take().ok_or_else(|| treaty_net::transport::TransportError::Io(std::io::ErrorKind::UnexpectedEof.into()))
    }
}

/// A batch stored but not acknowledged (the link broke) is still handed over at once. Its
/// sender sends it again and the inbox drops that copy, so a message not handed over with the
/// first would have waited in the inbox until the receiver's next start.
#[tokio::test]
async fn a_batch_whose_acknowledgement_cannot_be_sent_is_still_handed_over() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    let message = wire::WireMessage { id: MessageId::random(), session: 1, topic: "test".into(), payload: b"hello".to_vec() };
    let frame = treaty_core::encoding::encode(&wire::Frame::Messages { version: wire::PROTOCOL_VERSION, messages: vec![message.clone()] });
    bob.messenger.serve_link(BrokenAfterOneBatch(Some(frame)), name("O=Alice,L=London,C=GB")).await;
    let got = receive(&mut bob, 1, Duration::from_secs(5)).await;
    assert_eq!((got[0].id, got[0].payload.as_slice()), (message.id.received_from(&name("O=Alice,L=London,C=GB")), b"hello".as_slice()));
    // The sender's second copy is dropped by the inbox, as before.
    let again = treaty_core::encoding::encode(&wire::Frame::Messages { version: wire::PROTOCOL_VERSION, messages: vec![message] });
    bob.messenger.serve_link(BrokenAfterOneBatch(Some(again)), name("O=Alice,L=London,C=GB")).await;
    assert_quiet(&mut bob, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn messages_sent_across_a_partition_arrive_when_it_heals() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    net.partition(&alice.name, &bob.name);
    alice.messenger.send((0..20).map(|n| msg(&bob.name, 7, n)).collect()).await.unwrap();
    assert_quiet(&mut bob, Duration::from_millis(400)).await;
    assert!(alice.messenger.stats().failures.load(Ordering::Relaxed) > 0);
    net.heal();
    let got = receive(&mut bob, 20, Duration::from_secs(10)).await;
    assert_exactly_once_in_order(&got, 1, 20);
}

#[tokio::test]
async fn a_message_sent_while_the_receiver_is_down_arrives_when_it_starts() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let bob_name = name("O=Bob,L=Paris,C=FR");
    dir.write().unwrap().insert(bob_name.clone(), vec!["sim:O=Bob,L=Paris,C=FR".into()]);
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    alice.messenger.send(vec![msg(&bob_name, 1, 0)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    let got = receive(&mut bob, 1, Duration::from_secs(10)).await;
    assert_eq!(seq(&got[0]), 0);
}

/// The sender keeps at most 8,192 unsent messages in memory; beyond that it reads them from
/// the outbox. Every message still arrives once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_messages_than_the_sender_keeps_in_memory_arrive_once_in_order() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let bob_name = name("O=Bob,L=Paris,C=FR");
    dir.write().unwrap().insert(bob_name.clone(), vec!["sim:O=Bob,L=Paris,C=FR".into()]);
    // `fast`'s acknowledgement timeout (150 ms) is shorter than storing a 1,024-message batch
    // may take here: the sender gives up on links and resends on new ones, while Bob may
    // still be storing the batch from the old one. Order holds all the same.
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    // Bob is down: everything queues, in memory until it overflows.
    for chunk in 0..10u32 {
        let batch = (0..1000).map(|n| msg(&bob_name, 7, chunk * 1000 + n)).collect();
        alice.messenger.send(batch).await.unwrap();
    }
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    let got = receive(&mut bob, 10_000, Duration::from_secs(60)).await;
    assert_exactly_once_in_order(&got, 1, 10_000);
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
}

/// A node that listens before its messenger starts (links served first): a link's messages
/// wait for `start`, which hands the unprocessed inbox over first, so a message stored before
/// a restart and one arriving meanwhile each reach the application once. (Delivered at once,
/// the new message was then read back as unprocessed by `start` and delivered again: the
/// overflow test above caught that, its harness listening first.)
#[tokio::test]
async fn messages_arriving_before_start_are_delivered_once_after_the_unprocessed_inbox() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let bob_name = name("O=Bob,L=Paris,C=FR");
    let address = "sim:O=Bob,L=Paris,C=FR".to_string();
    dir.write().unwrap().insert(bob_name.clone(), vec![address.clone()]);
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    // Bob's store holds a message received before he stopped, not processed yet.
    let store = Arc::new(MemoryMessageStore::default());
    let earlier = InboundMessage {
        id: MessageId::random(),
        sender: alice.name.clone(),
        session: 9,
        topic: "test".into(),
        payload: 0u32.to_be_bytes().to_vec(),
    };
    store.receive(vec![earlier]).await.unwrap();
    let (messenger, inbox) = Messenger::new(bob_name.clone(), store.clone(), net.connector(&bob_name), directory(&dir), fast());
    let accept = listen(&net, &address, &bob_name, &messenger);
    let mut bob = SimNode { name: bob_name.clone(), address, store, messenger, inbox, accept };
    alice.messenger.send(vec![msg(&bob_name, 9, 1)]).await.unwrap();
    // Alice's sender reaches Bob within this (it retries every 100 ms at most), and he
    // delivers nothing before he starts.
    assert_quiet(&mut bob, Duration::from_millis(500)).await;
    assert_eq!(bob.store.unprocessed(10).await.unwrap().len(), 1, "nothing stored before start either");
    bob.messenger.start().await.unwrap();
    let got = receive(&mut bob, 2, Duration::from_secs(10)).await;
    assert_exactly_once_in_order(&got, 1, 2);
    assert_quiet(&mut bob, Duration::from_millis(500)).await;
}

/// A message put in the outbox behind the messenger's back (another process, an operator tool)
/// is found by the periodic rescan and sent, even while the sender works from memory.
#[tokio::test]
async fn a_message_written_to_the_outbox_directly_is_sent_after_the_rescan() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    alice.messenger.send(vec![msg(&bob.name, 1, 0)]).await.unwrap();
    assert_eq!(seq(&receive(&mut bob, 1, Duration::from_secs(10)).await[0]), 0);
    let direct = OutboundMessage {
        id: MessageId::random(),
        destination: bob.name.clone(),
        session: 1,
        topic: "test".into(),
        payload: 1u32.to_be_bytes().to_vec(),
        attempts: 0,
    };
    alice.store.enqueue(vec![direct]).await.unwrap();
    assert_eq!(seq(&receive(&mut bob, 1, Duration::from_secs(10)).await[0]), 1);
}

#[tokio::test]
async fn a_sender_that_crashes_after_enqueueing_delivers_after_restart() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let bob_name = name("O=Bob,L=Paris,C=FR");
    dir.write().unwrap().insert(bob_name.clone(), vec!["sim:O=Bob,L=Paris,C=FR".into()]);
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    alice.messenger.send((0..5).map(|n| msg(&bob_name, 3, n)).collect()).await.unwrap();
    let store = crash(&net, alice);
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
    let _alice = start(&net, &dir, "O=Alice,L=London,C=GB", store, fast()).await;
    let got = receive(&mut bob, 5, Duration::from_secs(10)).await;
    assert_exactly_once_in_order(&got, 1, 5);
}

#[tokio::test]
async fn a_receiver_that_crashes_before_processing_gets_the_messages_again_once() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    alice.messenger.send((0..3).map(|n| msg(&bob.name, 1, n)).collect()).await.unwrap();
    // Bob processes the first message only, then crashes.
    let first = tokio::time::timeout(Duration::from_secs(5), bob.inbox.recv()).await.unwrap().unwrap();
    bob.messenger.processed(&[first.id]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let store = crash(&net, bob);
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", store, fast()).await;
    let again = receive(&mut bob, 2, Duration::from_secs(5)).await;
    assert_eq!(again.iter().map(seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_peer_with_several_addresses_is_reached_at_one_that_works() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    dir.write().unwrap().insert(bob.name.clone(), vec!["sim:nowhere".into(), bob.address.clone()]);
    alice.messenger.send(vec![msg(&bob.name, 1, 0)]).await.unwrap();
    receive(&mut bob, 1, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn idle_links_are_closed_and_reopened_on_demand() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    let mut bob = start(&net, &dir, "O=Bob,L=Paris,C=FR", Default::default(), fast()).await;
    alice.messenger.send(vec![msg(&bob.name, 1, 0)]).await.unwrap();
    receive(&mut bob, 1, Duration::from_secs(5)).await;
    assert_eq!(alice.messenger.stats().links_out.load(Ordering::Relaxed), 1);
    let began = std::time::Instant::now();
    while alice.messenger.stats().links_out.load(Ordering::Relaxed) > 0 {
        assert!(began.elapsed() < Duration::from_secs(10), "idle link still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = alice.messenger.stats().links_opened.load(Ordering::Relaxed);
    alice.messenger.send(vec![msg(&bob.name, 1, 1)]).await.unwrap();
    receive(&mut bob, 1, Duration::from_secs(5)).await;
    assert_eq!(alice.messenger.stats().links_opened.load(Ordering::Relaxed), opened + 1, "the next message opens a link again");
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_before_it_is_stored() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), MessengerConfig { max_message_size: 1024, ..fast() }).await;
    let bob = name("O=Bob,L=Paris,C=FR");
    let big = Outgoing { destination: bob.clone(), session: 1, topic: "test".into(), payload: vec![0; 2000] };
    let err = alice.messenger.send(vec![msg(&bob, 1, 0), big]).await.unwrap_err().to_string();
    assert!(err.contains("over the network's maximum message size of 1024 bytes"), "{err}");
    assert!(alice.store.outbox(&bob, 10).await.unwrap().is_empty(), "part of a refused send was stored");
}

#[tokio::test]
async fn messages_to_oneself_are_delivered_locally() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let mut alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    let me = alice.name.clone();
    alice.messenger.send(vec![msg(&me, 1, 0)]).await.unwrap();
    let got = receive(&mut alice, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].sender, me);
}

// ---- real mutual TLS ----

fn tls_identity(net: &Network, n: Node) -> TlsIdentity {
    TlsIdentity {
        chain: vec![n.tls.cert.clone(), n.node_ca.cert.clone(), net.doorman.cert.clone()],
        key: Arc::new(n.tls.key),
        root: Arc::new(net.root.cert.clone()),
        revoked: Arc::new(RwLock::new(RevocationList::default())),
    }
}

type TlsMessenger = Messenger<MemoryMessageStore, TlsConnector>;

async fn tls_node(identity: TlsIdentity, legal: &str, dir: &Directory) -> (TlsMessenger, mpsc::Receiver<InboundMessage>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    dir.write().unwrap().insert(name(legal), vec![listener.local_addr().unwrap().to_string()]);
    let limit = fast().max_message_size;
    let (messenger, inbox) = Messenger::new(
        name(legal),
        Arc::new(MemoryMessageStore::default()),
        TlsConnector::new(identity.clone(), limit),
        directory(dir),
        fast(),
    );
    let server = messenger.clone();
    tokio::spawn(async move {
        serve_tls(listener, &identity, limit, move |link, peer| {
            let server = server.clone();
            async move { server.serve_link(link, peer).await }
        })
        .await
        .unwrap()
    });
    messenger.start().await.unwrap();
    (messenger, inbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_mutual_tls_and_the_receiver_knows_the_sender_by_certificate() {
    let net = network(10);
    let dir = Directory::default();
    let (alice, _) = tls_node(tls_identity(&net, node(&net, "O=Alice,L=London,C=GB", 20)), "O=Alice,L=London,C=GB", &dir).await;
    let (_bob, mut bob_inbox) = tls_node(tls_identity(&net, node(&net, "O=Bob,L=Paris,C=FR", 30)), "O=Bob,L=Paris,C=FR", &dir).await;
    let bob = name("O=Bob,L=Paris,C=FR");
    for chunk in 0..10 {
        alice.send((0..100).map(|n| msg(&bob, 1, chunk * 100 + n)).collect()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 1000 {
        got.push(tokio::time::timeout(Duration::from_secs(10), bob_inbox.recv()).await.unwrap().unwrap());
    }
    assert_exactly_once_in_order(&got, 1, 1000);
    assert!(got.iter().all(|m| m.sender == name("O=Alice,L=London,C=GB")));
}

#[tokio::test]
async fn a_peer_answering_under_another_name_gets_nothing() {
    let net = network(10);
    let dir = Directory::default();
    let (alice, _) = tls_node(tls_identity(&net, node(&net, "O=Alice,L=London,C=GB", 20)), "O=Alice,L=London,C=GB", &dir).await;
    let (_mallory, mut mallory_inbox) =
        tls_node(tls_identity(&net, node(&net, "O=Mallory,L=Paris,C=FR", 30)), "O=Mallory,L=Paris,C=FR", &dir).await;
    // The directory wrongly points Bob's name at Mallory's address.
    let bob = name("O=Bob,L=Paris,C=FR");
    let mallory_address = dir.read().unwrap()[&name("O=Mallory,L=Paris,C=FR")].clone();
    dir.write().unwrap().insert(bob.clone(), mallory_address);
    alice.send(vec![msg(&bob, 1, 0)]).await.unwrap();
    let began = std::time::Instant::now();
    while alice.stats().failures.load(Ordering::Relaxed) == 0 {
        assert!(began.elapsed() < Duration::from_secs(10), "Alice never failed to reach \"Bob\" at Mallory's address");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tokio::time::timeout(Duration::from_millis(300), mallory_inbox.recv()).await.is_err(), "Mallory got Bob's message");
    assert_eq!(alice.stats().acknowledged.load(Ordering::Relaxed), 0);
}

/// A directory whose members can be revoked while links are open.
struct Revocable {
    dir: Directory,
    revoked: Arc<RwLock<Vec<X500Name>>>,
}

impl PeerDirectory for Revocable {
    fn addresses(&self, peer: &X500Name) -> Vec<String> {
        self.dir.read().unwrap().get(peer).cloned().unwrap_or_default()
    }
    fn admits(&self, peer: &X500Name) -> bool {
        !self.revoked.read().unwrap().contains(peer)
    }
}

#[tokio::test]
async fn a_peer_revoked_while_its_link_is_open_is_cut_off_at_its_next_batch() {
    let net = SimNetwork::new();
    let dir = Directory::default();
    let alice = start(&net, &dir, "O=Alice,L=London,C=GB", Default::default(), fast()).await;
    // Bob consults a directory in which Alice can be revoked.
    let bob_name = name("O=Bob,L=Paris,C=FR");
    dir.write().unwrap().insert(bob_name.clone(), vec!["sim:bob".into()]);
    let revoked = Arc::new(RwLock::new(Vec::new()));
    let bob_dir = Arc::new(Revocable { dir: dir.clone(), revoked: revoked.clone() });
    let (bob, mut bob_inbox) =
        Messenger::new(bob_name.clone(), Arc::new(MemoryMessageStore::default()), net.connector(&bob_name), bob_dir, fast());
    let mut incoming = net.listen("sim:bob", &bob_name);
    let server = bob.clone();
    tokio::spawn(async move {
        while let Some((link, peer)) = incoming.recv().await {
            let server = server.clone();
            tokio::spawn(async move { server.serve_link(link, peer).await });
        }
    });
    bob.start().await.unwrap();
    alice.messenger.send(vec![msg(&bob_name, 1, 0)]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), bob_inbox.recv()).await.unwrap().unwrap();
    revoked.write().unwrap().push(alice.name.clone());
    alice.messenger.send(vec![msg(&bob_name, 1, 1)]).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), bob_inbox.recv()).await.is_err(), "a revoked peer's message was accepted");
    assert!(!alice.store.outbox(&bob_name, 10).await.unwrap().is_empty(), "the refused message left Alice's outbox");
}
