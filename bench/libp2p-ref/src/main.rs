//! libp2p-ref: the reference peer for msgtier's benchmarks.
//!
//! Two local processes talk over rust-libp2p's stock stack: TCP (nodelay) + Noise + Yamux, with
//! the request-response behaviour and nothing else (no identify, no ping, no kademlia); or, with
//! `server --stream` and `client --mode stream-rtt`, the `libp2p-stream` behaviour and nothing
//! else.
//!
//! * `libp2p-ref server --listen 127.0.0.1:0` prints
//!   `{"listening":"/ip4/127.0.0.1/tcp/PORT/p2p/PEERID"}` on stdout and answers every request
//!   with a small ack (the request's size, as a u64). With `--stream` it instead accepts streams
//!   on `/msgtier-bench/pingpong/1` and echoes every byte back on the same stream.
//! * `libp2p-ref client --connect <multiaddr> --mode rtt|rate|bulk ...` measures and prints one
//!   JSON line on stdout, then exits 0. `--mode stream-rtt` (against a `--stream` server) opens
//!   ONE stream and times sequential ping-pongs on it (write `--size` bytes, read them back).
//!
//! Everything else (errors, progress) goes to stderr, so stdout is machine-readable.

use std::{
    collections::HashMap,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand, ValueEnum};
use futures::{prelude::*, StreamExt};
use libp2p::{
    multiaddr::Protocol,
    noise,
    request_response::{self, cbor, Codec, Event, Message, OutboundRequestId, ProtocolSupport},
    swarm::{NetworkBehaviour, Swarm, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, SwarmBuilder,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Largest request either codec accepts (bulk payloads up to this size work).
const MAX_REQUEST: u64 = 64 * 1024 * 1024;
/// Largest response (the ack is 8 bytes raw, ~10 bytes CBOR).
const MAX_RESPONSE: u64 = 64 * 1024;
/// Per-request timeout: generous so a 64 MiB request on a loaded machine never trips it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Concurrent request-response streams per connection (the default, 100, would cap --inflight).
const MAX_STREAMS: usize = 1024;
/// The client gives up if the whole run takes longer than this.
const CLIENT_DEADLINE: Duration = Duration::from_secs(600);

const RAW_PROTOCOL: &str = "/msgtier-bench/raw/1.0.0";
const CBOR_PROTOCOL: &str = "/msgtier-bench/cbor/1.0.0";
/// The echo protocol of `server --stream` / `client --mode stream-rtt` (libp2p-stream).
const STREAM_PROTOCOL: &str = "/msgtier-bench/pingpong/1";
/// Read buffer of the stream echo (a read returns at most this much; larger messages loop).
const ECHO_BUF: usize = 64 * 1024;

#[derive(Parser)]
#[command(
    name = "libp2p-ref",
    version,
    about = "rust-libp2p reference peer (TCP+Noise+Yamux+request-response) for msgtier benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Listen and answer every request with a small ack (with --stream: echo every stream)
    /// until killed.
    Server {
        /// Address to listen on: IP:PORT (loopback only; port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Wire codec (client and server must agree).
        #[arg(long, value_enum, default_value_t = CodecKind::Raw)]
        codec: CodecKind,
        /// Serve the libp2p-stream echo protocol (for `--mode stream-rtt`) instead of
        /// request-response (`--codec` is then ignored).
        #[arg(long)]
        stream: bool,
        /// Exit by itself after this many milliseconds.
        #[arg(long)]
        exit_after_ms: Option<u64>,
    },
    /// Connect to a server, run one measurement, print one JSON line, exit.
    Client {
        /// The server's multiaddr, as printed by `server`: /ip4/127.0.0.1/tcp/PORT/p2p/PEERID.
        #[arg(long)]
        connect: Multiaddr,
        /// What to measure.
        #[arg(long, value_enum)]
        mode: Mode,
        /// Timed requests [default: rtt 2000, rate 20000, bulk 50, stream-rtt 2000].
        #[arg(long)]
        count: Option<usize>,
        /// Untimed requests sent first, same shape as the timed ones
        /// [default: rtt 200, rate 2000, bulk 3, stream-rtt 200].
        #[arg(long)]
        warmup: Option<usize>,
        /// Requests kept in flight [default: rtt 1 (fixed), rate 64, bulk 1, stream-rtt 1
        /// (fixed)].
        #[arg(long)]
        inflight: Option<usize>,
        /// Request payload size in bytes [default: rtt 100, rate 100, bulk 1048576,
        /// stream-rtt 64].
        #[arg(long)]
        size: Option<usize>,
        /// Wire codec (client and server must agree; not used by stream-rtt).
        #[arg(long, value_enum, default_value_t = CodecKind::Raw)]
        codec: CodecKind,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    Rtt,
    Rate,
    Bulk,
    /// Sequential ping-pongs on one long-lived libp2p-stream stream (needs `server --stream`).
    StreamRtt,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum CodecKind {
    /// Length-prefixed raw bytes (u32 big-endian length, then the payload).
    Raw,
    /// libp2p's stock cbor codec; the payload is a CBOR byte string.
    Cbor,
}

// ---------------------------------------------------------------------------------------------
// Messages and codecs.

/// A request: opaque payload bytes. Serialized as a CBOR *byte string* (like serde_bytes), not
/// as serde's default sequence-of-u8, which would cost ~2 bytes and one decode call per byte.
#[derive(Debug, Clone)]
struct Req(Vec<u8>);

impl Serialize for Req {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Req {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Req;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Req, E> {
                Ok(Req(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Req, E> {
                Ok(Req(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// The response: the number of payload bytes the server received.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Ack(u64);

/// Raw codec: each message is a u32 big-endian length followed by that many bytes. The request
/// payload is read straight into a buffer of the announced size (no serde, no copies).
#[derive(Clone)]
struct RawCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: u64) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as u64;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(data).await?;
    io.flush().await
}

impl Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Ack;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_REQUEST).await.map(Req)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Ack>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_frame(io, MAX_RESPONSE).await?;
        let bytes: [u8; 8] = buf
            .as_slice()
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "ack is not 8 bytes"))?;
        Ok(Ack(u64::from_be_bytes(bytes)))
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req.0).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Ack,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res.0.to_be_bytes()).await
    }
}

// ---------------------------------------------------------------------------------------------
// Swarm construction: TCP (nodelay) + Noise + Yamux + request-response (or libp2p-stream),
// nothing else.

fn build_swarm<C>(
    codec: C,
    protocol: &'static str,
) -> Result<Swarm<request_response::Behaviour<C>>, String>
where
    C: Codec<Protocol = StreamProtocol, Request = Req, Response = Ack> + Clone + Send + 'static,
{
    let rr_config = request_response::Config::default()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_max_concurrent_streams(MAX_STREAMS);
    let behaviour = request_response::Behaviour::with_codec(
        codec,
        [(StreamProtocol::new(protocol), ProtocolSupport::Full)],
        rr_config,
    );
    build_swarm_with(behaviour)
}

/// The swarm of either server/client kind: the one transport stack around `behaviour`.
fn build_swarm_with<B: NetworkBehaviour>(behaviour: B) -> Result<Swarm<B>, String> {
    let swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| format!("transport: {e}"))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| format!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

fn print_json(v: serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => h == "localhost",
        _ => false,
    })
}

// ---------------------------------------------------------------------------------------------
// Server.

async fn run_server<C>(
    codec: C,
    protocol: &'static str,
    listen: SocketAddr,
    exit_after: Option<Duration>,
) -> Result<(), String>
where
    C: Codec<Protocol = StreamProtocol, Request = Req, Response = Ack> + Clone + Send + 'static,
{
    let swarm = build_swarm(codec, protocol)?;
    serve(swarm, listen, exit_after, |swarm, event| match event {
        Event::Message {
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => {
            let ack = Ack(request.0.len() as u64);
            // Fails only if the client went away; nothing to do then.
            let _ = swarm.behaviour_mut().send_response(channel, ack);
        }
        Event::InboundFailure { peer, error, .. } => {
            eprintln!("libp2p-ref server: inbound failure from {peer}: {error}");
        }
        _ => {}
    })
    .await
}

/// `server --stream`: accepts streams on [`STREAM_PROTOCOL`] and echoes each one back.
async fn run_stream_server(listen: SocketAddr, exit_after: Option<Duration>) -> Result<(), String> {
    let swarm = build_swarm_with(libp2p_stream::Behaviour::new())?;
    let mut incoming = swarm
        .behaviour()
        .new_control()
        .accept(StreamProtocol::new(STREAM_PROTOCOL))
        .map_err(|e| format!("accept {STREAM_PROTOCOL}: {e}"))?;
    // Each stream gets a task of its own; the swarm is polled by `serve` below.
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            tokio::spawn(async move {
                if let Err(e) = echo(stream).await {
                    eprintln!("libp2p-ref server: stream from {peer}: {e}");
                }
            });
        }
    });
    serve(swarm, listen, exit_after, |_, ()| {}).await
}

/// Writes back every byte read, as soon as it is read, until the other side closes.
async fn echo(mut stream: libp2p::Stream) -> io::Result<()> {
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.close().await;
        }
        stream.write_all(&buf[..n]).await?;
        stream.flush().await?;
    }
}

/// Listens on `listen` (loopback only), prints the address line, then polls the swarm until
/// the listener closes or `exit_after` has passed, handing behaviour events to `on_event`.
async fn serve<B: NetworkBehaviour>(
    mut swarm: Swarm<B>,
    listen: SocketAddr,
    exit_after: Option<Duration>,
    mut on_event: impl FnMut(&mut Swarm<B>, B::ToSwarm),
) -> Result<(), String> {
    if !listen.ip().is_loopback() {
        return Err(format!("refusing to listen on {listen}: loopback only"));
    }
    let ip = match listen.ip() {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    let addr = Multiaddr::empty()
        .with(ip)
        .with(Protocol::Tcp(listen.port()));
    swarm.listen_on(addr).map_err(|e| format!("listen: {e}"))?;
    let local_peer = *swarm.local_peer_id();
    let deadline = exit_after.map(|d| tokio::time::Instant::now() + d);
    let mut announced = false;
    loop {
        let event = match deadline {
            Some(d) => match tokio::time::timeout_at(d, swarm.select_next_some()).await {
                Ok(ev) => ev,
                Err(_) => {
                    eprintln!("libp2p-ref server: --exit-after-ms reached, exiting");
                    return Ok(());
                }
            },
            None => swarm.select_next_some().await,
        };
        match event {
            SwarmEvent::NewListenAddr { address, .. } if !announced => {
                announced = true;
                let full = address.with(Protocol::P2p(local_peer));
                print_json(json!({ "listening": full.to_string() }));
            }
            SwarmEvent::Behaviour(ev) => on_event(&mut swarm, ev),
            SwarmEvent::ListenerError { error, .. } => {
                eprintln!("libp2p-ref server: listener error: {error}");
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                return Err(format!("listener closed: {reason:?}"));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client.

struct ClientOpts {
    mode: Mode,
    count: usize,
    warmup: usize,
    inflight: usize,
    size: usize,
}

/// A payload of `size` bytes that is not all zeros (the content does not matter to Noise or
/// either codec, but keeps compression-like shortcuts out of the picture).
fn payload(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let n = sorted.len();
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// Dials `connect` (loopback, ending in /p2p/PEERID) and waits for the connection (TCP + Noise +
/// Yamux handshakes) before any timing starts; answers the server's peer id.
async fn connect_to<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    connect: &Multiaddr,
) -> Result<PeerId, String> {
    if !is_loopback(connect) {
        return Err(format!("refusing to dial {connect}: loopback only"));
    }
    let server = match connect.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => return Err(format!("{connect} does not end in /p2p/PEERID")),
    };
    swarm
        .dial(connect.clone())
        .map_err(|e| format!("dial {connect}: {e}"))?;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server => {
                return Ok(server)
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(format!("connect to {connect}: {error}"));
            }
            _ => {}
        }
    }
}

/// The JSON line of a latency mode: nearest-rank percentiles of `samples_us` (sorted here).
fn rtt_json(mode: &str, count: usize, mut samples_us: Vec<u64>, size: usize) -> serde_json::Value {
    samples_us.sort_unstable();
    let s = &samples_us;
    json!({
        "mode": mode,
        "count": count,
        "p50_us": percentile(s, 0.50),
        "p90_us": percentile(s, 0.90),
        "p99_us": percentile(s, 0.99),
        "min_us": s[0],
        "max_us": s[s.len() - 1],
        "size": size,
    })
}

/// `--mode stream-rtt`: opens ONE stream on [`STREAM_PROTOCOL`] and does `warmup` + `count`
/// sequential ping-pongs on it: write `size` bytes (and flush), read `size` bytes back. Each
/// sample is the time from just before the write to the last byte read, in µs.
async fn run_stream_client(connect: Multiaddr, o: ClientOpts) -> Result<(), String> {
    let mut swarm = build_swarm_with(libp2p_stream::Behaviour::new())?;
    let mut control = swarm.behaviour().new_control();
    let server = connect_to(&mut swarm, &connect).await?;
    // From here the swarm is polled by a task of its own (it opens the stream; the bytes then
    // go through the connection's task, as in every libp2p program).
    let driver = tokio::spawn(async move {
        loop {
            if let SwarmEvent::ConnectionClosed { peer_id, cause, .. } =
                swarm.select_next_some().await
            {
                if peer_id == server {
                    eprintln!("libp2p-ref client: connection closed: {cause:?}");
                }
            }
        }
    });
    let msg = payload(o.size);
    let pingpong = async {
        let mut stream = control
            .open_stream(server, StreamProtocol::new(STREAM_PROTOCOL))
            .await
            .map_err(|e| e.to_string())?;
        let mut back = vec![0u8; o.size];
        let mut samples_us: Vec<u64> = Vec::with_capacity(o.count);
        for i in 0..o.warmup + o.count {
            let t0 = Instant::now();
            stream
                .write_all(&msg)
                .await
                .map_err(|e| format!("write: {e}"))?;
            stream.flush().await.map_err(|e| format!("flush: {e}"))?;
            stream
                .read_exact(&mut back)
                .await
                .map_err(|e| format!("read: {e}"))?;
            let dt = t0.elapsed();
            if back != msg {
                return Err(format!(
                    "ping-pong {i}: the echo differs from what was sent"
                ));
            }
            if i >= o.warmup {
                samples_us.push(dt.as_micros() as u64);
            }
        }
        let _ = stream.close().await;
        Ok::<_, String>(samples_us)
    };
    let result = tokio::time::timeout(CLIENT_DEADLINE, pingpong).await;
    driver.abort();
    let samples_us = result.map_err(|_| format!("gave up after {CLIENT_DEADLINE:?}"))??;
    print_json(rtt_json("stream-rtt", o.count, samples_us, o.size));
    Ok(())
}

async fn run_client<C>(
    codec: C,
    protocol: &'static str,
    connect: Multiaddr,
    o: ClientOpts,
) -> Result<(), String>
where
    C: Codec<Protocol = StreamProtocol, Request = Req, Response = Ack> + Clone + Send + 'static,
{
    let mut swarm = build_swarm(codec, protocol)?;
    let server = connect_to(&mut swarm, &connect).await?;

    let req = Req(payload(o.size));
    let total = o.warmup + o.count;
    // Request id -> (sequence number, time sent).
    let mut pending: HashMap<OutboundRequestId, (usize, Instant)> = HashMap::new();
    let mut next = 0usize; // next sequence number to send
    let mut done = 0usize; // responses received
    let mut samples_us: Vec<u64> = Vec::with_capacity(o.count);
    let mut timed_start: Option<Instant> = None;
    let mut timed_end = Instant::now();
    let inflight = o.inflight.max(1);

    let send = |swarm: &mut Swarm<request_response::Behaviour<C>>,
                next: &mut usize,
                pending: &mut HashMap<OutboundRequestId, (usize, Instant)>,
                timed_start: &mut Option<Instant>| {
        let now = Instant::now();
        if *next == o.warmup && timed_start.is_none() {
            *timed_start = Some(now);
        }
        let id = swarm.behaviour_mut().send_request(&server, req.clone());
        pending.insert(id, (*next, now));
        *next += 1;
    };

    // rtt: strictly one at a time. rate/bulk: keep `inflight` outstanding; in rate/bulk the
    // timed phase starts when the first timed request is sent, after every warm-up response
    // is back (so warm-up traffic never overlaps the timed window).
    let window = if o.mode == Mode::Rtt { 1 } else { inflight };
    let fill = |swarm: &mut Swarm<request_response::Behaviour<C>>,
                next: &mut usize,
                done: usize,
                pending: &mut HashMap<OutboundRequestId, (usize, Instant)>,
                timed_start: &mut Option<Instant>| {
        while *next < total && pending.len() < window {
            if *next == o.warmup && done < o.warmup {
                break; // drain warm-up first
            }
            send(swarm, next, pending, timed_start);
        }
    };

    fill(&mut swarm, &mut next, done, &mut pending, &mut timed_start);
    let deadline = tokio::time::Instant::now() + CLIENT_DEADLINE;
    while done < total {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| format!("gave up after {CLIENT_DEADLINE:?} with {done}/{total} done"))?;
        match event {
            SwarmEvent::Behaviour(Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => {
                let now = Instant::now();
                let (seq, sent) = pending
                    .remove(&request_id)
                    .ok_or("response to an unknown request")?;
                if response.0 != o.size as u64 {
                    return Err(format!(
                        "server acked {} bytes, sent {}",
                        response.0, o.size
                    ));
                }
                if seq >= o.warmup {
                    samples_us.push(now.duration_since(sent).as_micros() as u64);
                    timed_end = now;
                }
                done += 1;
                fill(&mut swarm, &mut next, done, &mut pending, &mut timed_start);
            }
            SwarmEvent::Behaviour(Event::OutboundFailure { error, .. }) => {
                return Err(format!("request failed: {error}"));
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } if peer_id == server => {
                return Err(format!("connection closed: {cause:?}"));
            }
            _ => {}
        }
    }

    let elapsed = timed_end.duration_since(timed_start.unwrap_or(timed_end));
    let elapsed_s = elapsed.as_secs_f64().max(1e-9);
    let elapsed_ms = round(elapsed_s * 1e3, 3);
    let out = match o.mode {
        Mode::Rtt => rtt_json("rtt", o.count, samples_us, o.size),
        Mode::Rate => json!({
            "mode": "rate",
            "count": o.count,
            "inflight": inflight,
            "elapsed_ms": elapsed_ms,
            "msgs_per_sec": round(o.count as f64 / elapsed_s, 1),
            "size": o.size,
        }),
        Mode::Bulk => json!({
            "mode": "bulk",
            "count": o.count,
            "size": o.size,
            "elapsed_ms": elapsed_ms,
            "mb_per_sec": round((o.count as f64 * o.size as f64) / elapsed_s / 1e6, 2),
            "inflight": inflight,
        }),
        Mode::StreamRtt => return Err("stream-rtt has a client of its own".to_string()),
    };
    print_json(out);
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("libp2p-ref: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Server {
                listen,
                codec,
                stream,
                exit_after_ms,
            } => {
                let exit_after = exit_after_ms.map(Duration::from_millis);
                if stream {
                    return run_stream_server(listen, exit_after).await;
                }
                match codec {
                    CodecKind::Raw => run_server(RawCodec, RAW_PROTOCOL, listen, exit_after).await,
                    CodecKind::Cbor => {
                        run_server(cbor_codec(), CBOR_PROTOCOL, listen, exit_after).await
                    }
                }
            }
            Cmd::Client {
                connect,
                mode,
                count,
                warmup,
                inflight,
                size,
                codec,
            } => {
                let (d_count, d_warmup, d_inflight, d_size) = match mode {
                    Mode::Rtt => (2000, 200, 1, 100),
                    Mode::Rate => (20000, 2000, 64, 100),
                    Mode::Bulk => (50, 3, 1, 1024 * 1024),
                    Mode::StreamRtt => (2000, 200, 1, 64),
                };
                let o = ClientOpts {
                    mode,
                    count: count.unwrap_or(d_count),
                    warmup: warmup.unwrap_or(d_warmup),
                    inflight: if matches!(mode, Mode::Rtt | Mode::StreamRtt) {
                        1
                    } else {
                        inflight.unwrap_or(d_inflight)
                    },
                    size: size.unwrap_or(d_size),
                };
                if o.count == 0 {
                    return Err("--count must be at least 1".to_string());
                }
                if o.size as u64 > MAX_REQUEST {
                    return Err(format!("--size is at most {MAX_REQUEST} bytes"));
                }
                if mode == Mode::StreamRtt {
                    if o.size == 0 {
                        return Err("--size must be at least 1 for stream-rtt".to_string());
                    }
                    return run_stream_client(connect, o).await;
                }
                match codec {
                    CodecKind::Raw => run_client(RawCodec, RAW_PROTOCOL, connect, o).await,
                    CodecKind::Cbor => run_client(cbor_codec(), CBOR_PROTOCOL, connect, o).await,
                }
            }
        }
    });
    // Don't wait for background connection tasks on the way out.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("libp2p-ref: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cbor_codec() -> cbor::codec::Codec<Req, Ack> {
    cbor::codec::Codec::default()
        // The CBOR request is the payload plus a few header bytes.
        .set_request_size_maximum(MAX_REQUEST + 16)
        .set_response_size_maximum(MAX_RESPONSE)
}
