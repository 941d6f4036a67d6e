//! How a PeerActor's bytes leave: the writer future of a stream socket (or a QUIC link's control
//! stream), fed through two bounded lanes (control records first, data records bounded in bytes)
//! and flushed once per batch; a QUIC link's data frames go to its streams ([`super::quic`]).
//!
//! Control records (pings, pongs, adverts, punch frames, `over_budget`, close) never wait behind
//! queued data: the writer takes them first. A data record can be overtaken by at most
//! [`MAX_CONTROL_RUN`] control records before it is written, which keeps every reordering
//! within the receiver's 2048-record replay window (records are sealed in queue order, so an
//! overtaken record arrives with a lower counter than the ones before it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use log::debug;
use tokio::sync::mpsc;

use crate::node::NodeShared;
use crate::proto::link::{Cause, Transmit};
use crate::wire::frame::CloseReason;

use super::{Conn, PeerActor};

/// Control records queued at most (beyond it the peer is not reading: the link closes).
pub const CONTROL_QUEUE_RECORDS: usize = 4096;
/// Data records queued at most.
pub const DATA_QUEUE_RECORDS: usize = 1024;
/// Data bytes queued at most (one record of any size is taken into an empty lane); beyond it
/// data records are dropped and counted (`frames_dropped`), the link stays up.
pub const DATA_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Control records written in a row while data waits, at most (see the module docs).
pub const MAX_CONTROL_RUN: usize = 1024;

/// The two lanes into a stream's writer.
pub(super) struct StreamTx {
    control: mpsc::Sender<Vec<u8>>,
    data: mpsc::Sender<Vec<u8>>,
    /// Bytes in the data lane.
    data_bytes: Arc<AtomicUsize>,
}

/// Spawns, in the actor's own context, the future that writes queued records to `sink`;
/// returns the lanes feeding it. Records are fed in batches and flushed once per batch.
pub(super) fn spawn_writer<S, T>(
    sink: S,
    wrap: fn(Vec<u8>) -> T,
    ctx: &mut Context<PeerActor>,
) -> StreamTx
where
    S: Sink<T> + Unpin + 'static,
    S::Error: std::fmt::Display,
    T: 'static,
{
    let (control, control_rx) = mpsc::channel::<Vec<u8>>(CONTROL_QUEUE_RECORDS);
    let (data, data_rx) = mpsc::channel::<Vec<u8>>(DATA_QUEUE_RECORDS);
    let data_bytes = Arc::new(AtomicUsize::new(0));
    let fut = pump(sink, wrap, control_rx, data_rx, data_bytes.clone());
    ctx.spawn(
        actix::fut::wrap_future::<_, PeerActor>(fut).map(|res, act, ctx| {
            if let Err(e) = res {
                debug!("{}: write failed: {e}", act.describe());
                act.on_stream_error(Cause::TransportClosed);
                act.drive(ctx);
            }
            if act.closing {
                ctx.stop();
            }
        }),
    );
    StreamTx {
        control,
        data,
        data_bytes,
    }
}

/// Writes the lanes' records to `sink` until both lanes close: control first, a data record at
/// least every [`MAX_CONTROL_RUN`] control records, one flush per batch.
async fn pump<S, T>(
    mut sink: S,
    wrap: fn(Vec<u8>) -> T,
    mut control_rx: mpsc::Receiver<Vec<u8>>,
    mut data_rx: mpsc::Receiver<Vec<u8>>,
    data_bytes: Arc<AtomicUsize>,
) -> Result<(), String>
where
    S: Sink<T> + Unpin,
    S::Error: std::fmt::Display,
{
    let take_data = |r: Vec<u8>| {
        data_bytes.fetch_sub(r.len(), Ordering::Relaxed);
        r
    };
    loop {
        let first = tokio::select! {
            biased;
            Some(c) = control_rx.recv() => c,
            Some(d) = data_rx.recv() => take_data(d),
            else => break,
        };
        sink.feed(wrap(first)).await.map_err(|e| e.to_string())?;
        let mut run = 0;
        loop {
            if run < MAX_CONTROL_RUN {
                if let Ok(c) = control_rx.try_recv() {
                    run += 1;
                    sink.feed(wrap(c)).await.map_err(|e| e.to_string())?;
                    continue;
                }
            }
            match data_rx.try_recv() {
                Ok(d) => {
                    run = 0;
                    sink.feed(wrap(take_data(d)))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Err(_) if run >= MAX_CONTROL_RUN => run = 0,
                Err(_) => break,
            }
        }
        sink.flush().await.map_err(|e| e.to_string())?;
    }
    let _ = sink.close().await;
    Ok(())
}

/// Sends one transmit on the connection.
pub(super) fn transmit(conn: &mut Conn, t: Transmit, node: &NodeShared) -> Result<(), Cause> {
    match conn {
        Conn::Stream { tx, .. } => {
            let closed = |e| match e {
                mpsc::error::TrySendError::Full(_) => Cause::Refused(CloseReason::Timeout),
                mpsc::error::TrySendError::Closed(_) => Cause::TransportClosed,
            };
            match t {
                // A stream link is never a bound channel, so no `DataParts`; joined if it were.
                t @ (Transmit::Data(_) | Transmit::DataParts(_)) => {
                    let bytes = t.into_bytes();
                    let queued = tx.data_bytes.load(Ordering::Relaxed);
                    if queued > 0 && queued + bytes.len() > DATA_QUEUE_BYTES {
                        // The link is saturated with data: drop this one (the sender times
                        // out or re-sends), keep the link and its control traffic.
                        node.metrics.frames_dropped.inc();
                        return Ok(());
                    }
                    let len = bytes.len();
                    match tx.data.try_send(bytes) {
                        Ok(()) => {
                            tx.data_bytes.fetch_add(len, Ordering::Relaxed);
                            node.metrics.bytes_out.add(len as u64);
                            Ok(())
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            node.metrics.frames_dropped.inc();
                            Ok(())
                        }
                        Err(e) => Err(closed(e)),
                    }
                }
                Transmit::Handshake { bytes, .. } | Transmit::Record(bytes) => {
                    node.metrics.bytes_out.add(bytes.len() as u64);
                    tx.control.try_send(bytes).map_err(closed)
                }
            }
        }
        Conn::Quic { tx, data, .. } => match t {
            t @ (Transmit::Data(_) | Transmit::DataParts(_)) => {
                let len = t.len() as u64;
                let parts = match t {
                    Transmit::DataParts(parts) => {
                        parts.into_iter().filter(|p| !p.is_empty()).collect()
                    }
                    t => vec![Bytes::from(t.into_bytes())],
                };
                match data.send(parts) {
                    super::quic::Queued::Yes => node.metrics.bytes_out.add(len),
                    super::quic::Queued::Dropped => node.metrics.frames_dropped.inc(),
                    super::quic::Queued::Closed => return Err(Cause::TransportClosed),
                }
                Ok(())
            }
            Transmit::Handshake { bytes, .. } | Transmit::Record(bytes) => {
                node.metrics.bytes_out.add(bytes.len() as u64);
                tx.control.try_send(bytes).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => Cause::Refused(CloseReason::Timeout),
                    mpsc::error::TrySendError::Closed(_) => Cause::TransportClosed,
                })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the pump over queued records into a recording sink; returns what was written.
    fn written(control: Vec<Vec<u8>>, data: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (ctx, crx) = mpsc::channel(CONTROL_QUEUE_RECORDS);
            let (dtx, drx) = mpsc::channel(DATA_QUEUE_RECORDS);
            let bytes = Arc::new(AtomicUsize::new(0));
            for d in data {
                bytes.fetch_add(d.len(), Ordering::Relaxed);
                dtx.send(d).await.unwrap();
            }
            for c in control {
                ctx.send(c).await.unwrap();
            }
            drop((ctx, dtx));
            let out = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let o = out.clone();
            let sink = futures_util::sink::unfold((), move |(), item: Vec<u8>| {
                let o = o.clone();
                async move {
                    o.borrow_mut().push(item);
                    Ok::<(), String>(())
                }
            });
            pump(Box::pin(sink), |v| v, crx, drx, bytes.clone())
                .await
                .unwrap();
            assert_eq!(
                bytes.load(Ordering::Relaxed),
                0,
                "the data lane's bytes drain"
            );
            let v = out.borrow().clone();
            v
        })
    }

    /// Control records queued after data go out first: a ping never waits behind bulk.
    #[test]
    fn control_records_overtake_queued_data() {
        let data: Vec<Vec<u8>> = (0..5).map(|i| vec![b'd', i]).collect();
        let control: Vec<Vec<u8>> = (0..3).map(|i| vec![b'c', i]).collect();
        let out = written(control, data);
        let kinds: Vec<u8> = out.iter().map(|r| r[0]).collect();
        assert_eq!(kinds, b"cccddddd");
        assert_eq!(out[3], vec![b'd', 0], "data keeps its order");
    }

    /// A long run of control records lets a data record through every MAX_CONTROL_RUN, so no
    /// data record is overtaken by more records than the receiver's replay window holds.
    #[test]
    fn data_is_overtaken_by_at_most_a_run_of_control() {
        let control: Vec<Vec<u8>> = (0..3 * MAX_CONTROL_RUN).map(|_| vec![b'c']).collect();
        let data: Vec<Vec<u8>> = (0..3).map(|_| vec![b'd']).collect();
        let out = written(control, data);
        let first_data = out.iter().position(|r| r[0] == b'd').unwrap();
        assert!(first_data <= MAX_CONTROL_RUN + 1, "{first_data}");
        assert!(MAX_CONTROL_RUN < crate::wire::replay::WINDOW_COUNTERS as usize);
        assert_eq!(out.len(), 3 * MAX_CONTROL_RUN + 3);
    }
}
