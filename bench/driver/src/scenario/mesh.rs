//! A 50-node mesh on this machine: node i (i >= 1) is configured to dial node 0 and node i-1
//! over TCP; defaults for everything else (heartbeat 10 s, `auto_connect: true`), so gossip turns
//! the chain into a full mesh.
//!
//! Measured: time from the first spawn until every node's `/status` lists 49 peers, each with a
//! route (`hops` not null), bounded at 120 s (a timeout is reported as such, with how far it got);
//! then, settled, the RSS of every node (median and max). Nodes are polled every 200 ms until
//! each is complete, then all once more to confirm (the figure is when the last one was first
//! seen complete); the notes also give when every node first listed all its peers.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Ctx;
use crate::cleanup;
use crate::http;
use crate::node::{cpu_seconds, free_ports, rss_kib, Proc, Spec};
use crate::report::key;
use crate::stats::{percentile, Results};

/// Bound on convergence.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two polling passes over all nodes.
const POLL_PAUSE: Duration = Duration::from_millis(200);

/// Peers listed and peers with a route, in one node's `/status`.
fn progress(node: &Proc) -> Option<(usize, usize)> {
    let s = http::get_json(node.http_port(), "/status", Duration::from_secs(5)).ok()?;
    let peers = s["peers"].as_array()?;
    let routed = peers.iter().filter(|p| !p["hops"].is_null()).count();
    Some((peers.len(), routed))
}

/// Runs the mesh measurement.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let n: usize = ctx.pick(50, 10);
    let dir = ctx.subdir("mesh")?;
    let ports = free_ports(2 * n)?;
    let specs: Vec<Spec> = (0..n)
        .map(|i| Spec {
            id: format!("n{i:02}"),
            listeners: vec![("tcp", ports[2 * i])],
            peers: Vec::new(),
            http_port: Some(ports[2 * i + 1]),
            extra: Default::default(),
        })
        .collect();
    let url = |i: usize| specs[i].url("tcp");
    let start = Instant::now();
    let mut nodes = Vec::with_capacity(n);
    for (i, spec) in specs.iter().enumerate() {
        let mut spec = spec.clone();
        if i >= 1 {
            spec.peers.push(url(0));
        }
        if i >= 2 {
            spec.peers.push(url(i - 1));
        }
        nodes.push(Proc::spawn(&ctx.bin, &dir, spec, &ctx.node_log)?);
    }
    let spawned = start.elapsed();

    let want = n - 1;
    // Per node: when it was first seen listing every peer, and with a route to every peer.
    let mut listed_at: Vec<Option<Duration>> = vec![None; n];
    let mut routed_at: Vec<Option<Duration>> = vec![None; n];
    let mut converged = None;
    while start.elapsed() < CONVERGE_TIMEOUT && !cleanup::interrupted() {
        // Only nodes not yet complete are polled, so polling loads the machine little.
        for (i, node) in nodes.iter().enumerate() {
            if routed_at[i].is_some() {
                continue;
            }
            let (listed, routed) = progress(node).unwrap_or((0, 0));
            let now = start.elapsed();
            if listed == want && listed_at[i].is_none() {
                listed_at[i] = Some(now);
            }
            if (listed, routed) == (want, want) {
                routed_at[i] = Some(now);
            }
        }
        if routed_at.iter().all(Option::is_some) {
            // Confirm with one pass over all: convergence means all at one time.
            let mut ok = true;
            for (i, node) in nodes.iter().enumerate() {
                if progress(node) != Some((want, want)) {
                    routed_at[i] = None;
                    ok = false;
                }
            }
            if ok {
                converged = routed_at.iter().flatten().max().copied();
                break;
            }
        }
        std::thread::sleep(POLL_PAUSE);
    }
    // CPU the nodes used to get there: tells a CPU-bound convergence from a timer-bound one.
    let cpu: f64 = nodes.iter().filter_map(|p| cpu_seconds(p.pid())).sum();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    let busy = 100.0 * cpu / (start.elapsed().as_secs_f64() * cores);
    let all_listed = listed_at.iter().all(Option::is_some);
    let listed_s = listed_at
        .iter()
        .flatten()
        .max()
        .filter(|_| all_listed)
        .map(|t| format!("{:.1} s", t.as_secs_f64()))
        .unwrap_or_else(|| "never".into());
    match converged {
        Some(t) => res.add(key::MESH_CONVERGE, t.as_secs_f64()),
        None => {
            // How far it got, over a full pass.
            let seen: Vec<(usize, usize)> = nodes
                .iter()
                .map(|p| progress(p).unwrap_or((0, 0)))
                .collect();
            let complete = seen.iter().filter(|s| **s == (want, want)).count();
            let worst = seen.iter().min_by_key(|s| s.1).copied().unwrap_or((0, 0));
            res.fail(
                key::MESH_CONVERGE,
                format!("timeout > {} s", CONVERGE_TIMEOUT.as_secs()),
            );
            res.note(format!(
                "mesh: {complete} of {n} nodes complete after {} s; worst node lists {} peers, \
                 {} with a route",
                CONVERGE_TIMEOUT.as_secs(),
                worst.0,
                worst.1
            ));
        }
    }
    res.note(format!(
        "mesh of {n}: all spawned after {:.1} s; every node listed all {want} peers after {listed_s}; \
         every node had a route to all after {}; the nodes used {cpu:.1} CPU-s by then \
         ({busy:.0} % of the machine's {cores} cores)",
        spawned.as_secs_f64(),
        converged
            .map(|t| format!("{:.1} s", t.as_secs_f64()))
            .unwrap_or_else(|| "never".into())
    ));

    // Settle, then RSS of every node.
    std::thread::sleep(Duration::from_secs(2));
    let mut rss: Vec<f64> = nodes
        .iter()
        .filter_map(|p| rss_kib(p.pid()))
        .map(|kib| kib as f64 / 1024.0)
        .collect();
    if rss.len() < n {
        res.note(format!(
            "mesh: VmRSS read for only {} of {n} nodes",
            rss.len()
        ));
    }
    if rss.is_empty() {
        res.fail(key::MESH_RSS_MED, "cannot read VmRSS");
        res.fail(key::MESH_RSS_MAX, "cannot read VmRSS");
    } else {
        rss.sort_by(f64::total_cmp);
        res.add(key::MESH_RSS_MED, percentile(&rss, 50.0));
        res.add(key::MESH_RSS_MAX, rss[rss.len() - 1]);
    }
    drop(nodes);
    Ok(())
}
