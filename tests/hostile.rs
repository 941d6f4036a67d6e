//! The node from the attacker's side: floods and misbehaving peers against real processes.
//!
//! Attackers send from other loopback addresses (127.0.0.2 and up) than the honest nodes
//! (127.0.0.1), as they would from other hosts: a node budgets handshakes per source.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peer::{seq_now, Peer, Who};
use common::{Node, Spec};
use msgtier::wire::frame::{Envelope, Frame, MessageKind};
use std::collections::HashMap;
use std::sync::Mutex;

/// The TCP listener address of a node.
fn tcp_addr(n: &Node) -> SocketAddr {
    n.spec.url_of("tcp")["tcp://".len()..].parse().unwrap()
}

/// A member gone bad in the middle of the line X - M - B: it relays adverts and data between
/// its two links like an honest node (so X reaches B only through it), and a test can make it
/// capture or withhold X's requests, or replay one.
struct Middle {
    to_x: Arc<Peer>,
    to_b: Arc<Mutex<Arc<Peer>>>,
    /// Requests from X kept back instead of forwarded (while `withhold` is set), and every
    /// request from X seen.
    held: Arc<Mutex<Vec<Envelope>>>,
    seen: Arc<Mutex<Vec<Envelope>>>,
    withhold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Newest advert per origin from either side, to give a re-dialled B everything.
    adverts: Arc<Mutex<HashMap<String, Frame>>>,
}

const M_SEED: u8 = 77;

fn member(id: &str) -> Who {
    Who::new(id, "test", "test-secret")
}

impl Middle {
    fn start(x: &Node, b: &Node) -> Middle {
        let to_x = Arc::new(Peer::dial(tcp_addr(x), member("m"), M_SEED));
        let to_b = Arc::new(Peer::dial(tcp_addr(b), member("m"), M_SEED));
        to_x.wait_active();
        to_b.wait_active();
        let m = Middle {
            to_x,
            to_b: Arc::new(Mutex::new(to_b)),
            held: Arc::default(),
            seen: Arc::default(),
            withhold: Arc::default(),
            stop: Arc::default(),
            adverts: Arc::default(),
        };
        m.advertise();
        let (to_x, to_b) = (m.to_x.clone(), m.to_b.clone());
        let (held, seen, withhold, stop, adverts) = (
            m.held.clone(),
            m.seen.clone(),
            m.withhold.clone(),
            m.stop.clone(),
            m.adverts.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let b_side = to_b.lock().unwrap().clone();
                for f in to_x.take() {
                    match f {
                        Frame::Data(e) if e.kind == MessageKind::Request => {
                            seen.lock().unwrap().push(e.clone());
                            if withhold.load(Ordering::Relaxed) {
                                held.lock().unwrap().push(e);
                            } else {
                                b_side.send(Frame::Data(e));
                            }
                        }
                        Frame::LinkState(ref s) => {
                            if let Ok(a) = s.open() {
                                adverts.lock().unwrap().insert(a.origin, f.clone());
                            }
                            b_side.send(f);
                        }
                        Frame::Data(_) => b_side.send(f),
                        _ => {}
                    }
                }
                for f in b_side.take() {
                    if let Frame::LinkState(ref s) = f {
                        if let Ok(a) = s.open() {
                            adverts.lock().unwrap().insert(a.origin, f.clone());
                        }
                    }
                    if matches!(f, Frame::Data(_) | Frame::LinkState(_)) {
                        to_x.send(f);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        m
    }

    /// M's own advert, listing both neighbours, on both links.
    fn advertise(&self) {
        let ad = self
            .to_x
            .advert("test", "m", seq_now(), &["b", "x"], false, true);
        self.to_x.send(ad.clone());
        self.to_b.lock().unwrap().send(ad);
    }

    /// After B restarted: dial it again and give it every advert held, and ours.
    fn redial_b(&self, b: &Node) {
        let p = Arc::new(Peer::dial(tcp_addr(b), member("m"), M_SEED));
        p.wait_active();
        for f in self.adverts.lock().unwrap().values() {
            p.send(f.clone());
        }
        *self.to_b.lock().unwrap() = p;
        self.advertise();
    }

    fn to_b(&self) -> Arc<Peer> {
        self.to_b.lock().unwrap().clone()
    }
}

impl Drop for Middle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// B with a script that appends a line to `marker` in its directory: the file says how often
/// it ran.
fn b_with_marker() -> Node {
    let mut sb = Spec::new("b", "tcp");
    sb.auto_connect = false;
    sb.scripts = vec![("mark".into(), "echo ran >> marker".into())];
    Node::start(sb)
}

fn runs(b: &Node) -> usize {
    std::fs::read_to_string(b.dir.path().join("marker"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn x_node() -> Node {
    let mut sx = Spec::new("x", "tcp");
    sx.auto_connect = false;
    Node::start(sx)
}

/// X reaches B through M (two hops).
fn line() -> (Node, Node, Middle) {
    let x = x_node();
    let b = b_with_marker();
    let m = Middle::start(&x, &b);
    x.wait("x routes to b through m", || {
        x.peer("b")
            .is_some_and(|p| p["hops"] == 2 && p["next_hop"] == "m")
    });
    b.wait("b routes to x through m", || {
        b.peer("x").is_some_and(|p| p["hops"] == 2)
    });
    (x, b, m)
}

/// A request M captured before B restarted, replayed to the restarted B, runs nothing: B
/// refuses what is dated before its start (its replay memory is gone). Honest traffic goes on.
#[test]
fn a_request_replayed_after_the_target_restarted_does_not_run_again() {
    let (x, mut b, m) = line();
    let r = x.send("b", b"mark", &[("timeout", "30000")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(runs(&b), 1);
    let captured = m.seen.lock().unwrap()[0].clone();
    b.restart();
    m.redial_b(&b);
    let dropped = |b: &Node| b.status()["messages"]["dropped"].as_u64().unwrap();
    let before = dropped(&b);
    m.to_b().send(Frame::Data(captured));
    b.wait("the replay dropped", || dropped(&b) > before);
    assert_eq!(runs(&b), 1, "the script did not run again");
    // Honest traffic still flows both ways through M.
    x.wait("x routes to the restarted b", || {
        x.peer("b").is_some_and(|p| p["hops"] == 2)
    });
    let r = x.send("b", b"mark", &[("timeout", "10000")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(runs(&b), 2);
}

/// A request M withholds until after X's `/send` gave up (504) is refused by B when M finally
/// delivers it: a retry the user made meanwhile is the only run.
#[test]
fn a_request_withheld_past_the_senders_timeout_does_not_run() {
    let (x, b, m) = line();
    m.withhold.store(true, Ordering::Relaxed);
    let r = x.send("b", b"mark", &[("timeout", "1000")]);
    assert_eq!(r.status, 504, "{}", r.text());
    m.withhold.store(false, Ordering::Relaxed);
    let r = x.send("b", b"mark", &[("timeout", "10000")]);
    assert_eq!(r.status, 200, "the retry: {}", r.text());
    assert_eq!(runs(&b), 1);
    let withheld = m.held.lock().unwrap().clone();
    assert_eq!(withheld.len(), 1);
    let dropped = |b: &Node| b.status()["messages"]["dropped"].as_u64().unwrap();
    let before = dropped(&b);
    m.to_b().send(Frame::Data(withheld[0].clone()));
    b.wait("the late request dropped", || dropped(&b) > before);
    assert_eq!(runs(&b), 1, "the withheld request did not run");
}

/// M, a member, cannot take B over in X's eyes: adverts claiming B's id with M's key (with
/// the relay flag, with seq u64::MAX, without a MAC), or with B's key but M's signature, are
/// all refused and counted; X keeps B's key and still reaches B.
#[test]
fn a_member_cannot_forge_another_members_adverts() {
    let (x, b, m) = line();
    let b_key = b.status()["public_key"].clone();
    assert_eq!(x.peer("b").unwrap()["public_key"], b_key);
    let now = seq_now();
    // M's own key for b: a key conflict (x holds b's key from b's signed advert).
    m.to_x
        .send(m.to_x.advert("test", "b", now + 10, &["m"], false, true));
    // The relay flag and no MAC (what a public node's own advert looks like).
    m.to_x
        .send(m.to_x.advert("test", "b", now + 11, &["m"], true, false));
    // A sequence number that would freeze b's adverts.
    m.to_x
        .send(m.to_x.advert("test", "b", u64::MAX, &["m"], false, true));
    // B's real key with M's signature.
    let mut sub = m.to_x.advert("test", "b", now + 12, &["m"], false, true);
    if let Frame::LinkState(ls) = &mut sub {
        let mut a = ls.open().unwrap();
        a.public_key = hex_key(&b_key);
        let key = msgtier::proto::advert::AdvertKey::new(&m.to_x.keys.network_key);
        let body = a.encode();
        let signature = m
            .to_x
            .keys
            .identity
            .sign(&msgtier::wire::frame::LinkState::signed_bytes(&body));
        *ls = msgtier::wire::frame::LinkState {
            mac: Some(msgtier::wire::frame::Mac(key.mac(&body, &signature))),
            body,
            signature,
        };
    }
    m.to_x.send(sub);
    x.wait("every forgery refused", || {
        let r = &x.status()["adverts_refused"];
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        n("key_conflict") >= 2 && n("seq_ahead") >= 1 && n("bad_signature") >= 1
    });
    let s = x.status();
    assert!(
        s["key_conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["node_id"] == "b" && c["via"] == "advert from m"),
        "{:#}",
        s["key_conflicts"]
    );
    assert_eq!(x.peer("b").unwrap()["public_key"], b_key);
    assert!(!s["public_relays"].as_array().unwrap().contains(&"b".into()));
    let r = x.send("b", b"mark", &[("timeout", "10000")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(runs(&b), 1);
}

fn hex_key(v: &serde_json::Value) -> [u8; 32] {
    let s = v.as_str().unwrap();
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    k
}

/// A member sending a frame with an id outside the id alphabet (shell metacharacters, as
/// `MSGTIER_SOURCE` would carry them) loses its link (counted as a bad frame); the node and its
/// other links are fine, and no script ran.
#[test]
fn a_bad_id_on_the_wire_closes_that_link_only() {
    let (x, b, m) = line();
    let before = b.counter("links_refused", "bad_frame");
    let bad = request(1, "x;touch pwned", "b", false, vec![0; 64]);
    m.to_b().send(Frame::Data(bad));
    b.wait("bad frame counted", || {
        b.counter("links_refused", "bad_frame") > before
    });
    b.wait("m's link to b closed", || {
        m.to_b().state().0 == msgtier::proto::link::Phase::Closed
    });
    assert!(!b.dir.path().join("pwned").exists());
    assert_eq!(runs(&b), 0);
    assert_eq!(x.peer_state("m"), "Active");
}

/// A request envelope from `source` to `target` dated now (10 s lifetime), with `sealed` as
/// given (`clear`: it holds the payload itself).
fn request(id: u64, source: &str, target: &str, clear: bool, sealed: Vec<u8>) -> Envelope {
    Envelope {
        id,
        source: source.into(),
        target: target.into(),
        kind: MessageKind::Request,
        timestamp_ms: seq_now() / 1000,
        ttl_ms: 10_000,
        hops: 0,
        clear,
        sealed: sealed.into(),
        signature: None,
    }
}

/// A TCP connection from `source` to `to`.
fn tcp_from(source: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// A current-thread tokio runtime for a test's own QUIC endpoint.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A QUIC endpoint on `socket` with msgtier's TLS configuration: it dials (any certificate, as
/// a node does) and, with `serve`, accepts too. Call it inside a runtime.
fn quic_endpoint(socket: UdpSocket, serve: bool) -> quinn::Endpoint {
    let limits = msgtier::quic::Limits {
        max_frame_bytes: 1 << 20,
        peer_timeout_ms: 10_000,
    };
    let configs = msgtier::quic::configs(limits).unwrap();
    socket.set_nonblocking(true).unwrap();
    let server = serve.then_some(configs.server);
    let runtime = Arc::new(quinn::TokioRuntime);
    let mut endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime).unwrap();
    endpoint.set_default_client_config(configs.client);
    endpoint
}

/// Opens QUIC connections from `source` to `to` every 2 ms, each held (idle: no stream, no
/// Noise message) for four seconds, until `stop`; counts them in `sent`.
fn quic_flood(source: [u8; 4], to: SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    runtime().block_on(async move {
        let socket = UdpSocket::bind(SocketAddr::from((source, 0))).unwrap();
        let endpoint = quic_endpoint(socket, false);
        let mut held = std::collections::VecDeque::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(connecting) = endpoint.connect(to, msgtier::quic::SERVER_NAME) {
                sent.fetch_add(1, Ordering::Relaxed);
                held.push_back(tokio::spawn(async move {
                    if let Ok(connection) = connecting.await {
                        tokio::time::sleep(Duration::from_secs(4)).await;
                        drop(connection);
                    }
                }));
            }
            if held.len() > 1000 {
                held.pop_front().unwrap().abort();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        endpoint.close(0u32.into(), b"");
    });
}

/// Idle TCP connections, garbage first messages over TCP, and hundreds of idle QUIC connections
/// a second from six other sources: an honest node still links within seconds over UDP and TCP,
/// the existing link stays Active, and the flooded listener asks QUIC sources to validate their
/// address (Retry) before it spends a handshake on them. (Amplification is QUIC's: a server
/// sends at most three times what an unvalidated address sent, RFC 9000 section 8.1.)
#[test]
fn a_handshake_flood_does_not_keep_honest_peers_out() {
    let mut sa = Spec::new("a", "udp");
    sa.listeners.push(("tcp".into(), common::free_port()));
    let a = Node::start(sa);
    let mut sb = Spec::new("b", "udp");
    sb.peers = vec![a.spec.url_of("udp")];
    let b = Node::start(sb);
    a.wait_peer_state("b", "Active");
    let udp_to: SocketAddr = a.spec.url_of("udp")["udp://".len()..].parse().unwrap();
    let tcp_to: SocketAddr = a.spec.url_of("tcp")["tcp://".len()..].parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    // QUIC: connections from four sources, each completing QUIC's handshake and then sitting
    // idle (a stranger that never starts the Noise handshake), hundreds a second.
    for source in [
        [127, 0, 0, 2],
        [127, 0, 0, 3],
        [127, 0, 0, 6],
        [127, 0, 0, 7],
    ] {
        let (stop, sent) = (stop.clone(), sent.clone());
        threads.push(std::thread::spawn(move || {
            quic_flood(source, udp_to, stop, sent)
        }));
    }
    // TCP: idle connections and garbage first messages from 127.0.0.4 and .5, re-opened as the
    // listener drops them.
    for (source, garbage) in [([127, 0, 0, 4], false), ([127, 0, 0, 5], true)] {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = tcp_from(source, tcp_to) {
                    if garbage {
                        let mut m = 112u32.to_be_bytes().to_vec();
                        m.extend_from_slice(&[0x5a; 112]);
                        let _ = s.write_all(&m);
                    }
                    held.push(s);
                }
                if held.len() > 300 {
                    held.drain(..100);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    // Let the flood fill the handshake budget (A asks for cookies and refuses connections),
    // then bring in honest nodes.
    a.wait("A under load", || {
        let c = &a.status()["counters"];
        c["cookies_sent"].as_u64() > Some(0) && c["links_refused"]["overload"].as_u64() > Some(0)
    });
    let start = Instant::now();
    let mut sc = Spec::new("c", "udp");
    sc.peers = vec![a.spec.url_of("udp")];
    let c = Node::start(sc);
    let mut sd = Spec::new("d", "tcp");
    sd.peers = vec![a.spec.url_of("tcp")];
    let d = Node::start(sd);
    c.wait_peer_state("a", "Active");
    d.wait_peer_state("a", "Active");
    let took = start.elapsed();
    let flood = sent.load(Ordering::Relaxed);
    assert_eq!(a.peer_state("b"), "Active", "the existing link stayed up");
    assert_eq!(b.peer_state("a"), "Active");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let counters = &a.status()["counters"];
    eprintln!(
        "honest peers linked in {took:?} during a flood of {flood} QUIC connections; A sent {} \
         retries, refused {} over the budget",
        counters["cookies_sent"], counters["links_refused"]["overload"],
    );
    assert!(counters["cookies_sent"].as_u64().unwrap() > 0, "under load");
    assert!(counters["links_refused"]["overload"].as_u64().unwrap() > 0);
}

/// X was told to dial an address where a stranger (another network, no secret) listens. The
/// link comes up (as to a public node: Noise alone), but the stranger cannot steer X: the 300
/// junk nodes in its welcome are not dialled, its adverts for X's members are refused (its own
/// network's MAC, none, or relay-flagged), its punch frames are ignored, and its own advert makes
/// it a relay, never a member. X still reaches B with B's own key.
#[test]
fn a_stranger_x_dials_cannot_steer_its_dialers_routes_or_punches() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s_addr = listener.local_addr().unwrap();
    let b = b_with_marker();
    let mut sx = Spec::new("x", "tcp");
    sx.peers = vec![b.spec.url(), format!("tcp://{s_addr}")];
    sx.extra = serde_json::json!({"hole_punching": true});
    let x = Node::start(sx);
    let junk: Vec<msgtier::wire::frame::NodeInfo> = (0..300)
        .map(|i| msgtier::wire::frame::NodeInfo {
            id: format!("j{i}"),
            public_key: [i as u8; 32],
            addrs: vec![format!("tcp://127.0.0.1:{}", 20_000 + i)],
        })
        .collect();
    let s = Peer::accept(&listener, Who::new("s", "evil", "other"), 9, junk);
    s.wait_active();
    x.wait_peer_state("b", "Active");
    let b_key = b.status()["public_key"].clone();

    let now = seq_now();
    // Adverts for b: with the stranger's own network's MAC, without one, relay-flagged.
    s.send(s.advert("test", "b", now + 1, &["s", "x"], false, true));
    s.send(s.advert("test", "b", now + 2, &["s", "x"], false, false));
    s.send(s.advert("test", "b", now + 3, &["s", "x"], true, false));
    // Punch frames nobody asked for, at an address the stranger chose.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Toward c, a member x has no direct link to (toward b, linked, x ignores punches anyway).
    for token in 0..5u8 {
        s.send(Frame::Punch(msgtier::wire::frame::Punch {
            peer: "c".into(),
            addr: sink.local_addr().unwrap().to_string(),
            token: [token; 16],
        }));
    }
    // Its own advert, as a relay.
    s.send(s.advert("test", "s", now + 4, &["x"], true, false));
    x.wait("the stranger's frames handled", || {
        let st = x.status();
        let r = &st["adverts_refused"];
        r["bad_mac"].as_u64() >= Some(1)
            && r["no_mac"].as_u64() >= Some(2)
            && st["punches_refused"].as_u64() >= Some(5)
            && st["public_relays"]
                .as_array()
                .is_some_and(|p| p.contains(&"s".into()))
    });
    // x decided on all five (refused); a datagram it had sent anyway would be in the socket.
    let mut buf = [0u8; 64];
    assert!(
        sink.recv_from(&mut buf).is_err(),
        "no datagram went to the stranger's address"
    );
    let st = x.status();
    assert!(
        st["punch"].as_object().is_some_and(|p| p.is_empty()),
        "no punch attempt: {:#}",
        st["punch"]
    );
    let dialers: Vec<String> = st["dialers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap().to_string())
        .collect();
    let configured = [b.spec.url(), format!("tcp://{s_addr}")];
    assert!(
        dialers.iter().all(|d| configured.contains(d)),
        "only configured addresses dialled: {dialers:?}"
    );
    assert!(!st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"].as_str().unwrap().starts_with('j')));
    assert_eq!(x.peer("b").unwrap()["public_key"], b_key);
    assert_eq!(x.peer("b").unwrap()["key"], "proven");
    let r = x.send("b", b"mark", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    // And b is still a member: a relay flag would have made it a 403.
    assert_eq!(runs(&b), 1);
}

/// A public node checks foreign members itself: a foreign member's data addressed to the
/// public node, and data from a foreign member that took the id of one of the public node's own
/// members, are dropped and counted in that foreign network's domain; the home member they
/// name receives nothing.
#[test]
fn a_public_node_drops_foreign_data_for_itself_and_for_its_own_members() {
    let mut sp = Spec::new("p", "tcp");
    sp.network = "public".into();
    sp.secret = "public-secret".into();
    sp.extra = serde_json::json!({"relay_network_whitelist": "fnet"});
    let p = Node::start(sp);
    let mut sh = Spec::new("h", "tcp");
    sh.network = "public".into();
    sh.secret = "public-secret".into();
    sh.peers = vec![p.spec.url()];
    let h = Node::start(sh);
    p.wait_peer_state("h", "Active");

    let f1 = Peer::dial(tcp_addr(&p), Who::new("f1", "fnet", "f-secret"), 21);
    let f_as_h = Peer::dial(tcp_addr(&p), Who::new("h", "fnet", "f-secret"), 22);
    f1.wait_active();
    f_as_h.wait_active();
    p.wait("both foreign members admitted", || {
        p.status()["foreign"]["fnet"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2)
    });
    let dropped = |p: &Node| {
        p.status()["foreign"]["fnet"]["messages_dropped"]
            .as_u64()
            .unwrap()
    };
    let h_before = h.status()["messages"].clone();
    let envelope = |source: &str, target: &str| request(42, source, target, false, vec![0; 64]);
    let before = dropped(&p);
    f1.send(Frame::Data(envelope("f1", "p")));
    p.wait("data for the public node dropped", || dropped(&p) > before);
    let before = dropped(&p);
    f_as_h.send(Frame::Data(envelope("h", "q")));
    f1.send(Frame::Data(envelope("f1", "h-home")));
    p.wait("data toward p's own network dropped", || {
        dropped(&p) >= before + 2
    });
    // P counted both as dropped, so it forwarded neither; a marker from P itself, on the same
    // link, arrives at h after anything P could have sent before it.
    let r = p.send("h", b"marker", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let h_after = h.status()["messages"].clone();
    assert_eq!(
        h_after["delivered"].as_u64(),
        h_before["delivered"].as_u64().map(|d| d + 1),
        "only the marker reached the home member"
    );
    assert_eq!(
        h_after["dropped"], h_before["dropped"],
        "nothing else reached it"
    );
    assert_eq!(h.peer_state("p"), "Active");
}

/// Runs `msgtier ca ...` and returns its stdout's first line.
fn ca_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_msgtier"))
        .arg("ca")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `msgtier ca sign` for `id` with identity key `key` in network `test`.
fn ca_sign(ca_key: &std::path::Path, id: &str, key: &[u8; 32]) -> String {
    ca_cli(&[
        "sign",
        "--ca-key",
        ca_key.to_str().unwrap(),
        "--network",
        "test",
        "--id",
        id,
        "--key",
        &hex::encode(key),
        "--days",
        "2",
    ])
}

/// A node whose identity is `seed` (written before its first start), with the network CA and
/// a certificate from `msgtier ca sign`.
fn certified(
    id: &str,
    seed: u8,
    ca_key: &std::path::Path,
    ca_pub: &str,
    peers: Vec<String>,
) -> Node {
    let mut s = Spec::new(id, "tcp");
    s.peers = peers;
    let key = msgtier::identity::Identity::from_private([seed; 32]).public();
    let cert = ca_sign(ca_key, id, &key);
    s.extra = serde_json::json!({"network_ca": ca_pub, "certificate": cert});
    Node::start_with_identity(s, [seed; 32])
}

/// With a network CA (`msgtier ca init` / `ca sign`), certified members link and talk; a node
/// with the secret but no certificate, and a certified member claiming another member's id, are
/// refused at the link; a certified member's advert claiming another id with its own key (a
/// key nobody had proven yet) is refused as uncertified, so nothing is ever sealed to it.
#[test]
fn with_a_network_ca_only_certified_members_get_in_or_get_sealed_to() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = dir.path().join("ca.key");
    let ca_pub = ca_cli(&["init", "--ca-key", ca_key.to_str().unwrap()]);
    let a = certified("a", 31, &ca_key, &ca_pub, vec![]);
    let b = certified("b", 32, &ca_key, &ca_pub, vec![a.spec.url()]);
    a.wait_peer_state("b", "Active");
    let r = b.send("a", b"hello", &[]);
    assert_eq!(r.status, 200, "{}", r.text());

    // The secret alone is not enough.
    let uncertified = Peer::dial(tcp_addr(&a), member("m"), 33);
    a.wait("uncertified member refused", || {
        a.counter("links_refused", "uncertified") >= 1
    });
    assert_eq!(uncertified.state().0, msgtier::proto::link::Phase::Closed);
    // A certificate for "c" does not make its holder "z".
    let c_key = msgtier::identity::Identity::from_private([34; 32]).public();
    let c_cert = ca_sign(&ca_key, "c", &c_key);
    let c_cert = msgtier::proto::cert::Certificate::from_text(&c_cert)
        .unwrap()
        .encode();
    let mut as_z = member("z");
    as_z.certificate = Some(c_cert.clone());
    let _z = Peer::dial(tcp_addr(&a), as_z, 34);
    a.wait("a mislabelled certificate refused", || {
        a.counter("links_refused", "uncertified") >= 2
    });
    // The real "c" gets in, and then advertises "z" with its own key and certificate.
    let mut who_c = member("c");
    who_c.certificate = Some(c_cert.clone());
    let c = Peer::dial(tcp_addr(&a), who_c, 34);
    c.wait_active();
    c.send(c.advert_with_cert("test", "z", seq_now(), &["c"], false, true, Some(c_cert)));
    a.wait("the advert for z refused", || {
        a.status()["adverts_refused"]["uncertified"].as_u64() >= Some(1)
    });
    let r = a.send("z", b"hello", &[]);
    assert_eq!(r.status, 404, "z is unknown: {}", r.text());
    assert_eq!(a.peer("b").unwrap()["key"], "proven");
}

/// Copies one QUIC stream into another, counting the bytes.
async fn pipe(mut from: quinn::RecvStream, mut to: quinn::SendStream, count: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 4096];
    while let Ok(Some(n)) = from.read(&mut buf).await {
        count.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A man in the middle of a `udp://` link: it terminates the dialer's QUIC connection and opens
/// its own to the listener (QUIC certificates prove nothing here), copying the control stream
/// both ways. The Noise handshake it relays fails, because each side binds it to its own
/// connection's TLS exporter: the dialer cannot open the listener's message 2 (a handshake
/// failure, counted), nobody links, and the relay did carry the handshake both ways (so the
/// test is not passing for want of traffic).
#[test]
fn a_quic_man_in_the_middle_cannot_relay_the_noise_handshake() {
    let a = Node::start(Spec::new("a", "udp"));
    let a_addr: SocketAddr = a.spec.url_of("udp")["udp://".len()..].parse().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mitm_addr = socket.local_addr().unwrap();
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (u, d) = (up.clone(), down.clone());
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let endpoint = quic_endpoint(socket, true);
            while let Some(incoming) = endpoint.accept().await {
                let Ok(dialer) = incoming.await else { continue };
                let Ok((to_dialer, from_dialer)) = dialer.accept_bi().await else {
                    continue;
                };
                let Ok(connecting) = endpoint.connect(a_addr, msgtier::quic::SERVER_NAME) else {
                    continue;
                };
                let Ok(listener) = connecting.await else {
                    continue;
                };
                let Ok((to_listener, from_listener)) = listener.open_bi().await else {
                    continue;
                };
                tokio::spawn(pipe(from_dialer, to_listener, u.clone()));
                tokio::spawn(pipe(from_listener, to_dialer, d.clone()));
                tokio::spawn(async move {
                    // Keep both connections for as long as either side wants them.
                    tokio::select! {
                        _ = dialer.closed() => {}
                        _ = listener.closed() => {}
                    }
                });
            }
        });
    });
    let mut sm = Spec::new("m", "udp");
    sm.peers = vec![format!("udp://{mitm_addr}")];
    let m = Node::start(sm);
    m.wait("m's handshake through the relay fails", || {
        m.counter("links_refused", "handshake") >= 1
    });
    assert!(
        up.load(Ordering::Relaxed) > 0,
        "message 1 went through the relay"
    );
    assert!(
        down.load(Ordering::Relaxed) > 0,
        "message 2 came back through it"
    );
    assert!(a.peer("m").is_none());
    assert!(m.status()["peers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["state"] != "Active"));
}

/// A stranger that completes QUIC's handshake with a `udp://` listener but proves nothing can
/// open no data stream (its stream limit is 0 until the link is Active) and is closed after the
/// first-message deadline: it cannot make the node buffer frames it never vouched for.
#[test]
fn a_stranger_on_quic_can_open_no_data_stream_before_proving_itself() {
    let a = Node::start(Spec::new("a", "udp"));
    let a_addr: SocketAddr = a.spec.url_of("udp")["udp://".len()..].parse().unwrap();
    let (opened, closed) = runtime().block_on(async move {
        let endpoint = quic_endpoint(UdpSocket::bind("127.0.0.1:0").unwrap(), false);
        let connection = endpoint
            .connect(a_addr, msgtier::quic::SERVER_NAME)
            .unwrap()
            .await
            .expect("QUIC itself lets anyone in");
        let opened = tokio::time::timeout(Duration::from_secs(2), connection.open_uni())
            .await
            .is_ok();
        // Silent: the node drops the connection at its first-message deadline (3 s).
        let closed = tokio::time::timeout(Duration::from_secs(10), connection.closed())
            .await
            .is_ok();
        (opened, closed)
    });
    assert!(!opened, "a data stream opened before the link was Active");
    assert!(closed, "the silent connection was not closed");
    assert!(a.status()["peers"].as_array().unwrap().is_empty());
}

/// A message over a direct member link to its target is not sealed end to end a second time
/// (`clear`: the link's session authenticates its source), so a clear envelope must be taken
/// only from the link of its own source. Member M, linked to B, sends B a clear envelope
/// claiming to come from A (a real member, linked to B too, so its key is known): B drops it.
/// M's clear envelope in its own name is delivered (the check does not simply refuse clear).
#[test]
fn a_clear_envelope_is_taken_only_from_its_own_source() {
    let b = Node::start(Spec::new("b", "tcp"));
    let mut sa = Spec::new("a", "tcp");
    sa.peers = vec![b.spec.url()];
    let a = Node::start(sa);
    b.wait_peer_state("a", "Active");
    let m = Peer::dial(tcp_addr(&b), Who::new("m", "test", "test-secret"), 31);
    m.wait_active();
    b.wait_peer_state("m", "Active");
    let clear = |id: u64, source: &str, body: &[u8]| {
        let payload = msgtier::proto::e2e::Payload::encode_message(body);
        request(id, source, "b", true, payload)
    };
    let before = b.status()["messages"].clone();
    m.send(Frame::Data(clear(7, "a", b"forged-in-a's-name")));
    m.send(Frame::Data(clear(8, "m", b"m-in-its-own-name")));
    b.wait("m's own clear message delivered", || {
        b.status()["messages"]["delivered"].as_u64() == before["delivered"].as_u64().map(|d| d + 1)
    });
    b.wait("the forged one dropped", || {
        b.status()["messages"]["dropped"].as_u64() > before["dropped"].as_u64()
    });
    let inbox = b.http("GET", "/messages", &[], b"").unwrap().text();
    assert!(inbox.contains("m-in-its-own-name"), "{inbox}");
    assert!(!inbox.contains("forged"), "{inbox}");
    // And a real message from A (clear over its direct link) still arrives.
    let r = a.send("b", b"from-a", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}
