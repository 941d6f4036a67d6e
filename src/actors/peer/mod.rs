//! PeerActor: one link to one peer, over one transport, with its own Init/Active/Disconnected
//! state machine.
//!
//! Two kinds exist:
//! - a *dialer*, created by the DiscoveryActor for a configured or learned address. It runs
//!   under an actix `Supervisor`: every failure (connect error, handshake failure, timeout, a
//!   closed socket, a caught panic) stops the actor, the supervisor restarts it (same struct,
//!   same `Addr`), and `started()` re-dials after an exponential backoff;
//! - an *acceptor*, created by a ListenerActor for an inbound connection (TCP, WebSocket or QUIC). It lives
//!   as long as its link; the remote side is the one that re-dials.
//!
//! The actor owns the socket (read half through `add_stream`, write half in a writer future
//! spawned in its own context behind a bounded channel, `writer`; UDP links are QUIC
//! connections on a ListenerActor's endpoint, `quic`), sets connections up (`transport`) and
//! moves bytes and timers; the protocol itself is the sans-io [`Link`]. It owns its link's
//! [`LinkStatus`] and answers [`GetLinkStatus`].
//!
//! Talks to (only through the `Recipient`s in [`PeerPorts`], never naming another actor): the
//! DiscoveryActor (`Admit` when the peer is authenticated, `LinkDown` when it goes), the
//! RelayActor (`LinkUp`, `LinkRtt`, `Inbound` frames, `LinkDown`). Receives `SendFrame`,
//! `CloseLink`, `GetLinkStatus`, `Redial`, `DialNow` (and its own data streams' `DataIn`).

mod quic;
mod transport;
mod writer;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use log::{debug, info, warn};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::actors::messages::{
    Admit, CloseLink, GetLinkStatus, Inbound, LinkDown, LinkRtt, LinkStatus, LinkUp, PeerHandle,
    PeerPorts, SendFrame, UdpEndpoint,
};
use crate::addr::{Endpoint, Transport};
use crate::node::{HandshakeSlot, NodeShared};
use crate::proto::backoff::Backoff;
use crate::proto::link::{Cause, Event, Link, Phase};
use crate::proto::peer_state::Step;
use crate::proto::router::{LinkInfo, LinkKind};
use crate::wire::frame::{CloseReason, Frame};
use transport::{connect_stream, pick_udp, resolve, Connected};
use writer::{spawn_writer, transmit};

/// Frames queued for one stream socket before the link counts as stuck. A heartbeat link needs
/// a handful; later data traffic gets backpressure from this bound instead of unbounded memory.
/// Messages waiting in this actor's mailbox (inbound UDP datagrams, frames from the relay);
/// beyond it datagrams are dropped (and counted) as a router would, and the relay gets
/// backpressure.
pub const MAILBOX_CAPACITY: usize = 1024;
/// Initial read buffer of a TCP link: large frames then fill it in a few reads instead of
/// growing it from tokio-util's 8 KiB default.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Longest wait for the writer to flush a `close` frame before the actor stops anyway.
pub const CLOSE_LINGER_MS: u64 = 1_000;
/// Bound on TCP connect and WebSocket upgrade time, so a blackholed address cannot hold a dial.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Frames held while the link waits for discovery's admission (a dialer's peer may send its
/// adverts right behind its `welcome`): the relay hears of them only after the link's `LinkUp`.
/// Beyond either bound they are dropped and counted; the sender's adverts are re-sent anyway.
pub const EARLY_FRAMES: usize = 256;
/// Byte bound of the frames held before `LinkUp` (data bodies counted).
pub const EARLY_FRAME_BYTES: usize = 4 * 1024 * 1024;

pub use crate::proto::peer_state::PeerState;

/// Wake a dialer that stood by because another link to the same node was preferred.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Redial;

/// Dial now if waiting out a backoff: a hole punch just opened the path this dialer kept
/// failing on. A dialer mid-attempt, linked, or standing by is left alone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DialNow;

/// Test-only: make this actor fail, to prove supervision brings it back.
#[cfg(feature = "fault-injection")]
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum InjectFault {
    /// Panic inside a handler.
    Panic,
    /// Fail the link as if the socket broke.
    Error,
}

/// An inbound connection handed over by a ListenerActor.
pub enum Incoming {
    /// Accepted TCP connection.
    Tcp(TcpStream, SocketAddr),
    /// Accepted TCP connection that must complete a WebSocket upgrade.
    Ws(TcpStream, SocketAddr),
    /// An accepted QUIC connection (still handshaking), its remote and our listener's address.
    Quic(quinn::Connecting, SocketAddr, SocketAddr),
}

/// How frames leave this link.
enum Conn {
    /// TCP or WebSocket: a writer future in our context drains this bounded channel; on TCP,
    /// `read_limit` is the length-prefix limit of the reader's codec, kept at the link's
    /// [`Link::read_limit`] (never below a hello) after every step.
    Stream {
        tx: writer::StreamTx,
        read_limit: Option<Arc<AtomicUsize>>,
    },
    /// QUIC: the control stream like a TCP socket (`tx`, `read_limit`), and a stream per data
    /// frame (`data`).
    Quic {
        tx: writer::StreamTx,
        read_limit: Arc<AtomicUsize>,
        data: quic::DataTx,
        connection: quinn::Connection,
    },
}

/// A connection and its protocol.
struct Attempt {
    conn: Conn,
    link: Link,
    /// ListenerActor address for the observed-address report (`welcome`).
    remote: SocketAddr,
}

/// The card's state machine, each state owning its data. Transitions happen only in
/// `PeerActor::transition`, driven by [`PeerState::next`].
enum State {
    /// Not yet Active since this actor was created: dialling or handshaking.
    Init { attempt: Option<Attempt> },
    /// Authenticated and admitted.
    Active { attempt: Attempt },
    /// Lost after being Active (or refused); a dialer re-dials from here.
    Disconnected { attempt: Option<Attempt> },
}

impl State {
    fn visible(&self) -> PeerState {
        match self {
            State::Init { .. } => PeerState::Init,
            State::Active { .. } => PeerState::Active,
            State::Disconnected { .. } => PeerState::Disconnected,
        }
    }
}

/// Dialer or acceptor, with what each needs.
enum Role {
    Dialer {
        /// Discovery's id for this dialer (named in `Admit`).
        id: u64,
        target: Endpoint,
        backoff: Backoff,
        /// Another link to the same node won the duplicate rule: wait for `Redial`.
        standby: bool,
        /// Whether any attempt has been made yet (the first dial goes out at once).
        dialed_once: bool,
        /// UDP sockets to dial from.
        udp: Vec<UdpEndpoint>,
        /// The node is shutting down: never dial again.
        shut_down: bool,
    },
    Acceptor {
        incoming: Option<Incoming>,
        /// Held while handshaking; bounds concurrent inbound handshakes node-wide.
        slot: Option<HandshakeSlot>,
    },
}

/// See the module docs.
pub struct PeerActor {
    node: Arc<NodeShared>,
    /// Who learns of this link: discovery (admission, down) and the relay (up, frames, RTT,
    /// down).
    ports: PeerPorts,
    role: Role,
    state: State,
    /// What `/status` shows of this link; discovery asks for it ([`GetLinkStatus`]).
    status: LinkStatus,
    /// Identifies the current connection in the DiscoveryActor's tables; new per attempt.
    link_id: u64,
    /// Whether the DiscoveryActor has admitted the current connection.
    admitted: bool,
    /// The pending link timer and its deadline.
    timer: Option<(u64, SpawnHandle)>,
    /// The link closed; the actor stops once the writer has flushed (e.g. a `close` frame).
    closing: bool,
    /// The link ended with our `close` frame: a QUIC connection lingers for it to arrive.
    linger: bool,
    /// The relay was told this link is up (`LinkUp`); until then frames wait in `early`.
    announced: bool,
    /// Frames that arrived before `LinkUp`, with their byte total.
    early: Vec<Frame>,
    early_bytes: usize,
    /// The RTT average last reported to the relay.
    reported_rtt: Option<u64>,
}

impl PeerActor {
    /// A dialer for `target`, known to discovery as `id`; start it with `Supervisor::start`.
    pub fn dialer(
        node: Arc<NodeShared>,
        ports: PeerPorts,
        id: u64,
        target: Endpoint,
        udp: Vec<UdpEndpoint>,
    ) -> PeerActor {
        let status = new_status(target.transport, true, Some(target.clone()));
        let backoff = Backoff::new(node.backoff_base_ms, node.backoff_max_ms);
        let role = Role::Dialer {
            id,
            target,
            backoff,
            standby: false,
            dialed_once: false,
            udp,
            shut_down: false,
        };
        PeerActor::new(node, ports, role, status)
    }

    /// An acceptor for an inbound connection; start it with `Actor::start`.
    pub fn acceptor(
        node: Arc<NodeShared>,
        ports: PeerPorts,
        incoming: Incoming,
        slot: HandshakeSlot,
    ) -> PeerActor {
        let transport = match incoming {
            Incoming::Tcp(..) => Transport::Tcp,
            Incoming::Ws(..) => Transport::Ws,
            Incoming::Quic(..) => Transport::Udp,
        };
        let role = Role::Acceptor {
            incoming: Some(incoming),
            slot: Some(slot),
        };
        PeerActor::new(node, ports, role, new_status(transport, false, None))
    }

    fn new(node: Arc<NodeShared>, ports: PeerPorts, role: Role, status: LinkStatus) -> PeerActor {
        PeerActor {
            node,
            ports,
            role,
            state: State::Init { attempt: None },
            status,
            link_id: 0,
            admitted: false,
            timer: None,
            closing: false,
            linger: false,
            announced: false,
            early: Vec::new(),
            early_bytes: 0,
            reported_rtt: None,
        }
    }
}

fn new_status(transport: Transport, dialed: bool, target: Option<Endpoint>) -> LinkStatus {
    LinkStatus {
        link_id: 0,
        transport,
        dialed,
        target,
        local_addr: None,
        remote_addr: None,
        state: PeerState::Init,
        node_id: None,
        rtt: None,
        last_heard_us: None,
        last_error: None,
        restarts: 0,
        attempts: 0,
        standby: false,
    }
}

impl Actor for PeerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        self.link_id = self.node.next_link_id();
        self.status.link_id = self.link_id;
        self.admitted = false;
        match &mut self.role {
            Role::Acceptor { incoming, .. } => {
                if let Some(incoming) = incoming.take() {
                    self.start_incoming(incoming, ctx);
                }
            }
            Role::Dialer {
                standby,
                backoff,
                dialed_once,
                shut_down,
                ..
            } => {
                if *standby || *shut_down {
                    return;
                }
                let delay = if *dialed_once {
                    backoff.next_delay_ms(self.node.random_u64())
                } else {
                    0
                };
                *dialed_once = true;
                ctx.run_later(Duration::from_millis(delay), |act, ctx| act.dial(ctx));
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.release_attempt();
    }
}

impl Supervised for PeerActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Streams, the writer and timers were dropped with the old context.
        self.release_attempt();
        self.timer = None;
        self.closing = false;
        {
            let s = &mut self.status;
            s.restarts += 1;
        }
    }
}

impl Handler<quic::DataIn> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: quic::DataIn, ctx: &mut Self::Context) {
        if msg.link_id != self.link_id {
            return; // a stream of a connection this actor already left
        }
        self.guarded(ctx, |act, ctx| {
            match msg.frame {
                Some(frame) => act.on_data_stream(frame),
                None => act.on_stream_error(Cause::Oversize),
            }
            act.drive(ctx);
        });
    }
}

impl Handler<SendFrame> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: SendFrame, ctx: &mut Self::Context) {
        let Some(attempt) = self.attempt_mut() else {
            return;
        };
        if let Err(cause) = attempt.link.send_frame(&msg.frame) {
            debug!(
                "{}: cannot send {}: {cause}",
                self.describe(),
                msg.frame.kind()
            );
        }
        self.drive(ctx);
    }
}

impl Handler<CloseLink> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: CloseLink, ctx: &mut Self::Context) {
        if msg.reason == CloseReason::Shutdown {
            if let Role::Dialer { shut_down, .. } = &mut self.role {
                *shut_down = true;
            }
        }
        match self.attempt_mut() {
            Some(attempt) => attempt.link.refuse(msg.reason),
            // A dialer waiting out a backoff: cancel the pending dial (the restart is idle).
            None if msg.reason == CloseReason::Shutdown => ctx.stop(),
            None => {}
        }
        self.drive(ctx);
    }
}

impl Handler<GetLinkStatus> for PeerActor {
    type Result = MessageResult<GetLinkStatus>;

    fn handle(&mut self, _: GetLinkStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.status.clone())
    }
}

impl Handler<Redial> for PeerActor {
    type Result = ();

    fn handle(&mut self, _: Redial, ctx: &mut Self::Context) {
        if let Role::Dialer { standby, .. } = &mut self.role {
            if *standby {
                *standby = false;
                {
                    let s = &mut self.status;
                    s.standby = false;
                }
                debug!("{}: woken to re-dial", self.describe());
                ctx.stop(); // restart: started() schedules the dial with backoff
            }
        }
    }
}

impl Handler<DialNow> for PeerActor {
    type Result = ();

    fn handle(&mut self, _: DialNow, ctx: &mut Self::Context) {
        let idle = self.attempt_ref().is_none() && !self.closing;
        if let Role::Dialer {
            standby, backoff, ..
        } = &mut self.role
        {
            if idle && !*standby {
                backoff.reset();
                debug!("{}: dialling now (path opened)", self.describe());
                ctx.stop(); // restart: started() dials after the (reset) base delay
            }
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectFault> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: InjectFault, ctx: &mut Self::Context) {
        warn!("{}: injected fault {msg:?}", self.describe());
        self.guarded(ctx, |act, ctx| match msg {
            InjectFault::Panic => panic!("injected panic in PeerActor"),
            InjectFault::Error => {
                if let Some(a) = act.attempt_mut() {
                    a.link.transport_error(Cause::TransportClosed);
                }
                act.drive(ctx);
            }
        });
    }
}

/// TCP: length-prefixed records.
impl StreamHandler<Result<BytesMut, std::io::Error>> for PeerActor {
    fn handle(&mut self, item: Result<BytesMut, std::io::Error>, ctx: &mut Self::Context) {
        self.guarded(ctx, |act, ctx| {
            match item {
                Ok(mut bytes) => act.on_stream_message(&mut bytes),
                Err(e) => act.on_stream_error(tcp_error_cause(&e)),
            }
            act.drive(ctx);
        });
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.on_stream_error(Cause::TransportClosed);
        self.drive(ctx);
    }
}

/// WebSocket: one binary message per record.
impl StreamHandler<Result<Message, tungstenite::Error>> for PeerActor {
    fn handle(&mut self, item: Result<Message, tungstenite::Error>, ctx: &mut Self::Context) {
        self.guarded(ctx, |act, ctx| {
            match item {
                // Unique after the read, so this takes the buffer over without a copy.
                Ok(Message::Binary(bytes)) => act.on_stream_message(&mut BytesMut::from(bytes)),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => act.on_stream_error(Cause::TransportClosed),
                Ok(Message::Text(_)) => {
                    act.on_stream_error(Cause::BadFrame("text message on a binary link".into()))
                }
                Err(tungstenite::Error::Capacity(_)) => act.on_stream_error(Cause::Oversize),
                Err(e) => act.on_stream_error(Cause::BadFrame(e.to_string())),
            }
            act.drive(ctx);
        });
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.on_stream_error(Cause::TransportClosed);
        self.drive(ctx);
    }
}

/// Unsent bytes a TCP socket may hold before it stops taking more (Linux `TCP_NOTSENT_LOWAT`):
/// the rest waits in the writer's lanes, where control records go first, instead of in a
/// kernel buffer that autotuning can grow to megabytes (seconds on a slow link).
const TCP_NOTSENT_LOWAT_BYTES: i32 = 128 * 1024;

/// Sets [`TCP_NOTSENT_LOWAT_BYTES`] on a TCP socket; best effort (Linux only).
fn limit_unsent(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let value = TCP_NOTSENT_LOWAT_BYTES;
        // SAFETY: setsockopt with a valid fd, a pointer to an i32 and its size.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                std::ptr::addr_of!(value).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            debug!("TCP_NOTSENT_LOWAT: {}", std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// The TCP reader's length-prefix limit before the link raises it: a hello record.
const PRE_AUTH_READ_LIMIT: usize =
    crate::wire::MAX_HELLO_BYTES + crate::wire::record::RECORD_OVERHEAD;

/// A length-delimited decoder whose frame limit follows a shared value, so the PeerActor can
/// raise it once the peer is admitted while the reader runs in its stream.
struct LimitedCodec {
    inner: LengthDelimitedCodec,
    limit: Arc<AtomicUsize>,
}

impl tokio_util::codec::Decoder for LimitedCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        self.inner
            .set_max_frame_length(self.limit.load(Ordering::Relaxed));
        self.inner.decode(src)
    }
}

fn tcp_error_cause(e: &std::io::Error) -> Cause {
    let oversize = e
        .get_ref()
        .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>());
    if oversize {
        Cause::Oversize
    } else {
        Cause::TransportClosed
    }
}

impl PeerActor {
    // ---- setting up a connection ----

    fn dial(&mut self, ctx: &mut Context<Self>) {
        let Role::Dialer { target, udp, .. } = &self.role else {
            return;
        };
        let target = target.clone();
        {
            let s = &mut self.status;
            s.attempts += 1;
        }
        debug!("dialing {target}");
        match target.transport {
            Transport::Tcp | Transport::Ws => self.dial_stream(target, ctx),
            Transport::Udp => {
                let udp = udp.clone();
                let fut = async move {
                    let remote = resolve(&target).await?;
                    let endpoint = pick_udp(&udp, remote)
                        .ok_or_else(|| format!("no UDP socket that can reach {remote}"))?;
                    Ok::<_, String>((quic::dial(endpoint.endpoint, remote).await?, remote))
                };
                ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
                    Ok((opened, remote)) => act.attach_quic(opened, remote, true, ctx),
                    Err(e) => act.dial_failed(e, ctx),
                }));
            }
        }
    }

    fn dial_stream(&mut self, target: Endpoint, ctx: &mut Context<Self>) {
        let ws_config = self.ws_config();
        let fut = async move { connect_stream(&target, ws_config).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(Connected::Tcp(stream, remote)) => act.attach_tcp(stream, remote, true, ctx),
            Ok(Connected::Ws(ws, remote)) => act.attach_ws(*ws, remote, true, ctx),
            Err(e) => act.dial_failed(e, ctx),
        }));
    }

    fn dial_failed(&mut self, error: String, ctx: &mut Context<Self>) {
        debug!("{}: {error}", self.describe());
        {
            let s = &mut self.status;
            s.last_error = Some(error);
        }
        ctx.stop();
    }

    fn start_incoming(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        match incoming {
            Incoming::Tcp(stream, remote) => self.attach_tcp(stream, remote, false, ctx),
            Incoming::Quic(connecting, remote, local) => {
                let fut = quic::accept(connecting, local);
                ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(opened) => act.attach_quic(opened, remote, false, ctx),
                    Err(e) => {
                        debug!("inbound quic from {remote}: {e}");
                        act.node.metrics.refused.handshake.inc();
                        ctx.stop();
                    }
                }));
            }
            Incoming::Ws(stream, remote) => {
                let config = self.ws_config();
                let fut = async move {
                    let accept = tokio_tungstenite::accept_async_with_config(stream, Some(config));
                    tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), accept)
                        .await
                        .map_err(|_| "websocket upgrade timed out".to_string())?
                        .map_err(|e| format!("websocket upgrade: {e}"))
                };
                ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(ws) => act.attach_ws(ws, remote, false, ctx),
                    Err(e) => {
                        debug!("inbound websocket from {remote}: {e}");
                        act.node.metrics.refused.bad_frame.inc();
                        ctx.stop();
                    }
                }));
            }
        }
    }

    fn ws_config(&self) -> WebSocketConfig {
        let limit = self.node.max_record_bytes();
        WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit))
    }

    fn attach_tcp(
        &mut self,
        stream: TcpStream,
        remote: SocketAddr,
        dialed: bool,
        ctx: &mut Context<Self>,
    ) {
        let local = stream.local_addr().ok();
        limit_unsent(&stream);
        let (read, write) = stream.into_split();
        let (tx, limit) = self.length_prefixed(read, write, ctx);
        self.set_local(local);
        let conn = Conn::Stream {
            tx,
            read_limit: Some(limit),
        };
        self.attach(conn, remote, dialed, ctx);
    }

    /// Length-prefixed records over a byte stream (TCP, a QUIC control stream): its reader
    /// (whose length limit follows the link's [`Link::read_limit`] through the returned
    /// handle, never above a hello before the peer proved membership) and its writer's lanes.
    fn length_prefixed<R, W>(
        &self,
        read: R,
        write: W,
        ctx: &mut Context<Self>,
    ) -> (writer::StreamTx, Arc<AtomicUsize>)
    where
        R: tokio::io::AsyncRead + 'static,
        W: tokio::io::AsyncWrite + Unpin + 'static,
    {
        let codec = || {
            LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(self.node.max_record_bytes())
                .new_codec()
        };
        let limit = Arc::new(AtomicUsize::new(PRE_AUTH_READ_LIMIT));
        let reader = LimitedCodec {
            inner: codec(),
            limit: limit.clone(),
        };
        ctx.add_stream(FramedRead::with_capacity(read, reader, READ_BUFFER_BYTES));
        let tx = spawn_writer(FramedWrite::new(write, codec()), Bytes::from, ctx);
        (tx, limit)
    }

    fn attach_ws(
        &mut self,
        ws: tokio_tungstenite::WebSocketStream<TcpStream>,
        remote: SocketAddr,
        dialed: bool,
        ctx: &mut Context<Self>,
    ) {
        let local = ws.get_ref().local_addr().ok();
        // No TCP_NOTSENT_LOWAT under WebSocket: its bulk row measured ~10 % lower with it
        // (250 vs 275 MB/s, same session); TCP's did not change.
        let (sink, stream) = ws.split();
        ctx.add_stream(stream);
        let tx = spawn_writer(sink, |v: Vec<u8>| Message::Binary(v.into()), ctx);
        self.set_local(local);
        let conn = Conn::Stream {
            tx,
            read_limit: None,
        };
        self.attach(conn, remote, dialed, ctx);
    }

    fn attach_quic(
        &mut self,
        opened: quic::Opened,
        remote: SocketAddr,
        dialed: bool,
        ctx: &mut Context<Self>,
    ) {
        let (tx, limit) = self.length_prefixed(opened.recv, opened.send, ctx);
        let data = quic::spawn_data_writer(opened.connection.clone(), ctx);
        self.set_local(opened.local);
        let conn = Conn::Quic {
            tx,
            read_limit: limit,
            data,
            connection: opened.connection,
        };
        self.attach(conn, remote, dialed, ctx);
    }

    fn set_local(&mut self, local: Option<SocketAddr>) {
        self.status.local_addr = local;
    }

    /// A socket exists: start the link protocol on it.
    fn attach(&mut self, conn: Conn, remote: SocketAddr, dialed: bool, ctx: &mut Context<Self>) {
        let channel = match &conn {
            Conn::Quic { connection, .. } => match crate::quic::binding(connection) {
                Some(b) => Some(b),
                None => {
                    warn!("quic link to {remote}: no keying material to bind to");
                    ctx.stop();
                    return;
                }
            },
            Conn::Stream { .. } => None,
        };
        let params = self.node.link_params(channel, dialed);
        let now = self.node.now_us();
        let (local, keys) = (self.node.local.clone(), self.node.keys.clone());
        let link = if dialed {
            Link::dial(params, local, keys, now)
        } else {
            Link::accept(params, local, keys, now)
        };
        self.status.remote_addr = Some(remote);
        let link = match link {
            Ok(link) => link,
            Err(cause) => {
                warn!("cannot start a link to {remote}: {cause}");
                ctx.stop();
                return;
            }
        };
        let attempt = Attempt { conn, link, remote };
        self.transition(Step::Connect, Some(attempt));
        self.drive(ctx);
    }

    // ---- input ----

    fn on_stream_message(&mut self, bytes: &mut [u8]) {
        let now = self.node.now_us();
        self.node.metrics.bytes_in.add(bytes.len() as u64);
        if let Some(a) = self.attempt_mut() {
            a.link.handle_stream_message(now, bytes);
        }
    }

    fn on_data_stream(&mut self, frame: Bytes) {
        let now = self.node.now_us();
        self.node.metrics.bytes_in.add(frame.len() as u64);
        if let Some(a) = self.attempt_mut() {
            a.link.handle_data_stream(now, frame);
        }
    }

    fn on_stream_error(&mut self, cause: Cause) {
        if let Some(a) = self.attempt_mut() {
            a.link.transport_error(cause);
        }
    }

    // ---- driving the link ----

    /// Sends what the link queued, handles its events and re-arms its timer.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        let node = self.node.clone();
        loop {
            let Some(attempt) = self.attempt_mut() else {
                return;
            };
            let (frames_in, frames_out) = attempt.link.take_frame_counts();
            node.metrics.frames_in.add(frames_in);
            node.metrics.frames_out.add(frames_out);
            let mut failed = None;
            while let Some(t) = attempt.link.poll_transmit() {
                if let Err(e) = transmit(&mut attempt.conn, t, &node) {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(cause) = failed {
                attempt.link.transport_error(cause);
            }
            let limit = match &attempt.conn {
                Conn::Stream {
                    read_limit: Some(limit),
                    ..
                }
                | Conn::Quic {
                    read_limit: limit, ..
                } => Some(limit),
                Conn::Stream { .. } => None,
            };
            if let Some(limit) = limit {
                limit.store(
                    attempt.link.read_limit().max(PRE_AUTH_READ_LIMIT),
                    Ordering::Relaxed,
                );
            }
            let Some(event) = attempt.link.poll_event() else {
                break;
            };
            self.on_event(event, ctx);
        }
        self.report_rtt();
        self.update_status();
        self.arm_timer(ctx);
    }

    /// Tells the relay the link's average RTT when it changed (its routing costs).
    fn report_rtt(&mut self) {
        if !self.announced {
            return;
        }
        let avg = match &self.state {
            State::Active { attempt } => attempt.link.rtt().and_then(|r| r.avg_us()),
            _ => None,
        };
        if let Some(avg_us) = avg.filter(|a| Some(*a) != self.reported_rtt) {
            self.reported_rtt = Some(avg_us);
            let _ = self.ports.relay.rtt.try_send(LinkRtt {
                link_id: self.link_id,
                avg_us,
            });
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let next = self.attempt_mut().and_then(|a| a.link.next_timeout());
        match (next, &self.timer) {
            (Some(deadline), Some((current, _))) if *current == deadline => {}
            (next, _) => {
                if let Some((_, handle)) = self.timer.take() {
                    ctx.cancel_future(handle);
                }
                if let Some(deadline) = next {
                    let wait = deadline.saturating_sub(self.node.now_us());
                    let handle = ctx.run_later(Duration::from_micros(wait), |act, ctx| {
                        act.timer = None;
                        let now = act.node.now_us();
                        if let Some(a) = act.attempt_mut() {
                            a.link.handle_timeout(now);
                        }
                        act.drive(ctx);
                    });
                    self.timer = Some((deadline, handle));
                }
            }
        }
    }

    fn on_event(&mut self, event: Event, ctx: &mut Context<Self>) {
        match event {
            Event::HelloVerified(hello) => self.request_admission(hello, None, ctx),
            Event::Up { hello, welcome } => {
                if self.admitted {
                    self.transition_active(ctx);
                } else {
                    self.request_admission(hello, welcome, ctx);
                }
            }
            Event::Frame(frame) => match *frame {
                frame @ (Frame::Data(_)
                | Frame::LinkState(_)
                | Frame::PunchRequest { .. }
                | Frame::Punch(_)
                | Frame::PunchRefused { .. }
                | Frame::OverBudget(_)) => self.pass_to_relay(frame),
                other => debug!("{}: unexpected frame {}", self.describe(), other.kind()),
            },
            Event::Closed(cause) => self.on_closed(cause, ctx),
        }
    }

    /// Asks the DiscoveryActor to admit an authenticated peer (duplicate rule, key pinning) and
    /// for the known-node list the listener puts in its `welcome`.
    fn request_admission(
        &mut self,
        hello: Box<crate::wire::frame::Hello>,
        welcome: Option<crate::proto::link::WelcomeInfo>,
        ctx: &mut Context<Self>,
    ) {
        let Some(attempt) = self.attempt_ref() else {
            return;
        };
        let dialer = match &self.role {
            Role::Dialer { id, .. } => Some(*id),
            Role::Acceptor { .. } => None,
        };
        let transport = self.status.transport;
        let remote = attempt.remote;
        let node_id = hello.node_id.clone();
        let msg = Admit {
            link_id: self.link_id,
            peer: PeerHandle {
                close: ctx.address().recipient(),
                status: ctx.address().recipient(),
            },
            dialer,
            transport,
            remote,
            hello,
            welcome,
        };
        let link_id = self.link_id;
        ctx.spawn(
            self.ports
                .admit
                .send(msg)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    if act.link_id != link_id {
                        return;
                    }
                    let now = act.node.now_us();
                    let observed = format!("{}://{}", transport, remote);
                    let Some(phase) = act.attempt_ref().map(|a| a.link.phase()) else {
                        return;
                    };
                    match res {
                        Ok(Ok(known)) => {
                            act.admitted = true;
                            act.status.node_id = Some(node_id);
                            if phase == Phase::Active {
                                // Dialer: the welcome already made the link Active.
                                act.transition_active(ctx);
                            } else if let Some(a) = act.attempt_mut() {
                                a.link.admit(now, observed, known);
                            }
                        }
                        Ok(Err(reason)) => {
                            if let Some(a) = act.attempt_mut() {
                                a.link.refuse(reason);
                            }
                        }
                        Err(_) => {
                            if let Some(a) = act.attempt_mut() {
                                a.link.refuse(CloseReason::Shutdown);
                            }
                        }
                    }
                    act.drive(ctx);
                }),
        );
    }

    fn transition_active(&mut self, ctx: &mut Context<Self>) {
        let Some(attempt) = self.attempt_ref() else {
            return;
        };
        let peer = attempt.link.peer().map(|h| h.node_id.clone());
        let public_key = attempt.link.peer().map(|h| h.public_key);
        let network = attempt
            .link
            .peer()
            .map(|h| h.network.clone())
            .unwrap_or_default();
        let remote = attempt.remote;
        info!(
            "link up: {} {} via {} ({})",
            peer.as_deref().unwrap_or("?"),
            remote,
            self.status.transport,
            if self.is_dialer() {
                "dialed"
            } else {
                "accepted"
            }
        );
        self.node.metrics.links_established.inc();
        match &mut self.role {
            Role::Dialer { backoff, .. } => backoff.reset(),
            Role::Acceptor { slot, .. } => *slot = None,
        }
        {
            let s = &mut self.status;
            s.node_id.clone_from(&peer);
            s.attempts = 0;
            s.last_error = None;
        }
        self.transition(Step::Up, None);
        if let Some(Attempt {
            conn: Conn::Quic { connection, .. },
            ..
        }) = self.attempt_ref()
        {
            let connection = connection.clone();
            let limits = self.node.quic_limits();
            crate::quic::open_for_data(&connection, limits);
            quic::spawn_data_reader(connection, limits.max_frame_bytes, self.link_id, ctx);
        }
        if let (Some(node_id), Some(public_key)) = (peer, public_key) {
            let (transport, local) = (self.status.transport, self.status.local_addr);
            let info = LinkInfo {
                node_id,
                kind: LinkKind::of(&self.node.local.network, &network, self.is_dialer()),
                transport,
                public_key,
                remote: Some(remote),
                local,
            };
            self.ports.relay.up.do_send(LinkUp {
                link_id: self.link_id,
                info,
                send: ctx.address().recipient(),
            });
            self.announced = true;
            for frame in std::mem::take(&mut self.early) {
                self.pass_to_relay(frame);
            }
            self.early_bytes = 0;
        }
    }

    /// Hands a frame to the relay, or holds it until the link is announced.
    fn pass_to_relay(&mut self, frame: Frame) {
        if self.announced {
            let msg = Inbound {
                link_id: self.link_id,
                frame,
            };
            if self.ports.relay.frames.try_send(msg).is_err() {
                self.node.metrics.frames_dropped.inc();
            }
            return;
        }
        let size = match &frame {
            Frame::Data(e) => e.sealed.len(),
            _ => 0,
        } + 256;
        if self.early.len() >= EARLY_FRAMES || self.early_bytes + size > EARLY_FRAME_BYTES {
            debug!("{}: frame before admission dropped", self.describe());
            self.node.metrics.frames_dropped.inc();
            return;
        }
        self.early_bytes += size;
        self.early.push(frame);
    }

    fn on_closed(&mut self, cause: Cause, ctx: &mut Context<Self>) {
        let was_active = matches!(self.state, State::Active { .. });
        self.count_close(&cause);
        let what = self.describe();
        match &cause {
            Cause::Refused(CloseReason::WrongSecret) => {
                warn!("{what}: refused: peer does not know the network secret (wrong secret)")
            }
            Cause::ClosedByPeer(CloseReason::WrongSecret) => {
                warn!("{what}: peer refused us: wrong secret")
            }
            Cause::Refused(CloseReason::Foreign) | Cause::ClosedByPeer(CloseReason::Foreign) => {
                warn!(
                    "{what}: refused: foreign network (relaying for other networks is not enabled)"
                )
            }
            Cause::Refused(CloseReason::Duplicate)
            | Cause::ClosedByPeer(CloseReason::Duplicate) => {
                debug!("{what}: closed as a duplicate link")
            }
            other if was_active => info!("{what}: link down: {other}"),
            other => debug!("{what}: {other}"),
        }
        {
            let s = &mut self.status;
            s.last_error = Some(cause.to_string());
        }
        if self.admitted {
            self.ports.down.do_send(LinkDown {
                link_id: self.link_id,
                reason: self.down_reason(),
            });
            self.admitted = false;
        }
        if let Role::Dialer {
            backoff, standby, ..
        } = &mut self.role
        {
            match cause {
                Cause::Refused(CloseReason::Duplicate)
                | Cause::ClosedByPeer(CloseReason::Duplicate) => {
                    *standby = true;
                    {
                        let s = &mut self.status;
                        s.standby = true;
                    }
                }
                // Refusals that will not fix themselves: do not re-dial in a tight loop.
                Cause::Refused(
                    CloseReason::WrongSecret
                    | CloseReason::Foreign
                    | CloseReason::KeyMismatch
                    | CloseReason::Uncertified
                    | CloseReason::Protocol,
                )
                | Cause::ClosedByPeer(
                    CloseReason::Uncertified
                    | CloseReason::WrongSecret
                    | CloseReason::Foreign
                    | CloseReason::KeyMismatch
                    | CloseReason::Protocol,
                ) => backoff.saturate(),
                _ => {}
            }
        }
        let stream = self.attempt_ref().is_some();
        // A QUIC connection closes at once unless our `close` frame is on its way.
        self.linger = matches!(cause, Cause::Refused(_));
        // Dropping the attempt closes the writer's queue: it flushes what is left (our `close`
        // frame) and then ends, which stops the actor. The linger bounds a stuck socket.
        self.transition(Step::Down, None);
        if stream {
            self.closing = true;
            ctx.run_later(Duration::from_millis(CLOSE_LINGER_MS), |_, ctx| ctx.stop());
        } else {
            ctx.stop();
        }
    }

    fn count_close(&self, cause: &Cause) {
        let m = &self.node.metrics;
        m.links_closed.inc();
        let (set, reason) = match cause {
            Cause::Refused(r) => (&m.refused, *r),
            Cause::ClosedByPeer(r) => (&m.refused_by_peer, *r),
            Cause::BadFrame(_) => (&m.refused, CloseReason::BadFrame),
            Cause::Oversize => {
                m.refused.oversize.inc();
                return;
            }
            Cause::Handshake(_) => {
                m.refused.handshake.inc();
                return;
            }
            Cause::Timeout | Cause::TransportClosed => return,
        };
        match reason {
            CloseReason::WrongSecret => set.wrong_secret.inc(),
            CloseReason::Foreign => set.foreign.inc(),
            CloseReason::Duplicate => set.duplicate.inc(),
            CloseReason::KeyMismatch => set.key_mismatch.inc(),
            CloseReason::BadFrame => set.bad_frame.inc(),
            CloseReason::Protocol => set.protocol.inc(),
            CloseReason::Uncertified => set.uncertified.inc(),
            CloseReason::Timeout | CloseReason::Shutdown => {}
        }
    }

    fn update_status(&mut self) {
        let state = self.state.visible();
        let (rtt, heard) = match &self.state {
            State::Active { attempt } => (attempt.link.rtt(), attempt.link.last_heard_us()),
            _ => (None, None),
        };
        {
            let s = &mut self.status;
            s.state = state;
            if state == PeerState::Active {
                s.rtt = rtt;
                s.last_heard_us = heard;
            }
        }
    }

    // ---- helpers ----

    /// Runs `f`, turning a panic into a supervised restart instead of a lost actor.
    fn guarded(&mut self, ctx: &mut Context<Self>, f: impl FnOnce(&mut Self, &mut Context<Self>)) {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(self, ctx)));
        if result.is_err() {
            warn!("{}: panicked; the supervisor restarts it", self.describe());
            {
                let s = &mut self.status;
                s.last_error = Some("panic".into());
            }
            if self.admitted {
                self.ports.down.do_send(LinkDown {
                    link_id: self.link_id,
                    reason: self.down_reason(),
                });
                self.admitted = false;
            }
            self.transition(Step::Down, None);
            ctx.stop();
        }
    }

    fn attempt_mut(&mut self) -> Option<&mut Attempt> {
        match &mut self.state {
            State::Init { attempt } | State::Disconnected { attempt } => attempt.as_mut(),
            State::Active { attempt } => Some(attempt),
        }
    }

    fn attempt_ref(&self) -> Option<&Attempt> {
        match &self.state {
            State::Init { attempt } | State::Disconnected { attempt } => attempt.as_ref(),
            State::Active { attempt } => Some(attempt),
        }
    }

    /// Why the link went, for [`LinkDown`].
    fn down_reason(&self) -> String {
        self.status
            .last_error
            .clone()
            .unwrap_or_else(|| "closed".to_string())
    }

    fn is_dialer(&self) -> bool {
        matches!(self.role, Role::Dialer { .. })
    }

    /// Drops the connection (a QUIC connection is closed once its `close` frame had a chance).
    fn release_attempt(&mut self) {
        self.transition(Step::Down, None);
    }

    /// The only place the state changes: the pure machine ([`PeerState::next`]) picks the next
    /// state, this moves the connection into it. A connection that leaves the state is dropped
    /// here.
    fn transition(&mut self, step: Step, new_attempt: Option<Attempt>) {
        let old = std::mem::replace(&mut self.state, State::Init { attempt: None });
        let from = old.visible();
        if step == Step::Down {
            if self.announced {
                self.ports.relay.down.do_send(LinkDown {
                    link_id: self.link_id,
                    reason: self.down_reason(),
                });
            }
            self.announced = false;
            self.early.clear();
            self.early_bytes = 0;
            self.reported_rtt = None;
        }
        let current = match old {
            State::Init { attempt } | State::Disconnected { attempt } => attempt,
            State::Active { attempt } => Some(attempt),
        };
        let (kept, released) = match step {
            Step::Connect => (new_attempt, current),
            Step::Up => (current, None),
            Step::Down => (None, current),
        };
        self.state = match (from.next(step), kept) {
            (PeerState::Active, Some(attempt)) => State::Active { attempt },
            (PeerState::Active, None) => State::Disconnected { attempt: None },
            (PeerState::Init, attempt) => State::Init { attempt },
            (PeerState::Disconnected, attempt) => State::Disconnected { attempt },
        };
        if let Some(Attempt {
            conn: Conn::Quic { connection, .. },
            ..
        }) = released
        {
            quic::close_later(connection, std::mem::take(&mut self.linger));
        }
        self.update_status();
    }

    fn describe(&self) -> String {
        let s = &self.status;
        match &self.role {
            Role::Dialer { target, .. } => match &s.node_id {
                Some(id) => format!("peer {id} ({target})"),
                None => format!("peer {target}"),
            },
            Role::Acceptor { .. } => match (&s.node_id, s.remote_addr) {
                (Some(id), Some(r)) => format!("peer {id} ({}://{r})", s.transport),
                (None, Some(r)) => format!("inbound {}://{r}", s.transport),
                _ => "inbound link".into(),
            },
        }
    }
}
