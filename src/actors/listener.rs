//! ListenerActor: one per configured listener, one transport each.
//!
//! - TCP and WebSocket: accepts connections and starts an acceptor PeerActor for each, bounded by
//!   the node's limit on connections still handshaking.
//! - UDP: runs the socket's QUIC endpoint ([`crate::quic`]). Each incoming QUIC connection gets
//!   an acceptor PeerActor, within the same handshake budget; while many handshakes are in
//!   progress, a source whose address QUIC has not validated yet is sent a Retry first (QUIC's
//!   stateless address validation, the role of WireGuard's cookie). Our own datagrams on the
//!   same socket (hole-punch probes and their acks) come out of the endpoint's socket wrapper
//!   and go to the relay as `PunchIn`; dialers connect through the same endpoint, so a punched
//!   NAT mapping is the one they use.
//!
//! Garbage datagrams are dropped and counted here (QUIC drops and counts its own); a UDP source
//! address can be spoofed, so a stray datagram never reaches, let alone closes, a link.
//!
//! Talks to: the PeerActors it starts, and, through [`PeerPorts`], the relay (punch datagrams as
//! `PunchIn`). Receives `SendPunch`.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use log::{debug, warn};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::actors::messages::{PeerPorts, PunchIn, SendPunch};
use crate::actors::peer::{Incoming, PeerActor};
use crate::addr::Transport;
use crate::node::NodeShared;
use crate::quic::OwnDatagram;
use crate::wire::udp::Datagram;

/// What kind of listener this is, with its socket.
enum Socket {
    /// TCP or WebSocket; the listener moves into the accept stream when started.
    Stream {
        transport: Transport,
        listener: Option<TcpListener>,
    },
    Udp {
        endpoint: quinn::Endpoint,
        /// The same socket, for sending punch datagrams.
        socket: Arc<UdpSocket>,
        /// Our own datagrams out of the endpoint's socket; moves into a stream when started.
        own: Option<mpsc::Receiver<OwnDatagram>>,
    },
}

/// Handshakes in progress node-wide from which a new QUIC connection from an unvalidated
/// address gets a Retry first (a quarter of the budget: a spoofed flood fills it, honest
/// dialers answer the Retry and get in).
pub const RETRY_LOAD_THRESHOLD: usize = crate::proto::handshake_budget::MAX_IN_PROGRESS / 4;

/// See the module docs.
pub struct ListenerActor {
    node: Arc<NodeShared>,
    /// What the acceptors it starts report to (and the relay, for punch datagrams).
    ports: PeerPorts,
    /// Bound address, for logs.
    local: SocketAddr,
    socket: Socket,
}

impl ListenerActor {
    /// A TCP or WebSocket listener on a bound socket.
    pub fn stream(
        node: Arc<NodeShared>,
        ports: PeerPorts,
        transport: Transport,
        listener: TcpListener,
    ) -> std::io::Result<ListenerActor> {
        Ok(ListenerActor {
            node,
            ports,
            local: listener.local_addr()?,
            socket: Socket::Stream {
                transport,
                listener: Some(listener),
            },
        })
    }

    /// A UDP listener on its socket's QUIC endpoint ([`crate::quic::bind`]).
    pub fn udp(
        node: Arc<NodeShared>,
        ports: PeerPorts,
        bound: crate::quic::Bound,
    ) -> std::io::Result<ListenerActor> {
        Ok(ListenerActor {
            node,
            ports,
            local: bound.endpoint.local_addr()?,
            socket: Socket::Udp {
                endpoint: bound.endpoint,
                socket: bound.socket,
                own: Some(bound.own),
            },
        })
    }
}

impl Actor for ListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match &mut self.socket {
            Socket::Stream { listener, .. } => {
                if let Some(listener) = listener.take() {
                    let accepts = futures_util::stream::unfold(listener, |l| async move {
                        let next = l.accept().await;
                        Some((next, l))
                    });
                    ctx.add_stream(accepts);
                }
            }
            Socket::Udp { endpoint, own, .. } => {
                let accepts = futures_util::stream::unfold(endpoint.clone(), |e| async move {
                    let next = e.accept().await?;
                    Some((next, e))
                });
                ctx.add_stream(accepts);
                if let Some(own) = own.take() {
                    let own = futures_util::stream::unfold(own, |mut rx| async move {
                        let next = rx.recv().await?;
                        Some((next, rx))
                    });
                    ctx.add_stream(own);
                }
            }
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Socket::Udp { endpoint, .. } = &self.socket {
            endpoint.close(0u32.into(), b"shutdown");
        }
    }
}

/// Accepted TCP connections.
impl StreamHandler<std::io::Result<(TcpStream, SocketAddr)>> for ListenerActor {
    fn handle(&mut self, item: std::io::Result<(TcpStream, SocketAddr)>, _: &mut Self::Context) {
        let (stream, remote) = match item {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: log and keep accepting.
                warn!("accept on {}: {e}", self.local);
                return;
            }
        };
        let Socket::Stream { transport, .. } = &self.socket else {
            return;
        };
        let Some(slot) = self.node.try_handshake_slot(remote.ip()) else {
            debug!("dropping connection from {remote}: over the handshake budget");
            return;
        };
        let _ = stream.set_nodelay(true);
        let incoming = match transport {
            Transport::Ws => Incoming::Ws(stream, remote),
            _ => Incoming::Tcp(stream, remote),
        };
        PeerActor::acceptor(self.node.clone(), self.ports.clone(), incoming, slot).start();
    }

    fn finished(&mut self, _: &mut Self::Context) {
        warn!("listener {} stopped accepting", self.local);
    }
}

/// Incoming QUIC connections.
impl StreamHandler<quinn::Incoming> for ListenerActor {
    fn handle(&mut self, incoming: quinn::Incoming, _: &mut Self::Context) {
        let node = self.node.clone();
        let remote = incoming.remote_address();
        if node.handshakes_in_progress() >= RETRY_LOAD_THRESHOLD
            && !incoming.remote_address_validated()
        {
            // Under load: only a source that proved it receives at its address gets a
            // handshake (and its X25519 work); a Retry is smaller than the Initial it answers.
            node.metrics.cookies_sent.inc();
            if let Err(e) = incoming.retry() {
                debug!("udp {}: retry to {remote}: {e}", self.local);
            }
            return;
        }
        let Some(slot) = node.try_handshake_slot(remote.ip()) else {
            debug!(
                "udp {}: ignoring {remote}: over the handshake budget",
                self.local
            );
            incoming.ignore();
            return;
        };
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                debug!("udp {}: accept {remote}: {e}", self.local);
                return;
            }
        };
        let incoming = Incoming::Quic(connecting, remote, self.local);
        PeerActor::acceptor(node, self.ports.clone(), incoming, slot).start();
    }

    fn finished(&mut self, _: &mut Self::Context) {
        warn!("udp listener {} stopped accepting", self.local);
    }
}

/// Our own datagrams (punch, punch ack) from the endpoint's socket.
impl StreamHandler<OwnDatagram> for ListenerActor {
    fn handle(&mut self, own: OwnDatagram, _: &mut Self::Context) {
        let node = &self.node;
        let from = own.from;
        let drop_it = |why: &str| {
            debug!("udp {from}: dropped datagram: {why}");
            node.metrics.datagrams_dropped.inc();
        };
        let punch = match Datagram::parse(&own.data) {
            Ok(Datagram::Punch { token }) => Ok((token, false)),
            Ok(Datagram::PunchAck { token }) => Ok((token, true)),
            Err(e) => Err(e.to_string()),
        };
        match punch {
            Ok((token, ack)) => {
                let msg = PunchIn {
                    local: self.local,
                    from,
                    token,
                    ack,
                };
                if self.ports.relay.punches.try_send(msg).is_err() {
                    drop_it("relay mailbox full");
                }
            }
            Err(why) => {
                node.metrics.refused.bad_frame.inc();
                drop_it(&why);
            }
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<SendPunch> for ListenerActor {
    type Result = ();

    fn handle(&mut self, msg: SendPunch, _: &mut Self::Context) {
        let Socket::Udp { socket, .. } = &self.socket else {
            return;
        };
        let datagram = if msg.ack {
            Datagram::PunchAck { token: msg.token }
        } else {
            Datagram::Punch { token: msg.token }
        };
        let mut buf = Vec::with_capacity(datagram.encoded_len());
        datagram.write(&mut buf);
        // Best effort, like every UDP send: a punch that does not leave is a punch lost.
        if let Err(e) = socket.try_send_to(&buf, msg.to) {
            debug!("udp {}: punch to {}: {e}", self.local, msg.to);
        }
    }
}
