//! The binary as a user runs it: bad configs fail with one clear line; the identity persists;
//! the client subcommands (send, status, peers, events, init, check, id) against real nodes.

mod common;

use std::process::Command;

fn run_with(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.json");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_msgtier"))
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

/// A bad listener scheme exits non-zero with one line naming file, field and problem.
#[test]
fn bad_config_names_file_field_and_problem() {
    let (code, stderr) = run_with(
        r#"{"id": "1", "secret": "s", "listeners": ["tcp://127.0.0.1:0", "quic://127.0.0.1:1"]}"#,
    );
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].ends_with(
            r#"node.json: listeners[1]: unknown scheme "quic" (expected udp, tcp or ws)"#
        ),
        "{stderr}"
    );
}

/// Bad JSON says where; a missing file says so.
#[test]
fn bad_json_and_missing_file() {
    let (code, stderr) = run_with("{\"id\": \"1\",\n \"secret\": }");
    assert_eq!(code, 2);
    assert!(stderr.contains("node.json: line 2"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_msgtier"))
        .arg("/nonexistent/msgtier/node.json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// A port already taken fails start-up with the listener named.
#[test]
fn bind_failure_names_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"id": "1", "secret": "s", "listeners": ["tcp://127.0.0.1:{port}"], "data_dir": {:?}}}"#,
        dir.path().join("data")
    );
    let (code, stderr) = run_with(&config);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("cannot listen on tcp://127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// The identity key is created once (mode 0600) and reused on the next start.
#[test]
fn identity_is_created_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let mut a = common::Node::start(common::Spec::new("a", "tcp"));
    let key1 = a.status()["public_key"].clone();
    let file = a.dir.path().join("data").join("identity.key");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    a.restart();
    assert_eq!(a.status()["public_key"], key1);
}

/// A key file others can read stops the start: exit code non-zero, one line naming the file
/// and the `chmod` that fixes it; after the fix the node starts with the same key.
#[test]
fn an_exposed_identity_key_stops_the_start_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let mut a = common::Node::start(common::Spec::new("a", "tcp"));
    let key1 = a.status()["public_key"].clone();
    a.kill();
    let file = a.dir.path().join("data").join("identity.key");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_msgtier"))
        .arg(a.config_path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!("chmod 600 {}", file.display())),
        "{stderr}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    a.restart();
    assert_eq!(a.status()["public_key"], key1);
}

/// A certificate that names another identity key stops the start with one line: the file, the
/// field, the problem and the key to sign instead.
#[test]
fn a_certificate_for_another_key_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = msgtier::identity::Identity::from_private([1; 32]);
    let cert = msgtier::proto::cert::Certificate::issue(&ca, "default", "1", [9; 32], u64::MAX / 2);
    let config = format!(
        r#"{{"id": "1", "secret": "s", "data_dir": {:?}, "network_ca": "{}", "certificate": "{}"}}"#,
        dir.path().join("data"),
        hex::encode(ca.signing_public()),
        cert.to_text()
    );
    let (code, stderr) = run_with(&config);
    assert_ne!(code, 0);
    // The start-up log (the new identity) comes first; the error is one line.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("certificate"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(
            "node.json: certificate: issued for \"1\" in network \"default\" with key 0909"
        ),
        "{stderr}"
    );
    assert!(
        lines[0].contains("this node's identity key is "),
        "{stderr}"
    );
}

/// Runs `msgtier ARGS` as a client with `env` set (and MSGTIER_API / MSGTIER_TOKEN cleared
/// unless given); returns exit code, stdout, stderr.
fn client(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msgtier"));
    cmd.args(args)
        .env_remove("MSGTIER_API")
        .env_remove("MSGTIER_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `msgtier send` prints a script's stdout and stderr and exits with its code; a plain message
/// prints the receipt; `peers` and `status` draw tables; `events` follows the stream.
#[test]
fn the_client_sends_runs_scripts_and_shows_peers_and_events() {
    use common::{Node, Spec};
    let mut spec_a = Spec::new("a", "tcp");
    spec_a.extra = serde_json::json!({ "scripts": {
        "mixed": "echo to-stdout; echo to-stderr >&2; exit 7",
        "binary": "printf '\\377\\000x'",
    }});
    let a = Node::start(spec_a);
    let mut spec_b = Spec::new("b", "tcp");
    spec_b.peers = vec![a.spec.url()];
    let b = Node::start(spec_b);
    a.wait_peer_state("b", "Active");
    b.wait_peer_state("a", "Active");
    let api_b = format!("127.0.0.1:{}", b.http_port);
    let env = [("MSGTIER_API", api_b.as_str())];

    let (code, out, err) = client(&["send", "a", "mixed"], &env, None);
    assert_eq!((code, out.as_str()), (7, "to-stdout\n"), "{err}");
    assert!(err.contains("to-stderr"), "{err}");

    // Output that is not UTF-8 comes through byte for byte.
    let raw = Command::new(env!("CARGO_BIN_EXE_msgtier"))
        .args(["send", "a", "binary"])
        .env("MSGTIER_API", &api_b)
        .output()
        .unwrap();
    assert_eq!(
        raw.stdout,
        b"\xff\x00x",
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );

    let (code, out, err) = client(&["send", "a", "a plain message"], &env, None);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("delivered to a (1 hop), id "), "{out}");

    // From stdin; --api wins over MSGTIER_API.
    let api_arg = format!("--api=http://{api_b}");
    let (code, out, err) = client(
        &["send", "a", "-", &api_arg],
        &[("MSGTIER_API", "127.0.0.1:1")],
        Some(b"from stdin"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("delivered to a"), "{out}");
    let inbox = a.http("GET", "/messages?from=b", &[], b"").unwrap().json();
    let bodies: Vec<&str> = inbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert!(bodies.contains(&"from stdin"), "{bodies:?}");

    // An error answer: one line, the client's own exit status.
    let (code, _, err) = client(&["send", "nobody", "x"], &env, None);
    assert_eq!(code, 69);
    assert!(err.starts_with("msgtier: 404 peer_not_found"), "{err}");

    let (code, out, err) = client(&["peers"], &env, None);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..4], ["a", "Active", "direct", "tcp"], "{out}");
    assert!(out.starts_with("ID"), "{out}");
    let (code, out, _) = client(&["status", "--json"], &env, None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"], "b");
    let (code, out, _) = client(&["status"], &env, None);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l == "id           b"), "{out}");

    // `events` on a: one line per event, as they come.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_msgtier"))
        .args(["events", "--types", "message", "--api"])
        .arg(format!("127.0.0.1:{}", a.http_port))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // The stream is open once the node counts a subscriber.
    a.wait("an event subscriber", || {
        a.status()["events"]["subscribers"] == 1
    });
    assert_eq!(b.send("a", b"watched", &[]).status, 200);
    let line = rx.recv_timeout(common::WAIT).expect("an event line");
    follow.kill().unwrap();
    let _ = follow.wait();
    assert!(
        line.contains(" message ") && line.contains("from b") && line.ends_with(": watched"),
        "{line}"
    );
}

/// With `api_token`, the client says what is missing, and takes the token from MSGTIER_TOKEN
/// or from `--config` (which also gives the address).
#[test]
fn the_client_uses_the_token_from_env_or_config() {
    use common::{Node, Spec};
    const TOKEN: &str = "cli-test-token-0123456789";
    let mut spec = Spec::new("a", "tcp");
    spec.extra = serde_json::json!({ "api_token": TOKEN });
    let a = Node::start(spec);
    let api = format!("127.0.0.1:{}", a.http_port);
    let (code, _, err) = client(&["status", "--api", &api], &[], None);
    assert_eq!(code, 69);
    assert!(
        err.contains("401 unauthorized") && err.contains("MSGTIER_TOKEN"),
        "{err}"
    );
    let (code, _, err) = client(
        &[
            "status",
            "--api",
            &api,
            "--token",
            "wrong-token-wrong-token",
        ],
        &[],
        None,
    );
    assert_eq!(code, 69);
    assert!(err.contains("not this node's api_token"), "{err}");
    let (code, out, err) = client(&["peers", "--api", &api], &[("MSGTIER_TOKEN", TOKEN)], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "no peers known yet");
    let config = a.config_path();
    let (code, out, err) = client(
        &["status", "--json", "--config", config.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"id\": \"a\""), "{out}");
    // Nothing to reach: the message says what was tried.
    let (code, _, err) = client(&["status", "--api", "127.0.0.1:1"], &[], None);
    assert_eq!(code, 69);
    assert!(
        err.contains("cannot reach the msgtier API at http://127.0.0.1:1 (from --api)"),
        "{err}"
    );
}

/// `init` writes a config that `check` accepts and a node runs; it never overwrites; `id`
/// prints the keys the running node then shows.
#[test]
fn init_check_id_and_the_new_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.json");
    let p = path.to_str().unwrap();
    let (code, out, err) = client(&["init", "--id", "fresh", p], &[], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("start it:") && out.contains("add a peer:"),
        "{out}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the file holds the secret");
    let (code, _, err) = client(&["init", "--id", "fresh", p], &[], None);
    assert_eq!(code, 69);
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) = client(
        &[
            "init",
            "--id",
            "bad id",
            dir.path().join("x.json").to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(code, 69, "{err}");

    let (code, out, err) = client(&["check", p], &[], None);
    assert_eq!(code, 0, "{err}");
    let effective: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(effective["secret"], "<redacted>");
    assert_eq!(effective["id"], "fresh");
    let text = std::fs::read_to_string(&path).unwrap();
    let secret = text.lines().find(|l| l.contains("\"secret\"")).unwrap();
    assert!(
        !out.contains(secret.split('"').nth(3).unwrap()),
        "check shows no secret"
    );
    let (code, _, err) = client(
        &["check", dir.path().join("none.json").to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("none.json"), "{err}");

    let (code, out, err) = client(&["id", p], &[], None);
    assert_eq!(code, 0, "{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("public_key  "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();

    // The node runs on it, and shows the same key.
    let mut node = Command::new(env!("CARGO_BIN_EXE_msgtier"))
        .args(["run", p])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = None;
    common::wait_until("the fresh node's API", common::WAIT, || {
        let (code, out, _) = client(&["status", "--json", "--config", p], &[], None);
        if code == 0 {
            status = serde_json::from_str::<serde_json::Value>(&out).ok();
        }
        code == 0
    });
    node.kill().unwrap();
    let _ = node.wait();
    assert_eq!(status.unwrap()["public_key"], key.as_str());
}
