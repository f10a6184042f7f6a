//! The vault through client RPC: a node started in this process (with a fungible schema for
//! the test token) records transactions paying its own identity key; `treaty vault query` and
//! `treaty vault balances` — real processes over TLS — show them; `TrackVault` over a raw
//! gRPC client hears of new ones.

mod common;

use std::time::Duration;

use common::{ALICE, Net, add_user, json, run, run_as};
use serde_json::json;
use treaty_core::{
    AbstractParty, AttachmentConstraint, Command, KeyPair, PLATFORM_VERSION, Party, PrivacySalt, SignedTransaction, StateRef,
    TransactionBuilder, TransactionState,
};
use treaty_flows::Ledger;
use treaty_node::config::NodeConfig;
use treaty_node::node::{self, NodeServices, RunningNode};
use treaty_rpc::v1 as pb;
use treaty_testkit::{TOKEN, Token, TokenCommand};
use treaty_vault::FungibleColumns;

const ISSUER: &str = "test issuer";

/// Starts the node in this process with a fungible schema for the test token (token
/// `TOKEN`, no fraction digits).
async fn start(net: &Net) -> RunningNode {
    let mut config = NodeConfig::load(&net.node_dir(ALICE).join("node.toml")).unwrap();
    config.poll_interval = Duration::from_millis(200);
    node::start_with(&config, |_, services: &NodeServices| {
        services
            .vault
            .register(treaty_vault::fungible(|t: &Token| FungibleColumns {
                owner: t.owner.clone(),
                issuer: ISSUER.into(),
                token: "TOKEN".into(),
                quantity: t.amount,
            }))
            .unwrap();
    })
    .await
    .unwrap()
}

/// A token transaction: `inputs` spent, `outputs` (owner, amount) created, signed by `key`.
fn token_tx(notary: &Party, key: &KeyPair, inputs: &[StateRef], outputs: &[(&AbstractParty, u64)], salt: u8) -> SignedTransaction {
    let mut b = TransactionBuilder::new(Some(notary.clone()));
    for i in inputs {
        b = b.input(*i);
    }
    for (owner, amount) in outputs {
        let state = Token { owner: (*owner).clone(), amount: *amount };
        b = b.output(TransactionState::new(&state, TOKEN, notary.clone(), AttachmentConstraint::AlwaysAccept));
    }
    let command = if inputs.is_empty() { TokenCommand::Issue } else { TokenCommand::Move };
    let wtx = b.command(Command::new(&command, vec![key.public()])).build(PrivacySalt([salt; 32])).unwrap();
    let id = wtx.id();
    SignedTransaction::new(wtx, vec![key.sign_transaction(&id, PLATFORM_VERSION)])
}

/// Runs the CLI off the runtime's threads (the node serves on them).
async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || run(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_query_and_balances_show_the_nodes_states_over_tls() {
    let net = Net::new("vault", &[ALICE]);
    add_user(&net, ALICE, "viewer", Some("viewer-secret"), None, &["ReadFlows"]);
    let node_dir = net.node_dir(ALICE);
    let dir = net.node(ALICE);
    let alice = start(&net).await;

    // Alice's identity key owns what the vault keeps; Holder B's output is not hers.
    let key = treaty_node::keys::identity_key(&node_dir).unwrap();
    let me: AbstractParty = Party { name: ALICE.parse().unwrap(), owning_key: key.public() }.into();
    let holder_b: AbstractParty =
        Party { name: "O=Holder B,L=Paris,C=FR".parse().unwrap(), owning_key: treaty_testkit::key(2).unwrap().public() }.into();
    let notary = Party { name: "O=Notary,L=Zurich,C=CH".parse().unwrap(), owning_key: treaty_testkit::key(3).unwrap().public() };
    let issue = token_tx(&notary, &key, &[], &[(&me, 100)], 1);
    let spend = token_tx(&notary, &key, &[StateRef { txhash: issue.id(), index: 0 }], &[(&me, 60), (&holder_b, 40)], 2);
    let second = token_tx(&notary, &key, &[], &[(&me, 25)], 3);
    alice.ledger.record(&[], &[issue.clone(), spend.clone(), second.clone()]).await.unwrap();

    // Unconsumed (the default): the 60 of the spend and the second issue, in recording order.
    let (code, out, err) = cli(args(&["vault", "query", "--node", &dir, "--json"])).await;
    assert_eq!(code, 0, "{err}");
    let states = json(&out);
    let refs: Vec<&str> = states.as_array().unwrap().iter().map(|s| s["state_ref"].as_str().unwrap()).collect();
    assert_eq!(refs, vec![format!("{}(0)", spend.id()), format!("{}(0)", second.id())], "{out}");
    let first = &states[0];
    assert_eq!(first["status"], "unconsumed");
    assert_eq!(first["type_id"], TOKEN);
    assert_eq!(first["contract"], TOKEN);
    assert_eq!(first["notary"], notary.name.to_string());
    assert_eq!(first["consumed_at"], serde_json::Value::Null);
    assert_eq!(
        first["participants"],
        json!([{ "owning_key": key.public().to_string(), "name": ALICE.parse::<treaty_core::X500Name>().unwrap().to_string() }])
    );
    assert_eq!(first["fungible"]["quantity"], 60);
    assert_eq!(first["fungible"]["token"], "TOKEN");
    assert_eq!(first["fungible"]["owner_key"], key.public().to_string());
    let bytes = hex::decode(first["state_bytes_hex"].as_str().unwrap()).unwrap();
    let decoded: TransactionState = treaty_core::encoding::decode(&bytes).unwrap();
    assert_eq!(decoded.data.unpack::<Token>().unwrap().amount, 60, "the state bytes decode to the state");

    // Consumed: the issue, consumed by the spend.
    let (code, out, err) = cli(args(&["vault", "query", "--node", &dir, "--status", "consumed", "--json"])).await;
    assert_eq!(code, 0, "{err}");
    let consumed = json(&out);
    assert_eq!(consumed.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(consumed[0]["state_ref"], format!("{}(0)", issue.id()));
    assert_eq!(consumed[0]["status"], "consumed");
    assert_eq!(consumed[0]["consuming_tx"], spend.id().to_string());
    assert!(consumed[0]["consumed_at"].is_string());

    // All, a state type with no states, and the table.
    let (code, out, _) = cli(args(&["vault", "query", "--node", &dir, "--status", "all", "--json"])).await;
    assert_eq!((code, json(&out).as_array().unwrap().len()), (0, 3));
    let (code, out, _) = cli(args(&["vault", "query", "--node", &dir, "--state-type", "no.Such", "--json"])).await;
    assert_eq!((code, json(&out)), (0, json!([])));
    let (code, out, err) = cli(args(&["vault", "query", "--node", &dir])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{}(0)", second.id())) && out.contains("25 TOKEN") && out.contains("2 state(s)"), "{out}");
    assert!(!out.contains(&issue.id().to_string()), "consumed states are not shown by default: {out}");

    // --where: fungible quantity, participant (by key; names are resolved through the network
    // map), a time range, and/or; --sort.
    let refs = |out: &str| json(out).as_array().unwrap().iter().map(|s| s["state_ref"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let big = r#"{"fungible": {"token": "TOKEN", "min_quantity": 50}}"#;
    let (code, out, err) = cli(args(&["vault", "query", "--node", &dir, "--where", big, "--json"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(refs(&out), vec![format!("{}(0)", spend.id())], "only the 60 is at least 50");
    let mine = format!(r#"{{"and": [{{"participant": "{}"}}, {{"recorded": {{"until": "2999-01-01T00:00:00Z"}}}}]}}"#, key.public());
    let (code, out, err) =
        cli(args(&["vault", "query", "--node", &dir, "--status", "all", "--where", &mine, "--sort", "quantity desc", "--json"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(refs(&out), vec![format!("{}(0)", issue.id()), format!("{}(0)", spend.id()), format!("{}(0)", second.id())], "100, 60, 25");
    let future = r#"{"or": [{"recorded": {"from": "2999-01-01T00:00:00Z"}}, {"external_id": "none"}]}"#;
    let (code, out, _) = cli(args(&["vault", "query", "--node", &dir, "--where", future, "--json"])).await;
    assert_eq!((code, json(&out)), (0, json!([])));
    for (bad, why) in [
        ("{not json", "--where is not JSON"),
        (r#"{"fungible": {"min_quantity": -5}}"#, "where.fungible.min_quantity: expected a non-negative integer"),
        (r#"{"participant": "O=Nobody,L=Nowhere,C=GB"}"#, "is not a party this node knows"),
        (r#"{"column": {"name": "no_such", "eq": 1}}"#, "no_such"),
    ] {
        let (code, _, err) = cli(args(&["vault", "query", "--node", &dir, "--where", bad])).await;
        assert_ne!(code, 0, "{bad}");
        assert!(err.contains(why), "{bad}: {err}");
    }
    let (code, _, err) = cli(args(&["vault", "query", "--node", &dir, "--sort", "quantity sideways"])).await;
    assert_ne!(code, 0);
    assert!(err.contains("sideways"), "{err}");

    // Balances: 60 + 25 per token and issuer.
    let (code, out, err) = cli(args(&["vault", "balances", "--node", &dir, "--json"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out),
        json!([{ "token": "TOKEN", "issuer": ISSUER, "quantity": "85", "raw_quantity": "85", "fraction_digits": 0, "states": 2 }])
    );
    let (code, out, _) = cli(args(&["vault", "balances", "--node", &dir])).await;
    assert_eq!(code, 0);
    assert!(out.contains("TOKEN") && out.contains(ISSUER) && out.contains("85"), "{out}");

    // Aggregates: grouped by status and token over every state, one total, and refusals.
    let (code, out, err) =
        cli(args(&["vault", "aggregate", "--node", &dir, "--status", "all", "--group-by", "status,token", "--json"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out),
        json!([
            { "group": { "status": "consumed", "token": "TOKEN" }, "count": 1, "sum": "100" },
            { "group": { "status": "unconsumed", "token": "TOKEN" }, "count": 2, "sum": "85" },
        ])
    );
    let small = r#"{"fungible": {"max_quantity": 30}}"#;
    let (code, out, err) = cli(args(&["vault", "aggregate", "--node", &dir, "--where", small, "--json"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out), json!([{ "group": {}, "count": 1, "sum": "25" }]));
    let (code, out, _) = cli(args(&["vault", "aggregate", "--node", &dir, "--group-by", "issuer"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("ISSUER") && out.contains(ISSUER) && out.contains("85"), "{out}");
    let (code, _, err) = cli(args(&["vault", "aggregate", "--node", &dir, "--group-by", "colour"])).await;
    assert_ne!(code, 0);
    assert!(err.contains("colour"), "an unknown column is named: {err}");

    // Track: the snapshot count, then each new transaction, one JSON object per line. New
    // spends are recorded until the CLI (which subscribes at some point) has seen one.
    let tracker = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || run(&["vault", "track", "--node", &dir, "--updates", "1", "--json"])
    });
    let mut recorded = Vec::new();
    let mut coin = StateRef { txhash: second.id(), index: 0 };
    while !tracker.is_finished() {
        assert!(recorded.len() < 200, "treaty vault track saw none of {} transactions", recorded.len());
        let next = token_tx(&notary, &key, &[coin], &[(&me, 25)], 10 + recorded.len() as u8);
        alice.ledger.record(&[], std::slice::from_ref(&next)).await.unwrap();
        coin = StateRef { txhash: next.id(), index: 0 };
        recorded.push(next.id().to_string());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out, err) = tracker.await.unwrap();
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], json!({ "snapshot_count": 2 }), "the spend's 60 and one 25 (spent and re-created by each new transaction)");
    let tx = lines[1]["tx_id"].as_str().unwrap();
    let i = recorded.iter().position(|r| r == tx).expect("the update is one of the recorded transactions");
    assert_eq!(lines[1]["produced"][0]["state_ref"], format!("{tx}(0)"));
    assert_eq!(lines[1]["consumed"][0]["consuming_tx"], tx);
    let spent = if i == 0 { format!("{}(0)", second.id()) } else { format!("{}(0)", recorded[i - 1]) };
    assert_eq!(lines[1]["consumed"][0]["state_ref"], spent);
    let (code, out, _) = cli(args(&["vault", "track", "--node", &dir, "--state-type", "no.Such", "--updates", "0"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("0 unconsumed state(s) match now"), "{out}");

    // Refusals: an unknown status names the allowed ones; a user without ReadVault is told.
    let (code, _, err) = cli(args(&["vault", "query", "--node", &dir, "--status", "spent"])).await;
    assert_ne!(code, 0);
    assert!(err.contains("\"spent\" is not one of unconsumed, consumed, all"), "{err}");
    let d = dir.clone();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || run_as("viewer", "viewer-secret", &["vault", "balances", "--node", &d])).await.unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("RPC user \"viewer\" lacks permission ReadVault"), "{err}");

    // Node not running: the same error as every RPC command.
    alice.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _, flow_err) = cli(args(&["flow", "list", "--node", &dir])).await;
    assert_ne!(code, 0);
    let (code, _, err) = cli(args(&["vault", "query", "--node", &dir])).await;
    assert_ne!(code, 0);
    assert_eq!(err, flow_err);
    assert!(err.contains("is the node running?"), "{err}");
    let (code, _, err) = cli(args(&["vault", "balances", "--node", &dir])).await;
    assert_ne!(code, 0);
    assert_eq!(err, flow_err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_vault_counts_the_snapshot_then_streams_each_transaction() {
    let net = Net::new("vaulttrack", &[ALICE]);
    net.edit_config(ALICE, |t| t.replacen("[rpc]\n", "[rpc]\ntls = false\n", 1).replace("tls = true\n", ""));
    let node_dir = net.node_dir(ALICE);
    let alice = start(&net).await;
    let key = treaty_node::keys::identity_key(&node_dir).unwrap();
    let me: AbstractParty = Party { name: ALICE.parse().unwrap(), owning_key: key.public() }.into();
    let notary = Party { name: "O=Notary,L=Zurich,C=CH".parse().unwrap(), owning_key: treaty_testkit::key(3).unwrap().public() };
    let issue = token_tx(&notary, &key, &[], &[(&me, 100)], 1);
    alice.ledger.record(&[], std::slice::from_ref(&issue)).await.unwrap();

    let rpc = net.config(ALICE)["rpc"]["listen"].as_str().unwrap().to_string();
    let password = std::fs::read_to_string(node_dir.join("rpc-password")).unwrap().trim().to_string();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{rpc}")).unwrap().connect().await.unwrap();
    let mut client = pb::node_client::NodeClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("treaty-user", "admin".parse().unwrap());
        r.metadata_mut().insert("treaty-password", password.parse().unwrap());
        Ok(r)
    });
    let bad = client.query_vault(pb::VaultQueryRequest { status: "spent".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let bad = client.query_vault(pb::VaultQueryRequest { page_size: 20_000, ..Default::default() }).await.unwrap_err();
    assert!(bad.message().contains("VAULT-PAGE-SIZE"), "{bad:?}");
    // Small pages: the stream walks them all.
    let mut states =
        client.query_vault(pb::VaultQueryRequest { status: "all".into(), page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    let mut n = 0;
    while states.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 1);

    let mut feed = client.track_vault(pb::VaultQueryRequest::default()).await.unwrap().into_inner();
    let first = feed.message().await.unwrap().unwrap();
    assert_eq!(first.event, Some(pb::vault_update_message::Event::SnapshotCount(1)));
    let spend = token_tx(&notary, &key, &[StateRef { txhash: issue.id(), index: 0 }], &[(&me, 70), (&me, 30)], 2);
    alice.ledger.record(&[], std::slice::from_ref(&spend)).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), feed.message()).await.unwrap().unwrap().unwrap();
    let Some(pb::vault_update_message::Event::Update(update)) = next.event else { panic!("an update, not {next:?}") };
    assert_eq!(update.tx_id, spend.id().to_string());
    assert_eq!(update.produced.iter().map(|s| s.output_index).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(update.consumed.len(), 1);
    assert_eq!(update.consumed[0].tx_id, issue.id().to_string());
    assert_eq!(update.consumed[0].consuming_tx, spend.id().to_string());
    alice.stop();
}
