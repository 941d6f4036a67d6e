//! Issue 4 in a NAT lab of network namespaces (`tests/common/netns.rs`): a public node P of
//! network `public` on the "internet", two home routers doing NAT, and nodes A and B of network
//! `home` behind them, each configured with only P. They need root (each prints a SKIPPED line
//! otherwise) and run one at a time: the rate-limit measurements want the two cores to
//! themselves.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::netns::{lab_available, Lab, Nat};
use common::{Node, Spec};
use serde_json::{json, Value};

/// One lab test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Starts a lab test: `None` (after a SKIPPED line) when the lab cannot run here, else the
/// guard that keeps other lab tests out until this one ends.
fn lab_test(test: &str) -> Option<MutexGuard<'static, ()>> {
    lab_available(test).then(|| SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The names `ip netns list` shows.
fn netns_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// P (network `public`, with `extra` config), A and B (network `home`, `a_extra` and
/// `b_extra` merged into their config), each of A and B configured with only P's UDP listener.
/// B runs `whoami`; P has a script of its own. Returns once A and B are linked to P.
fn topology(lab: &Lab, p_extra: Value, home_extra: Value) -> (Node, Node, Node) {
    topology_via(lab, "udp", p_extra, home_extra)
}

/// [`topology`] with A and B dialling P's listener of `transport`.
fn topology_via(
    lab: &Lab,
    transport: &str,
    p_extra: Value,
    home_extra: Value,
) -> (Node, Node, Node) {
    let mut sp = lab.spec("P", &lab.inet, &lab.p_ip, &["udp", "tcp"]);
    sp.network = "public".into();
    sp.secret = "public-secret".into();
    sp.scripts = vec![("own".into(), "echo ran > p_marker; echo p".into())];
    sp.extra = p_extra;
    let p = Node::start(sp);
    let member = |id: &str, ns: &str, ip: &str| -> Spec {
        let mut s = lab.spec(id, ns, ip, &["udp", "tcp"]);
        s.network = "home".into();
        s.secret = "home-secret".into();
        s.peers = vec![p.spec.url_of(transport)];
        s.extra = home_extra.clone();
        s
    };
    let mut sb = member("B", &lab.lb, &lab.b_ip);
    sb.scripts = vec![("whoami".into(), "echo b-here".into())];
    let b = Node::start(sb);
    let a = Node::start(member("A", &lab.la, &lab.a_ip));
    a.wait_peer_state("P", "Active");
    b.wait_peer_state("P", "Active");
    (p, a, b)
}

fn home_on(p: &Node) -> Value {
    p.status()["foreign"]["home"].clone()
}

/// P's bytes relayed for `home`; a missing field fails the test (reading it as 0 would let a
/// "P carried nothing" assertion pass on a renamed field).
fn relayed_bytes(p: &Node) -> u64 {
    let home = home_on(p);
    home["bytes_relayed"]
        .as_u64()
        .unwrap_or_else(|| panic!("P's /status lacks foreign.home.bytes_relayed: {home}"))
}

/// A's direct UDP link to B, if up: its remote address.
fn direct_udp_to_b(a: &Node) -> Option<String> {
    let b = a.peer("B")?;
    b["links"].as_array()?.iter().find_map(|l| {
        (l["transport"] == "udp" && l["state"] == "Active")
            .then(|| l["remote_addr"].as_str().unwrap_or_default().to_string())
    })
}

/// Cone NATs on both sides: A punches a direct UDP path to B through both NATs, after which P
/// carries none of their data while they keep talking.
#[test]
fn lab_punch_through_two_cone_nats_takes_the_public_node_off_the_path() {
    let Some(_serial) =
        lab_test("lab_punch_through_two_cone_nats_takes_the_public_node_off_the_path")
    else {
        return;
    };
    let lab = Lab::new(Nat::Cone, Nat::Cone);
    let (p, a, b) = topology(
        &lab,
        json!({"relay_network_whitelist": "home", "foreign_relay_bps_limit": 1_000_000}),
        json!({}),
    );
    // A and B found each other through P (B's LAN address is unreachable from A).
    assert_eq!(home_on(&p)["members"], json!(["A", "B"]));
    a.wait("A has a route to B", || {
        a.peer("B").is_some_and(|x| x["hops"].as_u64().is_some())
    });
    let r = a.send("B", b"whoami", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(String::from_utf8_lossy(&r.body), "b-here\n");

    // The punch: A's direct UDP link to B comes from router B's public address.
    a.wait("A has a direct UDP link to B", || {
        direct_udp_to_b(&a).is_some()
    });
    let remote = direct_udp_to_b(&a).unwrap();
    assert!(
        remote.starts_with(&format!("{}:", lab.rb_wan)),
        "the direct link goes through B's NAT: {remote}"
    );
    let punch = a.status()["punch"]["B"].clone();
    assert_eq!(punch["state"], "open", "{punch}");
    assert_eq!(punch["relay"], "P", "{punch}");
    assert!(home_on(&p)["punches_coordinated"].as_u64().unwrap() >= 1);
    a.wait("A routes to B directly", || {
        a.peer("B").is_some_and(|x| x["hops"] == 1)
    });

    // P's relayed bytes for `home` stop growing while A and B keep exchanging messages.
    let before = relayed_bytes(&p);
    let delivered = b.status()["messages"]["delivered"].as_u64().unwrap();
    for i in 0..30 {
        let r = a.send("B", format!("direct {i}").as_bytes(), &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["hops"], 1);
    }
    assert_eq!(b.status()["messages"]["delivered"], delivered + 30);
    assert_eq!(relayed_bytes(&p), before, "P carried data after the punch");
}

/// A punched path that dies (the "internet" drops A<->B datagrams) falls back to P at once,
/// and the direct link comes back by itself once the path works again (a new punch, and the
/// dialer of the punched address woken from its backoff).
#[test]
fn lab_a_lost_punched_path_falls_back_to_the_relay_and_is_punched_again() {
    let Some(_serial) =
        lab_test("lab_a_lost_punched_path_falls_back_to_the_relay_and_is_punched_again")
    else {
        return;
    };
    let lab = Lab::new(Nat::Cone, Nat::Cone);
    let (p, a, _b) = topology(&lab, json!({"relay_network_whitelist": "home"}), json!({}));
    a.wait("A has a direct UDP link to B", || {
        direct_udp_to_b(&a).is_some()
    });
    let block = |op: &str| {
        for (src, dst) in [(&lab.ra_wan, &lab.rb_wan), (&lab.rb_wan, &lab.ra_wan)] {
            let out = lab.exec(
                &lab.inet,
                &[
                    "iptables", "-w", op, "FORWARD", "-p", "udp", "-s", src, "-d", dst, "-j",
                    "DROP",
                ],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    block("-I");
    a.wait("A falls back to P", || {
        a.peer("B")
            .is_some_and(|x| x["hops"] == 2 && x["next_hop"] == "P")
    });
    let r = a.send("B", b"via P again", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["hops"], 2);
    let relayed = relayed_bytes(&p);
    assert!(relayed > 0);
    block("-D");
    // The puncher waits 10 s after losing a link before it tries again.
    common::wait_until("the direct link is back", Duration::from_secs(30), || {
        a.peer("B").is_some_and(|x| x["hops"] == 1)
    });
    let r = a.send("B", b"direct again", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["hops"], 1);
    assert_eq!(relayed_bytes(&p), relayed, "P is off the path again");
}

/// Punching disabled: the traffic keeps flowing through P (x-hops 2), P's counter grows, and a
/// foreign member cannot reach P's own scripts.
#[test]
fn lab_without_punching_traffic_flows_through_the_public_node() {
    let Some(_serial) = lab_test("lab_without_punching_traffic_flows_through_the_public_node")
    else {
        return;
    };
    let lab = Lab::new(Nat::Cone, Nat::Cone);
    let (p, a, b) = topology(
        &lab,
        json!({"relay_network_whitelist": "home"}),
        json!({"hole_punching": false}),
    );
    a.wait("A routes to B through P", || {
        a.peer("B")
            .is_some_and(|x| x["hops"] == 2 && x["next_hop"] == "P")
    });
    let r = a.send("B", b"whoami", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(String::from_utf8_lossy(&r.body), "b-here\n");
    assert_eq!(r.header("x-hops"), Some("2"), "A -> P -> B");
    let before = relayed_bytes(&p);
    for i in 0..10 {
        let r = a.send("B", format!("via P {i}").as_bytes(), &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["hops"], 2);
    }
    assert!(relayed_bytes(&p) > before, "P carried the messages");
    assert!(direct_udp_to_b(&a).is_none());
    assert!(b.status()["punch"].as_object().unwrap().is_empty());

    // P's own scripts are not reachable from a foreign network.
    let r = a.send("P", b"own", &[]);
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "not_a_member");
    assert!(!p.dir.path().join("p_marker").exists(), "P's script ran");
    assert_eq!(p.status()["messages"]["scripts_run"], 0);
}

/// Router B randomises ports (symmetric NAT): the punch fails, `/status` says why, and the
/// traffic stays on P.
#[test]
fn lab_symmetric_nat_defeats_the_punch_and_traffic_stays_on_the_relay() {
    let Some(_serial) =
        lab_test("lab_symmetric_nat_defeats_the_punch_and_traffic_stays_on_the_relay")
    else {
        return;
    };
    let lab = Lab::new(Nat::Cone, Nat::Symmetric);
    let (p, a, _b) = topology(&lab, json!({"relay_network_whitelist": "home"}), json!({}));
    a.wait("A's punch toward B failed", || {
        a.status()["punch"]["B"]["failures"].as_u64().unwrap_or(0) >= 1
    });
    let punch = a.status()["punch"]["B"].clone();
    let why = punch["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("symmetric NAT"), "{punch}");
    assert!(
        direct_udp_to_b(&a).is_none(),
        "no direct link through a symmetric NAT"
    );
    let before = relayed_bytes(&p);
    for i in 0..5 {
        let r = a.send("B", format!("still via P {i}").as_bytes(), &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["hops"], 2);
    }
    assert!(relayed_bytes(&p) > before);
}

/// Streams messages of `body` bytes from A to B through P with `foreign_relay_bps_limit` =
/// `limit` and returns (body bytes per second arriving at B, P's relayed bytes per second, P's
/// dropped bytes in the window) over a 6 s window.
///
/// A and B link to P over TCP here: the budget is the same on every transport, and UDP (no
/// retransmission of lost fragments) loses whole messages when a loaded machine overflows a
/// socket buffer, which would measure the machine instead of the bucket.
fn measure_rate(limit: u64, body: usize) -> (f64, f64, u64) {
    let lab = Lab::new(Nat::Cone, Nat::Cone);
    let (p, a, b) = topology_via(
        &lab,
        "tcp",
        // A 5 s peer timeout (not the tests' usual 1.5 s): pings queue behind the flood in A's
        // own link to P, which is A's business, not the relay budget's.
        json!({"relay_network_whitelist": "home", "foreign_relay_bps_limit": limit,
               "peer_timeout_ms": 5_000}),
        json!({"hole_punching": false, "peer_timeout_ms": 5_000}),
    );
    a.wait("A routes to B through P", || {
        a.peer("B").is_some_and(|x| x["hops"] == 2)
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ns, port) = (a.spec.netns.clone(), a.http_port);
    let senders: Vec<_> = (0..48)
        .map(|_| {
            let (stop, ns) = (stop.clone(), ns.clone());
            std::thread::spawn(move || {
                let body = vec![b'x'; body];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A long timeout: P queues what is over the budget (up to a second of
                    // it) and answers 429 with retry-after when its queue is full, which the
                    // sender honours, so nobody waits out a timeout.
                    let headers = [("target", "B"), ("timeout", "3000")];
                    let r =
                        common::http_full_in(ns.as_deref(), port, "POST", "/send", &headers, &body);
                    if let Ok(r) = r {
                        if r.status == 429 {
                            let s: u64 = r
                                .header("retry-after")
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(1);
                            std::thread::sleep(Duration::from_secs(s));
                        }
                    }
                }
            })
        })
        .collect();
    // Let the initial burst (one second of budget) drain, then measure.
    std::thread::sleep(Duration::from_millis(2_000));
    // Each node's counters are timed by its own clock (`uptime_ms` in the same `/status`), so
    // how long an HTTP answer takes on a busy machine does not skew the rates.
    let sample = || {
        let bs = b.status();
        let ps = p.status();
        let home = &ps["foreign"]["home"];
        let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a counter: {v}"));
        (
            n(&bs["uptime_ms"]),
            n(&bs["messages"]["delivered"]),
            n(&ps["uptime_ms"]),
            n(&home["bytes_relayed"]),
            n(&home["bytes_dropped"]),
        )
    };
    let (bt0, d0, pt0, r0, x0) = sample();
    std::thread::sleep(Duration::from_millis(6_000));
    let (bt1, d1, pt1, r1, x1) = sample();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let arrived = (d1 - d0) as f64 * body as f64 / ((bt1 - bt0) as f64 / 1000.0);
    let relayed = (r1 - r0) as f64 / ((pt1 - pt0) as f64 / 1000.0);
    // Control traffic is never limited: A's link to P stayed up through the flood.
    assert_eq!(a.peer_state("P"), "Active");
    (arrived, relayed, x1 - x0)
}

/// The budget holds within 10 %. Bodies of `body` bytes make 20-40 messages a second, so one
/// message more or less in the window is under 1 %, and the envelope and reply overhead that
/// the budget also counts (about 200 bytes a message) stays near 1 %.
fn check_rate(limit: u64, body: usize) {
    let (arrived, relayed, dropped) = measure_rate(limit, body);
    eprintln!(
        "foreign_relay_bps_limit {limit}, {body}-byte bodies: {arrived:.0} B/s arrived at B, \
         P relayed {relayed:.0} B/s ({:.3} / {:.3} of the limit), {dropped} bytes dropped",
        arrived / limit as f64,
        relayed / limit as f64
    );
    assert!(
        dropped > 0,
        "the stream must exceed the budget during the window"
    );
    let within = |x: f64| (x / limit as f64 - 1.0).abs() <= 0.10;
    assert!(within(arrived), "arrived {arrived:.0} B/s vs limit {limit}");
    assert!(within(relayed), "relayed {relayed:.0} B/s vs limit {limit}");
}

#[test]
fn lab_relay_rate_limit_holds_at_200_kb_per_second() {
    let Some(_serial) = lab_test("lab_relay_rate_limit_holds_at_200_kb_per_second") else {
        return;
    };
    check_rate(200_000, 10_000);
}

#[test]
fn lab_relay_rate_limit_holds_at_500_kb_per_second() {
    let Some(_serial) = lab_test("lab_relay_rate_limit_holds_at_500_kb_per_second") else {
        return;
    };
    check_rate(500_000, 25_000);
}

/// A network P's whitelist does not name is refused.
#[test]
fn lab_a_network_outside_the_whitelist_is_refused() {
    let Some(_serial) = lab_test("lab_a_network_outside_the_whitelist_is_refused") else {
        return;
    };
    let lab = Lab::new(Nat::Cone, Nat::Cone);
    let mut sp = lab.spec("P", &lab.inet, &lab.p_ip, &["udp"]);
    sp.network = "public".into();
    sp.extra = json!({"relay_network_whitelist": ["home", "lab-*"]});
    let p = Node::start(sp);
    let mut sa = lab.spec("A", &lab.la, &lab.a_ip, &["udp"]);
    sa.network = "guest".into();
    sa.peers = vec![p.spec.url_of("udp")];
    let a = Node::start(sa);
    p.wait("P refuses network guest", || {
        p.counter("links_refused", "foreign") >= 1
    });
    a.wait("A is told it is foreign", || {
        a.counter("links_refused_by_peer", "foreign") >= 1
    });
    assert_ne!(a.peer_state("P"), "Active");
    assert!(p.status()["foreign"].as_object().unwrap().is_empty());
}

/// With `relay_all_peer_rpc` and no whitelist entry, P admits `home` for control traffic only:
/// their data through P is dropped and counted, yet P coordinates the punch that links A and B
/// directly.
#[test]
fn lab_relay_all_peer_rpc_drops_data_but_the_punch_succeeds() {
    let Some(_serial) = lab_test("lab_relay_all_peer_rpc_drops_data_but_the_punch_succeeds") else {
        return;
    };
    let lab = Lab::new(Nat::Cone, Nat::Cone);
    // First without punching, so that the only path is through P.
    let (p, mut a, mut b) = topology(
        &lab,
        json!({"relay_all_peer_rpc": true}),
        json!({"hole_punching": false}),
    );
    assert_eq!(home_on(&p)["control_only"], true);
    a.wait(
        "A routes to B through P (route updates are control traffic)",
        || a.peer("B").is_some_and(|x| x["hops"] == 2),
    );
    let r = a.send("B", b"through P", &[("timeout", "1000")]);
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    let home = home_on(&p);
    assert!(home["messages_dropped"].as_u64().unwrap() >= 1, "{home}");
    assert_eq!(home["bytes_relayed"], 0, "{home}");
    assert_eq!(b.status()["messages"]["delivered"], 0);

    // The same nodes with punching on: P coordinates, A and B link directly and talk.
    for n in [&mut b, &mut a] {
        n.spec.extra = json!({});
        n.restart();
    }
    a.wait("A has a punched UDP link to B", || {
        direct_udp_to_b(&a).is_some()
    });
    for i in 0..10 {
        let r = a.send("B", format!("direct {i}").as_bytes(), &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["hops"], 1);
    }
    assert_eq!(b.status()["messages"]["delivered"], 10);
    let home = home_on(&p);
    assert_eq!(home["bytes_relayed"], 0, "{home}");
    assert!(home["punches_coordinated"].as_u64().unwrap() >= 1, "{home}");
}

/// Dropping a lab removes its namespaces.
#[test]
fn lab_cleans_up() {
    if !lab_available("lab_cleans_up") {
        return;
    }
    let lab = Lab::new(Nat::Cone, Nat::Symmetric);
    let names = lab.namespaces();
    let listed = netns_names();
    for n in &names {
        assert!(listed.contains(n), "{n} exists while the lab lives");
    }
    drop(lab);
    let listed = netns_names();
    for n in &names {
        assert!(!listed.contains(n), "{n} is gone after the lab dropped");
    }
}
