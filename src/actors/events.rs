//! EventActor: numbers what happens on the node, keeps the newest events for resumption, and
//! hands them to the event-stream subscribers (`GET /events`, `GET /events/ws`).
//!
//! Every event gets the next id (+1 each, starting at 1 when the node starts: a gap a client
//! sees is an event it lost) and is rendered to its JSON at most once, by this actor, the
//! first time a subscriber takes it (live or replayed): with nobody listening an event costs
//! no JSON at all. The ring keeps the newest [`EVENT_RING`] events (at most
//! [`EVENT_RING_BYTES`] of event bodies and rendered JSON); a subscriber that resumes from an
//! id the ring no longer has first gets a `missed` event saying how many it lost.
//!
//! A slow subscriber never holds the node up: the actor never waits for one. Each subscriber's
//! queue is bounded in bytes ([`SUBSCRIBER_QUEUE_BYTES`]); when an event does not fit, the
//! subscriber is cut off: its stream ends with a `lagged` event after what was queued (it may
//! reconnect with the last id it saw and resume from the ring).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use actix::prelude::*;
use base64::Engine as _;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::node::unix_ms;
use crate::proto::event::Event;

/// Events kept for resumption (`Last-Event-ID`, `?since=`).
pub const EVENT_RING: usize = 4096;
/// Bytes the ring holds at most, counting each event's body, a fixed overhead and its JSON
/// once rendered (older events leave first).
pub const EVENT_RING_BYTES: usize = 8 * 1024 * 1024;
/// JSON bytes queued for one subscriber before it is cut off as lagging.
pub const SUBSCRIBER_QUEUE_BYTES: usize = 1024 * 1024;
/// Event-stream clients at once; more are refused (503).
pub const MAX_SUBSCRIBERS: usize = 64;

/// Bytes an event is counted for in the ring besides its body and JSON (ids, names, the
/// allocation itself).
const EVENT_OVERHEAD_BYTES: usize = 256;

/// One event as subscribers get it: numbered, and rendered on first use.
#[derive(Debug)]
pub struct Rendered {
    /// Its id.
    pub id: u64,
    /// Its `type`.
    pub kind: &'static str,
    /// The node it is from or about (for `?from=`).
    pub node: String,
    /// A `publish` event's topic (for `?topics=`).
    pub topic: Option<String>,
    /// When it was published.
    time_unix_ms: u64,
    /// What happened.
    event: Event,
    /// The whole event as one JSON object, once rendered.
    json: OnceLock<String>,
}

impl Rendered {
    /// Numbers `event`; renders nothing yet.
    pub fn new(id: u64, time_unix_ms: u64, event: Event) -> Rendered {
        Rendered {
            id,
            kind: event.kind(),
            node: event.node().to_string(),
            topic: match &event {
                Event::Publish { topic, .. } => Some(topic.clone()),
                _ => None,
            },
            time_unix_ms,
            event,
            json: OnceLock::new(),
        }
    }

    /// The event as one JSON object, rendered on the first call.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| render(self.id, self.time_unix_ms, &self.event))
    }

    /// Bytes the event holds: its body, the fixed overhead, and its JSON if rendered.
    fn held_bytes(&self) -> usize {
        let body = match &self.event {
            Event::Message { body, .. } | Event::Publish { body, .. } => body.len(),
            _ => 0,
        };
        EVENT_OVERHEAD_BYTES + body + self.json.get().map_or(0, String::len)
    }
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these types (all when `None`).
    pub types: Option<HashSet<String>>,
    /// Only events from or about this node.
    pub from: Option<String>,
    /// Only `publish` events whose topic one of these filters matches (checked filters).
    pub topics: Option<Vec<String>>,
}

impl Filter {
    fn admits(&self, e: &Rendered) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(e.kind))
            && self.from.as_ref().is_none_or(|f| *f == e.node)
            && match (&self.topics, &e.topic) {
                (Some(filters), Some(t)) => {
                    filters.iter().any(|f| crate::proto::topic::matches(f, t))
                }
                (Some(_), None) => e.kind != "publish",
                (None, _) => true,
            }
    }
}

/// Something happened (any actor -> EventActor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub Event);

/// A new subscriber (event-stream handler -> EventActor).
#[derive(Message)]
#[rtype(result = "Result<Subscription, TooManySubscribers>")]
pub struct Subscribe {
    /// Resume after this id: replay the newer events the ring holds first.
    pub since: Option<u64>,
    /// What the subscriber wants.
    pub filter: Filter,
}

/// The subscriber limit is reached.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_SUBSCRIBERS} event-stream clients are connected already")]
pub struct TooManySubscribers;

/// What a subscriber gets: first `notice` (if any), then `replay`, then `live`.
pub struct Subscription {
    /// A `missed` event, when the ring no longer holds everything after `since`.
    pub notice: Option<String>,
    /// The ring's events after `since` that pass the filter.
    pub replay: Vec<Arc<Rendered>>,
    /// Everything published from now on that passes the filter.
    pub live: Feed,
}

/// State shared between the actor and one subscriber's stream.
#[derive(Debug, Default)]
struct Shared {
    /// JSON bytes queued and not yet taken by the stream.
    queued_bytes: AtomicUsize,
    /// Set when the actor cut the subscriber off.
    lagged: AtomicBool,
}

/// One subscriber's live events.
pub struct Feed {
    rx: mpsc::UnboundedReceiver<Arc<Rendered>>,
    shared: Arc<Shared>,
}

/// What [`Feed::next`] yields.
pub enum Next {
    /// The next event.
    Event(Arc<Rendered>),
    /// The subscriber was cut off for lagging: this is its final `lagged` event.
    Lagged(String),
    /// The node is shutting down.
    Closed,
}

impl Feed {
    /// Waits for the next live event.
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Some(e) => {
                self.shared
                    .queued_bytes
                    .fetch_sub(e.json().len(), Ordering::Relaxed);
                Next::Event(e)
            }
            None if self.shared.lagged.load(Ordering::Relaxed) => Next::Lagged(
                json!({
                    "id": null,
                    "type": "lagged",
                    "time_unix_ms": unix_ms(),
                    "message": format!(
                        "this client fell {SUBSCRIBER_QUEUE_BYTES} bytes of events behind and is \
                         cut off; reconnect with the last id it saw to resume"
                    ),
                })
                .to_string(),
            ),
            None => Next::Closed,
        }
    }
}

struct Subscriber {
    tx: mpsc::UnboundedSender<Arc<Rendered>>,
    shared: Arc<Shared>,
    filter: Filter,
}

/// Event-stream figures for `/status` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventStats {
    /// Events published since the node started (the last id).
    pub published: u64,
    /// Clients connected now.
    pub subscribers: usize,
    /// Clients cut off for lagging.
    pub subscribers_lagged: u64,
    /// Events in the ring.
    pub ring_events: usize,
    /// Bytes the ring holds (bodies, a fixed overhead each, JSON once rendered).
    pub ring_bytes: usize,
    /// The oldest id the ring holds.
    pub ring_oldest_id: Option<u64>,
}

/// Asks for [`EventStats`].
#[derive(Message)]
#[rtype(result = "EventStats")]
pub struct GetEventStats;

/// See the module docs.
#[derive(Default)]
pub struct EventActor {
    /// The last id given out.
    last_id: u64,
    ring: VecDeque<Arc<Rendered>>,
    ring_bytes: usize,
    subscribers: Vec<Subscriber>,
    lagged: u64,
}

impl Actor for EventActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Publishers never wait on this actor (`do_send`); the bound only catches a runaway.
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<Publish> for EventActor {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) {
        self.last_id += 1;
        let event = Arc::new(Rendered::new(self.last_id, unix_ms(), msg.0));
        let lagged = &mut self.lagged;
        self.subscribers.retain(|s| {
            if !s.filter.admits(&event) {
                return !s.tx.is_closed();
            }
            let size = event.json().len();
            let queued = s.shared.queued_bytes.load(Ordering::Relaxed);
            if queued + size > SUBSCRIBER_QUEUE_BYTES {
                s.shared.lagged.store(true, Ordering::Relaxed);
                *lagged += 1;
                log::info!("an event-stream client fell behind by {queued} bytes: cut off");
                return false; // dropping the sender ends its stream after what is queued
            }
            s.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
            s.tx.send(event.clone()).is_ok()
        });
        self.ring_bytes += event.held_bytes();
        self.ring.push_back(event);
        self.trim_ring();
    }
}

impl EventActor {
    /// Drops the oldest events while the ring is over its bounds.
    fn trim_ring(&mut self) {
        while self.ring.len() > EVENT_RING || self.ring_bytes > EVENT_RING_BYTES {
            match self.ring.pop_front() {
                Some(old) => self.ring_bytes -= old.held_bytes(),
                None => break,
            }
        }
    }
}

impl Handler<Subscribe> for EventActor {
    type Result = Result<Subscription, TooManySubscribers>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        self.subscribers.retain(|s| !s.tx.is_closed());
        if self.subscribers.len() >= MAX_SUBSCRIBERS {
            return Err(TooManySubscribers);
        }
        let mut notice = None;
        let mut replay = Vec::new();
        if let Some(since) = msg.since {
            let oldest = self.ring.front().map_or(self.last_id + 1, |e| e.id);
            if since > self.last_id {
                // An id from an earlier run of the node (ids start again at 1).
                notice = Some(missed_notice(
                    None,
                    "the node restarted since that id; its event ids start again at 1",
                ));
                replay.extend(self.ring.iter().cloned());
            } else {
                if since + 1 < oldest {
                    notice = Some(missed_notice(
                        Some(oldest - since - 1),
                        "older than the events this node keeps",
                    ));
                }
                replay.extend(self.ring.iter().filter(|e| e.id > since).cloned());
            }
            replay.retain(|e| msg.filter.admits(e));
            // Rendered here, once, so the ring's byte count stays true.
            for e in &replay {
                if e.json.get().is_none() {
                    self.ring_bytes += e.json().len();
                }
            }
            self.trim_ring();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        self.subscribers.push(Subscriber {
            tx,
            shared: shared.clone(),
            filter: msg.filter,
        });
        Ok(Subscription {
            notice,
            replay,
            live: Feed { rx, shared },
        })
    }
}

impl Handler<GetEventStats> for EventActor {
    type Result = MessageResult<GetEventStats>;

    fn handle(&mut self, _: GetEventStats, _: &mut Self::Context) -> Self::Result {
        self.subscribers.retain(|s| !s.tx.is_closed());
        MessageResult(EventStats {
            published: self.last_id,
            subscribers: self.subscribers.len(),
            subscribers_lagged: self.lagged,
            ring_events: self.ring.len(),
            ring_bytes: self.ring_bytes,
            ring_oldest_id: self.ring.front().map(|e| e.id),
        })
    }
}

/// The `missed` event a resuming subscriber gets first when events were lost.
fn missed_notice(missed: Option<u64>, why: &str) -> String {
    json!({
        "id": null,
        "type": "missed",
        "time_unix_ms": unix_ms(),
        "missed": missed,
        "message": why,
    })
    .to_string()
}

/// An event's JSON: `id`, `type`, `time_unix_ms`, then its fields.
fn render(id: u64, time_unix_ms: u64, e: &Event) -> String {
    let mut v = json!({ "id": id, "type": e.kind(), "time_unix_ms": time_unix_ms });
    let fields = match e {
        Event::Message {
            message_id,
            source,
            hops,
            bytes,
            body,
            durable,
        }
        | Event::Publish {
            message_id,
            source,
            hops,
            bytes,
            body,
            durable,
            ..
        } => {
            let text = std::str::from_utf8(body);
            let mut f = json!({
                "message_id": message_id.to_string(),
                "source": source,
                "hops": hops,
                "bytes": bytes,
                "body": String::from_utf8_lossy(body),
                "truncated": body.len() < *bytes,
                "durable": durable,
            });
            if let Event::Publish { topic, .. } = e {
                f["topic"] = topic.as_str().into();
            }
            // Binary (or cut inside a character): the bytes themselves too.
            if text.is_err() {
                f["body_b64"] = base64::engine::general_purpose::STANDARD
                    .encode(body)
                    .into();
            }
            f
        }
        Event::Script {
            name,
            source,
            message_id,
            exit_code,
            timed_out,
            duration_ms,
            error,
        } => json!({
            "name": name,
            "source": source,
            "message_id": message_id.to_string(),
            "exit_code": exit_code,
            "timed_out": timed_out,
            "duration_ms": duration_ms,
            "error": error,
        }),
        Event::PeerUp {
            node,
            transport,
            link_id,
            kind,
        } => json!({
            "node": node,
            "transport": transport.to_string(),
            "link_id": link_id,
            "kind": kind,
        }),
        Event::PeerDown {
            node,
            transport,
            link_id,
            reason,
        } => json!({
            "node": node,
            "transport": transport.to_string(),
            "link_id": link_id,
            "reason": reason,
        }),
        Event::Route {
            node,
            reachable,
            next_hop,
            hops,
        } => json!({
            "node": node,
            "reachable": reachable,
            "next_hop": next_hop,
            "hops": hops,
        }),
        Event::Punch {
            node,
            outcome,
            reason,
        } => json!({ "node": node, "outcome": outcome, "reason": reason }),
        Event::Delivery {
            message_id,
            target,
            status,
            custody,
            error,
        } => json!({
            "message_id": message_id.to_string(),
            "target": target,
            "status": status,
            "custody": custody,
            "error": error,
        }),
    };
    if let (Some(v), serde_json::Value::Object(f)) = (v.as_object_mut(), fields) {
        v.extend(f);
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(source: &str, body: &[u8]) -> Event {
        Event::Message {
            message_id: 7,
            source: source.into(),
            hops: 1,
            bytes: body.len(),
            body: bytes::Bytes::copy_from_slice(body),
            durable: false,
        }
    }

    #[test]
    fn an_event_renders_id_type_time_and_its_fields() {
        let r = Rendered::new(3, 1000, message("n2", b"hello"));
        let v: serde_json::Value = serde_json::from_str(r.json()).unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["type"], "message");
        assert_eq!(v["time_unix_ms"], 1000);
        assert_eq!(v["message_id"], "7");
        assert_eq!(v["body"], "hello");
        assert!(v.get("body_b64").is_none(), "text needs no base64");
        let r = Rendered::new(4, 1000, message("n2", &[0xff, 0, 1]));
        let v: serde_json::Value = serde_json::from_str(r.json()).unwrap();
        assert_eq!(v["body_b64"], "/wAB");
    }

    #[actix::test]
    async fn a_resuming_subscriber_gets_what_it_missed_and_then_live_events() {
        let events = EventActor::default().start();
        for i in 0..5 {
            events.do_send(Publish(message(&format!("n{i}"), b"x")));
        }
        let mut sub = events
            .send(Subscribe {
                since: Some(2),
                filter: Filter::default(),
            })
            .await
            .unwrap()
            .unwrap();
        assert!(sub.notice.is_none());
        let ids: Vec<u64> = sub.replay.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        events.do_send(Publish(message("n9", b"y")));
        match sub.live.next().await {
            Next::Event(e) => assert_eq!(e.id, 6),
            _ => panic!("expected event 6"),
        }
        // A filter on the source.
        let sub = events
            .send(Subscribe {
                since: Some(0),
                filter: Filter {
                    types: None,
                    from: Some("n3".into()),
                    topics: None,
                },
            })
            .await
            .unwrap()
            .unwrap();
        let ids: Vec<u64> = sub.replay.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![4]);
    }

    /// With nobody listening an event is kept unrendered; the JSON is made once, when a
    /// subscriber first takes it, and the ring's byte count includes it from then on.
    #[actix::test]
    async fn events_are_rendered_only_when_taken_and_the_ring_counts_them() {
        let events = EventActor::default().start();
        for _ in 0..3 {
            events.do_send(Publish(message("n2", &[b'a'; 100])));
        }
        let stats = events.send(GetEventStats).await.unwrap();
        assert_eq!(stats.ring_bytes, 3 * (EVENT_OVERHEAD_BYTES + 100));
        let sub = events
            .send(Subscribe {
                since: Some(1),
                filter: Filter::default(),
            })
            .await
            .unwrap()
            .unwrap();
        let rendered: usize = sub.replay.iter().map(|e| e.json().len()).sum();
        assert!(sub.replay.iter().all(|e| e.json.get().is_some()));
        let stats = events.send(GetEventStats).await.unwrap();
        assert_eq!(
            stats.ring_bytes,
            3 * (EVENT_OVERHEAD_BYTES + 100) + rendered,
            "the two replayed events' JSON is counted, the first event is still unrendered"
        );
        let v: serde_json::Value = serde_json::from_str(sub.replay[0].json()).unwrap();
        assert_eq!(
            (v["id"].as_u64(), v["body"].as_str()),
            (Some(2), Some(&*"a".repeat(100)))
        );
    }

    #[actix::test]
    async fn the_ring_is_bounded_and_a_late_resume_is_told_how_many_it_missed() {
        let events = EventActor::default().start();
        for _ in 0..EVENT_RING + 10 {
            events.do_send(Publish(message("n2", b"x")));
        }
        let stats = events.send(GetEventStats).await.unwrap();
        assert_eq!(stats.ring_events, EVENT_RING);
        assert_eq!(stats.ring_oldest_id, Some(11));
        let sub = events
            .send(Subscribe {
                since: Some(5),
                filter: Filter::default(),
            })
            .await
            .unwrap()
            .unwrap();
        let notice: serde_json::Value = serde_json::from_str(&sub.notice.unwrap()).unwrap();
        assert_eq!(notice["type"], "missed");
        assert_eq!(notice["missed"], 5, "ids 6..=10 are gone");
        assert_eq!(sub.replay.first().map(|e| e.id), Some(11));
    }

    #[actix::test]
    async fn a_subscriber_that_does_not_read_is_cut_off_with_a_lagged_event() {
        let events = EventActor::default().start();
        let mut sub = events
            .send(Subscribe {
                since: None,
                filter: Filter::default(),
            })
            .await
            .unwrap()
            .unwrap();
        let body = vec![b'a'; 4096];
        let n = SUBSCRIBER_QUEUE_BYTES / 4096 + 10;
        for _ in 0..n {
            events.do_send(Publish(message("n2", &body)));
        }
        let stats = events.send(GetEventStats).await.unwrap();
        assert_eq!(stats.subscribers, 0);
        assert_eq!(stats.subscribers_lagged, 1);
        let mut got = 0;
        loop {
            match sub.live.next().await {
                Next::Event(_) => got += 1,
                Next::Lagged(j) => {
                    assert!(j.contains("\"lagged\""));
                    break;
                }
                Next::Closed => panic!("expected a lagged event"),
            }
        }
        assert!(got > 0 && got < n, "what was queued arrives first ({got})");
    }
}
