//! ListenerActor: one per configured listener, one transport each.
//!
//! - TCP and WebSocket: accepts connections and starts an acceptor PeerActor for each, bounded by
//!   the node's limit on connections still handshaking.
//! - UDP: owns the socket and demultiplexes datagrams to the PeerActor of each session by the
//!   session index in the datagram header (WireGuard's scheme). New sessions start on a
//!   handshake-init datagram; dialers register outbound sessions with [`RegisterDial`] so that
//!   punching and dialling later happen from the same socket that listens.
//!
//! Garbage, unknown sessions and datagrams from the wrong source are dropped and counted here:
//! a UDP source address can be spoofed, so a stray datagram never reaches, let alone closes, an
//! existing link.
//!
//! Talks to: the PeerActors it starts (`UdpIn`), and, through [`PeerPorts`], the relay (punch
//! datagrams as `PunchIn`). Receives `RegisterDial`, `Unregister`, `SendPunch`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use log::{debug, warn};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::codec::BytesCodec;
use tokio_util::udp::UdpFramed;

use crate::actors::messages::{PeerPorts, PunchIn, RegisterDial, SendPunch, UdpIn, Unregister};
use crate::actors::peer::{Incoming, PeerActor, UdpConn};
use crate::addr::Transport;
use crate::node::NodeShared;
use crate::proto::cookie::CookieJar;
use crate::proto::udp_session::UdpSession;
use crate::wire::udp::Datagram;

/// Most UDP sessions one socket keeps (established and handshaking), so a flood of handshake
/// inits cannot grow the table without bound.
pub const MAX_UDP_SESSIONS: usize = 4096;

/// How often dead UDP sessions are swept.
const SESSION_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// One UDP session.
struct Session {
    /// The PeerActor serving it.
    peer: Recipient<UdpIn>,
    /// Where its datagrams must come from.
    remote: SocketAddr,
    /// The remote's sender index from its handshake init (acceptor sessions), for duplicates.
    remote_idx: Option<u32>,
}

/// What kind of listener this is, with its socket.
enum Socket {
    /// TCP or WebSocket; the listener moves into the accept stream when started.
    Stream {
        transport: Transport,
        listener: Option<TcpListener>,
    },
    Udp {
        socket: Arc<UdpSocket>,
        sessions: HashMap<u32, Session>,
        /// (remote address, remote sender index) -> our index: recognises a retransmitted init.
        by_remote: HashMap<(SocketAddr, u32), u32>,
        /// Cookies asked of new handshakes while the node is under load.
        cookies: CookieJar,
    },
}

/// Handshakes in progress node-wide from which a new UDP init must carry a cookie (a quarter
/// of the budget: a spoofed flood fills it, honest dialers answer the cookie and get in).
pub const COOKIE_LOAD_THRESHOLD: usize = crate::proto::handshake_budget::MAX_IN_PROGRESS / 4;

/// 32 bytes from the OS generator for a cookie secret (or from the node's generator, should
/// the OS one fail: cookies need unpredictability only against off-path senders).
fn cookie_secret(node: &NodeShared) -> [u8; 32] {
    let mut b = [0u8; 32];
    if getrandom::fill(&mut b).is_err() {
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&node.random_u64().to_le_bytes());
        }
    }
    b
}

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

    /// A UDP listener on a bound socket.
    pub fn udp(
        node: Arc<NodeShared>,
        ports: PeerPorts,
        socket: UdpSocket,
    ) -> std::io::Result<ListenerActor> {
        let cookies = CookieJar::new(cookie_secret(&node), node.now_us());
        Ok(ListenerActor {
            node,
            ports,
            local: socket.local_addr()?,
            socket: Socket::Udp {
                socket: Arc::new(socket),
                sessions: HashMap::new(),
                by_remote: HashMap::new(),
                cookies,
            },
        })
    }

    fn next_index(sessions: &HashMap<u32, Session>, random: u64) -> u32 {
        let mut idx = random as u32;
        while idx == 0 || sessions.contains_key(&idx) {
            idx = idx.wrapping_mul(2_654_435_761).wrapping_add(1);
        }
        idx
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
            Socket::Udp { socket, .. } => {
                ctx.add_stream(UdpFramed::new(socket.clone(), BytesCodec::new()));
                // Sessions whose actor died without unregistering (a panic) are swept here.
                ctx.run_interval(SESSION_SWEEP_INTERVAL, |act, _| {
                    if let Socket::Udp {
                        sessions,
                        by_remote,
                        ..
                    } = &mut act.socket
                    {
                        sessions.retain(|_, s| s.peer.connected());
                        by_remote.retain(|_, idx| sessions.contains_key(idx));
                    }
                });
            }
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

/// UDP datagrams.
impl StreamHandler<std::io::Result<(BytesMut, SocketAddr)>> for ListenerActor {
    fn handle(&mut self, item: std::io::Result<(BytesMut, SocketAddr)>, ctx: &mut Self::Context) {
        let (data, from) = match item {
            Ok(d) => d,
            Err(e) => {
                // ICMP errors surface here on Linux (connection refused): not fatal.
                debug!("udp {}: {e}", self.local);
                return;
            }
        };
        let node = self.node.clone();
        let Socket::Udp {
            socket,
            sessions,
            by_remote,
            cookies,
        } = &mut self.socket
        else {
            return;
        };
        let drop_it = |why: &str| {
            debug!("udp {from}: dropped datagram: {why}");
            node.metrics.datagrams_dropped.inc();
        };
        let datagram = match Datagram::parse(&data) {
            Ok(d) => d,
            Err(e) => {
                node.metrics.refused.bad_frame.inc();
                drop_it(&e.to_string());
                return;
            }
        };
        let target = match datagram {
            Datagram::Punch { token } | Datagram::PunchAck { token } => {
                let ack = matches!(datagram, Datagram::PunchAck { .. });
                let msg = PunchIn {
                    local: self.local,
                    from,
                    token,
                    ack,
                };
                if self.ports.relay.punches.try_send(msg).is_err() {
                    drop_it("relay mailbox full");
                }
                return;
            }
            Datagram::HandshakeInit { sender, cookie, .. } => {
                if let Some(idx) = by_remote.get(&(from, sender)) {
                    *idx
                } else {
                    if node.handshakes_in_progress() >= COOKIE_LOAD_THRESHOLD {
                        // Under load: only a source that proved it receives here gets a
                        // handshake (and its X25519 work); others get a cookie, smaller than
                        // their init, and nothing else.
                        cookies.rotate_if_due(node.now_us(), || cookie_secret(&node));
                        if !cookie.is_some_and(|c| cookies.check(from, sender, &c)) {
                            let reply = Datagram::CookieReply {
                                receiver: sender,
                                cookie: cookies.make(from, sender),
                            };
                            let mut buf = Vec::with_capacity(reply.encoded_len());
                            reply.write(&mut buf);
                            node.metrics.cookies_sent.inc();
                            if let Err(e) = socket.try_send_to(&buf, from) {
                                debug!("udp {}: cookie to {from}: {e}", self.local);
                            }
                            return;
                        }
                    }
                    if sessions.len() >= MAX_UDP_SESSIONS {
                        node.metrics.refused.overload.inc();
                        drop_it("too many sessions");
                        return;
                    }
                    let Some(slot) = node.try_handshake_slot(from.ip()) else {
                        drop_it("over the handshake budget");
                        return;
                    };
                    let idx = ListenerActor::next_index(sessions, node.random_u64());
                    let conn = UdpConn {
                        socket: socket.clone(),
                        listener: ctx.address().recipient(),
                        remote: from,
                        session: UdpSession::new(idx, Some(sender)),
                    };
                    let ports = self.ports.clone();
                    let peer = PeerActor::acceptor(node.clone(), ports, Incoming::Udp(conn), slot)
                        .start()
                        .recipient();
                    sessions.insert(
                        idx,
                        Session {
                            peer,
                            remote: from,
                            remote_idx: Some(sender),
                        },
                    );
                    by_remote.insert((from, sender), idx);
                    idx
                }
            }
            Datagram::HandshakeResp { receiver, .. }
            | Datagram::HandshakeFinal { receiver, .. }
            | Datagram::Transport { receiver, .. }
            | Datagram::CookieReply { receiver, .. } => receiver,
        };
        let Some(session) = sessions.get(&target) else {
            drop_it("unknown session");
            return;
        };
        if session.remote != from {
            drop_it("wrong source address for the session");
            return;
        }
        let msg = UdpIn {
            data: Bytes::from(data),
            from,
        };
        if session.peer.try_send(msg).is_err() {
            drop_it("session mailbox full or gone");
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        warn!("udp listener {} stopped", self.local);
    }
}

impl Handler<RegisterDial> for ListenerActor {
    type Result = MessageResult<RegisterDial>;

    fn handle(&mut self, msg: RegisterDial, _: &mut Self::Context) -> Self::Result {
        let Socket::Udp {
            socket, sessions, ..
        } = &mut self.socket
        else {
            return MessageResult(None);
        };
        let idx = ListenerActor::next_index(sessions, self.node.random_u64());
        sessions.insert(
            idx,
            Session {
                peer: msg.peer,
                remote: msg.remote,
                remote_idx: None,
            },
        );
        MessageResult(Some((idx, socket.clone())))
    }
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

impl Handler<Unregister> for ListenerActor {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Self::Context) {
        if let Socket::Udp {
            sessions,
            by_remote,
            ..
        } = &mut self.socket
        {
            if let Some(s) = sessions.remove(&msg.local_idx) {
                if let Some(r) = s.remote_idx {
                    by_remote.remove(&(s.remote, r));
                }
            }
        }
    }
}
