//! The HTTP API (actix-web): `POST /send`, `GET /status`, `GET /topology`, `GET /messages`,
//! `GET /config` and the rest, also under `/api/`; and the dashboard at `GET /` (`dashboard`).
//!
//! Handlers never touch node state directly: they ask the actors by message with a timeout and
//! map a mailbox failure to 503 and a timeout to 504. Every error is JSON
//! `{"error": "<code>", "message": "<text>"}`.
//!
//! Every request first passes [`check_caller`]: a `Host` this API does not answer to gets 421,
//! a foreign `Origin` 403, so a web page cannot drive the node by DNS rebinding or cross-site
//! requests (curl and other tools send no `Origin` and are unaffected). Then, when config
//! `api_token` is set, [`check_token`]: every endpoint but `GET /health` and the dashboard's
//! files needs `Authorization: Bearer <token>` (the event stream may take `?token=`), else 401.

mod dashboard;
mod events;
mod fanout;
mod metrics;
mod publish;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, MailboxError};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::actors::discovery::{DiscoveryActor, GetReport, PeerReport};
use crate::actors::peer::PeerState;
use crate::actors::relay::{
    Answer, CancelError, CancelMessage, Delivery, GetMessageStatus, GetOutbox, GetRoutes,
    GetTopology, MessageReport, RelayActor, Send, SendError,
};
use crate::actors::script::{GetScriptStats, ScriptActor, ScriptStats};
use crate::actors::store::{QueryInbox, StoreActor, StoreFailure};
use crate::node::{NodeShared, VERSION};
use crate::proto::e2e::Outcome;
use crate::store::InboxQuery;

/// How long a handler waits for an actor before answering 504.
pub const ACTOR_TIMEOUT_MS: u64 = 5_000;

/// What the handlers need.
#[derive(Clone)]
pub struct ApiState {
    pub node: Arc<NodeShared>,
    pub discovery: Addr<DiscoveryActor>,
    pub relay: Addr<RelayActor>,
    pub script: Addr<ScriptActor>,
    pub store: Addr<StoreActor>,
    pub events: Addr<crate::actors::events::EventActor>,
    /// Re-reads the config (`POST /config/reload`).
    pub reloader: crate::node::Reloader,
}

/// An API error, rendered as JSON.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An actor did not answer in time.
    #[error("the node did not answer in time")]
    Timeout,
    /// An actor is gone (the node is shutting down).
    #[error("the node is shutting down")]
    Unavailable,
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The request was malformed.
    #[error("{0}")]
    BadRequest(String),
    /// `POST /send` without a usable `target` header.
    #[error("{0}")]
    MissingTarget(String),
    /// A fan-out names more targets than it may reach.
    #[error("too many targets: {0}")]
    TooManyTargets(String),
    /// The `timeout` header is not a number of milliseconds.
    #[error("{0}")]
    BadTimeout(String),
    /// The body is over `max_body_bytes`.
    #[error("message body over {0} bytes")]
    BodyTooLarge(usize),
    /// The target node was never heard of.
    #[error("{0}")]
    PeerNotFound(String),
    /// Too many messages in flight.
    #[error("{0}")]
    Busy(String),
    /// The target could not complete the request (e.g. its script queue is full).
    #[error("{message}")]
    Remote { code: String, message: String },
    /// No route, or no answer in time.
    #[error("{0}")]
    SendTimeout(String),
    /// The target is a public node of another network: it relays for us, it is not a member.
    #[error("{0}")]
    NotMember(String),
    /// The `Host` header names a host this API does not answer to (a page whose name was
    /// rebound to this machine).
    #[error("{0}")]
    MisdirectedHost(String),
    /// The request carries the `Origin` of another site (a browser sent it cross-site).
    #[error("{0}")]
    ForeignOrigin(String),
    /// `api_token` is set and the request did not carry it.
    #[error("{0}")]
    Unauthorized(String),
    /// The `ttl` header is not a number of seconds in range.
    #[error("{0}")]
    BadTtl(String),
    /// The outbox is at its limit.
    #[error("{0}")]
    OutboxFull(String),
    /// The message store cannot write or read.
    #[error("{0}")]
    StoreUnavailable(String),
    /// The message is final already (cannot be cancelled).
    #[error("{0}")]
    Conflict(String),
    /// `POST /publish` without a `topic` header.
    #[error("{0}")]
    MissingTopic(String),
    /// The topic is not a valid topic name.
    #[error("{0}")]
    BadTopic(String),
    /// The publish body is over `publish_max_bytes`.
    #[error("{0}")]
    PublishTooLarge(String),
    /// The topic's publish rate is used up: retry later.
    #[error("{message}")]
    TopicRateLimited {
        message: String,
        /// Seconds for the `retry-after` header (rounded up, at least 1).
        retry_after_s: u64,
    },
    /// A public node on the path is over this network's relay budget: retry later.
    #[error("{message}")]
    OverBudget {
        message: String,
        /// Seconds for the `retry-after` header (rounded up, at least 1).
        retry_after_s: u64,
    },
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Timeout => "timeout",
            ApiError::Unavailable => "unavailable",
            ApiError::NotFound => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::MissingTarget(_) => "missing_target",
            ApiError::TooManyTargets(_) => "too_many_targets",
            ApiError::BadTimeout(_) => "bad_timeout",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::PeerNotFound(_) => "peer_not_found",
            ApiError::Busy(_) => "busy",
            ApiError::Remote { .. } => "remote_error",
            ApiError::SendTimeout(_) => "timeout",
            ApiError::NotMember(_) => "not_a_member",
            ApiError::MisdirectedHost(_) => "misdirected_host",
            ApiError::ForeignOrigin(_) => "foreign_origin",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::OverBudget { .. } => "relay_over_budget",
            ApiError::MissingTopic(_) => "missing_topic",
            ApiError::BadTopic(_) => "bad_topic",
            ApiError::PublishTooLarge(_) => "too_large",
            ApiError::TopicRateLimited { .. } => "rate_limited",
            ApiError::BadTtl(_) => "bad_ttl",
            ApiError::OutboxFull(_) => "outbox_full",
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::Conflict(_) => "conflict",
        }
    }
}

impl From<MailboxError> for ApiError {
    fn from(e: MailboxError) -> Self {
        match e {
            MailboxError::Timeout => ApiError::Timeout,
            MailboxError::Closed => ApiError::Unavailable,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_)
            | ApiError::MissingTarget(_)
            | ApiError::TooManyTargets(_)
            | ApiError::BadTimeout(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::PeerNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Remote { code, .. } => match code.as_str() {
                "forbidden" => StatusCode::FORBIDDEN,
                "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
                "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_GATEWAY,
            },
            ApiError::SendTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotMember(_) => StatusCode::FORBIDDEN,
            ApiError::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::ForeignOrigin(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::OverBudget { .. } | ApiError::TopicRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::MissingTopic(_) | ApiError::BadTopic(_) => StatusCode::BAD_REQUEST,
            ApiError::PublishTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadTtl(_) => StatusCode::BAD_REQUEST,
            ApiError::OutboxFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            ApiError::Remote { code, .. } => code.as_str(),
            other => other.code(),
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::OverBudget { retry_after_s, .. }
            | ApiError::TopicRateLimited { retry_after_s, .. } => {
                response.insert_header(("retry-after", retry_after_s.to_string()));
            }
            ApiError::Unauthorized(_) => {
                response.insert_header(("www-authenticate", "Bearer realm=\"msgtier\""));
            }
            _ => {}
        }
        response.json(json!({"error": code, "message": self.to_string()}))
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::PeerNotFound(_) => ApiError::PeerNotFound(e.to_string()),
            SendError::NoRoute(_) | SendError::Timeout(..) => ApiError::SendTimeout(e.to_string()),
            SendError::Busy => ApiError::Busy(e.to_string()),
            SendError::NotMember(_) => ApiError::NotMember(e.to_string()),
            SendError::Crypto(..) => ApiError::Remote {
                code: "crypto".into(),
                message: e.to_string(),
            },
            SendError::OverBudget { retry_after_ms, .. } => ApiError::OverBudget {
                message: e.to_string(),
                retry_after_s: retry_after_ms.div_ceil(1000).max(1),
            },
            SendError::OutboxFull => ApiError::OutboxFull(e.to_string()),
            SendError::Store(_) => ApiError::StoreUnavailable(e.to_string()),
        }
    }
}

/// The `ttl` header (seconds, 1 to `max_ttl_s`) in milliseconds; `default_ttl_s` without one.
fn ttl_ms(header: Option<&str>, config: &crate::config::Config) -> Result<u64, ApiError> {
    match header {
        None => Ok(config.default_ttl_s * 1000),
        Some(t) => match t.trim().parse::<u64>() {
            Ok(s) if (1..=config.max_ttl_s).contains(&s) => Ok(s * 1000),
            _ => Err(ApiError::BadTtl(format!(
                "header `ttl` must be a number of seconds from 1 to {} (this node's max_ttl_s), got {t:?}",
                config.max_ttl_s
            ))),
        },
    }
}

/// Default wait for an answer to `/send` (MsgTier's default).
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 10_000;

/// `POST /send`: header `target` (node id), optional `timeout` (ms), body = the message.
/// A script's stdout comes back as the body with `x-exit-code`, `x-message-id`, `x-hops`,
/// `x-timed-out`, `x-truncated`; a plain message gets a JSON receipt.
async fn send(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let metrics = state.node.metrics.clone();
    let answer = send_inner(state, req, payload).await;
    metrics.send_duration.observe(started.elapsed());
    answer
}

async fn send_inner(
    state: web::Data<ApiState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let header = |name: &str| -> Result<Option<&str>, ApiError> {
        req.headers()
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::BadRequest(format!("header {name} is not text")))
            })
            .transpose()
    };
    let target = match header("target") {
        Ok(Some(t)) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) => {
            return Err(ApiError::MissingTarget(
                "header `target` (the node id to send to) is required".into(),
            ))
        }
        Err(_) => {
            return Err(ApiError::MissingTarget(
                "header `target` is not text".into(),
            ))
        }
    };
    let config = &state.node.config;
    let timeout_ms = match header("timeout")? {
        None => DEFAULT_SEND_TIMEOUT_MS.min(config.send_timeout_max_ms),
        Some(t) => match t.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => ms.min(config.send_timeout_max_ms),
            _ => {
                return Err(ApiError::BadTimeout(format!(
                    "header `timeout` must be a positive number of milliseconds, got {t:?}"
                )))
            }
        },
    };
    let ttl_ms = ttl_ms(header("ttl")?, config)?;
    let limit = config.max_body_bytes;
    let body = match read_body(&req, &mut payload, limit).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return Err(ApiError::BodyTooLarge(limit)),
        Err(BodyError::Read(e)) => return Err(e),
    };
    if fanout::is_fanout(&target) {
        return fanout::fanout(state, &target, body, timeout_ms, ttl_ms).await;
    }
    let msg = Send {
        target,
        body,
        timeout_ms,
        ttl_ms,
    };
    // The relay enforces the timeout itself; the extra second only catches a stuck actor.
    let answer = state
        .relay
        .send(msg)
        .timeout(Duration::from_millis(timeout_ms + 1_000))
        .await??;
    match answer {
        Answer::Done(delivery) => delivery_response(delivery, wants_json(&req)),
        // The contract's shape: "queued" says "accepted, delivery goes on"; where it stands
        // in detail (in flight, in a carrier's custody) is `GET /messages/{id}`'s.
        Answer::Queued {
            id,
            status: _,
            expires_unix_ms,
        } => Ok(HttpResponse::Accepted().json(json!({
            "id": id.to_string(),
            "status": "queued",
            "expires_unix_ms": expires_unix_ms,
        }))),
    }
}

/// Why a request body was not read.
pub(crate) enum BodyError {
    /// It is over the limit (said by its Content-Length, or found while reading).
    TooLarge,
    /// The connection failed while reading it.
    Read(ApiError),
}

/// Reads a request body of at most `limit` bytes: one buffer sized from the Content-Length
/// up front (no copies while it grows), and the very chunk, uncopied, when the body arrives
/// in one.
pub(crate) async fn read_body(
    req: &HttpRequest,
    payload: &mut web::Payload,
    limit: usize,
) -> Result<web::Bytes, BodyError> {
    let announced = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut first: Option<web::Bytes> = None;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| BodyError::Read(ApiError::BadRequest(format!("reading body: {e}"))))?;
        let have = first.as_ref().map_or(0, |f| f.len()) + body.len();
        if have + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        match first.take() {
            None if body.is_empty() => first = Some(chunk),
            Some(f) => {
                body.reserve(announced.unwrap_or(0).max(f.len() + chunk.len()));
                body.extend_from_slice(&f);
                body.extend_from_slice(&chunk);
            }
            None => body.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| body.freeze()))
}

/// The JSON of an outcome (`GET /messages/{id}`, and a script's answer to `/send` with
/// `Accept: application/json`): output as lossy UTF-8, plus `stdout_b64` / `stderr_b64` with
/// the exact bytes when they are not UTF-8.
fn outcome_json(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Delivered => json!({"type": "delivered"}),
        Outcome::Script {
            exit_code,
            stdout,
            stderr,
            timed_out,
            truncated,
            interrupted,
        } => {
            let mut obj = serde_json::Map::new();
            obj.insert("type".into(), "script".into());
            obj.insert("exit_code".into(), (*exit_code).into());
            bytes_json(&mut obj, "stdout", stdout);
            bytes_json(&mut obj, "stderr", stderr);
            obj.insert("timed_out".into(), (*timed_out).into());
            obj.insert("truncated".into(), (*truncated).into());
            obj.insert("interrupted".into(), (*interrupted).into());
            obj.into()
        }
        Outcome::Failed { code, message } => {
            json!({"type": "failed", "code": code, "message": message})
        }
    }
}

/// A message this node sent with a ttl, as `GET /messages/{id}` shows it.
fn message_json(m: &MessageReport) -> serde_json::Value {
    let r = &m.record;
    json!({
        "id": m.id.to_string(),
        "target": r.target,
        "status": r.status.as_str(),
        "created_unix_ms": r.created_unix_ms,
        "expires_unix_ms": r.expires_unix_ms,
        "attempts": r.attempts,
        "last_error": r.last_error,
        "custody": r.custody,
        "hops": r.hops,
        "outcome": r.outcome.as_ref().map(outcome_json),
    })
}

fn message_id(req: &HttpRequest) -> Result<u64, ApiError> {
    let raw = req.match_info().get("id").unwrap_or("");
    raw.parse::<u64>().map_err(|_| {
        ApiError::BadRequest(format!("{raw:?} is not a message id (a decimal number)"))
    })
}

/// `GET /messages/{id}`: what became of a message this node sent with a ttl.
async fn message_status(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = message_id(&req)?;
    match state
        .relay
        .send(GetMessageStatus(id))
        .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
        .await?
    {
        Some(m) => Ok(HttpResponse::Ok().json(message_json(&m))),
        None => Err(ApiError::NotFound),
    }
}

/// `DELETE /messages/{id}`: cancels a message not delivered yet.
async fn cancel_message(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = message_id(&req)?;
    match state
        .relay
        .send(CancelMessage(id))
        .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
        .await?
    {
        Ok(m) => Ok(HttpResponse::Ok().json(message_json(&m))),
        Err(CancelError::NotFound(_)) => Err(ApiError::NotFound),
        Err(e @ CancelError::Final { .. }) => Err(ApiError::Conflict(e.to_string())),
    }
}

/// Most messages one `GET /outbox` page lists.
pub const MAX_OUTBOX_PAGE: usize = 1000;

/// A query parameter parsed as a number, or a 400 naming it.
fn query_number(
    q: &web::Query<std::collections::HashMap<String, String>>,
    name: &str,
) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter {name} must be a number, got {v:?}"
                ))
            })
        })
        .transpose()
}

/// `GET /outbox?after=<id>&limit=<n>`: messages with a ttl not final yet, oldest first.
async fn outbox(
    state: web::Data<ApiState>,
    q: web::Query<std::collections::HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let after = query_number(&q, "after")?;
    let limit = query_number(&q, "limit")?
        .map_or(100, |n| n as usize)
        .clamp(1, MAX_OUTBOX_PAGE);
    let page = state
        .relay
        .send(GetOutbox { after, limit })
        .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|m| m.id.to_string()))
        .flatten();
    let list: Vec<_> = page.iter().map(message_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "messages": list, "next_after": next })))
}

/// Whether the caller asked for a script's result as JSON (`Accept: application/json`), with
/// its stderr, rather than stdout as the body.
fn wants_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// Output bytes as JSON: `<name>` as lossy text and, when they are not UTF-8, `<name>_b64`
/// with the exact bytes.
fn bytes_json(obj: &mut serde_json::Map<String, serde_json::Value>, name: &str, bytes: &[u8]) {
    obj.insert(name.into(), String::from_utf8_lossy(bytes).into());
    if std::str::from_utf8(bytes).is_err() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        obj.insert(format!("{name}_b64"), b64.into());
    }
}

fn delivery_response(d: Delivery, json: bool) -> Result<HttpResponse, ApiError> {
    if json && matches!(d.outcome, Outcome::Script { .. }) {
        let mut v = outcome_json(&d.outcome);
        v["id"] = d.id.to_string().into();
        v["hops"] = d.hops.into();
        return Ok(HttpResponse::Ok().json(v));
    }
    match d.outcome {
        Outcome::Delivered => Ok(HttpResponse::Ok().json(json!({
            "id": d.id.to_string(),
            "delivered": true,
            "hops": d.hops,
        }))),
        Outcome::Script {
            exit_code,
            stdout,
            stderr: _,
            timed_out,
            truncated,
            interrupted,
        } => {
            let mut r = HttpResponse::Ok();
            if interrupted {
                r.insert_header(("x-interrupted", "true"));
            }
            r.insert_header(("x-message-id", d.id.to_string()))
                .insert_header(("x-hops", d.hops.to_string()))
                .insert_header(("x-timed-out", timed_out.to_string()))
                .insert_header(("x-truncated", truncated.to_string()))
                .content_type("application/octet-stream");
            if let Some(code) = exit_code {
                r.insert_header(("x-exit-code", code.to_string()));
            }
            Ok(r.body(stdout))
        }
        Outcome::Failed { code, message } => Err(ApiError::Remote { code, message }),
    }
}

/// The `/status` document (and what `/metrics` renders).
#[derive(Debug, Serialize)]
struct Status {
    id: String,
    network: String,
    version: &'static str,
    /// Identity key, hex.
    public_key: String,
    public_key_encoding: &'static str,
    /// The Ed25519 key that signs our adverts (bound to `public_key`), hex.
    signing_key: String,
    uptime_ms: u64,
    listeners: Vec<String>,
    #[serde(flatten)]
    discovery: crate::actors::discovery::DiscoveryReport,
    /// Envelopes forwarded for others, by origin network.
    relayed: std::collections::HashMap<String, crate::actors::relay::RelayedCount>,
    /// Message counters.
    messages: crate::actors::relay::MessageCounters,
    /// What the durable path holds: the outbox, and what this node remembers as a target.
    durable: crate::actors::relay::DurableReport,
    /// As a public node: per foreign network, its members linked to us and what we relayed
    /// and dropped for it.
    foreign: std::collections::BTreeMap<String, crate::actors::relay::ForeignReport>,
    /// Public nodes of other networks that relay for us.
    public_relays: Vec<String>,
    /// Hole punching toward members reached through a relay.
    punch: std::collections::BTreeMap<String, crate::actors::relay::PunchReport>,
    /// `punch` frames dropped because this node had not asked for them.
    punches_refused: u64,
    /// Punch attempts by outcome (`open`, `linked`, `failed`, `gave_up`).
    punch_outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// Requests of ours waiting for their answer.
    pending_requests: usize,
    /// Identity keys offered for a node that contradict the key held for it (refused, never
    /// taken): by a link's handshake or in an advert.
    key_conflicts: Vec<crate::proto::key_book::Conflict>,
    /// Adverts refused in our network, by reason.
    adverts_refused: std::collections::BTreeMap<&'static str, u64>,
    /// Topic subscriptions (ours and the members') and publish counters.
    topics: crate::proto::router::report::TopicReport,
    /// Scripts running and queued now.
    scripts: ScriptStats,
    /// The event stream.
    events: crate::actors::events::EventStats,
    /// Where the config in force came from: file, its SHA-256, when loaded, reloads.
    config: crate::node::ConfigInfo,
    counters: crate::metrics::Snapshot,
}

async fn status(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(gather_status(&state).await?))
}

/// Asks every actor for its part of `/status`.
async fn gather_status(state: &ApiState) -> Result<Status, ApiError> {
    let timeout = Duration::from_millis(ACTOR_TIMEOUT_MS);
    let mut report = state.discovery.send(GetReport).timeout(timeout).await?;
    let relay = state.relay.send(GetRoutes).timeout(timeout).await?;
    let scripts = state.script.send(GetScriptStats).timeout(timeout).await?;
    let events = state
        .events
        .send(crate::actors::events::GetEventStats)
        .timeout(timeout)
        .await?;
    for peer in &mut report.peers {
        if let Some(r) = relay.routes.get(&peer.id) {
            peer.next_hop = Some(r.next_hop.clone());
            peer.hops = Some(r.hops);
            // Reachable through a relay counts as Active even without a direct link.
            peer.state = PeerState::Active;
        }
        peer.public_relay = relay.public_relays.contains(&peer.id);
    }
    // Nodes known only from routing adverts (never linked, never in a welcome): reachable
    // through a relay.
    for (id, r) in &relay.routes {
        if *id != state.node.local.node_id && !report.peers.iter().any(|p| p.id == *id) {
            report.peers.push(PeerReport {
                id: id.clone(),
                state: PeerState::Active,
                public_key: r.public_key.clone().unwrap_or_default(),
                key_verified: false,
                key: r.key,
                version: None,
                addrs: Vec::new(),
                learned_from: Some(r.next_hop.clone()),
                links: Vec::new(),
                next_hop: Some(r.next_hop.clone()),
                hops: Some(r.hops),
                public_relay: relay.public_relays.contains(id),
            });
        }
    }
    report.peers.sort_by(|a, b| a.id.cmp(&b.id));
    let mut key_conflicts = std::mem::take(&mut report.key_conflicts);
    key_conflicts.extend(relay.key_conflicts);
    key_conflicts.sort_by(|a, b| (&a.node_id, a.first_unix_ms).cmp(&(&b.node_id, b.first_unix_ms)));
    let node = &state.node;
    Ok(Status {
        id: node.local.node_id.clone(),
        network: node.local.network.clone(),
        version: VERSION,
        public_key: hex::encode(node.keys.identity.public()),
        public_key_encoding: "hex",
        signing_key: hex::encode(node.keys.identity.signing_public()),
        uptime_ms: node.now_ms(),
        listeners: node.local.listen_addrs.clone(),
        discovery: report,
        relayed: relay.relayed,
        messages: relay.messages,
        durable: relay.durable,
        foreign: relay.foreign,
        public_relays: relay.public_relays,
        punch: relay.punch,
        punches_refused: relay.punches_refused,
        punch_outcomes: relay.punch_outcomes,
        pending_requests: relay.pending,
        key_conflicts,
        adverts_refused: relay.adverts_refused,
        topics: relay.topics,
        scripts,
        events,
        config: (**node.loaded.load()).clone(),
        counters: node.metrics.snapshot(),
    })
}

/// `GET /topology`: the link-state graph of every network this node routes in (its own, and
/// each foreign network it relays for), with what it knows of its own links: RTT, transports,
/// whether a path was punched.
async fn topology(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let t = state
        .relay
        .send(GetTopology)
        .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
        .await?;
    Ok(HttpResponse::Ok().json(t))
}

/// Default and largest `limit` of `GET /messages`.
pub const DEFAULT_INBOX_LIMIT: usize = 256;
/// See [`DEFAULT_INBOX_LIMIT`].
pub const MAX_INBOX_LIMIT: usize = 10_000;
/// Body bytes `GET /messages` shows of each message (as lossy text; `truncated` says when cut).
pub const INBOX_SHOWN_BODY_BYTES: usize = 4096;

/// `GET /messages?limit=&since=&from=`: the durable inbox of plain messages, newest last.
async fn messages(
    state: web::Data<ApiState>,
    q: web::Query<std::collections::HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let limit = query_number(&q, "limit")?
        .map_or(DEFAULT_INBOX_LIMIT, |n| n as usize)
        .clamp(1, MAX_INBOX_LIMIT);
    let query = InboxQuery {
        limit,
        since_unix_ms: query_number(&q, "since")?,
        from: q.get("from").cloned(),
        topic: match q.get("topic") {
            None => None,
            Some(f) => {
                crate::proto::topic::check_filter(f)
                    .map_err(|e| ApiError::BadRequest(format!("topic filter {f:?} {e}")))?;
                Some(f.clone())
            }
        },
    };
    let list = state
        .store
        .send(QueryInbox(query))
        .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
        .await?
        .map_err(|e| match e {
            StoreFailure::Busy => ApiError::Busy(e.to_string()),
            StoreFailure::Failed(m) => ApiError::StoreUnavailable(m),
        })?;
    let list: Vec<_> = list
        .iter()
        .map(|r| {
            let shown = &r.body[..r.body.len().min(INBOX_SHOWN_BODY_BYTES)];
            json!({
                "id": r.message_id.to_string(),
                "source": r.source,
                "received_unix_ms": r.received_unix_ms,
                "hops": r.hops,
                "bytes": r.bytes,
                "body": String::from_utf8_lossy(shown),
                "truncated": (shown.len() as u64) < r.bytes,
                "topic": r.topic,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "messages": list })))
}

/// `GET /health`: the node is up (its listeners are bound before the API is).
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"ok": true}))
}

async fn config(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(state.node.live.load().redacted_json())
}

/// `POST /config/reload`: re-reads the config file (what SIGHUP does). 200 with the changed
/// fields; 400 `config_invalid` when the file does not load, 409 `restart_needed` naming the
/// fields that only a restart can change; either way the running config stays.
async fn reload(state: web::Data<ApiState>) -> HttpResponse {
    use crate::node::ReloadError;
    match state.reloader.reload().await {
        Ok(r) => HttpResponse::Ok().json(json!({
            "reloaded": true,
            "changed": r.changed,
            "warnings": r.warnings,
            "config": *state.node.loaded.load_full(),
        })),
        Err(e) => {
            let (status, code, fields) = match &e {
                ReloadError::Invalid(_) => (StatusCode::BAD_REQUEST, "config_invalid", vec![]),
                ReloadError::RestartNeeded(f) => {
                    (StatusCode::CONFLICT, "restart_needed", f.clone())
                }
                ReloadError::Unavailable => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable", vec![])
                }
            };
            let mut body = json!({"error": code, "message": e.to_string()});
            if !fields.is_empty() {
                body["fields"] = json!(fields);
            }
            HttpResponse::build(status).json(body)
        }
    }
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// Test-only: `POST /debug/fault` with header `peer: <dialled URL>` and body `panic` or
/// `error` makes that dialer fail, to show supervision; body `drop-data N` (no header) makes
/// this node lose the next N data frames it sends (e.g. a receipt), `store-fail N` fail its next
/// N store writes. Absent from release builds.
#[cfg(feature = "fault-injection")]
async fn fault(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    body: String,
) -> Result<HttpResponse, ApiError> {
    use crate::actors::discovery::InjectPeerFault;
    use crate::actors::peer::InjectFault;
    if let Some(n) = body.trim().strip_prefix("store-fail ") {
        let n = n
            .parse::<u32>()
            .map_err(|_| ApiError::BadRequest(format!("store-fail needs a count, got {n:?}")))?;
        state
            .store
            .send(crate::actors::store::FailWrites(n))
            .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
            .await?;
        return Ok(HttpResponse::Ok().json(json!({"injected": true})));
    }
    if let Some(n) = body.trim().strip_prefix("drop-data ") {
        let n = n
            .parse::<u32>()
            .map_err(|_| ApiError::BadRequest(format!("drop-data needs a count, got {n:?}")))?;
        state
            .relay
            .send(crate::actors::relay::DropData(n))
            .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
            .await?;
        return Ok(HttpResponse::Ok().json(json!({"injected": true})));
    }
    let target = req
        .headers()
        .get("peer")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::BadRequest("missing header: peer".into()))?
        .to_string();
    let fault = match body.trim() {
        "panic" => InjectFault::Panic,
        "error" => InjectFault::Error,
        other => return Err(ApiError::BadRequest(format!("unknown fault {other:?}"))),
    };
    let found = state
        .discovery
        .send(InjectPeerFault { target, fault })
        .timeout(Duration::from_millis(ACTOR_TIMEOUT_MS))
        .await?;
    if found {
        Ok(HttpResponse::Ok().json(json!({"injected": true})))
    } else {
        Err(ApiError::NotFound)
    }
}

/// The host part of an HTTP authority (`host`, `host:port`, `[v6]:port`), lowercase, without a
/// trailing dot.
fn authority_host(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether this API answers to `host`: an IP literal (a rebinding attack needs a name),
/// `localhost` or a name under it (RFC 6761: always this machine), or a name the operator
/// listed in `api_hosts`.
fn host_allowed(host: &str, api_hosts: &[String]) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || host == "localhost"
        || host.ends_with(".localhost")
        || api_hosts.iter().any(|h| h == host)
}

/// The DNS rebinding and cross-site guard, on a request's `Host` and `Origin` headers.
///
/// A web page can make a browser send requests to this API in two ways: by rebinding its own
/// name to this machine (the request then says `Host: attacker.example`), or by sending a
/// cross-site request (it then carries `Origin: http://attacker.example`; browsers add it to
/// every cross-site and every POST request). So: the `Host` must pass [`host_allowed`] (a
/// request without one, from an HTTP/1.0 tool, passes), and an `Origin`, when present, must be
/// this API's own origin (same authority as `Host`) or a host listed in `api_hosts`. Tools like
/// curl send no `Origin` and are unaffected.
pub fn check_caller(
    host: Option<&str>,
    origin: Option<&str>,
    api_hosts: &[String],
) -> Result<(), ApiError> {
    if let Some(host) = host {
        if !host_allowed(&authority_host(host), api_hosts) {
            return Err(ApiError::MisdirectedHost(format!(
                "this API does not answer to host {host:?} (allowed: IP addresses, localhost,                  and the names in config api_hosts)"
            )));
        }
    }
    let Some(origin) = origin else {
        return Ok(());
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .map(|rest| rest.split('/').next().unwrap_or(""));
    let same_origin = match (authority, host) {
        (Some(a), Some(h)) => a.eq_ignore_ascii_case(h),
        _ => false,
    };
    let listed = authority.is_some_and(|a| api_hosts.contains(&authority_host(a)));
    if same_origin || listed {
        Ok(())
    } else {
        Err(ApiError::ForeignOrigin(format!(
            "requests from the web origin {origin:?} are refused (only this API's own origin and              the hosts in config api_hosts may call it from a browser)"
        )))
    }
}

/// Whether a request may skip the token: `GET /health` (so a supervisor or load balancer can
/// probe the node without holding the token; it says nothing but `{"ok": true}`) and the
/// dashboard's own files (the same for every node; the page asks for the token itself).
fn token_exempt(method: &actix_web::http::Method, path: &str) -> bool {
    method == actix_web::http::Method::GET
        && (matches!(path, "/health" | "/api/health") || dashboard::is_asset(path))
}

/// Whether the token may come as `?token=` (browsers cannot set headers on an `EventSource`
/// or a WebSocket): the event stream's two endpoints only.
fn token_in_query(path: &str) -> bool {
    matches!(
        path,
        "/events" | "/events/ws" | "/api/events" | "/api/events/ws"
    )
}

/// The `api_token` check: `authorization` is the request's `Authorization` header, `query`
/// the `token` query parameter where [`token_in_query`] allows one. The comparison runs in
/// constant time over SHA-256 digests, so neither the token's bytes nor its length leak
/// through timing.
pub fn check_token(
    expected: &str,
    authorization: Option<&str>,
    query: Option<&str>,
) -> Result<(), ApiError> {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let given = authorization
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .or(query);
    let Some(given) = given else {
        return Err(ApiError::Unauthorized(
            "this API needs its token: send `Authorization: Bearer <api_token>`".into(),
        ));
    };
    let (a, b) = (
        Sha256::digest(expected.as_bytes()),
        Sha256::digest(given.as_bytes()),
    );
    if bool::from(a.as_slice().ct_eq(b.as_slice())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("wrong API token".into()))
    }
}

/// Runs [`check_caller`] and, when `api_token` is set, [`check_token`] before every handler.
async fn guard_caller(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let header = |name| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
    };
    let api_hosts = req
        .app_data::<web::Data<ApiState>>()
        .map(|s| s.node.config.api_hosts.clone())
        .unwrap_or_default();
    check_caller(
        header(actix_web::http::header::HOST),
        header(actix_web::http::header::ORIGIN),
        &api_hosts,
    )?;
    let token = req
        .app_data::<web::Data<ApiState>>()
        .and_then(|s| s.node.live.load().api_token.clone());
    if let Some(token) = token {
        if !token_exempt(req.method(), req.path()) {
            let query = token_in_query(req.path())
                .then(|| {
                    web::Query::<std::collections::HashMap<String, String>>::from_query(
                        req.query_string(),
                    )
                    .ok()
                    .and_then(|q| q.get("token").cloned())
                })
                .flatten();
            check_token(
                token.expose(),
                header(actix_web::http::header::AUTHORIZATION),
                query.as_deref(),
            )?;
        }
    }
    next.call(req).await
}

fn routes(cfg: &mut web::ServiceConfig) {
    for prefix in ["", "/api"] {
        cfg.route(&format!("{prefix}/send"), web::post().to(send))
            .route(
                &format!("{prefix}/publish"),
                web::post().to(publish::publish),
            )
            .route(&format!("{prefix}/status"), web::get().to(status))
            .route(&format!("{prefix}/topology"), web::get().to(topology))
            .route(&format!("{prefix}/messages"), web::get().to(messages))
            .route(
                &format!("{prefix}/messages/{{id}}"),
                web::get().to(message_status),
            )
            .route(
                &format!("{prefix}/messages/{{id}}"),
                web::delete().to(cancel_message),
            )
            .route(&format!("{prefix}/outbox"), web::get().to(outbox))
            .route(&format!("{prefix}/events"), web::get().to(events::sse))
            .route(&format!("{prefix}/events/ws"), web::get().to(events::ws))
            .route(&format!("{prefix}/health"), web::get().to(health))
            .route(
                &format!("{prefix}/metrics"),
                web::get().to(metrics::metrics),
            )
            .route(&format!("{prefix}/config"), web::get().to(config))
            .route(&format!("{prefix}/config/reload"), web::post().to(reload));
    }
    dashboard::routes(cfg);
    #[cfg(feature = "fault-injection")]
    cfg.route("/debug/fault", web::post().to(fault));
}

/// Binds the HTTP API; the returned server must be spawned.
pub fn serve(
    state: ApiState,
    addr: SocketAddr,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(routes)
            .default_service(web::to(not_found))
            .wrap(actix_web::middleware::from_fn(guard_caller))
    })
    .workers(2)
    // A client that closes its side is gone: end the response at once. Without this a closed
    // event stream held its subscriber slot until two keep-alive writes failed.
    .h1_allow_half_closed(false)
    .disable_signals()
    .bind(addr)?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    Ok((server.run(), bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(host: Option<&str>, origin: Option<&str>, hosts: &[&str]) -> bool {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        check_caller(host, origin, &hosts).is_ok()
    }

    #[test]
    fn the_token_is_checked_exactly() {
        let token = "0123456789abcdef-token";
        assert!(check_token(token, Some("Bearer 0123456789abcdef-token"), None).is_ok());
        assert!(check_token(token, Some("bearer  0123456789abcdef-token "), None).is_ok());
        assert!(check_token(token, None, Some(token)).is_ok());
        for wrong in [
            Some("Bearer 0123456789abcdef-toke"),
            Some("Bearer 0123456789abcdef-tokenx"),
            Some("Basic 0123456789abcdef-token"),
            Some(token),
            Some("Bearer"),
            Some(""),
            None,
        ] {
            let e = check_token(token, wrong, None).unwrap_err();
            assert_eq!(e.status_code(), StatusCode::UNAUTHORIZED, "{wrong:?}");
        }
        // A wrong header is not rescued by a right query (the header is what was offered).
        assert!(check_token(token, Some("Bearer nope"), Some(token)).is_err());
        assert!(token_exempt(&actix_web::http::Method::GET, "/health"));
        assert!(!token_exempt(&actix_web::http::Method::POST, "/health"));
        assert!(!token_exempt(&actix_web::http::Method::GET, "/status"));
        assert!(token_exempt(&actix_web::http::Method::GET, "/"));
        assert!(token_exempt(&actix_web::http::Method::GET, "/ui/app.js"));
        assert!(!token_exempt(&actix_web::http::Method::GET, "/ui/other"));
        assert!(!token_exempt(&actix_web::http::Method::POST, "/"));
        assert!(!token_exempt(&actix_web::http::Method::GET, "/topology"));
        assert!(token_in_query("/events/ws") && !token_in_query("/send"));
    }

    #[test]
    fn tools_on_this_machine_pass() {
        assert!(ok(Some("127.0.0.1:9001"), None, &[]));
        assert!(ok(Some("[::1]:9001"), None, &[]));
        assert!(ok(Some("localhost:9001"), None, &[]));
        assert!(ok(Some("LOCALHOST."), None, &[]));
        assert!(ok(Some("api.localhost:9001"), None, &[]));
        assert!(
            ok(Some("192.0.2.7:9001"), None, &[]),
            "an IP literal cannot be rebound"
        );
        assert!(ok(None, None, &[]), "HTTP/1.0 without Host");
    }

    #[test]
    fn a_rebound_name_is_misdirected() {
        let e = check_caller(Some("attacker.example:9001"), None, &[]).unwrap_err();
        assert_eq!(e.status_code(), StatusCode::MISDIRECTED_REQUEST);
        assert!(!ok(Some("localhost.attacker.example"), None, &[]));
        assert!(
            ok(Some("node.lan:9001"), None, &["node.lan"]),
            "listed by the operator"
        );
    }

    #[test]
    fn a_foreign_origin_is_forbidden_and_the_own_origin_passes() {
        let e =
            check_caller(Some("127.0.0.1:9001"), Some("http://attacker.example"), &[]).unwrap_err();
        assert_eq!(e.status_code(), StatusCode::FORBIDDEN);
        assert!(!ok(Some("127.0.0.1:9001"), Some("null"), &[]));
        // Another local web app (other port) is another origin.
        assert!(!ok(
            Some("127.0.0.1:9001"),
            Some("http://127.0.0.1:8080"),
            &[]
        ));
        assert!(ok(
            Some("127.0.0.1:9001"),
            Some("http://127.0.0.1:9001"),
            &[]
        ));
        assert!(ok(
            Some("localhost:9001"),
            Some("http://LOCALHOST:9001"),
            &[]
        ));
        assert!(ok(
            Some("127.0.0.1:9001"),
            Some("https://dash.lan"),
            &["dash.lan"]
        ));
    }
}
