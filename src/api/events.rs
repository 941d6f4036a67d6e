//! The event stream: `GET /events` (Server-Sent Events) and `GET /events/ws` (WebSocket), the
//! same events either way, from the EventActor (`actors::events`).
//!
//! Query: `types=message,peer_up` (only those types), `from=<node id>`,
//! `topics=alerts.>,build.*.done` (subscribes this node to those topic filters while the stream
//! is open, and passes only the `publish` events they match; other types only with `types`),
//! `since=<id>` (resume:
//! replay the newer events the node still keeps first; SSE clients may send `Last-Event-ID`
//! instead, which wins over `since`). SSE frames carry `id:` (so a browser's `EventSource` resumes by itself) and the
//! JSON object in `data:`; there is no `event:` line, so `onmessage` sees every type. A comment
//! line goes out every [`KEEPALIVE_S`] seconds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;

use super::{ApiError, ApiState, ACTOR_TIMEOUT_MS};
use crate::actors::events::{Filter, Next, Rendered, Subscribe, Subscription};
use crate::proto::event::EVENT_TYPES;

/// Seconds between keep-alive comments (SSE) or pings (WebSocket).
pub const KEEPALIVE_S: u64 = 15;

/// The filter and resume point of a request.
fn parse(req: &HttpRequest, q: &HashMap<String, String>) -> Result<Subscribe, ApiError> {
    let types = match q.get("types") {
        None => None,
        Some(list) => {
            let mut set = HashSet::new();
            for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !EVENT_TYPES.contains(&t) {
                    return Err(ApiError::BadRequest(format!(
                        "unknown event type {t:?} in types (known: {})",
                        EVENT_TYPES.join(", ")
                    )));
                }
                set.insert(t.to_string());
            }
            Some(set)
        }
    };
    let from = q.get("from").map(|f| f.trim().to_string());
    let number = |name: &str, v: &str| {
        v.trim().parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("{name} must be an event id (a number), got {v:?}"))
        })
    };
    // The header wins: a browser's EventSource reconnects to the same URL (with the `since`
    // it first asked for) and sends the last id it saw in the header.
    let since = match (q.get("since"), req.headers().get("last-event-id")) {
        (_, Some(h)) => {
            let h = h
                .to_str()
                .map_err(|_| ApiError::BadRequest("header Last-Event-ID is not text".into()))?;
            Some(number("header Last-Event-ID", h)?)
        }
        (Some(s), None) => Some(number("since", s)?),
        (None, None) => None,
    };
    let topics = match q.get("topics") {
        None => None,
        Some(list) => {
            let mut filters: Vec<String> = Vec::new();
            for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                crate::proto::topic::check_filter(f).map_err(|e| {
                    ApiError::BadRequest(format!("topic filter {f:?} in topics {e}"))
                })?;
                if !filters.iter().any(|g| g == f) {
                    filters.push(f.to_string());
                }
            }
            if filters.is_empty() {
                return Err(ApiError::BadRequest(
                    "topics names no filter (e.g. topics=alerts.>,build.*.done)".into(),
                ));
            }
            Some(filters)
        }
    };
    // A topic subscriber wants its publishes; other types only when it asks for them.
    let types = match (&topics, types) {
        (Some(_), None) => Some(HashSet::from(["publish".to_string()])),
        (_, types) => types,
    };
    Ok(Subscribe {
        since,
        filter: Filter {
            types,
            from,
            topics,
        },
    })
}

/// Keeps this node subscribed to a stream's topics while the stream lives.
struct TopicGuard {
    relay: actix::Addr<crate::actors::relay::RelayActor>,
    filters: Vec<String>,
}

impl Drop for TopicGuard {
    fn drop(&mut self) {
        self.relay
            .do_send(crate::actors::relay::UnsubscribeTopics(std::mem::take(
                &mut self.filters,
            )));
    }
}

/// Subscribes this node to the stream's topics (if it names any) for as long as the returned
/// guard lives.
async fn subscribe_topics(
    state: &ApiState,
    sub: &Subscribe,
) -> Result<Option<TopicGuard>, ApiError> {
    let Some(filters) = sub.filter.topics.clone() else {
        return Ok(None);
    };
    state
        .relay
        .send(crate::actors::relay::SubscribeTopics(filters.clone()))
        .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
        .await?
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Some(TopicGuard {
        relay: state.relay.clone(),
        filters,
    }))
}

async fn subscribe(state: &ApiState, sub: Subscribe) -> Result<Subscription, ApiError> {
    state
        .events
        .send(sub)
        .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
        .await?
        .map_err(|e| ApiError::Busy(e.to_string()))
}

/// One SSE frame: an event with its id, or a synthetic one (`missed`, `lagged`) without.
fn sse_frame(id: Option<u64>, json: &str) -> Bytes {
    match id {
        Some(id) => Bytes::from(format!("id: {id}\ndata: {json}\n\n")),
        None => Bytes::from(format!("data: {json}\n\n")),
    }
}

/// The events of a subscription in order: notice, replay, live; a keep-alive when idle.
struct Source {
    first: VecDeque<(Option<u64>, String)>,
    replay: VecDeque<Arc<Rendered>>,
    sub: crate::actors::events::Feed,
    keepalive: tokio::time::Interval,
    done: bool,
    /// Unsubscribes this node from the stream's topics when the stream goes.
    _topics: Option<TopicGuard>,
}

impl Source {
    fn new(s: Subscription, topics: Option<TopicGuard>) -> Source {
        let period = Duration::from_secs(KEEPALIVE_S);
        Source {
            first: s.notice.into_iter().map(|n| (None, n)).collect(),
            replay: s.replay.into(),
            sub: s.live,
            keepalive: tokio::time::interval_at(tokio::time::Instant::now() + period, period),
            done: false,
            _topics: topics,
        }
    }

    /// The next (id, json), `Ok(None)` for a keep-alive, `Err(())` at the end.
    async fn next(&mut self) -> Result<Option<(Option<u64>, String)>, ()> {
        if self.done {
            return Err(());
        }
        if let Some(n) = self.first.pop_front() {
            return Ok(Some(n));
        }
        if let Some(e) = self.replay.pop_front() {
            return Ok(Some((Some(e.id), e.json().to_string())));
        }
        tokio::select! {
            next = self.sub.next() => match next {
                Next::Event(e) => {
                    self.keepalive.reset();
                    Ok(Some((Some(e.id), e.json().to_string())))
                }
                Next::Lagged(json) => {
                    self.done = true;
                    Ok(Some((None, json)))
                }
                Next::Closed => Err(()),
            },
            _ = self.keepalive.tick() => Ok(None),
        }
    }
}

/// `GET /events`: Server-Sent Events.
pub async fn sse(
    state: web::Data<ApiState>,
    req: HttpRequest,
    q: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let parsed = parse(&req, &q)?;
    let topics = subscribe_topics(&state, &parsed).await?;
    let sub = subscribe(&state, parsed).await?;
    let source = Source::new(sub, topics);
    // A first frame at once, so a client sees the stream open before any event.
    let hello = Some(Bytes::from_static(b"retry: 2000\n\n"));
    let stream = futures_util::stream::unfold((source, hello), |(mut src, hello)| async move {
        if let Some(h) = hello {
            return Some((Ok::<Bytes, Infallible>(h), (src, None)));
        }
        let frame = match src.next().await.ok()? {
            Some((id, json)) => sse_frame(id, &json),
            None => Bytes::from_static(b": keep-alive\n\n"),
        };
        Some((Ok(frame), (src, None)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream))
}

/// `GET /events/ws`: the same events as WebSocket text messages.
pub async fn ws(
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Payload,
    q: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, actix_web::Error> {
    let parsed = parse(&req, &q)?;
    let topics = subscribe_topics(&state, &parsed).await?;
    let sub = subscribe(&state, parsed).await?;
    let (response, mut session, mut incoming) = actix_ws::handle(&req, body)?;
    let mut source = Source::new(sub, topics);
    actix_web::rt::spawn(async move {
        loop {
            tokio::select! {
                next = source.next() => match next {
                    Ok(Some((_, json))) => {
                        if session.text(json).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        if session.ping(b"").await.is_err() {
                            return;
                        }
                    }
                    Err(()) => break,
                },
                msg = incoming.recv() => match msg {
                    Some(Ok(actix_ws::Message::Ping(b))) => {
                        if session.pong(&b).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}
