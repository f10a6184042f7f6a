//! The notary server as a process (`treaty-notary-server`) over mutual TLS, on the redb
//! provider: it notarises, refuses a double spend naming the winner, refuses a bad request
//! signature and an unknown party, refuses a request over its size limit without dropping the
//! connection, keeps its commits across a clean stop, and — validating — verifies whole
//! transactions (contracts in the wasm sandbox) before it commits.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use common::*;
use treaty_core::*;
use treaty_notary::client::{ClientError, NotaryClient};
use treaty_notary::server::{RequestRejected, WholeTransactionRequest};
use treaty_notary::*;

fn notary_name() -> X500Name {
    "O=Notary,L=Zurich,C=CH".parse().unwrap()
}

fn alice_name() -> X500Name {
    "O=Alice,L=London,C=GB".parse().unwrap()
}

/// A notary server's directory, its process, and what a client needs.
struct Server {
    _dir: TempDir,
    home: PathBuf,
    child: Option<Child>,
    address: String,
    pki: Pki,
    notary: Party,
    alice_key: KeyPair,
}

/// Writes a server configuration (redb provider; Alice a known party) with `extra` lines,
/// starts the process and waits until it listens.
fn start(extra: &str, files: &[(&str, Vec<u8>)]) -> Server {
    let (mut server, config) = configure("127.0.0.1:0", extra, files);
    server.spawn(&config);
    server
}

/// Writes a server's directory and configuration, listening on `listen`; starts nothing.
fn configure(listen: &str, extra: &str, files: &[(&str, Vec<u8>)]) -> (Server, PathBuf) {
    let dir = TempDir::new();
    let pki = Pki::new();
    let home = dir.path().join("notary");
    let chain = pki.write_party(&home, &notary_name(), 30);
    std::fs::write(dir.path().join("root.der"), &pki.root.cert).unwrap();
    let notary_key = key(33);
    treaty_net::keystore::write_key(&home.join("identity.key"), &notary_key).unwrap();
    for (name, bytes) in files {
        std::fs::write(home.join(name), bytes).unwrap();
    }
    let alice_key = key(41);
    let config = home.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"{}\"\nidentity_key = \"identity.key\"\nlisten = \"{listen}\"\nroot_cert = \"../root.der\"\n\
             tls_chain = {chain}\ntls_key = \"tls.key\"\n{extra}\n\n[provider]\nkind = \"single\"\npath = \"uniqueness.redb\"\n\n\
             [[parties]]\nname = \"{}\"\nkey = \"{}\"\n",
            notary_name(),
            alice_name(),
            alice_key.public()
        ),
    )
    .unwrap();
    let server = Server {
        _dir: dir,
        home,
        child: None,
        address: String::new(),
        pki,
        notary: Party { name: notary_name(), owning_key: notary_key.public() },
        alice_key,
    };
    (server, config)
}

impl Server {
    fn spawn(&mut self, config: &Path) {
        let mut child = Process::new(env!("CARGO_BIN_EXE_treaty-notary-server"))
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        self.address = line.strip_prefix("listening ").unwrap_or_else(|| panic!("the server did not start: {line:?}")).trim().to_string();
        self.child = Some(child);
    }

    /// A client connected as `name` (Alice is a known party).
    async fn client(&self, name: &X500Name, seed: u8) -> NotaryClient {
        let identity = self.pki.identity(name, seed);
        NotaryClient::connect(&self.address, &identity, &notary_name(), Duration::from_secs(20)).await.unwrap()
    }

    /// Alice's request for `wtx`, signed with `key`.
    fn request(&self, wtx: &WireTransaction, key: &KeyPair) -> NotarisationRequest {
        let transaction = FilteredTransaction::reveal_groups(wtx, &FilteredTransaction::NOTARY_GROUPS);
        NotarisationRequest { transaction, signature: key.sign(&request_signing_bytes(&wtx.id(), &self.notary)) }
    }

    /// Stops the process by closing its standard input; it must exit successfully.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        drop(child.stdin.take());
        let status = child.wait().unwrap();
        assert!(status.success(), "the server stopped with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A transaction spending `inputs` (outputs of a made-up issuance), told apart by `salt`.
fn spend(notary: &Party, inputs: &[u32], salt: u8) -> WireTransaction {
    let mut b = TransactionBuilder::new(Some(notary.clone()));
    for i in inputs {
        b = b.input(StateRef { txhash: SecureHash::sha256(b"issuance"), index: *i });
    }
    b.command(Command {
        data: CommandData { type_id: "test".into(), schema_version: 1, bytes: vec![] },
        signers: vec![notary.owning_key.clone()],
    })
    .build(PrivacySalt([salt; 32]))
    .unwrap()
}

fn signature(answer: Result<NotaryAnswer, ClientError>) -> TransactionSignature {
    match answer {
        Ok(Ok(sig)) => sig,
        other => panic!("expected a signature, got {other:?}"),
    }
}

fn refusal(answer: Result<NotaryAnswer, ClientError>) -> NotaryRefusal {
    match answer {
        Ok(Err(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notarises_and_refuses_a_double_spend_naming_the_winner() {
    let server = start("", &[]);
    let client = server.client(&alice_name(), 40).await;
    let status = client.status().await.unwrap();
    assert_eq!((status.identity.clone(), status.validating, status.provider.as_str()), (server.notary.clone(), false, "single"));

    let first = spend(&server.notary, &[1, 2], 1);
    let sig = signature(client.notarise(server.request(&first, &server.alice_key)).await);
    sig.verify(&first.id()).expect("the notary's signature verifies over the transaction id");
    assert_eq!(sig.by, server.notary.owning_key);
    // The same request again gets a signature again (idempotent).
    signature(client.notarise(server.request(&first, &server.alice_key)).await).verify(&first.id()).unwrap();

    let second = spend(&server.notary, &[2, 3], 2);
    let refused = refusal(client.notarise(server.request(&second, &server.alice_key)).await);
    let NotaryRefusal::Conflict { tx_id, conflict } = &refused else { panic!("expected a conflict: {refused}") };
    assert_eq!(*tx_id, second.id());
    let state = StateRef { txhash: SecureHash::sha256(b"issuance"), index: 2 };
    assert_eq!(conflict.states.keys().collect::<Vec<_>>(), vec![&state], "only the contested state: {refused}");
    let winner = &conflict.states[&state].consumed_by;
    assert_eq!((winner.tx_id, winner.input_index, &winner.requesting_party), (first.id(), 1, &alice_name()), "{refused}");
    // The refused transaction consumed nothing: its other input is still free.
    signature(client.notarise(server.request(&spend(&server.notary, &[3], 3), &server.alice_key)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_signature_or_an_unknown_party_is_refused_and_consumes_nothing() {
    let server = start("", &[]);
    let alice = server.client(&alice_name(), 40).await;
    let wtx = spend(&server.notary, &[7], 7);
    let forged = refusal(alice.notarise(server.request(&wtx, &key(66))).await);
    assert_eq!(forged.code(), "NOTARY-REQUEST-SIGNATURE", "{forged}");
    assert!(forged.to_string().contains("O=Alice"), "{forged}");

    // Mallory has a certificate of the network but is not a party this notary knows.
    let mallory = server.client(&"O=Mallory,L=Paris,C=FR".parse().unwrap(), 50).await;
    let unknown = refusal(mallory.notarise(server.request(&wtx, &key(66))).await);
    assert_eq!(unknown.code(), "NOTARY-REQUEST-SIGNATURE", "{unknown}");
    assert!(unknown.to_string().contains("O=Mallory") && unknown.to_string().contains("not a party this notary knows"), "{unknown}");

    // Neither consumed anything: Alice's own request goes through.
    signature(alice.notarise(server.request(&wtx, &server.alice_key)).await).verify(&wtx.id()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_size_limit_is_refused_and_the_connection_carries_on() {
    let server = start("max_request_bytes = 4096", &[]);
    let client = server.client(&alice_name(), 40).await;
    let inputs: Vec<u32> = (0..200).collect();
    let big = spend(&server.notary, &inputs, 1);
    match client.notarise(server.request(&big, &server.alice_key)).await {
        Err(ClientError::Rejected(RequestRejected::TooLarge { size, limit })) => {
            assert_eq!(limit, 4096);
            assert!(size > 4096, "{size}");
        }
        other => panic!("expected the request to be rejected as too large, got {other:?}"),
    }
    // Same connection: a small request is answered, and one of the big one's inputs is free.
    let small = spend(&server.notary, &[5], 2);
    signature(client.notarise(server.request(&small, &server.alice_key)).await).verify(&small.id()).unwrap();
    assert!(client.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_keeps_every_commit() {
    let mut server = start("", &[]);
    let first = spend(&server.notary, &[1], 1);
    {
        let client = server.client(&alice_name(), 40).await;
        signature(client.notarise(server.request(&first, &server.alice_key)).await);
    }
    server.stop();
    let log = RedbUniquenessProvider::open(server.home.join("uniqueness.redb"), UniquenessConfig::default()).await.unwrap();
    let again = CommitRequest {
        tx_id: SecureHash::sha256(b"another"),
        inputs: vec![StateRef { txhash: SecureHash::sha256(b"issuance"), index: 1 }],
        references: vec![],
        time_window: None,
        requester: alice_name(),
    };
    match log.commit(again, NOW).await {
        Err(NotaryError::Conflict { conflict, .. }) => {
            assert_eq!(conflict.states.values().next().unwrap().consumed_by.tx_id, first.id());
        }
        other => panic!("the stopped server's log lost its commit: {other:?}"),
    }
    log.close().await;
}

/// A validating server: a valid token move is verified (contract in the sandbox) and signed; a
/// move that creates tokens is refused with the contract's reason, and consumes nothing; a
/// tear-off is refused (it needs the whole transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validating_server_verifies_the_whole_transaction() {
    let server = start("validating = true\nattachments = [\"token.bundle\"]", &[("token.bundle", treaty_testkit::token_bundle())]);
    let client = server.client(&alice_name(), 40).await;
    assert!(client.status().await.unwrap().validating);
    let notary_key = key(33);
    let chain = treaty_testkit::token_chain_for(1, 5, &server.notary, &notary_key).unwrap();
    let (issue, good) = (&chain.transactions[0], &chain.transactions[1]);
    let owner = treaty_testkit::key(1).unwrap();
    let attachment = chain.attachment_id;

    // A move that creates tokens out of nothing: 100 in, 150 out.
    let input = StateRef { txhash: issue.id(), index: 0 };
    let bad = TransactionBuilder::new(Some(server.notary.clone()))
        .input(input)
        .output(TransactionState::new(
            &treaty_testkit::Token { owner: Party { name: alice_name(), owning_key: owner.public() }.into(), amount: 150 },
            treaty_testkit::TOKEN,
            server.notary.clone(),
            AttachmentConstraint::Hash(attachment),
        ))
        .command(Command::new(&treaty_testkit::TokenCommand::Move, vec![owner.public()]))
        .attachment(attachment)
        .build(PrivacySalt([9; 32]))
        .unwrap();
    let bad_id = bad.id();
    let bad = SignedTransaction::new(bad, vec![owner.sign_transaction(&bad_id, PLATFORM_VERSION)]);
    let whole = |stx: &SignedTransaction| WholeTransactionRequest {
        transaction: stx.clone(),
        dependencies: vec![issue.clone()],
        signature: server.alice_key.sign(&request_signing_bytes(&stx.id(), &server.notary)),
    };
    let refused = refusal(client.notarise_whole(whole(&bad)).await);
    assert_eq!(refused.code(), "NOTARY-TRANSACTION-INVALID", "{refused}");
    assert!(refused.to_string().contains("conserve"), "the contract's reason: {refused}");

    // Without its dependency the input cannot be resolved.
    let mut missing = whole(good);
    missing.dependencies.clear();
    assert_eq!(refusal(client.notarise_whole(missing).await).code(), "NOTARY-TRANSACTION-INVALID");

    // A tear-off is not enough for a validating notary.
    let tear_off = server.request(good.tx(), &server.alice_key);
    let refused = refusal(client.notarise(tear_off).await);
    assert!(refused.to_string().contains("validating notary"), "{refused}");

    // The valid move is signed: nothing above consumed its input.
    signature(client.notarise_whole(whole(good)).await).verify(&good.id()).unwrap();
}

/// A server whose port is taken says so, naming the address, and exits with failure.
#[test]
fn a_port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (_server, config) = configure(&address, "", &[]);
    let out = Process::new(env!("CARGO_BIN_EXE_treaty-notary-server")).arg(&config).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "it never said it listens: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("NOTARY-SERVER-LISTEN") && err.contains(&address) && err.contains("in use by another process"), "{err}");
}

/// Whether `name` is turned away: its handshake fails, or its first request gets no answer.
async fn turned_away(server: &Server, name: &X500Name, seed: u8, wtx: &WireTransaction) -> bool {
    let identity = server.pki.identity(name, seed);
    match NotaryClient::connect(&server.address, &identity, &notary_name(), Duration::from_secs(5)).await {
        Err(_) => true,
        // TLS 1.3: the client's handshake ends before the server has checked its certificate.
        Ok(client) => client.notarise(server.request(wtx, &server.alice_key)).await.is_err(),
    }
}

/// With a `[network_map]` section the server follows the map's revocation list. Once Alice is
/// revoked, her requests on a connection opened before are refused as revoked, and a new
/// connection of hers is turned away; after a restart while the map is down the cached list
/// still turns her away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_the_map_revokes_is_refused_also_after_a_restart_without_the_map() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let section = map_section(&url);
    let (mut server, config) = configure("127.0.0.1:0", &section, &[]);
    let map_dir = server.home.join("../map");
    let stop_map = serve_map(&map_dir, &server.pki, listener);
    server.spawn(&config);
    let alice = server.client(&alice_name(), 40).await;
    signature(alice.notarise(server.request(&spend(&server.notary, &[1], 1), &server.alice_key)).await);

    treaty_netmap::revoke(&map_dir, &alice_name()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut salt = 2u8;
    let refused = loop {
        let answer = alice.notarise(server.request(&spend(&server.notary, &[u32::from(salt)], salt), &server.alice_key)).await;
        match answer {
            Ok(Err(refusal)) => break refusal,
            Ok(Ok(_)) => {}
            Err(e) => panic!("the open connection was dropped instead of the request refused: {e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "Alice was never refused after her revocation");
        salt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused.code(), "NOTARY-REQUEST-SIGNATURE", "{refused}");
    assert!(refused.to_string().contains("revoked"), "{refused}");
    let fresh = spend(&server.notary, &[200], 200);
    assert!(turned_away(&server, &alice_name(), 40, &fresh).await, "a new connection of Alice's was served");

    // Restarted while the map is down: the cached list is in force from the start.
    drop(alice);
    server.stop();
    let _ = stop_map.send(());
    server.spawn(&config);
    assert!(turned_away(&server, &alice_name(), 40, &fresh).await, "after the restart Alice was served");
    // The server is up and answers others (Mallory is no party of it, and is told so).
    assert!(!turned_away(&server, &"O=Mallory,L=Paris,C=FR".parse().unwrap(), 50, &fresh).await, "the restarted server answers nobody");
}
