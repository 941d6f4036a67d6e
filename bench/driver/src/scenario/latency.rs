//! Round trip of `POST /send` (plain 64-byte message, no script), sequential on one keep-alive
//! connection: 1 hop (A -> B over TCP) and 2 hops (A -> B -> C over TCP, `auto_connect: false`
//! so A and C never link directly and B relays).
//!
//! Timed from writing the request to reading the whole `{"delivered": true, ..}` answer, so it
//! includes HTTP on A, sealing, both links, opening at the target and the sealed receipt back.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{body, check_delivered, note_errors, Ctx, LINK_UP_TIMEOUT};
use crate::load;
use crate::node::{Proc, Spec};
use crate::report::key;
use crate::stats::{p50_p90_p99, Results};

/// Size of the message body.
const BODY_BYTES: usize = 64;

/// Runs both the 1-hop and the 2-hop measurement.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let dir = ctx.subdir("latency")?;
    let (warmup, count) = ctx.pick((500, 5_000), (100, 500));
    let bound = Duration::from_secs(120);

    // 1 hop.
    let (a, b) = ctx.start_pair(&dir, "tcp", |s| s)?;
    a.wait_route("b", 1, LINK_UP_TIMEOUT)?;
    measure(
        res,
        &a,
        &b,
        "b",
        1,
        [key::RTT1_P50, key::RTT1_P90, key::RTT1_P99],
        warmup,
        count,
        bound,
    )?;
    drop((a, b));

    // 2 hops: a - b - c in a line.
    let line = |s: Spec| s.set("auto_connect", json!(false));
    let b_spec = line(Spec::new("b2", "tcp")?);
    let mut a_spec = line(Spec::new("a2", "tcp")?);
    let mut c_spec = line(Spec::new("c2", "tcp")?);
    a_spec.peers = vec![b_spec.url("tcp")];
    c_spec.peers = vec![b_spec.url("tcp")];
    let b = ctx.start(&dir, b_spec)?;
    let a = ctx.start(&dir, a_spec)?;
    let c = ctx.start(&dir, c_spec)?;
    a.wait_route("c2", 2, LINK_UP_TIMEOUT)?;
    c.wait_route("a2", 2, LINK_UP_TIMEOUT)?;
    measure(
        res,
        &a,
        &c,
        "c2",
        2,
        [key::RTT2_P50, key::RTT2_P90, key::RTT2_P99],
        warmup,
        count,
        bound,
    )?;
    drop(b);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measure(
    res: &mut Results,
    from: &Proc,
    to: &Proc,
    target: &str,
    hops: u64,
    keys: [&'static str; 3],
    warmup: usize,
    count: usize,
    bound: Duration,
) -> Result<()> {
    let msg = body(BODY_BYTES);
    let check = |b: &[u8]| -> Result<()> {
        let v: Value = serde_json::from_slice(b)?;
        if v["delivered"] != true || v["hops"].as_u64() != Some(hops) {
            bail!("expected a receipt over {hops} hop(s), got {v}");
        }
        Ok(())
    };
    let (mut rtts, out) =
        load::sequential(from.http_port(), target, &msg, warmup, count, bound, check)?;
    let what = format!("rtt {hops} hop(s)");
    note_errors(res, &what, &out);
    if rtts.is_empty() {
        for k in keys {
            res.fail(k, "no successful send");
        }
        return Ok(());
    }
    let (p50, p90, p99) = p50_p90_p99(&mut rtts);
    res.add(keys[0], p50);
    res.add(keys[1], p90);
    res.add(keys[2], p99);
    check_delivered(res, &what, to, out.ok);
    Ok(())
}
