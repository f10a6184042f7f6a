//! TLS for client RPC: the node's RPC certificate and the server's side of the handshake.
//!
//! The node serves RPC with `certs/rpc.der` (key `keys/rpc.key`): a P-256 certificate issued
//! by the node CA for the RPC address (its IP, 127.0.0.1, ::1 and `localhost`), with the
//! server-auth usage and no Treaty role, so it cannot pass for the node's peer-to-peer TLS
//! certificate. Bootstrap issues it; a node that lacks it issues it at start from its node CA.
//! Clients trust the node CA (`certs/node-ca.der`) or the network root, and check the address.
//! P-256 rather than Ed25519 for the leaf because common gRPC stacks (BoringSSL) do not offer
//! Ed25519 handshake signatures by default.
//!
//! Mutual TLS: the server asks every client for a certificate but does not require one. A
//! certificate is accepted in the handshake whoever issued it (the handshake proves the client
//! holds its key); who it stands for is decided per call by its SHA-256 fingerprint, against
//! the users' `certificate_sha256` ([`crate::rpc::RpcUsers`]), so a stranger's certificate
//! gets an error naming its fingerprint rather than a bare TLS alert.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use treaty_core::{KeyPair, SecureHash, X500Name};
use treaty_net::keystore;
use treaty_net::pki;

/// The RPC certificate, relative to the node directory.
pub const CERTIFICATE: &str = "certs/rpc.der";
/// The RPC certificate's key, relative to the node directory.
pub const KEY: &str = "keys/rpc.key";

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why RPC TLS could not be set up; every variant names the file or what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum RpcTlsError {
    /// A file could not be read or written.
    #[error("{file}: {error}")]
    Io {
        /// The file.
        file: String,
        /// The error.
        error: io::Error,
    },
    /// A key file.
    #[error(transparent)]
    Key(#[from] keystore::KeyStoreError),
    /// Issuing the certificate, or a certificate or key TLS cannot use.
    #[error("RPC certificate: {0}")]
    Certificate(String),
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, RpcTlsError> {
    let path = dir.join(file);
    std::fs::read(&path).map_err(|error| RpcTlsError::Io { file: path.display().to_string(), error })
}

fn rcgen_key(key: &KeyPair) -> Result<rcgen::KeyPair, RpcTlsError> {
    let alg = match key {
        KeyPair::Ed25519(_) => &rcgen::PKCS_ED25519,
        KeyPair::EcdsaP256(_) => &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let der = pki::pkcs8_der(key).map_err(|e| RpcTlsError::Certificate(e.to_string()))?;
    rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der.into(), alg).map_err(|e| RpcTlsError::Certificate(format!("key conversion: {e}")))
}

fn fresh_p256() -> Result<KeyPair, RpcTlsError> {
    // A random 32-byte seed is a valid P-256 scalar except with probability ~2^-32.
    for _ in 0..8 {
        if let Ok(k) = KeyPair::from_seed(treaty_core::SignatureScheme::EcdsaP256Sha256, rand::random()) {
            return Ok(k);
        }
    }
    Err(RpcTlsError::Certificate("could not draw a P-256 key".into()))
}

/// Issues an RPC server certificate for `name` at `listen`, signed by the node CA
/// (`node_ca_cert`, `node_ca_key`), valid from a day before `now_secs` for ten years.
pub fn issue(
    node_ca_cert: &[u8],
    node_ca_key: &KeyPair,
    name: &X500Name,
    listen: SocketAddr,
    now_secs: i64,
) -> Result<(Vec<u8>, KeyPair), RpcTlsError> {
    let key = fresh_p256()?;
    let mut p = rcgen::CertificateParams::default();
    let validity = pki::Validity::from_now(now_secs, 10);
    let time = |s: i64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(s.max(0) as u64);
    p.not_before = time(validity.not_before);
    p.not_after = time(validity.not_after);
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let mut dn = rcgen::DistinguishedName::new();
    if let Some(cn) = name.common_name() {
        dn.push(rcgen::DnType::CommonName, cn);
    }
    if let Some(ou) = name.organisation_unit() {
        dn.push(rcgen::DnType::OrganizationalUnitName, ou);
    }
    dn.push(rcgen::DnType::OrganizationName, name.organisation());
    dn.push(rcgen::DnType::LocalityName, name.locality());
    if let Some(st) = name.state() {
        dn.push(rcgen::DnType::StateOrProvinceName, st);
    }
    dn.push(rcgen::DnType::CountryName, name.country());
    p.distinguished_name = dn;
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    if !listen.ip().is_unspecified() && !ips.contains(&listen.ip()) {
        ips.insert(0, listen.ip());
    }
    p.subject_alt_names = ips.into_iter().map(rcgen::SanType::IpAddress).collect();
    let localhost = "localhost".try_into().map_err(|e| RpcTlsError::Certificate(format!("{e}")))?;
    p.subject_alt_names.push(rcgen::SanType::DnsName(localhost));
    p.use_authority_key_identifier_extension = true;
    let issuer = rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(node_ca_cert), rcgen_key(node_ca_key)?)
        .map_err(|e| RpcTlsError::Certificate(format!("the node CA certificate: {e}")))?;
    let cert = p.signed_by(&rcgen_key(&key)?, &issuer).map_err(|e| RpcTlsError::Certificate(e.to_string()))?;
    Ok((cert.der().to_vec(), key))
}

/// Issues and writes the RPC certificate and key of the node in `dir` unless both exist;
/// returns whether it issued them. Needs the node CA's key (`keys/node-ca.key`).
pub fn ensure_certificate(dir: &Path, name: &X500Name, listen: SocketAddr) -> Result<bool, RpcTlsError> {
    let (cert, key) = (dir.join(CERTIFICATE), dir.join(KEY));
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        (has_cert, _) => {
            let (present, missing) = if has_cert { (&cert, &key) } else { (&key, &cert) };
            return Err(RpcTlsError::Certificate(format!(
                "{} exists but {} does not; remove {} and restart to issue both afresh",
                present.display(),
                missing.display(),
                present.display()
            )));
        }
    }
    let ca_cert = read(dir, "certs/node-ca.der")?;
    let ca_key = keystore::read_key(&dir.join("keys/node-ca.key"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (der, rpc_key) = issue(&ca_cert, &ca_key, name, listen, now)?;
    keystore::write_key(&key, &rpc_key)?;
    std::fs::write(&cert, der).map_err(|error| RpcTlsError::Io { file: cert.display().to_string(), error })?;
    Ok(true)
}

/// The TLS acceptor for the RPC port of the node in `dir`: TLS 1.3, ALPN `h2`, the RPC
/// certificate with its chain (node CA, doorman), client certificates asked for, not required.
pub fn acceptor(dir: &Path) -> Result<tokio_rustls::TlsAcceptor, RpcTlsError> {
    let chain: Vec<CertificateDer<'static>> = [CERTIFICATE, "certs/node-ca.der", "certs/doorman.der"]
        .iter()
        .map(|f| read(dir, f).map(CertificateDer::from))
        .collect::<Result<_, _>>()?;
    let key = keystore::read_key(&dir.join(KEY))?;
    let der = pki::pkcs8_der(&key).map_err(|e| RpcTlsError::Certificate(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyClientCertificate { algs: provider.signature_verification_algorithms });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RpcTlsError::Certificate(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
        .map_err(|e| RpcTlsError::Certificate(format!("{}: {e}", dir.join(CERTIFICATE).display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts any client certificate whose key signs the handshake; the fingerprint decides later
/// who it is (see the module documentation).
#[derive(Debug)]
struct AnyClientCertificate {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Who is at the other end of an RPC connection (in every request's extensions).
#[derive(Clone, Debug)]
pub struct RpcPeer {
    /// The client's address.
    pub address: Option<SocketAddr>,
    /// SHA-256 of the client certificate presented in the TLS handshake, if any.
    pub certificate_sha256: Option<SecureHash>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted RPC connection, plain or TLS, with what is known about its peer.
pub struct RpcConnection {
    io: Io,
    peer: RpcPeer,
    /// Its place among the connections served at once, given back when it closes.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for RpcConnection {
    type ConnectInfo = RpcPeer;
    fn connect_info(&self) -> RpcPeer {
        self.peer.clone()
    }
}

impl AsyncRead for RpcConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RpcConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts connections on `listener`, with TLS when given an acceptor. Handshakes run
/// concurrently (each bounded by a timeout), so a slow client does not hold up others; failed
/// ones are logged and dropped. At most `max_connections` are open at once, handshakes
/// included: past that, a new connection is closed at once, and logged (once a second at
/// most), so a flood of connections cannot take the file descriptors the node needs. The
/// stream ends when its receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
) -> tokio_stream::wrappers::ReceiverStream<Result<RpcConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut last_refusal_logged: Option<std::time::Instant> = None;
    tokio::spawn(async move {
        loop {
            let (tcp, address) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("client RPC cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Dropping the socket closes it: the client sees the connection end.
                drop(tcp);
                if last_refusal_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_refusal_logged = Some(std::time::Instant::now());
                    tracing::warn!(
                        "client RPC: refused a connection from {address}: {max_connections} are open already (rpc.max_connections)"
                    );
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = tls.clone() else {
                let peer = RpcPeer { address: Some(address), certificate_sha256: None };
                if tx.send(Ok(RpcConnection { io: Io::Plain(tcp), peer, _slot: slot })).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let certificate_sha256 =
                            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| SecureHash::sha256(c.as_ref()));
                        let peer = RpcPeer { address: Some(address), certificate_sha256 };
                        let _ = tx.send(Ok(RpcConnection { io: Io::Tls(Box::new(stream)), peer, _slot: slot })).await;
                    }
                    Ok(Err(e)) => tracing::info!("client RPC: TLS handshake with {address} failed: {e}"),
                    Err(_) => tracing::info!("client RPC: {address} did not complete the TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
