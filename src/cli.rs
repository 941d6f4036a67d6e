//! The client side of the `msgtier` command: `send`, `status`, `peers`, `events` talk to a
//! running node's HTTP API; `init`, `check` and `id` work on a config file.
//!
//! The API address is `--api`, else `MSGTIER_API`, else the `web_api` of `--config`, else
//! [`DEFAULT_API`]; the token is `--token`, else `MSGTIER_TOKEN`, else the `api_token` of
//! `--config`. Every failure is one line on stderr saying what was tried.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

/// Where the client looks when nothing says otherwise (MsgTier's default API port).
pub const DEFAULT_API: &str = "127.0.0.1:9000";

/// Bodies above this size get a progress bar on a terminal.
const PROGRESS_BYTES: u64 = 1024 * 1024;

/// Exit status of the client itself failing (API unreachable, an error answer): `EX_UNAVAILABLE`
/// from sysexits, apart from the small codes scripts usually exit with.
pub const EXIT_FAILED: u8 = 69;

/// Exit status when the script was killed (timed out, or by a signal) and has no exit code:
/// 124, as `timeout(1)` uses.
pub const EXIT_NO_CODE: u8 = 124;

/// How to reach the API, and where that came from (for error messages).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The node's API address (host:port or a URL) [env: MSGTIER_API]
    #[arg(long)]
    pub api: Option<String>,
    /// The node's API token [env: MSGTIER_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
    /// Take the API address and token from this config file
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// A resolved API endpoint.
pub struct Api {
    base: String,
    from: String,
    token: Option<String>,
}

impl ApiArgs {
    /// Resolves the address and token in the documented order.
    pub fn resolve(&self) -> Result<Api, String> {
        let loaded = match &self.config {
            Some(path) => Some(msgtier::config::load(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let env_api = std::env::var("MSGTIER_API").ok().filter(|s| !s.is_empty());
        let (addr, from) = if let Some(a) = &self.api {
            (a.clone(), "--api".to_string())
        } else if let Some(a) = env_api {
            (a, "MSGTIER_API".to_string())
        } else if let Some(l) = &loaded {
            let web = l.config.web_api.ok_or_else(|| {
                format!(
                    "{}: has no web_api, so there is no API to call",
                    l.config.source.display()
                )
            })?;
            // A wildcard bind is reached on loopback.
            let ip = if web.ip().is_unspecified() {
                match web {
                    std::net::SocketAddr::V4(_) => "127.0.0.1".parse().unwrap(),
                    std::net::SocketAddr::V6(_) => "::1".parse().unwrap(),
                }
            } else {
                web.ip()
            };
            (
                std::net::SocketAddr::new(ip, web.port()).to_string(),
                format!("web_api of {}", l.config.source.display()),
            )
        } else {
            (DEFAULT_API.to_string(), "the default".to_string())
        };
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        let token = self
            .token
            .clone()
            .or_else(|| {
                std::env::var("MSGTIER_TOKEN")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| {
                loaded
                    .as_ref()
                    .and_then(|l| l.config.api_token.as_ref())
                    .map(|t| t.expose().to_string())
            });
        Ok(Api { base, from, token })
    }
}

/// An answer from the API.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "the API answered {} with something that is not JSON: {e}",
                self.status
            )
        })
    }

    /// The one-line error of a non-2xx answer.
    fn error_line(&self) -> String {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(v) if v["error"].is_string() => format!(
                "{} {}: {}",
                self.status,
                v["error"].as_str().unwrap_or(""),
                v["message"].as_str().unwrap_or("")
            ),
            _ => format!(
                "{}: {}",
                self.status,
                String::from_utf8_lossy(&self.body).trim()
            ),
        }
    }
}

impl Api {
    fn agent(&self, timeout: Option<Duration>) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(timeout)
            .build()
            .into()
    }

    fn unreachable(&self, e: ureq::Error) -> String {
        format!(
            "cannot reach the msgtier API at {} (from {}): {e}; is the node running? \
             (set --api, MSGTIER_API or --config)",
            self.base, self.from
        )
    }

    fn request(&self, method: &str, path: &str) -> ureq::http::request::Builder {
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b
    }

    fn finish(&self, response: ureq::http::Response<ureq::Body>) -> Result<Answer, String> {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the answer from {}: {e}", self.base))?;
        if status == 401 {
            let hint = if self.token.is_some() {
                "the token given is not this node's api_token"
            } else {
                "this node needs its api_token: --token or MSGTIER_TOKEN"
            };
            return Err(format!(
                "{} ({hint})",
                Answer {
                    status,
                    headers: Vec::new(),
                    body
                }
                .error_line()
            ));
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn get(&self, path: &str) -> Result<Answer, String> {
        let req = self
            .request("GET", path)
            .body(())
            .map_err(|e| e.to_string())?;
        let response = self
            .agent(Some(Duration::from_secs(30)))
            .run(req)
            .map_err(|e| self.unreachable(e))?;
        self.finish(response)
    }

    fn get_json(&self, path: &str) -> Result<Value, String> {
        let answer = self.get(path)?;
        if !(200..300).contains(&answer.status) {
            return Err(answer.error_line());
        }
        answer.json()
    }
}

/// `msgtier send`.
pub struct SendArgs {
    pub target: String,
    pub body: Option<String>,
    pub file: Option<PathBuf>,
    pub ttl: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// Counts what a body reader hands out and draws a bar on stderr.
struct Progress<R> {
    inner: R,
    sent: u64,
    total: u64,
    drawn: u64,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        if self.sent - self.drawn >= 256 * 1024
            || (n == 0 && self.drawn != self.sent)
            || self.drawn == 0
        {
            self.drawn = self.sent.max(1);
            let width = 30;
            let done = (self.sent * width / self.total.max(1)).min(width) as usize;
            eprint!(
                "\r[{}{}] {:.1} / {:.1} MiB",
                "#".repeat(done),
                " ".repeat(width as usize - done),
                self.sent as f64 / 1048576.0,
                self.total as f64 / 1048576.0
            );
            if n == 0 || self.sent >= self.total {
                eprintln!();
            }
        }
        Ok(n)
    }
}

pub fn send(api: &ApiArgs, args: SendArgs) -> Result<ExitCode, String> {
    let api = api.resolve()?;
    let body: Vec<u8> = match (&args.body, &args.file) {
        (Some(_), Some(_)) => return Err("give a BODY or --file, not both".into()),
        (Some(b), None) if b == "-" => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .map_err(|e| format!("reading stdin: {e}"))?;
            v
        }
        (Some(b), None) => b.clone().into_bytes(),
        (None, Some(path)) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        (None, None) => Vec::new(),
    };
    let mut req = api
        .request("POST", "/send")
        .header("target", &args.target)
        .header("accept", "application/json");
    if let Some(ttl) = args.ttl {
        req = req.header("ttl", ttl.to_string());
    }
    if let Some(t) = args.timeout_ms {
        req = req.header("timeout", t.to_string());
    }
    let wait = Duration::from_millis(args.timeout_ms.unwrap_or(60_000) + 5_000);
    let agent = api.agent(Some(wait));
    let total = body.len() as u64;
    let response = if total > PROGRESS_BYTES && std::io::stderr().is_terminal() {
        let reader = Progress {
            inner: std::io::Cursor::new(body),
            sent: 0,
            total,
            drawn: 0,
        };
        let req = req
            .header("content-length", total.to_string())
            .body(ureq::SendBody::from_owned_reader(reader))
            .map_err(|e| e.to_string())?;
        agent.run(req)
    } else {
        let req = req.body(body).map_err(|e| e.to_string())?;
        agent.run(req)
    }
    .map_err(|e| api.unreachable(e))?;
    let answer = api.finish(response)?;
    if !(200..300).contains(&answer.status) {
        let mut line = answer.error_line();
        if let Some(after) = answer.header("retry-after") {
            line.push_str(&format!(" (retry after {after} s)"));
        }
        return Err(line);
    }
    let v = answer.json()?;
    if let Some(results) = v["results"].as_array() {
        return print_fanout(results);
    }
    if v.get("stdout").is_some() {
        // A script ran: its output, its exit code.
        let out = output_bytes(&v, "stdout")?;
        let err = output_bytes(&v, "stderr")?;
        std::io::stdout()
            .write_all(&out)
            .map_err(|e| e.to_string())?;
        std::io::stderr()
            .write_all(&err)
            .map_err(|e| e.to_string())?;
        let _ = std::io::stdout().flush();
        if v["truncated"] == true {
            eprintln!("msgtier: the output was cut at the target's max_script_output_bytes");
        }
        return Ok(match v["exit_code"].as_i64() {
            Some(code) => ExitCode::from((code & 0xff) as u8),
            None => {
                let why = if v["timed_out"] == true {
                    "timed out"
                } else {
                    "was killed"
                };
                eprintln!(
                    "msgtier: the script {why} on {} (no exit code)",
                    args.target
                );
                ExitCode::from(EXIT_NO_CODE)
            }
        });
    }
    match v["status"].as_str() {
        Some("queued") => println!(
            "queued {} for {} (until unix ms {}); see msgtier status or GET /messages/{}",
            v["id"].as_str().unwrap_or("?"),
            args.target,
            v["expires_unix_ms"],
            v["id"].as_str().unwrap_or("?")
        ),
        _ => {
            let hops = v["hops"].as_u64().unwrap_or(0);
            println!(
                "delivered to {} ({hops} hop{}), id {}",
                args.target,
                if hops == 1 { "" } else { "s" },
                v["id"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A fan-out's answer: one block per node, a heading then its output. The exit code is the
/// worst: [`EXIT_FAILED`] if a node did not answer or refused, else 124 if a script gave
/// no code, else the highest script exit code (0 when every node succeeded).
fn print_fanout(results: &[Value]) -> Result<ExitCode, String> {
    let mut worst: u8 = 0;
    let mut unavailable = false;
    let mut out = std::io::stdout().lock();
    for (i, r) in results.iter().enumerate() {
        let node = r["node"].as_str().unwrap_or("?");
        let status = r["status"].as_str().unwrap_or("?");
        let heading = match status {
            "ran" => match r["exit_code"].as_i64() {
                Some(code) => {
                    worst = worst.max((code & 0xff) as u8);
                    format!("exit {code}")
                }
                None => {
                    worst = worst.max(EXIT_NO_CODE);
                    if r["timed_out"] == true {
                        "timed out".to_string()
                    } else {
                        "killed".to_string()
                    }
                }
            },
            "delivered" => format!("delivered ({} hops)", r["hops"]),
            "queued" => format!("queued as {}", r["id"].as_str().unwrap_or("?")),
            _ => {
                unavailable = true;
                format!("{status}: {}", r["message"].as_str().unwrap_or("no answer"))
            }
        };
        let sep = if i == 0 { "" } else { "\n" };
        let cut = if r["truncated"] == true {
            ", output cut"
        } else {
            ""
        };
        writeln!(out, "{sep}== {node}: {heading}{cut}").map_err(|e| e.to_string())?;
        let stdout = output_bytes(r, "stdout")?;
        let stderr = output_bytes(r, "stderr")?;
        out.write_all(&stdout).map_err(|e| e.to_string())?;
        if !stderr.is_empty() {
            writeln!(out, "-- stderr").map_err(|e| e.to_string())?;
            out.write_all(&stderr).map_err(|e| e.to_string())?;
        }
        if !stdout.is_empty() && !stdout.ends_with(b"\n") {
            writeln!(out).map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(ExitCode::from(if unavailable {
        EXIT_FAILED
    } else {
        worst
    }))
}

fn output_bytes(v: &Value, name: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    if let Some(b64) = v[format!("{name}_b64")].as_str() {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{name}_b64: {e}"));
    }
    Ok(v[name].as_str().unwrap_or("").as_bytes().to_vec())
}

/// `msgtier status`.
pub fn status(api: &ApiArgs, json: bool) -> Result<ExitCode, String> {
    let api = api.resolve()?;
    let s = api.get_json("/status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let peers = s["peers"].as_array().cloned().unwrap_or_default();
    let active = peers.iter().filter(|p| p["state"] == "Active").count();
    let m = &s["messages"];
    let rows = [
        ("id", s["id"].as_str().unwrap_or("").to_string()),
        ("network", s["network"].as_str().unwrap_or("").to_string()),
        ("version", s["version"].as_str().unwrap_or("").to_string()),
        (
            "uptime",
            human_duration(s["uptime_ms"].as_u64().unwrap_or(0)),
        ),
        (
            "public key",
            s["public_key"].as_str().unwrap_or("").to_string(),
        ),
        ("listeners", join(&s["listeners"])),
        ("observed as", join(&s["observed_addrs"])),
        ("peers", format!("{active} active of {}", peers.len())),
        (
            "messages",
            format!(
                "{} sent, {} delivered here, {} scripts run, {} timed out, {} dropped",
                m["sent"], m["delivered"], m["scripts_run"], m["timed_out"], m["dropped"]
            ),
        ),
        (
            "scripts",
            format!(
                "{} running, {} queued",
                s["scripts"]["running"], s["scripts"]["queued"]
            ),
        ),
        (
            "outbox",
            format!(
                "{} messages, {} bytes{}",
                s["durable"]["outbox_messages"],
                s["durable"]["outbox_bytes"],
                if s["durable"]["carrier"] == true {
                    "; carries for others"
                } else {
                    ""
                }
            ),
        ),
        (
            "relays for",
            match s["foreign"].as_object() {
                Some(f) if !f.is_empty() => f.keys().cloned().collect::<Vec<_>>().join(", "),
                _ => "no other network".into(),
            },
        ),
    ];
    for (k, v) in rows {
        println!("{k:<12} {v}");
    }
    if !peers.is_empty() {
        println!();
        print_peers(&s);
    }
    Ok(ExitCode::SUCCESS)
}

fn join(v: &Value) -> String {
    let items: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{} s", s, (ms % 1000) / 100),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

/// `msgtier peers`.
pub fn peers(api: &ApiArgs, json: bool) -> Result<ExitCode, String> {
    let api = api.resolve()?;
    let s = api.get_json("/status")?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s["peers"]).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if s["peers"].as_array().is_none_or(|p| p.is_empty()) {
        println!("no peers known yet");
        return Ok(ExitCode::SUCCESS);
    }
    print_peers(&s);
    Ok(ExitCode::SUCCESS)
}

/// One row per known node: the table `peers` and `status` print.
pub fn peer_rows(s: &Value) -> Vec<[String; 6]> {
    let mut rows = Vec::new();
    for p in s["peers"].as_array().into_iter().flatten() {
        let id = p["id"].as_str().unwrap_or("?").to_string();
        let links: Vec<&Value> = p["links"]
            .as_array()
            .map(|l| l.iter().filter(|l| l["state"] == "Active").collect())
            .unwrap_or_default();
        let punched =
            s["punch"][&id]["state"] == "open" && links.iter().any(|l| l["transport"] == "udp");
        let path = if p["public_relay"] == true {
            "public relay".to_string()
        } else if punched {
            "punched".into()
        } else if !links.is_empty() {
            "direct".into()
        } else if let Some(via) = p["next_hop"].as_str() {
            format!("via {via} ({} hops)", p["hops"])
        } else {
            "-".into()
        };
        let mut transports: Vec<&str> = links
            .iter()
            .filter_map(|l| l["transport"].as_str())
            .collect();
        transports.sort();
        transports.dedup();
        let rtt = links
            .iter()
            .filter_map(|l| l["rtt_ms"]["last"].as_f64())
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
        let heard = p["links"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["last_heard_ms_ago"].as_u64())
            .min();
        rows.push([
            id,
            p["state"].as_str().unwrap_or("?").to_string(),
            path,
            if transports.is_empty() {
                "-".into()
            } else {
                transports.join(",")
            },
            rtt.map_or("-".into(), |r| format!("{r:.2} ms")),
            heard.map_or("-".into(), |h| format!("{} ago", human_duration(h))),
        ]);
    }
    rows
}

fn print_peers(s: &Value) {
    let header = ["ID", "STATE", "PATH", "TRANSPORT", "RTT", "LAST HEARD"];
    let rows = peer_rows(s);
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&header);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

/// `msgtier events`.
pub fn events(
    api: &ApiArgs,
    types: Option<String>,
    from: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let api = api.resolve()?;
    let mut query = Vec::new();
    if let Some(t) = types {
        query.push(format!("types={t}"));
    }
    if let Some(f) = from {
        query.push(format!("from={f}"));
    }
    let path = if query.is_empty() {
        "/events".to_string()
    } else {
        format!("/events?{}", query.join("&"))
    };
    let req = api
        .request("GET", &path)
        .header("accept", "text/event-stream")
        .body(())
        .map_err(|e| e.to_string())?;
    let response = api.agent(None).run(req).map_err(|e| api.unreachable(e))?;
    if response.status().as_u16() != 200 {
        return Err(api.finish(response)?.error_line());
    }
    let reader = std::io::BufReader::new(response.into_body().into_reader());
    let mut out = std::io::stdout().lock();
    for line in reader.lines() {
        let line = line.map_err(|e| format!("the event stream from {} broke: {e}", api.base))?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let text = if json {
            data.to_string()
        } else {
            match serde_json::from_str::<Value>(data) {
                Ok(v) => event_line(&v),
                Err(_) => data.to_string(),
            }
        };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            break; // stdout closed (e.g. piped into head)
        }
    }
    Err(format!("the node at {} closed the event stream", api.base))
}

/// One human line for an event: id, time, type and what matters of it.
pub fn event_line(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let what = match v["type"].as_str().unwrap_or("") {
        "message" => format!(
            "from {} ({} bytes, {} hops): {}",
            s("source"),
            v["bytes"],
            v["hops"],
            s("body").escape_debug()
        ),
        "script" => format!(
            "{} for {} exited {} in {} ms{}",
            s("name"),
            s("source"),
            v["exit_code"],
            v["duration_ms"],
            if v["timed_out"] == true {
                " (timed out)"
            } else {
                ""
            }
        ),
        "peer_up" => format!("{} over {} ({})", s("node"), s("transport"), s("kind")),
        "peer_down" => format!("{} over {}: {}", s("node"), s("transport"), s("reason")),
        "route" => {
            if v["reachable"] == true {
                format!(
                    "{} reachable via {} ({} hops)",
                    s("node"),
                    s("next_hop"),
                    v["hops"]
                )
            } else {
                format!("{} unreachable", s("node"))
            }
        }
        "punch" => format!(
            "{} {}{}",
            s("node"),
            s("outcome"),
            v["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        "delivery" => format!("{} to {}: {}", s("message_id"), s("target"), s("status")),
        "missed" | "lagged" => v.to_string(),
        _ => v.to_string(),
    };
    let time = v["time_unix_ms"].as_u64().map(clock).unwrap_or_default();
    let id = v["id"]
        .as_u64()
        .map(|i| i.to_string())
        .unwrap_or_else(|| "-".into());
    format!("{id:>6} {time} {:<9} {what}", s("type"))
}

/// `HH:MM:SS.mmm` UTC of a unix time in milliseconds.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

/// `msgtier check`.
pub fn check(path: &Path) -> Result<ExitCode, String> {
    let loaded = msgtier::config::load(path).map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&loaded.config.redacted_json()).unwrap_or_default()
    );
    eprintln!("{}: valid", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `msgtier id`.
pub fn id(path: &Path) -> Result<ExitCode, String> {
    let loaded = msgtier::config::load(path).map_err(|e| e.to_string())?;
    let identity = msgtier::identity::Identity::load_or_create(&loaded.config.data_dir)
        .map_err(|e| e.to_string())?;
    println!("id          {}", loaded.config.id);
    println!("network     {}", loaded.config.network);
    println!("public_key  {}", hex::encode(identity.public()));
    println!("signing_key {}", hex::encode(identity.signing_public()));
    Ok(ExitCode::SUCCESS)
}

/// A port free for both TCP and UDP on every address now.
fn free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port found".into())
}

/// `msgtier init`.
pub fn init(id: Option<String>, path: &Path) -> Result<ExitCode, String> {
    let id = match id {
        Some(id) => id,
        None => std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| msgtier::wire::frame::valid_id(h))
            .unwrap_or_else(|| "node".into()),
    };
    if !msgtier::wire::frame::valid_id(&id) {
        return Err(format!(
            "--id: {id:?} is not a valid node id (letters, digits, '.', '_', '-'; at most 64)"
        ));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no randomness: {e}"))?;
    let secret = hex::encode(secret);
    let (link_port, ws_port, api_port) = (free_port()?, free_port()?, free_port()?);
    let data_dir = format!("{id}-data");
    let text = format!(
        r#"// msgtier node config (JSON with comments). Check it with: msgtier check {file}
{{
  // This node's name in its network: unique among the members.
  "id": "{id}",
  // Every member of the network has the same secret; a node without it is refused.
  // Give it to your other nodes over a channel you trust.
  "secret": "{secret}",
  "network": "default",
  // Where other nodes reach this one. UDP links run QUIC; TCP and WebSocket are there for
  // networks that block UDP. 0.0.0.0 listens on every interface.
  "listeners": [
    "udp://0.0.0.0:{link_port}",
    "tcp://0.0.0.0:{link_port}",
    "ws://0.0.0.0:{ws_port}"
  ],
  // Nodes to dial at start, e.g. "udp://192.0.2.10:{link_port}"; the rest are found through them.
  "peers": [],
  // The HTTP API (curl, msgtier send/status/peers/events). Keep it on loopback, or set
  // "api_token" before you open it to other machines.
  "web_api": "127.0.0.1:{api_port}",
  // Named commands other members may run here: msgtier send {id} hello
  "scripts": {{
    "hello": "echo hello from {id}",
    "uptime": "uptime"
  }},
  // The identity key, the outbox and the inbox live here (relative to this file).
  "data_dir": "{data_dir}"
}}
"#,
        file = path.display()
    );
    // Refuse to overwrite; 0600 because the file holds the network secret.
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut file = o.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!("{} exists already; not overwriting it", path.display())
        }
        _ => format!("cannot create {}: {e}", path.display()),
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // What we wrote must load.
    msgtier::config::load(path)
        .map_err(|e| format!("the new config does not load (a bug): {e}"))?;
    let p = path.display();
    println!("wrote {p} (node {id:?}, API on 127.0.0.1:{api_port}, links on port {link_port})");
    println!();
    println!("start it:        msgtier {p}");
    println!("look at it:      msgtier status --config {p}");
    println!(
        "add a peer:      put its address in \"peers\", e.g. \"udp://192.0.2.10:{link_port}\","
    );
    println!("                 and give it the same \"secret\" and \"network\"");
    println!("send a message:  msgtier send --config {p} <peer id> 'hello there'");
    Ok(ExitCode::SUCCESS)
}
