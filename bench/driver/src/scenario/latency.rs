//! Round trip of `POST /send` (plain 64-byte message, no script), sequential on one keep-alive
//! connection: 1 hop (A -> B over TCP) and 2 hops (A -> B -> C over TCP, `auto_connect: false`
//! so A and C never link directly and B relays).
//!
//! Timed from writing the request to reading the whole `{"delivered": true, ..}` answer, so it
//! includes HTTP on A, sealing, both links, opening at the target and the sealed receipt back.
//!
//! Each is measured twice: where the scheduler puts the processes, then with every thread of
//! every node pinned to CPU 0 and the timing client on CPU 1. On this VM a wake-up that lands
//! on an idle vCPU costs tens of microseconds more than one on a busy vCPU (the ceiling's two
//! ping-pong rows show it), and each extra hop adds such wake-ups; the pinned figures show
//! what the nodes cost without them.

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

/// The figures of one round-trip measurement; `p90` only where the table shows one.
struct Keys {
    p50: &'static str,
    p90: Option<&'static str>,
    p99: &'static str,
}

/// One round trip to measure: `/send` at `from` to `target` (node `to`), `hops` away.
struct Trip<'a> {
    from: &'a Proc,
    to: &'a Proc,
    target: &'static str,
    hops: u64,
}

/// Runs both the 1-hop and the 2-hop measurement.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let dir = ctx.subdir("latency")?;
    let counts = ctx.pick((500, 5_000), (100, 500));

    // 1 hop.
    let (a, b) = ctx.start_pair(&dir, "tcp", |s| s)?;
    a.wait_route("b", 1, LINK_UP_TIMEOUT)?;
    let trip = Trip {
        from: &a,
        to: &b,
        target: "b",
        hops: 1,
    };
    let keys = Keys {
        p50: key::RTT1_P50,
        p90: Some(key::RTT1_P90),
        p99: key::RTT1_P99,
    };
    let pinned_keys = Keys {
        p50: key::RTT1_PIN_P50,
        p90: None,
        p99: key::RTT1_PIN_P99,
    };
    unpinned_then_pinned(res, &trip, &[&a, &b], keys, pinned_keys, counts)?;
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
    let trip = Trip {
        from: &a,
        to: &c,
        target: "c2",
        hops: 2,
    };
    let keys = Keys {
        p50: key::RTT2_P50,
        p90: Some(key::RTT2_P90),
        p99: key::RTT2_P99,
    };
    let pinned_keys = Keys {
        p50: key::RTT2_PIN_P50,
        p90: None,
        p99: key::RTT2_PIN_P99,
    };
    unpinned_then_pinned(res, &trip, &[&a, &b, &c], keys, pinned_keys, counts)?;
    drop(b);
    Ok(())
}

/// Measures `trip` where the scheduler puts everything, then with `nodes` pinned (see
/// [`pinned`]).
fn unpinned_then_pinned(
    res: &mut Results,
    trip: &Trip,
    nodes: &[&Proc],
    keys: Keys,
    pinned_keys: Keys,
    counts: (usize, usize),
) -> Result<()> {
    measure(res, trip, keys, counts)?;
    pinned(nodes, || measure(res, trip, pinned_keys, counts))
}

/// Runs `f` on a thread pinned to CPU 1 while every thread of `nodes` is pinned to CPU 0, then
/// lets the nodes run anywhere again. On a machine with one CPU it runs `f` unpinned.
fn pinned(nodes: &[&Proc], f: impl FnOnce() -> Result<()> + std::marker::Send) -> Result<()> {
    let all: Vec<usize> = (0..available_cpus()).collect();
    for n in nodes {
        set_affinity(n.pid(), &[0]);
    }
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            set_affinity(0, &[1]);
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the pinned measurement panicked")))
    });
    for n in nodes {
        set_affinity(n.pid(), &all);
    }
    out
}

/// CPUs this process may run on (at least 1).
fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets the CPU affinity of every thread of process `pid` (0: the calling thread only); best
/// effort, a thread that ends meanwhile is skipped.
fn set_affinity(pid: u32, cpus: &[usize]) {
    let pin = |tid: libc::pid_t| {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET only writes inside it, and
        // sched_setaffinity reads it and changes only the scheduling of thread `tid`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cpus {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    };
    if pid == 0 {
        pin(0);
        return;
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) {
                pin(tid);
            }
        }
    }
}

/// Sequential round trips of `trip` (warm-up, then timed), recorded under `keys`.
fn measure(
    res: &mut Results,
    trip: &Trip,
    keys: Keys,
    (warmup, count): (usize, usize),
) -> Result<()> {
    let hops = trip.hops;
    let msg = body(BODY_BYTES);
    let check = |b: &[u8]| -> Result<()> {
        let v: Value = serde_json::from_slice(b)?;
        if v["delivered"] != true || v["hops"].as_u64() != Some(hops) {
            bail!("expected a receipt over {hops} hop(s), got {v}");
        }
        Ok(())
    };
    let bound = Duration::from_secs(120);
    let (mut rtts, out) = load::sequential(
        trip.from.http_port(),
        trip.target,
        &msg,
        warmup,
        count,
        bound,
        check,
    )?;
    let what = format!("rtt {hops} hop(s)");
    note_errors(res, &what, &out);
    if rtts.is_empty() {
        for k in [Some(keys.p50), keys.p90, Some(keys.p99)]
            .into_iter()
            .flatten()
        {
            res.fail(k, "no successful send");
        }
        return Ok(());
    }
    let (p50, p90, p99) = p50_p90_p99(&mut rtts);
    res.add(keys.p50, p50);
    if let Some(k) = keys.p90 {
        res.add(k, p90);
    }
    res.add(keys.p99, p99);
    check_delivered(res, &what, trip.to, out.ok);
    Ok(())
}
