//! Fan-out: `POST /send` with `target: *` or a list of ids runs the same script on every target
//! and answers with every result, a node that does not answer as a timeout; and the client's
//! `msgtier send '*' ...` prints a block per node.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{Node, Spec};
use serde_json::Value;

/// Five nodes (a, the hub, and b..e dialling it; gossip links the rest), each with a script
/// `mark` that appends a line to a marker file in its directory and says who it is.
fn five() -> Vec<Node> {
    let mark = |id: &str| {
        vec![(
            "mark".to_string(),
            format!("echo ran >> fanout_marker; echo from {id}"),
        )]
    };
    let mut spec_a = Spec::new("a", "tcp");
    spec_a.scripts = mark("a");
    let a = Node::start(spec_a);
    let mut nodes = vec![a];
    for id in ["b", "c", "d", "e"] {
        let mut s = Spec::new(id, "tcp");
        s.scripts = mark(id);
        s.peers = vec![nodes[0].spec.url()];
        nodes.push(Node::start(s));
    }
    for id in ["b", "c", "d", "e"] {
        nodes[0].wait_peer_state(id, "Active");
    }
    nodes
}

fn runs(node: &Node) -> usize {
    std::fs::read_to_string(node.dir.path().join("fanout_marker")).map_or(0, |s| s.lines().count())
}

fn by_node(v: &Value) -> Vec<(String, String)> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_fanout_runs_the_script_on_every_node_and_reports_the_one_that_is_gone() {
    let mut nodes = five();
    nodes[4].kill();
    let a = &nodes[0];
    a.wait_peer_state("e", "Disconnected");

    let started = Instant::now();
    let r = a.send("*", b"mark", &[("timeout", "3000")]);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["targets"], 5, "{v}");
    let statuses = by_node(&v);
    let expected: Vec<(String, String)> = [
        ("a", "ran"),
        ("b", "ran"),
        ("c", "ran"),
        ("d", "ran"),
        ("e", "timeout"),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect();
    assert_eq!(statuses, expected, "{v}");
    // The answer came when the timeout ran out (3 s), not the default 10 s.
    assert!(took.as_secs() < 9, "the fan-out took {took:?}");
    for r in v["results"].as_array().unwrap() {
        if r["status"] == "ran" {
            let node = r["node"].as_str().unwrap();
            assert_eq!(r["exit_code"], 0, "{r}");
            assert_eq!(r["stdout"], format!("from {node}\n"), "{r}");
            assert_eq!(r["truncated"], false, "{r}");
            assert!(r["id"].is_string() && r["hops"].is_u64(), "{r}");
        } else {
            assert_eq!(r["error"], "timeout", "{r}");
        }
    }
    // Each live node ran its script exactly once.
    for node in &nodes[..4] {
        assert_eq!(runs(node), 1, "node {}", node.spec.id);
    }

    // A list: each named node, an unknown one failed on its own, duplicates once.
    let r = a.send("b, c,b,nobody", b"mark", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let statuses = by_node(&v);
    assert_eq!(
        statuses,
        [
            ("b".to_string(), "ran".to_string()),
            ("c".to_string(), "ran".to_string()),
            ("nobody".to_string(), "failed".to_string()),
        ],
        "{v}"
    );
    assert_eq!(v["results"][2]["error"], "peer_not_found", "{v}");
    assert_eq!(
        (runs(&nodes[1]), runs(&nodes[2]), runs(&nodes[3])),
        (2, 2, 1)
    );

    // Plain messages fan out too, each with its receipt.
    let r = a.send("b,c", b"a note for two", &[]);
    let v = r.json();
    assert_eq!(
        by_node(&v),
        [
            ("b".to_string(), "delivered".to_string()),
            ("c".to_string(), "delivered".to_string()),
        ],
        "{v}"
    );

    // Malformed lists are refused whole, with nothing sent.
    for bad in ["*,b", "b,,c", "b,"] {
        let r = a.send(bad, b"mark", &[]);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"], "missing_target", "{bad}");
    }
    let many: Vec<String> = (0..1025).map(|i| format!("n{i}")).collect();
    let r = a.send(&many.join(","), b"mark", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_targets");
    assert_eq!((runs(&nodes[1]), runs(&nodes[2])), (2, 2), "nothing ran");

    // The client prints one block per node and exits with the worst outcome (69: e is gone).
    let out = Command::new(env!("CARGO_BIN_EXE_msgtier"))
        .args(["send", "*", "mark", "--timeout", "3000"])
        .env("MSGTIER_API", format!("127.0.0.1:{}", a.http_port))
        .env_remove("MSGTIER_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(69), "{stdout}");
    for id in ["a", "b", "c", "d"] {
        assert!(
            stdout.contains(&format!("== {id}: exit 0\nfrom {id}\n")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("== e: timeout: "), "{stdout}");
}
