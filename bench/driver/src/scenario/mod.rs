//! The measurements, one module per group (the names `--only` takes).
//!
//! Each `run` starts what it needs in its own directory under the session's temp dir, records
//! one value per figure into [`Results`] and stops everything it started before returning
//! (owners kill their processes on drop, also when a step fails).

pub mod bulk;
pub mod ceiling;
pub mod durable;
pub mod inproc;
pub mod latency;
pub mod libp2p;
pub mod lossy;
pub mod mesh;
pub mod rate;
pub mod recovery;
pub mod relay;
pub mod topics;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::node::{Proc, Spec};
use crate::stats::Results;

/// Bound on two fresh nodes linking up.
pub const LINK_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// What every scenario gets.
pub struct Ctx {
    /// The `msgtier` binary.
    pub bin: PathBuf,
    /// The libp2p reference binary, when built.
    pub libp2p: Option<PathBuf>,
    /// This run's directory.
    pub dir: PathBuf,
    /// Short smoke run: smaller counts.
    pub quick: bool,
    /// Log level written into node configs.
    pub node_log: String,
}

impl Ctx {
    /// `full` normally, `quick` under `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// A fresh directory for one scenario.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Starts a node (config under `dir`) and waits for its API.
    pub fn start(&self, dir: &Path, spec: Spec) -> Result<Proc> {
        Proc::start(&self.bin, dir, spec, &self.node_log)
    }

    /// Starts `b`, then `a` configured to dial it over `transport`, both configs passed through
    /// `tune`; answers `(a, b)`. The caller waits for the link (`a.wait_route("b", 1, ..)`).
    pub fn start_pair(
        &self,
        dir: &Path,
        transport: &'static str,
        tune: impl Fn(Spec) -> Spec,
    ) -> Result<(Proc, Proc)> {
        let b_spec = tune(Spec::new("b", transport)?);
        let mut a_spec = tune(Spec::new("a", transport)?);
        a_spec.peers = vec![b_spec.url(transport)];
        let b = self.start(dir, b_spec)?;
        let a = self.start(dir, a_spec)?;
        Ok((a, b))
    }
}

/// A body of `len` bytes that names no script (printable, so logs stay readable).
pub fn body(len: usize) -> Vec<u8> {
    b"msgtier-bench "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// `messages.delivered` of a node's `/status`.
pub fn delivered(node: &Proc) -> Option<u64> {
    node.status().ok()?["messages"]["delivered"].as_u64()
}

/// Checks that `receiver` counted at least `expected` delivered messages; notes it otherwise.
pub fn check_delivered(res: &mut Results, what: &str, receiver: &Proc, expected: u64) {
    match delivered(receiver) {
        Some(d) if d >= expected => {}
        Some(d) => res.note(format!(
            "{what}: receiver counted {d} delivered messages, the sender got {expected} receipts"
        )),
        None => res.note(format!("{what}: could not read the receiver's counters")),
    }
}

/// Records a batch's accepted messages per second under `key`, or why there is no figure.
pub fn add_rate(res: &mut Results, key: &'static str, out: &crate::load::Outcome, none: &str) {
    if out.ok > 0 {
        res.add(key, out.ok as f64 / out.elapsed.as_secs_f64());
    } else {
        res.fail(key, none);
    }
}

/// Records one batch's errors as a note, if it had any.
pub fn note_errors(res: &mut Results, what: &str, out: &crate::load::Outcome) {
    let e = out.error_summary();
    if !e.is_empty() {
        res.note(format!("{what}: {} ok; {e}", out.ok));
    }
}
