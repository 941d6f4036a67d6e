//! QUIC under `udp://` links: the endpoint on a UDP listener's socket, its TLS and transport
//! configuration, and the socket wrapper that lets hole-punch datagrams share the port.
//!
//! QUIC (RFC 9000, through `quinn`) gives a UDP link what TCP gives a stream link and more: loss
//! recovery, congestion control, flow control, and independent streams, so a lost packet of a
//! large message delays only that message. msgtier does not trust TLS for identity: the server
//! certificate is a throwaway self-signed one and the client accepts any certificate whose
//! handshake signature verifies. Identity and membership are proven exactly as on TCP, by the
//! Noise XX handshake and the hello/welcome MACs, run on the connection's first bidirectional
//! stream, with the connection's TLS exporter ([`binding`]) mixed into the Noise prologue. A
//! man in the middle would terminate two TLS sessions with two different exporters, so the Noise
//! handshake it relays fails; a proof made on one connection cannot be used on another. Once the
//! Noise handshake is done, frames travel in QUIC's own AEAD, not sealed a second time.
//!
//! Streams: the dialer opens one bidirectional *control* stream (handshake, hello/welcome,
//! pings, adverts, punch coordination, close; length-prefixed like TCP, at a higher priority);
//! every `data` frame travels on a unidirectional stream of its own, so a 1 MiB message never
//! holds up a ping or a 100-byte message by more than a packet's worth of sending. Data streams
//! are sent smallest size class first, and within a class in the order they were written
//! (`crate::actors::peer::quic::DataPriorities`), not round-robin: a message finishes as soon as
//! its own bytes are out instead of when all the messages it shares the link with are, the way
//! the TCP writer's data lane sends them.
//!
//! Sharing the socket: QUIC packets always have the fixed bit (0x40) of their first byte set
//! (greasing it is turned off), our own datagrams (punch, punch ack: types 5 and 6) never do. The
//! [`SharedSocket`] hands the latter to the listener and everything else to `quinn`.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use quinn::rustls;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// The application protocol name both sides insist on (ALPN).
pub const ALPN: &[u8] = b"msgtier/3";
/// Exporter label of the channel binding (RFC 8446 section 7.5).
pub const BINDING_LABEL: &[u8] = b"msgtier link binding v3";
/// The server name a dialer presents; certificates are not checked against names.
pub const SERVER_NAME: &str = "msgtier";
/// Data streams a peer may have open toward us at once; beyond it its next `open_uni` waits
/// (backpressure, not loss).
pub const MAX_DATA_STREAMS: u32 = 256;
/// Bytes of one connection's data in flight or buffered unread at most, both ways (QUIC flow
/// control). Bounds a link's memory whatever the peer does.
pub const CONNECTION_WINDOW_BYTES: u64 = 32 * 1024 * 1024;
/// A listener's connection window before the dialer proved membership: room for the Noise
/// messages and a hello, so a stranger that completes QUIC's handshake cannot make us hold
/// more than this per connection ([`open_for_data`] widens it once the link is Active).
pub const PRE_AUTH_WINDOW_BYTES: u32 = 64 * 1024;
/// Our own datagrams (punch, punch ack) waiting for the listener; beyond it they are dropped.
pub const OWN_DATAGRAM_QUEUE: usize = 256;
/// The largest UDP payload a QUIC packet of ours may have, and the upper bound of QUIC's path
/// MTU discovery (which starts at 1200 bytes and probes upwards; a probe lost on a path with a
/// smaller MTU costs nothing but the probe). quinn's default is 1452 (Ethernet): on loopback or a
/// jumbo-frame LAN, packets of up to 6500 bytes cut the per-packet work (headers, AEAD calls,
/// ACKs, syscalls) by four and more: UDP bulk on loopback went from ~450 to ~780 msg/s of 1 MiB.
/// Not larger: quinn sends several packets in one segmentation-offload batch (GSO, 10 at most in
/// quinn 0.11), and a batch must fit one UDP datagram; with 16 KiB packets the kernel refused
/// whole batches, quinn counted them lost and its discovery fell back to 1200 bytes. The socket
/// wrapper caps batches at [`GSO_BATCH_PACKETS`] whatever quinn would do.
pub const MAX_UDP_PAYLOAD_BYTES: u16 = 6500;

/// Largest UDP payload over IPv4 (65535 less the IP and UDP headers): what one segmentation
/// offload batch may carry in all.
const MAX_UDP_DATAGRAM_BYTES: usize = 65_507;

/// Packets of [`MAX_UDP_PAYLOAD_BYTES`] that fit one offload batch: 10.
pub const GSO_BATCH_PACKETS: usize = MAX_UDP_DATAGRAM_BYTES / MAX_UDP_PAYLOAD_BYTES as usize;
const _: () = assert!(GSO_BATCH_PACKETS >= 1);

/// The first byte of every QUIC packet has this bit set (RFC 9000 section 17; we never grease
/// it); none of our own datagram types do.
const QUIC_FIXED_BIT: u8 = 0x40;

/// Whether a datagram is a QUIC packet rather than one of ours.
pub fn is_quic(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & QUIC_FIXED_BIT != 0)
}

/// The 32 bytes both ends of a QUIC connection derive from its TLS secrets; the Noise handshake
/// of the link on it is bound to them.
pub fn binding(connection: &quinn::Connection) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    connection
        .export_keying_material(&mut out, BINDING_LABEL, b"")
        .ok()?;
    Some(out)
}

/// Limits of the links a node runs over QUIC.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame: a data stream's receive window, so one message never waits on credit.
    pub max_frame_bytes: usize,
    /// The link's own peer timeout; QUIC's idle timeout sits above it, so the link decides.
    pub peer_timeout_ms: u64,
}

/// TLS and transport configuration of a node's QUIC endpoints.
#[derive(Clone)]
pub struct Configs {
    /// For accepting.
    pub server: quinn::ServerConfig,
    /// For dialling.
    pub client: quinn::ClientConfig,
}

/// Why the QUIC configuration could not be built (a bug or a broken crypto provider).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Generating the throwaway certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("quic: {0}")]
    Quic(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One data stream's receive window: a whole frame, so a message never waits on stream credit.
fn stream_window(limits: Limits) -> u64 {
    (limits.max_frame_bytes as u64 + 64 * 1024).min(u32::MAX as u64)
}

/// The connection window of an Active link.
fn connection_window(limits: Limits) -> u64 {
    CONNECTION_WINDOW_BYTES.max(2 * stream_window(limits))
}

/// Transport parameters. No data streams until the link is Active ([`open_for_data`]); an
/// accepting side starts with [`PRE_AUTH_WINDOW_BYTES`] of connection window, a dialling side
/// with the full one (it chose its peer, and a welcome may be large, as on TCP).
fn transport(limits: Limits, accepting: bool) -> quinn::TransportConfig {
    let window = connection_window(limits);
    let initial = if accepting {
        u64::from(PRE_AUTH_WINDOW_BYTES)
    } else {
        window
    };
    let mut t = quinn::TransportConfig::default();
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD_BYTES);
    t.mtu_discovery_config(Some(mtu));
    // One control stream, opened by the dialer.
    t.max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(quinn::VarInt::from_u32(stream_window(limits) as u32))
        .receive_window(quinn::VarInt::from_u64(initial).unwrap_or(quinn::VarInt::MAX))
        .send_window(window)
        // Liveness is the link's business (pings, peer timeout); QUIC gives up only after it.
        .keep_alive_interval(None)
        .max_idle_timeout(
            Duration::from_millis(limits.peer_timeout_ms.saturating_mul(2).max(10_000))
                .try_into()
                .ok(),
        );
    t
}

/// Builds the server and client configurations: a fresh self-signed certificate, TLS 1.3 only,
/// our ALPN, and the transport limits above.
pub fn configs(limits: Limits) -> Result<Configs, ConfigError> {
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| ConfigError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server
        .transport_config(Arc::new(transport(limits, true)))
        .max_incoming(crate::proto::handshake_budget::MAX_IN_PROGRESS);

    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| ConfigError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(Arc::new(transport(limits, false)));
    Ok(Configs { server, client })
}

/// Once the link on `connection` is Active (the peer proved itself): the full connection window
/// and up to [`MAX_DATA_STREAMS`] data streams from the peer.
pub fn open_for_data(connection: &quinn::Connection, limits: Limits) {
    let window = quinn::VarInt::from_u64(connection_window(limits)).unwrap_or(quinn::VarInt::MAX);
    connection.set_receive_window(window);
    connection.set_max_concurrent_uni_streams(MAX_DATA_STREAMS.into());
}

/// The endpoint configuration: no greasing of the fixed bit (our datagrams rely on it), and
/// packets of up to [`MAX_UDP_PAYLOAD_BYTES`] accepted.
fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    c.grease_quic_bit(false);
    c.max_udp_payload_size(MAX_UDP_PAYLOAD_BYTES)
        .expect("a UDP payload size within QUIC's bounds");
    c
}

/// Accepts any server certificate (identity is proven by the Noise handshake bound to the
/// connection, see the module docs) but still checks the TLS 1.3 handshake signature, so the
/// server holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A datagram of ours that arrived on a QUIC endpoint's socket.
#[derive(Debug)]
pub struct OwnDatagram {
    /// Its bytes.
    pub data: Bytes,
    /// Its source.
    pub from: SocketAddr,
}

/// A UDP socket shared by `quinn` and our own datagrams. See the module docs.
pub struct SharedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    own: mpsc::Sender<OwnDatagram>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for SharedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSocket").finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for SharedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut quic = 0;
            for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
                m.len = self.divert(m, &mut buf[..m.len]);
                quic += usize::from(m.len > 0);
            }
            if quic > 0 {
                // quinn skips entries of length 0.
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(GSO_BATCH_PACKETS)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

impl SharedSocket {
    /// Takes our datagrams out of one received entry (several segments when the kernel
    /// coalesced them, `stride` bytes each, the last maybe shorter); returns the bytes left for
    /// quinn, moved to the front.
    fn divert(&self, meta: &RecvMeta, buf: &mut [u8]) -> usize {
        let stride = meta.stride.max(1);
        let (mut read, mut kept) = (0, 0);
        while read < buf.len() {
            let end = (read + stride).min(buf.len());
            if is_quic(&buf[read..end]) {
                buf.copy_within(read..end, kept);
                kept += end - read;
            } else {
                let own = OwnDatagram {
                    data: Bytes::copy_from_slice(&buf[read..end]),
                    from: meta.addr,
                };
                if self.own.try_send(own).is_err() {
                    self.metrics.datagrams_dropped.inc();
                }
            }
            read = end;
        }
        kept
    }
}

/// A QUIC endpoint on a bound UDP socket, with a second handle on the same socket for sending
/// our own datagrams and the queue our received ones arrive on.
pub struct Bound {
    /// The endpoint: accepts (with a server config) and dials.
    pub endpoint: quinn::Endpoint,
    /// The same socket, for sending punch datagrams.
    pub socket: Arc<tokio::net::UdpSocket>,
    /// Our datagrams that arrived.
    pub own: mpsc::Receiver<OwnDatagram>,
}

/// Starts a QUIC endpoint on `socket` (which must be non-blocking). Needs a tokio runtime.
pub fn bind(
    socket: std::net::UdpSocket,
    configs: &Configs,
    metrics: Arc<Metrics>,
) -> io::Result<Bound> {
    let sender = tokio::net::UdpSocket::from_std(socket.try_clone()?)?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let (own_tx, own) = mpsc::channel(OWN_DATAGRAM_QUEUE);
    let shared = SharedSocket {
        inner: runtime.wrap_udp_socket(socket)?,
        own: own_tx,
        metrics,
    };
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(),
        Some(configs.server.clone()),
        Arc::new(shared),
        runtime,
    )?;
    endpoint.set_default_client_config(configs.client.clone());
    Ok(Bound {
        endpoint,
        socket: Arc::new(sender),
        own,
    })
}

/// Loopback endpoints and connections for tests of this module and of the peer actor's QUIC
/// streams.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::*;

    /// The limits tests use, with `max_frame_bytes` as given.
    pub fn limits(max_frame_bytes: usize) -> Limits {
        Limits {
            max_frame_bytes,
            peer_timeout_ms: 10_000,
        }
    }

    /// An endpoint on a fresh loopback socket.
    pub fn endpoint(limits: Limits) -> Bound {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        bind(s, &configs(limits).unwrap(), Arc::new(Metrics::default())).unwrap()
    }

    /// A connection from `a` to `b`, opened for data on `b`'s side: (dialed, accepted).
    pub async fn connect(
        a: &Bound,
        b: &Bound,
        limits: Limits,
    ) -> (quinn::Connection, quinn::Connection) {
        let accept = tokio::spawn({
            let e = b.endpoint.clone();
            async move { e.accept().await.unwrap().await.unwrap() }
        });
        let dialed = a
            .endpoint
            .connect(b.endpoint.local_addr().unwrap(), SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let accepted = accept.await.unwrap();
        open_for_data(&accepted, limits);
        (dialed, accepted)
    }

    /// Two endpoints and a connection between them: (dialed, accepted).
    pub async fn connected(limits: Limits) -> (quinn::Connection, quinn::Connection) {
        connect(&endpoint(limits), &endpoint(limits), limits).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_datagram_types_are_never_taken_for_quic() {
        use crate::wire::udp::{TYPE_PUNCH, TYPE_PUNCH_ACK};
        assert!(!is_quic(&[TYPE_PUNCH, 0]));
        assert!(!is_quic(&[TYPE_PUNCH_ACK, 0]));
        assert!(!is_quic(&[]));
        assert!(is_quic(&[0xc0])); // long header
        assert!(is_quic(&[0x40])); // short header
    }

    #[tokio::test]
    async fn two_endpoints_connect_and_agree_on_the_binding_and_punches_are_diverted() {
        let limits = testing::limits(1 << 20);
        let (a, mut b) = (testing::endpoint(limits), testing::endpoint(limits));
        let b_addr = b.endpoint.local_addr().unwrap();
        // A punch datagram to b's socket arrives as ours, not as QUIC.
        a.socket.send_to(&[5u8; 17], b_addr).await.unwrap();
        let own = b.own.recv().await.unwrap();
        assert_eq!(own.data.len(), 17);
        assert_eq!(own.from, a.endpoint.local_addr().unwrap());

        let (dialed, accepted) = testing::connect(&a, &b, limits).await;
        assert_eq!(binding(&dialed), binding(&accepted));
        assert!(binding(&dialed).is_some());
    }

    /// On loopback, path MTU discovery climbs to [`MAX_UDP_PAYLOAD_BYTES`] and stays there while
    /// bulk data goes out in offload batches the kernel takes (with larger packets it refused
    /// whole batches, quinn took that for a black hole and fell back to 1200 bytes).
    #[tokio::test]
    async fn loopback_paths_use_the_largest_packets_in_batches_the_kernel_takes() {
        let (dialed, accepted) = testing::connected(testing::limits(4 << 20)).await;
        let body = vec![7u8; 1 << 20];
        for _ in 0..8 {
            let mut tx = dialed.open_uni().await.unwrap();
            tx.write_all(&body).await.unwrap();
            tx.finish().unwrap();
            let mut rx = accepted.accept_uni().await.unwrap();
            let got = rx.read_to_end(2 << 20).await.unwrap();
            assert!(got == body);
        }
        // Some packets may be lost at a full receive buffer (congestion control probes for
        // room), but no batch is refused: that would look like a black hole to the discovery.
        let path = dialed.stats().path;
        assert_eq!(path.current_mtu, MAX_UDP_PAYLOAD_BYTES, "{path:?}");
        assert_eq!(path.black_holes_detected, 0, "{path:?}");
    }
}
