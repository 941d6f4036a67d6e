//! Goodput over a lossy `udp://` (QUIC) link, as root only: two network namespaces of the
//! driver's own joined by one veth (10.9.0.1 - 10.9.0.2), random loss each way from iptables
//! `statistic` on arrival (no netem on this kernel; the veths segment GSO batches so each
//! datagram is dropped on its own), A and B each in its namespace. 1 MiB plain messages
//! A -> B one at a time (timeout 20 s), at 1 % and then 3 % loss: MB/s of payload answered 200.
//!
//! Each node is spawned from a thread that entered its namespace (a child inherits the network
//! namespace of the thread that forks it) and lives as long as that thread (the driver's
//! parent-death signal is per thread); the same thread talks to the node's API on 127.0.0.1
//! there.

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use super::{body, Ctx, LINK_UP_TIMEOUT};
use crate::http::{send_head, Conn};
use crate::node::{free_ports, Proc, Spec};
use crate::report::key;
use crate::stats::Results;

/// Runs the lossy-link goodput rows, or notes why not.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        res.note("lossy: skipped (network namespaces and iptables need root)".to_string());
        return Ok(());
    }
    let wire = Wire::new()?;
    let dir = ctx.subdir("lossy")?;
    let ports = free_ports(4)?;
    let (b_udp, b_api, a_udp, a_api) = (ports[0], ports[1], ports[2], ports[3]);
    let spec = |id: &str, ip: &str, udp: u16, api: u16| {
        Spec {
            id: id.into(),
            listeners: vec![("udp", udp)],
            peers: vec![],
            http_port: Some(api),
            extra: Default::default(),
        }
        .set("listeners", json!([format!("udp://{ip}:{udp}")]))
        .set("max_frame_bytes", json!(2 << 20))
        .set("max_body_bytes", json!(1 << 20))
    };
    let b_spec = spec("b", &wire.b_ip, b_udp, b_api);
    let mut a_spec = spec("a", &wire.a_ip, a_udp, a_api);
    a_spec.peers = vec![format!("udp://{}:{b_udp}", wire.b_ip)];
    let count = ctx.pick(8, 2);

    std::thread::scope(|s| -> Result<()> {
        let (b_up, b_ready) = mpsc::channel::<Result<()>>();
        let (stop_b, b_stop) = mpsc::channel::<()>();
        let (bin, log, d) = (ctx.bin.clone(), ctx.node_log.clone(), dir.clone());
        let b_ns = wire.b.clone();
        s.spawn(move || {
            let node = enter(&b_ns).and_then(|()| Proc::start(&bin, &d, b_spec, &log));
            let _node = match node {
                Ok(n) => {
                    let _ = b_up.send(Ok(()));
                    n
                }
                Err(e) => {
                    let _ = b_up.send(Err(e));
                    return;
                }
            };
            let _ = b_stop.recv();
        });
        b_ready
            .recv()
            .map_err(|_| anyhow!("node b's thread ended"))??;
        let a_ns = wire.a.clone();
        let (dir, wire) = (&dir, &wire);
        let figures = s
            .spawn(move || -> Result<Vec<(f64, f64, usize, u64)>> {
                enter(&a_ns)?;
                let a = Proc::start(&ctx.bin, dir, a_spec, &ctx.node_log)?;
                a.wait_route("b", 1, LINK_UP_TIMEOUT)?;
                let mut out = Vec::new();
                for p in [0.01, 0.03] {
                    wire.lose(p)?;
                    let (mbs, ok) = goodput(&a, count)?;
                    out.push((p, mbs, ok, wire.dropped()));
                }
                Ok(out)
            })
            .join()
            .map_err(|_| anyhow!("node a's thread panicked"));
        let _ = stop_b.send(());
        for (p, mbs, ok, dropped) in figures?? {
            let k = if p < 0.02 {
                key::LOSS1_UDP
            } else {
                key::LOSS3_UDP
            };
            res.note(format!(
                "lossy {:.0} %: {ok} of {count} messages of 1 MiB answered 200; the loss rule \
                 dropped {dropped} packets",
                p * 100.0
            ));
            res.add(k, mbs);
        }
        Ok(())
    })
}

/// Sends `count` 1 MiB messages one at a time; MB/s of the answered ones, and how many.
fn goodput(a: &Proc, count: usize) -> Result<(f64, usize)> {
    let msg = body(1 << 20);
    let head = send_head("b", msg.len(), 20_000);
    let mut c = Conn::connect(a.http_port(), Duration::from_secs(30))?;
    let (mut ok, start) = (0, Instant::now());
    for _ in 0..count {
        if c.request(&head, &msg)? == 200 {
            ok += 1;
        }
    }
    Ok((
        ok as f64 * msg.len() as f64 / 1e6 / start.elapsed().as_secs_f64(),
        ok,
    ))
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}")).context("open the namespace")?;
    // SAFETY: setns(2) on a valid fd; it switches only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The two namespaces and their veth; removed on drop.
struct Wire {
    a: String,
    b: String,
    a_ip: String,
    b_ip: String,
}

impl Wire {
    fn new() -> Result<Wire> {
        let pid = std::process::id();
        let w = Wire {
            a: format!("mtbench{pid}-a"),
            b: format!("mtbench{pid}-b"),
            a_ip: "10.9.0.1".into(),
            b_ip: "10.9.0.2".into(),
        };
        for ns in [&w.a, &w.b] {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip", "-n", &w.a, "link", "add", "w0", "type", "veth", "peer", "name", "w0", "netns",
            &w.b,
        ])?;
        for (ns, ip) in [(&w.a, &w.a_ip), (&w.b, &w.b_ip)] {
            // Segment every GSO batch on the veth, so the INPUT rule below sees (and drops)
            // single datagrams, not batches of up to 64.
            sh(&[
                "ip",
                "-n",
                ns,
                "link",
                "set",
                "dev",
                "w0",
                "gso_max_segs",
                "1",
            ])?;
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "w0",
            ])?;
            sh(&["ip", "-n", ns, "link", "set", "w0", "up"])?;
        }
        Ok(w)
    }

    /// Replaces the loss rule: each datagram arriving on either side dropped with probability
    /// `p` (on arrival: see `gso_max_segs` above).
    fn lose(&self, p: f64) -> Result<()> {
        for ns in [&self.a, &self.b] {
            sh(&["ip", "netns", "exec", ns, "iptables", "-w", "-F", "INPUT"])?;
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "iptables",
                "-w",
                "-A",
                "INPUT",
                "-i",
                "w0",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p.to_string(),
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }
}

impl Wire {
    /// Packets the loss rules dropped since they were last set, both sides.
    fn dropped(&self) -> u64 {
        [&self.a, &self.b]
            .iter()
            .filter_map(|ns| {
                Command::new("ip")
                    .args([
                        "netns", "exec", ns, "iptables", "-w", "-L", "INPUT", "-v", "-n", "-x",
                    ])
                    .output()
                    .ok()
            })
            .flat_map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains("statistic"))
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
