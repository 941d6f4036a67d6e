//! The names of all figures and the one table they are printed in.
//!
//! Columns: metric | msgtier | libp2p | ratio | ceiling (machine) | target. Each cell is the
//! median over the runs with the min-max range in parentheses; `ratio` is msgtier's median over
//! libp2p's (below 1 is better for times, above 1 for rates); the ceiling is what this machine
//! can do at best for the same kind of work (loopback TCP, one core of AEAD), measured in the
//! same session. The table is Markdown, so it pastes into BENCHMARKS.md as it is.

use crate::stats::{Results, Summary};

/// Figure names, as recorded by the scenarios.
pub mod key {
    pub const RTT1_P50: &str = "rtt1.p50_us";
    pub const RTT1_P90: &str = "rtt1.p90_us";
    pub const RTT1_P99: &str = "rtt1.p99_us";
    pub const RTT2_P50: &str = "rtt2.p50_us";
    pub const RTT2_P90: &str = "rtt2.p90_us";
    pub const RTT2_P99: &str = "rtt2.p99_us";
    pub const RTT1_PIN_P50: &str = "rtt1.pinned_p50_us";
    pub const RTT1_PIN_P99: &str = "rtt1.pinned_p99_us";
    pub const RTT2_PIN_P50: &str = "rtt2.pinned_p50_us";
    pub const RTT2_PIN_P99: &str = "rtt2.pinned_p99_us";
    pub const RATE_HTTP: &str = "rate.http_msgs";
    pub const RATE_HTTP_EVENTS: &str = "rate.http_events_msgs";
    pub const RATE_INPROC: &str = "rate.inproc_msgs";
    pub const DURABLE_ONLINE: &str = "durable.online_msgs";
    pub const DURABLE_QUEUED: &str = "durable.queued_msgs";
    pub const DURABLE_DRAIN: &str = "durable.drain_msgs";
    pub const BULK_TCP: &str = "bulk.tcp_mbs";
    pub const BULK_WS: &str = "bulk.ws_mbs";
    pub const BULK_UDP: &str = "bulk.udp_mbs";
    pub const BULK_TCP_PING_AVG: &str = "bulk.tcp_ping_avg_ms";
    pub const BULK_TCP_PING_MAX: &str = "bulk.tcp_ping_max_ms";
    pub const BULK_WS_PING_AVG: &str = "bulk.ws_ping_avg_ms";
    pub const BULK_WS_PING_MAX: &str = "bulk.ws_ping_max_ms";
    pub const RSS_IDLE: &str = "rss.idle_mib";
    pub const RSS_IDLE_ANON: &str = "rss.idle_anon_mib";
    pub const RSS_AFTER_A: &str = "rss.after_sender_mib";
    pub const RSS_AFTER_B: &str = "rss.after_receiver_mib";
    pub const MESH_RSS_MED: &str = "mesh.rss_median_mib";
    pub const MESH_RSS_MAX: &str = "mesh.rss_max_mib";
    pub const MESH_CONVERGE: &str = "mesh.converge_s";
    pub const PUBLISH_P50: &str = "topics.publish_p50_us";
    pub const PUBLISH_P99: &str = "topics.publish_p99_us";
    pub const FANOUT_P50: &str = "topics.fanout_p50_us";
    pub const FANOUT_P99: &str = "topics.fanout_p99_us";
    pub const RESTART_ACTIVE: &str = "recovery.restart_ms";
    pub const STOP_DISCONNECTED: &str = "recovery.sigstop_ms";
    pub const LP_RTT_P50: &str = "libp2p.rtt_p50_us";
    pub const LP_RTT_P90: &str = "libp2p.rtt_p90_us";
    pub const LP_RTT_P99: &str = "libp2p.rtt_p99_us";
    pub const LP_RATE: &str = "libp2p.rate_msgs";
    pub const LP_BULK: &str = "libp2p.bulk_mbs";
    pub const INPROC_RTT_P50: &str = "inproc.rtt_p50_us";
    pub const INPROC_RTT_P99: &str = "inproc.rtt_p99_us";
    pub const LP_STREAM_RTT_P50: &str = "libp2p.stream_rtt_p50_us";
    pub const LP_STREAM_RTT_P99: &str = "libp2p.stream_rtt_p99_us";
    pub const RELAY_GOODPUT: &str = "relay.goodput_share";
    pub const LOSS1_UDP: &str = "lossy.udp_1pct_mbs";
    pub const LOSS3_UDP: &str = "lossy.udp_3pct_mbs";
    pub const TCP_P50: &str = "ceiling.tcp_p50_us";
    pub const TCP_P99: &str = "ceiling.tcp_p99_us";
    pub const TCP_1CORE_P50: &str = "ceiling.tcp_1core_p50_us";
    pub const TCP_1CORE_P99: &str = "ceiling.tcp_1core_p99_us";
    pub const AEAD_64_MBS: &str = "ceiling.aead64_mbs";
    pub const AEAD_64_MSGS: &str = "ceiling.aead64_msgs";
    pub const AEAD_1K_MBS: &str = "ceiling.aead1k_mbs";
    pub const AEAD_1K_MSGS: &str = "ceiling.aead1k_msgs";
    pub const AEAD_64K_MBS: &str = "ceiling.aead64k_mbs";
    pub const AEAD_64K_MSGS: &str = "ceiling.aead64k_msgs";
    pub const AEAD_CRATE_64_MBS: &str = "ceiling.aead_crate64_mbs";
    pub const AEAD_CRATE_64K_MBS: &str = "ceiling.aead_crate64k_mbs";
}

/// A goal shown next to a figure (never asserted).
#[derive(Clone, Copy)]
enum Target {
    /// 1-hop p50 <= libp2p rtt p50.
    RttVsLibp2p,
    /// 2-hop p50 <= 1.5 x 1-hop p50.
    TwoHops,
    /// The same with every node on CPU 0 and the client on CPU 1.
    TwoHopsPinned,
    /// msgs/s >= 3 x libp2p rate.
    RateVsLibp2p,
    /// bulk TCP >= half the 64 KiB AEAD rate and >= libp2p bulk.
    BulkTcp,
    /// idle RSS <= 8 MiB.
    IdleRss,
    /// UDP (QUIC) bulk >= 80 % of TCP bulk.
    UdpVsTcp,
    /// relay goodput within 90-110 % of the budget.
    RelayBudget,
    /// 50-node mesh converged <= 10 s.
    Converge,
}

impl Target {
    fn text(self) -> &'static str {
        match self {
            Target::RttVsLibp2p => "<= libp2p p50",
            Target::TwoHops => "<= 1.5x 1-hop p50",
            Target::TwoHopsPinned => "<= 1.5x pinned 1-hop p50",
            Target::RateVsLibp2p => ">= 3x libp2p rate",
            Target::BulkTcp => ">= 1/2 AEAD 64 KiB, >= libp2p",
            Target::IdleRss => "<= 8 MiB",
            Target::UdpVsTcp => ">= 0.8x TCP bulk",
            Target::RelayBudget => "0.9-1.1 of the budget",
            Target::Converge => "<= 10 s",
        }
    }

    /// Met or missed on the medians; `None` when a figure it needs is missing.
    fn met(self, r: &Results, ours: &str) -> Option<bool> {
        let v = r.median(ours)?;
        Some(match self {
            Target::RttVsLibp2p => v <= r.median(key::LP_RTT_P50)?,
            Target::TwoHops => v <= 1.5 * r.median(key::RTT1_P50)?,
            Target::TwoHopsPinned => v <= 1.5 * r.median(key::RTT1_PIN_P50)?,
            Target::RateVsLibp2p => v >= 3.0 * r.median(key::LP_RATE)?,
            Target::BulkTcp => {
                let aead = v >= 0.5 * r.median(key::AEAD_64K_MBS)?;
                // Without the libp2p figure only the AEAD half can be judged.
                aead && r.median(key::LP_BULK).is_none_or(|lp| v >= lp)
            }
            Target::IdleRss => v <= 8.0,
            Target::UdpVsTcp => v >= 0.8 * r.median(key::BULK_TCP)?,
            Target::RelayBudget => (0.9..=1.1).contains(&v),
            Target::Converge => v <= 10.0,
        })
    }
}

/// One line of the table.
struct Row {
    /// What is measured, with its unit.
    label: &'static str,
    /// msgtier's figure.
    ours: Option<&'static str>,
    /// libp2p's figure for the same thing.
    lp: Option<&'static str>,
    /// The machine's ceiling for it, with a short tag saying which.
    ceiling: Option<(&'static str, &'static str)>,
    /// The goal, if any.
    target: Option<Target>,
}

const fn row(label: &'static str, ours: &'static str) -> Row {
    Row {
        label,
        ours: Some(ours),
        lp: None,
        ceiling: None,
        target: None,
    }
}

fn rows() -> Vec<Row> {
    use key::*;
    let tcp50 = Some((TCP_P50, "TCP ping-pong p50"));
    let tcp99 = Some((TCP_P99, "TCP ping-pong p99"));
    let aead64 = Some((AEAD_64_MSGS, "AEAD 64 B msg/s"));
    let aead64k = Some((AEAD_64K_MBS, "AEAD 64 KiB"));
    let ceiling_only = |label, k| Row {
        label,
        ours: None,
        lp: None,
        ceiling: Some((k, "")),
        target: None,
    };
    vec![
        Row {
            lp: Some(LP_RTT_P50),
            ceiling: tcp50,
            target: Some(Target::RttVsLibp2p),
            ..row("RTT 1 hop p50 (us)", RTT1_P50)
        },
        Row {
            lp: Some(LP_RTT_P90),
            ..row("RTT 1 hop p90 (us)", RTT1_P90)
        },
        Row {
            lp: Some(LP_RTT_P99),
            ceiling: tcp99,
            ..row("RTT 1 hop p99 (us)", RTT1_P99)
        },
        Row {
            target: Some(Target::TwoHops),
            ..row("RTT 2 hops p50 (us)", RTT2_P50)
        },
        row("RTT 2 hops p90 (us)", RTT2_P90),
        row("RTT 2 hops p99 (us)", RTT2_P99),
        Row {
            ceiling: Some((TCP_1CORE_P50, "TCP ping-pong 1 CPU p50")),
            ..row(
                "RTT 1 hop p50, every node on CPU 0, client on CPU 1 (us)",
                RTT1_PIN_P50,
            )
        },
        row("RTT 1 hop p99, pinned as above (us)", RTT1_PIN_P99),
        Row {
            target: Some(Target::TwoHopsPinned),
            ..row("RTT 2 hops p50, pinned as above (us)", RTT2_PIN_P50)
        },
        row("RTT 2 hops p99, pinned as above (us)", RTT2_PIN_P99),
        Row {
            lp: Some(LP_RATE),
            ceiling: aead64,
            target: Some(Target::RateVsLibp2p),
            ..row("rate 1 hop, HTTP, 64 connections (msg/s)", RATE_HTTP)
        },
        Row {
            lp: Some(LP_RATE),
            ..row(
                "rate as above, 4 event-stream clients reading on the receiver (msg/s)",
                RATE_HTTP_EVENTS,
            )
        },
        Row {
            lp: Some(LP_RATE),
            ceiling: aead64,
            target: Some(Target::RateVsLibp2p),
            ..row(
                "rate 1 hop, in-process Send into the RelayActor, 1000 in flight (msg/s)",
                RATE_INPROC,
            )
        },
        row(
            "durable (ttl) 1 hop, HTTP, 64 connections, target online (msg/s)",
            DURABLE_ONLINE,
        ),
        row(
            "durable (ttl) queued into the outbox, target offline, 64 connections (msg/s)",
            DURABLE_QUEUED,
        ),
        row(
            "durable outbox drain once the target is back (msg/s)",
            DURABLE_DRAIN,
        ),
        Row {
            lp: Some(LP_STREAM_RTT_P50),
            ceiling: tcp50,
            ..row(
                "RTT node to node, in-process Send, 1 in flight, p50 (us; libp2p: one stream)",
                INPROC_RTT_P50,
            )
        },
        Row {
            lp: Some(LP_STREAM_RTT_P99),
            ceiling: tcp99,
            ..row(
                "RTT node to node, in-process Send, 1 in flight, p99 (us)",
                INPROC_RTT_P99,
            )
        },
        Row {
            target: Some(Target::RelayBudget),
            ..row(
                "relay goodput through a public node, 200 KB/s budget, 24 closed-loop senders \
                 (share of the budget)",
                RELAY_GOODPUT,
            )
        },
        Row {
            lp: Some(LP_BULK),
            ceiling: aead64k,
            target: Some(Target::BulkTcp),
            ..row("bulk 1 MiB, TCP, 4 connections (MB/s)", BULK_TCP)
        },
        Row {
            lp: Some(LP_BULK),
            ceiling: aead64k,
            ..row("bulk 1 MiB, WebSocket, 4 connections (MB/s)", BULK_WS)
        },
        Row {
            lp: Some(LP_BULK),
            ceiling: aead64k,
            target: Some(Target::UdpVsTcp),
            ..row("bulk 1 MiB, UDP (QUIC), 4 connections (MB/s)", BULK_UDP)
        },
        row(
            "goodput 1 MiB over UDP (QUIC), 1 % loss each way, 1 at a time (MB/s; root only)",
            LOSS1_UDP,
        ),
        row(
            "goodput 1 MiB over UDP (QUIC), 3 % loss each way, 1 at a time (MB/s; root only)",
            LOSS3_UDP,
        ),
        row(
            "ping RTT on the link during TCP bulk, avg (ms; heartbeat 100 ms)",
            BULK_TCP_PING_AVG,
        ),
        row(
            "ping RTT on the link during TCP bulk, max (ms)",
            BULK_TCP_PING_MAX,
        ),
        row(
            "ping RTT on the link during WebSocket bulk, avg (ms)",
            BULK_WS_PING_AVG,
        ),
        row(
            "ping RTT on the link during WebSocket bulk, max (ms)",
            BULK_WS_PING_MAX,
        ),
        Row {
            target: Some(Target::IdleRss),
            ..row("RSS idle, 1 node with 1 peer (MiB)", RSS_IDLE)
        },
        row(
            "RSS idle as above, anonymous part (MiB; the rest is the binary's shared code)",
            RSS_IDLE_ANON,
        ),
        row("RSS after 100k messages, sender (MiB)", RSS_AFTER_A),
        row("RSS after 100k messages, receiver (MiB)", RSS_AFTER_B),
        row("RSS per node, 50-node mesh, median (MiB)", MESH_RSS_MED),
        row("RSS per node, 50-node mesh, max (MiB)", MESH_RSS_MAX),
        Row {
            target: Some(Target::Converge),
            ..row("50-node mesh: start to all routes (s)", MESH_CONVERGE)
        },
        row(
            "publish to all 19 subscribers, 20-node mesh, p50 (us)",
            PUBLISH_P50,
        ),
        row(
            "publish to all 19 subscribers, 20-node mesh, p99 (us)",
            PUBLISH_P99,
        ),
        row(
            "fan-out `target: *` to 20 nodes, answered, p50 (us)",
            FANOUT_P50,
        ),
        row(
            "fan-out `target: *` to 20 nodes, answered, p99 (us)",
            FANOUT_P99,
        ),
        row("peer restart to Active (ms)", RESTART_ACTIVE),
        row(
            "peer SIGSTOP to Disconnected (ms; peer_timeout_ms 3000, heartbeat 500)",
            STOP_DISCONNECTED,
        ),
        ceiling_only("loopback TCP ping-pong 64 B p50 (us)", TCP_P50),
        ceiling_only("loopback TCP ping-pong 64 B p99 (us)", TCP_P99),
        ceiling_only(
            "loopback TCP ping-pong 64 B, both threads on one CPU, p50 (us)",
            TCP_1CORE_P50,
        ),
        ceiling_only(
            "loopback TCP ping-pong 64 B, both threads on one CPU, p99 (us)",
            TCP_1CORE_P99,
        ),
        ceiling_only("ChaCha20-Poly1305 one core, 64 B (MB/s)", AEAD_64_MBS),
        ceiling_only("ChaCha20-Poly1305 one core, 64 B (msg/s)", AEAD_64_MSGS),
        ceiling_only("ChaCha20-Poly1305 one core, 1 KiB (MB/s)", AEAD_1K_MBS),
        ceiling_only("ChaCha20-Poly1305 one core, 1 KiB (msg/s)", AEAD_1K_MSGS),
        ceiling_only("ChaCha20-Poly1305 one core, 64 KiB (MB/s)", AEAD_64K_MBS),
        ceiling_only("ChaCha20-Poly1305 one core, 64 KiB (msg/s)", AEAD_64K_MSGS),
        ceiling_only(
            "ChaCha20-Poly1305 one core, 64 B, crate chacha20poly1305 (MB/s)",
            AEAD_CRATE_64_MBS,
        ),
        ceiling_only(
            "ChaCha20-Poly1305 one core, 64 KiB, crate chacha20poly1305 (MB/s)",
            AEAD_CRATE_64K_MBS,
        ),
    ]
}

/// A number with as many digits as it deserves.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn summary_text(s: Summary) -> String {
    if s.runs > 1 {
        format!("{} ({}-{})", num(s.median), num(s.min), num(s.max))
    } else {
        num(s.median)
    }
}

/// A figure's cell: median (min-max), a failure, or `missing`.
fn cell(r: &Results, k: &str, missing: &str) -> String {
    let failed = r.failure(k);
    match (r.summary(k), failed) {
        (Some(s), None) => summary_text(s),
        (Some(s), Some((n, _))) => format!("{} [{n} run(s) failed]", summary_text(s)),
        (None, Some((n, why))) => format!("{why} ({n} run(s))"),
        (None, None) => missing.to_string(),
    }
}

/// The table, as Markdown. `libp2p_missing` makes the libp2p column "n/a".
pub fn table(r: &Results, libp2p_missing: bool) -> String {
    let header = [
        "metric",
        "msgtier",
        "libp2p",
        "ratio",
        "ceiling (machine)",
        "target",
    ];
    let mut lines: Vec<[String; 6]> = Vec::new();
    for row in rows() {
        let has_data =
            |k: Option<&str>| k.is_some_and(|k| r.summary(k).is_some() || r.failure(k).is_some());
        // A msgtier row needs a msgtier or libp2p figure; a ceiling-only row its ceiling.
        let shown = match row.ours {
            Some(_) => has_data(row.ours) || has_data(row.lp),
            None => has_data(row.ceiling.map(|c| c.0)),
        };
        if !shown {
            continue;
        }
        let ours = row.ours.map(|k| cell(r, k, "-")).unwrap_or_default();
        let lp = match row.lp {
            None => String::new(),
            Some(_) if libp2p_missing => "n/a".into(),
            Some(k) => cell(r, k, "n/a"),
        };
        let ratio = match (row.ours, row.lp) {
            (Some(o), Some(l)) => match (r.median(o), r.median(l)) {
                (Some(o), Some(l)) if l > 0.0 => format!("{:.2}x", o / l),
                _ => "n/a".into(),
            },
            _ => String::new(),
        };
        let ceiling = match row.ceiling {
            Some((k, tag)) if row.ours.is_some() => r
                .median(k)
                .map(|v| format!("{} {tag}", num(v)))
                .unwrap_or_else(|| "n/a".into()),
            Some((k, _)) => cell(r, k, "n/a"),
            None => String::new(),
        };
        let target = match (row.target, row.ours) {
            (Some(t), Some(o)) => match t.met(r, o) {
                Some(true) => format!("met ({})", t.text()),
                Some(false) => format!("missed ({})", t.text()),
                None => format!("n/a ({})", t.text()),
            },
            _ => String::new(),
        };
        lines.push([row.label.to_string(), ours, lp, ratio, ceiling, target]);
    }
    let mut widths = header.map(str::len);
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt_line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let mut out = String::new();
    out.push_str(&fmt_line(&header.map(String::from)));
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for l in &lines {
        out.push_str(&fmt_line(l));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_median_range_ratio_and_target() {
        let mut r = Results::default();
        for (a, b) in [(100.0, 200.0), (110.0, 220.0), (90.0, 180.0)] {
            r.add(key::RTT1_P50, a);
            r.add(key::LP_RTT_P50, b);
        }
        r.fail(key::MESH_CONVERGE, "timeout > 120 s");
        let t = table(&r, false);
        assert!(t.contains("| RTT 1 hop p50 (us)"), "{t}");
        assert!(t.contains("100 (90.0-110)"), "{t}");
        assert!(t.contains("0.50x"), "{t}");
        assert!(t.contains("met (<= libp2p p50)"), "{t}");
        assert!(t.contains("timeout > 120 s (1 run(s))"), "{t}");
        assert!(
            !t.contains("RTT 2 hops"),
            "rows without data are left out: {t}"
        );
        assert!(
            table(&r, true).contains("| n/a "),
            "libp2p missing shows n/a"
        );
    }
}
