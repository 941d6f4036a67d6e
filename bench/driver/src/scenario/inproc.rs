//! The rate the node itself moves without HTTP: node A runs IN this process (an
//! `actix::System` on its own thread, `msgtier::node::start` with a config loaded through
//! `msgtier::config::parse`), node B is a normal process linked over TCP, and 1000 tasks keep
//! `msgtier::actors::relay::Send` messages in flight into A's RelayActor, each awaiting its
//! `Delivery` (B's sealed receipt) before sending the next.
//!
//! Reported as "in-process Send into the RelayActor, 1000 in flight". Everything of A (relay,
//! links, sealing) shares the driver's process, and B is a separate process, as with HTTP.

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
use crate::stats::Results;

/// Requests kept in flight.
const IN_FLIGHT: usize = 1000;
/// Size of the message body.
const BODY_BYTES: usize = 64;
/// The relay's own timeout for each `Send`.
const SEND_TIMEOUT_MS: u64 = 10_000;

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
    let m = std::thread::Builder::new()
        .name("inproc-node-a".into())
        .spawn(move || -> Result<Measured> {
            let system = actix::System::new();
            system.block_on(async move {
                let node = msgtier::node::start(loaded.config)
                    .await
                    .context("start in-process node")?;
                let m = drive(node.relay.clone(), warmup, count).await;
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
    check_delivered(res, "rate in-process", &b, m.ok_total);
    Ok(())
}

/// Waits until B answers, then warm-up and measured batches with [`IN_FLIGHT`] tasks.
async fn drive(relay: actix::Addr<RelayActor>, warmup: u64, count: u64) -> Result<Measured> {
    let msg = Bytes::from(body(BODY_BYTES));
    let send = |timeout_ms| Send {
        target: "b".into(),
        body: msg.clone(),
        timeout_ms,
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
    Ok(m)
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
