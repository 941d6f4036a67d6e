//! Simulation tests: whole networks of sans-io routers on a virtual clock
//! (`msgtier::proto::router::sim`), deterministic given the seed. They cover what process tests
//! are too slow or too noisy for: convergence of large graphs, flapping, partitions, route
//! withdrawal, the hop limit, a relay dying with requests in flight, foreign domains, punching.
//! Times below are virtual; each test takes well under a second of real time.

use msgtier::addr::Transport;
use msgtier::proto::e2e::Outcome;
use msgtier::proto::router::sim::Net;
use msgtier::proto::router::SendError;

/// Virtual milliseconds allowed for a network to converge.
const CONVERGE_MS: u64 = 60_000;

/// Adds nodes `n0..n{count}`.
fn nodes(net: &mut Net, count: usize) -> Vec<usize> {
    (0..count).map(|i| net.add(&format!("n{i}"))).collect()
}

/// Runs until every node routes to every other; answers the virtual time it took.
fn converge(net: &mut Net, what: &str) -> u64 {
    let start = net.now_ms();
    assert!(
        net.run_until(CONVERGE_MS, |n| n.converged()),
        "{what}: no full routes after {CONVERGE_MS} virtual ms"
    );
    let took = net.now_ms() - start;
    println!(
        "{what}: full routes after {took} virtual ms, {} adverts delivered",
        net.adverts_delivered
    );
    took
}

/// Sends a plain message and runs until it is answered; answers the outcome's hops.
fn deliver(net: &mut Net, from: usize, to: &str) -> Result<u8, String> {
    let id = net
        .send(from, to, "hello", 5_000)
        .map_err(|e| e.to_string())?;
    net.run_until(6_000, |n| n.outcome(from, id).is_some());
    match net.outcome(from, id) {
        Some(Ok(d)) if matches!(d.outcome, Outcome::Delivered) => Ok(d.hops),
        other => Err(format!("{other:?}")),
    }
}

/// A line of 17 (16 hops end to end), a ring of 32 and a star of 100 reach full routes within
/// a second of virtual time, and a message to the farthest node takes the shortest path.
#[test]
fn lines_rings_and_stars_converge() {
    for (shape, count, far, hops) in [
        ("line", 17, 16, 16),
        ("ring", 32, 16, 16),
        ("star", 100, 99, 2),
    ] {
        let mut net = Net::new(11);
        let n = nodes(&mut net, count);
        for i in 1..count {
            match shape {
                "star" => net.connect(n[i], n[0], 1),
                _ => net.connect(n[i - 1], n[i], 1),
            };
        }
        if shape == "ring" {
            net.connect(n[count - 1], n[0], 1);
        }
        let took = converge(&mut net, &format!("{shape} of {count}"));
        assert!(took <= 1_000, "{shape}: {took} ms");
        let from = if shape == "star" { n[1] } else { n[0] };
        assert_eq!(
            deliver(&mut net, from, &format!("n{far}")),
            Ok(hops),
            "{shape}"
        );
    }
}

/// A random connected graph of 100 nodes (mean degree about 4) converges within a second of
/// virtual time and delivers across itself. (Graphs of up to 500 nodes:
/// `cargo run --release --example sim_convergence`, too slow for a debug test.)
#[test]
fn a_random_graph_of_100_nodes_converges() {
    let (mut net, _) = Net::random_graph(100, 21);
    converge(&mut net, "random graph of 100");
    deliver(&mut net, 0, "n99").expect("delivered across the graph");
}

/// A link that flaps twenty times settles: routes come back and messages flow.
#[test]
fn a_flapping_link_settles() {
    let mut net = Net::new(31);
    let n = nodes(&mut net, 10);
    for i in 1..10 {
        net.connect(n[i - 1], n[i], 2);
    }
    net.connect(n[9], n[0], 2);
    converge(&mut net, "ring of 10");
    for _ in 0..20 {
        let link = net.links_between(n[0], n[1])[0];
        net.disconnect(link);
        net.run_for(30);
        net.connect(n[0], n[1], 2);
        net.run_for(30);
    }
    converge(&mut net, "ring of 10 after flapping");
    assert_eq!(deliver(&mut net, n[0], "n1"), Ok(1));
    assert_eq!(deliver(&mut net, n[0], "n5"), Ok(5));
}

/// A partition makes the other side unreachable at once, and healing it restores routes.
#[test]
fn a_partition_withdraws_routes_and_heals() {
    let mut net = Net::new(41);
    let n = nodes(&mut net, 8);
    // Two triangles-plus joined by the bridge n3 - n4.
    for (a, b) in [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 0),
        (4, 5),
        (5, 6),
        (6, 7),
        (7, 4),
        (3, 4),
    ] {
        net.connect(n[a], n[b], 1);
    }
    converge(&mut net, "two clusters");
    let bridge = net.links_between(n[3], n[4])[0];
    net.disconnect(bridge);
    // Both ends withdraw the edge in their next coalesced advert (100 ms).
    assert!(
        net.run_until(1_000, |net| !net.report(n[0]).routes.contains_key("n6")),
        "route to the other side withdrawn"
    );
    // A request without a route waits for one until its timeout: it fails at the timeout if
    // none comes, and is delivered if the path heals in time.
    let lost = net.send(n[0], "n6", "x", 1_000).expect("waits for a route");
    net.run_for(1_100);
    assert!(matches!(
        net.outcome(n[0], lost),
        Some(Err(SendError::NoRoute(_)))
    ));
    let waiting = net.send(n[0], "n6", "x", 5_000).expect("waits for a route");
    net.run_for(500);
    assert!(net.outcome(n[0], waiting).is_none());
    net.connect(n[3], n[4], 1);
    converge(&mut net, "healed");
    assert!(net.run_until(2_000, |net| net.outcome(n[0], waiting).is_some()));
    assert!(matches!(net.outcome(n[0], waiting), Some(Ok(d)) if d.hops == 4));
    assert_eq!(deliver(&mut net, n[0], "n6"), Ok(4));
}

/// When the only link toward a node goes, routes through it disappear, also two hops away.
#[test]
fn a_lost_link_withdraws_the_route_behind_it() {
    let mut net = Net::new(51);
    let n = nodes(&mut net, 3);
    net.connect(n[0], n[1], 1);
    let bc = net.connect(n[1], n[2], 1);
    converge(&mut net, "line of 3");
    assert_eq!(net.report(n[0]).routes["n2"].next_hop, "n1");
    net.disconnect(bc);
    assert!(net.run_until(500, |net| !net.report(n[0]).routes.contains_key("n2")));
}

/// A node 16 hops away is reachable; one 17 hops away is not.
#[test]
fn the_hop_limit_is_sixteen() {
    let mut net = Net::new(61);
    let n = nodes(&mut net, 18);
    for i in 1..18 {
        net.connect(n[i - 1], n[i], 1);
    }
    net.run_for(10_000);
    let routes = net.report(n[0]).routes;
    assert_eq!(routes["n16"].hops, 16);
    assert!(!routes.contains_key("n17"));
    assert_eq!(deliver(&mut net, n[0], "n16"), Ok(16));
    let id = net
        .send(n[0], "n17", "x", 1_000)
        .expect("waits for a route");
    net.run_for(1_100);
    assert!(matches!(
        net.outcome(n[0], id),
        Some(Err(SendError::NoRoute(_)))
    ));
}

/// A relay that dies while the answer to a script request is on its way: the origin re-sends
/// over the other path and the target answers from its reply cache, so the script ran once.
#[test]
fn a_relay_dying_with_a_request_in_flight_runs_the_script_once() {
    let mut net = Net::new(71);
    let (a, r1, r2, c) = (net.add("a"), net.add("r1"), net.add("r2"), net.add("c"));
    net.connect(a, r1, 10);
    net.connect(r1, c, 10);
    net.connect(a, r2, 30);
    net.connect(r2, c, 30);
    converge(&mut net, "two paths");
    assert_eq!(net.report(a).routes["c"].next_hop, "r1");
    let id = net.send(a, "c", "echo", 5_000).expect("sent");
    // The request reaches c at +20 ms and the reply r1 at +30 ms; r1 dies at +25 ms.
    net.run_for(25);
    assert_eq!(net.nodes[c].scripts_run.len(), 1);
    for link in net
        .links_between(r1, a)
        .into_iter()
        .chain(net.links_between(r1, c))
    {
        net.disconnect(link);
    }
    assert!(net.run_until(3_000, |n| n.outcome(a, id).is_some()));
    match net.outcome(a, id) {
        Some(Ok(d)) => {
            assert!(matches!(&d.outcome, Outcome::Script { stdout, .. } if stdout == b"ran echo"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(net.nodes[c].scripts_run.len(), 1, "the script ran once");
    assert_eq!(net.report(a).messages.resent, 1);
}

/// A public node relays within each foreign network and never across: ids that repeat in two
/// networks stay apart, its own scripts are not reachable, and it cannot address members.
#[test]
fn foreign_domains_stay_apart() {
    let mut net = Net::new(81);
    let p = net.add_with("p", "pub", |s| {
        s.relay_network_whitelist = vec!["alpha".into(), "beta".into()];
    });
    let a1 = net.add_with("x1", "alpha", |_| {});
    let a2 = net.add_with("x2", "alpha", |_| {});
    let b1 = net.add_with("y1", "beta", |_| {});
    let b2 = net.add_with("x2", "beta", |_| {}); // same id as alpha's x2
    for m in [a1, a2, b1, b2] {
        net.connect(m, p, 1); // members dial the public node
    }
    net.run_for(3_000);
    // alpha's x1 reaches alpha's x2 through p (2 hops), and only alpha's x2 opens it.
    let id = net.send(a1, "x2", "for alpha", 5_000).expect("sent");
    net.run_for(1_000);
    assert!(matches!(net.outcome(a1, id), Some(Ok(d)) if d.hops == 2));
    assert_eq!(net.nodes[a2].router.inbox().len(), 1);
    assert!(net.nodes[b2].router.inbox().is_empty());
    // beta's y1 knows nothing of alpha's x1; p is a relay, not a member, for both.
    assert!(matches!(
        net.send(b1, "x1", "x", 1_000),
        Err(SendError::PeerNotFound(_))
    ));
    assert!(matches!(
        net.send(a1, "p", "echo", 1_000),
        Err(SendError::NotMember(_))
    ));
    assert!(matches!(
        net.send(p, "x1", "x", 1_000),
        Err(SendError::PeerNotFound(_))
    ));
    let report = net.report(p);
    assert_eq!(report.foreign["alpha"].members, vec!["x1", "x2"]);
    assert_eq!(report.foreign["beta"].members, vec!["x2", "y1"]);
    assert_eq!(
        report.foreign["alpha"].messages_relayed, 2,
        "request and reply"
    );
    assert_eq!(report.foreign["beta"].messages_relayed, 0);
}

/// Two members reached only through a relay punch: the relay coordinates, both send punch
/// datagrams, and only the lower id dials the opened path.
#[test]
fn members_behind_a_relay_punch_and_the_lower_id_dials() {
    let mut net = Net::new(91);
    let punching = |s: &mut msgtier::proto::router::Settings| s.hole_punching = true;
    let a = net.add_with("a", "sim", punching);
    let r = net.add_with("r", "sim", punching);
    let b = net.add_with("b", "sim", punching);
    net.connect_over(a, r, 5, Transport::Udp);
    net.connect_over(b, r, 5, Transport::Udp);
    assert!(
        net.run_until(10_000, |n| !n.nodes[a].dials.is_empty()),
        "a dials the punched path"
    );
    let b_udp = net.nodes[b].udp;
    let dial = &net.nodes[a].dials[0];
    assert_eq!(dial.to_string(), format!("udp://{b_udp}"));
    assert!(net.nodes[b].dials.is_empty(), "the higher id does not dial");
    assert_eq!(net.report(a).punch["b"].state, "open");
}

/// A member gone bad that claims another member's id (with its own key, since it cannot sign
/// with the victim's), the relay flag and a huge sequence number cannot take that member over:
/// the seq is refused as too far ahead, and with a sane seq the key contradicts the one proven
/// on the link; the victim stays addressable and the conflict is on the report.
#[test]
fn a_forged_relay_advert_does_not_make_a_member_unaddressable() {
    let mut net = Net::new(101);
    let n = nodes(&mut net, 3);
    let m_link = net.connect(n[0], n[1], 1);
    net.connect(n[0], n[2], 1);
    converge(&mut net, "triangle-less star");
    let mut claim = net.advert_by(n[1], "sim", "n2", &[]);
    claim.relay = true;
    claim.seq = u64::MAX;
    let now = net.now();
    let forged = net.forge(n[1], &claim, false);
    net.nodes[n[0]].router.handle_frame(now, m_link, forged);
    claim.seq = net.now().unix_ms * 1000 + 5;
    let forged = net.forge(n[1], &claim, false);
    net.nodes[n[0]].router.handle_frame(now, m_link, forged);
    claim.relay = false;
    let forged = net.forge(n[1], &claim, true);
    net.nodes[n[0]].router.handle_frame(now, m_link, forged);
    assert_eq!(deliver(&mut net, n[0], "n2"), Ok(1), "n2 still addressable");
    let report = net.report(n[0]);
    assert!(!report.public_relays.contains(&"n2".to_string()));
    assert_eq!(report.adverts_refused.get("seq_ahead"), Some(&1));
    assert_eq!(report.adverts_refused.get("key_conflict"), Some(&2));
    assert_eq!(report.key_conflicts[0].node_id, "n2");
}

/// A public node's relay budget shapes a foreign network's data instead of dropping it:
/// closed-loop senders with a long timeout get 90-110 % of the budget through, none of them
/// times out, and when the queue (one second of budget) is full the origin is told at once
/// (`over_budget`) with when to retry.
#[test]
fn a_relay_budget_shapes_closed_loop_senders_to_its_rate() {
    let rate = 200_000u64;
    let mut net = Net::new(91);
    let p = net.add_with("p", "pub", |s| {
        s.relay_network_whitelist = vec!["alpha".into()];
        s.foreign_relay_bps_limit = rate;
    });
    let a = net.add_with("a", "alpha", |_| {});
    let b = net.add_with("b", "alpha", |_| {});
    net.connect(a, p, 1);
    net.connect(b, p, 1);
    net.run_for(3_000);
    let body = "x".repeat(8_000);
    // 48 senders, one message in flight each (384 KB: more than the one-second queue holds):
    // (in-flight id, may send again at ms).
    let mut slots: Vec<(Option<u64>, u64)> = vec![(None, 0); 48];
    let (mut over, mut failed) = (0u64, 0u64);
    let start = net.now_ms();
    let mut window: Option<(u64, u64)> = None;
    while net.now_ms() < start + 12_000 {
        let now = net.now_ms();
        for slot in slots.iter_mut() {
            if let Some(id) = slot.0 {
                match net.outcome(a, id).cloned() {
                    None => continue,
                    Some(Ok(_)) => slot.0 = None,
                    Some(Err(SendError::OverBudget { retry_after_ms, .. })) => {
                        over += 1;
                        slot.1 = now + retry_after_ms;
                        slot.0 = None;
                    }
                    Some(Err(_)) => {
                        failed += 1;
                        slot.0 = None;
                    }
                }
            }
            if slot.0.is_none() && now >= slot.1 {
                slot.0 = net.send(a, "b", &body, 3_000).ok();
            }
        }
        if window.is_none() && now >= start + 2_000 {
            window = Some((now, net.report(b).messages.delivered));
        }
        net.run_for(5);
    }
    let (t0, d0) = window.expect("window started");
    let (t1, d1) = (net.now_ms(), net.report(b).messages.delivered);
    let got = (d1 - d0) as f64 * body.len() as f64 / ((t1 - t0) as f64 / 1000.0);
    let share = got / rate as f64;
    eprintln!("closed-loop senders got {got:.0} B/s of a {rate} B/s budget ({share:.3}); {over} over_budget, {failed} failed");
    assert!((0.9..=1.1).contains(&share), "{share:.3} of the budget");
    assert_eq!(failed, 0, "nobody waited out a timeout");
    assert!(over > 0, "the queue filled and origins were told");
    let f = &net.report(p).foreign["alpha"];
    assert!(f.messages_over_budget > 0);
    assert!(f.bytes_queued <= rate);
}

// ---- durable messages (`/send` with a ttl) ----

use msgtier::proto::durable::Status;

/// Two nodes that know each other (linked once, converged), then apart.
fn apart() -> (Net, usize, usize) {
    let mut net = Net::new(131);
    let (a, c) = (net.add("a"), net.add("c"));
    let link = net.connect(a, c, 5);
    converge(&mut net, "pair");
    net.disconnect(link);
    net.run_for(1_000);
    (net, a, c)
}

/// The status `a`'s outbox holds for message `id`.
fn status(net: &Net, a: usize, id: u64) -> Status {
    net.nodes[a]
        .router
        .message_status(id)
        .expect("a message of a's")
        .record
        .status
}

/// A message for an offline target is answered as queued when its `/send` times out, waits,
/// and is delivered once when the target comes back: one inbox entry, one script run, receipts
/// with the outcome, all on disk.
#[test]
fn a_queued_message_is_delivered_once_when_its_target_returns() {
    let (mut net, a, c) = apart();
    let plain = net
        .send_durable(a, "c", "hello later", 1_000, 60_000)
        .expect("accepted");
    let script = net
        .send_durable(a, "c", "echo", 1_000, 60_000)
        .expect("accepted");
    net.run_for(1_500);
    assert_eq!(net.nodes[a].queued.get(&plain), Some(&Status::Queued));
    assert_eq!(status(&net, a, script), Status::Queued);
    assert_eq!(net.nodes[a].disk.outbox.len(), 2, "both on disk");
    net.run_for(20_000);
    net.connect(a, c, 5);
    assert!(
        net.run_until(10_000, |n| status(n, a, plain) == Status::Delivered
            && status(n, a, script) == Status::Delivered)
    );
    net.run_for(120_000); // retries would have happened by now
    assert_eq!(net.nodes[c].scripts_run.len(), 1, "the script ran once");
    assert_eq!(
        net.nodes[c].disk.inbox.len(),
        1,
        "the plain message is in the inbox once"
    );
    assert_eq!(net.nodes[c].disk.inbox[0].body, b"hello later");
    let record = &net.nodes[a].disk.outbox[&script];
    assert_eq!(record.status, Status::Delivered);
    assert!(
        matches!(&record.outcome, Some(Outcome::Script { stdout, .. }) if stdout == b"ran echo"),
        "{record:?}"
    );
    assert!(record.body.is_empty(), "a final record keeps no body");
}

/// Within the timeout, a durable message is answered like a live one.
#[test]
fn a_durable_message_answered_in_time_completes_its_send() {
    let mut net = Net::new(132);
    let (a, c) = (net.add("a"), net.add("c"));
    net.connect(a, c, 5);
    converge(&mut net, "pair");
    let id = net
        .send_durable(a, "c", "echo", 5_000, 60_000)
        .expect("accepted");
    assert!(net.run_until(1_000, |n| n.outcome(a, id).is_some()));
    assert!(matches!(net.outcome(a, id), Some(Ok(d)) if d.hops == 1));
    assert!(net.nodes[a].queued.is_empty());
}

/// The sender restarts (from its disk) with messages queued; all are delivered after it comes
/// back, every script once.
#[test]
fn queued_messages_survive_a_restart_of_their_sender() {
    let (mut net, a, c) = apart();
    let ids: Vec<u64> = (0..50)
        .map(|i: u32| {
            let body = if i.is_multiple_of(2) {
                "echo".to_string()
            } else {
                format!("m{i}")
            };
            net.send_durable(a, "c", &body, 1_000, 600_000)
                .expect("accepted")
        })
        .collect();
    net.run_for(2_000);
    net.restart(a);
    net.run_for(5_000);
    net.connect(a, c, 5);
    assert!(net.run_until(30_000, |n| ids
        .iter()
        .all(|id| status(n, a, *id) == Status::Delivered)));
    net.run_for(120_000);
    assert_eq!(net.nodes[c].scripts_run.len(), 25);
    assert_eq!(net.nodes[c].disk.inbox.len(), 25);
}

/// The target stops while a script runs; after its restart the re-delivered message gets the
/// recorded outcome, "interrupted", and the script never runs again.
#[test]
fn a_script_cut_short_by_a_crash_of_its_target_is_never_run_again() {
    let mut net = Net::new(133);
    let (a, c) = (net.add("a"), net.add("c"));
    net.connect(a, c, 5);
    converge(&mut net, "pair");
    net.nodes[c].hold_scripts = true;
    let id = net
        .send_durable(a, "c", "echo", 500, 600_000)
        .expect("accepted");
    assert!(net.run_until(1_000, |n| n.nodes[c].scripts_run.len() == 1));
    net.restart(c);
    net.nodes[c].hold_scripts = false;
    net.connect(a, c, 5);
    assert!(net.run_until(70_000, |n| status(n, a, id) == Status::Delivered));
    net.run_for(120_000);
    assert_eq!(net.nodes[c].scripts_run.len(), 1, "never run again");
    let outcome = net.nodes[a]
        .router
        .message_status(id)
        .unwrap()
        .record
        .outcome;
    assert!(
        matches!(
            outcome,
            Some(Outcome::Script {
                interrupted: true,
                ..
            })
        ),
        "{outcome:?}"
    );
}

/// A lost receipt (the target's first data frame): the sender retries, the target answers from
/// its record, the script ran once.
#[test]
fn a_lost_receipt_is_answered_again_from_the_record() {
    let mut net = Net::new(134);
    let (a, c) = (net.add("a"), net.add("c"));
    net.connect(a, c, 5);
    converge(&mut net, "pair");
    net.nodes[c].drop_data = 1; // its first: the receipt
    let id = net
        .send_durable(a, "c", "echo", 500, 600_000)
        .expect("accepted");
    net.run_for(600);
    assert_eq!(status(&net, a, id), Status::InFlight);
    assert!(net.run_until(10_000, |n| status(n, a, id) == Status::Delivered));
    assert_eq!(net.nodes[c].scripts_run.len(), 1);
    let record = net.nodes[a].router.message_status(id).unwrap().record;
    assert!(record.attempts >= 2, "{record:?}");
}

/// A message whose target never returns expires at its ttl; a cancelled one is never delivered.
#[test]
fn messages_expire_at_their_ttl_and_cancelled_ones_stay_undelivered() {
    let (mut net, a, c) = apart();
    let short = net
        .send_durable(a, "c", "echo", 500, 3_000)
        .expect("accepted");
    let cancelled = net
        .send_durable(a, "c", "echo", 500, 600_000)
        .expect("accepted");
    net.run_for(1_000);
    let now = net.now();
    let report = net.nodes[a]
        .router
        .cancel(now, cancelled)
        .expect("cancelled");
    assert_eq!(report.record.status, Status::Cancelled);
    assert!(
        net.nodes[a].router.cancel(now, cancelled).is_err(),
        "final already"
    );
    net.run_for(3_000);
    assert_eq!(status(&net, a, short), Status::Expired);
    net.connect(a, c, 5);
    net.run_for(30_000);
    assert!(net.nodes[c].scripts_run.is_empty());
    assert_eq!(net.nodes[a].disk.outbox[&short].status, Status::Expired);
    assert_eq!(
        net.nodes[a].disk.outbox[&cancelled].status,
        Status::Cancelled
    );
}

/// A relay that alters a durable message's signature, signs it with its own key, or strips the
/// signature cannot get it taken: the target checks its source's signature (and the seal
/// authenticates that there is one) before anything else; the genuine copy is taken once.
#[test]
fn a_durable_message_with_a_forged_signature_is_refused() {
    let mut net = Net::new(135);
    let (a, r, c) = (net.add("a"), net.add("r"), net.add("c"));
    net.connect(a, r, 5);
    let rc = net.connect(r, c, 5);
    converge(&mut net, "line");
    net.tap = true;
    let id = net
        .send_durable(a, "c", "echo", 500, 600_000)
        .expect("accepted");
    // The genuine copy reaches r at +5 ms and c at +10 ms; the forgeries reach c first.
    net.run_for(6);
    let envelope = net
        .tapped
        .iter()
        .find(|(from, _, e)| *from == r && e.id == id)
        .map(|(_, _, e)| e.clone())
        .expect("r forwarded it");
    let mut resigned = envelope.clone();
    let r_keys = net.nodes[r].keys.clone();
    let mut field = r_keys.identity.signing_public().to_vec();
    field.extend_from_slice(
        &r_keys
            .identity
            .sign(&msgtier::proto::e2e::signed_bytes(&resigned)),
    );
    resigned.signature = Some(field);
    let mut flipped = envelope.clone();
    if let Some(sig) = flipped.signature.as_mut() {
        sig[40] ^= 1;
    }
    let mut stripped = envelope.clone();
    stripped.signature = None;
    for forged in [resigned, flipped, stripped] {
        net.inject(c, rc, msgtier::wire::frame::Frame::Data(forged));
    }
    assert!(
        net.nodes[c].scripts_run.is_empty(),
        "nothing forged was run"
    );
    assert_eq!(net.report(c).messages.forged, 2);
    assert!(net.run_until(2_000, |n| status(n, a, id) == Status::Delivered));
    assert_eq!(
        net.nodes[c].scripts_run.len(),
        1,
        "the genuine copy ran once"
    );
}

// ---- carriers ----

use msgtier::proto::router::CarrierLimits;

fn carrier_limits(quota_bytes: usize) -> CarrierLimits {
    CarrierLimits {
        quota_bytes,
        per_origin_quota_bytes: quota_bytes,
        max_ttl_ms: 3_600_000,
    }
}

/// a -- k -- c with k a carrier; all converged, then c goes offline.
fn with_carrier(quota_bytes: usize) -> (Net, [usize; 3], [u64; 2]) {
    let mut net = Net::new(141);
    let a = net.add("a");
    let k = net.add_with("k", "sim", |s| {
        s.carrier = Some(carrier_limits(quota_bytes))
    });
    let c = net.add("c");
    let ak = net.connect(a, k, 5);
    let kc = net.connect(k, c, 5);
    converge(&mut net, "a-k-c");
    net.disconnect(kc);
    net.run_for(1_000);
    (net, [a, k, c], [ak, kc])
}

/// The sender hands a message for an offline target to a carrier and goes; the target comes
/// back, runs the script once and, its sender being gone, hands the receipt to the carrier; the
/// target goes, the sender returns and learns the outcome from the carrier.
#[test]
fn a_carrier_delivers_while_the_sender_is_gone_and_brings_the_receipt_back() {
    let (mut net, [a, k, c], [ak, _]) = with_carrier(1 << 20);
    let id = net
        .send_durable(a, "c", "echo", 500, 600_000)
        .expect("accepted");
    assert!(net.run_until(5_000, |n| status(n, a, id) == Status::InCustody));
    let record = net.nodes[a].router.message_status(id).unwrap().record;
    assert_eq!(record.custody.as_deref(), Some("k"));
    assert_eq!(net.nodes[k].disk.carried.len(), 1, "on the carrier's disk");
    net.disconnect(ak); // the sender is gone
    net.run_for(2_000);
    let kc = net.connect(k, c, 5); // the target is back
    assert!(net.run_until(10_000, |n| n.nodes[c].scripts_run.len() == 1));
    // The carrier handed the message on and holds the receipt for a instead.
    assert!(net.run_until(10_000, |n| {
        n.nodes[k].disk.carried.len() == 1
            && n.nodes[k]
                .disk
                .carried
                .values()
                .all(|r| r.envelope.target == "a")
    }));
    net.disconnect(kc); // the target goes
    net.run_for(2_000);
    net.connect(a, k, 5); // the sender returns
    assert!(net.run_until(10_000, |n| status(n, a, id) == Status::Delivered));
    let outcome = net.nodes[a]
        .router
        .message_status(id)
        .unwrap()
        .record
        .outcome;
    assert!(matches!(outcome, Some(Outcome::Script { stdout, .. }) if stdout == b"ran echo"));
    assert!(net.run_until(10_000, |n| n.nodes[k].disk.carried.is_empty()));
    assert_eq!(net.nodes[c].scripts_run.len(), 1, "run once");
}

/// A full carrier refuses; the sender keeps the message and delivers it itself later.
#[test]
fn a_full_carrier_refuses_and_the_sender_keeps_the_message() {
    let (mut net, [a, k, c], _) = with_carrier(1024);
    let body = "x".repeat(4000);
    let id = net
        .send_durable(a, "c", &body, 500, 600_000)
        .expect("accepted");
    net.run_for(3_000);
    let record = net.nodes[a].router.message_status(id).unwrap().record;
    assert_eq!(record.status, Status::Queued, "{record:?}");
    assert!(
        record
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("carrier_full")
            || record
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("no route"),
        "{record:?}"
    );
    assert!(net.nodes[k].disk.carried.is_empty());
    net.connect(k, c, 5);
    assert!(net.run_until(70_000, |n| status(n, a, id) == Status::Delivered));
    assert_eq!(net.nodes[c].disk.inbox.len(), 1);
}

/// A member that hands a carrier an envelope it signed itself in another node's name gets it
/// refused: the carrier checks the origin's signature before it takes custody.
#[test]
fn a_carrier_refuses_an_envelope_not_signed_by_its_origin() {
    use msgtier::proto::e2e::{self, PairKey, Payload};
    use msgtier::wire::frame::{Envelope, Frame, MessageKind};
    let mut net = Net::new(142);
    let a = net.add("a");
    let k = net.add_with("k", "sim", |s| s.carrier = Some(carrier_limits(1 << 20)));
    let m = net.add("m");
    let c = net.add("c");
    net.connect(a, k, 5);
    let mk = net.connect(m, k, 5);
    let kc = net.connect(k, c, 5);
    converge(&mut net, "star around k");
    net.disconnect(kc);
    net.run_for(500);
    let now = net.now();
    let m_keys = net.nodes[m].keys.clone();
    let mut inner = Envelope {
        id: 7,
        source: "a".into(),
        target: "c".into(),
        kind: MessageKind::Request,
        timestamp_ms: now.unix_ms,
        ttl_ms: 600_000,
        hops: 0,
        clear: false,
        sealed: vec![0; 64].into(),
        signature: Some(vec![0; 96]),
    };
    let mut field = m_keys.identity.signing_public().to_vec();
    field.extend_from_slice(&m_keys.identity.sign(&e2e::signed_bytes(&inner)));
    inner.signature = Some(field);
    let k_public = net.nodes[k].public_key;
    let pair = PairKey::derive(&m_keys.identity, &k_public, &m_keys.network_key, "m", "k")
        .expect("pair key");
    let mut outer = Envelope {
        id: 8,
        source: "m".into(),
        target: "k".into(),
        kind: MessageKind::Request,
        timestamp_ms: now.unix_ms,
        ttl_ms: 30_000,
        hops: 0,
        clear: false,
        sealed: Vec::new().into(),
        signature: None,
    };
    e2e::seal(
        &pair,
        &mut outer,
        &Payload::Custody { envelope: inner }.encode(),
    )
    .expect("seal");
    net.inject(k, mk, Frame::Data(outer));
    net.run_for(1_000);
    assert!(
        net.nodes[k].disk.carried.is_empty(),
        "nothing forged is carried"
    );
    assert_eq!(net.report(k).messages.forged, 1);
}

/// Route events: a node that becomes reachable is reported once with its next hop and hops, a
/// partition reports it unreachable, and the heal reports it again (coalesced, not per advert).
#[test]
fn route_events_follow_reachability() {
    use msgtier::proto::event::Event;
    let mut net = Net::new(43);
    let n = nodes(&mut net, 3);
    net.connect(n[0], n[1], 1);
    net.connect(n[1], n[2], 1);
    converge(&mut net, "a line of three");
    net.run_for(500);
    let routes_to = |net: &Net, to: &str| -> Vec<Event> {
        net.nodes[n[0]]
            .events
            .iter()
            .filter(|e| matches!(e, Event::Route { node, .. } if node == to))
            .cloned()
            .collect()
    };
    assert_eq!(
        routes_to(&net, "n2"),
        vec![Event::Route {
            node: "n2".into(),
            reachable: true,
            next_hop: Some("n1".into()),
            hops: Some(2),
        }]
    );
    let link = net.links_between(n[1], n[2])[0];
    net.disconnect(link);
    assert!(net.run_until(2_000, |net| routes_to(net, "n2").len() == 2));
    assert!(matches!(
        routes_to(&net, "n2")[1],
        Event::Route {
            reachable: false,
            ..
        }
    ));
    net.connect(n[1], n[2], 1);
    converge(&mut net, "healed");
    assert!(net.run_until(2_000, |net| routes_to(net, "n2").len() == 3));
    assert!(matches!(
        routes_to(&net, "n2")[2],
        Event::Route {
            reachable: true,
            hops: Some(2),
            ..
        }
    ));
}

/// The `publish` events node `n` got: (topic, source, body).
fn publishes(net: &Net, n: usize) -> Vec<(String, String, String)> {
    net.nodes[n]
        .events
        .iter()
        .filter_map(|e| match e {
            msgtier::proto::event::Event::Publish {
                topic,
                source,
                body,
                ..
            } => Some((
                topic.clone(),
                source.clone(),
                String::from_utf8_lossy(body).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// On random graphs of 40 nodes, subscriptions spread with the adverts to every node, and a
/// publish reaches exactly the matching subscribers, once each, each copy along the
/// publisher's shortest path to it (data frames of the publish = the sum of those paths'
/// hops: no flooding), sealed (no relay's copy holds the body in the clear).
#[test]
fn subscriptions_spread_and_publishes_reach_exactly_the_subscribers_on_random_graphs() {
    let filters = [
        "alerts.>",
        "alerts.disk",
        "build.*.done",
        "*.x",
        "metrics.cpu",
    ];
    let topics = [
        "alerts.disk",
        "alerts.cpu.hot",
        "build.web.done",
        "metrics.x",
        "metrics.cpu",
        "nobody.here",
    ];
    for seed in [3u64, 17, 29] {
        let (mut net, _) = Net::random_graph(40, seed);
        converge(&mut net, &format!("random graph seed {seed}"));
        // Every third node subscribes to one or two filters.
        let mut subs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for i in (0..40).step_by(3) {
            let mut mine = vec![filters[i % filters.len()]];
            if i % 2 == 0 {
                mine.push(filters[(i / 2) % filters.len()]);
            }
            net.subscribe(i, &mine);
            let mut mine: Vec<String> = mine.into_iter().map(String::from).collect();
            mine.sort();
            mine.dedup();
            subs.insert(format!("n{i}"), mine);
        }
        assert!(
            net.run_until(CONVERGE_MS, |net| (0..40).all(|n| {
                let mut want = subs.clone();
                want.remove(&format!("n{n}"));
                net.nodes[n].router.remote_subscriptions() == want
            })),
            "seed {seed}: subscriptions did not reach every node"
        );
        let publisher = (seed as usize) % 40;
        net.tap = true;
        for (k, topic) in topics.iter().enumerate() {
            let body = format!("secret body {seed}-{k}");
            net.tapped.clear();
            let published = net.publish(publisher, topic, &body, 0).expect("publish");
            let mut want: Vec<String> = subs
                .iter()
                .filter(|(_, f)| f.iter().any(|f| msgtier::proto::topic::matches(f, topic)))
                .map(|(n, _)| n.clone())
                .collect();
            want.sort();
            assert_eq!(published.subscribers, want, "seed {seed} {topic}");
            net.run_for(2_000);
            for n in 0..40 {
                let got: Vec<_> = publishes(&net, n)
                    .into_iter()
                    .filter(|(t, _, b)| t == topic && *b == body)
                    .collect();
                let expected = usize::from(want.contains(&format!("n{n}")));
                assert_eq!(got.len(), expected, "seed {seed} {topic}: node n{n}");
            }
            let report = net.report(publisher);
            let me = format!("n{publisher}");
            let path_hops: u64 = want
                .iter()
                .filter(|n| **n != me)
                .map(|n| u64::from(report.routes[n].hops))
                .sum();
            let requests: Vec<_> = net
                .tapped
                .iter()
                .filter(|(_, _, e)| {
                    e.source == me && e.kind == msgtier::wire::frame::MessageKind::Request
                })
                .collect();
            assert_eq!(
                requests.len() as u64,
                path_hops,
                "seed {seed} {topic}: data frames of the publish"
            );
            for (sender, _, e) in &requests {
                let clear = e.sealed.windows(body.len()).any(|w| w == body.as_bytes());
                assert!(
                    !clear || (e.clear && *sender == publisher && e.hops <= 1),
                    "seed {seed}: a copy crossed a relay with its body in the clear: from {sender} clear {} hops {} target {}", e.clear, e.hops, e.target
                );
            }
        }
        let dups: u64 = (0..40)
            .map(|n| net.nodes[n].router.topic_counters().duplicates)
            .sum();
        assert_eq!(dups, 0, "seed {seed}");
    }
}

/// A copy captured on the wire and replayed to its subscriber is not delivered again; a relay
/// member cannot pass off another node's publication as its own copy; a copy for a node that
/// stopped subscribing is refused, never delivered.
#[test]
fn a_replayed_publish_is_delivered_once_and_an_unsubscribed_node_refuses_copies() {
    let mut net = Net::new(41);
    let n = nodes(&mut net, 3);
    net.connect(n[0], n[1], 1);
    let link = net.connect(n[1], n[2], 1);
    converge(&mut net, "line of 3");
    net.subscribe(n[2], &["news.*"]);
    assert!(net.run_until(5_000, |net| {
        net.nodes[n[0]].router.subscribers("news.today") == ["n2"]
    }));
    net.tap = true;
    net.publish(n[0], "news.today", "first", 0).unwrap();
    net.run_for(1_000);
    assert_eq!(publishes(&net, n[2]).len(), 1);
    let copy = net
        .tapped
        .iter()
        .find(|(sender, _, e)| *sender == n[1] && e.target == "n2")
        .map(|(_, _, e)| e.clone())
        .expect("the relayed copy");
    net.inject(n[2], link, msgtier::wire::frame::Frame::Data(copy.clone()));
    net.run_for(1_000);
    assert_eq!(
        publishes(&net, n[2]).len(),
        1,
        "replayed: not delivered again"
    );

    // n1, a member relaying between them, passes off a publication n0 signed (captured, or
    // one it claims n0 made) as a copy sealed by itself: the signature is not its source's.
    let forge = |net: &mut Net, signer: usize| {
        use msgtier::proto::e2e::{self, PairKey, Payload};
        use msgtier::proto::publication::Publication;
        let now = net.now();
        let body = b"fake news";
        let publication = Publication::sign(
            &net.nodes[signer].keys.identity,
            "n0",
            77 + signer as u64,
            now.unix_ms,
            "news.today",
            body,
        );
        let keys = net.nodes[n[1]].keys.clone();
        let key = PairKey::derive(
            &keys.identity,
            &net.nodes[n[2]].public_key,
            &keys.network_key,
            "n1",
            "n2",
        )
        .unwrap();
        let mut envelope = msgtier::wire::frame::Envelope {
            id: 4242 + signer as u64,
            source: "n1".into(),
            target: "n2".into(),
            kind: msgtier::wire::frame::MessageKind::Request,
            timestamp_ms: now.unix_ms,
            ttl_ms: 30_000,
            hops: 0,
            clear: false,
            sealed: Vec::new().into(),
            signature: None,
        };
        let plaintext = Payload::Publish {
            publication,
            body: body.to_vec(),
        }
        .encode();
        e2e::seal(&key, &mut envelope, &plaintext).unwrap();
        net.inject(n[2], link, msgtier::wire::frame::Frame::Data(envelope));
        net.run_for(500);
    };
    let forged_before = net.nodes[n[2]].router.topic_counters().refused;
    forge(&mut net, n[0]);
    forge(&mut net, n[1]);
    assert_eq!(
        publishes(&net, n[2]).len(),
        1,
        "a forged publication is never delivered"
    );
    assert_eq!(
        net.nodes[n[2]].router.topic_counters().refused,
        forged_before + 2
    );

    // n2 stops subscribing; a publisher with a stale view sends anyway (forced here by
    // publishing before the new advert arrives): the copy is refused.
    let filters = vec!["news.*".to_string()];
    let now = net.now();
    net.nodes[n[2]].router.unsubscribe(now, &filters);
    let before = net.nodes[n[2]].router.topic_counters().refused;
    let published = net.publish(n[0], "news.today", "second", 0).unwrap();
    assert_eq!(published.subscribers, ["n2"], "n0 has not heard yet");
    net.run_for(1_000);
    assert_eq!(
        publishes(&net, n[2]).len(),
        1,
        "not delivered after unsubscribing"
    );
    assert_eq!(net.nodes[n[2]].router.topic_counters().refused, before + 1);
    assert!(net.run_until(5_000, |net| net.nodes[n[0]]
        .router
        .subscribers("news.today")
        .is_empty()));
}
