//! Real `msgtier` processes with generated configs on 127.0.0.1: ports, config files, start,
//! wait for the API, read `/status` and `/proc/PID/status`, signal, kill, restart.
//!
//! Modelled on `tests/common/mod.rs`; unlike the tests, nodes log at `warn` by default (the
//! per-message `info` line would otherwise be part of every figure; `--node-log info` puts it
//! back) and the secret is the bench's own.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Map, Value};

use crate::cleanup;
use crate::http;

/// Bound on a node's API coming up after spawn.
pub const API_UP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one `/status` request.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// The network secret of every bench node.
pub const SECRET: &str = "msgtier-bench-secret";

/// `n` distinct ports free for both TCP and UDP on 127.0.0.1 right now. All are held until all
/// are found, so the same port is never handed out twice.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut held = Vec::with_capacity(n);
    let mut attempts = 0;
    while held.len() < n {
        attempts += 1;
        if attempts > 20 * n + 100 {
            bail!("could not find {n} free ports on 127.0.0.1");
        }
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if let Ok(udp) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
            held.push((port, tcp, udp));
        }
    }
    Ok(held.into_iter().map(|(p, _, _)| p).collect())
}

/// Polls `f` every `every` until it holds or `timeout` passes; returns the time it took.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout || cleanup::interrupted() {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// One node's config, before it is written.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Node id.
    pub id: String,
    /// (transport, port) pairs it listens on, all on 127.0.0.1.
    pub listeners: Vec<(&'static str, u16)>,
    /// URLs it dials.
    pub peers: Vec<String>,
    /// Port of its HTTP API; `None` = no API.
    pub http_port: Option<u16>,
    /// Further config fields (heartbeat, timeouts, frame sizes, `auto_connect`).
    pub extra: Map<String, Value>,
}

impl Spec {
    /// A node listening on one transport, with an API, on fresh ports.
    pub fn new(id: &str, transport: &'static str) -> Result<Spec> {
        let p = free_ports(2)?;
        Ok(Spec {
            id: id.into(),
            listeners: vec![(transport, p[0])],
            peers: vec![],
            http_port: Some(p[1]),
            extra: Map::new(),
        })
    }

    /// Its listener of `transport` as a peer URL.
    pub fn url(&self, transport: &str) -> String {
        let (t, p) = self
            .listeners
            .iter()
            .find(|(t, _)| *t == transport)
            .copied()
            .unwrap_or(self.listeners[0]);
        format!("{t}://127.0.0.1:{p}")
    }

    /// Sets one extra config field.
    pub fn set(mut self, field: &str, value: Value) -> Spec {
        self.extra.insert(field.into(), value);
        self
    }

    /// The config document, with its data under `dir`.
    pub fn config(&self, dir: &Path, log: &str) -> Value {
        let mut c = json!({
            "id": self.id,
            "secret": SECRET,
            "network": "bench",
            "listeners": self.listeners.iter()
                .map(|(t, p)| format!("{t}://127.0.0.1:{p}")).collect::<Vec<_>>(),
            "peers": self.peers,
            "data_dir": dir.join("data"),
            "log": log,
            "lan_discovery": false,
        });
        if let (Some(obj), Some(port)) = (c.as_object_mut(), self.http_port) {
            obj.insert("web_api".into(), json!(format!("127.0.0.1:{port}")));
        }
        if let Some(obj) = c.as_object_mut() {
            for (k, v) in &self.extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        c
    }
}

/// A running `msgtier` process.
pub struct Proc {
    /// Its config.
    pub spec: Spec,
    /// Its own directory (config, data dir, log).
    dir: PathBuf,
    /// The binary.
    bin: PathBuf,
    /// Log level written into the config.
    log: String,
    /// The process while it runs.
    child: Option<Child>,
}

impl Proc {
    /// Writes the config under `parent/<id>` and spawns the node, without waiting for it.
    /// Must be called from the main thread (see [`cleanup`]).
    pub fn spawn(bin: &Path, parent: &Path, spec: Spec, log: &str) -> Result<Proc> {
        let dir = parent.join(&spec.id);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut p = Proc {
            spec,
            dir,
            bin: bin.to_path_buf(),
            log: log.into(),
            child: None,
        };
        p.launch()?;
        Ok(p)
    }

    /// [`Proc::spawn`], then waits until its API answers.
    pub fn start(bin: &Path, parent: &Path, spec: Spec, log: &str) -> Result<Proc> {
        let p = Proc::spawn(bin, parent, spec, log)?;
        p.wait_api()?;
        Ok(p)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("node.json")
    }

    fn launch(&mut self) -> Result<()> {
        let config = self.spec.config(&self.dir, &self.log);
        std::fs::write(self.config_path(), config.to_string()).context("write config")?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .context("open node log")?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg(self.config_path())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env_remove("RUST_LOG");
        cleanup::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        cleanup::register(child.id());
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the API answers `/status`, failing early (with the log) if the process died.
    pub fn wait_api(&self) -> Result<()> {
        let port = self
            .spec
            .http_port
            .ok_or_else(|| anyhow!("node has no API"))?;
        let start = Instant::now();
        loop {
            if http::get_json(port, "/status", STATUS_TIMEOUT).is_ok() {
                return Ok(());
            }
            if !self.alive() {
                bail!(
                    "node {} exited at start; log:\n{}",
                    self.spec.id,
                    self.log_tail()
                );
            }
            if start.elapsed() > API_UP_TIMEOUT || cleanup::interrupted() {
                bail!("node {} API not up after {API_UP_TIMEOUT:?}", self.spec.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&self) -> bool {
        let pid = self.pid();
        // /proc/PID/stat's state field: Z (zombie) or a missing file means it is gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// Its pid (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Port of its API.
    pub fn http_port(&self) -> u16 {
        self.spec.http_port.unwrap_or(0)
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<Value> {
        http::get_json(self.http_port(), "/status", STATUS_TIMEOUT)
            .with_context(|| format!("GET /status of node {}", self.spec.id))
    }

    /// Peer `id`'s entry in `/status`, if listed.
    pub fn peer(&self, id: &str) -> Option<Value> {
        self.status()
            .ok()?
            .get("peers")?
            .as_array()?
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
    }

    /// Peer `id`'s state (`Init`, `Active`, `Disconnected`), "" when unknown or unreadable.
    pub fn peer_state(&self, id: &str) -> String {
        self.peer(id)
            .and_then(|p| p["state"].as_str().map(String::from))
            .unwrap_or_default()
    }

    /// Waits until peer `id` is reached in `hops` hops (a route exists; for 1 hop that is a
    /// direct link). The state is not checked: a node learned by gossip stays `Init` at a
    /// non-neighbour even while a route to it exists.
    pub fn wait_route(&self, id: &str, hops: u64, timeout: Duration) -> Result<Duration> {
        let what = format!("node {} to reach {id} in {hops} hop(s)", self.spec.id);
        wait_for(&what, timeout, Duration::from_millis(50), || {
            self.peer(id)
                .is_some_and(|p| p["hops"].as_u64() == Some(hops))
        })
        .map_err(|e| {
            anyhow!(
                "{e}; its entry for {id}: {}; last log lines:\n{}",
                self.peer(id)
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "none".into()),
                self.log_tail()
            )
        })
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: libc::c_int) -> bool {
        self.child
            .as_ref()
            .is_some_and(|c| cleanup::signal(c.id(), sig))
    }

    /// Kills and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            cleanup::signal(c.id(), libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
            cleanup::unregister(c.id());
        }
    }

    /// Starts the same node again (same config, ports and identity); does not wait.
    pub fn relaunch(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `VmRSS` of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// `RssAnon` of process `pid`, KiB: the resident memory that is the process's own (heap,
/// stacks), without the pages of its binary and libraries, which every node shares.
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system) process `pid` has used so far, seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// Waits until the RSS of `pid` stops moving (two readings 500 ms apart within 1 %, at most
/// `bound`), and returns the last reading in KiB.
pub fn settled_rss_kib(pid: u32, bound: Duration) -> Option<u64> {
    let start = Instant::now();
    let mut last = rss_kib(pid)?;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = rss_kib(pid)?;
        if now.abs_diff(last) * 100 <= last || start.elapsed() > bound {
            return Some(now);
        }
        last = now;
    }
}
