//! Test helpers: run the real `msgtier` binary with generated configs on 127.0.0.1 (or in a
//! network namespace of a [`netns::Lab`]), talk to its HTTP API, and wait on conditions with a
//! bound.

#![allow(dead_code)]

pub mod netns;
pub mod peer;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Default bound for a wait.
pub const WAIT: Duration = Duration::from_secs(20);

/// A port free for both TCP and UDP on 127.0.0.1 right now, never handed out twice by this
/// process, and below the kernel's ephemeral range: a port from that range can be taken by
/// any outgoing connection (a node dialling, a test's HTTP client) between this check and the
/// node's bind, which made a node fail to start now and then.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start.max(10_001));
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut x = u64::from(std::process::id());
    loop {
        // xorshift over a per-call seed: spread over the range, different per process.
        x ^= std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = low + (x % u64::from(high - low)) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            handed_out.insert(port);
            return port;
        }
    }
}

/// A minimal HTTP/1.1 exchange (Connection: close); returns status and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    http_full(port, method, path, headers, body).map(|r| (r.status, r.body))
}

/// An HTTP response.
pub struct Response {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Like [`http`], with headers.
pub fn http_full(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    http_full_in(None, port, method, path, headers, body)
}

/// Like [`http`], to `127.0.0.1:port` inside network namespace `netns` (None: this process's).
pub fn http_in(
    netns: Option<&str>,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    http_full_in(netns, port, method, path, headers, body).map(|r| (r.status, r.body))
}

/// Connects to `127.0.0.1:port` in network namespace `netns`. A socket stays in the namespace it
/// was created in, so a short-lived thread enters the namespace (setns affects only the calling
/// thread), connects, and hands the stream back.
pub fn connect_in(netns: Option<&str>, port: u16) -> std::io::Result<TcpStream> {
    let Some(ns) = netns else {
        return TcpStream::connect(("127.0.0.1", port));
    };
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path)?;
        // SAFETY: setns(2) on a valid fd; it switches only this (throwaway) thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        TcpStream::connect(("127.0.0.1", port))
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace connect thread panicked"))?
}

/// Like [`http_full`], to `127.0.0.1:port` inside network namespace `netns` (None: this
/// process's).
pub fn http_full_in(
    netns: Option<&str>,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = connect_in(netns, port)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
}

/// Polls `f` every 100 ms until it returns true or `timeout` passes; panics with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How to configure a test node.
#[derive(Clone)]
pub struct Spec {
    pub id: String,
    pub secret: String,
    pub network: String,
    /// (transport, port) pairs to listen on.
    pub listeners: Vec<(String, u16)>,
    pub peers: Vec<String>,
    pub heartbeat_ms: u64,
    pub timeout_ms: u64,
    pub auto_connect: bool,
    pub max_frame_bytes: usize,
    /// Script name -> shell command.
    pub scripts: Vec<(String, String)>,
    /// Extra config fields merged over the generated ones.
    pub extra: Value,
    /// The IP the listeners bind and [`Spec::url`] reports.
    pub host: String,
    /// The network namespace the node runs in (its API is on 127.0.0.1 there); None: this one.
    pub netns: Option<String>,
}

impl Spec {
    /// A node listening on one transport with fast heartbeats.
    pub fn new(id: &str, transport: &str) -> Spec {
        Spec {
            id: id.into(),
            secret: "test-secret".into(),
            network: "test".into(),
            listeners: vec![(transport.into(), free_port())],
            peers: vec![],
            heartbeat_ms: 300,
            timeout_ms: 1_500,
            auto_connect: true,
            max_frame_bytes: 1 << 20,
            scripts: vec![],
            extra: json!({}),
            host: "127.0.0.1".into(),
            netns: None,
        }
    }

    /// Its first listener as a peer URL.
    pub fn url(&self) -> String {
        let (t, p) = &self.listeners[0];
        format!("{t}://{}:{p}", self.host)
    }

    /// A listener URL of the given transport.
    pub fn url_of(&self, transport: &str) -> String {
        let (t, p) = self
            .listeners
            .iter()
            .find(|(t, _)| t == transport)
            .expect("listener of that transport");
        format!("{t}://{}:{p}", self.host)
    }
}

/// A running node process.
pub struct Node {
    pub spec: Spec,
    pub http_port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    /// Writes the config and starts the binary; waits until its API answers.
    pub fn start(spec: Spec) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let http_port = free_port();
        let mut node = Node {
            spec,
            http_port,
            dir,
            child: None,
        };
        node.launch();
        node
    }

    /// [`Node::start`] with the identity built from `seed` (its key file written first, mode
    /// 0600 in a 0700 data directory), so a test knows the node's key before it runs.
    pub fn start_with_identity(spec: Spec, seed: [u8; 32]) -> Node {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let key = data.join("identity.key");
        std::fs::write(&key, format!("ed25519:{}\n", hex::encode(seed))).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut node = Node {
            spec,
            http_port: free_port(),
            dir,
            child: None,
        };
        node.launch();
        node
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("node.json")
    }

    fn launch(&mut self) {
        let s = &self.spec;
        let mut config = json!({
            "id": s.id,
            "secret": s.secret,
            "network": s.network,
            "listeners": s.listeners.iter().map(|(t, p)| format!("{t}://{}:{p}", s.host)).collect::<Vec<_>>(),
            "peers": s.peers,
            "web_api": format!("127.0.0.1:{}", self.http_port),
            "data_dir": self.dir.path().join("data"),
            "heartbeat_interval_ms": s.heartbeat_ms,
            "peer_timeout_ms": s.timeout_ms,
            "auto_connect": s.auto_connect,
            // Off unless a test asks for it: nodes of parallel tests must not meet on the LAN.
            "lan_discovery": false,
            "max_frame_bytes": s.max_frame_bytes,
            "log": "debug",
            "scripts": s
                .scripts
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect::<serde_json::Map<String, Value>>(),
        });
        if let (Some(c), Some(extra)) = (config.as_object_mut(), s.extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        std::fs::write(self.config_path(), config.to_string()).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .expect("log file");
        // In a namespace, `ip netns exec` execs the binary in place (same pid), so killing and
        // signalling the child reaches the node itself.
        let mut cmd = match &s.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns])
                    .arg(env!("CARGO_BIN_EXE_msgtier"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_msgtier")),
        };
        let child = cmd
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .env("RUST_LOG", "msgtier=debug")
            .spawn()
            .expect("spawn msgtier");
        self.child = Some(child);
        let port = self.http_port;
        let id = self.spec.id.clone();
        let ns = self.spec.netns.clone();
        let up = std::panic::catch_unwind(|| {
            wait_until(&format!("node {id} API up"), WAIT, || {
                http_in(ns.as_deref(), port, "GET", "/health", &[], b"")
                    .is_ok_and(|(code, _)| code == 200)
            })
        });
        if let Err(e) = up {
            eprintln!("--- log of node {id} ---\n{}", self.log_tail());
            std::panic::resume_unwind(e);
        }
    }

    /// The network namespace the node runs in (None: the test's own).
    pub fn netns(&self) -> Option<&str> {
        self.spec.netns.as_deref()
    }

    /// An HTTP exchange with this node's API (in its namespace).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let bearer;
        let mut all = headers.to_vec();
        if let Some(token) = self.spec.extra["api_token"].as_str() {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                bearer = format!("Bearer {token}");
                all.push(("authorization", bearer.as_str()));
            }
        }
        http_full_in(self.netns(), self.http_port, method, path, &all, body)
    }

    /// Opens `GET path` (an event stream) on this node's API and reads its response head.
    pub fn events(&self, path: &str, headers: &[(&str, &str)]) -> EventStream {
        EventStream::open(self.http_port, path, headers)
    }

    /// `POST /send` to `target` with `body` (and extra headers).
    pub fn send(&self, target: &str, body: &[u8], extra: &[(&str, &str)]) -> Response {
        let mut headers = vec![("target", target)];
        headers.extend_from_slice(extra);
        self.http("POST", "/send", &headers, body).expect("send")
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> Value {
        let r = self.http("GET", "/status", &[], b"").expect("status");
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).expect("status json")
    }

    /// The status entry for peer `id`, if known.
    pub fn peer(&self, id: &str) -> Option<Value> {
        self.status()["peers"]
            .as_array()?
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
    }

    /// The state of peer `id` ("Init", "Active", "Disconnected") or "" if unknown.
    pub fn peer_state(&self, id: &str) -> String {
        self.peer(id)
            .and_then(|p| p["state"].as_str().map(String::from))
            .unwrap_or_default()
    }

    /// A counter from `/status`, e.g. `counter("links_refused", "wrong_secret")`.
    pub fn counter(&self, group: &str, name: &str) -> u64 {
        self.status()["counters"][group][name].as_u64().unwrap_or(0)
    }

    /// Waits until peer `id` is in `state`, printing the node's log on failure.
    pub fn wait_peer_state(&self, id: &str, state: &str) {
        let what = format!("node {} sees {id} {state}", self.spec.id);
        self.wait(&what, || self.peer_state(id) == state);
    }

    /// Waits on a condition, dumping this node's log tail if it never holds.
    pub fn wait(&self, what: &str, f: impl FnMut() -> bool) {
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_until(what, WAIT, f)));
        if let Err(e) = r {
            eprintln!("--- log of node {} ---\n{}", self.spec.id, self.log_tail());
            match self.http("GET", "/status", &[], b"") {
                Ok(r) => eprintln!("--- status ---\n{:#}", r.json()),
                Err(e) => eprintln!("--- status unavailable: {e} ---"),
            }
            std::panic::resume_unwind(e);
        }
    }

    /// The node's whole log.
    pub fn log_all(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Kills the process and waits for it.
    /// The node process's established TCP connections, as (local port, remote port), read
    /// from `/proc` (its socket inodes, then `/proc/net/tcp{,6}`): what is really on the wire,
    /// not what `/status` chooses to show.
    pub fn tcp_connections(&self) -> Vec<(u16, u16)> {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return Vec::new();
        };
        let inodes: std::collections::HashSet<String> =
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|dir| {
                    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                        .filter_map(|l| {
                            let l = l.to_string_lossy().to_string();
                            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
        let port = |field: &str| {
            field
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let mut out = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                // sl local rem st ... inode (field 9); state 01 = ESTABLISHED.
                if f.len() > 9 && f[3] == "01" && inodes.contains(f[9]) {
                    if let (Some(l), Some(r)) = (port(f[1]), port(f[2])) {
                        out.push((l, r));
                    }
                }
            }
        }
        out
    }

    /// The node process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same node again (same config, ports and data dir).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process must be continued before it can die cleanly.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// A Server-Sent Events client on a raw socket: reads the chunked body as it arrives.
pub struct EventStream {
    pub stream: TcpStream,
    /// Response status and head (lowercased).
    pub status: u16,
    pub head: String,
    /// Bytes read and not yet parsed (still chunk-encoded).
    raw: Vec<u8>,
    /// De-chunked text not yet split into frames.
    text: String,
}

impl EventStream {
    pub fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> EventStream {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).expect("write request");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut s = EventStream {
            stream,
            status: 0,
            head: String::new(),
            raw: Vec::new(),
            text: String::new(),
        };
        let start = Instant::now();
        while !s.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(start.elapsed() < WAIT, "no response head from {path}");
            s.fill();
        }
        let split = s.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        s.head = String::from_utf8_lossy(&s.raw[..split]).to_ascii_lowercase();
        s.status = s
            .head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        s.raw.drain(..split + 4);
        s
    }

    /// Reads what is there (waits at most the read timeout). False at the end of the stream.
    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 65536];
        match self.stream.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                true
            }
            Err(_) => false,
        }
    }

    /// Moves whole chunks from `raw` to `text`; false once the last chunk was seen.
    fn dechunk(&mut self) -> bool {
        loop {
            let Some(nl) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&self.raw[..nl]).trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                return false;
            }
            if self.raw.len() < nl + 2 + size + 2 {
                return true;
            }
            self.text
                .push_str(&String::from_utf8_lossy(&self.raw[nl + 2..nl + 2 + size]));
            self.raw.drain(..nl + 2 + size + 2);
        }
    }

    /// The next SSE frame (its `data:` JSON, and the `id:` line if any), waiting up to
    /// `timeout`; None at the end of the stream or when the wait runs out.
    pub fn next_frame(&mut self, timeout: Duration) -> Option<(Option<u64>, Value)> {
        let start = Instant::now();
        loop {
            let open = self.dechunk();
            while let Some(end) = self.text.find("\n\n") {
                let frame: String = self.text.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(v).ok();
                    }
                }
                if let Some(d) = data {
                    return Some((id, d));
                }
            }
            if !open || start.elapsed() > timeout {
                return None;
            }
            if !self.fill() {
                self.dechunk();
                if !self.text.contains("\n\n") {
                    return None;
                }
            }
        }
    }

    /// Reads events until one matches `f` (returned), or panics after `timeout`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match self.next_frame(left) {
                Some((_, v)) if f(&v) => return v,
                Some((_, v)) => eprintln!("(event skipped: {v})"),
                None => panic!("no event {what} within {timeout:?}"),
            }
        }
    }
}
