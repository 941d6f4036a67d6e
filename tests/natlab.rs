//! Tests in a NAT lab of network namespaces (`tests/common/netns.rs`): nodes behind home-router
//! NATs and a public node. They need root (skipped with a SKIPPED line otherwise).

mod common;

use std::process::Command;

use common::netns::{lab_available, Lab, Nat};
use common::Node;

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

/// Harness smoke test: A and B behind cone NATs reach the public P; P sees A's link come from
/// A's router; A learns B through P and runs B's script through P.
#[test]
fn lab_topology_nat_and_relay_within_one_network() {
    let test = "lab_topology_nat_and_relay_within_one_network";
    if !lab_available(test) {
        return;
    }
    // Declared first so it drops last, after the nodes.
    let lab = Lab::new(Nat::Cone, Nat::Cone);

    let mut sp = lab.spec("P", &lab.inet, &lab.p_ip, &["udp", "tcp"]);
    sp.network = "home".into();
    let p = Node::start(sp);
    let p_udp = p.spec.url_of("udp");

    let mut sa = lab.spec("A", &lab.la, &lab.a_ip, &["udp", "tcp"]);
    sa.network = "home".into();
    sa.peers = vec![p_udp.clone()];
    let a = Node::start(sa);

    let mut sb = lab.spec("B", &lab.lb, &lab.b_ip, &["udp", "tcp"]);
    sb.network = "home".into();
    sb.peers = vec![p_udp];
    sb.scripts = vec![("whoami".into(), "echo b-here".into())];
    let b = Node::start(sb);

    p.wait_peer_state("A", "Active");
    p.wait_peer_state("B", "Active");

    // NAT works: P sees A's links come from router A's WAN address, never from A's LAN
    // address, and the cone NAT kept A's UDP source port (its listener port).
    let a_udp_port = a.spec.url_of("udp").rsplit(':').next().unwrap().to_string();
    let a_mapped = format!("{}:{a_udp_port}", lab.ra_wan);
    p.wait(&format!("P has A's UDP link from {a_mapped}"), || {
        let links = p.peer("A").unwrap_or_default()["links"].clone();
        links.as_array().is_some_and(|l| {
            l.iter().any(|l| {
                l["transport"] == "udp" && l["state"] == "Active" && l["remote_addr"] == *a_mapped
            })
        })
    });
    let peer_a = p.peer("A").expect("P knows A");
    for l in peer_a["links"].as_array().unwrap() {
        let remote = l["remote_addr"].as_str().unwrap_or_default();
        assert!(
            remote.starts_with(&format!("{}:", lab.ra_wan)),
            "P's link to A must come from router A's WAN address: {peer_a:#}"
        );
    }
    // A learns its public address from P.
    let observed = format!("udp://{a_mapped}");
    a.wait(&format!("A observes itself as {observed}"), || {
        a.status()["observed_addrs"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| *x == *observed))
    });

    // A learns B through P (B's LAN address is unreachable from A) and runs B's script via P.
    a.wait("A routes to B through P", || {
        let b = a.peer("B").unwrap_or_default();
        b["next_hop"] == "P" && b["hops"] == 2
    });
    let r = a.send("B", b"whoami", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(String::from_utf8_lossy(&r.body), "b-here\n");
    assert_eq!(r.header("x-exit-code"), Some("0"));
    assert_eq!(r.header("x-hops"), Some("2"), "A -> P -> B");
    b.wait("B counted the script run", || {
        b.status()["messages"]["scripts_run"].as_u64() == Some(1)
    });

    // Dropping a node kills it inside its namespace (`ip netns exec` execs the node in place).
    drop((a, b, p));
    for ns in lab.namespaces() {
        let out = Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .expect("ip netns pids");
        let pids = String::from_utf8_lossy(&out.stdout);
        assert!(pids.trim().is_empty(), "processes left in {ns}: {pids}");
    }
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
