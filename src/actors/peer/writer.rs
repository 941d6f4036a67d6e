//! How a PeerActor's bytes leave: the writer future of a stream socket (fed through a bounded
//! queue, flushed once per batch) and the UDP send through the listener's socket.

use actix::prelude::*;
use futures_util::{Sink, SinkExt};
use log::debug;
use tokio::sync::mpsc;

use crate::node::NodeShared;
use crate::proto::link::{Cause, Transmit};
use crate::wire::frame::CloseReason;

use super::{Conn, PeerActor, WRITE_QUEUE_FRAMES};

/// Spawns, in the actor's own context, the future that writes queued records to `sink`;
/// returns the bounded queue feeding it. Records are fed in batches and flushed once per batch.
pub(super) fn spawn_writer<S, T>(
    mut sink: S,
    wrap: fn(Vec<u8>) -> T,
    ctx: &mut Context<PeerActor>,
) -> mpsc::Sender<Vec<u8>>
where
    S: Sink<T> + Unpin + 'static,
    S::Error: std::fmt::Display,
    T: 'static,
{
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_FRAMES);
    let fut = async move {
        while let Some(first) = rx.recv().await {
            sink.feed(wrap(first)).await.map_err(|e| e.to_string())?;
            while let Ok(more) = rx.try_recv() {
                sink.feed(wrap(more)).await.map_err(|e| e.to_string())?;
            }
            sink.flush().await.map_err(|e| e.to_string())?;
        }
        let _ = sink.close().await;
        Ok::<(), String>(())
    };
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
    tx
}

/// Sends one transmit on the connection.
pub(super) fn transmit(conn: &mut Conn, t: Transmit, node: &NodeShared) -> Result<(), Cause> {
    match conn {
        Conn::Stream { tx, .. } => {
            let bytes = match t {
                Transmit::Handshake { bytes, .. } | Transmit::Record(bytes) => bytes,
            };
            node.metrics.bytes_out.add(bytes.len() as u64);
            tx.try_send(bytes).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Cause::Refused(CloseReason::Timeout),
                mpsc::error::TrySendError::Closed(_) => Cause::TransportClosed,
            })
        }
        Conn::Udp(u) => {
            let Some(out) = u.session.encode(&t) else {
                return Ok(()); // nothing can be addressed before the peer's index is known
            };
            node.metrics.bytes_out.add(out.len() as u64);
            // UDP semantics: a full socket buffer drops the datagram; the protocol retransmits
            // what matters (handshake) and heartbeats tolerate loss.
            match u.socket.try_send_to(&out, u.remote) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    node.metrics.datagrams_dropped.inc();
                    Ok(())
                }
                Err(e) => {
                    debug!("udp send to {}: {e}", u.remote);
                    Ok(())
                }
            }
        }
    }
}
