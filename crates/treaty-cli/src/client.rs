//! Connecting the CLI to a node's client RPC, as its node directory describes it.
//!
//! The address and whether to use TLS come from NODE_DIR/node.toml (`[rpc] listen`, `tls`).
//! Over TLS the CLI trusts the node CA in NODE_DIR/certs/node-ca.der (or the CA file in
//! `TREATY_RPC_CA`, PEM or DER) and checks that the certificate names the address it dials.
//! Who the CLI is: a client certificate (`TREATY_RPC_CERT` and `TREATY_RPC_KEY`, PEM) for
//! mutual TLS; else `TREATY_RPC_USER` / `TREATY_RPC_PASSWORD`, by default the administrator
//! that `treaty network bootstrap` created (password in NODE_DIR/rpc-password).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use treaty_node::config::NodeConfig;
use treaty_rpc::v1::node_client::NodeClient;

type Ascii = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// Adds the RPC user name and password (when there are any) to every call.
#[derive(Clone)]
pub struct Credentials {
    user: Option<Ascii>,
    password: Option<Ascii>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(user) = &self.user {
            request.metadata_mut().insert("treaty-user", user.clone());
        }
        if let Some(password) = &self.password {
            request.metadata_mut().insert("treaty-password", password.clone());
        }
        Ok(request)
    }
}

/// A connected client.
pub type Client = NodeClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credentials>>;

fn ascii(what: &str, v: &str) -> Result<Ascii> {
    v.parse().map_err(|_| anyhow!("the RPC {what} must be printable ASCII"))
}

/// A client certificate and key for mutual TLS, if `TREATY_RPC_CERT` is set.
fn client_certificate() -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let (Ok(cert), key) = (std::env::var("TREATY_RPC_CERT"), std::env::var("TREATY_RPC_KEY")) else {
        return Ok(None);
    };
    let key = key.map_err(|_| anyhow!("TREATY_RPC_CERT is set but TREATY_RPC_KEY (the certificate's private key, PEM) is not"))?;
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("TREATY_RPC_CERT {cert}: not a readable PEM certificate ({e})"))?;
    if chain.is_empty() {
        bail!("TREATY_RPC_CERT {cert}: no PEM certificate in it");
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| anyhow!("TREATY_RPC_KEY {key}: not a readable PEM private key ({e})"))?;
    Ok(Some((chain, key)))
}

/// Password credentials: `TREATY_RPC_USER` (default `admin`) and `TREATY_RPC_PASSWORD`, else
/// the administrator's password in NODE_DIR/rpc-password.
fn password_credentials(node_dir: &Path) -> Result<Credentials> {
    let user = std::env::var("TREATY_RPC_USER").unwrap_or_else(|_| "admin".into());
    let password = match std::env::var("TREATY_RPC_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            let file = node_dir.join("rpc-password");
            std::fs::read_to_string(&file)
                .with_context(|| {
                    format!(
                        "no RPC credentials: set TREATY_RPC_PASSWORD (or TREATY_RPC_CERT and TREATY_RPC_KEY), or keep the administrator's password in {}",
                        file.display()
                    )
                })?
                .trim()
                .to_string()
        }
    };
    Ok(Credentials { user: Some(ascii("user name", &user)?), password: Some(ascii("password", &password)?) })
}

/// The CA the CLI trusts for the node's RPC certificate: `TREATY_RPC_CA`, else the node CA.
fn trusted_ca(node_dir: &Path) -> Result<(PathBuf, CertificateDer<'static>)> {
    let path = std::env::var_os("TREATY_RPC_CA").map(PathBuf::from).unwrap_or_else(|| node_dir.join("certs").join("node-ca.der"));
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read the CA to trust for RPC, {}", path.display()))?;
    let der = if bytes.starts_with(b"-----BEGIN") {
        CertificateDer::from_pem_slice(&bytes).map_err(|e| anyhow!("{}: not a PEM certificate ({e})", path.display()))?
    } else {
        CertificateDer::from(bytes)
    };
    Ok((path, der))
}

/// Opens TCP then TLS to the node; remembers a handshake failure so `connect` can tell it
/// from a node that is not running.
#[derive(Clone)]
struct TlsConnect {
    address: SocketAddr,
    name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    failure: Arc<Mutex<Option<String>>>,
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send>>;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for TlsConnect {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.address).await?;
            tcp.set_nodelay(true)?;
            match tokio_rustls::TlsConnector::from(this.config.clone()).connect(this.name.clone(), tcp).await {
                Ok(tls) => Ok(hyper_util::rt::TokioIo::new(tls)),
                Err(e) => {
                    if let Ok(mut f) = this.failure.lock() {
                        *f = Some(e.to_string());
                    }
                    Err(e)
                }
            }
        })
    }
}

/// Connects to the RPC of the node in `node_dir`.
pub async fn connect(node_dir: &Path) -> Result<Client> {
    let config = NodeConfig::load(&node_dir.join("node.toml"))?;
    let not_running = || {
        format!(
            "cannot reach {}'s RPC at {}; is the node running? (treaty node run --config {})",
            config.legal_name,
            config.rpc,
            node_dir.join("node.toml").display()
        )
    };
    if !config.rpc_tls {
        let credentials = password_credentials(node_dir)?;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", config.rpc))?;
        return match endpoint.connect().await {
            Ok(channel) => Ok(NodeClient::with_interceptor(channel, credentials)),
            Err(e) => bail!("{}: {}", not_running(), root_cause(&e)),
        };
    }
    let (ca_file, ca) = trusted_ca(node_dir)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| anyhow!("{}: not a CA certificate rustls can use ({e})", ca_file.display()))?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let (mut tls, credentials) = match client_certificate()? {
        Some((chain, key)) => {
            let user = std::env::var("TREATY_RPC_USER").ok().map(|u| ascii("user name", &u)).transpose()?;
            let config = builder.with_client_auth_cert(chain, key).context("TREATY_RPC_CERT and TREATY_RPC_KEY do not go together")?;
            (config, Credentials { user, password: None })
        }
        None => (builder.with_no_client_auth(), password_credentials(node_dir)?),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    // A node listening on every interface is reached, and named in its certificate, as 127.0.0.1.
    let ip = if config.rpc.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { config.rpc.ip() };
    let connector = TlsConnect {
        address: SocketAddr::new(ip, config.rpc.port()),
        name: ServerName::IpAddress(ip.into()),
        config: Arc::new(tls),
        failure: Arc::default(),
    };
    let failure = connector.failure.clone();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", connector.address))?;
    match endpoint.connect_with_connector(connector).await {
        Ok(channel) => Ok(NodeClient::with_interceptor(channel, credentials)),
        Err(e) => match failure.lock().ok().and_then(|mut f| f.take()) {
            Some(handshake) => bail!(
                "TLS with {}'s RPC at {} failed: {handshake} (the CLI trusts the CA in {}; the node's certificate is {})",
                config.legal_name,
                config.rpc,
                ca_file.display(),
                node_dir.join(treaty_node::rpc_tls::CERTIFICATE).display()
            ),
            None => bail!("{}: {}", not_running(), root_cause(&e)),
        },
    }
}

/// The innermost cause of a connection error ("Connection refused"): the layers above it
/// repeat it with less to say.
fn root_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> &'a (dyn std::error::Error + 'static) {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause
}

/// The gRPC status message, without transport noise.
pub fn rpc(e: tonic::Status) -> anyhow::Error {
    anyhow!("{}", e.message())
}
