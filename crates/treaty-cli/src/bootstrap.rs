//! `treaty network bootstrap`: creates a local network in a directory.
//!
//! Layout (see docs/network.md):
//!
//! ```text
//! DIR/network/     root.der root.key doorman.der doorman.key network-map.der network-map.key
//!                  network-parameters.signed revocations.signed network.toml
//! DIR/<node>/      node.toml  rpc-password  keys/{node-ca,identity,tls,rpc}.key
//!                  certs/{root,doorman,node-ca,identity,tls,rpc}.der
//!                  (notary cluster members also hold keys/service.key and certs/service-*.der)
//! ```
//!
//! Every key is fresh and written with mode 0600. Ports are on 127.0.0.1, from a randomly
//! placed block checked free at bootstrap time, so two networks bootstrapped on one machine do
//! not collide.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use treaty_core::{KeyPair, NetworkParameters, NotaryInfo, Party, SignatureScheme, X500Name, encoding};
use treaty_net::map::kinds;
use treaty_net::pki::{self, CertRole, CertifiedKey, RevocationList, Validity};
use treaty_net::{keystore, signed::Signed};
use treaty_node::config::{
    DatabaseConfig, Listen, NetworkMapConfig, NodeConfig, NotaryConfig, ReplicaConfig, RpcConfig, RpcUser, hash_password,
};

/// What to bootstrap.
pub struct Request {
    /// Target directory (must not exist, or be empty).
    pub dir: PathBuf,
    /// Ordinary nodes.
    pub nodes: Vec<String>,
    /// Notaries.
    pub notaries: Vec<String>,
    /// Whether notaries validate.
    pub validating: bool,
    /// Members per notary (1: a single node; N ≥ 2: a cluster sharing one service identity).
    pub cluster: u32,
}

/// One created node, as reported.
#[derive(Serialize)]
pub struct CreatedNode {
    /// Legal name.
    pub name: String,
    /// Directory.
    pub dir: String,
    /// P2P address.
    pub p2p: String,
    /// RPC address.
    pub rpc: String,
    /// Notary service this node serves, if any.
    pub notary: Option<String>,
}

/// What was created.
#[derive(Serialize)]
pub struct Created {
    /// The network directory.
    pub dir: String,
    /// The network map URL.
    pub network_map: String,
    /// The network parameters hash.
    pub parameters_hash: String,
    /// Nodes.
    pub nodes: Vec<CreatedNode>,
}

fn fresh_key() -> Result<KeyPair> {
    Ok(KeyPair::from_seed(SignatureScheme::Ed25519, rand::random::<[u8; 32]>())?)
}

fn serial() -> [u8; 16] {
    let mut s = rand::random::<[u8; 16]>();
    s[0] &= 0x7f; // positive
    s
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn slug(name: &X500Name, taken: &mut BTreeSet<String>) -> String {
    let mut base: String = name.organisation().to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    if let Some(cn) = name.common_name() {
        base = format!("{base}-{}", cn.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect::<String>());
    }
    let base = base.trim_matches('-').to_string();
    let base = if base.is_empty() { "node".to_string() } else { base };
    let mut candidate = base.clone();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{base}-{n}");
        n += 1;
    }
    candidate
}

/// Finds `count` consecutive free ports on 127.0.0.1 in a randomly placed block.
fn free_ports(count: u16) -> Result<Vec<u16>> {
    // Outside the kernel's ephemeral range: outgoing connections (every client of every node)
    // take their local ports from it, so a node told to listen there can find its port taken
    // by the time it starts. Blocks of `block` consecutive ports, from 10000.
    let (lo, hi) = ephemeral_range();
    let block = count.div_ceil(10).max(1).saturating_mul(10);
    let starts: Vec<u16> = (10_000u32..65_536)
        .step_by(usize::from(block))
        .filter(|&start| {
            let end = start + u32::from(block);
            end <= u32::from(lo) || start > u32::from(hi)
        })
        .filter(|&start| start + u32::from(block) <= 65_536)
        .filter_map(|start| u16::try_from(start).ok())
        .collect();
    if starts.is_empty() {
        bail!("no block of {count} ports on 127.0.0.1 lies outside the ephemeral range {lo}-{hi}");
    }
    for _ in 0..64 {
        let base = starts[usize::from(rand::random::<u16>()) % starts.len()];
        let ports: Vec<u16> = (base..base + count).collect();
        if ports.iter().all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
            return Ok(ports);
        }
    }
    bail!("could not find {count} free ports on 127.0.0.1")
}

/// The kernel's ephemeral port range (Linux's default when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    let read = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let parsed = read.and_then(|t| {
        let mut it = t.split_whitespace().map(|n| n.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    });
    parsed.unwrap_or((32_768, 60_999))
}

/// Writes a file only its owner can read.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn parse_names(flag: &str, names: &[String]) -> Result<Vec<X500Name>> {
    names.iter().map(|n| n.parse::<X500Name>().with_context(|| format!("{flag} {n:?} is not a valid legal name"))).collect()
}

/// Creates the network.
pub fn bootstrap(req: &Request) -> Result<Created> {
    let nodes = parse_names("--node", &req.nodes)?;
    let notaries = parse_names("--notary", &req.notaries)?;
    if nodes.is_empty() && notaries.is_empty() {
        bail!("nothing to bootstrap: give at least one --node or --notary");
    }
    if req.cluster == 0 || req.cluster > 9 {
        bail!("--notary-cluster must be between 1 and 9, got {}", req.cluster);
    }
    let mut all = BTreeSet::new();
    for n in nodes.iter().chain(&notaries) {
        if !all.insert(n.clone()) {
            bail!("{n} is given twice: legal names must be unique on a network");
        }
    }
    if req.dir.exists() && std::fs::read_dir(&req.dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty; choose a new directory", req.dir.display());
    }
    let net_dir = req.dir.join("network");
    std::fs::create_dir_all(&net_dir).with_context(|| format!("cannot create {}", net_dir.display()))?;

    let validity = Validity::from_now(now_secs(), 10);
    let root = pki::root_ca("O=Treaty Root CA,L=London,C=GB".parse()?, fresh_key()?, validity, serial())?;
    let doorman = root.issue("O=Treaty Doorman,L=London,C=GB".parse()?, fresh_key()?, CertRole::DoormanCa, validity, serial())?;
    let map = root.issue("O=Treaty Network Map,L=London,C=GB".parse()?, fresh_key()?, CertRole::NetworkMap, validity, serial())?;
    for (stem, ck) in [("root", &root), ("doorman", &doorman), ("network-map", &map)] {
        write(&net_dir.join(format!("{stem}.der")), &ck.cert)?;
        keystore::write_key(&net_dir.join(format!("{stem}.key")), &ck.key)?;
    }

    // Members: ordinary nodes, then each notary's member nodes.
    struct Member {
        name: X500Name,
        notary: Option<(X500Name, bool)>,
    }
    let mut members: Vec<Member> = nodes.iter().map(|n| Member { name: n.clone(), notary: None }).collect();
    for n in &notaries {
        if req.cluster == 1 {
            members.push(Member { name: n.clone(), notary: Some((n.clone(), req.validating)) });
        } else {
            for i in 1..=req.cluster {
                let name = X500Name::new(
                    Some(format!("Replica {i}")),
                    n.organisation_unit().map(str::to_string),
                    n.organisation().into(),
                    n.locality().into(),
                    n.state().map(str::to_string),
                    n.country().into(),
                )?;
                members.push(Member { name, notary: Some((n.clone(), req.validating)) });
            }
        }
    }
    // Ports: the map, then p2p and rpc of each member, then the Raft replica of each cluster
    // member.
    let clustered = if req.cluster > 1 { members.iter().filter(|m| m.notary.is_some()).count() } else { 0 };
    let ports = free_ports(1 + 2 * members.len() as u16 + clustered as u16)?;
    let mut next_raft = 1 + 2 * members.len();
    let raft_ports: Vec<Option<u16>> = members
        .iter()
        .map(|m| {
            (req.cluster > 1 && m.notary.is_some()).then(|| {
                next_raft += 1;
                ports[next_raft - 1]
            })
        })
        .collect();
    // Each cluster's replicas: id (from 1, in member order), Raft address, member name.
    let replicas_of = |service: &X500Name| -> Vec<ReplicaConfig> {
        members
            .iter()
            .zip(&raft_ports)
            .filter(|(m, p)| p.is_some() && m.notary.as_ref().is_some_and(|(s, _)| s == service))
            .enumerate()
            .map(|(i, (m, p))| ReplicaConfig {
                id: i as u64 + 1,
                address: format!("127.0.0.1:{}", p.unwrap_or_default()),
                name: m.name.to_string(),
            })
            .collect()
    };
    let map_url = format!("http://127.0.0.1:{}", ports[0]);

    // Cluster service identities: one key per notary service, shared by its members.
    let mut services: Vec<(X500Name, CertifiedKey, CertifiedKey)> = Vec::new();
    if req.cluster > 1 {
        for n in &notaries {
            let ca = doorman.issue(n.clone(), fresh_key()?, CertRole::NodeCa, validity, serial())?;
            let id = ca.issue(n.clone(), fresh_key()?, CertRole::LegalIdentity, validity, serial())?;
            services.push((n.clone(), ca, id));
        }
    }

    let mut taken = BTreeSet::new();
    let mut created = Vec::new();
    let mut identities: Vec<(X500Name, treaty_core::PublicKey)> = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let dir = req.dir.join(slug(&m.name, &mut taken));
        let (keys, certs) = (dir.join("keys"), dir.join("certs"));
        for d in [&keys, &certs] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let node_ca = doorman.issue(m.name.clone(), fresh_key()?, CertRole::NodeCa, validity, serial())?;
        let identity = node_ca.issue(m.name.clone(), fresh_key()?, CertRole::LegalIdentity, validity, serial())?;
        let tls = node_ca.issue(m.name.clone(), fresh_key()?, CertRole::Tls, validity, serial())?;
        for (stem, ck) in [("node-ca", &node_ca), ("identity", &identity), ("tls", &tls)] {
            write(&certs.join(format!("{stem}.der")), &ck.cert)?;
            keystore::write_key(&keys.join(format!("{stem}.key")), &ck.key)?;
        }
        write(&certs.join("root.der"), &root.cert)?;
        write(&certs.join("doorman.der"), &doorman.cert)?;
        identities.push((m.name.clone(), identity.key.public()));
        if let Some((service, _)) = &m.notary
            && let Some((_, ca, id)) = services.iter().find(|(s, _, _)| s == service)
        {
            write(&certs.join("service-node-ca.der"), &ca.cert)?;
            write(&certs.join("service-identity.der"), &id.cert)?;
            keystore::write_key(&keys.join("service.key"), &id.key)?;
        }
        let (p2p, rpc) = (format!("127.0.0.1:{}", ports[1 + 2 * i]), format!("127.0.0.1:{}", ports[2 + 2 * i]));
        // An RPC administrator with a fresh password, kept beside the keys (mode 0600); the CLI
        // reads it from there.
        let password = hex::encode(rand::random::<[u8; 16]>());
        write_secret(&dir.join("rpc-password"), format!("{password}\n").as_bytes())?;
        let admin = RpcUser {
            name: "admin".into(),
            password_hash: Some(hash_password(&password).map_err(|e| anyhow::anyhow!("hashing the RPC password: {e}"))?),
            certificate_sha256: None,
            permissions: vec!["ALL".into()],
        };
        let config = NodeConfig {
            legal_name: m.name.to_string(),
            p2p: Listen { listen: p2p.clone() },
            rpc: RpcConfig {
                listen: rpc.clone(),
                tls: true,
                users: vec![admin],
                max_connections: treaty_node::config::DEFAULT_RPC_MAX_CONNECTIONS,
            },
            network_map: NetworkMapConfig { url: map_url.clone(), trusted_key: map.key.public().to_string(), poll_seconds: Some(2) },
            database: DatabaseConfig { url: "sqlite://node.db".into() },
            notary: m.notary.as_ref().map(|(s, v)| match raft_ports[i] {
                Some(port) => NotaryConfig {
                    validating: *v,
                    service_name: Some(s.to_string()),
                    raft_listen: Some(format!("127.0.0.1:{port}")),
                    replicas: replicas_of(s),
                },
                None => NotaryConfig { validating: *v, service_name: None, raft_listen: None, replicas: Vec::new() },
            }),
            // Off by default; docs/finance.md, "Keeping coins in shape".
            coins: None,
            // Off by default; docs/metrics.md.
            metrics: None,
        };
        write(&dir.join("node.toml"), config.to_toml().as_bytes())?;
        // RPC over TLS with a certificate from the node CA, for the RPC address.
        let rpc_addr = rpc.parse().with_context(|| format!("{rpc} is not host:port"))?;
        treaty_node::rpc_tls::ensure_certificate(&dir, &m.name, rpc_addr)?;
        created.push(CreatedNode {
            name: m.name.to_string(),
            dir: dir.display().to_string(),
            p2p,
            rpc,
            notary: m.notary.as_ref().map(|(s, _)| s.to_string()),
        });
    }
    // A single-node notary is its own service identity; a cluster's is the shared service key.
    let mut params = NetworkParameters { development: true, ..Default::default() };
    for n in &notaries {
        let service = services.iter().find(|(s, _, _)| s == n).map(|(_, _, id)| id.key.public());
        let own = identities.iter().find(|(m, _)| m == n).map(|(_, k)| k.clone());
        let owning_key = service.or(own).context("every notary has a service key or is a node")?;
        let member_names: Vec<X500Name> = if req.cluster > 1 {
            members.iter().filter(|m| m.notary.as_ref().is_some_and(|(s, _)| s == n)).map(|m| m.name.clone()).collect()
        } else {
            Vec::new()
        };
        params.notaries.push(NotaryInfo {
            identity: Party { name: n.clone(), owning_key },
            validating: req.validating,
            members: member_names,
        });
    }
    let signed_params = Signed::sign(kinds::NETWORK_PARAMETERS, &params, &map.key);
    write(&net_dir.join("network-parameters.signed"), &encoding::encode(&signed_params))?;
    // Each node starts from its own copy, so it can come up before the map does.
    for c in &created {
        write(&Path::new(&c.dir).join("network-parameters.signed"), &encoding::encode(&signed_params))?;
    }
    let revocations = Signed::sign(kinds::REVOCATION_LIST, &RevocationList::default(), &map.key);
    write(&net_dir.join("revocations.signed"), &encoding::encode(&revocations))?;
    let nodes_list: Vec<String> = created
        .iter()
        .map(|c| format!("\"{}\"", Path::new(&c.dir).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()))
        .collect();
    write(
        &net_dir.join("network.toml"),
        format!("# The network map of this local network.\nlisten = \"127.0.0.1:{}\"\nnodes = [{}]\n", ports[0], nodes_list.join(", "))
            .as_bytes(),
    )?;
    Ok(Created { dir: req.dir.display().to_string(), network_map: map_url, parameters_hash: params.hash().to_string(), nodes: created })
}
