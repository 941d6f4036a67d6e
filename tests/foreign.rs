//! Public nodes on loopback: foreign-network admission, isolation, relaying, control-only mode
//! and hole punching between two members of one network linked only to a public node. The NAT
//! lab (`tests/natlab.rs`) repeats the essentials behind real NATs.

mod common;

use common::{Node, Spec};
use serde_json::{json, Value};

/// A member of network `home` that knows only `public`'s UDP listener.
fn home(id: &str, public: &Node, punching: bool) -> Spec {
    let mut s = Spec::new(id, "udp");
    s.network = "home".into();
    s.secret = "home-secret".into();
    s.peers = vec![public.spec.url_of("udp")];
    s.auto_connect = false;
    s.extra = json!({"hole_punching": punching});
    s
}

/// A public node of network `public` with `extra` config (whitelist etc.).
fn public(id: &str, extra: Value) -> Node {
    let mut s = Spec::new(id, "udp");
    s.listeners.push(("tcp".into(), common::free_port()));
    s.network = "public".into();
    s.secret = "public-secret".into();
    s.scripts = vec![("own".into(), "echo ran > p_marker; echo p".into())];
    s.extra = extra;
    Node::start(s)
}

fn foreign(node: &Node, network: &str) -> Value {
    node.status()["foreign"][network].clone()
}

#[test]
fn public_node_relays_for_a_whitelisted_network_and_keeps_it_apart() {
    let p = public("p", json!({"relay_network_whitelist": "ho* other"}));
    // A member of p's own network.
    let mut sq = Spec::new("q", "tcp");
    sq.network = "public".into();
    sq.secret = "public-secret".into();
    sq.peers = vec![p.spec.url_of("tcp")];
    let q = Node::start(sq);
    let mut sb = home("b", &p, false);
    sb.scripts = vec![("whoami".into(), "echo b-here".into())];
    let b = Node::start(sb);
    let a = Node::start(home("a", &p, false));
    b.wait_peer_state("p", "Active");

    a.wait("a routes to b through p", || {
        a.peer("b")
            .is_some_and(|x| x["hops"] == 2 && x["next_hop"] == "p")
    });
    let r = a.send("b", b"whoami", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(String::from_utf8_lossy(&r.body), "b-here\n");
    assert_eq!(r.header("x-hops"), Some("2"));

    let f = foreign(&p, "home");
    assert_eq!(f["members"], json!(["a", "b"]), "{f}");
    assert_eq!(f["control_only"], false);
    assert!(f["bytes_relayed"].as_u64().unwrap() > 0, "{f}");
    assert!(p.status()["relayed"]["home"]["messages"].as_u64().unwrap() >= 2);

    // a sees p as a public relay, and nothing of p's own network.
    let pa = a.peer("p").expect("p on a's status");
    assert_eq!(pa["public_relay"], true, "{pa}");
    assert!(a.peer("q").is_none(), "a must not see p's own member q");
    assert_eq!(a.status()["public_relays"], json!(["p"]));
    // p's own members never see home's, and p lists them only under `foreign`.
    q.wait_peer_state("p", "Active");
    assert!(
        q.peer("a").is_none() && q.peer("b").is_none(),
        "{}",
        q.status()
    );
    assert!(
        p.peer("a").is_none() && p.peer("b").is_none(),
        "{}",
        p.status()
    );

    // GET /topology keeps the networks apart the same way: p draws its own network and home
    // separately; a's graph is home's, with p as a relay and no trace of q.
    let ids = |g: &Value| -> Vec<String> {
        g["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect()
    };
    let edges = |g: &Value| -> Vec<(String, String)> {
        g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["a"].as_str().unwrap().into(),
                    e["b"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    let tp = p.http("GET", "/topology", &[], b"").unwrap().json();
    let nets = tp["networks"].as_array().unwrap();
    assert_eq!(nets.len(), 2, "{tp}");
    assert_eq!(
        (&nets[0]["network"], &nets[0]["home"]),
        (&json!("public"), &json!(true))
    );
    assert_eq!(ids(&nets[0]), ["p", "q"], "{tp}");
    assert_eq!(
        (&nets[1]["network"], &nets[1]["home"]),
        (&json!("home"), &json!(false))
    );
    assert_eq!(ids(&nets[1]), ["a", "b", "p"], "{tp}");
    assert_eq!(edges(&nets[1]), [pair("a", "p"), pair("b", "p")], "{tp}");
    let topology = || a.http("GET", "/topology", &[], b"").unwrap().json();
    a.wait("a's RTT to p in its topology", || {
        topology()["networks"][0]["edges"][0]["rtt_us"].is_u64()
    });
    let ta = topology();
    let nets = ta["networks"].as_array().unwrap();
    assert_eq!(nets.len(), 1, "{ta}");
    assert_eq!(ids(&nets[0]), ["a", "b", "p"], "{ta}");
    assert_eq!(edges(&nets[0]), [pair("a", "p"), pair("b", "p")], "{ta}");
    let relay: Vec<bool> = nets[0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["relay"].as_bool().unwrap())
        .collect();
    assert_eq!(relay, [false, false, true], "{ta}");
    assert!(
        !ta.to_string().contains("\"q\""),
        "a's topology shows p's member q: {ta}"
    );
    let ap = &nets[0]["edges"][0];
    assert_eq!(ap["transports"], json!(["udp"]), "{ta}");
    assert!(
        nets[0]["edges"][1]["transports"] == json!([]),
        "b-p is not a's link: {ta}"
    );

    // A foreign member cannot use p's scripts nor address p's members.
    let r = a.send("p", b"own", &[]);
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "not_a_member");
    assert!(
        !p.dir.path().join("p_marker").exists(),
        "p's script must not run"
    );
    let r = a.send("q", b"own", &[]);
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn a_network_outside_the_whitelist_is_refused() {
    let p = public("p", json!({"relay_network_whitelist": ["home"]}));
    let mut sc = home("c", &p, false);
    sc.network = "guest".into();
    let c = Node::start(sc);
    p.wait("p refuses guest", || {
        p.counter("links_refused", "foreign") >= 1
    });
    c.wait("c was told it is foreign", || {
        c.counter("links_refused_by_peer", "foreign") >= 1
    });
    assert_ne!(c.peer_state("p"), "Active");
    assert!(p.status()["foreign"].get("guest").is_none());
}

#[test]
fn relay_all_peer_rpc_carries_control_but_drops_data() {
    let p = public("p", json!({"relay_all_peer_rpc": true}));
    let b = Node::start(home("b", &p, false));
    let a = Node::start(home("a", &p, false));
    // Route updates flow: a learns a path to b through p.
    a.wait("a routes to b through p", || {
        a.peer("b").is_some_and(|x| x["hops"] == 2)
    });
    let r = a.send("b", b"hello", &[("timeout", "1000")]);
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    let f = foreign(&p, "home");
    assert_eq!(f["control_only"], true, "{f}");
    assert!(f["messages_dropped"].as_u64().unwrap() >= 1, "{f}");
    assert_eq!(f["bytes_relayed"], 0, "{f}");
    assert_eq!(b.status()["messages"]["delivered"], 0);
}

#[test]
fn members_punch_a_direct_path_and_the_public_node_stops_carrying_their_data() {
    let p = public("p", json!({"relay_network_whitelist": "*"}));
    let b = Node::start(home("b", &p, true));
    let a = Node::start(home("a", &p, true));
    a.wait("a has a direct link to b", || {
        a.peer("b").is_some_and(|x| x["hops"] == 1)
    });
    let punch = &a.status()["punch"]["b"];
    assert_eq!(punch["state"], "open", "{punch}");
    assert_eq!(punch["relay"], "p", "{punch}");
    assert!(
        p.status()["foreign"]["home"]["punches_coordinated"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let before = foreign(&p, "home")["bytes_relayed"].as_u64().unwrap();
    for _ in 0..20 {
        let r = a.send("b", b"direct", &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["hops"], 1);
    }
    let after = foreign(&p, "home")["bytes_relayed"].as_u64().unwrap();
    assert_eq!(before, after, "p carried data after the punch");
    assert_eq!(b.status()["messages"]["delivered"], 20);
}

#[test]
fn without_punching_traffic_stays_on_the_public_node() {
    let p = public("p", json!({"relay_network_whitelist": "home"}));
    let b = Node::start(home("b", &p, false));
    let a = Node::start(home("a", &p, false));
    a.wait("a routes to b through p", || {
        a.peer("b").is_some_and(|x| x["hops"] == 2)
    });
    assert!(b.status()["punch"].as_object().unwrap().is_empty());
    for _ in 0..5 {
        let r = a.send("b", b"via p", &[]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["hops"], 2);
    }
    assert!(a.status()["punch"].as_object().unwrap().is_empty());
    assert!(foreign(&p, "home")["messages_relayed"].as_u64().unwrap() >= 10);
}

/// Punching works through a relay of one's own network too: a and b know only c.
#[test]
fn members_punch_through_a_relay_of_their_own_network() {
    let mut sc = Spec::new("c", "udp");
    sc.auto_connect = false;
    let c = Node::start(sc);
    let member = |id: &str| {
        let mut s = Spec::new(id, "udp");
        s.peers = vec![c.spec.url()];
        s.auto_connect = false;
        s
    };
    let b = Node::start(member("b"));
    let a = Node::start(member("a"));
    a.wait("a punched a direct link to b", || {
        a.peer("b").is_some_and(|x| x["hops"] == 1)
    });
    assert_eq!(a.status()["punch"]["b"]["relay"], "c");
    assert_eq!(b.status()["punch"]["a"]["state"], "open");
    let r = a.send("b", b"hi", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["hops"], 1);
}

/// Over a public node's relay budget, a `/send` is told at once: 429 `relay_over_budget` with a
/// `retry-after` header, instead of a 504 after its timeout; messages within the budget (and
/// those the one-second queue holds) are delivered.
#[test]
fn over_the_relay_budget_a_send_gets_429_with_retry_after() {
    let p = public(
        "p",
        json!({"relay_network_whitelist": "home", "foreign_relay_bps_limit": 20_000}),
    );
    let _b = Node::start(home("b", &p, false));
    let a = Node::start(home("a", &p, false));
    a.wait("a routes to b through p", || {
        a.peer("b").is_some_and(|x| x["hops"] == 2)
    });
    let port = a.http_port;
    let started = std::time::Instant::now();
    let senders: Vec<_> = (0..12)
        .map(|_| {
            std::thread::spawn(move || {
                let body = vec![b'x'; 8_000];
                common::http_full(
                    port,
                    "POST",
                    "/send",
                    &[("target", "b"), ("timeout", "10000")],
                    &body,
                )
                .expect("send")
            })
        })
        .collect();
    let answers: Vec<common::Response> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    let over: Vec<&common::Response> = answers.iter().filter(|r| r.status == 429).collect();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert!(
        !over.is_empty(),
        "12 x 8 KB is over a 20 KB/s budget and its queue: {statuses:?} {}",
        answers[0].text()
    );
    assert!(
        ok >= 2,
        "what the burst and the queue hold is delivered: {ok}"
    );
    assert_eq!(over.len() + ok, answers.len(), "no other outcome");
    let r = over[0];
    assert_eq!(r.json()["error"], "relay_over_budget", "{}", r.text());
    let retry: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // The refusals came back at once, not after the 10 s timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    assert!(foreign(&p, "home")["messages_over_budget"].as_u64() >= Some(1));
}
