//! The dashboard (`GET /`) in a real headless Chromium: tests/dashboard/browser.py drives it
//! with Playwright for Python against real nodes this test starts. Debian's `chromium` and
//! `pip install playwright` are needed (`.ci/run` installs both; Playwright's own browser
//! download is never used). Without them the test is skipped, except under CI, where it fails.
//!
//! Screenshots (desktop and narrow) land in `target/screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Node, Spec};

const TOKEN: &str = "dashboard-test-token-0123456789";

/// The system Chromium, if there is one.
fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("MSGTIER_CHROMIUM").map(PathBuf::from),
        Some("/usr/lib/chromium/chromium".into()),
        Some("/usr/bin/chromium".into()),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

fn python_has_playwright() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Skips (or, under CI, fails) when the browser tooling is missing.
fn tooling() -> Option<PathBuf> {
    let missing = match (chromium(), python_has_playwright()) {
        (Some(c), Ok(())) => return Some(c),
        (None, _) => "no Chromium (apt-get install chromium)".to_string(),
        (_, Err(e)) => format!("no Playwright for Python (pip install playwright): {e}"),
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the browser test: {missing}"
    );
    eprintln!("SKIPPED the dashboard browser test: {missing}");
    None
}

#[test]
fn the_dashboard_shows_the_mesh_live_in_a_real_browser() {
    let Some(chromium) = tooling() else {
        return;
    };
    // a dials b and c, b dials c: a triangle. Each has a script `hello`.
    let hello = |id: &str| vec![("hello".to_string(), format!("echo hello from {id}"))];
    let mut spec_c = Spec::new("c", "tcp");
    spec_c.scripts = hello("c");
    let c = Node::start(spec_c);
    let mut spec_b = Spec::new("b", "tcp");
    spec_b.scripts = hello("b");
    spec_b.peers = vec![c.spec.url()];
    let b = Node::start(spec_b);
    let mut spec_a = Spec::new("a", "tcp");
    spec_a.scripts = hello("a");
    spec_a.peers = vec![b.spec.url(), c.spec.url()];
    let a = Node::start(spec_a);
    // d, on its own (so a's mesh stays three nodes), has an API token.
    let mut spec_d = Spec::new("d", "tcp");
    spec_d.extra = serde_json::json!({ "api_token": TOKEN });
    let d = Node::start(spec_d);
    for (node, peer) in [(&a, "b"), (&a, "c"), (&b, "c")] {
        node.wait_peer_state(peer, "Active");
    }

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    let info = serde_json::json!({
        "a_port": a.http_port,
        "b_port": b.http_port,
        "d_port": d.http_port,
        "c_pid": c.pid(),
        "d_token": TOKEN,
        "chromium": chromium,
        "screenshots": shots,
    });
    let info_path = a.dir.path().join("browser.json");
    std::fs::write(&info_path, info.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browser.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&info_path)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("--- log of a ---\n{}", a.log_tail());
        eprintln!("--- log of d ---\n{}", d.log_tail());
        panic!(
            "the browser test failed ({}); screenshot of the moment in {}\n{stdout}\n{stderr}",
            out.status,
            shots.join("failure.png").display()
        );
    }
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}\n{stderr}");
    for name in ["dashboard-desktop.png", "dashboard-narrow.png"] {
        let len = std::fs::metadata(shots.join(name)).map_or(0, |m| m.len());
        assert!(len > 10_000, "{name} is missing or empty ({len} bytes)");
    }
    // The token never shows up in a log, though the page sent it on every call.
    assert!(!d.log_all().contains(TOKEN), "the token is in d's log");
}
