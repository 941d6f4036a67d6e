//! Process-level tests of messaging: `POST /send` through the mesh, scripts, relay, errors.

mod common;

use std::collections::HashSet;

use common::{Node, Spec};
use serde_json::json;

/// Two linked nodes; b has scripts.
fn pair(scripts: &[(&str, &str)]) -> (Node, Node) {
    pair_with(scripts, |_| {})
}

/// Two linked nodes; b has scripts and whatever `tune` sets.
fn pair_with(scripts: &[(&str, &str)], tune: impl FnOnce(&mut Spec)) -> (Node, Node) {
    let mut sb = Spec::new("b", "tcp");
    sb.scripts = scripts
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tune(&mut sb);
    let b = Node::start(sb);
    let mut sa = Spec::new("a", "tcp");
    sa.peers = vec![b.spec.url()];
    let a = Node::start(sa);
    a.wait("a has a route to b", || {
        a.peer("b").is_some_and(|p| p["hops"] == 1)
    });
    b.wait("b has a route to a", || {
        b.peer("a").is_some_and(|p| p["hops"] == 1)
    });
    (a, b)
}

/// `/send` runs the named script on the target node (its marker file appears in the target's
/// own directory, not the sender's), and stdout and the exit code come back.
#[test]
fn send_runs_a_script_on_the_target_and_returns_its_output() {
    let (a, b) = pair(&[(
        "mark",
        "echo ran > marker; echo \"from $MSGTIER_SOURCE\"; exit 3",
    )]);
    // Scripts run in the node's working directory: the test starts nodes in their temp dir.
    let r = a.send("b", b"mark", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(String::from_utf8_lossy(&r.body), "from a\n");
    assert_eq!(r.header("x-exit-code"), Some("3"));
    assert_eq!(r.header("x-hops"), Some("1"));
    assert!(r.header("x-message-id").is_some());
    assert!(b.dir.path().join("marker").exists(), "script ran on b");
    assert_eq!(
        b.status()["scripts"]["running"],
        0,
        "the finished script is no longer counted"
    );
    assert!(
        !a.dir.path().join("marker").exists(),
        "script did not run on a"
    );
}

/// A body that names no script is a plain message: JSON receipt with the hop count.
#[test]
fn plain_message_gets_a_json_receipt() {
    let (a, b) = pair(&[]);
    let r = a.send("b", b"hello there", &[]);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["delivered"], true);
    assert_eq!(v["hops"], 1);
    assert!(v["id"].is_string());
    b.wait("b counted the delivery", || {
        b.status()["messages"]["delivered"].as_u64() == Some(1)
    });
    // The target keeps it for GET /messages.
    let (code, body) = common::http(b.http_port, "GET", "/messages", &[], b"").unwrap();
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["messages"][0]["source"], "a");
    assert_eq!(list["messages"][0]["body"], "hello there");
    assert_eq!(list["messages"][0]["id"], v["id"]);
}

/// Sending to oneself goes through seal, open and dispatch like any other target.
#[test]
fn loopback_send_runs_the_local_script() {
    let mut s = Spec::new("solo", "tcp");
    s.scripts = vec![("who".into(), "echo me".into())];
    let n = Node::start(s);
    let r = n.send("solo", b"  who\n", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(String::from_utf8_lossy(&r.body), "me\n");
    assert_eq!(r.header("x-hops"), Some("0"));
    let r = n.send("solo", b"just a note", &[]);
    assert_eq!(r.json()["delivered"], true);
}

/// Errors: unknown target 404, missing target 400, oversized body 413, all JSON.
#[test]
fn send_errors_are_json() {
    let mut s = Spec::new("solo", "tcp");
    s.extra = json!({"max_body_bytes": 1000});
    let n = Node::start(s);
    let r = n.send("nobody", b"hi", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "peer_not_found");
    let r = common::http_full(n.http_port, "POST", "/send", &[], b"hi").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "missing_target");
    let r = n.send("solo", &[b'x'; 1001], &[]);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    let r = n.send("solo", b"hi", &[("timeout", "soon")]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_timeout");
}

/// A script running past `script_timeout_ms` is killed with its process group and reported.
#[test]
fn script_timeout_kills_the_script() {
    let (a, b) = pair_with(
        &[("hang", "sleep 30 & echo $! > child.pid; sleep 30")],
        |sb| sb.extra = json!({"script_timeout_ms": 500}),
    );
    let r = a.send("b", b"hang", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-timed-out"), Some("true"));
    let pid: i32 = std::fs::read_to_string(b.dir.path().join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only checks whether the process exists.
    b.wait("the script's background child is gone", || unsafe {
        libc::kill(pid, 0) != 0
    });
}

/// A node that dials only what it is configured with.
fn isolated(id: &str) -> Spec {
    let mut s = Spec::new(id, "tcp");
    s.auto_connect = false;
    s
}

/// Nodes 1 - 2 - 3 in a line (no auto-connect), 3 running `script`; returns once 1 routes to
/// 3 through 2.
fn line(script: (&str, &str)) -> (Node, Node, Node) {
    let mut s3 = isolated("3");
    s3.scripts = vec![(script.0.into(), script.1.into())];
    let n3 = Node::start(s3);
    let mut s2 = isolated("2");
    s2.peers = vec![n3.spec.url()];
    let n2 = Node::start(s2);
    let mut s1 = isolated("1");
    s1.peers = vec![n2.spec.url()];
    let n1 = Node::start(s1);
    n1.wait("1 routes to 3 via 2", || {
        n1.peer("3")
            .is_some_and(|p| p["hops"] == 2 && p["next_hop"] == "2")
    });
    (n1, n2, n3)
}

/// 1 - 2 - 3 in a line (no auto-connect): 1 reaches 3 through 2 with x-hops 2; without 2 the
/// send times out (504) within its timeout; with a 4th node as a second path, traffic moves there.
#[test]
fn relayed_send_and_failover() {
    let (n1, mut n2, n3) = line(("where", "echo at 3"));
    let r = n1.send("3", b"where", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(String::from_utf8_lossy(&r.body), "at 3\n");
    assert_eq!(r.header("x-hops"), Some("2"));
    n2.wait("2 counted the relayed message", || {
        n2.status()["relayed"]["test"]["messages"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });

    n2.kill();
    n1.wait("1 lost its route to 3", || {
        n1.peer("3").is_none_or(|p| p["hops"].is_null())
    });
    let started = std::time::Instant::now();
    let r = n1.send("3", b"where", &[("timeout", "2000")]);
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // A second path: 4 links to 1 and 3.
    let mut s4 = isolated("4");
    s4.peers = vec![n1.spec.url(), n3.spec.url()];
    let _n4 = Node::start(s4);
    n1.wait("1 routes to 3 via 4", || {
        n1.peer("3")
            .is_some_and(|p| p["hops"] == 2 && p["next_hop"] == "4")
    });
    let r = n1.send("3", b"where", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-hops"), Some("2"));
}

/// 1000 concurrent plain messages across two nodes: all answered, none lost or duplicated.
#[test]
fn thousand_concurrent_sends_are_all_answered_once() {
    let (a, b) = pair(&[]);
    let port = a.http_port;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(1000));
    let threads: Vec<_> = (0..1000)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let body = format!("message {i}");
                barrier.wait();
                let r =
                    common::http_full(port, "POST", "/send", &[("target", "b")], body.as_bytes())
                        .expect("send");
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                r.json()["id"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let ids: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        1000,
        "ids are unique"
    );
    b.wait("b delivered exactly 1000", || {
        b.status()["messages"]["delivered"].as_u64() == Some(1000)
    });
}

/// A request in flight when its relay dies is re-sent over the path that appears next, and the
/// target answers it from its reply cache: the script runs once and the sender gets the answer.
#[test]
fn in_flight_request_survives_the_loss_of_its_relay() {
    let (n1, mut n2, n3) = line(("slow", "echo run >> runs; sleep 2; echo done"));
    let port = n1.http_port;
    let request = std::thread::spawn(move || {
        common::http_full(
            port,
            "POST",
            "/send",
            &[("target", "3"), ("timeout", "20000")],
            b"slow",
        )
        .expect("send")
    });
    n3.wait("the script started on 3", || {
        n3.dir.path().join("runs").exists()
    });
    // The relay dies while the script runs, so 3 has no way to answer when it finishes; only
    // then does a second path come up. The answer can arrive only if 1 re-sends the request
    // and 3 answers the duplicate from its reply cache.
    n2.kill();
    n3.wait("3 could not answer", || {
        n3.log_all().contains("cannot answer")
    });
    let mut s4 = isolated("4");
    s4.peers = vec![n1.spec.url(), n3.spec.url()];
    let _n4 = Node::start(s4);
    let r = request.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(String::from_utf8_lossy(&r.body), "done\n");
    let runs = std::fs::read_to_string(n3.dir.path().join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the script ran once");
}

/// Sends a raw HTTP/1.1 request with exactly the given header lines; answers the status code
/// and the body.
fn raw_request(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let req = format!(
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// From a web page's side: a name rebound to this machine (`Host: attacker.example`) gets 421
/// and a cross-site `Origin` 403, as JSON, for `/send` and `/config` alike, and the script never
/// runs; the same request from a tool (no `Origin`, an IP or localhost `Host`) still works.
#[test]
fn a_web_page_cannot_drive_the_api_by_rebinding_or_cross_site() {
    let (a, b) = pair(&[("mark", "echo ran > marker")]);
    let port = a.http_port;
    let send = |host: &str, extra: &str| {
        let head = format!("POST /send HTTP/1.1\r\nHost: {host}\r\ntarget: b{extra}");
        raw_request(port, &head, b"mark")
    };
    let (code, body) = send("attacker.example:9001", "");
    assert_eq!(code, 421, "{body}");
    assert!(body.contains("\"misdirected_host\""), "{body}");
    let (code, body) = send("127.0.0.1", "\r\nOrigin: http://attacker.example");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"foreign_origin\""), "{body}");
    let (code, _) = raw_request(
        port,
        "GET /config HTTP/1.1\r\nHost: rebound.attacker.example",
        b"",
    );
    assert_eq!(code, 421);
    assert!(
        !b.dir.path().join("marker").exists(),
        "nothing ran for the refused requests"
    );
    let (code, body) = send("localhost", "");
    assert_eq!(code, 200, "{body}");
    assert!(
        b.dir.path().join("marker").exists(),
        "the tool's request ran the script"
    );
}
