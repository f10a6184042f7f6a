//! Links: a connection carrying whole frames. The messenger is written against [`Link`] and
//! [`Connector`], so it runs over mutual TLS ([`TlsConnector`], what nodes use) or over the
//! simulated network in [`crate::sim`] (tests and teaching).

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use treaty_core::X500Name;

use crate::transport::{self, TlsIdentity, TransportError};

/// A connection carrying whole frames, in order.
pub trait Link: Send + 'static {
    /// Sends one frame.
    fn send(&mut self, frame: Vec<u8>) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Receives the next frame; an error means the link is unusable.
    fn recv(&mut self) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// Opens links to peers.
pub trait Connector: Send + Sync + 'static {
    /// The links it opens.
    type Link: Link;
    /// Connects to `address`, which must prove to be `expected`.
    fn connect(&self, address: &str, expected: &X500Name) -> impl Future<Output = Result<Self::Link, TransportError>> + Send;
}

/// Length-delimited frames ([`transport::write_frame`]) over a byte stream.
pub struct FramedLink<S> {
    stream: S,
    limit: u64,
}

impl<S> FramedLink<S> {
    /// Frames over `stream`; incoming frames over `limit` bytes are refused.
    pub fn new(stream: S, limit: u64) -> FramedLink<S> {
        FramedLink { stream, limit }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Link for FramedLink<S> {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), TransportError> {
        transport::write_frame(&mut self.stream, &frame).await
    }
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        transport::read_frame(&mut self.stream, self.limit).await
    }
}

/// Opens mutual-TLS links with [`transport::connect`].
pub struct TlsConnector {
    identity: TlsIdentity,
    limit: u64,
}

impl TlsConnector {
    /// A connector proving `identity`; frames are capped at `limit` bytes.
    pub fn new(identity: TlsIdentity, limit: u64) -> TlsConnector {
        TlsConnector { identity, limit }
    }
}

impl Connector for TlsConnector {
    type Link = FramedLink<tokio_rustls::client::TlsStream<TcpStream>>;

    async fn connect(&self, address: &str, expected: &X500Name) -> Result<Self::Link, TransportError> {
        let stream = transport::connect(address, &self.identity, expected).await?;
        Ok(FramedLink::new(stream, self.limit))
    }
}

/// A link accepted by a [`TlsListener`].
pub type TlsServerLink = FramedLink<tokio_rustls::server::TlsStream<TcpStream>>;

/// Accepts mutual-TLS connections and hands each verified link to `on_link` with the
/// peer's legal name. Handshakes run concurrently; a failed handshake is logged and dropped.
pub async fn serve_tls<F, Fut>(listener: TcpListener, identity: &TlsIdentity, limit: u64, on_link: F) -> Result<(), TransportError>
where
    F: Fn(TlsServerLink, X500Name) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = transport::acceptor(identity)?;
    let on_link = Arc::new(on_link);
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let on_link = on_link.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), transport::accept(&acceptor, tcp)).await;
            match handshake {
                Ok(Ok((tls, peer))) => on_link(FramedLink::new(tls, limit), peer).await,
                Ok(Err(e)) => tracing::warn!("refused connection from {from}: {e}"),
                Err(_) => tracing::warn!("refused connection from {from}: TLS handshake timed out"),
            }
        });
    }
}
