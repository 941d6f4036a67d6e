//! Recovery times on a TCP pair A <-> B (each configured to dial the other) with
//! `heartbeat_interval_ms` 500 and `peer_timeout_ms` 3000:
//!
//! - restart: B is killed (SIGKILL); once A shows it Disconnected, B is started again with the
//!   same config and identity; measured from that spawn until A's `/status` shows B Active
//!   (process start, dial, Noise handshake and hello/welcome included);
//! - SIGSTOP: B is frozen; measured until A's `/status` shows B Disconnected, to be read
//!   against the configured 3000 ms (B is continued and re-links afterwards).
//!
//! A's `/status` is polled every 20 ms, which is the resolution of both figures.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{Ctx, LINK_UP_TIMEOUT};
use crate::node::{wait_for, Spec};
use crate::report::key;
use crate::stats::Results;

/// Configured heartbeat.
pub const HEARTBEAT_MS: u64 = 500;
/// Configured peer timeout.
pub const PEER_TIMEOUT_MS: u64 = 3000;
/// Polling interval of A's `/status`.
const POLL: Duration = Duration::from_millis(20);

/// Runs both recovery measurements.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let dir = ctx.subdir("recovery")?;
    let timing = |s: Spec| {
        s.set("heartbeat_interval_ms", json!(HEARTBEAT_MS))
            .set("peer_timeout_ms", json!(PEER_TIMEOUT_MS))
    };
    let mut a_spec = timing(Spec::new("a", "tcp")?);
    let mut b_spec = timing(Spec::new("b", "tcp")?);
    a_spec.peers = vec![b_spec.url("tcp")];
    b_spec.peers = vec![a_spec.url("tcp")];
    let a = ctx.start(&dir, a_spec)?;
    let mut b = ctx.start(&dir, b_spec)?;
    a.wait_route("b", 1, LINK_UP_TIMEOUT)?;
    let bound = Duration::from_secs(30);

    // Restart.
    b.kill();
    wait_for("a to see b Disconnected after a kill", bound, POLL, || {
        a.peer_state("b") == "Disconnected"
    })?;
    let t0 = Instant::now();
    b.relaunch()?;
    match wait_for("a to see b Active after a restart", bound, POLL, || {
        a.peer_state("b") == "Active"
    }) {
        Ok(_) => res.add(key::RESTART_ACTIVE, t0.elapsed().as_secs_f64() * 1e3),
        Err(_) => res.fail(
            key::RESTART_ACTIVE,
            format!("timeout > {} s", bound.as_secs()),
        ),
    }
    b.wait_api()?;
    a.wait_route("b", 1, LINK_UP_TIMEOUT)?;

    // SIGSTOP. Let heartbeats run for a while first, so the link is in its steady state.
    std::thread::sleep(Duration::from_millis(3 * HEARTBEAT_MS));
    let t0 = Instant::now();
    b.signal(libc::SIGSTOP);
    let r = wait_for("a to see b Disconnected after SIGSTOP", bound, POLL, || {
        a.peer_state("b") == "Disconnected"
    });
    let dt = t0.elapsed();
    b.signal(libc::SIGCONT);
    match r {
        Ok(_) => res.add(key::STOP_DISCONNECTED, dt.as_secs_f64() * 1e3),
        Err(_) => res.fail(
            key::STOP_DISCONNECTED,
            format!("timeout > {} s", bound.as_secs()),
        ),
    }
    a.wait_route("b", 1, LINK_UP_TIMEOUT)
        .context("b re-linking after SIGCONT")?;
    Ok(())
}
