//! Bulk: 1 MiB plain messages, 1 hop, over each of TCP, WebSocket and UDP. For each transport a
//! fresh pair listens and links on that transport only, with `max_frame_bytes` 2 MiB and
//! `max_body_bytes` 1 MiB + 1 KiB so a 1 MiB body fits in one frame; 4 concurrent keep-alive
//! HTTP connections post to A. Reported: payload MB/s (10^6 bytes/s) of messages answered with a
//! receipt. Messages that time out (UDP loses datagrams under load, and one lost fragment loses
//! the frame) are counted in the notes and not in the figure; when no warm-up message gets
//! through, the measured batch is skipped (it would only wait out its timeouts) and the cell
//! says so. For UDP the kernel's receive-buffer drop counter is reported alongside. The pair
//! pings every 100 ms; for TCP and WebSocket the link's ping RTT (avg and max, from `/status`)
//! over the run is reported too: pings travel in the control lane, ahead of queued data.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::{body, check_delivered, note_errors, Ctx, LINK_UP_TIMEOUT};
use crate::load;
use crate::node::Spec;
use crate::report::key;
use crate::stats::Results;

/// Message size: 1 MiB.
pub const MESSAGE_BYTES: usize = 1 << 20;
/// Concurrent HTTP connections.
const CONNECTIONS: usize = 4;
/// Per-message timeout (the `timeout` header): a lost message costs this much of one connection.
const SEND_TIMEOUT_MS: u64 = 5_000;
/// Heartbeat of the pair, so the link's RTT figures come from many pings under load.
const PING_INTERVAL_MS: u64 = 100;

/// Runs the bulk measurement on each transport.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let (warmup, count) = ctx.pick((8u64, 200u64), (4, 24));
    let msg = Arc::new(body(MESSAGE_BYTES));
    for (transport, k) in [
        ("tcp", key::BULK_TCP),
        ("ws", key::BULK_WS),
        ("udp", key::BULK_UDP),
    ] {
        let dir = ctx.subdir(&format!("bulk-{transport}"))?;
        let big = |s: Spec| {
            s.set("max_frame_bytes", json!(2 << 20))
                .set("max_body_bytes", json!(MESSAGE_BYTES + 1024))
                .set("heartbeat_interval_ms", json!(PING_INTERVAL_MS))
        };
        let (a, b) = ctx.start_pair(&dir, transport, big)?;
        if let Err(e) = a.wait_route("b", 1, LINK_UP_TIMEOUT) {
            res.fail(k, "no link");
            res.note(format!("bulk {transport}: {e:#}"));
            continue;
        }
        let bound = Duration::from_secs(30);
        let what = format!("bulk {transport}");
        let drops_before = udp_rcvbuf_errors();
        let warm = load::concurrent(
            a.http_port(),
            "b",
            msg.clone(),
            CONNECTIONS,
            warmup,
            SEND_TIMEOUT_MS,
            bound,
        )?;
        note_errors(res, &format!("{what} warm-up"), &warm);
        // The warm-up doubles as a probe: if nothing got through, the measured batch would
        // only wait out its timeouts.
        let out = if warm.ok == 0 {
            res.fail(k, format!("0 of {warmup} delivered"));
            None
        } else {
            let out = load::concurrent(
                a.http_port(),
                "b",
                msg.clone(),
                CONNECTIONS,
                count,
                SEND_TIMEOUT_MS,
                bound,
            )?;
            note_errors(res, &what, &out);
            if out.ok == 0 {
                res.fail(k, format!("0 of {count} delivered"));
            } else {
                let bytes = out.ok as f64 * MESSAGE_BYTES as f64;
                res.add(k, bytes / out.elapsed.as_secs_f64() / 1e6);
            }
            Some(out)
        };
        if transport == "udp" {
            if let (Some(before), Some(after)) = (drops_before, udp_rcvbuf_errors()) {
                if after > before {
                    res.note(format!(
                        "{what}: the kernel dropped {} UDP datagrams at full receive buffers \
                         (RcvbufErrors in /proc/net/snmp; net.core.rmem_default {} bytes)",
                        after - before,
                        std::fs::read_to_string("/proc/sys/net/core/rmem_default")
                            .map(|s| s.trim().to_string())
                            .unwrap_or_else(|_| "?".into())
                    ));
                }
            }
        }
        let ping_keys = match transport {
            "tcp" => Some((key::BULK_TCP_PING_AVG, key::BULK_TCP_PING_MAX)),
            "ws" => Some((key::BULK_WS_PING_AVG, key::BULK_WS_PING_MAX)),
            _ => None,
        };
        if let Some((avg_key, max_key)) = ping_keys {
            let rtt = a
                .peer("b")
                .map(|p| p["links"][0]["rtt_ms"].clone())
                .unwrap_or_default();
            match (rtt["avg"].as_f64(), rtt["max"].as_f64()) {
                (Some(avg), Some(max)) => {
                    res.add(avg_key, avg);
                    res.add(max_key, max);
                }
                _ => res.note(format!("{what}: no ping RTT on the link: {rtt}")),
            }
        }
        let ok = warm.ok + out.map_or(0, |o| o.ok);
        check_delivered(res, &what, &b, ok);
    }
    Ok(())
}

/// The machine-wide count of UDP datagrams dropped because a socket's receive buffer was full.
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp.next()?.split_whitespace();
    let values = udp.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
}
