//! Traffic generators over the HTTP API: sequential round trips on one keep-alive connection,
//! and a fixed number of `POST /send` spread over N concurrent keep-alive connections.
//!
//! Both are bounded in count and in time, and tally every non-200 answer and I/O error by kind
//! instead of stopping, so a figure always comes with how many messages did not make it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::cleanup;
use crate::http::{self, AsyncConn, Conn};

/// What a batch of sends produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Answered 200.
    pub ok: u64,
    /// Everything else, by `"<status> <code>"` or `"io: <error>"`.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the batch.
    pub elapsed: Duration,
    /// The batch hit its time bound before its count.
    pub cut_short: bool,
}

impl Outcome {
    /// `"3 x 504 timeout, 1 x io: ..."`, or "" when there was no error.
    pub fn error_summary(&self) -> String {
        let mut parts: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{n} x {k}"))
            .collect();
        if self.cut_short {
            parts.push("stopped at the time bound".into());
        }
        parts.join(", ")
    }

    fn tally(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }
}

/// Sends `warmup` then `count` messages one after another on one keep-alive connection and
/// returns the measured round trips in microseconds (successful ones only) with the outcome.
/// `check` sees the first successful body (e.g. to verify the hop count).
pub fn sequential(
    port: u16,
    target: &str,
    body: &[u8],
    warmup: usize,
    count: usize,
    bound: Duration,
    check: impl FnOnce(&[u8]) -> Result<()>,
) -> Result<(Vec<f64>, Outcome)> {
    let head = http::send_head(target, body.len(), 10_000);
    let mut conn = Conn::connect(port, Duration::from_secs(15)).context("connect to the API")?;
    let mut check = Some(check);
    let mut out = Outcome::default();
    let mut rtts = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..warmup + count {
        if start.elapsed() > bound || cleanup::interrupted() {
            out.cut_short = true;
            break;
        }
        let t0 = Instant::now();
        let r = conn.request(&head, body);
        let dt = t0.elapsed();
        match r {
            Ok(200) => {
                if let Some(c) = check.take() {
                    c(conn.body())?;
                }
                if i >= warmup {
                    out.ok += 1;
                    rtts.push(dt.as_secs_f64() * 1e6);
                }
            }
            Ok(s) => out.tally(format!("{s} {}", http::error_code(conn.body()))),
            Err(e) => out.tally(format!("io: {e}")),
        }
    }
    out.elapsed = start.elapsed();
    Ok((rtts, out))
}

/// Sends `total` copies of `body` to `target` through `conns` concurrent keep-alive connections
/// to the API on `port` (one tokio thread), stopping at `bound`. Each request carries a
/// `timeout` header of `timeout_ms`.
pub fn concurrent(
    port: u16,
    target: &str,
    body: Arc<Vec<u8>>,
    conns: usize,
    total: u64,
    timeout_ms: u64,
    bound: Duration,
) -> Result<Outcome> {
    let head = http::send_head(target, body.len(), timeout_ms);
    concurrent_head(port, head, body, conns, total, timeout_ms, bound)
}

/// [`concurrent`] with a `ttl` header (seconds): durable messages; a 202 (queued) counts as
/// accepted like a 200.
#[allow(clippy::too_many_arguments)]
pub fn concurrent_ttl(
    port: u16,
    target: &str,
    body: Arc<Vec<u8>>,
    conns: usize,
    total: u64,
    timeout_ms: u64,
    ttl_s: u64,
    bound: Duration,
) -> Result<Outcome> {
    let head = http::send_head_ttl(target, body.len(), timeout_ms, ttl_s);
    concurrent_head(port, head, body, conns, total, timeout_ms, bound)
}

fn concurrent_head(
    port: u16,
    head: Vec<u8>,
    body: Arc<Vec<u8>>,
    conns: usize,
    total: u64,
    timeout_ms: u64,
    bound: Duration,
) -> Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let head = Arc::new(head);
    let next = Arc::new(AtomicU64::new(0));
    let per_request = Duration::from_millis(timeout_ms + 5_000);
    rt.block_on(async move {
        let start = Instant::now();
        let deadline = start + bound;
        let mut tasks = Vec::with_capacity(conns);
        for _ in 0..conns {
            let (head, body, next) = (head.clone(), body.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Outcome::default();
                let mut conn = match AsyncConn::connect(port).await {
                    Ok(c) => c,
                    Err(e) => {
                        out.tally(format!("io: connect: {e}"));
                        return out;
                    }
                };
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    if Instant::now() > deadline || cleanup::interrupted() {
                        out.cut_short = true;
                        break;
                    }
                    match tokio::time::timeout(per_request, conn.request(&head, &body)).await {
                        Ok(Ok(200 | 202)) => out.ok += 1,
                        Ok(Ok(s)) => out.tally(format!("{s} {}", http::error_code(conn.body()))),
                        Ok(Err(e)) => out.tally(format!("io: {e}")),
                        Err(_) => {
                            out.tally("no HTTP answer in time".into());
                            conn = match AsyncConn::connect(port).await {
                                Ok(c) => c,
                                Err(_) => break,
                            };
                        }
                    }
                }
                out
            }));
        }
        let mut sum = Outcome::default();
        for t in tasks {
            match t.await {
                Ok(o) => {
                    sum.ok += o.ok;
                    sum.cut_short |= o.cut_short;
                    for (k, n) in o.errors {
                        *sum.errors.entry(k).or_default() += n;
                    }
                }
                Err(e) => sum.tally(format!("task: {e}")),
            }
        }
        sum.elapsed = start.elapsed();
        Ok(sum)
    })
}
