//! The libp2p reference (`bench/libp2p-ref`: rust-libp2p TCP + Noise + Yamux +
//! request-response, two local processes): one server per run, then one client per mode, each
//! printing one JSON line that is parsed here. `stream-rtt` has a server of its own
//! (`server --stream`: the libp2p-stream behaviour instead of request-response).
//!
//! Shapes chosen to match msgtier's figures: `rtt` with 64-byte requests, 5000 after 500
//! warm-up; `rate` with 64-byte requests and 64 in flight; `bulk` with 1 MiB requests and 4 in
//! flight (msgtier's bulk uses 4 HTTP connections); `stream-rtt` with 64-byte ping-pongs on one
//! long-lived stream, 5000 after 500 warm-up (like the in-process round trip).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use super::Ctx;
use crate::cleanup;
use crate::report::key;
use crate::stats::Results;

/// Bound on the server printing its address.
const SERVER_UP: Duration = Duration::from_secs(20);
/// Bound on one client run.
const CLIENT_BOUND: Duration = Duration::from_secs(180);

/// Which libp2p modes a session needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Modes {
    pub rtt: bool,
    pub rate: bool,
    pub bulk: bool,
}

impl Modes {
    /// `stream-rtt` is compared with the in-process round trip, and the `inproc` group is what
    /// selects `rate` (the in-process rate row compares with it), so it comes along with `rate`.
    pub fn stream_rtt(&self) -> bool {
        self.rate
    }
}

/// A child registered for cleanup, killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        cleanup::unregister(self.0.id());
    }
}

fn spawn(bin: &Path, args: &[String], stderr: &Path) -> Result<Guard> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr)?);
    cleanup::die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    cleanup::register(child.id());
    Ok(Guard(child))
}

/// Starts a server (`extra` appended to its arguments, stderr into `log`) and answers it with
/// the address it printed.
fn start_server(bin: &Path, extra: &[&str], log: &Path) -> Result<(Guard, String)> {
    let mut args: Vec<String> = vec!["server".into(), "--listen".into(), "127.0.0.1:0".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut server = spawn(bin, &args, log)?;
    let stdout = server.0.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(SERVER_UP)
        .map_err(|_| anyhow!("libp2p-ref server printed no address in {SERVER_UP:?}"))?;
    let addr = serde_json::from_str::<Value>(line.trim())
        .ok()
        .and_then(|v| v["listening"].as_str().map(String::from))
        .ok_or_else(|| anyhow!("libp2p-ref server said {line:?}"))?;
    if !addr.starts_with("/ip4/127.0.0.1/") {
        bail!("libp2p-ref server listens on {addr}, not 127.0.0.1");
    }
    Ok((server, addr))
}

/// Runs the selected modes: rtt, rate and bulk against one request-response server, then
/// stream-rtt against a stream server.
pub fn run(ctx: &Ctx, res: &mut Results, modes: Modes) -> Result<()> {
    let Some(bin) = &ctx.libp2p else {
        return Ok(());
    };
    let dir = ctx.subdir("libp2p")?;

    let (rtt_warm, rtt_count) = ctx.pick((500, 5_000), (100, 500));
    let (rate_warm, rate_count) = ctx.pick((2_000, 50_000), (500, 5_000));
    let (bulk_warm, bulk_count) = ctx.pick((8, 200), (4, 24));
    let (stream_warm, stream_count) = ctx.pick((500, 5_000), (100, 500));
    let client = |addr: &str, mode: &str, extra: &[String]| -> Result<Value> {
        let mut args: Vec<String> = ["client", "--connect", addr, "--mode", mode]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend_from_slice(extra);
        let stderr = dir.join(format!("client-{mode}.log"));
        let mut c = spawn(bin, &args, &stderr)?;
        let start = Instant::now();
        loop {
            if let Some(status) = c.0.try_wait()? {
                let mut out = String::new();
                if let Some(mut s) = c.0.stdout.take() {
                    s.read_to_string(&mut out)?;
                }
                if !status.success() {
                    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
                    bail!("libp2p-ref client {mode} failed ({status}): {}", err.trim());
                }
                let last = out.lines().last().unwrap_or_default();
                return serde_json::from_str(last)
                    .with_context(|| format!("libp2p-ref client {mode} printed {out:?}"));
            }
            if start.elapsed() > CLIENT_BOUND || cleanup::interrupted() {
                bail!("libp2p-ref client {mode} still running after {CLIENT_BOUND:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let s = |v: usize| v.to_string();
    let num = |v: &Value, f: &str| v[f].as_f64().ok_or_else(|| anyhow!("no {f} in {v}"));

    let (server, addr) = start_server(bin, &[], &dir.join("server.log"))?;
    let addr = addr.as_str();

    if modes.rtt {
        let args = [
            "--count".into(),
            s(rtt_count),
            "--warmup".into(),
            s(rtt_warm),
            "--size".into(),
            s(64),
        ];
        match client(addr, "rtt", &args)
            .and_then(|v| Ok([num(&v, "p50_us")?, num(&v, "p90_us")?, num(&v, "p99_us")?]))
        {
            Ok([p50, p90, p99]) => {
                res.add(key::LP_RTT_P50, p50);
                res.add(key::LP_RTT_P90, p90);
                res.add(key::LP_RTT_P99, p99);
            }
            Err(e) => {
                res.fail(key::LP_RTT_P50, "failed");
                res.note(format!("{e:#}"));
            }
        }
    }
    if modes.rate {
        let args = [
            "--count".into(),
            s(rate_count),
            "--warmup".into(),
            s(rate_warm),
            "--inflight".into(),
            s(64),
            "--size".into(),
            s(64),
        ];
        match client(addr, "rate", &args).and_then(|v| num(&v, "msgs_per_sec")) {
            Ok(v) => res.add(key::LP_RATE, v),
            Err(e) => {
                res.fail(key::LP_RATE, "failed");
                res.note(format!("{e:#}"));
            }
        }
    }
    if modes.bulk {
        let args = [
            "--count".into(),
            s(bulk_count),
            "--warmup".into(),
            s(bulk_warm),
            "--inflight".into(),
            s(4),
            "--size".into(),
            s(super::bulk::MESSAGE_BYTES),
        ];
        match client(addr, "bulk", &args).and_then(|v| num(&v, "mb_per_sec")) {
            Ok(v) => res.add(key::LP_BULK, v),
            Err(e) => {
                res.fail(key::LP_BULK, "failed");
                res.note(format!("{e:#}"));
            }
        }
    }
    drop(server);

    if modes.stream_rtt() {
        let args = [
            "--count".into(),
            s(stream_count),
            "--warmup".into(),
            s(stream_warm),
            "--size".into(),
            s(64),
        ];
        let measured = start_server(bin, &["--stream"], &dir.join("server-stream.log"))
            .and_then(|(server, addr)| {
                let v = client(&addr, "stream-rtt", &args);
                drop(server);
                v
            })
            .and_then(|v| Ok([num(&v, "p50_us")?, num(&v, "p99_us")?]));
        match measured {
            Ok([p50, p99]) => {
                res.add(key::LP_STREAM_RTT_P50, p50);
                res.add(key::LP_STREAM_RTT_P99, p99);
            }
            Err(e) => {
                res.fail(key::LP_STREAM_RTT_P50, "failed");
                res.note(format!("{e:#}"));
            }
        }
    }
    Ok(())
}
