//! `GET /metrics`: the node's figures in the Prometheus text format (0.0.4), through
//! `prometheus-client`.
//!
//! One source of truth: a scrape asks the actors for exactly what `GET /status` shows
//! ([`super::gather_status`]) and renders it with a [`Collector`], so the two never disagree;
//! only the two histograms (script run time, `/send` latency) live in [`crate::metrics`] alone.
//! Names follow the Prometheus conventions: prefix `msgtier_`, base units (`_seconds`,
//! `_bytes`), `_total` on counters (the encoder adds it), an `msgtier_build_info` gauge.
//!
//! Label cardinality is bounded: `peer` takes at most the known-node limit
//! ([`crate::proto::peer_table::MAX_KNOWN_NODES`], 1024) values, `transport` three, `network`
//! the foreign networks this node admits (bounded by its relay tables), and every `reason`,
//! `outcome` and `state` label comes from a fixed list.

use actix_web::{web, HttpResponse};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{ApiError, ApiState, Status};
use crate::metrics::Metrics;
use crate::proto::peer_state::PeerState;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub async fn metrics(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let status = super::gather_status(&state).await?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector {
        status,
        metrics: state.node.metrics.clone(),
    }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .map_err(|_| ApiError::BadRequest("metrics could not be encoded".into()))?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}

/// One scrape's figures.
#[derive(Debug)]
struct NodeCollector {
    status: Status,
    metrics: std::sync::Arc<Metrics>,
}

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: `rows` of (labels, value).
fn family<V: Value>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        let fam = m.encode_family(&labels)?;
        v.encode(fam, kind)?;
    }
    Ok(())
}

/// Writes one metric without labels.
fn single<V: Value>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    v: V,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, kind)?;
    v.encode(m, kind)
}

/// A sample value: counters and gauges of integers or seconds.
trait Value {
    fn encode(self, m: MetricEncoder, kind: MetricType) -> Result<(), std::fmt::Error>;
}

impl Value for u64 {
    fn encode(self, mut m: MetricEncoder, kind: MetricType) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(&self, None),
            _ => m.encode_gauge(&self),
        }
    }
}

impl Value for f64 {
    fn encode(self, mut m: MetricEncoder, kind: MetricType) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => m.encode_counter::<NoLabelSet, _, f64>(&self, None),
            _ => m.encode_gauge(&self),
        }
    }
}

fn label(key: &'static str, v: impl Into<String>) -> Labels {
    vec![(key, v.into())]
}

fn by_label<'a>(
    key: &'static str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) -> Vec<(Labels, u64)> {
    rows.into_iter().map(|(k, v)| (label(key, k), v)).collect()
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &crate::metrics::Histogram,
) -> Result<(), std::fmt::Error> {
    let (sum, count, buckets) = h.snapshot();
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

const C: MetricType = MetricType::Counter;
const G: MetricType = MetricType::Gauge;

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.status;
        let e = &mut enc;
        {
            let mut m = e.encode_descriptor(
                "msgtier_build",
                "This node: its version, id, network and identity key (always 1)",
                None,
                MetricType::Info,
            )?;
            let labels: Labels = vec![
                ("version", s.version.to_string()),
                ("id", s.id.clone()),
                ("network", s.network.clone()),
                ("public_key", s.public_key.clone()),
            ];
            m.encode_info(&labels)?;
        }
        single(
            e,
            "msgtier_uptime_seconds",
            "Time since the node started",
            G,
            s.uptime_ms as f64 / 1000.0,
        )?;

        // Peers and links.
        let peers = &s.discovery.peers;
        let states = [
            (PeerState::Init, "Init"),
            (PeerState::Active, "Active"),
            (PeerState::Disconnected, "Disconnected"),
        ];
        family(
            e,
            "msgtier_peers",
            "Known nodes of this network by state (Active includes nodes reached through a relay)",
            G,
            states.iter().map(|(st, name)| {
                let n = peers.iter().filter(|p| p.state == *st).count() as u64;
                (label("state", *name), n)
            }),
        )?;
        let mut links: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
        for t in ["udp", "tcp", "ws"] {
            for (_, name) in &states {
                links.insert((t, name), 0);
            }
        }
        for l in peers.iter().flat_map(|p| &p.links) {
            let name = states
                .iter()
                .find(|(st, _)| *st == l.state)
                .map_or("Init", |(_, n)| n);
            *links.entry((l.transport.as_str(), name)).or_default() += 1;
        }
        family(
            e,
            "msgtier_links",
            "Links to other nodes by transport and state",
            G,
            links.into_iter().map(|((t, st), n)| {
                (
                    vec![("transport", t.to_string()), ("state", st.to_string())],
                    n,
                )
            }),
        )?;
        let rtt_rows = |pick: fn(&crate::actors::discovery::RttReport) -> f64| {
            peers
                .iter()
                .flat_map(|p| p.links.iter().map(move |l| (p, l)))
                .filter_map(move |(p, l)| {
                    let rtt = l.rtt_ms.as_ref()?;
                    let labels = vec![
                        ("peer", p.id.clone()),
                        ("transport", l.transport.as_str().to_string()),
                        ("direction", l.direction.to_string()),
                    ];
                    // Whole microseconds: ms / 1000 would print binary noise (0.00034300000000000004).
                    Some((labels, (pick(rtt) * 1000.0).round() / 1e6))
                })
                .collect::<Vec<_>>()
        };
        for (name, help, pick) in [
            (
                "msgtier_link_rtt_seconds",
                "Last heartbeat round trip of a link",
                (|r| r.last) as fn(&crate::actors::discovery::RttReport) -> f64,
            ),
            (
                "msgtier_link_rtt_min_seconds",
                "Smallest heartbeat round trip of a link",
                |r| r.min,
            ),
            (
                "msgtier_link_rtt_max_seconds",
                "Largest heartbeat round trip of a link",
                |r| r.max,
            ),
            (
                "msgtier_link_rtt_avg_seconds",
                "Average heartbeat round trip of a link",
                |r| r.avg,
            ),
        ] {
            family(e, name, help, G, rtt_rows(pick))?;
        }
        family(
            e,
            "msgtier_link_last_heard_seconds",
            "Time since a link last heard its peer",
            G,
            peers.iter().flat_map(|p| {
                p.links.iter().filter_map(move |l| {
                    let ago = l.last_heard_ms_ago?;
                    let labels = vec![
                        ("peer", p.id.clone()),
                        ("transport", l.transport.as_str().to_string()),
                        ("direction", l.direction.to_string()),
                    ];
                    Some((labels, ago as f64 / 1000.0))
                })
            }),
        )?;
        family(
            e,
            "msgtier_route_hops",
            "Links on the path to a reachable node (1: direct)",
            G,
            peers
                .iter()
                .filter_map(|p| Some((label("peer", p.id.clone()), u64::from(p.hops?)))),
        )?;

        // Link counters.
        let c = &s.counters;
        for (name, help, v) in [
            (
                "msgtier_frames_received",
                "Authenticated frames received on links",
                c.frames_in,
            ),
            ("msgtier_frames_sent", "Records sent on links", c.frames_out),
            (
                "msgtier_received_bytes",
                "Bytes received on links, as on the wire",
                c.bytes_in,
            ),
            (
                "msgtier_sent_bytes",
                "Bytes sent on links, as on the wire",
                c.bytes_out,
            ),
            (
                "msgtier_links_established",
                "Links that reached Active",
                c.links_established,
            ),
            (
                "msgtier_links_closed",
                "Links closed for any reason",
                c.links_closed,
            ),
            (
                "msgtier_datagrams_dropped",
                "UDP datagrams of ours (not QUIC) dropped",
                c.datagrams_dropped,
            ),
            (
                "msgtier_frames_dropped",
                "Data or link-state frames dropped at a full queue",
                c.frames_dropped,
            ),
            (
                "msgtier_quic_retries_sent",
                "QUIC Retry packets sent to new connections under load",
                c.cookies_sent,
            ),
            (
                "msgtier_punches_refused",
                "Punch frames this node had not asked for",
                s.punches_refused,
            ),
        ] {
            single(e, name, help, C, v)?;
        }
        family(
            e,
            "msgtier_links_refused",
            "Links this node refused or closed, by reason",
            C,
            by_label("reason", c.links_refused.by_reason()),
        )?;
        family(
            e,
            "msgtier_links_refused_by_peer",
            "Links the other side refused, by the reason it gave",
            C,
            by_label("reason", c.links_refused_by_peer.by_reason()),
        )?;

        // Messages.
        let m = &s.messages;
        for (name, help, v) in [
            (
                "msgtier_messages_sent",
                "Requests sent from this node",
                m.sent,
            ),
            (
                "msgtier_messages_delivered",
                "Plain messages delivered to this node",
                m.delivered,
            ),
            (
                "msgtier_messages_scripts_run",
                "Requests for this node that ran a script",
                m.scripts_run,
            ),
            (
                "msgtier_messages_replies",
                "Answers that completed a request of ours",
                m.replies,
            ),
            (
                "msgtier_messages_timed_out",
                "Requests that got no answer in time",
                m.timed_out,
            ),
            (
                "msgtier_messages_resent",
                "Requests re-sent on another path after a link was lost",
                m.resent,
            ),
            (
                "msgtier_messages_refused",
                "Requests refused by this node's limits or allow lists",
                m.refused,
            ),
        ] {
            single(e, name, help, C, v)?;
        }
        family(
            e,
            "msgtier_messages_dropped",
            "Envelopes dropped, by reason",
            C,
            by_label(
                "reason",
                crate::proto::router::report::DROP_REASONS
                    .iter()
                    .map(|r| (*r, m.dropped_by_reason.get(r).copied().unwrap_or(0))),
            ),
        )?;
        family(
            e,
            "msgtier_relayed_messages",
            "Envelopes forwarded for others, by origin network",
            C,
            s.relayed
                .iter()
                .map(|(n, r)| (label("network", n.clone()), r.messages)),
        )?;
        family(
            e,
            "msgtier_relayed_bytes",
            "Sealed bytes forwarded for others, by origin network",
            C,
            s.relayed
                .iter()
                .map(|(n, r)| (label("network", n.clone()), r.bytes)),
        )?;

        // Foreign networks this node relays for (as a public node).
        let f = &s.foreign;
        let per = |pick: fn(&crate::actors::relay::ForeignReport) -> u64| {
            f.iter()
                .map(move |(n, r)| (label("network", n.clone()), pick(r)))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "msgtier_foreign_members",
            "Members of a foreign network linked to this node",
            G,
            per(|r| r.members.len() as u64),
        )?;
        family(
            e,
            "msgtier_foreign_budget_bytes_per_second",
            "Relay budget of a foreign network (0: unlimited)",
            G,
            per(|r| r.bps_limit),
        )?;
        family(
            e,
            "msgtier_foreign_relayed_bytes",
            "Bytes relayed between a foreign network's members",
            C,
            per(|r| r.bytes_relayed),
        )?;
        family(
            e,
            "msgtier_foreign_dropped_bytes",
            "Bytes of a foreign network dropped (over budget, control only, addressed to us)",
            C,
            per(|r| r.bytes_dropped),
        )?;
        family(
            e,
            "msgtier_foreign_dropped_messages",
            "Messages of a foreign network dropped",
            C,
            per(|r| r.messages_dropped),
        )?;
        family(
            e,
            "msgtier_foreign_over_budget_messages",
            "Messages of a foreign network refused over its budget (answered with over_budget)",
            C,
            per(|r| r.messages_over_budget),
        )?;
        family(
            e,
            "msgtier_foreign_queued_bytes",
            "Bytes of a foreign network waiting for its budget",
            G,
            per(|r| r.bytes_queued),
        )?;

        // Punching.
        family(
            e,
            "msgtier_punch_attempts",
            "Hole punching attempts by outcome (open, linked, failed, gave_up)",
            C,
            by_label(
                "outcome",
                ["open", "linked", "failed", "gave_up"]
                    .map(|o| (o, s.punch_outcomes.get(o).copied().unwrap_or(0))),
            ),
        )?;

        // Scripts.
        family(
            e,
            "msgtier_script_runs",
            "Scripts run on this node by outcome",
            C,
            by_label("outcome", self.metrics.script_runs.by_outcome()),
        )?;
        histogram(
            e,
            "msgtier_script_duration_seconds",
            "How long scripts ran",
            &self.metrics.script_duration,
        )?;
        histogram(
            e,
            "msgtier_send_duration_seconds",
            "How long POST /send took to answer",
            &self.metrics.send_duration,
        )?;

        // Queue depths and stores.
        let d = &s.durable;
        for (name, help, v) in [
            (
                "msgtier_scripts_running",
                "Scripts running now",
                s.scripts.running as u64,
            ),
            (
                "msgtier_scripts_queued",
                "Script requests waiting for a slot",
                s.scripts.queued as u64,
            ),
            (
                "msgtier_pending_requests",
                "Requests of ours waiting for an answer",
                s.pending_requests as u64,
            ),
            (
                "msgtier_outbox_messages",
                "Messages with a ttl not final yet",
                d.outbox_messages as u64,
            ),
            (
                "msgtier_outbox_bytes",
                "Body bytes of the outbox",
                d.outbox_bytes as u64,
            ),
            (
                "msgtier_custody_messages",
                "Envelopes this carrier holds for others",
                d.carried_messages as u64,
            ),
            (
                "msgtier_custody_bytes",
                "Bytes this carrier holds for others",
                d.carried_bytes as u64,
            ),
            (
                "msgtier_event_subscribers",
                "Event stream clients connected",
                s.events.subscribers as u64,
            ),
            (
                "msgtier_event_ring_events",
                "Events kept for resuming clients",
                s.events.ring_events as u64,
            ),
            (
                "msgtier_event_ring_bytes",
                "Bytes the kept events hold (bodies and rendered JSON)",
                s.events.ring_bytes as u64,
            ),
            (
                "msgtier_key_conflicts",
                "Identity keys offered that contradict the key held",
                s.key_conflicts.len() as u64,
            ),
        ] {
            single(e, name, help, G, v)?;
        }
        single(
            e,
            "msgtier_events_published",
            "Events published",
            C,
            s.events.published,
        )?;
        single(
            e,
            "msgtier_event_subscribers_lagged",
            "Event stream clients cut off for not keeping up",
            C,
            s.events.subscribers_lagged,
        )?;
        family(
            e,
            "msgtier_adverts_refused",
            "Routing adverts refused in this network, by reason",
            C,
            s.adverts_refused
                .iter()
                .map(|(r, n)| (label("reason", *r), *n)),
        )?;
        Ok(())
    }
}
