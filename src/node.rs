//! The composition root: which actor starts where, in what order, with what.
//!
//! Order: CryptoActor (identity, fails early on a bad key file) -> bind every listener socket
//! (fails early, naming the listener) -> ScriptActor -> RelayActor -> DiscoveryActor (created first as an
//! address so listeners can point at it) -> ListenerActors -> HTTP API. All node actors run on
//! the one system arbiter, so messages between them never cross threads; actix-web runs its
//! own worker threads and reaches the actors by address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use log::{info, warn};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::actors::crypto::{CryptoActor, GetKeyRing};
use crate::actors::discovery::{DiscoveryActor, Shutdown};
use crate::actors::listener::ListenerActor;
use crate::actors::messages::{PeerPorts, RelayPorts, UdpEndpoint};
use crate::actors::relay::{PunchSocket, RelayActor, RelayPeers};
use crate::actors::script::{ScriptActor, ScriptLimits};
use crate::addr::Transport;
use crate::api;
use crate::config::Config;
use crate::identity::IdentityError;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::proto::backoff::{DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_MAX_MS};
use crate::proto::handshake_budget::HandshakeBudget;
pub use crate::proto::handshake_budget::Slot as HandshakeSlot;
use crate::proto::link::{LocalInfo, Params};
use crate::wire::record::RECORD_OVERHEAD;

/// Upper bound on the Noise handshake plus hello/welcome. Ten seconds covers a slow link with
/// several UDP retransmissions; it is further capped by `peer_timeout_ms`.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Software version reported in `hello` and `/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What every actor of the node reads: config, identity, counters, clock. Immutable after start
/// except for the counters and the id/random sources.
pub struct NodeShared {
    /// The config loaded at start. Its restart-needed fields are the running node's for good;
    /// for the reloadable ones read [`NodeShared::live`].
    pub config: Arc<Config>,
    /// The config in force now: the one loaded at start, or the last successful reload.
    pub live: arc_swap::ArcSwap<Config>,
    /// When and from what file contents the live config was loaded.
    pub loaded: arc_swap::ArcSwap<ConfigInfo>,
    /// What the node says about itself in hello/welcome.
    pub local: Arc<LocalInfo>,
    /// Identity and network key.
    pub keys: Arc<KeyRing>,
    /// Counters for `/status`.
    pub metrics: Arc<Metrics>,
    /// The node's clock origin; protocol code sees milliseconds since this instant.
    pub started: Instant,
    /// Dialer backoff floor.
    pub backoff_base_ms: u64,
    /// Dialer backoff ceiling.
    pub backoff_max_ms: u64,
    next_link: AtomicU64,
    /// Inbound handshakes in progress and their rate, node-wide and per source.
    handshakes: Arc<HandshakeBudget>,
    /// splitmix64 state: every call takes the next value of a Weyl sequence (lock-free).
    rng: AtomicU64,
}

impl NodeShared {
    /// Milliseconds since the node started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The wall clock, unix milliseconds ([`unix_ms`]).
    pub fn now_unix_ms(&self) -> u64 {
        unix_ms()
    }

    /// Microseconds since the node started: the clock links run on.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// A fresh id for a link attempt.
    pub fn next_link_id(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A pseudo-random number for jitter, ids and seeds (splitmix64 over an atomic
    /// counter seeded from the OS: lock-free, so the actors share no mutex; nothing secret
    /// depends on it).
    pub fn random_u64(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Inbound handshakes in progress now.
    pub fn handshakes_in_progress(&self) -> usize {
        self.handshakes.in_progress()
    }

    /// Takes a handshake slot for an inbound connection from `source`, if the budget allows
    /// (`proto::handshake_budget`); counts a refusal as `overload`.
    pub fn try_handshake_slot(&self, source: std::net::IpAddr) -> Option<HandshakeSlot> {
        match self.handshakes.try_start(source, self.now_us()) {
            Ok(slot) => Some(slot),
            Err(why) => {
                log::debug!("not taking a handshake from {source}: {why:?}");
                self.metrics.refused.overload.inc();
                None
            }
        }
    }

    /// Link parameters, dialled by us or not; `channel` for a link inside QUIC.
    /// `channel`: the exporter of the QUIC connection the link runs in, if it does.
    pub fn link_params(&self, channel: Option<[u8; 32]>, dialed: bool) -> Params {
        Params {
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            peer_timeout_ms: self.config.peer_timeout_ms,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS.min(self.config.peer_timeout_ms),
            max_frame_bytes: self.config.max_frame_bytes,
            channel,
            accept_foreign: dialed || {
                let live = self.live.load();
                !live.relay_network_whitelist.is_empty() || live.relay_all_peer_rpc
            },
        }
    }

    /// The limits of this node's QUIC links.
    pub fn quic_limits(&self) -> crate::quic::Limits {
        crate::quic::Limits {
            max_frame_bytes: self.config.max_frame_bytes,
            peer_timeout_ms: self.config.peer_timeout_ms,
        }
    }

    /// Largest record on a stream transport: a frame plus sealing overhead.
    pub fn max_record_bytes(&self) -> usize {
        self.config.max_frame_bytes + RECORD_OVERHEAD
    }
}

/// Why the node could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The identity key could not be loaded or created.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The CryptoActor stopped before handing out the keys.
    #[error("the crypto actor stopped during start-up")]
    Crypto,
    /// The message store could not be opened (named in the message).
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The message store's thread could not be started.
    #[error("cannot start the message store thread: {0}")]
    StoreThread(std::io::Error),
    /// The QUIC (TLS) configuration could not be built.
    #[error("quic: {0}")]
    Quic(String),
    /// A listener socket could not be bound.
    #[error("{file}: listeners: cannot listen on {url}: {source}")]
    Bind {
        file: String,
        url: String,
        source: std::io::Error,
    },
    /// Our certificate is not the network CA's for this node's id and identity key.
    #[error("{file}: certificate: {problem} (this node's identity key is {key}: sign that one)")]
    Certificate {
        file: String,
        problem: String,
        key: String,
    },
    /// The HTTP API could not be bound.
    #[error("{file}: web_api: cannot listen on {addr}: {source}")]
    Http {
        file: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Socket buffer asked for on UDP sockets: QUIC paces by its congestion window, but a window's
/// worth of packets arriving in one burst overflows Linux's default 208 KiB receive buffer. The
/// kernel caps the request at `net.core.rmem_max`/`wmem_max`; raise those sysctls for bulk
/// transfers over UDP.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Asks for [`UDP_SOCKET_BUFFER_BYTES`] of send and receive buffer; best effort.
fn enlarge_buffers(socket: &std::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES) {
        warn!("udp receive buffer: {e}");
    }
    if let Err(e) = s.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES) {
        warn!("udp send buffer: {e}");
    }
}

/// Where the live config came from, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigInfo {
    /// The config file.
    pub source: String,
    /// SHA-256 of the file's text as loaded, hex.
    pub sha256: String,
    /// When it was loaded (unix ms).
    pub loaded_unix_ms: u64,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Why the last reload was refused, if the last attempt was.
    pub last_reload_error: Option<String>,
}

impl ConfigInfo {
    fn of(config: &Config, reloads: u64) -> Self {
        ConfigInfo {
            source: config.source.display().to_string(),
            sha256: config.source_sha256.clone(),
            loaded_unix_ms: unix_ms(),
            reloads,
            last_reload_error: None,
        }
    }
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The file does not load: the same one-line error as at start.
    #[error("{0}")]
    Invalid(String),
    /// Fields changed that only a restart can apply.
    #[error("{} cannot change while the node runs (restart it to apply); the running config stays", .0.join(", "))]
    RestartNeeded(Vec<&'static str>),
    /// An actor is gone (the node is stopping).
    #[error("the node is shutting down")]
    Unavailable,
}

/// What a reload changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// The reloadable fields whose value changed (in [`crate::config::FIELDS`] order).
    pub changed: Vec<&'static str>,
    /// The new file's warnings (unknown fields and the like).
    pub warnings: Vec<String>,
}

/// Re-reads the config file and hands what changed to the actors: `SIGHUP` and
/// `POST /config/reload` both end here.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<NodeShared>,
    discovery: Addr<DiscoveryActor>,
    relay: Addr<RelayActor>,
    script: Addr<ScriptActor>,
}

impl Reloader {
    /// Loads the file again; refuses (changing nothing) when it does not load or changes a
    /// field that needs a restart; else applies the reloadable fields: scripts and their
    /// limits (for scripts started from now on), the relay policy and budget, the log level
    /// (unless `RUST_LOG` set it), the API token, and the configured peers (new ones dialled,
    /// removed ones no longer). Links stay up.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let result = self.try_reload().await;
        let refused = match &result {
            Err(e @ (ReloadError::Invalid(_) | ReloadError::RestartNeeded(_))) => {
                Some(e.to_string())
            }
            _ => None,
        };
        if let Some(why) = refused {
            warn!("config reload refused: {why}");
            let mut info = (**self.shared.loaded.load()).clone();
            info.last_reload_error = Some(why);
            self.shared.loaded.store(Arc::new(info));
        }
        result
    }

    async fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let running = self.shared.live.load_full();
        let loaded = crate::config::load(&running.source)
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let new = loaded.config;
        let fixed = running.restart_needed(&new);
        if !fixed.is_empty() {
            return Err(ReloadError::RestartNeeded(fixed));
        }
        let changed = running.reloadable_changes(&new);
        let r = new.reloadable();
        let timeout = Duration::from_millis(api::ACTOR_TIMEOUT_MS);
        let gone = |_| ReloadError::Unavailable;
        self.script
            .send(crate::actors::script::Reconfigure {
                scripts: r.scripts.clone(),
                limits: ScriptLimits::from_config(&new),
            })
            .timeout(timeout)
            .await
            .map_err(gone)?;
        self.relay
            .send(crate::actors::relay::Reconfigure(r.clone()))
            .timeout(timeout)
            .await
            .map_err(gone)?;
        self.discovery
            .send(crate::actors::discovery::Reconfigure {
                peers: r.peers.clone(),
                relay_network_whitelist: r.relay_network_whitelist.clone(),
                relay_all_peer_rpc: r.relay_all_peer_rpc,
                pinned_keys: r.pinned_keys.clone(),
            })
            .timeout(timeout)
            .await
            .map_err(gone)?;
        if std::env::var_os("RUST_LOG").is_none() {
            log::set_max_level(new.log.unwrap_or(log::LevelFilter::Info));
        }
        let reloads = self.shared.loaded.load().reloads + 1;
        self.shared
            .loaded
            .store(Arc::new(ConfigInfo::of(&new, reloads)));
        self.shared.live.store(Arc::new(new));
        for w in &loaded.warnings {
            warn!("{w}");
        }
        info!(
            "config reloaded from {}: {}",
            running.source.display(),
            if changed.is_empty() {
                "nothing changed".to_string()
            } else {
                format!("changed {}", changed.join(", "))
            }
        );
        Ok(Reloaded {
            changed,
            warnings: loaded.warnings,
        })
    }
}

/// A started node.
pub struct RunningNode {
    /// Shared state (counters, config).
    pub shared: Arc<NodeShared>,
    /// Bound HTTP API address, if any.
    pub http_addr: Option<SocketAddr>,
    /// Handle to stop the HTTP server.
    pub http: Option<actix_web::dev::ServerHandle>,
    /// The discovery actor.
    pub discovery: Addr<DiscoveryActor>,
    /// The relay actor: `Send` messages go here (what `POST /send` does, without HTTP).
    pub relay: Addr<RelayActor>,
    /// Reloads the config (what SIGHUP does).
    pub reloader: Reloader,
}

impl RunningNode {
    /// The one shutdown path: stops the HTTP server (in-flight requests finish), then closes
    /// every link with `close(shutdown)` so peers mark us Disconnected at once instead of
    /// waiting out their peer timeout, and gives the writers a moment to flush that frame
    /// (bounded by [`SHUTDOWN_LINGER_MS`]). The actors stop with the system afterwards.
    pub async fn stop(&self) {
        if let Some(h) = &self.http {
            h.stop(true).await;
        }
        let _ = self
            .discovery
            .send(Shutdown)
            .timeout(Duration::from_millis(SHUTDOWN_LINGER_MS))
            .await;
        // The close frames are queued; a writer flushes its queue within one event-loop turn
        // on a healthy socket. Wait a little, bounded, rather than cut them off.
        tokio::time::sleep(Duration::from_millis(SHUTDOWN_FLUSH_MS)).await;
    }
}

/// Longest wait for discovery to hand out the `close(shutdown)` frames.
pub const SHUTDOWN_LINGER_MS: u64 = 1_000;
/// Time given to link writers to flush the `close` frames before the system stops.
pub const SHUTDOWN_FLUSH_MS: u64 = 100;

enum Bound {
    Stream(Transport, TcpListener),
    Udp(std::net::UdpSocket),
}

/// Binds a UDP socket for a QUIC endpoint: non-blocking, with large buffers.
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    enlarge_buffers(&s);
    Ok(s)
}

/// The wall clock, unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts every actor of a node on the current actix system.
pub async fn start(config: Config) -> Result<RunningNode, StartError> {
    let file = config.source.display().to_string();
    // Loading happens before the actor starts so a bad key file fails start-up; the rest of
    // the node gets its keys from the actor.
    let crypto = CryptoActor::load(&config)?.start();
    let keys = crypto
        .send(GetKeyRing)
        .await
        .map_err(|_| StartError::Crypto)?;
    // With a network CA, our own certificate must be the CA's and name our identity key.
    let certificate = match (&config.network_ca, &config.certificate) {
        (Some(ca), Some(cert)) => {
            cert.verify(
                ca,
                &config.network,
                &config.id,
                &keys.identity.public(),
                unix_ms() / 1000,
            )
            .map_err(|e| StartError::Certificate {
                file: file.clone(),
                problem: e.to_string(),
                key: hex::encode(keys.identity.public()),
            })?;
            Some(cert.encode())
        }
        _ => None,
    };

    let mut bound = Vec::new();
    let mut listen_addrs = Vec::new();
    for endpoint in &config.listeners {
        let bind_err = |source| StartError::Bind {
            file: file.clone(),
            url: endpoint.to_string(),
            source,
        };
        let Some(addr) = endpoint.socket_addr() else {
            continue; // config validation only admits IP literals for listeners
        };
        let (b, local) = match endpoint.transport {
            Transport::Udp => {
                let s = bind_udp(addr).map_err(bind_err)?;
                let local = s.local_addr().map_err(bind_err)?;
                (Bound::Udp(s), local)
            }
            t => {
                let l = TcpListener::bind(addr).await.map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                (Bound::Stream(t, l), local)
            }
        };
        listen_addrs.push(format!("{}://{local}", endpoint.transport));
        bound.push(b);
    }
    // Dialling `udp://` peers needs a socket; without a UDP listener of that family, an
    // unadvertised ephemeral one serves (IPv4 only).
    let has_udp4 = bound
        .iter()
        .any(|b| matches!(b, Bound::Udp(s) if s.local_addr().is_ok_and(|a| a.is_ipv4())));
    if !has_udp4 {
        match bind_udp(SocketAddr::from(([0, 0, 0, 0], 0))) {
            Ok(s) => bound.push(Bound::Udp(s)),
            Err(e) => warn!("no UDP socket for dialling udp:// peers: {e}"),
        }
    }

    // Two independent draws: the boot id goes on the wire in every hello, so the seed of the
    // node's jitter and session-index sequence must not be derivable from it.
    let os_random = || {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| StartError::Identity(IdentityError::Random(e)))?;
        Ok::<u64, StartError>(u64::from_le_bytes(b))
    };
    let seed = os_random()? | 1;
    let boot_id = os_random()?;
    let local = Arc::new(LocalInfo {
        node_id: config.id.clone(),
        network: config.network.clone(),
        version: VERSION.to_string(),
        boot_id,
        listen_addrs,
        certificate,
    });
    let loaded = ConfigInfo::of(&config, 0);
    let config = Arc::new(config);
    let shared = Arc::new(NodeShared {
        live: arc_swap::ArcSwap::new(config.clone()),
        loaded: arc_swap::ArcSwap::from_pointee(loaded),
        config,
        local,
        keys,
        metrics: Arc::new(Metrics::default()),
        started: Instant::now(),
        backoff_base_ms: DEFAULT_BACKOFF_BASE_MS,
        backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
        next_link: AtomicU64::new(0),
        handshakes: Arc::new(HandshakeBudget::default()),
        rng: AtomicU64::new(seed),
    });

    // The store opens before any actor runs: a damaged or locked store stops the start, named.
    let retention = crate::store::Retention {
        max_messages: shared.config.inbox_max_messages,
        max_bytes: shared.config.inbox_max_bytes,
        max_age_ms: shared.config.inbox_max_age_s.saturating_mul(1000),
    };
    let (store, restored) = crate::store::Store::open(&shared.config.data_dir, retention)?;
    let store = crate::actors::store::StoreActor::new(store)
        .map_err(StartError::StoreThread)?
        .start();

    let events = crate::actors::events::EventActor::default().start();
    let script = ScriptActor::new(
        shared.config.scripts.clone(),
        ScriptLimits::from_config(&shared.config),
    )
    .start();
    // Every actor's address exists before any actor runs, so each is built once with the
    // handles it needs (no late wiring message).
    let relay_ctx = Context::<RelayActor>::new();
    let relay = relay_ctx.address();
    let relay_ports = RelayPorts {
        up: relay.clone().recipient(),
        rtt: relay.clone().recipient(),
        frames: relay.clone().recipient(),
        down: relay.clone().recipient(),
        punches: relay.clone().recipient(),
    };
    let discovery_ctx = Context::<DiscoveryActor>::new();
    let discovery = discovery_ctx.address();
    let ports = PeerPorts {
        admit: discovery.clone().recipient(),
        down: discovery.clone().recipient(),
        relay: relay_ports,
    };
    let quic_configs =
        crate::quic::configs(shared.quic_limits()).map_err(|e| StartError::Quic(e.to_string()))?;
    let mut udp = Vec::new();
    let mut punch_sockets = Vec::new();
    for b in bound {
        let started = match b {
            Bound::Stream(t, l) => ListenerActor::stream(shared.clone(), ports.clone(), t, l)
                .map(|a| (a.start(), None)),
            Bound::Udp(s) => {
                crate::quic::bind(s, &quic_configs, shared.metrics.clone()).and_then(|bound| {
                    let endpoint = bound.endpoint.clone();
                    let local = endpoint.local_addr()?;
                    let listener = ListenerActor::udp(shared.clone(), ports.clone(), bound)?;
                    Ok((listener.start(), Some(UdpEndpoint { local, endpoint })))
                })
            }
        };
        match started {
            Ok((addr, Some(endpoint))) => {
                punch_sockets.push(PunchSocket {
                    local: endpoint.local,
                    send: addr.recipient(),
                });
                udp.push(endpoint);
            }
            Ok(_) => {}
            Err(e) => warn!("listener: {e}"),
        }
    }
    let relay_peers = RelayPeers {
        script: script.clone().recipient(),
        dial: discovery.clone().recipient(),
        udp: punch_sockets,
        store: store.clone(),
        events: events.clone().recipient(),
    };
    relay_ctx.run(RelayActor::new(shared.clone(), relay_peers, restored));
    discovery_ctx.run(DiscoveryActor::new(shared.clone(), ports, udp));
    info!(
        "node {} (network {}) listening on {}",
        shared.local.node_id,
        shared.local.network,
        if shared.local.listen_addrs.is_empty() {
            "nothing".to_string()
        } else {
            shared.local.listen_addrs.join(", ")
        }
    );

    let reloader = Reloader {
        shared: shared.clone(),
        discovery: discovery.clone(),
        relay: relay.clone(),
        script: script.clone(),
    };
    let (http_addr, http) = match shared.config.web_api {
        Some(addr) => {
            let state = api::ApiState {
                reloader: reloader.clone(),
                node: shared.clone(),
                discovery: discovery.clone(),
                relay: relay.clone(),
                script: script.clone(),
                store: store.clone(),
                events: events.clone(),
            };
            let (server, bound) = api::serve(state, addr).map_err(|source| StartError::Http {
                file: file.clone(),
                addr,
                source,
            })?;
            info!("HTTP API on http://{bound}");
            let handle = server.handle();
            actix::spawn(server);
            (Some(bound), Some(handle))
        }
        None => (None, None),
    };
    Ok(RunningNode {
        shared,
        http_addr,
        http,
        discovery,
        relay,
        reloader,
    })
}
