//! Relay goodput through a public node under its budget: P (network `public`,
//! `foreign_relay_bps_limit` 200 KB/s for network `bench`), A and B (network `bench`) each
//! linked only to P over TCP (`auto_connect` and punching off, so every message crosses P).
//! 24 closed-loop senders post 8 KB bodies A -> B (timeout 3 s; a 429 `relay_over_budget` makes
//! a sender wait 1 s, the least `retry-after` says). After 2 s of ramp, B's delivered body bytes
//! per second of B's own uptime clock, over a window, divided by the budget.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::{json, Value};

use super::{body, Ctx, LINK_UP_TIMEOUT};
use crate::http::{send_head, Conn};
use crate::node::{Proc, Spec};
use crate::report::key;
use crate::stats::Results;

/// The public node's budget for the members' network, bytes per second.
const BUDGET: u64 = 200_000;
/// Body of each message.
const BODY_BYTES: usize = 8_000;
/// Closed-loop senders.
const SENDERS: usize = 24;

/// Runs the relay goodput measurement.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let dir = ctx.subdir("relay")?;
    let p_spec = Spec::new("p", "tcp")?
        .set("network", json!("public"))
        .set("secret", json!("public-secret"))
        .set("relay_network_whitelist", json!(["bench"]))
        .set("foreign_relay_bps_limit", json!(BUDGET))
        .set("heartbeat_interval_ms", json!(1_000))
        .set("peer_timeout_ms", json!(5_000));
    let member = |id: &str| -> Result<Spec> {
        let mut s = Spec::new(id, "tcp")?
            .set("auto_connect", json!(false))
            .set("hole_punching", json!(false))
            .set("heartbeat_interval_ms", json!(1_000))
            .set("peer_timeout_ms", json!(5_000));
        s.peers = vec![p_spec.url("tcp")];
        Ok(s)
    };
    let p = ctx.start(&dir, p_spec.clone())?;
    let b = ctx.start(&dir, member("b")?)?;
    let a = ctx.start(&dir, member("a")?)?;
    a.wait_route("b", 2, LINK_UP_TIMEOUT)?;

    let stop = Arc::new(AtomicBool::new(false));
    let port = a.http_port();
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let msg = body(BODY_BYTES);
                let head = send_head("b", msg.len(), 3_000);
                let Ok(mut c) = Conn::connect(port, Duration::from_secs(10)) else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(429) = c.request(&head, &msg) {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let window = ctx.pick(Duration::from_secs(8), Duration::from_secs(3));
    let first = sample(&b, &p);
    std::thread::sleep(window);
    let last = sample(&b, &p);
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.join();
    }
    let (first, last) = (first?, last?);
    let arrived = (last.delivered - first.delivered) as f64 * BODY_BYTES as f64
        / ((last.b_uptime_ms - first.b_uptime_ms) as f64 / 1000.0);
    let relayed = (last.relayed - first.relayed) as f64
        / ((last.p_uptime_ms - first.p_uptime_ms) as f64 / 1000.0);
    res.note(format!(
        "relay goodput: {arrived:.0} B/s of bodies arrived at b, p relayed {relayed:.0} B/s \
         (envelopes and receipts) against a budget of {BUDGET} B/s; {} bytes over it dropped",
        last.dropped - first.dropped
    ));
    res.add(key::RELAY_GOODPUT, arrived / BUDGET as f64);
    Ok(())
}

struct Sample {
    b_uptime_ms: u64,
    delivered: u64,
    p_uptime_ms: u64,
    relayed: u64,
    dropped: u64,
}

/// Both nodes' counters, each with its own uptime (so a slow HTTP answer does not skew rates).
fn sample(b: &Proc, p: &Proc) -> Result<Sample> {
    let bs = b.status()?;
    let ps = p.status()?;
    let n = |v: &Value, what: &str| v.as_u64().ok_or_else(|| anyhow!("no counter {what}"));
    let home = &ps["foreign"]["bench"];
    Ok(Sample {
        b_uptime_ms: n(&bs["uptime_ms"], "b uptime_ms")?,
        delivered: n(&bs["messages"]["delivered"], "b messages.delivered")?,
        p_uptime_ms: n(&ps["uptime_ms"], "p uptime_ms")?,
        relayed: n(&home["bytes_relayed"], "p foreign.bench.bytes_relayed")?,
        dropped: n(&home["bytes_dropped"], "p foreign.bench.bytes_dropped")?,
    })
}
