//! The rate the node itself moves without HTTP: node A runs IN this process (an
//! `actix::System` on its own thread, `msgtier::node::start` with a config loaded through
//! `msgtier::config::parse`), node B is a normal process linked over TCP, and 1000 tasks keep
//! `msgtier::actors::relay::Send` messages in flight into A's RelayActor, each awaiting its
//! `Delivery` (B's sealed receipt) before sending the next.
//!
//! Reported as "in-process Send into the RelayActor, 1000 in flight". Everything of A (relay,
//! links, sealing) shares the driver's process, and B is a separate process, as with HTTP.
//!
//! Then, with the same A and B, the round trip with ONE `Send` in flight: 500 warm-up, then
//! 5000 timed sequential sends of a 64-byte body, each timed from just before `relay.send(..)`
//! to the `Delivery` (B's sealed receipt, 1 hop) coming back; p50 and p99 in microseconds.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use msgtier::actors::relay::{RelayActor, Send};

use super::{body, check_delivered, Ctx};
use crate::cleanup;
use crate::node::{free_ports, Spec};
use crate::report::key;
use crate::stats::{p50_p90_p99, Results};

/// Requests kept in flight.
const IN_FLIGHT: usize = 1000;
/// Size of the message body.
const BODY_BYTES: usize = 64;
/// The relay's own timeout for each `Send`.
const SEND_TIMEOUT_MS: u64 = 10_000;

/// What the in-process round-trip series measured.
#[derive(Default)]
struct Series {
    /// Round trips of the timed sends that succeeded, in microseconds.
    rtts_us: Vec<f64>,
    /// Successful sends including warm-up.
    ok_total: u64,
    errors: BTreeMap<String, u64>,
    cut_short: bool,
}

/// What the in-process run measured.
struct Measured {
    ok: u64,
    /// Successful sends including readiness probes and warm-up.
    ok_total: u64,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
    cut_short: bool,
}

/// Runs the in-process rate measurement.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let dir = ctx.subdir("inproc")?;
    let (warmup, count) = ctx.pick((20_000u64, 300_000u64), (2_000, 20_000));
    let (rtt_warmup, rtt_count) = ctx.pick((500usize, 5_000usize), (100, 500));
    let b_spec = Spec::new("b", "tcp")?;
    let b = ctx.start(&dir, b_spec.clone())?;

    let port_a = free_ports(1)?[0];
    let a_dir = dir.join("a-inproc");
    std::fs::create_dir_all(&a_dir)?;
    let a_spec = Spec {
        id: "a".into(),
        listeners: vec![("tcp", port_a)],
        peers: vec![b_spec.url("tcp")],
        http_port: None,
        extra: Default::default(),
    };
    // The driver initialises no logger, so the in-process node logs nothing whatever its level
    // (B, the process, logs at --node-log like every other node).
    let text = a_spec.config(&a_dir, "warn").to_string();
    let loaded = msgtier::config::parse("bench-inproc-a.json", &text, &a_dir)
        .map_err(|e| anyhow!("in-process config: {e}"))?;

    // A thread of its own: the actix System and everything of node A live and die with it.
    let (m, rtt) = std::thread::Builder::new()
        .name("inproc-node-a".into())
        .spawn(move || -> Result<(Measured, Series)> {
            let system = actix::System::new();
            system.block_on(async move {
                let node = msgtier::node::start(loaded.config)
                    .await
                    .context("start in-process node")?;
                let m = drive(node.relay.clone(), warmup, count, rtt_warmup, rtt_count).await;
                node.stop().await;
                m
            })
        })?
        .join()
        .map_err(|_| anyhow!("in-process node thread panicked"))??;

    if !m.errors.is_empty() || m.cut_short {
        let mut e: Vec<String> = m.errors.iter().map(|(k, n)| format!("{n} x {k}")).collect();
        if m.cut_short {
            e.push("stopped at the time bound".into());
        }
        res.note(format!("rate in-process: {} ok; {}", m.ok, e.join(", ")));
    }
    if m.ok == 0 {
        res.fail(key::RATE_INPROC, "no successful send");
    } else {
        res.add(key::RATE_INPROC, m.ok as f64 / m.elapsed.as_secs_f64());
    }

    if !rtt.errors.is_empty() || rtt.cut_short {
        let mut e: Vec<String> = rtt
            .errors
            .iter()
            .map(|(k, n)| format!("{n} x {k}"))
            .collect();
        if rtt.cut_short {
            e.push("stopped at the time bound".into());
        }
        res.note(format!(
            "rtt in-process: {} ok; {}",
            rtt.rtts_us.len(),
            e.join(", ")
        ));
    }
    if rtt.rtts_us.is_empty() {
        res.fail(key::INPROC_RTT_P50, "no successful send");
        res.fail(key::INPROC_RTT_P99, "no successful send");
    } else {
        let mut v = rtt.rtts_us;
        let (p50, _, p99) = p50_p90_p99(&mut v);
        res.add(key::INPROC_RTT_P50, p50);
        res.add(key::INPROC_RTT_P99, p99);
    }
    check_delivered(
        res,
        "rate and rtt in-process",
        &b,
        m.ok_total + rtt.ok_total,
    );
    Ok(())
}

/// Waits until B answers, then warm-up and measured batches with [`IN_FLIGHT`] tasks, then the
/// one-in-flight round-trip series.
async fn drive(
    relay: actix::Addr<RelayActor>,
    warmup: u64,
    count: u64,
    rtt_warmup: usize,
    rtt_count: usize,
) -> Result<(Measured, Series)> {
    let msg = Bytes::from(body(BODY_BYTES));
    let send = |timeout_ms| Send {
        target: "b".into(),
        body: msg.clone(),
        timeout_ms,
        ttl_ms: 0,
    };
    // Readiness: the link to B is up once a send is answered.
    let start = Instant::now();
    let mut probes_ok = 0;
    loop {
        if let Ok(Ok(_)) = relay.send(send(1_000)).await {
            probes_ok += 1;
            break;
        }
        if start.elapsed() > Duration::from_secs(20) || cleanup::interrupted() {
            bail!("in-process node never reached b");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bound = Duration::from_secs(120);
    let warm = batch(&relay, &msg, warmup, bound).await;
    let mut m = batch(&relay, &msg, count, bound).await;
    m.ok_total = probes_ok + warm.ok + m.ok;
    for (k, n) in warm.errors {
        *m.errors.entry(format!("warm-up: {k}")).or_default() += n;
    }
    let rtt = round_trips(&relay, &msg, rtt_warmup, rtt_count, bound).await;
    Ok((m, rtt))
}

/// `warmup` then `count` sequential sends, ONE in flight; each timed from just before
/// `relay.send(..)` to its `Delivery` (a receipt over 1 hop).
async fn round_trips(
    relay: &actix::Addr<RelayActor>,
    msg: &Bytes,
    warmup: usize,
    count: usize,
    bound: Duration,
) -> Series {
    let mut s = Series {
        rtts_us: Vec::with_capacity(count),
        ..Series::default()
    };
    let deadline = Instant::now() + bound;
    for i in 0..warmup + count {
        if Instant::now() > deadline || cleanup::interrupted() {
            s.cut_short = true;
            break;
        }
        let timed = i >= warmup;
        let req = Send {
            target: "b".into(),
            body: msg.clone(),
            timeout_ms: SEND_TIMEOUT_MS,
            ttl_ms: 0,
        };
        let t0 = Instant::now();
        let r = relay.send(req).await;
        let dt = t0.elapsed();
        let err = match r {
            Ok(Ok(msgtier::actors::relay::Answer::Done(d))) if d.hops == 1 => {
                s.ok_total += 1;
                if timed {
                    s.rtts_us.push(dt.as_secs_f64() * 1e6);
                }
                continue;
            }
            Ok(Ok(msgtier::actors::relay::Answer::Done(d))) => {
                s.ok_total += 1;
                format!("receipt over {} hop(s), not 1", d.hops)
            }
            Ok(Ok(msgtier::actors::relay::Answer::Queued { .. })) => "queued".to_string(),
            Ok(Err(e)) => short(&e.to_string()),
            Err(e) => format!("mailbox: {e}"),
        };
        let err = if timed {
            err
        } else {
            format!("warm-up: {err}")
        };
        *s.errors.entry(err).or_default() += 1;
    }
    s
}

/// Sends `total` messages with [`IN_FLIGHT`] concurrent tasks on the System's arbiter.
async fn batch(
    relay: &actix::Addr<RelayActor>,
    msg: &Bytes,
    total: u64,
    bound: Duration,
) -> Measured {
    let next = Rc::new(Cell::new(0u64));
    let ok = Rc::new(Cell::new(0u64));
    let cut = Rc::new(Cell::new(false));
    let errors = Rc::new(std::cell::RefCell::new(BTreeMap::<String, u64>::new()));
    let start = Instant::now();
    let deadline = start + bound;
    let mut tasks = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let (next, ok, cut, errors) = (next.clone(), ok.clone(), cut.clone(), errors.clone());
        let (relay, msg) = (relay.clone(), msg.clone());
        tasks.push(actix::spawn(async move {
            while next.get() < total {
                next.set(next.get() + 1);
                if Instant::now() > deadline || cleanup::interrupted() {
                    cut.set(true);
                    break;
                }
                let r = relay
                    .send(Send {
                        target: "b".into(),
                        body: msg.clone(),
                        timeout_ms: SEND_TIMEOUT_MS,
                        ttl_ms: 0,
                    })
                    .await;
                match r {
                    Ok(Ok(_)) => ok.set(ok.get() + 1),
                    Ok(Err(e)) => {
                        *errors
                            .borrow_mut()
                            .entry(short(&e.to_string()))
                            .or_default() += 1
                    }
                    Err(e) => {
                        *errors
                            .borrow_mut()
                            .entry(format!("mailbox: {e}"))
                            .or_default() += 1
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let errors = errors.take();
    Measured {
        ok: ok.get(),
        ok_total: ok.get(),
        errors,
        elapsed: start.elapsed(),
        cut_short: cut.get(),
    }
}

/// An error message without the per-message detail (ids, ms), so identical kinds tally together.
fn short(e: &str) -> String {
    e.split(" within ").next().unwrap_or(e).to_string()
}
