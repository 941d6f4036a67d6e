//! Topics and fan-out in a 20-node mesh (node i dials node 0 and node i-1 over TCP; gossip
//! makes it a full mesh). Nodes 1..19 subscribe to `bench.>` in their config; each keeps one
//! event stream (`GET /events?types=publish`) read by a thread of the driver.
//!
//! Measured, one at a time (closed loop):
//! - publish latency: from sending `POST /publish` (topic `bench.tick`) at node 0 until the
//!   last of the 19 subscribers' streams shows the `publish` event (p50, p99 over the
//!   publishes; a publish that does not reach all within 5 s counts as lost);
//! - fan-out latency: `POST /send` with `target: *` and a plain body at node 0 until its
//!   answer with all 20 results (p50, p99).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::Ctx;
use crate::http;
use crate::node::{free_ports, Proc, Spec};
use crate::report::key;
use crate::stats::{p50_p90_p99, Results};

/// Nodes in the mesh.
const NODES: usize = 20;
/// Longest a publish may take to reach every subscriber.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a node's event stream in a thread: (publication id, when seen) for each `publish`.
fn follow(port: u16, node: usize, tx: mpsc::Sender<(String, usize, Instant)>) -> Result<()> {
    let mut stream = TcpStream::connect(http::loopback(port))?;
    stream.write_all(
        b"GET /events?types=publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
    )?;
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        for line in reader.lines() {
            let Ok(line) = line else { return };
            // Chunked framing puts sizes on lines of their own; only data lines matter.
            if let Some(json) = line.strip_prefix("data: ") {
                if let Ok(v) = serde_json::from_str::<Value>(json) {
                    if let Some(id) = v["message_id"].as_str() {
                        if tx.send((id.to_string(), node, Instant::now())).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

/// Runs the topics measurement.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let publishes: usize = ctx.pick(200, 20);
    let fanouts: usize = ctx.pick(50, 5);
    let dir = ctx.subdir("topics")?;
    let ports = free_ports(2 * NODES)?;
    let specs: Vec<Spec> = (0..NODES)
        .map(|i| {
            let mut s = Spec {
                id: format!("t{i:02}"),
                listeners: vec![("tcp", ports[2 * i])],
                peers: Vec::new(),
                http_port: Some(ports[2 * i + 1]),
                extra: Default::default(),
            };
            if i > 0 {
                s = s.set("subscriptions", serde_json::json!(["bench.>"]));
            }
            s.set("publish_rate_per_topic", 0.into())
        })
        .collect();
    let mut nodes: Vec<Proc> = Vec::with_capacity(NODES);
    for (i, spec) in specs.iter().enumerate() {
        let mut spec = spec.clone();
        if i >= 1 {
            spec.peers.push(specs[0].url("tcp"));
        }
        if i >= 2 {
            spec.peers.push(specs[i - 1].url("tcp"));
        }
        nodes.push(ctx.start(&dir, spec)?);
    }
    // Every subscription known at node 0, every node reachable.
    let start = Instant::now();
    loop {
        let s = nodes[0].status()?;
        let subs = s["topics"]["subscribers"]
            .as_object()
            .map_or(0, |m| m.len());
        let routed = s["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| !p["hops"].is_null()).count());
        if subs == NODES - 1 && routed == NODES - 1 {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("topics: after 60 s node 0 knows {subs} subscribers and routes to {routed}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (tx, rx) = mpsc::channel();
    for (i, node) in nodes.iter().enumerate().skip(1) {
        follow(node.http_port(), i, tx.clone())?;
    }
    std::thread::sleep(Duration::from_millis(500));

    let port = nodes[0].http_port();
    let mut conn = http::Conn::connect(port, Duration::from_secs(10))?;
    let mut latencies = Vec::with_capacity(publishes);
    let mut lost = 0;
    let mut early: HashMap<String, usize> = HashMap::new();
    for k in 0..publishes {
        let body = format!("tick {k}");
        let head = format!(
            "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\ntopic: bench.tick\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let sent = Instant::now();
        let code = conn.request(head.as_bytes(), body.as_bytes())?;
        if code != 200 {
            bail!(
                "publish answered {code}: {}",
                String::from_utf8_lossy(conn.body())
            );
        }
        let answer: Value = serde_json::from_slice(conn.body()).context("publish answer")?;
        let id = answer["id"].as_str().unwrap_or_default().to_string();
        let mut seen = early.remove(&id).unwrap_or(0);
        let mut last = sent;
        while seen < NODES - 1 {
            let left = REACH_TIMEOUT.saturating_sub(sent.elapsed());
            match rx.recv_timeout(left) {
                Ok((got, _, at)) if got == id => {
                    seen += 1;
                    last = at;
                }
                Ok((got, _, _)) => *early.entry(got).or_default() += 1,
                Err(_) => break,
            }
        }
        if seen == NODES - 1 {
            latencies.push(last.duration_since(sent).as_secs_f64() * 1e6);
        } else {
            lost += 1;
        }
    }
    let (p50, _, p99) = p50_p90_p99(&mut latencies);
    res.add(key::PUBLISH_P50, p50);
    res.add(key::PUBLISH_P99, p99);
    if lost > 0 {
        res.note(format!(
            "topics: {lost} of {publishes} publishes did not reach all 19 subscribers within 5 s"
        ));
    }

    let mut fan = Vec::with_capacity(fanouts);
    for _ in 0..fanouts {
        let body = b"hello fleet";
        let head = http::send_head("*", body.len(), 5_000);
        let sent = Instant::now();
        let code = conn.request(&head, body)?;
        let took = sent.elapsed();
        let answer: Value = serde_json::from_slice(conn.body()).context("fan-out answer")?;
        let delivered = answer["results"].as_array().map_or(0, |r| {
            r.iter().filter(|r| r["status"] == "delivered").count()
        });
        if code != 200 || delivered != NODES {
            bail!("fan-out answered {code} with {delivered} of {NODES} delivered");
        }
        fan.push(took.as_secs_f64() * 1e6);
    }
    let (p50, _, p99) = p50_p90_p99(&mut fan);
    res.add(key::FANOUT_P50, p50);
    res.add(key::FANOUT_P99, p99);
    Ok(())
}
