//! The HTTP API (actix-web): `GET /status`, `GET /config`, also under `/api/`.
//!
//! Handlers never touch node state directly: they ask the actors by message with a timeout and
//! map a mailbox failure to 503 and a timeout to 504. Every error is JSON
//! `{"error": "<code>", "message": "<text>"}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, MailboxError};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use serde::Serialize;
use serde_json::json;

use crate::actors::discovery::{DiscoveryActor, GetReport};
use crate::actors::relay::{GetRoutes, RelayActor};
use crate::node::{NodeShared, VERSION};

/// How long a handler waits for an actor before answering 504.
pub const ACTOR_TIMEOUT_MS: u64 = 5_000;

/// What the handlers need.
#[derive(Clone)]
pub struct ApiState {
    pub node: Arc<NodeShared>,
    pub discovery: Addr<DiscoveryActor>,
    pub relay: Addr<RelayActor>,
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
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Timeout => "timeout",
            ApiError::Unavailable => "unavailable",
            ApiError::NotFound => "not_found",
            ApiError::BadRequest(_) => "bad_request",
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
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(json!({"error": self.code(), "message": self.to_string()}))
    }
}

/// The `/status` document.
#[derive(Serialize)]
struct Status {
    id: String,
    network: String,
    version: &'static str,
    /// Identity key, hex.
    public_key: String,
    public_key_encoding: &'static str,
    uptime_ms: u64,
    listeners: Vec<String>,
    #[serde(flatten)]
    discovery: crate::actors::discovery::DiscoveryReport,
    counters: crate::metrics::Snapshot,
}

async fn status(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let timeout = Duration::from_millis(ACTOR_TIMEOUT_MS);
    let mut report = state.discovery.send(GetReport).timeout(timeout).await?;
    let routes = state.relay.send(GetRoutes).timeout(timeout).await?;
    for peer in &mut report.peers {
        if let Some(r) = routes.get(&peer.id) {
            peer.next_hop = Some(r.next_hop.clone());
            peer.hops = Some(r.hops);
        }
    }
    let node = &state.node;
    Ok(HttpResponse::Ok().json(Status {
        id: node.local.node_id.clone(),
        network: node.local.network.clone(),
        version: VERSION,
        public_key: hex::encode(node.keys.identity.public()),
        public_key_encoding: "hex",
        uptime_ms: node.now_ms(),
        listeners: node.local.listen_addrs.clone(),
        discovery: report,
        counters: node.metrics.snapshot(),
    }))
}

async fn config(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(state.node.config.redacted_json())
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// Test-only: `POST /debug/fault` with header `peer: <dialled URL>` and body `panic` or
/// `error` makes that dialer fail, to show supervision. Absent from release builds.
#[cfg(feature = "fault-injection")]
async fn fault(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    body: String,
) -> Result<HttpResponse, ApiError> {
    use crate::actors::discovery::InjectPeerFault;
    use crate::actors::peer::InjectFault;
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

fn routes(cfg: &mut web::ServiceConfig) {
    for prefix in ["", "/api"] {
        cfg.route(&format!("{prefix}/status"), web::get().to(status))
            .route(&format!("{prefix}/config"), web::get().to(config));
    }
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
    })
    .workers(2)
    .disable_signals()
    .bind(addr)?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    Ok((server.run(), bound))
}
