//! Requests and responses as BCS in length-delimited frames, many in flight on one connection,
//! matched by a request id: the framing both of Treaty's notary protocols use (the Raft
//! replicas' protocol in [`crate::raft`], and the notary server's in [`crate::server`]).
//!
//! A frame is a 4-byte big-endian length and that many bytes ([`treaty_net::transport`]'s
//! framing); its payload is the BCS encoding of `(id, message)`: eight little-endian bytes of
//! id, then the message. The calling end ([`Link`]) numbers its requests and sends them in the
//! order of its calls; the answering end replies with the same id, in any order. Frames queued
//! while the writer is busy go out together, one flush for all of them.

use std::collections::HashMap;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};
use treaty_core::encoding;

/// A byte stream a protocol runs over (mutual TLS, an in-memory pipe, simulated TCP).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A boxed [`ByteStream`].
pub type BoxStream = Box<dyn ByteStream>;

/// Why a call on a link failed.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The peer could not be reached.
    #[error("cannot connect: {0}")]
    Unreachable(String),
    /// The connection broke before the answer came.
    #[error("the connection was lost")]
    Lost,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Aborts the tasks it holds when dropped.
pub(crate) struct Tasks(pub(crate) Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Writes queued frames (payloads; the length is added here), several per flush when they
/// queue up. Ends when every sender is gone (after shutting the stream down) or on an error.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(stream: W, mut frames: mpsc::UnboundedReceiver<Vec<u8>>) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(64 << 10, stream);
    while let Some(frame) = frames.recv().await {
        let mut next = Some(frame);
        while let Some(frame) = next {
            let len = u32::try_from(frame.len()).map_err(|_| io::Error::other("frame over 4 GiB"))?;
            out.write_all(&len.to_be_bytes()).await?;
            out.write_all(&frame).await?;
            next = frames.try_recv().ok();
        }
        out.flush().await?;
    }
    out.shutdown().await
}

/// Encodes `(id, message)` and queues it on `out`; a message that cannot be encoded (it never
/// happens for Treaty's types) or a closed writer drops the reply.
pub(crate) fn reply<M: Serialize>(out: &mpsc::UnboundedSender<Vec<u8>>, id: u64, message: &M) {
    if let Ok(frame) = encoding::try_encode(&(id, message)) {
        let _ = out.send(frame);
    }
}

/// One frame read by [`read_request`].
pub(crate) enum Incoming {
    /// A frame within the limit: its payload.
    Frame(Vec<u8>),
    /// A frame over the limit, read and thrown away: its request id (if it had one) and size,
    /// so the sender can be told.
    TooLarge {
        /// The id in the frame's first eight bytes.
        id: Option<u64>,
        /// The frame's size.
        size: u64,
    },
}

/// Reads one frame of at most `limit` bytes. A larger frame is not kept: its request id is
/// read, the rest is read in small pieces and dropped, and the caller can refuse that request
/// and carry on with the connection. Fails when the stream ends or breaks.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(r: &mut R, limit: u64) -> io::Result<Incoming> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let size = u64::from(u32::from_be_bytes(len));
    if size <= limit {
        let mut buf = vec![0u8; size as usize];
        r.read_exact(&mut buf).await?;
        return Ok(Incoming::Frame(buf));
    }
    let mut id = None;
    let mut rest = size;
    if size >= 8 {
        let mut bytes = [0u8; 8];
        r.read_exact(&mut bytes).await?;
        id = Some(u64::from_le_bytes(bytes));
        rest -= 8;
    }
    let skipped = tokio::io::copy(&mut (&mut *r).take(rest), &mut tokio::io::sink()).await?;
    if skipped < rest {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection ended inside a frame"));
    }
    Ok(Incoming::TooLarge { id, size })
}

type Pending<Resp> = Arc<Mutex<HashMap<u64, oneshot::Sender<Resp>>>>;

/// The calling end of one connection: requests (`Req`) go out in order, responses (`Resp`)
/// come back in any order, matched by id.
pub(crate) struct Link<Req, Resp> {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending<Resp>,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    _tasks: Tasks,
    _requests: PhantomData<fn(&Req)>,
}

impl<Req: Serialize, Resp: DeserializeOwned + Send + 'static> Link<Req, Resp> {
    /// Starts reading and writing `stream`; responses over `max_frame` bytes end the link.
    pub(crate) fn start(stream: BoxStream, max_frame: u64) -> Link<Req, Resp> {
        let (read, write) = tokio::io::split(stream);
        let (frames, queued) = mpsc::unbounded_channel();
        let pending: Pending<Resp> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let fail = {
            let (pending, alive) = (pending.clone(), alive.clone());
            move || {
                // Mark dead first, then drop the waiters: a sender that registers after this
                // sees the link dead (see `send_frame`).
                alive.store(false, Ordering::SeqCst);
                pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        };
        let writer = {
            let fail = fail.clone();
            tokio::spawn(async move {
                let _ = write_frames(write, queued).await;
                fail();
            })
        };
        let reader = {
            let pending = pending.clone();
            tokio::spawn(async move {
                let mut read = read;
                while let Ok(bytes) = treaty_net::transport::read_frame(&mut read, max_frame).await {
                    let Ok((id, response)) = encoding::decode_bounded::<(u64, Resp)>(&bytes, max_frame as usize) else { break };
                    if let Some(waiter) = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
                        let _ = waiter.send(response);
                    }
                }
                fail();
            })
        };
        Link { frames, pending, next_id: AtomicU64::new(0), alive, _tasks: Tasks(vec![writer, reader]), _requests: PhantomData }
    }

    /// Whether the connection still works (as far as is known).
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Queues `request` (requests go out in the order of these calls) and returns where its
    /// answer will arrive.
    pub(crate) fn send(&self, request: &Req) -> Result<oneshot::Receiver<Resp>, LinkError> {
        let body = encoding::try_encode(request).map_err(|_| LinkError::Lost)?;
        self.send_encoded(&body)
    }

    /// [`Link::send`] for a request already encoded (BCS of a `Req`): what a client that
    /// prepares its requests ahead of time sends.
    pub(crate) fn send_encoded(&self, body: &[u8]) -> Result<oneshot::Receiver<Resp>, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // BCS of the pair (id, request) is the id's eight little-endian bytes, then the request.
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(body);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if !self.is_alive() || self.frames.send(frame).is_err() {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(LinkError::Lost);
        }
        Ok(rx)
    }

    /// Waits up to `timeout` for the answer `send` promised.
    pub(crate) async fn wait(answer: oneshot::Receiver<Resp>, timeout: Duration) -> Result<Resp, LinkError> {
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(LinkError::Lost),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    /// Sends `request` and waits up to `timeout` for its answer.
    pub(crate) async fn call(&self, request: &Req, timeout: Duration) -> Result<Resp, LinkError> {
        Self::wait(self.send(request)?, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_oversized_frame_is_skipped_and_named_by_its_id() {
        let (mut near, mut far) = tokio::io::duplex(1 << 16);
        let big = encoding::encode(&(42u64, vec![7u8; 5000]));
        let small = encoding::encode(&(43u64, vec![1u8; 10]));
        tokio::spawn(async move {
            for frame in [big, small] {
                treaty_net::transport::write_frame(&mut near, &frame).await.unwrap();
            }
        });
        match read_request(&mut far, 1000).await.unwrap() {
            Incoming::TooLarge { id, size } => assert_eq!((id, size), (Some(42), 5000 + 8 + 2)),
            Incoming::Frame(_) => panic!("a frame over the limit was kept"),
        }
        match read_request(&mut far, 1000).await.unwrap() {
            Incoming::Frame(bytes) => assert_eq!(encoding::decode::<(u64, Vec<u8>)>(&bytes).unwrap(), (43, vec![1u8; 10])),
            Incoming::TooLarge { .. } => panic!("the next frame is read whole"),
        }
    }
}
