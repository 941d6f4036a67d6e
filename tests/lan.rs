//! LAN discovery in a lab of network namespaces on one bridge (`common::netns::Bridge`): nodes
//! with no peers configured find each other by their multicast beacons; a node of another
//! network on the same LAN is never dialled and learns nothing; forged and replayed beacons
//! make nobody dial. Needs root (prints SKIPPED otherwise; under CI it must run).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::netns::{lab_available, Bridge};
use common::Node;
use serde_json::Value;

const MEMBERS: usize = 4;

fn lan(node: &Node) -> Value {
    node.status()["lan"].clone()
}

fn dialer_targets(node: &Node) -> BTreeSet<String> {
    node.status()["dialers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn lab_lan_members_find_each_other_and_strangers_learn_nothing() {
    if !lab_available("lab_lan_members_find_each_other_and_strangers_learn_nothing") {
        return;
    }
    let lab = Bridge::new(MEMBERS + 2);
    let members: Vec<Node> = (0..MEMBERS)
        .map(|i| Node::start(lab.spec(&format!("m{i}"), i, &["udp", "tcp"])))
        .collect();
    // x: another network on the same LAN, also announcing itself.
    let mut sx = lab.spec("x", MEMBERS, &["tcp"]);
    sx.network = "other".into();
    sx.secret = "other-secret".into();
    let x = Node::start(sx);

    // No peers configured: every member reaches every other one.
    for m in &members {
        for j in 0..MEMBERS {
            let id = format!("m{j}");
            if id != m.spec.id {
                m.wait_peer_state(&id, "Active");
            }
        }
    }
    for m in &members {
        // The later ones' first beacons, or the earlier ones' answers to ours (sent 1 s after
        // a node they did not know: nobody waits for the 30 s interval).
        m.wait("a beacon from each other member", || {
            lan(m)["beacons_heard"].as_u64().unwrap_or(0) >= MEMBERS as u64 - 1
        });
        // x's beacons reached them and were refused as another network's.
        m.wait("x's beacons refused", || {
            lan(m)["refused"]["foreign"].as_u64().unwrap_or(0) >= 1
        });
        assert!(m.peer("x").is_none(), "{}", m.status());
        let x_ip = &lab.ips[MEMBERS];
        assert!(
            dialer_targets(m).iter().all(|t| !t.contains(x_ip.as_str())),
            "a member dialled x: {:?}",
            dialer_targets(m)
        );
    }
    // x heard them all and learned nothing: no peer, no dial, no link.
    // x started last: the members' first beacons went out before it listened, and they do
    // not answer a beacon they cannot open, so x hears their periodic ones (every 30 s).
    common::wait_until("x to hear the members", Duration::from_secs(45), || {
        lan(&x)["refused"]["foreign"].as_u64().unwrap_or(0) >= MEMBERS as u64
    });
    let sx = x.status();
    assert_eq!(sx["peers"], serde_json::json!([]), "{sx}");
    assert_eq!(sx["lan"]["dials"], 0, "{sx}");
    assert_eq!(sx["lan"]["beacons_heard"], 0, "{sx}");
    assert_eq!(sx["counters"]["links_established"], 0, "{sx}");

    // An attacker on host MEMBERS + 1 (no node, only a socket): captures a real beacon of a
    // member other than the victim (their next periodic one: up to 30 s), then sends it back
    // 500 times, each followed by a forgery of the right size and magic.
    let victim = &members[0];
    let before = lan(victim);
    let dialers_before = dialer_targets(victim);
    let script = r#"
import os, socket, struct
grp, port = "239.255.77.1", 17771
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
r.bind((grp, port))
r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton(grp), socket.inet_aton("0.0.0.0")))
r.settimeout(45)
wanted = set(os.environ["FROM"].split(","))
while True:
    beacon, src = r.recvfrom(2048)
    if src[0] in wanted:
        break
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(500):
    s.sendto(beacon, (grp, port))
    s.sendto(b"MTL1" + os.urandom(len(beacon) - 4), (grp, port))
print(len(beacon), src[0])
"#;
    let others = lab.ips[1..MEMBERS].join(",");
    let from = format!("FROM={others}");
    let out = lab.exec(MEMBERS + 1, &["env", &from, "python3", "-c", script]);
    assert!(
        out.status.success(),
        "attacker script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The victim saw the attack (the kernel's receive buffer and the node's bounded mailbox
    // may drop part of a burst of 1000, counted or not, so not all of it need show up).
    let count = |l: &Value, reason: &str| l["refused"][reason].as_u64().unwrap_or(0);
    victim.wait("forgeries and replays refused", || {
        let l = lan(victim);
        let seen = |l: &Value| {
            count(l, "foreign") + count(l, "replayed") + l["dropped"].as_u64().unwrap_or(0)
        };
        count(&l, "foreign") >= count(&before, "foreign") + 20
            && count(&l, "replayed") >= count(&before, "replayed") + 20
            && seen(&l) >= seen(&before) + 200
    });
    let after = lan(victim);
    eprintln!("victim after the attack: {after}");
    assert_eq!(
        after["dials"], before["dials"],
        "the attack caused dials: {after}"
    );
    assert_eq!(dialer_targets(victim), dialers_before);
    // And the members still talk.
    let r = victim.send("m3", b"still here", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}
