//! `POST /publish`: header `topic`, optional `ttl` (seconds), body = the message. Answers 200
//! `{"id", "topic", "subscribers": n, "nodes": [...]}` once every copy is sent (live) or on disk
//! (with a ttl: `"messages": [{"node", "id"}]` names each subscriber's outbox entry, for
//! `GET /messages/{id}`). Subscribers no copy could go to now are listed in `"failed"`.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{ApiError, ApiState, ACTOR_TIMEOUT_MS};
use crate::actors::relay::{PublishError, PublishTopic};

/// Longest a publish with a ttl waits for its copies to reach the disk.
const PUBLISH_STORE_WAIT_MS: u64 = 30_000;

pub async fn publish(
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
    let topic = match header("topic") {
        Ok(Some(t)) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) => {
            return Err(ApiError::MissingTopic(
                "header `topic` (e.g. alerts.disk) is required".into(),
            ))
        }
        Err(_) => return Err(ApiError::MissingTopic("header `topic` is not text".into())),
    };
    crate::proto::topic::check_topic(&topic)
        .map_err(|e| ApiError::BadTopic(format!("topic {topic:?} {e}")))?;
    let config = &state.node.config;
    let ttl_ms = super::ttl_ms(header("ttl")?, config)?;
    let limit = config.publish_max_bytes.min(config.max_body_bytes);
    let body = match super::read_body(&req, &mut payload, limit).await {
        Ok(body) => body,
        Err(super::BodyError::TooLarge) => {
            return Err(ApiError::PublishTooLarge(format!(
                "this node publishes messages of at most {limit} bytes (publish_max_bytes)"
            )))
        }
        Err(super::BodyError::Read(e)) => return Err(e),
    };
    let wait = if ttl_ms > 0 {
        PUBLISH_STORE_WAIT_MS
    } else {
        ACTOR_TIMEOUT_MS
    };
    let published = state
        .relay
        .send(PublishTopic {
            topic: topic.clone(),
            body,
            ttl_ms,
        })
        .timeout(Duration::from_millis(wait))
        .await?
        .map_err(|e| match e {
            PublishError::BadTopic(..) => ApiError::BadTopic(e.to_string()),
            PublishError::TooLarge { .. } => ApiError::PublishTooLarge(e.to_string()),
            PublishError::RateLimited { retry_after_ms, .. } => ApiError::TopicRateLimited {
                message: e.to_string(),
                retry_after_s: retry_after_ms.div_ceil(1000).max(1),
            },
            PublishError::Send(e) => e.into(),
        })?;
    let mut answer = json!({
        "id": published.id.to_string(),
        "topic": topic,
        "subscribers": published.subscribers.len(),
        "nodes": published.subscribers,
    });
    if ttl_ms > 0 {
        answer["messages"] = published
            .durable
            .iter()
            .map(|(node, id)| json!({"node": node, "id": id.to_string()}))
            .collect();
    }
    if !published.failed.is_empty() {
        answer["failed"] = published
            .failed
            .iter()
            .map(|(node, error)| json!({"node": node, "error": error}))
            .collect();
    }
    Ok(HttpResponse::Ok().json(answer))
}
