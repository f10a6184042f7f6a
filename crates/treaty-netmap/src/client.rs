//! The network map client: plain HTTP/1.1 over a fresh TCP connection per request, each
//! request bounded by a timeout covering connect, response and body.
//!
//! The client checks that documents fetched by hash have that hash, but not their signatures:
//! that is the reader's job, against the keys it trusts (see [`crate::follower`]).

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use treaty_core::{SecureHash, encoding};
use treaty_net::signed::Signed;

use crate::{NetmapError, signed_hash};

/// The default bound on one request: connect, send, and receive the whole response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest response body accepted (64 MiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The result of a conditional map fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The map has not changed since the entity tag given (HTTP 304).
    NotModified,
    /// The current map document (signature not yet checked) and its entity tag.
    Map {
        /// The signed [`NetworkMap`](crate::NetworkMap).
        signed: Signed,
        /// The entity tag to send as `If-None-Match` next time.
        etag: String,
    },
}

/// A client of one network map.
#[derive(Clone, Debug)]
pub struct MapClient {
    url: String,
    host: String,
    port: u16,
    authority: String,
    timeout: Duration,
}

/// Aborts a spawned task when dropped (the connection driver of one request).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse_url(url: &str) -> Result<(String, u16, String), NetmapError> {
    let bad = |reason: &str| NetmapError::BadUrl { url: url.to_string(), reason: reason.to_string() };
    let rest = match url.strip_prefix("http://") {
        Some(rest) => rest,
        None if url.starts_with("https://") => {
            return Err(bad("https is not supported: the map serves only signed documents, over plain HTTP"));
        }
        None => return Err(bad("the scheme must be http://")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '#', '@']) {
        return Err(bad("only a base URL is accepted: no path, query, fragment or user info"));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| bad("unclosed '[' in an IPv6 address"))?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(|| bad("expected :port after the IPv6 address"))?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => return Err(bad("an IPv6 address must be in brackets: http://[::1]:port")),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
    };
    Ok((host.to_string(), port, authority.to_string()))
}

impl MapClient {
    /// A client of the map at `url`, which must be `http://host:port` (a trailing `/` is
    /// allowed; the port defaults to 80). Requests time out after [`DEFAULT_TIMEOUT`].
    pub fn new(url: &str) -> Result<MapClient, NetmapError> {
        let (host, port, authority) = parse_url(url)?;
        Ok(MapClient { url: format!("http://{authority}"), host, port, authority, timeout: DEFAULT_TIMEOUT })
    }

    /// The same client with another bound on each request (connect, send, whole response).
    pub fn with_timeout(mut self, timeout: Duration) -> MapClient {
        self.timeout = timeout;
        self
    }

    /// The map's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Publishes a signed node info. A refusal ([`NetmapError::Refused`]) carries the map's
    /// explanation.
    pub async fn publish(&self, signed: &Signed) -> Result<(), NetmapError> {
        let body = Bytes::from(encoding::encode(signed));
        let (status, _, body) = self.request(Method::POST, "/network-map/publish", None, body).await?;
        if status == StatusCode::OK { Ok(()) } else { Err(self.status_error(status, &body)) }
    }

    /// Fetches the map document, conditionally if `if_none_match` (an entity tag from an
    /// earlier fetch) is given.
    pub async fn fetch_map(&self, if_none_match: Option<&str>) -> Result<Fetched, NetmapError> {
        let (status, headers, body) = self.request(Method::GET, "/network-map", if_none_match, Bytes::new()).await?;
        match status {
            StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified),
            StatusCode::OK => {
                let signed: Signed = encoding::decode(&body).map_err(|e| self.invalid("network map", e.to_string()))?;
                let etag = headers
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("\"{}\"", SecureHash::sha256(&body)));
                Ok(Fetched::Map { signed, etag })
            }
            _ => Err(self.status_error(status, &body)),
        }
    }

    /// Fetches the signed node info with this hash (as listed on the map).
    pub async fn node_info(&self, hash: &SecureHash) -> Result<Signed, NetmapError> {
        self.document("node-info", "node info", hash).await
    }

    /// Fetches the signed network parameters with this hash (as listed on the map).
    pub async fn parameters(&self, hash: &SecureHash) -> Result<Signed, NetmapError> {
        self.document("network-parameters", "network parameters", hash).await
    }

    /// Fetches the signed revocation list with this hash (as listed on the map).
    pub async fn revocations(&self, hash: &SecureHash) -> Result<Signed, NetmapError> {
        self.document("revocations", "revocation list", hash).await
    }

    async fn document(&self, segment: &str, what: &'static str, hash: &SecureHash) -> Result<Signed, NetmapError> {
        let path = format!("/network-map/{segment}/{hash}");
        let (status, _, body) = self.request(Method::GET, &path, None, Bytes::new()).await?;
        match status {
            StatusCode::OK => {
                let signed: Signed = encoding::decode(&body).map_err(|e| self.invalid(what, e.to_string()))?;
                let actual = signed_hash(&signed);
                if actual != *hash {
                    return Err(self.invalid(what, format!("asked for {hash}, got a document hashing to {actual}")));
                }
                Ok(signed)
            }
            StatusCode::NOT_FOUND => Err(NetmapError::NotFound { url: self.url.clone(), what, hash: *hash }),
            _ => Err(self.status_error(status, &body)),
        }
    }

    fn invalid(&self, what: &'static str, reason: String) -> NetmapError {
        NetmapError::Invalid { url: self.url.clone(), what, reason }
    }

    fn unreachable(&self, reason: String) -> NetmapError {
        NetmapError::Unreachable { url: self.url.clone(), reason }
    }

    fn status_error(&self, status: StatusCode, body: &[u8]) -> NetmapError {
        let mut message = String::from_utf8_lossy(body).trim().to_string();
        if message.len() > 2000 {
            let mut cut = 2000;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        if status.is_client_error() {
            NetmapError::Refused { url: self.url.clone(), status: status.as_u16(), message }
        } else {
            NetmapError::ServerError { url: self.url.clone(), status: status.as_u16(), message }
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        if_none_match: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), NetmapError> {
        let exchange = async {
            let stream = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| self.unreachable(format!("cannot connect to {}:{}: {e}", self.host, self.port)))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| self.unreachable(format!("HTTP handshake failed: {e}")))?;
            let _driver = AbortOnDrop(tokio::spawn(async move {
                let _ = connection.await;
            }));
            let mut request = Request::builder().method(method).uri(path).header(HOST, &self.authority);
            if !body.is_empty() {
                request = request.header(CONTENT_TYPE, "application/octet-stream");
            }
            if let Some(tag) = if_none_match {
                request = request.header(IF_NONE_MATCH, tag);
            }
            let request = request.body(Full::new(body)).map_err(|e| self.invalid("request", format!("cannot build the request: {e}")))?;
            let response = sender.send_request(request).await.map_err(|e| self.unreachable(format!("request failed: {e}")))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| self.unreachable(format!("cannot read the response: {e}")))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self.unreachable(format!("no response within {} ms", self.timeout.as_millis()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = MapClient::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!((c.url(), c.host.as_str(), c.port), ("http://127.0.0.1:8080", "127.0.0.1", 8080));
        assert_eq!(MapClient::new("http://map.example").unwrap().port, 80);
        assert_eq!(MapClient::new("http://[::1]:9").unwrap().host, "::1");
        for bad in ["https://a:1", "ftp://a:1", "http://", "http://a:1/x", "http://a:x", "http://a:0", "http://::1:9", "a:1"] {
            let e = MapClient::new(bad).unwrap_err();
            assert!(matches!(e, NetmapError::BadUrl { .. }), "{bad}: {e}");
        }
    }
}
