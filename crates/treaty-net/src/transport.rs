//! Mutual-TLS connections between nodes, and length-delimited frames over them.
//!
//! Both sides present their TLS certificate chain and check the other's with [`pki::verify`]:
//! the chain must lead to the network's root and nothing in it may be revoked; a client also
//! insists that the server is the X.500 name it meant to reach, and a server learns the
//! client's name from its certificate. TLS 1.3 only, `ring` provider. Frames are a 4-byte
//! big-endian length and that many bytes; a frame over the limit (from the network
//! parameters) is refused before it is read, and only that connection is dropped.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use treaty_core::{KeyPair, X500Name};

use crate::pki::{self, CertRole, PkiError, RevocationList};

/// Why a connection or a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Socket error (includes TLS handshake refusals, with rustls's reason).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration error.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The peer's certificate was not acceptable.
    #[error("peer certificate refused: {0}")]
    Peer(#[from] PkiError),
    /// A frame over the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Claimed size.
        size: u64,
        /// Limit.
        limit: u64,
    },
}

/// What a node proves itself with and trusts.
#[derive(Clone)]
pub struct TlsIdentity {
    /// TLS certificate chain: TLS certificate, node CA, doorman (DER).
    pub chain: Vec<Vec<u8>>,
    /// The TLS private key.
    pub key: Arc<KeyPair>,
    /// The network root.
    pub root: Arc<Vec<u8>>,
    /// The network's current revocation list.
    pub revoked: Arc<RwLock<RevocationList>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn now(t: UnixTime) -> u64 {
    t.as_secs()
}

fn refuse(e: PkiError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

fn check(
    identity: &TlsIdentity,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    expected: Option<&X500Name>,
    at: UnixTime,
) -> Result<(), rustls::Error> {
    let chain: Vec<Vec<u8>> = std::iter::once(end_entity).chain(intermediates).map(|c| c.to_vec()).collect();
    let revoked = identity.revoked.read().map(|r| r.clone()).unwrap_or_default();
    pki::verify(&chain, &identity.root, CertRole::Tls, expected, &revoked, now(at)).map(|_| ()).map_err(refuse)
}

/// Checks a peer's TLS chain with [`pki::verify`]. One type serves both ends: as a client's
/// server verifier it requires `expected`; as a server's client verifier `expected` is `None`
/// and any member of the network may connect.
struct PeerVerifier {
    identity: TlsIdentity,
    expected: Option<X500Name>,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(identity: &TlsIdentity, expected: Option<X500Name>, provider: &CryptoProvider) -> Arc<PeerVerifier> {
        Arc::new(PeerVerifier { identity: identity.clone(), expected, algs: provider.signature_verification_algorithms })
    }

    fn check(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], at: UnixTime) -> Result<(), rustls::Error> {
        check(&self.identity, end_entity, intermediates, self.expected.as_ref(), at)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
}

impl std::fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerVerifier(expected: {:?})", self.expected.as_ref().map(ToString::to_string))
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        at: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, at).map(|_| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        at: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, at).map(|_| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn certs_and_key(identity: &TlsIdentity) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let certs = identity.chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let der = pki::pkcs8_der(&identity.key).map_err(|e| TransportError::Config(e.to_string()))?;
    Ok((certs, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))))
}

/// Turns a handshake failure caused by our own certificate check back into that check's error.
fn handshake_error(e: std::io::Error) -> TransportError {
    let pki = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).and_then(|r| match r {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => o.0.downcast_ref::<PkiError>().cloned(),
        _ => None,
    });
    match pki {
        Some(p) => TransportError::Peer(p),
        None => TransportError::Io(e),
    }
}

/// Completes the TLS handshake of an accepted TCP connection; returns the stream and the
/// peer's verified legal name.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, X500Name), TransportError> {
    tcp.set_nodelay(true)?;
    let tls = acceptor.accept(tcp).await.map_err(handshake_error)?;
    let peer = peer_name(&tls)?;
    Ok((tls, peer))
}

/// A TLS acceptor for incoming connections from any member of the network.
pub fn acceptor(identity: &TlsIdentity) -> Result<tokio_rustls::TlsAcceptor, TransportError> {
    let p = provider();
    let verifier = PeerVerifier::new(identity, None, &p);
    let (certs, key) = certs_and_key(identity)?;
    let config = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TransportError::Config(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Connects to `addr`, which must prove to be `expected` on this network.
pub async fn connect(
    addr: &str,
    identity: &TlsIdentity,
    expected: &X500Name,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TransportError> {
    let p = provider();
    let verifier = PeerVerifier::new(identity, Some(expected.clone()), &p);
    let (certs, key) = certs_and_key(identity)?;
    let config = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    // The name is checked by our verifier against the X.500 subject, not as a DNS name.
    let server_name = ServerName::try_from("treaty-peer").map_err(|e| TransportError::Config(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await.map_err(handshake_error)
}

/// The legal name of the peer on an accepted connection (its certificate was verified).
pub fn peer_name(conn: &tokio_rustls::server::TlsStream<TcpStream>) -> Result<X500Name, TransportError> {
    let certs = conn.get_ref().1.peer_certificates().ok_or_else(|| TransportError::Config("peer presented no certificate".into()))?;
    let leaf = certs.first().ok_or_else(|| TransportError::Config("peer presented no certificate".into()))?;
    Ok(pki::certificate_name(leaf)?)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> Result<(), TransportError> {
    let len =
        u32::try_from(payload.len()).map_err(|_| TransportError::FrameTooLarge { size: payload.len() as u64, limit: u32::MAX as u64 })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame of at most `limit` bytes; a larger one is refused without reading it.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limit: u64) -> Result<Vec<u8>, TransportError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let size = u64::from(u32::from_be_bytes(len));
    if size > limit {
        return Err(TransportError::FrameTooLarge { size, limit });
    }
    let mut buf = vec![0u8; size as usize];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}
