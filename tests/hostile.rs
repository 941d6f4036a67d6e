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

use common::{Node, Spec};

/// A TCP connection from `source` to `to`.
fn tcp_from(source: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// A padded, well-formed-looking XX message 1 (any 112 bytes are one: a random ephemeral
/// key and the clear padding), as a UDP init with sender index `sender`.
fn udp_init(sender: u32, salt: u64) -> Vec<u8> {
    let mut d = vec![1u8];
    d.extend_from_slice(&sender.to_be_bytes());
    let mut x = salt | 1;
    for _ in 0..112 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.push(x as u8);
    }
    d
}

/// Idle TCP connections, garbage first messages over TCP, and thousands of UDP inits a second
/// from four other sources: an honest node still links within seconds over UDP and TCP, the
/// existing link stays Active, and what the flooded listener sends back to a UDP source that
/// never answered is never larger than what that source sent (cookies under load).
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
    let largest_reply = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    // UDP: inits from 127.0.0.2 and .3, each with a fresh sender index, as fast as a thread
    // sends them (thousands per second here), reading whatever comes back.
    for source in [[127, 0, 0, 2], [127, 0, 0, 3]] {
        let (stop, sent, largest) = (stop.clone(), sent.clone(), largest_reply.clone());
        threads.push(std::thread::spawn(move || {
            let sock = UdpSocket::bind(SocketAddr::from((source, 0))).unwrap();
            sock.set_nonblocking(true).unwrap();
            let mut i = 0u32;
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_add(1);
                let init = udp_init(i, u64::from(i) << 8 | u64::from(source[3]));
                if sock.send_to(&init, udp_to).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                while let Ok((n, _)) = sock.recv_from(&mut buf) {
                    largest.fetch_max(n as u64, Ordering::Relaxed);
                }
                if i.is_multiple_of(64) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
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
        "honest peers linked in {took:?} during a flood of {flood} UDP inits; A sent {} cookies, \
         refused {} over the budget; largest reply to a flooder {} bytes",
        counters["cookies_sent"],
        counters["links_refused"]["overload"],
        largest_reply.load(Ordering::Relaxed)
    );
    assert!(counters["cookies_sent"].as_u64().unwrap() > 0, "under load");
    assert!(counters["links_refused"]["overload"].as_u64().unwrap() > 0);
    let init_len = udp_init(0, 0).len() as u64;
    assert!(
        largest_reply.load(Ordering::Relaxed) <= init_len,
        "no reply larger than the {init_len}-byte init"
    );
}
