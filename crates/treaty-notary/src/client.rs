//! The calling side of a notary server ([`crate::server`]): one mutual-TLS connection, many
//! requests in flight on it.

use std::time::Duration;

use treaty_core::{X500Name, encoding};
use treaty_net::transport::{self, TlsIdentity};

use crate::mux::{BoxStream, Link, LinkError};
use crate::server::{MAX_RESPONSE_BYTES, RequestRejected, ServerRequest, ServerResponse, ServerStatus, WholeTransactionRequest};
use crate::service::{NotarisationRequest, NotaryAnswer};

/// Why a call to a notary server got no answer about the transaction.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached, or did not prove to be the notary expected.
    #[error("cannot connect to the notary at {address}: {reason}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        reason: String,
    },
    /// The connection broke, or the server did not answer in time; the request may or may
    /// not have been committed (asking again gets the answer it would have had).
    #[error("no answer from the notary: {0}")]
    NoAnswer(String),
    /// The server did not take the frame as a request (too large, undecodable).
    #[error("{code}: {rejected}", code = .0.code(), rejected = .0)]
    Rejected(RequestRejected),
    /// The server answered something this call did not ask for.
    #[error("unexpected answer from the notary: {0}")]
    Unexpected(String),
}

/// A request encoded ahead of time (a benchmark prepares its requests before the clock starts).
#[derive(Clone, Debug)]
pub struct EncodedRequest(Vec<u8>);

impl EncodedRequest {
    /// Encodes `request`.
    pub fn new(request: &ServerRequest) -> EncodedRequest {
        EncodedRequest(encoding::encode(request))
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (never, for a real request).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A connection to a notary server.
pub struct NotaryClient {
    link: Link<ServerRequest, ServerResponse>,
    timeout: Duration,
}

impl NotaryClient {
    /// Connects as `identity` to the server at `address`, which must prove to be `notary`;
    /// each call waits up to `timeout` for its answer.
    pub async fn connect(address: &str, identity: &TlsIdentity, notary: &X500Name, timeout: Duration) -> Result<NotaryClient, ClientError> {
        let stream = transport::connect(address, identity, notary)
            .await
            .map_err(|e| ClientError::Connect { address: address.to_string(), reason: e.to_string() })?;
        let stream: BoxStream = Box::new(stream);
        Ok(NotaryClient { link: Link::start(stream, MAX_RESPONSE_BYTES), timeout })
    }

    /// Whether the connection still works (as far as is known).
    pub fn is_connected(&self) -> bool {
        self.link.is_alive()
    }

    async fn call(&self, request: &EncodedRequest) -> Result<ServerResponse, ClientError> {
        let answer = self.link.send_encoded(&request.0).map_err(|e| ClientError::NoAnswer(e.to_string()))?;
        Link::<ServerRequest, ServerResponse>::wait(answer, self.timeout).await.map_err(|e: LinkError| ClientError::NoAnswer(e.to_string()))
    }

    /// Sends a request encoded ahead of time and returns the notary's answer to it.
    pub async fn notarise_encoded(&self, request: &EncodedRequest) -> Result<NotaryAnswer, ClientError> {
        match self.call(request).await? {
            ServerResponse::Answer(answer) => Ok(answer),
            ServerResponse::Rejected(r) => Err(ClientError::Rejected(r)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks a non-validating notary to notarise a tear-off.
    pub async fn notarise(&self, request: NotarisationRequest) -> Result<NotaryAnswer, ClientError> {
        self.notarise_encoded(&EncodedRequest::new(&ServerRequest::Notarise(request))).await
    }

    /// Asks a validating notary to verify and notarise a whole transaction.
    pub async fn notarise_whole(&self, request: WholeTransactionRequest) -> Result<NotaryAnswer, ClientError> {
        self.notarise_encoded(&EncodedRequest::new(&ServerRequest::NotariseWhole(Box::new(request)))).await
    }

    /// How the server is configured.
    pub async fn status(&self) -> Result<ServerStatus, ClientError> {
        match self.call(&EncodedRequest::new(&ServerRequest::Status)).await? {
            ServerResponse::Status(s) => Ok(s),
            ServerResponse::Rejected(r) => Err(ClientError::Rejected(r)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}
