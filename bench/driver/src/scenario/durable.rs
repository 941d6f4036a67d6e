//! Durable messages (`/send` with a `ttl`), on one pair A -> B (TCP link), beside the live rate
//! of the `rate` group:
//!
//! 1. durable 64-byte messages through 64 concurrent keep-alive connections to A with B online
//!    (each written to A's outbox with an fsync, shared by concurrent sends, before it is sent;
//!    answered 200 with B's receipt, B recording each on its disk before it answers);
//! 2. B stopped: durable messages queued into A's outbox (each answered 202 after a 1 ms
//!    `timeout`), msg/s;
//! 3. B started again: the rate at which A's outbox drains (all delivered and receipted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{add_rate, body, note_errors, Ctx, LINK_UP_TIMEOUT};
use crate::load;
use crate::report::key;
use crate::stats::Results;

/// Size of the message body.
const BODY_BYTES: usize = 64;
/// Concurrent keep-alive connections to A's API.
const CONNECTIONS: usize = 64;
/// The messages' ttl, seconds.
const TTL_S: u64 = 600;

/// Messages not final in A's outbox.
fn open_outbox(a: &crate::node::Proc) -> Option<u64> {
    a.status().ok()?["durable"]["outbox_messages"].as_u64()
}

/// Runs the three measurements.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let dir = ctx.subdir("durable")?;
    let (warmup, count) = ctx.pick((1_000, 20_000), (200, 2_000));
    let (a, mut b) = ctx.start_pair(&dir, "tcp", |s| {
        s.set("outbox_max_messages", serde_json::json!(1_000_000))
    })?;
    a.wait_route("b", 1, LINK_UP_TIMEOUT)?;
    let msg = Arc::new(body(BODY_BYTES));
    let bound = Duration::from_secs(120);

    let port = a.http_port();
    let warm = load::concurrent_ttl(
        port,
        "b",
        msg.clone(),
        CONNECTIONS,
        warmup,
        10_000,
        TTL_S,
        bound,
    )?;
    note_errors(res, "durable warm-up", &warm);
    let online = load::concurrent_ttl(
        port,
        "b",
        msg.clone(),
        CONNECTIONS,
        count,
        10_000,
        TTL_S,
        bound,
    )?;
    note_errors(res, "durable 1 hop HTTP", &online);
    add_rate(res, key::DURABLE_ONLINE, &online, "no successful send");

    b.kill();
    let gone = Instant::now();
    while a.peer_state("b") == "Active" {
        if gone.elapsed() > LINK_UP_TIMEOUT {
            bail!("a still sees b Active after it was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let queued = load::concurrent_ttl(port, "b", msg, CONNECTIONS, count, 1, TTL_S, bound)?;
    note_errors(res, "durable queued", &queued);
    add_rate(res, key::DURABLE_QUEUED, &queued, "no message queued");

    let waiting = open_outbox(&a).unwrap_or(0);
    b.relaunch()?;
    let start = Instant::now();
    loop {
        match open_outbox(&a) {
            Some(0) => break,
            _ if start.elapsed() > bound => bail!("the outbox did not drain in {bound:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let took = start.elapsed().as_secs_f64();
    if waiting > 0 {
        res.add(key::DURABLE_DRAIN, waiting as f64 / took);
    } else {
        res.fail(key::DURABLE_DRAIN, "nothing was queued");
    }
    Ok(())
}
