//! The binary as a user runs it: bad configs fail with one clear line; the identity persists.

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
