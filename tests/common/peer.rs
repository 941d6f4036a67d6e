//! A hand-driven peer for attacker-side tests: the crate's own sans-io `Link` (real Noise
//! handshake, real membership proof, real records) over a TCP connection, run by a thread, so a
//! test can complete a handshake as a member (with the secret), a stranger (without it) or a
//! node of another network, and then send whatever frames it likes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msgtier::identity::Identity;
use msgtier::keys::KeyRing;
use msgtier::proto::handshake::NetworkKey;
use msgtier::proto::link::{Event, Link, LocalInfo, Params, Phase};
use msgtier::wire::frame::{Advert, Frame, Neighbor, NodeInfo};

/// Who the peer claims to be.
#[derive(Clone)]
pub struct Who {
    pub id: String,
    pub network: String,
    pub secret: String,
    /// A certificate (encoded) to send in the hello.
    pub certificate: Option<Vec<u8>>,
}

impl Who {
    pub fn new(id: &str, network: &str, secret: &str) -> Who {
        Who {
            id: id.into(),
            network: network.into(),
            secret: secret.into(),
            certificate: None,
        }
    }
}

enum Cmd {
    Send(Frame),
}

/// A running hostile peer (one link).
pub struct Peer {
    pub who: Who,
    pub keys: Arc<KeyRing>,
    tx: mpsc::Sender<Cmd>,
    received: Arc<Mutex<Vec<Frame>>>,
    state: Arc<Mutex<(Phase, Option<String>)>>,
    /// The known list of the welcome we got, if we dialled.
    pub welcome_known: Arc<Mutex<Option<Vec<NodeInfo>>>>,
}

fn params() -> Params {
    Params {
        heartbeat_interval_ms: 300,
        peer_timeout_ms: 5_000,
        handshake_timeout_ms: 5_000,
        max_frame_bytes: 1 << 20,
        channel: None,
        accept_foreign: true,
    }
}

fn ring(who: &Who, seed: u8) -> Arc<KeyRing> {
    Arc::new(KeyRing {
        identity: Identity::from_private([seed; 32]),
        network_key: NetworkKey::derive(&who.network, &who.secret),
    })
}

impl Peer {
    /// Dials a node's TCP listener as `who` (identity from `seed`) and runs the link.
    pub fn dial(to: SocketAddr, who: Who, seed: u8) -> Peer {
        let stream = TcpStream::connect(to).expect("connect");
        Peer::run(stream, who, seed, true, Vec::new())
    }

    /// Accepts one connection on `listener` as `who`, admits it with `known` in the welcome.
    pub fn accept(listener: &TcpListener, who: Who, seed: u8, known: Vec<NodeInfo>) -> Peer {
        let (stream, _) = listener.accept().expect("accept");
        Peer::run(stream, who, seed, false, known)
    }

    fn run(stream: TcpStream, who: Who, seed: u8, dial: bool, known: Vec<NodeInfo>) -> Peer {
        let keys = ring(&who, seed);
        let local = Arc::new(LocalInfo {
            node_id: who.id.clone(),
            network: who.network.clone(),
            version: "hostile".into(),
            boot_id: u64::from(seed) << 32 | 1,
            listen_addrs: Vec::new(),
            certificate: who.certificate.clone(),
        });
        let start = Instant::now();
        let now = move || start.elapsed().as_micros() as u64;
        let mut link = if dial {
            Link::dial(params(), local, keys.clone(), now()).expect("dial")
        } else {
            Link::accept(params(), local, keys.clone(), now()).expect("accept")
        };
        let (tx, rx) = mpsc::channel();
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Mutex::new((Phase::Handshaking, None)));
        let welcome_known = Arc::new(Mutex::new(None));
        let (r, st, wk) = (received.clone(), state.clone(), welcome_known.clone());
        std::thread::spawn(move || {
            let mut stream = stream;
            stream
                .set_read_timeout(Some(Duration::from_millis(10)))
                .unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                while let Ok(Cmd::Send(f)) = rx.try_recv() {
                    let _ = link.send_frame(&f);
                }
                link.handle_timeout(now());
                while let Some(t) = link.poll_transmit() {
                    let bytes = t.into_bytes();
                    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
                    out.extend_from_slice(&bytes);
                    if stream.write_all(&out).is_err() {
                        link.transport_closed();
                    }
                }
                while let Some(e) = link.poll_event() {
                    match e {
                        Event::HelloVerified(_) => {
                            link.admit(now(), "tcp://127.0.0.1:1".into(), known.clone())
                        }
                        Event::Up { welcome, .. } => {
                            *wk.lock().unwrap() = welcome.map(|w| w.known);
                        }
                        Event::Frame(f) => r.lock().unwrap().push(*f),
                        Event::Closed(cause) => {
                            *st.lock().unwrap() = (Phase::Closed, Some(cause.to_string()));
                            return;
                        }
                    }
                }
                st.lock().unwrap().0 = link.phase();
                match stream.read(&mut chunk) {
                    Ok(0) => link.transport_closed(),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => link.transport_closed(),
                }
                while buf.len() >= 4 {
                    let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                    if buf.len() < 4 + len {
                        break;
                    }
                    let mut msg: Vec<u8> = buf.drain(..4 + len).skip(4).collect();
                    link.handle_stream_message(now(), &mut msg);
                }
            }
        });
        Peer {
            who,
            keys,
            tx,
            received,
            state,
            welcome_known,
        }
    }

    /// Waits (bounded) until the link is Active; panics with the close cause otherwise.
    pub fn wait_active(&self) {
        let start = Instant::now();
        loop {
            let (phase, cause) = self.state.lock().unwrap().clone();
            if phase == Phase::Active {
                return;
            }
            if phase == Phase::Closed || start.elapsed() > super::WAIT {
                panic!("{}: link not Active: {phase:?} {cause:?}", self.who.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The link's phase and, once closed, why.
    pub fn state(&self) -> (Phase, Option<String>) {
        self.state.lock().unwrap().clone()
    }

    /// Queues a frame for the node.
    pub fn send(&self, frame: Frame) {
        let _ = self.tx.send(Cmd::Send(frame));
    }

    /// Takes the frames received since the last call.
    pub fn take(&self) -> Vec<Frame> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }

    /// An advert of ours (signed with our identity, MAC'd with our network key unless `mac`
    /// is false) for `origin` in `network` with `neighbors`, at `seq`.
    pub fn advert(
        &self,
        network: &str,
        origin: &str,
        seq: u64,
        neighbors: &[&str],
        relay: bool,
        mac: bool,
    ) -> Frame {
        self.advert_with_cert(network, origin, seq, neighbors, relay, mac, None)
    }

    /// [`Peer::advert`] carrying `certificate`.
    #[allow(clippy::too_many_arguments)]
    pub fn advert_with_cert(
        &self,
        network: &str,
        origin: &str,
        seq: u64,
        neighbors: &[&str],
        relay: bool,
        mac: bool,
        certificate: Option<Vec<u8>>,
    ) -> Frame {
        let advert = Advert {
            network: network.into(),
            origin: origin.into(),
            seq,
            public_key: self.keys.identity.public(),
            signing_key: self.keys.identity.signing_public(),
            addrs: Vec::new(),
            neighbors: neighbors
                .iter()
                .map(|id| Neighbor {
                    id: id.to_string(),
                    cost_us: 100,
                })
                .collect(),
            relay,
            certificate,
            carrier: false,
            topics: Vec::new(),
        };
        let key = msgtier::proto::advert::AdvertKey::new(&self.keys.network_key);
        Frame::LinkState(msgtier::proto::advert::seal(
            &self.keys.identity,
            mac.then_some(&key),
            &advert,
        ))
    }
}

/// A seq for a fresh advert now (unix microseconds, as nodes use).
pub fn seq_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}
