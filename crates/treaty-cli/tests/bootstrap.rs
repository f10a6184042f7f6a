//! `treaty network bootstrap`, run as a user runs it, and its output checked with the same code
//! nodes will use to check each other.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use treaty_core::{NetworkParameters, encoding};
use treaty_net::map;
use treaty_net::pki::{self, CertRole, RevocationList};
use treaty_net::signed::Signed;
use treaty_node::config::NodeConfig;

fn scratch(name: &str) -> treaty_testkit::Scratch {
    treaty_testkit::scratch!(&format!("bootstrap-{name}"))
}

fn treaty(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_treaty")).args(args).output().expect("runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn bootstrap(dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["network", "bootstrap", "--dir", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = treaty(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("one JSON document")
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_bootstrapped_network_is_internally_consistent() {
    let dir = scratch("consistent");
    let doc =
        bootstrap(&dir, &["--node", "O=Alice,L=London,C=GB", "--node", "O=Bob,L=New York,C=US", "--notary", "O=Notary,L=Zurich,C=CH"]);
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let root = read(dir.join("network/root.der"));
    let signed: Signed = encoding::decode(&read(dir.join("network/network-parameters.signed"))).unwrap();
    for n in nodes {
        let node_dir = PathBuf::from(n["dir"].as_str().unwrap());
        let config = NodeConfig::load(&node_dir.join("node.toml")).unwrap();
        assert_eq!(config.legal_name.to_string(), n["name"].as_str().unwrap());
        // Parameters verify with the key the node is told to trust.
        let params: NetworkParameters = map::verify_parameters(&signed, &config.network_map_key).unwrap();
        assert_eq!(params.notaries.len(), 1);
        // The TLS and identity chains lead to this network's root and name this node.
        for (leaf, role) in [("tls", CertRole::Tls), ("identity", CertRole::LegalIdentity)] {
            let chain = vec![
                read(node_dir.join(format!("certs/{leaf}.der"))),
                read(node_dir.join("certs/node-ca.der")),
                read(node_dir.join("certs/doorman.der")),
            ];
            let v = pki::verify(&chain, &root, role, Some(&config.legal_name), &RevocationList::default(), now()).unwrap();
            let key = treaty_net::keystore::read_key(&node_dir.join(format!("keys/{leaf}.key"))).unwrap();
            assert_eq!(v.key, key.public(), "{leaf} certificate certifies the key on disk");
        }
        // Keys are readable by the owner only.
        for entry in std::fs::read_dir(node_dir.join("keys")).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        if n["notary"].is_string() {
            let id = treaty_net::keystore::read_key(&node_dir.join("keys/identity.key")).unwrap();
            assert_eq!(params.notaries[0].identity.owning_key, id.public(), "a single notary is its own service identity");
            assert!(config.raw.notary.is_some());
        }
    }
}

#[test]
fn a_notary_cluster_shares_one_service_identity() {
    let dir = scratch("cluster");
    let doc = bootstrap(&dir, &["--notary", "O=Raft Notary,L=Zurich,C=CH", "--notary-cluster", "3", "--notary-validating"]);
    let members: Vec<&Value> = doc["nodes"].as_array().unwrap().iter().collect();
    assert_eq!(members.len(), 3);
    let signed: Signed = encoding::decode(&read(dir.join("network/network-parameters.signed"))).unwrap();
    let params: NetworkParameters = encoding::decode(&signed.raw).unwrap();
    assert!(params.notaries[0].validating);
    let names: Vec<String> = members.iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
    let listed: Vec<String> = params.notaries[0].members.iter().map(ToString::to_string).collect();
    assert_eq!(listed, names, "the parameters name the members clients ask");
    for m in members {
        let d = PathBuf::from(m["dir"].as_str().unwrap());
        let service = treaty_net::keystore::read_key(&d.join("keys/service.key")).unwrap();
        assert_eq!(params.notaries[0].identity.owning_key, service.public());
        assert!(m["name"].as_str().unwrap().starts_with("CN=Replica "));
        // Each member hosts a replica of the cluster, knowing all three.
        let config = NodeConfig::load(&d.join("node.toml")).unwrap();
        let cluster = config.cluster.as_ref().expect("a cluster member");
        assert_eq!(cluster.replicas.len(), 3);
        assert_eq!(cluster.replicas[&cluster.id].1, config.legal_name);
    }
}

#[test]
fn two_networks_on_one_machine_use_different_ports() {
    let (a, b) = (scratch("ports-a"), scratch("ports-b"));
    let ports = |doc: &Value| -> Vec<String> {
        let mut v: Vec<String> = doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| [n["p2p"].as_str().unwrap().to_string(), n["rpc"].as_str().unwrap().to_string()])
            .collect();
        v.push(doc["network_map"].as_str().unwrap().trim_start_matches("http://").to_string());
        v
    };
    let pa = ports(&bootstrap(&a, &["--node", "O=Alice,L=London,C=GB", "--notary", "O=Notary,L=Zurich,C=CH"]));
    // The first network runs (its ports are taken) while the second is bootstrapped.
    let running: Vec<std::net::TcpListener> = pa.iter().map(|p| std::net::TcpListener::bind(p.as_str()).expect(p)).collect();
    let pb = ports(&bootstrap(&b, &["--node", "O=Alice,L=London,C=GB", "--notary", "O=Notary,L=Zurich,C=CH"]));
    drop(running);
    assert!(pa.iter().all(|p| !pb.contains(p)), "{pa:?} vs {pb:?}");
    let unique: std::collections::BTreeSet<&String> = pa.iter().collect();
    assert_eq!(unique.len(), pa.len(), "no port is used twice within a network");
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let dir = scratch("bad");
    let d = dir.to_str().unwrap();
    let (code, _, err) = treaty(&["network", "bootstrap", "--dir", d, "--node", "O=Alice,L=London"]);
    assert_ne!(code, 0);
    assert!(err.contains("--node \"O=Alice,L=London\" is not a valid legal name") && err.contains("missing required attribute C"), "{err}");
    let (code, _, err) =
        treaty(&["network", "bootstrap", "--dir", d, "--node", "O=Alice,L=London,C=GB", "--node", "O=Alice,L=London,C=GB"]);
    assert_ne!(code, 0);
    assert!(err.contains("given twice"), "{err}");
    let (code, _, err) = treaty(&["network", "bootstrap", "--dir", d]);
    assert_ne!(code, 0);
    assert!(err.contains("at least one --node or --notary"), "{err}");
    bootstrap(&dir, &["--node", "O=Alice,L=London,C=GB"]);
    let (code, _, err) = treaty(&["network", "bootstrap", "--dir", d, "--node", "O=Bob,L=Paris,C=FR"]);
    assert_ne!(code, 0);
    assert!(err.contains("already exists and is not empty"), "{err}");
}
