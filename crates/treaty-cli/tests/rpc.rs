//! Client RPC over real processes: attachments up and down, shutdown (drained or not), TLS
//! and mutual TLS, through the `treaty` CLI as operators use it (and a raw gRPC client where
//! the CLI is too well-behaved to show a refusal).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ALICE, BOB, Net, add_user, json, run, run_as, run_env};
use treaty_core::SecureHash;
use treaty_rpc::v1 as pb;

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn attachments_upload_and_download_by_id_and_refusals_name_the_problem() {
    let net = Net::new("attachments", &[ALICE]);
    add_user(&net, ALICE, "viewer", Some("viewer-secret"), None, &["ReadFlows"]);
    let _map = net.map();
    let _alice = net.start(ALICE);
    let node = net.node(ALICE);

    // A real contract bundle: its id is the SHA-256 of its bytes, and the same bytes give the
    // same id however often they are uploaded.
    let bundle = treaty_testkit::token_bundle();
    let file = write(&net.dir.join("token.bundle"), &bundle);
    let id = SecureHash::sha256(&bundle).to_string();
    let (code, out, err) = run(&["attachment", "upload", "--node", &node, &file, "--json"]);
    assert_eq!(code, 0, "{err}");
    let first = json(&out);
    assert_eq!(first["attachment_id"], id.as_str(), "{first}");
    assert_eq!(first["newly_stored"], true);
    assert_eq!(first["size"], bundle.len());
    assert_eq!(first["contracts"], serde_json::json!([treaty_testkit::TOKEN]));
    let (code, out, err) = run(&["attachment", "upload", "--node", &node, &file]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), id, "the text form prints the id alone");
    assert!(err.contains("already stored"), "{err}");

    // Download: the same bytes.
    let out_file = net.dir.join("downloaded.bundle");
    let (code, out, err) = run(&["attachment", "download", "--node", &node, &id, "--out", out_file.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["size"], bundle.len());
    assert_eq!(std::fs::read(&out_file).unwrap(), bundle);

    // Unknown and malformed ids.
    let unknown = SecureHash::sha256(b"never uploaded").to_string();
    let elsewhere = net.dir.join("unknown.bundle");
    let (code, _, err) = run(&["attachment", "download", "--node", &node, &unknown, "--out", elsewhere.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("no attachment {unknown} on this node")), "{err}");
    assert!(!elsewhere.exists(), "nothing is written for a failed download");
    let (code, _, err) = run(&["attachment", "download", "--node", &node, "abc", "--out", elsewhere.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("\"abc\" is not an attachment id"), "{err}");

    // Not a bundle: the sandbox's reason.
    let garbage = write(&net.dir.join("garbage.bin"), b"this is not a tar archive, let alone a bundle");
    let (code, _, err) = run(&["attachment", "upload", "--node", &node, &garbage]);
    assert_ne!(code, 0);
    assert!(err.contains("attachment refused") && err.contains("ATTACHMENT-"), "{err}");

    // Over the network's limit (10 MiB transactions, 16 MiB attachments: the smaller applies).
    let big = write(&net.dir.join("big.bin"), &vec![0u8; 10 * 1024 * 1024 + 1]);
    let (code, _, err) = run(&["attachment", "upload", "--node", &node, &big]);
    assert_ne!(code, 0);
    assert!(err.contains("over the network's limit of 10485760 bytes (network parameter max_transaction_size)"), "{err}");

    // Permissions: named when missing.
    let (code, _, err) = run_as("viewer", "viewer-secret", &["attachment", "upload", "--node", &node, &file]);
    assert_ne!(code, 0);
    assert!(err.contains("RPC user \"viewer\" lacks permission UploadAttachment"), "{err}");
    let (code, _, err) =
        run_as("viewer", "viewer-secret", &["attachment", "download", "--node", &node, &id, "--out", elsewhere.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("RPC user \"viewer\" lacks permission DownloadAttachment"), "{err}");

    // The node is unharmed by all of it.
    let (code, out, err) = run(&["attachment", "upload", "--node", &node, &file, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["attachment_id"], id.as_str());
}

/// A plain-text node (allowed on loopback when configured) and a raw gRPC client that
/// streams without announcing its size, or announces a size it does not send: the node
/// refuses both mid-stream and stays well.
#[test]
fn plain_text_rpc_on_loopback_refuses_oversized_and_cut_short_uploads_mid_stream() {
    let net = Net::new("plainrpc", &[ALICE]);
    net.edit_config(ALICE, |t| t.replacen("[rpc]\n", "[rpc]\ntls = false\n", 1).replace("tls = true\n", ""));
    let _alice = net.start(ALICE);
    let rpc = net.config(ALICE)["rpc"]["listen"].as_str().unwrap().to_string();
    let password = std::fs::read_to_string(net.node_dir(ALICE).join("rpc-password")).unwrap().trim().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{rpc}")).unwrap().connect().await.unwrap();
        let mut client = treaty_rpc::v1::node_client::NodeClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("treaty-user", "admin".parse().unwrap());
            r.metadata_mut().insert("treaty-password", password.parse().unwrap());
            Ok(r)
        });
        let chunks = |n: usize, announced: u64| {
            let chunk = vec![7u8; 64 * 1024];
            tonic::codegen::tokio_stream::iter(
                (0..n).map(move |i| pb::AttachmentChunk { data: chunk.clone(), total_size: if i == 0 { announced } else { 0 } }),
            )
        };
        // 11 MiB, size not announced: refused once past 10 MiB.
        let e = client.upload_attachment(chunks(176, 0)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("more than 10485760 bytes, over the network's limit"), "{}", e.message());
        // Announced 1 MiB, sent 64 KiB: refused rather than stored in part.
        let e = client.upload_attachment(chunks(1, 1024 * 1024)).await.unwrap_err();
        assert!(e.message().contains("announced 1048576 bytes but 65536 arrived"), "{}", e.message());
        // Still well: a real bundle goes in.
        let bundle = treaty_testkit::token_bundle();
        let one = pb::AttachmentChunk { data: bundle.clone(), total_size: bundle.len() as u64 };
        let up = client.upload_attachment(tonic::codegen::tokio_stream::iter([one])).await.unwrap().into_inner();
        assert_eq!(up.attachment_id, SecureHash::sha256(&bundle).to_string());
    });
    // The CLI follows node.toml: plain text here.
    let (code, out, err) = run(&["flow", "list", "--node", &net.node(ALICE), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["flows"], serde_json::json!([]));
}

/// A node serves at most `rpc.max_connections` client connections at once, TLS handshakes
/// included: one more is closed at once (not left open until the 10 s handshake timeout), and
/// a place given back is taken again.
#[test]
fn rpc_connections_past_the_limit_are_closed_at_once_and_freed_places_are_reused() {
    use std::io::Read;
    let net = Net::new("rpclimit", &[ALICE]);
    net.edit_config(ALICE, |t| t.replace("max_connections = 256\n", "max_connections = 2\n"));
    let _alice = net.start(ALICE);
    let rpc = net.config(ALICE)["rpc"]["listen"].as_str().unwrap().to_string();
    // Two connections that never begin their TLS handshake hold both places.
    let held: Vec<std::net::TcpStream> = (0..2).map(|_| std::net::TcpStream::connect(&rpc).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut third = std::net::TcpStream::connect(&rpc).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let began = std::time::Instant::now();
    let read = third.read(&mut [0u8; 16]);
    let closed = matches!(read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(closed && began.elapsed() < Duration::from_secs(3), "the third connection was not closed at once: {read:?}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = run(&["flow", "list", "--node", &net.node(ALICE), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["flows"], serde_json::json!([]));
}

#[test]
fn a_drained_shutdown_waits_for_running_flows_and_the_process_exits_cleanly() {
    let net = Net::new("shutdown", &[ALICE, BOB]);
    add_user(&net, ALICE, "viewer", Some("viewer-secret"), None, &["ReadFlows", "Drain"]);
    let _map = net.map();
    let mut alice = net.start(ALICE);
    let bob = net.start(BOB);
    net.await_known(ALICE, BOB);
    bob.stop();
    let node = net.node(ALICE);

    // Stopping a node is a permission of its own.
    let (code, _, err) = run_as("viewer", "viewer-secret", &["node", "shutdown", "--node", &node, "--drain"]);
    assert_ne!(code, 0);
    assert!(err.contains("RPC user \"viewer\" lacks permission Shutdown"), "{err}");
    assert!(alice.running());

    // An Echo to Bob, who is down: it waits.
    let args = format!(r#"{{"to": "{BOB}", "message": "are you there?"}}"#);
    let (code, _, err) = run(&["flow", "start", "--node", &node, "Echo", "--args", &args]);
    assert_eq!(code, 0, "{err}");

    // Drained shutdown with a short timeout: the flow is still running, so the node stays up,
    // draining, and says so.
    let (code, out, err) = run(&["node", "shutdown", "--node", &node, "--drain", "--timeout", "1", "--json"]);
    assert_ne!(code, 0);
    let status = json(&out);
    assert_eq!(status["stopping"], false, "{status}");
    assert_eq!(status["running_flows"], 1, "{status}");
    assert_eq!(status["draining"], true, "{status}");
    assert!(err.contains("1 flow(s) still running") && err.contains("stays draining"), "{err}");
    assert!(alice.running());
    let (code, _, err) = run(&["flow", "start", "--node", &node, "Echo", "--args", &args]);
    assert_ne!(code, 0);
    assert!(err.contains("draining"), "{err}");

    // Bob is back: the flow completes, and the drained shutdown stops Alice's process.
    let mut bob = net.start(BOB);
    let (code, out, err) = run(&["node", "shutdown", "--node", &node, "--drain", "--timeout", "60", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status = json(&out);
    assert_eq!(
        (status["stopping"].as_bool(), status["stopped"].as_bool(), status["running_flows"].as_u64()),
        (Some(true), Some(true), Some(0))
    );
    assert!(alice.wait_exit(Duration::from_secs(10)).success());
    // The flow finished before the node stopped.
    let (code, out, err) = run(&["flow", "list", "--node", &net.node(BOB), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["flows"][0]["status"], "COMPLETED", "Bob's responder: {out}");

    // Without --drain: stops at once, also cleanly.
    let (code, out, err) = run(&["node", "shutdown", "--node", &net.node(BOB)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stopped"), "{out}");
    assert!(bob.wait_exit(Duration::from_secs(10)).success());
    // And a stopped node is reported as such.
    let (code, _, err) = run(&["node", "shutdown", "--node", &net.node(BOB)]);
    assert_ne!(code, 0);
    assert!(err.contains("is the node running?"), "{err}");
}

/// A self-signed client certificate and its key, PEM, written into `dir`; returns the
/// certificate's and key's paths and its SHA-256 fingerprint in openssl's form (AB:CD:…).
fn client_certificate(dir: &Path, stem: &str) -> (String, String, String) {
    let made = rcgen::generate_simple_self_signed(vec![stem.to_string()]).unwrap();
    let cert = write(&dir.join(format!("{stem}.crt")), made.cert.pem().as_bytes());
    let key = write(&dir.join(format!("{stem}.key")), made.signing_key.serialize_pem().as_bytes());
    let hex = SecureHash::sha256(made.cert.der()).to_string().to_uppercase();
    let fingerprint = hex.as_bytes().chunks(2).map(|p| std::str::from_utf8(p).unwrap()).collect::<Vec<_>>().join(":");
    (cert, key, fingerprint)
}

#[test]
fn rpc_over_tls_trusts_the_node_ca_and_client_certificates_stand_for_their_users() {
    let net = Net::new("tls", &[ALICE, BOB]);
    assert_eq!(net.config(ALICE)["rpc"]["tls"].as_bool(), Some(true), "bootstrap turns TLS on");
    assert!(net.node_dir(ALICE).join("certs/rpc.der").exists());
    let (ops_cert, ops_key, ops_fingerprint) = client_certificate(&net.dir, "ops");
    add_user(&net, ALICE, "ops", None, Some(&ops_fingerprint), &["ReadFlows"]);
    let _map = net.map();
    let _alice = net.start(ALICE);
    let node = net.node(ALICE);
    let args = format!(r#"{{"to": "{BOB}", "message": "x"}}"#);

    // Trusting another CA (Bob's node CA): the handshake fails, saying why.
    let bob_ca = net.node_dir(BOB).join("certs/node-ca.der");
    let (code, _, err) = run_env(&[("TREATY_RPC_CA", bob_ca.to_str().unwrap())], &["flow", "list", "--node", &node]);
    assert_ne!(code, 0);
    assert!(err.contains("TLS with") && err.contains("invalid peer certificate") && err.contains("node-ca.der"), "{err}");

    // A plain-text client cannot talk to a TLS port.
    let rpc = net.config(ALICE)["rpc"]["listen"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let plain = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{rpc}")).unwrap().connect().await?;
        let mut client = treaty_rpc::v1::node_client::NodeClient::new(channel);
        client.get_node_info(pb::Empty {}).await.map_err(|e| e.to_string()).map(|_| ()).map_err(std::io::Error::other)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    assert!(plain.is_err(), "a plain-text client was answered over a TLS port");

    // Mutual TLS: the certificate is the credential (no password anywhere), and the user has
    // only its own permissions.
    let as_ops = [("TREATY_RPC_CERT", ops_cert.as_str()), ("TREATY_RPC_KEY", ops_key.as_str()), ("TREATY_RPC_PASSWORD", "not used")];
    let (code, out, err) = run_env(&as_ops, &["flow", "list", "--node", &node, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["flows"], serde_json::json!([]));
    let (code, _, err) = run_env(&as_ops, &["flow", "start", "--node", &node, "Echo", "--args", &args]);
    assert_ne!(code, 0);
    assert!(err.contains("RPC user \"ops\" lacks permission StartFlow.Echo"), "{err}");
    let (code, _, err) = run_env(&[as_ops[0], as_ops[1], ("TREATY_RPC_USER", "admin")], &["flow", "list", "--node", &node]);
    assert_ne!(code, 0);
    assert!(err.contains("the client certificate is RPC user \"ops\"'s, but the call names user \"admin\""), "{err}");

    // A certificate no user has is refused, named by its fingerprint.
    let (other_cert, other_key, other_fingerprint) = client_certificate(&net.dir, "stranger");
    let (code, _, err) =
        run_env(&[("TREATY_RPC_CERT", other_cert.as_str()), ("TREATY_RPC_KEY", other_key.as_str())], &["flow", "list", "--node", &node]);
    assert_ne!(code, 0);
    let hex = other_fingerprint.replace(':', "");
    assert!(err.contains(&format!("the client certificate (SHA-256 {hex}) is not an RPC user's")), "{err}");
    // A certificate without its key is refused by the CLI before it connects.
    let (code, _, err) = run_env(&[("TREATY_RPC_CERT", other_cert.as_str())], &["flow", "list", "--node", &node]);
    assert_ne!(code, 0);
    assert!(err.contains("TREATY_RPC_KEY"), "{err}");

    // The password user still works over TLS.
    let (code, _, err) = run(&["flow", "list", "--node", &node]);
    assert_eq!(code, 0, "{err}");
}
