//! Message rate over HTTP and the memory around it, on one pair A -> B (TCP link):
//!
//! 1. idle RSS of A once linked to B and settled;
//! 2. plain 64-byte messages per second through 64 concurrent keep-alive HTTP connections to A
//!    (100k messages after a warm-up), every one answered with a receipt from B;
//! 3. the same rate again with [`SUBSCRIBERS`] event-stream clients (`GET /events`) reading
//!    on B, which then renders and queues a `message` event per delivery for each: the cost of
//!    the event stream, side by side with step 2 in one run;
//! 4. RSS of A (sender) and B (receiver) right after, once settled.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{add_rate, body, check_delivered, note_errors, Ctx, LINK_UP_TIMEOUT};
use crate::load;
use crate::node::settled_rss_kib;
use crate::report::key;
use crate::stats::Results;

/// Size of the message body.
const BODY_BYTES: usize = 64;
/// Concurrent keep-alive connections to A's API.
const CONNECTIONS: usize = 64;
/// Event-stream clients on B in step 3.
const SUBSCRIBERS: usize = 4;

/// An SSE client that reads and discards everything, counting bytes.
struct Subscriber {
    stream: TcpStream,
    reader: JoinHandle<u64>,
}

impl Subscriber {
    fn open(port: u16) -> Result<Subscriber> {
        let mut stream = TcpStream::connect(crate::http::loopback(port))
            .context("connecting to the event stream")?;
        stream.write_all(b"GET /events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")?;
        let mut read = stream.try_clone()?;
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            while let Ok(n) = read.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            total
        });
        Ok(Subscriber { stream, reader })
    }

    /// Closes the stream; the bytes it read.
    fn close(self) -> u64 {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.reader.join().unwrap_or(0)
    }
}

/// Runs the idle RSS, rate and RSS-after measurements.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let dir = ctx.subdir("rate")?;
    let (warmup, count) = ctx.pick((5_000, 100_000), (1_000, 10_000));
    let (a, b) = ctx.start_pair(&dir, "tcp", |s| s)?;
    a.wait_route("b", 1, LINK_UP_TIMEOUT)?;

    match settled_rss_kib(a.pid(), Duration::from_secs(5)) {
        Some(kib) => res.add(key::RSS_IDLE, kib as f64 / 1024.0),
        None => res.fail(key::RSS_IDLE, "cannot read VmRSS"),
    }
    match crate::node::rss_anon_kib(a.pid()) {
        Some(kib) => res.add(key::RSS_IDLE_ANON, kib as f64 / 1024.0),
        None => res.fail(key::RSS_IDLE_ANON, "cannot read RssAnon"),
    }

    let msg = Arc::new(body(BODY_BYTES));
    let bound = Duration::from_secs(120);
    let warm = load::concurrent(
        a.http_port(),
        "b",
        msg.clone(),
        CONNECTIONS,
        warmup,
        10_000,
        bound,
    )?;
    note_errors(res, "rate warm-up", &warm);
    let out = load::concurrent(a.http_port(), "b", msg, CONNECTIONS, count, 10_000, bound)?;
    note_errors(res, "rate 1 hop HTTP", &out);
    add_rate(res, key::RATE_HTTP, &out, "no successful send");

    let subscribers = (0..SUBSCRIBERS)
        .map(|_| Subscriber::open(b.http_port()))
        .collect::<Result<Vec<_>>>()?;
    let msg = Arc::new(body(BODY_BYTES));
    let watched = load::concurrent(a.http_port(), "b", msg, CONNECTIONS, count, 10_000, bound)?;
    note_errors(res, "rate 1 hop HTTP with event streams", &watched);
    let read: Vec<u64> = subscribers.into_iter().map(Subscriber::close).collect();
    if read.iter().all(|&n| n >= watched.ok * BODY_BYTES as u64) {
        add_rate(res, key::RATE_HTTP_EVENTS, &watched, "no successful send");
    } else {
        res.fail(
            key::RATE_HTTP_EVENTS,
            format!("a subscriber missed events: bytes read {read:?}"),
        );
    }
    check_delivered(res, "rate 1 hop HTTP", &b, warm.ok + out.ok + watched.ok);

    let settle = Duration::from_secs(3);
    for (k, node) in [(key::RSS_AFTER_A, &a), (key::RSS_AFTER_B, &b)] {
        match settled_rss_kib(node.pid(), settle) {
            Some(kib) => res.add(k, kib as f64 / 1024.0),
            None => res.fail(k, "cannot read VmRSS"),
        }
    }
    Ok(())
}
