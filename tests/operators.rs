//! For apps and operators, against the real binary: the event stream (SSE and WebSocket),
//! `/metrics`, the API token, hot reload, `/health`.

mod common;

use std::time::{Duration, Instant};

use common::{Node, Spec, WAIT};
use serde_json::Value;

fn pair() -> (Node, Node) {
    let a = Node::start(Spec::new("a", "tcp"));
    let mut spec_b = Spec::new("b", "tcp");
    spec_b.peers = vec![a.spec.url()];
    let b = Node::start(spec_b);
    a.wait_peer_state("b", "Active");
    (a, b)
}

/// An SSE client sees messages and a peer going down and coming back, as they happen; after a
/// reconnect with `Last-Event-ID` it gets what it missed, with no gap in the ids.
#[test]
fn the_event_stream_reports_messages_and_peers_and_resumes_without_a_gap() {
    let (a, mut b) = pair();
    let mut events = a.events("/events", &[]);
    assert_eq!(events.status, 200);
    assert!(
        events.head.contains("content-type: text/event-stream"),
        "{}",
        events.head
    );

    let sent = Instant::now();
    let r = b.send("a", b"hello events", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let m = events.wait_for("message", WAIT, |v| v["type"] == "message");
    eprintln!("message event after {:?}", sent.elapsed());
    assert_eq!(m["source"], "b");
    assert_eq!(m["body"], "hello events");
    assert_eq!(m["bytes"], 12);
    assert_eq!(m["message_id"], r.json()["id"]);
    assert!(m["id"].as_u64().is_some() && m["time_unix_ms"].as_u64().is_some());

    let killed = Instant::now();
    b.kill();
    let down = events.wait_for("peer_down of b", WAIT, |v| {
        v["type"] == "peer_down" && v["node"] == "b"
    });
    eprintln!("peer_down after {:?}: {down}", killed.elapsed());
    assert_eq!(down["transport"], "tcp");
    assert!(down["reason"].as_str().is_some_and(|r| !r.is_empty()));
    b.restart();
    let up = events.wait_for("peer_up of b", WAIT, |v| {
        v["type"] == "peer_up" && v["node"] == "b"
    });
    assert_eq!(up["kind"], "member");
    let last_id = up["id"].as_u64().unwrap();
    drop(events);

    // Missed while disconnected: a message; then resume.
    let r = b.send("a", b"while away", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let header = last_id.to_string();
    let mut resumed = a.events("/events", &[("Last-Event-ID", &header)]);
    let missed = |v: &Value| v["type"] == "message" && v["body"] == "while away";
    let (first_id, first) = resumed.next_frame(WAIT).expect("a replayed event");
    assert_eq!(first_id, Some(last_id + 1), "no gap after resuming");
    if !missed(&first) {
        resumed.wait_for("the missed message", WAIT, missed);
    }
    // `?since=` with a filter: only messages, from b.
    let mut filtered = a.events("/events?since=0&types=message&from=b", &[]);
    let (_, v) = filtered.next_frame(WAIT).expect("a replayed message");
    assert_eq!(v["type"], "message");
    let bad = a.http("GET", "/events?types=nonsense", &[], b"").unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("unknown event type"), "{}", bad.text());
}

/// A client that stops reading is cut off once its queue is full; the node goes on, and the
/// client finds a final `lagged` event when it reads again.
#[test]
fn a_stalled_event_client_is_cut_off_and_the_node_goes_on() {
    let a = Node::start(Spec::new("a", "tcp"));
    let mut stalled = a.events("/events?types=message", &[]);
    assert_eq!(stalled.status, 200);
    // Binary bodies: each event carries the lossy text and the base64 (~17 KB of JSON).
    let body = vec![0xffu8; 4096];
    let sent = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while a.status()["events"]["subscribers_lagged"].as_u64() == Some(0) {
                    for _ in 0..20 {
                        let r = a.send("a", &body, &[]);
                        assert_eq!(r.status, 200, "{}", r.text());
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    assert!(
                        sent.load(std::sync::atomic::Ordering::Relaxed) < 20_000,
                        "the stalled client was never cut off"
                    );
                }
            });
        }
    });
    eprintln!(
        "cut off after {} messages",
        sent.load(std::sync::atomic::Ordering::Relaxed)
    );
    let status = a.status();
    assert_eq!(status["events"]["subscribers"], 0, "{:#}", status["events"]);
    // The node still answers and still delivers.
    let r = a.send("a", b"still here", &[]);
    assert_eq!(r.status, 200);
    // Reading again: what was queued, then `lagged`, then the end.
    let mut last: Option<Value> = None;
    while let Some((_, v)) = stalled.next_frame(Duration::from_secs(10)) {
        last = Some(v);
    }
    let last = last.expect("events before the cut");
    assert_eq!(last["type"], "lagged", "{last}");
}

/// The WebSocket stream carries the same events, filtered the same way.
#[test]
fn the_websocket_stream_delivers_the_same_events() {
    let (a, b) = pair();
    let url = format!("ws://127.0.0.1:{}/events/ws?types=message", a.http_port);
    let (mut ws, _) = tungstenite::connect(url).expect("websocket");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(WAIT)).unwrap();
    }
    let r = b.send("a", b"over ws", &[]);
    assert_eq!(r.status, 200);
    loop {
        let msg = ws.read().expect("a websocket message");
        if let tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "message", "the filter passes only messages: {v}");
            assert_eq!(v["body"], "over ws");
            assert_eq!(v["source"], "b");
            break;
        }
    }
}

/// `GET /health` answers without anything else.
#[test]
fn health_answers_ok() {
    let a = Node::start(Spec::new("a", "tcp"));
    let r = a.http("GET", "/health", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"ok": true}));
}

/// With `api_token` set, every endpoint but `GET /health` needs it; a missing or wrong token
/// gets 401 JSON (and the node does the work only with the right one); `/config` never shows
/// it; the event WebSocket takes it as `?token=`.
#[test]
fn the_api_token_guards_every_endpoint_but_health() {
    const TOKEN: &str = "operators-test-token-0123456789";
    let mut spec = Spec::new("a", "tcp");
    spec.extra = serde_json::json!({ "api_token": TOKEN, "scripts": {"hello": "echo hi"} });
    let a = Node::start(spec);
    let port = a.http_port;
    let health = common::http_full(port, "GET", "/health", &[], b"").unwrap();
    assert_eq!(health.status, 200, "no token needed for /health");
    for path in ["/", "/ui/app.js", "/ui/style.css", "/ui/d3-force.min.js"] {
        let r = common::http_full(port, "GET", path, &[], b"").unwrap();
        assert_eq!(
            r.status, 200,
            "the dashboard's {path} loads without the token"
        );
        // No framing by other pages (clickjacking), no script or connection from elsewhere.
        let csp = r.header("content-security-policy").unwrap_or_default();
        for rule in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(rule), "{path}: CSP {csp:?} lacks {rule}");
        }
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        // A browser revalidates with the ETag and gets a 304 without the body.
        let etag = r.header("etag").expect("an ETag").to_string();
        let again = common::http_full(port, "GET", path, &[("if-none-match", &etag)], b"").unwrap();
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty(), "{path}");
    }

    let wrong = "Bearer operators-test-token-012345678x";
    for (method, path) in [
        ("GET", "/status"),
        ("GET", "/config"),
        ("GET", "/messages"),
        ("GET", "/outbox"),
        ("GET", "/api/status"),
        ("GET", "/topology"),
        ("GET", "/ui/other.js"),
        ("POST", "/"),
        ("POST", "/send"),
        ("GET", "/events"),
        ("GET", "/metrics"),
        ("GET", "/nonexistent"),
        ("POST", "/health"),
    ] {
        for auth in [None, Some(wrong), Some(TOKEN)] {
            let headers: Vec<(&str, &str)> =
                auth.map(|v| ("authorization", v)).into_iter().collect();
            let r = common::http_full(port, method, path, &headers, b"x").unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.text());
            assert_eq!(r.json()["error"], "unauthorized", "{method} {path}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"msgtier\"")
            );
        }
    }
    // A refused /send ran nothing: the script counter did not move.
    let r = common::http_full(
        port,
        "POST",
        "/send",
        &[("target", "a"), ("authorization", wrong)],
        b"hello",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(a.status()["messages"]["scripts_run"], 0);

    // The right token: everything works (Node::http sends it).
    let r = a.send("a", b"hello", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hi\n");
    let config = a.http("GET", "/config", &[], b"").unwrap();
    assert_eq!(config.status, 200);
    assert_eq!(config.json()["api_token"], "<redacted>");
    assert!(!config.text().contains(TOKEN));
    assert!(
        !a.log_all().contains(TOKEN),
        "the token never reaches the log"
    );

    // The event stream: with the header, or with ?token= (browsers cannot set headers there).
    let bearer = format!("Bearer {TOKEN}");
    let sse = a.events("/events", &[("Authorization", &bearer)]);
    assert_eq!(sse.status, 200);
    let sse = a.events(&format!("/events?token={TOKEN}"), &[]);
    assert_eq!(sse.status, 200);
    let refused = a.events("/events?token=nope-nope-nope-nope", &[]);
    assert_eq!(refused.status, 401);
    let url = format!("ws://127.0.0.1:{port}/events/ws?token={TOKEN}");
    assert!(tungstenite::connect(url).is_ok(), "websocket with ?token=");
    let url = format!("ws://127.0.0.1:{port}/events/ws");
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a websocket without the token: {:?}", other.map(|_| ())),
    }
    // ?token= is for the event stream only.
    let r = common::http_full(port, "GET", &format!("/status?token={TOKEN}"), &[], b"").unwrap();
    assert_eq!(r.status, 401);
}

/// The value of one series (`name{labels}` exactly as exposed) in a Prometheus text page.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// `GET /metrics` is valid Prometheus text (checked by `promtool check metrics` when it is
/// installed, always under CI), follows the naming rules, and says what `/status` says.
#[test]
fn metrics_are_valid_prometheus_text_and_agree_with_status() {
    let mut spec_a = Spec::new("a", "tcp");
    spec_a.extra = serde_json::json!({ "scripts": {"ok": "echo fine", "bad": "exit 3"} });
    let a = Node::start(spec_a);
    let mut spec_b = Spec::new("b", "tcp");
    spec_b.peers = vec![a.spec.url()];
    let b = Node::start(spec_b);
    a.wait_peer_state("b", "Active");
    b.wait_peer_state("a", "Active");
    assert_eq!(b.send("a", b"ok", &[]).status, 200);
    let bad = b.send("a", b"bad", &[]);
    assert_eq!(bad.header("x-exit-code"), Some("3"));
    assert_eq!(b.send("a", b"a plain message", &[]).status, 200);
    assert_eq!(b.send("nobody", b"x", &[]).status, 404);
    // One link RTT sample at least (the first heartbeat answer).
    a.wait("an RTT for b", || {
        a.peer("b")
            .is_some_and(|p| !p["links"][0]["rtt_ms"].is_null())
    });

    let r = a.http("GET", "/metrics", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    let status = a.status();

    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have promtool (apt-get install prometheus): {e}"
            );
            eprintln!("SKIPPED promtool check: {e}");
        }
    }
    // Our own naming rules, on every family.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split(' ').skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(name.starts_with("msgtier_"), "{line}");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{line}");
        }
        assert!(
            !name.contains("_ms") && !name.contains("millis"),
            "base units: {line}"
        );
    }

    let version = env!("CARGO_PKG_VERSION");
    let info = text
        .lines()
        .find(|l| l.starts_with("msgtier_build_info{"))
        .expect("build info");
    assert!(
        info.contains(&format!("version=\"{version}\"")) && info.contains("id=\"a\""),
        "{info}"
    );
    assert_eq!(sample(&text, "msgtier_peers{state=\"Active\"}"), Some(1.0));
    assert_eq!(
        sample(&text, "msgtier_links{transport=\"tcp\",state=\"Active\"}"),
        Some(1.0)
    );
    let rtt = sample(
        &text,
        "msgtier_link_rtt_seconds{peer=\"b\",transport=\"tcp\",direction=\"inbound\"}",
    )
    .expect("an RTT gauge for b");
    assert!(rtt > 0.0 && rtt < 5.0, "seconds, not ms: {rtt}");
    let run = |o: &str| {
        sample(
            &text,
            &format!("msgtier_script_runs_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!((run("success"), run("failure")), (Some(1.0), Some(1.0)));
    assert_eq!(
        sample(&text, "msgtier_script_duration_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "msgtier_messages_delivered_total"),
        status["messages"]["delivered"].as_f64()
    );
    assert_eq!(
        sample(&text, "msgtier_messages_scripts_run_total"),
        status["messages"]["scripts_run"].as_f64()
    );
    assert_eq!(
        sample(&text, "msgtier_links_established_total"),
        status["counters"]["links_established"].as_f64()
    );
    assert!(sample(
        &text,
        "msgtier_links_refused_total{reason=\"wrong_secret\"}"
    )
    .is_some());
    assert!(sample(&text, "msgtier_messages_dropped_total{reason=\"no_route\"}").is_some());
    // The sender's side: four /send answers timed, one of them a 404.
    let text_b = b.http("GET", "/metrics", &[], b"").unwrap().text();
    assert_eq!(
        sample(&text_b, "msgtier_send_duration_seconds_count"),
        Some(4.0)
    );
    assert_eq!(sample(&text_b, "msgtier_messages_sent_total"), Some(3.0));
}

/// Rewrites a node's config file with `change` applied to its JSON.
fn edit_config(node: &Node, change: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = node.config_path();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    change(config.as_object_mut().unwrap());
    std::fs::write(&path, config.to_string()).unwrap();
}

/// SIGHUP and `POST /config/reload` apply scripts, limits, peers and the token without
/// dropping links; a change that needs a restart, or a broken file, is refused naming why,
/// and the running config stays.
#[test]
fn hot_reload_applies_what_it_can_and_refuses_the_rest() {
    let (mut a, b) = pair();
    let c = Node::start(Spec::new("c", "tcp"));
    let before = a.status();
    let established = before["counters"]["links_established"].clone();
    assert_eq!(before["config"]["reloads"], 0);
    let first_hash = before["config"]["sha256"].as_str().unwrap().to_string();
    assert_eq!(
        a.send("a", b"two", &[]).json()["delivered"],
        true,
        "no script two yet"
    );

    // SIGHUP: a new script, a new peer (c), a lower script limit.
    let c_url = c.spec.url();
    edit_config(&a, |cfg| {
        cfg.insert("scripts".into(), serde_json::json!({"two": "echo two"}));
        cfg.insert("max_concurrent_scripts".into(), 2.into());
        cfg["peers"]
            .as_array_mut()
            .unwrap()
            .push(c_url.clone().into());
    });
    a.signal(libc::SIGHUP);
    a.wait("the reload", || a.status()["config"]["reloads"] == 1);
    let after = a.status();
    assert_ne!(after["config"]["sha256"], first_hash.as_str());
    assert!(after["config"]["last_reload_error"].is_null());
    let r = a.send("a", b"two", &[]);
    assert_eq!(r.text(), "two\n", "the new script runs");
    a.wait_peer_state("c", "Active");
    assert_eq!(a.peer_state("b"), "Active");
    let links = a.status()["counters"]["links_established"]
        .as_u64()
        .unwrap();
    assert_eq!(
        links,
        established.as_u64().unwrap() + 1,
        "only c's link is new: b's stayed up"
    );
    assert_eq!(
        a.http("GET", "/config", &[], b"").unwrap().json()["max_concurrent_scripts"],
        2
    );
    let good = std::fs::read_to_string(a.config_path()).unwrap();

    // A field only a restart can change: refused by name, nothing applied.
    edit_config(&a, |cfg| {
        cfg.insert("network".into(), "elsewhere".into());
        cfg.insert("scripts".into(), serde_json::json!({"three": "echo three"}));
    });
    let r = a.http("POST", "/config/reload", &[], b"").unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"], "restart_needed");
    assert_eq!(r.json()["fields"], serde_json::json!(["network"]));
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("network cannot change"));
    assert_eq!(
        a.send("a", b"two", &[]).text(),
        "two\n",
        "the running config stays"
    );
    let status = a.status();
    assert_eq!(status["network"], "test");
    assert!(status["config"]["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("network"));

    // A broken file: the one-line load error, the node goes on.
    std::fs::write(a.config_path(), "{\"id\": \"a\",").unwrap();
    let r = a.http("POST", "/config/reload", &[], b"").unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "config_invalid");
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("node.json") && !message.contains('\n'),
        "{message}"
    );
    a.signal(libc::SIGHUP);
    a.wait("the refused SIGHUP reload", || {
        a.log_all().matches("config reload refused").count() >= 3
    });
    assert_eq!(a.peer_state("b"), "Active", "SIGHUP never stops the node");

    // Back to the good file, with a token now: the API wants it from the next request on.
    let mut config: Value = serde_json::from_str(&good).unwrap();
    let token = "reload-test-token-0123456789";
    config["api_token"] = token.into();
    std::fs::write(a.config_path(), config.to_string()).unwrap();
    let r = a.http("POST", "/config/reload", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], serde_json::json!(["api_token"]));
    let plain = common::http_full(a.http_port, "GET", "/status", &[], b"").unwrap();
    assert_eq!(plain.status, 401, "the reloaded token is in force");
    a.spec.extra["api_token"] = token.into();
    assert_eq!(a.status()["config"]["reloads"], 2);
    assert_eq!(a.peer_state("b"), "Active");
    drop(b);
}

/// A key pinned by a reload is the only one taken from then on: the node whose real key it is
/// not is refused when it links again (the link it had stays until it closes).
#[test]
fn a_reloaded_pin_refuses_the_next_link_with_another_key() {
    let (a, mut b) = pair();
    let wrong = "11".repeat(32);
    edit_config(&a, |cfg| {
        cfg.insert("pinned_keys".into(), serde_json::json!({ "b": wrong }));
    });
    let r = a.http("POST", "/config/reload", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], serde_json::json!(["pinned_keys"]));
    assert_eq!(a.peer_state("b"), "Active", "the proven link stays");
    b.kill();
    b.restart();
    a.wait("b's new link refused for its key", || {
        a.counter("links_refused", "key_mismatch") >= 1
    });
    let peer = a.peer("b").unwrap();
    assert_eq!(
        (peer["key"].as_str(), peer["public_key"].as_str()),
        (Some("pinned"), Some(wrong.as_str())),
        "{peer}"
    );
}

/// A client cannot hold more than the subscriber limit (64) of event streams: the next one is
/// refused with 503 (the WebSocket stream shares the limit) and the node keeps serving.
#[test]
fn event_streams_beyond_the_limit_are_refused() {
    let a = Node::start(Spec::new("a", "tcp"));
    let streams: Vec<_> = (0..64).map(|_| a.events("/events", &[])).collect();
    assert!(streams.iter().all(|s| s.status == 200));
    let over = a.events("/events", &[]);
    assert_eq!(over.status, 503, "{}", over.head);
    let ws = tungstenite::connect(format!("ws://127.0.0.1:{}/events/ws", a.http_port));
    assert!(ws.is_err(), "the WebSocket stream shares the limit");
    assert_eq!(a.status()["events"]["subscribers"], 64);
    assert_eq!(a.http("GET", "/health", &[], b"").unwrap().status, 200);

    // A client that goes away frees its slot when its connection closes, not at the next
    // keep-alive write that fails (two of them, 30 s, for a socket the peer has closed).
    let mut streams = streams;
    streams.truncate(60);
    a.wait("the 4 closed streams to free their slots", || {
        a.status()["events"]["subscribers"] == 60
    });
    let again = a.events("/events", &[]);
    assert_eq!(again.status, 200, "{}", again.head);
    drop(streams);
}
