//! Topics on loopback: `POST /publish` reaches exactly the nodes whose subscriptions match
//! (`*` and `>`, behind relays, in a line and in a ring), once each, never anyone else; a
//! relay cannot open what it carries; an event stream's `?topics=` subscribes its node while
//! it is open; limits answer with their errors; a copy with a ttl reaches a subscriber that
//! was offline.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Node, Response, Spec};
use serde_json::{json, Value};

fn publish(node: &Node, topic: &str, body: &[u8], extra: &[(&str, &str)]) -> Response {
    let mut headers = vec![("topic", topic)];
    headers.extend_from_slice(extra);
    node.http("POST", "/publish", &headers, body)
        .expect("publish")
}

/// A node that dials only its configured peers, subscribing to `subs`.
fn spec(id: &str, peers: &[&Node], subs: &[&str]) -> Spec {
    let mut s = Spec::new(id, "tcp");
    s.auto_connect = false;
    s.peers = peers.iter().map(|n| n.spec.url()).collect();
    s.extra = json!({ "subscriptions": subs });
    s
}

/// What `node` knows of everyone's subscriptions (`/status` `topics.subscribers`).
fn known_subscriptions(node: &Node) -> BTreeMap<String, Vec<String>> {
    serde_json::from_value(node.status()["topics"]["subscribers"].clone()).unwrap()
}

fn wait_subscriptions(node: &Node, want: &[(&str, &[&str])]) {
    let want: BTreeMap<String, Vec<String>> = want
        .iter()
        .map(|(n, f)| (n.to_string(), f.iter().map(|s| s.to_string()).collect()))
        .collect();
    node.wait(
        &format!("{} to know subscriptions {want:?}", node.spec.id),
        || known_subscriptions(node) == want,
    );
}

/// The publishes in `node`'s inbox: (topic, source, body).
fn inbox_publishes(node: &Node) -> Vec<(String, String, String)> {
    let v = node
        .http("GET", "/messages?limit=1000", &[], b"")
        .unwrap()
        .json();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["topic"].is_string())
        .map(|m| {
            (
                m["topic"].as_str().unwrap().to_string(),
                m["source"].as_str().unwrap().to_string(),
                m["body"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn received(node: &Node) -> u64 {
    node.status()["topics"]["received"].as_u64().unwrap()
}

fn nodes_of(v: &Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_publish_reaches_exactly_the_matching_subscribers_along_a_line() {
    // a - b - c - d - e: d subscribes to nothing and relays for e.
    let a = Node::start(spec("a", &[], &[]));
    let b = Node::start(spec("b", &[&a], &["alerts.>"]));
    let c = Node::start(spec("c", &[&b], &["build.*.done"]));
    let d = Node::start(spec("d", &[&c], &[]));
    let e = Node::start(spec("e", &[&d], &["alerts.disk", "build.>"]));
    a.wait("a to route to e through 4 hops", || {
        a.peer("e").is_some_and(|p| p["hops"] == 4)
    });
    wait_subscriptions(
        &a,
        &[
            ("b", &["alerts.>"]),
            ("c", &["build.*.done"]),
            ("e", &["alerts.disk", "build.>"]),
        ],
    );
    let relayed_before = d.status()["messages"]["delivered"].as_u64().unwrap();

    let cases: &[(&str, &str, &[&str])] = &[
        ("alerts.disk", "disk full (secret-0001)", &["b", "e"]),
        ("build.web.done", "web built (secret-0002)", &["c", "e"]),
        ("build.web.x.done", "deep build (secret-0003)", &["e"]),
        ("alerts", "bare (secret-0004)", &[]),
        ("other.topic", "nobody (secret-0005)", &[]),
    ];
    for (topic, body, want) in cases {
        let r = publish(&a, topic, body.as_bytes(), &[]);
        assert_eq!(r.status, 200, "{topic}: {}", r.text());
        let v = r.json();
        assert_eq!(v["subscribers"], want.len(), "{topic}: {v}");
        assert_eq!(nodes_of(&v), *want, "{topic}: {v}");
        assert!(v["id"].as_str().unwrap().parse::<u64>().is_ok(), "{v}");
    }
    let expect = |node: &Node, want: &[(&str, &str)]| {
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(t, b)| (t.to_string(), "a".to_string(), b.to_string()))
            .collect();
        node.wait(
            &format!("{}'s inbox to hold {want:?}", node.spec.id),
            || inbox_publishes(node) == want,
        );
    };
    expect(&b, &[("alerts.disk", "disk full (secret-0001)")]);
    expect(&c, &[("build.web.done", "web built (secret-0002)")]);
    expect(
        &e,
        &[
            ("alerts.disk", "disk full (secret-0001)"),
            ("build.web.done", "web built (secret-0002)"),
            ("build.web.x.done", "deep build (secret-0003)"),
        ],
    );
    // Once each: nothing more comes (copies answered, none re-sent as a second delivery).
    a.wait("every live copy answered", || {
        a.status()["topics"]["copies_delivered"] == 5
    });
    assert_eq!((received(&b), received(&c), received(&e)), (1, 1, 3));
    for n in [&b, &c, &e] {
        assert_eq!(n.status()["topics"]["duplicates"], 0, "{}", n.spec.id);
    }
    // Never a non-subscriber: the publisher and the relay hold nothing.
    assert!(inbox_publishes(&a).is_empty());
    assert!(inbox_publishes(&d).is_empty());
    assert_eq!(received(&d), 0);
    assert_eq!(d.status()["messages"]["delivered"], relayed_before);
    // The relays carried sealed copies: none of them ever had a body in the clear (their
    // debug logs name envelopes, never bodies; a relay that opened one would have logged
    // the publish line).
    for relay in [&b, &c, &d] {
        let log = relay.log_all();
        for (_, body, _) in cases {
            assert!(
                !log.contains(body) || inbox_publishes(relay).iter().any(|p| p.2 == *body),
                "{} saw {body:?} in the clear",
                relay.spec.id
            );
        }
    }
    // The inbox can be asked by topic filter.
    let v = e
        .http("GET", "/messages?topic=build.%3E", &[], b"")
        .unwrap()
        .json();
    assert_eq!(v["messages"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn a_ring_delivers_each_publish_once_per_subscriber() {
    // a - b - c - d - e - a: two paths to most nodes; each subscriber still gets one copy.
    let a = Node::start(spec("a", &[], &["ring.*"]));
    let b = Node::start(spec("b", &[&a], &[]));
    let c = Node::start(spec("c", &[&b], &["ring.>"]));
    let d = Node::start(spec("d", &[&c], &["ring.x"]));
    let mut se = spec("e", &[&d], &["*.x"]);
    se.peers.push(a.spec.url());
    let e = Node::start(se);
    wait_subscriptions(
        &b,
        &[
            ("a", &["ring.*"]),
            ("c", &["ring.>"]),
            ("d", &["ring.x"]),
            ("e", &["*.x"]),
        ],
    );
    for i in 0..5 {
        let r = publish(&b, "ring.x", format!("round {i}").as_bytes(), &[]);
        assert_eq!(nodes_of(&r.json()), ["a", "c", "d", "e"], "{}", r.text());
    }
    let r = publish(&b, "ring.y.z", b"deep", &[]);
    assert_eq!(nodes_of(&r.json()), ["c"], "{}", r.text());
    for (node, n) in [(&a, 5), (&c, 6), (&d, 5), (&e, 5)] {
        node.wait(&format!("{} to receive {n}", node.spec.id), || {
            received(node) == n
        });
    }
    b.wait("every copy answered", || {
        b.status()["topics"]["copies_delivered"] == 21
    });
    for node in [&a, &c, &d, &e] {
        assert_eq!(node.status()["topics"]["duplicates"], 0);
    }
    assert_eq!(inbox_publishes(&b), vec![]);
    assert_eq!(inbox_publishes(&d).len(), 5);
}

#[test]
fn an_event_stream_subscribes_its_node_while_it_is_open() {
    let a = Node::start(spec("a", &[], &[]));
    let b = Node::start(spec("b", &[&a], &[]));
    let c = Node::start(spec("c", &[&b], &["logs.>"]));
    wait_subscriptions(&a, &[("c", &["logs.>"])]);

    // Bad filters are refused before anything is subscribed.
    let r = c.http("GET", "/events?topics=a..b", &[], b"").unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "bad_request");

    let mut stream = c.events("/events?topics=chat.*,alerts.%3E", &[]);
    assert_eq!(stream.status, 200);
    wait_subscriptions(&a, &[("c", &["alerts.>", "chat.*", "logs.>"])]);
    let r = publish(&a, "chat.room", b"hello room", &[]);
    assert_eq!(nodes_of(&r.json()), ["c"], "{}", r.text());
    publish(&a, "logs.app", b"a log line", &[]);
    let got = stream.wait_for("the chat publish", Duration::from_secs(10), |v| {
        v["type"] == "publish"
    });
    assert_eq!(got["topic"], "chat.room", "{got}");
    assert_eq!(got["source"], "a", "{got}");
    assert_eq!(got["body"], "hello room", "{got}");
    assert!(got["hops"].is_u64(), "{got}");
    assert_eq!(got["message_id"], r.json()["id"], "{got}");
    // The config's logs.> reached the node (its inbox) but not this stream, which asked for
    // chat.* and alerts.> only; the next publish on the stream is the alert.
    c.wait("c to take the log line", || received(&c) == 2);
    publish(&a, "alerts.cpu", b"hot", &[]);
    let next = stream.wait_for("the alert", Duration::from_secs(10), |v| {
        v["type"] == "publish"
    });
    assert_eq!(next["topic"], "alerts.cpu", "{next}");

    // Closing the stream unsubscribes the node: the advert says so, and a publish no longer
    // goes to it.
    drop(stream);
    wait_subscriptions(&a, &[("c", &["logs.>"])]);
    let r = publish(&a, "chat.room", b"anyone?", &[]);
    assert_eq!(r.json()["subscribers"], 0, "{}", r.text());
    assert_eq!(c.status()["topics"]["subscriptions"], json!(["logs.>"]));
}

#[test]
fn publish_limits_answer_with_their_errors() {
    let mut sa = spec("a", &[], &["t.*"]);
    sa.extra = json!({
        "subscriptions": ["t.*"],
        "publish_max_bytes": 100,
        "publish_rate_per_topic": 2,
    });
    let a = Node::start(sa);
    let r = a.http("POST", "/publish", &[], b"x").unwrap();
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("missing_topic"))
    );
    for bad in ["a..b", "a.*", "a.>", "$sys.x", "has space"] {
        let r = publish(&a, bad, b"x", &[]);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"], "bad_topic", "{bad}");
    }
    let r = publish(&a, "t.big", &[b'x'; 101], &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "too_large");
    let r = publish(&a, "t.a", b"x", &[("ttl", "0")]);
    assert_eq!(r.json()["error"], "bad_ttl", "{}", r.text());

    // Two per second per topic, with a second of burst: the third at once is refused, with
    // when to come back; another topic has its own budget.
    let codes: Vec<u16> = (0..3)
        .map(|_| publish(&a, "t.a", b"x", &[]).status)
        .collect();
    assert_eq!(codes, [200, 200, 429]);
    let r = publish(&a, "t.a", b"x", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    assert!(r.header("retry-after").is_some(), "{:?}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("t.a"));
    assert_eq!(publish(&a, "t.b", b"x", &[]).status, 200);
    // The node is its own subscriber: what was taken was delivered here, once each.
    a.wait("a to take its own three", || received(&a) == 3);
}

#[test]
fn a_subscriber_that_was_offline_gets_a_publish_with_a_ttl() {
    let a = Node::start(spec("a", &[], &[]));
    let mut b = Node::start(spec("b", &[&a], &["jobs.>"]));
    wait_subscriptions(&a, &[("b", &["jobs.>"])]);
    b.kill();
    a.wait_peer_state("b", "Disconnected");

    let r = publish(&a, "jobs.nightly", b"run the backup", &[("ttl", "120")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(nodes_of(&v), ["b"], "{v}");
    let id = v["messages"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(v["messages"][0]["node"], "b", "{v}");
    let status = a
        .http("GET", &format!("/messages/{id}"), &[], b"")
        .unwrap()
        .json();
    assert_eq!(status["status"], "queued", "{status}");

    b.restart();
    b.wait("b to take the publish it missed", || {
        inbox_publishes(&b)
            == [(
                "jobs.nightly".to_string(),
                "a".to_string(),
                "run the backup".to_string(),
            )]
    });
    a.wait("the copy's receipt", || {
        a.http("GET", &format!("/messages/{id}"), &[], b"")
            .unwrap()
            .json()["status"]
            == "delivered"
    });
    assert_eq!(received(&b), 1);
}

#[test]
fn a_config_reload_changes_what_a_node_subscribes_to() {
    let a = Node::start(spec("a", &[], &[]));
    let b = Node::start(spec("b", &[&a], &["old.*"]));
    wait_subscriptions(&a, &[("b", &["old.*"])]);
    let path = b.config_path();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["subscriptions"] = json!(["new.>"]);
    std::fs::write(&path, config.to_string()).unwrap();
    let r = b.http("POST", "/config/reload", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    wait_subscriptions(&a, &[("b", &["new.>"])]);
    assert_eq!(publish(&a, "old.x", b"x", &[]).json()["subscribers"], 0);
    assert_eq!(nodes_of(&publish(&a, "new.x.y", b"x", &[]).json()), ["b"]);
    // A bad filter in the file is refused by name, and the running set stays.
    config["subscriptions"] = json!(["bad..filter"]);
    std::fs::write(&path, config.to_string()).unwrap();
    let r = b.http("POST", "/config/reload", &[], b"").unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("subscriptions[0]"), "{}", r.text());
    assert_eq!(b.status()["topics"]["subscriptions"], json!(["new.>"]));
}
