//! Fan-out: `POST /send` with `target: *` (every member node, this one included) or
//! `target: id1,id2,...` sends the same message to each target, as one ordinary request per
//! target (sealed for it, with its own id, its script run exactly once), all at once, and answers
//! once every target has answered or the `timeout` has passed:
//!
//! ```json
//! {"id": "...", "targets": 3, "results": [
//!   {"node": "1", "status": "ran", "id": "...", "hops": 1, "exit_code": 0, "stdout": "...",
//!    "stderr": "", "timed_out": false, "truncated": false},
//!   {"node": "2", "status": "delivered", "id": "...", "hops": 1},
//!   {"node": "3", "status": "timeout", "error": "send_timeout", "message": "..."}]}
//! ```
//!
//! `status` is `ran` (a script ran; see `exit_code`), `delivered` (a plain message, receipt
//! back), `queued` (sent with a `ttl`, not answered yet: delivery goes on), `timeout` (no answer
//! in time, or no route), or `failed` (refused: `error` and `message` say why, as for a single
//! send). Results are sorted by node id.
//!
//! Bounded: at most [`MAX_FANOUT_TARGETS`] targets (the known-node limit), and the output of all
//! results together at most [`FANOUT_OUTPUT_BYTES`]: each result keeps an equal share of it and
//! says `truncated` when it was cut (or when the target already cut it).

use std::collections::BTreeSet;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Map, Value};

use super::{ApiError, ApiState, ACTOR_TIMEOUT_MS};
use crate::actors::discovery::GetKnownIds;
use crate::actors::relay::{Answer, GetRoutes, Send};
use crate::proto::e2e::Outcome;

/// Most targets of one fan-out: the known-node limit.
pub const MAX_FANOUT_TARGETS: usize = crate::proto::peer_table::MAX_KNOWN_NODES;

/// Script output (stdout and stderr) kept over all results of one fan-out.
pub const FANOUT_OUTPUT_BYTES: usize = 8 << 20;

/// Output a result keeps at least, however many targets share [`FANOUT_OUTPUT_BYTES`].
const MIN_SHARE_BYTES: usize = 4096;

/// Whether a `target` header asks for a fan-out: `*`, or a comma-separated list.
pub fn is_fanout(target: &str) -> bool {
    target == "*" || target.contains(',')
}

/// The target ids of a fan-out header, sorted, without duplicates.
async fn targets(state: &ApiState, header: &str) -> Result<Vec<String>, ApiError> {
    let ids: BTreeSet<String> = if header == "*" {
        let timeout = Duration::from_millis(ACTOR_TIMEOUT_MS);
        let known = state.discovery.send(GetKnownIds).timeout(timeout).await?;
        let relay = state.relay.send(GetRoutes).timeout(timeout).await?;
        known
            .into_iter()
            .chain(relay.routes.into_keys())
            .filter(|id| !relay.public_relays.contains(id))
            .chain(std::iter::once(state.node.local.node_id.clone()))
            .collect()
    } else {
        let mut ids = BTreeSet::new();
        for id in header.split(',').map(str::trim) {
            if id.is_empty() || id == "*" {
                return Err(ApiError::MissingTarget(format!(
                    "header `target` lists an empty id or `*` among others ({header:?}): give \
                     `*` alone, or node ids separated by commas"
                )));
            }
            ids.insert(id.to_string());
        }
        ids
    };
    if ids.len() > MAX_FANOUT_TARGETS {
        return Err(ApiError::TooManyTargets(format!(
            "{} targets; a fan-out reaches at most {MAX_FANOUT_TARGETS}",
            ids.len()
        )));
    }
    Ok(ids.into_iter().collect())
}

/// Cuts `bytes` to `limit`; whether it cut.
fn cut(bytes: &[u8], limit: usize) -> (&[u8], bool) {
    if bytes.len() > limit {
        (&bytes[..limit], true)
    } else {
        (bytes, false)
    }
}

/// One target's result, with its output cut to `share` bytes (stdout first).
fn result_json(node: &str, answer: Result<Answer, ApiError>, share: usize) -> Value {
    let mut r = Map::new();
    r.insert("node".into(), node.into());
    match answer {
        Ok(Answer::Done(d)) => {
            r.insert("id".into(), d.id.to_string().into());
            r.insert("hops".into(), d.hops.into());
            match d.outcome {
                Outcome::Delivered => {
                    r.insert("status".into(), "delivered".into());
                }
                Outcome::Script {
                    exit_code,
                    stdout,
                    stderr,
                    timed_out,
                    truncated,
                    interrupted,
                } => {
                    let (out, cut_out) = cut(&stdout, share);
                    let (err, cut_err) = cut(&stderr, share - out.len());
                    // The fields of a single send's JSON answer, with the output cut.
                    let shown = Outcome::Script {
                        exit_code,
                        stdout: out.to_vec(),
                        stderr: err.to_vec(),
                        timed_out,
                        truncated: truncated || cut_out || cut_err,
                        interrupted,
                    };
                    if let Value::Object(fields) = super::outcome_json(&shown) {
                        r.extend(fields.into_iter().filter(|(k, _)| k != "type"));
                    }
                    r.insert("status".into(), "ran".into());
                }
                Outcome::Failed { code, message } => {
                    r.insert("status".into(), "failed".into());
                    r.insert("error".into(), code.as_str().into());
                    r.insert("message".into(), message.into());
                }
            }
        }
        Ok(Answer::Queued {
            id,
            status: _,
            expires_unix_ms,
        }) => {
            r.insert("status".into(), "queued".into());
            r.insert("id".into(), id.to_string().into());
            r.insert("expires_unix_ms".into(), expires_unix_ms.into());
        }
        Err(e) => {
            let status = match e {
                ApiError::SendTimeout(_) | ApiError::Timeout => "timeout",
                _ => "failed",
            };
            r.insert("status".into(), status.into());
            r.insert("error".into(), e.code().into());
            r.insert("message".into(), e.to_string().into());
        }
    }
    Value::Object(r)
}

/// Sends `body` to every target of the `target` header and answers with every result.
pub async fn fanout(
    state: web::Data<ApiState>,
    header: &str,
    body: Bytes,
    timeout_ms: u64,
    ttl_ms: u64,
) -> Result<HttpResponse, ApiError> {
    let ids = targets(&state, header).await?;
    let share = (FANOUT_OUTPUT_BYTES / ids.len().max(1)).max(MIN_SHARE_BYTES);
    let mut pending: FuturesUnordered<_> = ids
        .iter()
        .map(|id| {
            let msg = Send {
                target: id.clone(),
                body: body.clone(),
                timeout_ms,
                ttl_ms,
            };
            let relay = state.relay.clone();
            async move {
                // The relay enforces the timeout; the extra second only catches a stuck actor.
                let answer = relay
                    .send(msg)
                    .timeout(Duration::from_millis(timeout_ms + 1_000))
                    .await
                    .map_err(ApiError::from)
                    .and_then(|r| r.map_err(ApiError::from));
                (id.clone(), answer)
            }
        })
        .collect();
    // Each answer is cut to its share as soon as it is taken, so the response holds at most
    // FANOUT_OUTPUT_BYTES of output (or MIN_SHARE_BYTES per target).
    let mut results = Vec::with_capacity(ids.len());
    while let Some((id, answer)) = pending.next().await {
        results.push((id.clone(), result_json(&id, answer, share)));
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|_| ApiError::Unavailable)?;
    Ok(HttpResponse::Ok().json(json!({
        "id": u64::from_le_bytes(id).to_string(),
        "targets": ids.len(),
        "results": results.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    })))
}
