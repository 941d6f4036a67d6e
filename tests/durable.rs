//! Durable messages with real processes: `/send` with a ttl, the outbox across SIGKILLs of the
//! sender and the target, exactly-once scripts, the durable inbox, and the API's errors.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{wait_until, Node, Spec};
use serde_json::{json, Value};

/// How long a test waits for delivery after the target is back.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);

/// A node with a script `count` that appends its message id to `runs.txt` in its directory
/// (and `slow`, which does the same and then sleeps).
fn counting_spec(id: &str, dir: &std::path::Path) -> Spec {
    let runs = dir.join(format!("{id}-runs.txt"));
    let mut spec = Spec::new(id, "tcp");
    spec.scripts = vec![
        (
            "count".into(),
            format!(
                "echo \"$MSGTIER_MESSAGE_ID\" >> {}; echo counted",
                runs.display()
            ),
        ),
        (
            "slow".into(),
            format!(
                "echo \"$MSGTIER_MESSAGE_ID\" >> {}; sleep 30",
                runs.display()
            ),
        ),
    ];
    spec
}

fn runs(dir: &std::path::Path, id: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{id}-runs.txt")))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Messages not final in a node's outbox, from `/status`.
fn open_outbox(node: &Node) -> u64 {
    node.status()["durable"]["outbox_messages"]
        .as_u64()
        .expect("durable.outbox_messages")
}

fn message(node: &Node, id: &str) -> Value {
    node.http("GET", &format!("/messages/{id}"), &[], b"")
        .expect("GET /messages/{id}")
        .json()
}

/// The sender is killed (SIGKILL) with 500 messages queued for an offline target, restarted,
/// and the target started: every message is delivered, every script ran once, every plain
/// message is in the inbox once, and the inbox survives a restart of the target.
#[test]
fn the_sender_killed_with_500_queued_messages_delivers_each_once() {
    let scratch = tempfile::tempdir().unwrap();
    let mut c = Node::start(counting_spec("c", scratch.path()));
    let mut a_spec = Spec::new("a", "tcp");
    a_spec.peers = vec![c.spec.url()];
    let mut a = Node::start(a_spec);
    a.wait_peer_state("c", "Active");
    c.kill();
    a.wait_peer_state("c", "Disconnected");

    // 500 queued messages over 8 connections: half run `count`, half are plain.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let a = &a;
                s.spawn(move || {
                    let mut ids = Vec::new();
                    for i in (t..500u32).step_by(8) {
                        let body = if i.is_multiple_of(2) {
                            "count".to_string()
                        } else {
                            format!("plain {i}")
                        };
                        let r = a.send("c", body.as_bytes(), &[("ttl", "600"), ("timeout", "50")]);
                        assert_eq!(r.status, 202, "{}", r.text());
                        let j = r.json();
                        assert_eq!(j["status"], "queued", "{j}");
                        assert!(j["expires_unix_ms"].as_u64().unwrap() > 0);
                        ids.push(j["id"].as_str().unwrap().to_string());
                    }
                    ids
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(ids.len(), 500);
    assert_eq!(open_outbox(&a), 500);
    let q = message(&a, &ids[0]);
    assert_eq!(q["status"], "queued", "{q}");
    assert_eq!(q["target"], "c");

    a.kill(); // SIGKILL: nothing is flushed on the way out
    a.restart();
    assert_eq!(open_outbox(&a), 500, "all 500 came back from disk");
    c.restart();
    wait_until("all 500 delivered", DELIVERY_WAIT, || open_outbox(&a) == 0);

    let ran = runs(scratch.path(), "c");
    assert_eq!(ran.len(), 250, "each script ran once");
    assert_eq!(ran.iter().collect::<BTreeSet<_>>().len(), 250);
    let inbox = c
        .http("GET", "/messages?limit=10000", &[], b"")
        .unwrap()
        .json();
    let bodies: BTreeSet<String> = inbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(bodies.len(), 250, "each plain message once in the inbox");
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 250);
    for id in &ids[..4] {
        let m = message(&a, id);
        assert_eq!(m["status"], "delivered", "{m}");
        let kind = m["outcome"]["type"].as_str().unwrap();
        assert!(
            kind == "delivered" || (kind == "script" && m["outcome"]["stdout"] == "counted\n"),
            "{m}"
        );
    }
    // The inbox is durable: a restart of the target keeps it, and the filters work.
    c.restart();
    let after = c
        .http("GET", "/messages?limit=10000&from=a", &[], b"")
        .unwrap()
        .json();
    assert_eq!(after["messages"].as_array().unwrap().len(), 250);
    let none = c
        .http("GET", "/messages?from=nobody", &[], b"")
        .unwrap()
        .json();
    assert!(none["messages"].as_array().unwrap().is_empty());
    let two = c.http("GET", "/messages?limit=2", &[], b"").unwrap().json();
    assert_eq!(two["messages"].as_array().unwrap().len(), 2);
}

/// The target is killed while the script runs; after its restart the message is answered from
/// its record ("interrupted") and the script is never run again.
#[test]
fn a_target_killed_while_its_script_runs_never_runs_it_again() {
    let scratch = tempfile::tempdir().unwrap();
    let mut c = Node::start(counting_spec("c", scratch.path()));
    let mut a_spec = Spec::new("a", "tcp");
    a_spec.peers = vec![c.spec.url()];
    let a = Node::start(a_spec);
    a.wait_peer_state("c", "Active");
    let r = a.send("c", b"slow", &[("ttl", "600"), ("timeout", "200")]);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_until("the script started", Duration::from_secs(10), || {
        runs(scratch.path(), "c").len() == 1
    });
    c.kill();
    c.restart();
    wait_until("the outcome came back", DELIVERY_WAIT, || {
        message(&a, &id)["status"] == "delivered"
    });
    let m = message(&a, &id);
    assert_eq!(m["outcome"]["interrupted"], true, "{m}");
    assert_eq!(m["outcome"]["type"], "script", "{m}");
    // Every re-delivery came before the receipt (the sender stops once delivered): the
    // script ran once.
    assert_eq!(runs(scratch.path(), "c").len(), 1);
}

/// Bad `ttl` headers are 400s, an unknown message is 404, a cancelled message is 200 then 409,
/// a full outbox is 507, and a store that is not a store stops the node with its name.
#[test]
fn the_api_refuses_what_it_cannot_do_with_clear_errors() {
    let mut spec = Spec::new("a", "tcp");
    spec.extra = json!({"outbox_max_messages": 2, "max_ttl_s": 100});
    let mut a = Node::start(spec);
    for bad in ["0", "101", "soon", "-1"] {
        let r = a.send("z", b"x", &[("ttl", bad)]);
        assert_eq!(r.status, 400, "ttl {bad}: {}", r.text());
        assert_eq!(r.json()["error"], "bad_ttl");
    }
    // A target never heard of is accepted with a ttl (it may appear later), and says so.
    let first = a.send("z", b"x", &[("ttl", "100"), ("timeout", "50")]);
    assert_eq!(first.status, 202, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_string();
    let m = message(&a, &id);
    assert!(m["last_error"].as_str().unwrap().contains("known"), "{m}");
    let second = a.send("z", b"y", &[("ttl", "100"), ("timeout", "50")]);
    assert_eq!(second.status, 202);
    let full = a.send("z", b"w", &[("ttl", "100"), ("timeout", "50")]);
    assert_eq!(full.status, 507, "{}", full.text());
    assert_eq!(full.json()["error"], "outbox_full");
    let page = a.http("GET", "/outbox?limit=1", &[], b"").unwrap().json();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    let rest = a
        .http(
            "GET",
            &format!("/outbox?after={}", page["next_after"].as_str().unwrap()),
            &[],
            b"",
        )
        .unwrap()
        .json();
    assert_eq!(rest["messages"].as_array().unwrap().len(), 1);

    let cancel = a
        .http("DELETE", &format!("/messages/{id}"), &[], b"")
        .unwrap();
    assert_eq!(cancel.status, 200, "{}", cancel.text());
    assert_eq!(cancel.json()["status"], "cancelled");
    let again = a
        .http("DELETE", &format!("/messages/{id}"), &[], b"")
        .unwrap();
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(
        a.http("GET", "/api/messages/12345", &[], b"")
            .unwrap()
            .status,
        404
    );
    assert_eq!(a.http("GET", "/messages/x1", &[], b"").unwrap().status, 400);
    // With one cancelled there is room again.
    let room = a.send("z", b"v", &[("ttl", "100"), ("timeout", "50")]);
    assert_eq!(room.status, 202);
    let room_id = room.json()["id"].as_str().unwrap().to_string();
    let cancel = a.http("DELETE", &format!("/messages/{room_id}"), &[], b"");
    assert_eq!(cancel.unwrap().status, 200);
    // A store that cannot write: 503, and nothing is accepted (test-only fault).
    let fault = a
        .http("POST", "/debug/fault", &[], b"store-fail 1")
        .unwrap();
    assert_eq!(fault.status, 200, "{}", fault.text());
    let refused = a.send("y", b"v", &[("ttl", "100"), ("timeout", "50")]);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"], "store_unavailable");
    let open = a.http("GET", "/outbox", &[], b"").unwrap().json();
    assert!(
        open["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["target"] != "y"),
        "{open}"
    );

    // A damaged store: the node refuses to start, naming the file, and leaves it as it was.
    a.kill();
    let store = a.dir.path().join("data").join("store.redb");
    let mut bytes = std::fs::read(&store).unwrap();
    for b in bytes.iter_mut().take(4096) {
        *b = 0x5a;
    }
    std::fs::write(&store, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_msgtier"))
        .arg(a.config_path())
        .output()
        .expect("run msgtier");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.redb"), "{err}");
    assert_eq!(
        std::fs::read(&store).unwrap(),
        bytes,
        "the damaged file is left as it was"
    );
}

/// A script with an allow list refuses other senders (403 `forbidden`, live and with a ttl,
/// where the message ends `failed`); bodies over the target's limit are 413 `too_large`; a
/// sender over its rate gets 429 `rate_limited`; `/config` shows the allow list.
#[test]
fn allow_lists_and_limits_refuse_with_clear_errors() {
    let mut c_spec = Spec::new("c", "tcp");
    c_spec.extra = json!({
        "scripts": {
            "open": "echo open",
            "secret": {"command": "echo secret", "allow": ["b"]},
        },
        "max_incoming_bytes": 100,
        "max_messages_per_sender_per_s": 5,
    });
    let c = Node::start(c_spec);
    let mut a_spec = Spec::new("a", "tcp");
    a_spec.peers = vec![c.spec.url()];
    let a = Node::start(a_spec);
    a.wait_peer_state("c", "Active");
    let config = c.http("GET", "/config", &[], b"").unwrap().json();
    assert_eq!(
        config["scripts"]["secret"]["allow"],
        json!(["b"]),
        "{config}"
    );
    assert_eq!(config["scripts"]["open"], "echo open");

    let denied = a.send("c", b"secret", &[]);
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.json()["error"], "forbidden");
    let durable = a.send("c", b"secret", &[("ttl", "60")]);
    assert_eq!(durable.status, 403, "{}", durable.text());
    let list = a.http("GET", "/outbox", &[], b"").unwrap().json();
    assert!(
        list["messages"].as_array().unwrap().is_empty(),
        "final: {list}"
    );
    let big = a.send("c", &[b'x'; 200], &[]);
    assert_eq!(big.status, 413, "{}", big.text());
    assert_eq!(big.json()["error"], "too_large");
    assert_eq!(a.send("c", b"open", &[]).text(), "open\n");
    // Five a second with a second of burst: twenty at once cannot all pass.
    let statuses: Vec<u16> = (0..20).map(|_| a.send("c", b"hi", &[]).status).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    let limited = statuses.iter().position(|s| *s == 429).unwrap();
    assert!(limited >= 3, "the burst passes first: {statuses:?}");
    assert!(c.status()["messages"]["refused"].as_u64().unwrap() >= 3);
}

/// A carrier takes a message for an offline target; the sender is killed; the target comes
/// back and runs it once, handing the receipt to the carrier as the sender is gone; the target
/// is killed; the sender restarts and learns the outcome from the carrier.
#[test]
fn a_carrier_delivers_for_a_killed_sender_and_brings_the_outcome_back() {
    let scratch = tempfile::tempdir().unwrap();
    let mut k_spec = Spec::new("k", "tcp");
    k_spec.extra = json!({"carrier": {"quota_bytes": 1048576}});
    let k = Node::start(k_spec);
    // a and c reach each other only through k (no direct link from gossip).
    let mut c_spec = counting_spec("c", scratch.path());
    c_spec.peers = vec![k.spec.url()];
    c_spec.auto_connect = false;
    let mut c = Node::start(c_spec);
    let mut a_spec = Spec::new("a", "tcp");
    a_spec.peers = vec![k.spec.url()];
    a_spec.auto_connect = false;
    let mut a = Node::start(a_spec);
    a.wait("a routes to c through k", || {
        a.peer("c").is_some_and(|p| p["next_hop"] == "k")
    });
    a.wait("a knows k carries", || {
        a.status()["durable"]["carriers"] == json!(["k"])
    });
    c.kill();
    a.wait("c unreachable", || {
        a.peer("c").is_none_or(|p| p["next_hop"].is_null())
    });
    let r = a.send("c", b"count", &[("ttl", "600"), ("timeout", "200")]);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    a.wait("in the carrier's custody", || {
        let m = message(&a, &id);
        m["status"] == "in_custody" && m["custody"] == "k"
    });
    assert_eq!(k.status()["durable"]["carried_messages"], 1);
    a.kill();
    c.restart();
    wait_until("the script ran", DELIVERY_WAIT, || {
        runs(scratch.path(), "c").len() == 1
    });
    k.wait("k holds the receipt for a", || {
        let d = &k.status()["durable"];
        d["carried_messages"] == 1 && d["carried_by_origin"]["c"].as_u64().is_some()
    });
    c.kill();
    a.restart();
    wait_until("a learned the outcome", DELIVERY_WAIT, || {
        message(&a, &id)["status"] == "delivered"
    });
    let m = message(&a, &id);
    assert_eq!(m["outcome"]["stdout"], "counted\n", "{m}");
    k.wait("k holds nothing more", || {
        k.status()["durable"]["carried_messages"] == 0
    });
    assert_eq!(runs(scratch.path(), "c").len(), 1);
}

/// The target's receipt is lost on the way (test-only fault): the sender re-sends, the target
/// answers from its record, and the script ran once.
#[test]
fn a_lost_receipt_is_answered_from_the_record_without_running_again() {
    let scratch = tempfile::tempdir().unwrap();
    let c = Node::start(counting_spec("c", scratch.path()));
    let mut a_spec = Spec::new("a", "tcp");
    a_spec.peers = vec![c.spec.url()];
    let a = Node::start(a_spec);
    a.wait_peer_state("c", "Active");
    let fault = c.http("POST", "/debug/fault", &[], b"drop-data 1").unwrap();
    assert_eq!(fault.status, 200, "{}", fault.text());
    let r = a.send("c", b"count", &[("ttl", "600"), ("timeout", "300")]);
    assert_eq!(r.status, 202, "the receipt was lost: {}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_until("delivered on a re-send", DELIVERY_WAIT, || {
        message(&a, &id)["status"] == "delivered"
    });
    let m = message(&a, &id);
    assert!(m["attempts"].as_u64().unwrap() >= 2, "{m}");
    assert_eq!(m["outcome"]["stdout"], "counted\n");
    assert_eq!(runs(scratch.path(), "c").len(), 1, "the script ran once");
}

/// A message whose target never appears expires at its ttl, and says so.
#[test]
fn a_message_for_a_target_that_never_appears_expires_at_its_ttl() {
    let a = Node::start(Spec::new("a", "tcp"));
    let r = a.send("nobody", b"hello", &[("ttl", "1"), ("timeout", "50")]);
    assert_eq!(r.status, 202, "{}", r.text());
    let j = r.json();
    let id = j["id"].as_str().unwrap().to_string();
    wait_until("expired", Duration::from_secs(10), || {
        message(&a, &id)["status"] == "expired"
    });
    let m = message(&a, &id);
    assert!(
        m["expires_unix_ms"].as_u64() == j["expires_unix_ms"].as_u64(),
        "{m}"
    );
    assert_eq!(open_outbox(&a), 0);
    let cancel = a
        .http("DELETE", &format!("/messages/{id}"), &[], b"")
        .unwrap();
    assert_eq!(cancel.status, 409, "expired is final: {}", cancel.text());
}
