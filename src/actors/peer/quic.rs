//! A PeerActor's QUIC connection (`udp://` links; see [`crate::quic`] for the design).
//!
//! - Setting up: the dialer connects through its UDP listener's endpoint and opens the control
//!   stream; the acceptor waits for the connection and that stream. Each step is bounded.
//! - The control stream is read and written exactly like a TCP socket (length-prefixed, the
//!   same codec and lanes), at a higher priority than data.
//! - Every `data` frame goes out on a unidirectional stream of its own ([`DataTx`]); queued
//!   and in-flight data is bounded in bytes, beyond it a frame is dropped and counted as on TCP.
//! - Data streams exist only once the link is Active: until then the peer may open none (its
//!   stream limit is 0) and an accepting side's connection window is 64 KiB
//!   ([`crate::quic::PRE_AUTH_WINDOW_BYTES`]), so a stranger that completes QUIC's handshake
//!   cannot make us hold more than that; a frame can never overtake the `welcome` that makes the
//!   link Active. At Active, [`crate::quic::open_for_data`] opens both up and
//!   [`spawn_data_reader`] starts accepting.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use log::debug;
use tokio::sync::mpsc;

use crate::proto::link::FIRST_MESSAGE_TIMEOUT_MS;

use super::writer::{DATA_QUEUE_BYTES, DATA_QUEUE_RECORDS};
use super::{PeerActor, CONNECT_TIMEOUT_MS};

/// Priority of the control stream's sending over data streams (quinn: higher goes first).
const CONTROL_PRIORITY: i32 = 1;

/// Upper bounds of the data streams' size classes, smallest first; a frame over the last one is
/// in the last class.
const SIZE_CLASSES: [usize; 3] = [1024, 16 * 1024, 256 * 1024];

/// Priorities one size class spans: the class's streams in the order they were written.
const CLASS_SPAN: i32 = 1 << 28;

/// The sending priorities of a link's data streams, all below [`CONTROL_PRIORITY`] (quinn sends
/// the highest priority with data to send first, and re-chooses for every packet): by size
/// class, smallest first, and within a class by the order the streams were written. So a
/// message waits only for messages of its own class or smaller queued before it, and a message
/// finishes as soon as its own bytes are out instead of when every message it shares the link
/// with is (round-robin), the way the TCP writer's data lane sends them.
#[derive(Debug, Default)]
pub(super) struct DataPriorities {
    /// Streams written so far in each class.
    written: [u32; SIZE_CLASSES.len() + 1],
}

impl DataPriorities {
    /// The priority of the next data stream, carrying `len` bytes. After 2^28 streams of one
    /// class the order within it starts over (a newer stream may then overtake older ones of
    /// its class once).
    pub fn next(&mut self, len: usize) -> i32 {
        let class = SIZE_CLASSES.iter().filter(|&&bound| len > bound).count();
        let n = &mut self.written[class];
        let within = (*n % CLASS_SPAN as u32) as i32;
        *n = n.wrapping_add(1);
        -(class as i32) * CLASS_SPAN - within
    }
}

/// A QUIC connection with its control stream.
pub(super) struct Opened {
    pub connection: quinn::Connection,
    /// The endpoint's address (status, punching).
    pub local: Option<SocketAddr>,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

async fn bounded<T, E: std::fmt::Display>(
    ms: u64,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    tokio::time::timeout(Duration::from_millis(ms), fut)
        .await
        .map_err(|_| format!("{what} timed out"))?
        .map_err(|e| format!("{what}: {e}"))
}

/// Dials `remote` through `endpoint` and opens the control stream.
pub(super) async fn dial(endpoint: quinn::Endpoint, remote: SocketAddr) -> Result<Opened, String> {
    let connecting = endpoint
        .connect(remote, crate::quic::SERVER_NAME)
        .map_err(|e| format!("connect: {e}"))?;
    let connection = bounded(CONNECT_TIMEOUT_MS, "quic handshake", connecting).await?;
    let (send, recv) = bounded(CONNECT_TIMEOUT_MS, "open stream", connection.open_bi()).await?;
    let _ = send.set_priority(CONTROL_PRIORITY);
    Ok(Opened {
        connection,
        local: endpoint.local_addr().ok(),
        send,
        recv,
    })
}

/// Completes an accepted connection and waits for the dialer's control stream (which arrives
/// with the first handshake message).
pub(super) async fn accept(
    connecting: quinn::Connecting,
    local: SocketAddr,
) -> Result<Opened, String> {
    let connection = bounded(CONNECT_TIMEOUT_MS, "quic handshake", connecting).await?;
    let (send, recv) = bounded(
        FIRST_MESSAGE_TIMEOUT_MS,
        "first stream",
        connection.accept_bi(),
    )
    .await?;
    let _ = send.set_priority(CONTROL_PRIORITY);
    Ok(Opened {
        connection,
        local: Some(local),
        send,
        recv,
    })
}

/// Closes a released connection; with `linger`, once the peer closed its side (it got our
/// `close` frame) or after [`super::CLOSE_LINGER_MS`]: closing at once could discard the
/// `close` frame in flight.
pub(super) fn close_later(connection: quinn::Connection, linger: bool) {
    if !linger {
        connection.close(0u32.into(), b"closed");
        return;
    }
    actix::spawn(async move {
        let linger = Duration::from_millis(super::CLOSE_LINGER_MS);
        let _ = tokio::time::timeout(linger, connection.closed()).await;
        connection.close(0u32.into(), b"closed");
    });
}

/// The data lane of a QUIC link: frames waiting for, or being written on, a stream of their own.
pub(super) struct DataTx {
    /// One frame each, in pieces written in order.
    tx: mpsc::Sender<Vec<Bytes>>,
    /// Bytes queued or still being handed to QUIC.
    bytes: Arc<AtomicUsize>,
}

/// What [`DataTx::send`] did with a frame.
pub(super) enum Queued {
    /// On its way.
    Yes,
    /// Over the byte or count bound: dropped (count it), the link stays up.
    Dropped,
    /// The connection is gone.
    Closed,
}

impl DataTx {
    /// Queues one encoded `data` frame, in pieces, for a stream of its own.
    pub fn send(&self, frame: Vec<Bytes>) -> Queued {
        let len: usize = frame.iter().map(Bytes::len).sum();
        let queued = self.bytes.load(Ordering::Relaxed);
        if queued > 0 && queued + len > DATA_QUEUE_BYTES {
            return Queued::Dropped;
        }
        match self.tx.try_send(frame) {
            Ok(()) => {
                self.bytes.fetch_add(len, Ordering::Relaxed);
                Queued::Yes
            }
            Err(mpsc::error::TrySendError::Full(_)) => Queued::Dropped,
            Err(mpsc::error::TrySendError::Closed(_)) => Queued::Closed,
        }
    }
}

/// Spawns, in the actor's context, the future that opens a stream per queued frame (waiting
/// when the peer's stream limit is reached: backpressure) and writes each on a task of its own,
/// so a large frame never holds up the ones behind it.
pub(super) fn spawn_data_writer(
    connection: quinn::Connection,
    ctx: &mut Context<PeerActor>,
) -> DataTx {
    let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(DATA_QUEUE_RECORDS);
    let bytes = Arc::new(AtomicUsize::new(0));
    let held = bytes.clone();
    let mut priorities = DataPriorities::default();
    let fut = async move {
        while let Some(mut frame) = rx.recv().await {
            let len: usize = frame.iter().map(Bytes::len).sum();
            let mut stream = match connection.open_uni().await {
                Ok(s) => s,
                Err(e) => {
                    held.fetch_sub(len, Ordering::Relaxed);
                    return Err(e.to_string());
                }
            };
            let _ = stream.set_priority(priorities.next(len));
            let held = held.clone();
            actix::spawn(async move {
                if let Err(e) = stream.write_all_chunks(&mut frame).await {
                    debug!("quic data stream: {e}");
                }
                let _ = stream.finish();
                held.fetch_sub(len, Ordering::Relaxed);
            });
        }
        Ok(())
    };
    ctx.spawn(actix::fut::wrap_future::<_, PeerActor>(fut).map(
        |res: Result<(), String>, act, _| {
            if let Err(e) = res {
                debug!("{}: data streams: {e}", act.describe());
            }
        },
    ));
    DataTx { tx, bytes }
}

/// One frame that arrived on a data stream.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct DataIn {
    /// The link generation it belongs to.
    pub link_id: u64,
    /// The encoded frame, or `None` for a stream that went over the frame limit.
    pub frame: Option<Bytes>,
}

/// Why a data stream gave no frame.
enum ReadFrameError {
    /// It carried more than the limit.
    TooLong,
    /// The stream or the connection failed.
    Read(quinn::ReadError),
}

/// Reads one data stream to its end, at most `limit` bytes, into one exactly sized buffer: the
/// decoded message is a slice of it ([`crate::wire::shared`]) and keeps all of it alive, so it
/// must hold nothing else. (Not even for a stream that came in one chunk: quinn's chunk is a
/// view of the whole batch of datagrams it arrived with, up to 64 KiB, which a 100-byte message
/// kept in a queue would then hold.)
///
/// Not `RecvStream::read_to_end`: that zero-fills its buffer (`vec![0; n]`, a `calloc`), and
/// jemalloc serves a large `calloc` from fresh zero pages, so every 1 MiB message faulted in
/// ~256 pages (477k page faults in 5 s of bulk, a third of the UDP bulk rate). The chunks are
/// kept (reference-counted, as quinn received them) until the end.
async fn read_frame(stream: &mut quinn::RecvStream, limit: usize) -> Result<Bytes, ReadFrameError> {
    let mut chunks: Vec<bytes::Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream
        .read_chunk(usize::MAX, true)
        .await
        .map_err(ReadFrameError::Read)?
    {
        total += chunk.bytes.len();
        if total > limit {
            return Err(ReadFrameError::TooLong);
        }
        chunks.push(chunk.bytes);
    }
    let mut frame = Vec::with_capacity(total);
    for chunk in &chunks {
        frame.extend_from_slice(chunk);
    }
    Ok(frame.into())
}

/// Spawns the loop that accepts the peer's data streams (once the link is Active) and reads
/// each to its end on a task of its own, at most `limit` bytes, handing the frame to the actor.
/// A stream over the limit is stopped and the link closed (as an oversized record on TCP).
pub(super) fn spawn_data_reader(
    connection: quinn::Connection,
    limit: usize,
    link_id: u64,
    ctx: &mut Context<PeerActor>,
) {
    let me = ctx.address();
    let fut = async move {
        loop {
            let mut stream = match connection.accept_uni().await {
                Ok(s) => s,
                Err(_) => return, // the connection closed; the control stream reports it
            };
            let me = me.clone();
            actix::spawn(async move {
                match read_frame(&mut stream, limit).await {
                    Ok(frame) => {
                        // Waits while the actor's mailbox is full: QUIC flow control then
                        // slows the peer down.
                        let frame = Some(frame);
                        let _ = me.send(DataIn { link_id, frame }).await;
                    }
                    Err(ReadFrameError::TooLong) => {
                        let _ = stream.stop(0u32.into());
                        let _ = me
                            .send(DataIn {
                                link_id,
                                frame: None,
                            })
                            .await;
                    }
                    Err(ReadFrameError::Read(e)) => debug!("quic data stream: {e}"),
                }
            });
        }
    };
    ctx.spawn(actix::fut::wrap_future::<_, PeerActor>(fut));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::quic::testing::{connected, limits};

    /// `read_frame` returns a stream's bytes whole and in order however they were written, an
    /// empty stream as an empty frame, and refuses a stream one byte over its limit: the bound a
    /// member's oversized data stream meets.
    #[tokio::test]
    async fn a_data_stream_is_read_whole_up_to_its_limit_and_refused_beyond() {
        const LIMIT: usize = 200_000;
        let (dialed, accepted) = connected(limits(1 << 20)).await;

        let pattern = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
        for (len, fits) in [(0, true), (100, true), (LIMIT, true), (LIMIT + 1, false)] {
            let body = pattern(len);
            let mut tx = dialed.open_uni().await.unwrap();
            // Several writes, so the reader sees several chunks.
            for piece in body.chunks(30_000) {
                tx.write_all(piece).await.unwrap();
            }
            tx.finish().unwrap();
            let mut rx = accepted.accept_uni().await.unwrap();
            match (read_frame(&mut rx, LIMIT).await, fits) {
                (Ok(frame), true) => {
                    assert!(frame == body, "{len} bytes came back changed");
                    // A buffer of its own, exactly sized: a message decoded from it pins no more.
                    if len > 0 {
                        let own = frame
                            .try_into_mut()
                            .expect("the only reference to its buffer");
                        assert_eq!(own.capacity(), len);
                    }
                }
                (Err(ReadFrameError::TooLong), false) => {}
                (Ok(frame), false) => panic!("{} bytes over the limit were taken", frame.len()),
                (Err(_), _) => panic!("a stream of {len} bytes was refused"),
            }
        }
    }

    /// Smaller classes above larger ones whatever was written before, earlier above later within
    /// a class, everything below the control stream.
    #[test]
    fn data_priorities_order_by_class_then_by_writing() {
        let mut p = DataPriorities::default();
        let large: Vec<i32> = (0..3).map(|_| p.next(1 << 20)).collect();
        let medium = p.next(100_000);
        let small = [p.next(0), p.next(1024)];
        let kb16 = p.next(1025);
        assert!(large.windows(2).all(|w| w[0] > w[1]), "{large:?}");
        assert!(small[0] > small[1]);
        assert!(small[1] > kb16 && kb16 > medium && medium > large[0]);
        assert!(small[0] < CONTROL_PRIORITY);
        // The last of a class stays above the first of the next larger one.
        let mut q = DataPriorities::default();
        q.written[0] = CLASS_SPAN as u32 - 1;
        assert!(q.next(10) > q.next(2000));
    }

    /// Data streams leave in size classes, and in the order written within one: a small message
    /// written after two large ones arrives first, and the first large one arrives whole before
    /// the second has half its bytes in (round-robin sending would interleave them to the end).
    #[tokio::test]
    async fn data_streams_go_smallest_class_first_then_in_the_order_written() {
        const LARGE: usize = 1 << 20;
        let (dialed, accepted) = connected(limits(2 << 20)).await;
        // Written back to back, before the connection's driver sends anything.
        let mut priorities = DataPriorities::default();
        for len in [LARGE, LARGE, 100] {
            let mut tx = dialed.open_uni().await.unwrap();
            tx.set_priority(priorities.next(len)).unwrap();
            tx.write_all(&vec![len as u8; len]).await.unwrap();
            tx.finish().unwrap();
        }
        // Streams are accepted in the order they were opened; each is read on a task that
        // counts what it got, and the order in which they end is recorded.
        let received: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        for (i, got) in received.iter().enumerate() {
            let mut rx = accepted.accept_uni().await.unwrap();
            let (got, done_tx) = (got.clone(), done_tx.clone());
            tokio::spawn(async move {
                while let Some(chunk) = rx.read_chunk(usize::MAX, true).await.unwrap() {
                    got.fetch_add(chunk.bytes.len(), Ordering::SeqCst);
                }
                done_tx.send(i).unwrap();
            });
        }
        let first = done_rx.recv().await.unwrap();
        let second = done_rx.recv().await.unwrap();
        let of_the_last_large = received[1].load(Ordering::SeqCst);
        assert_eq!(
            (first, second),
            (2, 0),
            "the small one, then the first large one"
        );
        assert!(
            of_the_last_large < LARGE / 2,
            "{of_the_last_large} bytes of the second large stream were in before the first ended"
        );
        assert_eq!(done_rx.recv().await, Some(1));
    }
}
