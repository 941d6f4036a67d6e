//! Process-level tests of the node core: the real `msgtier` binary, generated configs, loopback.

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};

use common::{http, Node, Spec};

/// Builds node2 with node1 and node3 each configured with only node2, all on `transport`.
fn chain(transport: &str) -> (Node, Node, Node) {
    let n2 = Node::start(Spec::new("2", transport));
    let mut s1 = Spec::new("1", transport);
    s1.peers = vec![n2.spec.url()];
    let mut s3 = Spec::new("3", transport);
    s3.peers = vec![n2.spec.url()];
    let n1 = Node::start(s1);
    let n3 = Node::start(s3);
    (n1, n2, n3)
}

/// The chain 1-2-3 becomes a full mesh with a direct, Active 1-3 link on `transport`.
fn chain_meshes(transport: &str) {
    let (n1, n2, n3) = chain(transport);
    for (node, others) in [(&n1, ["2", "3"]), (&n2, ["1", "3"]), (&n3, ["1", "2"])] {
        for other in others {
            node.wait_peer_state(other, "Active");
        }
    }
    for (node, other) in [(&n1, "3"), (&n3, "1")] {
        node.wait(
            &format!("{} has a direct link to {other}", node.spec.id),
            || {
                let p = node.peer(other).unwrap_or_default();
                p["hops"] == 1
                    && p["next_hop"] == other
                    && p["links"].as_array().is_some_and(|l| {
                        l.iter()
                            .any(|l| l["state"] == "Active" && l["transport"] == transport)
                    })
            },
        );
    }
    // RTT is measured on the links.
    n1.wait("an RTT sample on 1's link to 2", || {
        n1.peer("2").unwrap_or_default()["links"][0]["rtt_ms"]["samples"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    // No duplicate links on one transport survive between any two nodes. `/status` shows only
    // admitted links (at most one per transport by construction), so count what is on the wire:
    // over TCP, the established connections between each pair's processes.
    if transport == "tcp" {
        let nodes = [&n1, &n2, &n3];
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                let ports =
                    |n: &Node| -> Vec<u16> { n.spec.listeners.iter().map(|l| l.1).collect() };
                let between = || {
                    let a_to_b = a
                        .tcp_connections()
                        .iter()
                        .filter(|(_, r)| ports(b).contains(r))
                        .count();
                    let b_to_a = b
                        .tcp_connections()
                        .iter()
                        .filter(|(_, r)| ports(a).contains(r))
                        .count();
                    a_to_b + b_to_a
                };
                a.wait(
                    &format!("one TCP connection between {} and {}", a.spec.id, b.spec.id),
                    || between() == 1,
                );
            }
        }
    }
}

#[test]
fn chain_meshes_over_tcp() {
    chain_meshes("tcp");
}

#[test]
fn chain_meshes_over_udp() {
    chain_meshes("udp");
}

#[test]
fn chain_meshes_over_ws() {
    chain_meshes("ws");
}

/// A node with the wrong secret is refused (counted, logged) and the others are unaffected;
/// it does not re-dial in a tight loop. Over TCP and over UDP (QUIC) alike.
#[test]
fn wrong_secret_is_refused_and_others_are_unaffected() {
    wrong_secret_case("tcp");
}

#[test]
fn wrong_secret_over_udp_is_refused_and_others_are_unaffected() {
    wrong_secret_case("udp");
}

fn wrong_secret_case(transport: &str) {
    let a = Node::start(Spec::new("a", transport));
    let mut sb = Spec::new("b", transport);
    sb.peers = vec![a.spec.url()];
    let b = Node::start(sb);
    a.wait_peer_state("b", "Active");

    let mut sm = Spec::new("mallory", transport);
    sm.secret = "not-the-secret".into();
    sm.peers = vec![a.spec.url()];
    let m = Node::start(sm);
    a.wait("a counts a wrong-secret refusal", || {
        a.counter("links_refused", "wrong_secret") >= 1
    });
    m.wait("mallory learns it was refused", || {
        m.counter("links_refused_by_peer", "wrong_secret") >= 1
    });
    assert!(a.peer("mallory").is_none(), "a must not list mallory");
    assert!(
        m.status()["peers"].as_array().unwrap().is_empty(),
        "mallory learned nothing"
    );
    // The others keep their link.
    assert_eq!(a.peer_state("b"), "Active");
    assert_eq!(b.peer_state("a"), "Active");
    // Backoff after an authentication refusal is at its ceiling: over 3 s, no second try.
    let first = a.counter("links_refused", "wrong_secret");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        assert!(a.counter("links_refused", "wrong_secret") <= first + 1);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(a.dir.path().join("node.log")).unwrap();
    assert!(log.contains("wrong secret"), "a logs the refusal");
}

/// A node of another network is refused as foreign until relaying for foreign networks exists.
#[test]
fn foreign_network_is_refused() {
    let a = Node::start(Spec::new("a", "udp"));
    let mut sf = Spec::new("f", "udp");
    sf.network = "elsewhere".into();
    sf.peers = vec![a.spec.url()];
    let _f = Node::start(sf);
    a.wait("a refuses the foreign node", || {
        a.counter("links_refused", "foreign") >= 1
    });
    assert!(a.peer("f").is_none());
}

/// A SIGSTOPped peer goes Disconnected after the timeout and comes back Active after SIGCONT.
#[test]
fn stopped_peer_times_out_and_recovers() {
    for transport in ["udp", "tcp"] {
        let a = Node::start(Spec::new("a", transport));
        let mut sb = Spec::new("b", transport);
        sb.peers = vec![a.spec.url()];
        let b = Node::start(sb);
        a.wait_peer_state("b", "Active");
        b.signal(libc::SIGSTOP);
        a.wait_peer_state("b", "Disconnected");
        b.signal(libc::SIGCONT);
        a.wait_peer_state("b", "Active");
        b.wait_peer_state("a", "Active");
    }
}

/// A node stopped with SIGTERM says goodbye (`close(shutdown)`): its peer marks it
/// Disconnected at once, long before the 60 s peer timeout, on every transport.
#[test]
fn a_node_stopped_by_sigterm_is_disconnected_at_once() {
    for transport in ["tcp", "udp", "ws"] {
        let slow = |id: &str| {
            let mut s = Spec::new(id, transport);
            s.heartbeat_ms = 10_000;
            s.timeout_ms = 60_000;
            s
        };
        let a = Node::start(slow("a"));
        let mut sb = slow("b");
        sb.peers = vec![a.spec.url()];
        let b = Node::start(sb);
        a.wait_peer_state("b", "Active");
        b.signal(libc::SIGTERM);
        // The wait is bounded at 20 s, a third of the peer timeout: only the close frame can
        // get there in time.
        a.wait_peer_state("b", "Disconnected");
    }
}

/// A killed and restarted peer is Active again, with the same identity key.
#[test]
fn restarted_peer_is_active_again_with_the_same_identity() {
    for transport in ["tcp", "udp", "ws"] {
        let a = Node::start(Spec::new("a", transport));
        let mut sb = Spec::new("b", transport);
        sb.peers = vec![a.spec.url()];
        let mut b = Node::start(sb);
        a.wait_peer_state("b", "Active");
        b.wait_peer_state("a", "Active");
        let key = a.peer("b").unwrap()["public_key"].clone();
        assert_eq!(key, b.status()["public_key"], "a holds b's own key");
        b.kill();
        a.wait_peer_state("b", "Disconnected");
        b.restart();
        a.wait_peer_state("b", "Active");
        assert_eq!(a.peer("b").unwrap()["public_key"], key);
        assert_eq!(b.status()["public_key"], key, "b kept its identity");
        // The other direction too: a dialler that lost its peer re-dials it, and learns a's
        // key again from the new link (read after the link is back, not before).
        b.wait_peer_state("a", "Active");
        assert_eq!(b.peer("a").unwrap()["public_key"], a.status()["public_key"]);
        assert_eq!(b.peer("a").unwrap()["key"], "proven");
    }
}

/// The listener side re-dials too: kill the node that dialled; the other knows its address
/// from its hello and dials it when it comes back.
#[test]
fn listener_redials_a_lost_dialer() {
    let a = Node::start(Spec::new("a", "tcp"));
    let mut sb = Spec::new("b", "tcp");
    sb.peers = vec![a.spec.url()];
    let mut b = Node::start(sb);
    a.wait_peer_state("b", "Active");
    b.kill();
    a.wait_peer_state("b", "Disconnected");
    // b comes back without any configured peer: only a's re-dial can restore the link.
    b.spec.peers.clear();
    b.restart();
    b.wait_peer_state("a", "Active");
    a.wait_peer_state("b", "Active");
}

/// Garbage and oversized frames sent to every listener close only that connection (counted);
/// the node keeps serving and its real link stays Active.
#[test]
fn garbage_and_oversized_frames_leave_the_node_serving() {
    let mut sa = Spec::new("a", "tcp");
    sa.max_frame_bytes = 4096;
    sa.listeners.push(("udp".into(), common::free_port()));
    sa.listeners.push(("ws".into(), common::free_port()));
    let a = Node::start(sa);
    let mut sb = Spec::new("b", "tcp");
    sb.peers = vec![a.spec.url_of("udp")];
    let b = Node::start(sb);
    a.wait_peer_state("b", "Active");

    let tcp_port = a.spec.listeners[0].1;
    // TCP: a length prefix far over the limit.
    let mut s = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    s.write_all(&0x7fff_ffffu32.to_be_bytes()).unwrap();
    a.wait("oversize counted (tcp)", || {
        a.counter("links_refused", "oversize") >= 1
    });
    // TCP: garbage in a well-formed length prefix fails the Noise handshake.
    let mut s = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    let mut junk = 40u32.to_be_bytes().to_vec();
    junk.extend_from_slice(&[0xAB; 40]);
    s.write_all(&junk).unwrap();
    a.wait("handshake failure counted (tcp)", || {
        a.counter("links_refused", "handshake") >= 1
    });

    // UDP: garbage and an oversized datagram of ours are dropped and counted; garbage that
    // looks like QUIC (fixed bit set) is QUIC's to drop.
    let udp_port = a.spec.listeners[1].1;
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"\xff garbage", ("127.0.0.1", udp_port)).unwrap();
    u.send_to(b"\x01 an old handshake init", ("127.0.0.1", udp_port))
        .unwrap();
    u.send_to(&[5u8; 1500], ("127.0.0.1", udp_port)).unwrap();
    a.wait("udp garbage counted", || {
        a.counter("links_refused", "bad_frame") >= 2
    });

    // WebSocket: a message over the limit, then a text message.
    let ws_port = a.spec.listeners[2].1;
    let before = a.counter("links_refused", "oversize");
    let stream = TcpStream::connect(("127.0.0.1", ws_port)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{ws_port}/"), stream).unwrap();
    let _ = ws.send(tungstenite::Message::Binary(vec![0u8; 10_000].into()));
    let _ = ws.flush();
    a.wait("oversize counted (ws)", || {
        a.counter("links_refused", "oversize") > before
    });
    let stream = TcpStream::connect(("127.0.0.1", ws_port)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{ws_port}/"), stream).unwrap();
    let before = a.counter("links_refused", "bad_frame");
    let _ = ws.send(tungstenite::Message::Text("hello?".into()));
    let _ = ws.flush();
    a.wait("text message counted (ws)", || {
        a.counter("links_refused", "bad_frame") > before
    });

    // Still serving, still linked.
    assert_eq!(a.peer_state("b"), "Active");
    assert_eq!(b.peer_state("a"), "Active");
    let (code, _) = http(a.http_port, "GET", "/api/status", &[], b"").unwrap();
    assert_eq!(code, 200);
}

/// A panic injected into a dialling PeerActor (test-only hook) is caught, the supervisor
/// restarts the actor, and it re-dials to Active; an injected link error does the same.
#[test]
fn supervised_peer_actor_comes_back_after_a_fault() {
    // a never dials b, so b's dialer carries the only link (no duplicate to stand by for).
    let mut sa = Spec::new("a", "tcp");
    sa.auto_connect = false;
    let a = Node::start(sa);
    let mut sb = Spec::new("b", "tcp");
    sb.peers = vec![a.spec.url()];
    let b = Node::start(sb);
    b.wait_peer_state("a", "Active");
    let restarts = |n: &Node| n.status()["dialers"][0]["restarts"].as_u64().unwrap_or(0);
    for (i, fault) in ["panic", "error"].into_iter().enumerate() {
        let (code, body) = http(
            b.http_port,
            "POST",
            "/debug/fault",
            &[("peer", &a.spec.url())],
            fault.as_bytes(),
        )
        .unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        b.wait(&format!("dialer restarted after {fault}"), || {
            restarts(&b) > i as u64
        });
        b.wait_peer_state("a", "Active");
        b.wait(&format!("dialer Active after {fault}"), || {
            b.status()["dialers"][0]["state"] == "Active"
        });
    }
    a.wait_peer_state("b", "Active");
}

/// Unknown routes answer a JSON 404; /config never shows the secret.
#[test]
fn api_errors_are_json_and_config_is_redacted() {
    let a = Node::start(Spec::new("a", "tcp"));
    let (code, body) = http(a.http_port, "GET", "/nope", &[], b"").unwrap();
    assert_eq!(code, 404);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "not_found");
    for path in ["/config", "/api/config"] {
        let (code, body) = http(a.http_port, "GET", path, &[], b"").unwrap();
        assert_eq!(code, 200);
        let text = String::from_utf8(body).unwrap();
        assert!(
            !text.contains("test-secret"),
            "{path} leaks the secret: {text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "a");
    }
    let s = a.status();
    assert_eq!(s["public_key_encoding"], "hex");
    assert_eq!(s["public_key"].as_str().unwrap().len(), 64);
    assert_eq!(s["listeners"][0], a.spec.url());
}

/// Before a dialer proved membership, a listener buffers no more than a hello: a TCP length
/// prefix of 100 KB (far under `max_frame_bytes`, 4 MiB here) and a 10 KB WebSocket message
/// from a stranger close that connection at once (counted), and the node's links stay up.
#[test]
fn a_stranger_cannot_make_a_listener_buffer_more_than_a_hello() {
    let mut sa = Spec::new("a", "tcp");
    sa.listeners.push(("ws".into(), common::free_port()));
    let a = Node::start(sa);
    let mut sb = Spec::new("b", "tcp");
    sb.peers = vec![a.spec.url()];
    let b = Node::start(sb);
    a.wait_peer_state("b", "Active");

    let before = a.counter("links_refused", "oversize");
    let mut s = TcpStream::connect(("127.0.0.1", a.spec.listeners[0].1)).unwrap();
    s.write_all(&100_000u32.to_be_bytes()).unwrap();
    s.write_all(&[0u8; 1000]).unwrap();
    a.wait("pre-auth oversize counted (tcp)", || {
        a.counter("links_refused", "oversize") > before
    });
    // The connection is closed: reading ends (EOF or reset) instead of waiting for 100 KB.
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    let read = std::io::Read::read(&mut s, &mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let ws_port = a.spec.listeners[1].1;
    let before = a.counter("links_refused", "oversize");
    let stream = TcpStream::connect(("127.0.0.1", ws_port)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{ws_port}/"), stream).unwrap();
    let _ = ws.send(tungstenite::Message::Binary(vec![0u8; 10_000].into()));
    let _ = ws.flush();
    a.wait("pre-auth oversize counted (ws)", || {
        a.counter("links_refused", "oversize") > before
    });
    assert_eq!(a.peer_state("b"), "Active");
    assert_eq!(b.peer_state("a"), "Active");
}
