//! Unit tests of the router, on the simulated network of [`super::sim`].

use crate::proto::e2e::Outcome;
use crate::wire::frame::{Frame, LinkState};

/// Refusals counted in node `at`'s own network.
fn refused(net: &mut Net, at: usize, reason: &str) -> u64 {
    net.report(at)
        .adverts_refused
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// Node `at`'s held route to `id`: (next hop, hops).
fn route(net: &mut Net, at: usize, id: &str) -> Option<(String, u32)> {
    net.report(at)
        .routes
        .get(id)
        .map(|r| (r.next_hop.clone(), r.hops))
}

use super::sim::Net;
use super::{LinkKind, SendError};

/// A forged advert from the node `via` (a member gone bad, on `link` to `at`) claiming
/// `origin` with `via`'s own keys (it cannot sign with anyone else's) and the network's MAC.
fn forged_advert(net: &mut Net, at: usize, link: u64, origin: &str, via: &str) {
    let signer = net.index(via);
    let advert = net.advert_by(signer, "sim", origin, &[(via, 1)]);
    let frame = net.forge(signer, &advert, true);
    let now = net.now();
    net.nodes[at].router.handle_frame(now, link, frame);
}

fn delivered(net: &Net, from: usize, id: u64) -> bool {
    matches!(
        net.outcome(from, id),
        Some(Ok(d)) if matches!(d.outcome, Outcome::Delivered)
    )
}

#[test]
fn a_direct_link_proves_a_key_an_advert_forged_before_it() {
    // X links to M; M claims B's id with M's own key before X ever links to B. Once B's own
    // link proves B's real key, X seals for B with it (B can open), not for M.
    let mut net = Net::new(1);
    let (x, m, b) = (net.add("x"), net.add("m"), net.add("b"));
    let xm = net.connect(x, m, 1);
    forged_advert(&mut net, x, xm, "b", "m");
    let held = net
        .report(x)
        .routes
        .get("b")
        .and_then(|r| r.public_key.clone());
    assert_eq!(
        held, None,
        "b is not routable yet (its edge needs both ends)"
    );
    net.connect(x, b, 1);
    net.run_for(50);
    let b_key = hex::encode(net.nodes[b].public_key);
    let route = net.report(x).routes["b"].clone();
    assert_eq!(route.public_key.as_deref(), Some(b_key.as_str()));
    let id = net.send(x, "b", "hello", 5_000).expect("sent");
    assert!(net.run_until(1_000, |n| delivered(n, x, id)), "b opened it");
}

#[test]
fn gossip_cannot_replace_a_key_proven_on_a_link() {
    // After X-B proved B's key, M's advert with another key for B is ignored whole.
    let mut net = Net::new(2);
    let (x, m, b) = (net.add("x"), net.add("m"), net.add("b"));
    let xm = net.connect(x, m, 1);
    net.connect(x, b, 1);
    net.run_for(200);
    forged_advert(&mut net, x, xm, "b", "m");
    forged_advert(&mut net, x, xm, "b", "m");
    let b_key = hex::encode(net.nodes[b].public_key);
    let report = net.report(x);
    assert_eq!(report.routes["b"].public_key, Some(b_key.clone()));
    assert_eq!(report.routes["b"].key, Some("proven"));
    // The conflict is refused, counted and shown, never resolved for the forger.
    assert_eq!(report.adverts_refused.get("key_conflict"), Some(&2));
    assert_eq!(report.key_conflicts.len(), 1);
    let c = &report.key_conflicts[0];
    assert_eq!(c.node_id, "b");
    assert_eq!(c.held, b_key);
    assert_eq!(c.offered, hex::encode(net.nodes[m].public_key));
    assert_eq!(
        (c.count, c.held_source, c.via.as_str()),
        (2, "proven", "advert from m")
    );
    let id = net.send(x, "b", "still b", 5_000).expect("sent");
    assert!(net.run_until(1_000, |n| delivered(n, x, id)));
}

#[test]
fn loopback_completes_within_the_send() {
    // A message to ourselves is sealed, opened and answered before `send` returns.
    let mut net = Net::new(3);
    let a = net.add("a");
    let id = net.send(a, "a", "to me", 1_000).expect("sent");
    assert!(delivered(&net, a, id));
    assert_eq!(net.nodes[a].router.inbox()[0].body, "to me");
}

#[test]
fn a_script_request_runs_and_its_output_comes_back() {
    // A body naming a configured script runs it at the target; the output is the outcome.
    let mut net = Net::new(4);
    let (a, b) = (net.add("a"), net.add("b"));
    net.connect(a, b, 2);
    let id = net.send(a, "b", "echo", 5_000).expect("sent");
    assert!(net.run_until(1_000, |n| n.outcome(a, id).is_some()));
    match net.outcome(a, id) {
        Some(Ok(d)) => match &d.outcome {
            Outcome::Script { stdout, .. } => assert_eq!(stdout, b"ran echo"),
            other => panic!("not a script outcome: {other:?}"),
        },
        other => panic!("no delivery: {other:?}"),
    }
    assert_eq!(net.nodes[b].scripts_run, vec![("echo".into(), "a".into())]);
}

#[test]
fn unknown_and_unreachable_targets_fail_at_once_or_by_deadline() {
    // A never-heard-of id is refused at once; a request nobody answers times out on time.
    let mut net = Net::new(5);
    let (a, b) = (net.add("a"), net.add("b"));
    assert!(matches!(
        net.send(a, "nobody", "x", 1_000),
        Err(SendError::PeerNotFound(_))
    ));
    let link = net.connect(a, b, 1);
    net.run_for(200);
    // The frame leaves but the link dies with it in flight: no answer, a timeout at 1 s.
    let id = net.send(a, "b", "x", 1_000).expect("sent");
    net.disconnect(link);
    net.run_for(999);
    assert!(net.outcome(a, id).is_none());
    net.run_for(2);
    assert!(matches!(
        net.outcome(a, id),
        Some(Err(SendError::Timeout(_, 1_000)))
    ));
}

#[test]
fn a_link_that_refuses_the_first_frame_makes_the_send_busy() {
    // The driver reports a full link queue; the request answers Busy, as before it was sent.
    let mut net = Net::new(6);
    let (a, b) = (net.add("a"), net.add("b"));
    let link = net.connect(a, b, 1);
    net.run_for(200);
    let now = net.now();
    let r = &mut net.nodes[a].router;
    let id = r.send(now, "b", b"x", 1_000).expect("sent");
    let Some(super::Action::Send { frame, .. }) = r.poll_action() else {
        panic!("expected a send");
    };
    r.frame_refused(link, frame);
    assert!(matches!(
        r.poll_action(),
        Some(super::Action::Complete { id: done, result: Err(SendError::Busy) }) if done == id
    ));
}

#[test]
fn link_kinds_follow_network_and_direction() {
    // Same network: member; another network we dialled: a public node; one that dialled us:
    // a member of a network we relay for.
    assert_eq!(LinkKind::of("a", "a", true), LinkKind::Member);
    assert_eq!(LinkKind::of("a", "p", true), LinkKind::Upstream);
    assert_eq!(
        LinkKind::of("p", "a", false),
        LinkKind::Foreign("a".to_string())
    );
}

#[test]
fn message_ids_come_from_the_os_unless_seeded() {
    // Seeded routers repeat their ids (simulations replay); a node's, drawn from the OS, do not.
    let first_id = |random: super::Randomness| {
        let mut net = Net::new(9);
        let a = net.add_with("a", "sim", |s| s.random = random);
        net.send(a, "a", "x", 1_000).expect("sent")
    };
    let seeded = super::Randomness::Seeded(42);
    assert_eq!(first_id(seeded), first_id(seeded));
    let os = super::Randomness::Os;
    assert_ne!(first_id(os), first_id(os));
}

/// In X - M - B, M (a member: it knows the secret, so it can MAC) re-encodes B's advert with
/// another neighbour list, or replays it with B's signature over other bytes: X refuses both,
/// keeps B's real advert and still reaches B through M.
#[test]
fn a_relaying_member_cannot_alter_anothers_advert() {
    let mut net = Net::new(20);
    let (x, m, b) = (net.add("x"), net.add("m"), net.add("b"));
    let xm = net.connect(x, m, 1);
    net.connect(m, b, 1);
    net.run_for(2_000);
    assert_eq!(route(&mut net, x, "b"), Some(("m".into(), 2)));
    // M takes B's advert and adds a fake edge B-x... signed by B's signature over the old body.
    let mut fake = net.advert_by(b, "sim", "b", &[("m", 1), ("z", 1)]);
    fake.signing_key = net.nodes[b].keys.identity.signing_public();
    let genuine = net.forge(b, &net.advert_by(b, "sim", "b", &[("m", 1)]), true);
    let Frame::LinkState(genuine) = genuine else {
        unreachable!()
    };
    let key = crate::proto::advert::AdvertKey::new(&net.nodes[m].keys.network_key);
    let body = fake.encode();
    let altered = Frame::LinkState(LinkState {
        mac: Some(crate::wire::frame::Mac(key.mac(&body, &genuine.signature))),
        body,
        signature: genuine.signature,
    });
    let now = net.now();
    net.nodes[x].router.handle_frame(now, xm, altered);
    assert_eq!(refused(&mut net, x, "bad_signature"), 1);
    assert!(!net.report(x).routes.contains_key("z"));
    let id = net.send(x, "b", "through m", 5_000).expect("sent");
    assert!(net.run_until(1_000, |n| delivered(n, x, id)));
}

/// A node of another network that X dialled (a public node, or a stranger listening where X
/// was told to dial) cannot write X's routing plane: no advert for a member (with its own
/// network's MAC, without one, or flagged as a relay's) gets in; only its own relay advert does,
/// and that makes it a relay, never a member.
#[test]
fn a_stranger_cannot_advertise_members_or_take_their_ids() {
    let mut net = Net::new(21);
    let x = net.add("x");
    let b = net.add("b");
    let s = net.add_with("s", "evil", |_| {});
    net.connect(x, b, 1);
    let xs = net.connect(x, s, 1); // x dialled s: an upstream link
    net.run_for(2_000);
    let before = route(&mut net, x, "b");
    assert_eq!(before, Some(("b".into(), 1)));
    // Claims "b" with the stranger's own keys, MAC'd with its own network's key: bad MAC.
    let mut claim = net.advert_by(s, "sim", "b", &[("x", 1)]);
    let frame = net.forge(s, &claim, true);
    net.inject(x, xs, frame);
    assert_eq!(refused(&mut net, x, "bad_mac"), 1);
    // Without a MAC: only a relay's own advert may come so.
    let frame = net.forge(s, &claim, false);
    net.inject(x, xs, frame);
    claim.relay = true;
    let frame = net.forge(s, &claim, false);
    net.inject(x, xs, frame);
    assert_eq!(refused(&mut net, x, "no_mac"), 2);
    // An advert naming another network is not for this domain.
    let other = net.advert_by(s, "evil", "s", &[("x", 1)]);
    let frame = net.forge(s, &other, false);
    net.inject(x, xs, frame);
    assert_eq!(refused(&mut net, x, "wrong_network"), 1);
    // Its own relay advert is taken: it becomes a relay, not a member.
    let mut own = net.advert_by(s, "sim", "s", &[("x", 1)]);
    own.relay = true;
    let frame = net.forge(s, &own, false);
    net.inject(x, xs, frame);
    net.run_for(200);
    let report = net.report(x);
    assert!(report.public_relays.contains(&"s".to_string()));
    assert_eq!(route(&mut net, x, "b"), before, "b untouched");
    assert_eq!(net.report(x).routes["b"].key, Some("proven"));
}

/// An advert with a seq far ahead of the clock (the `u64::MAX` that once froze a node's
/// adverts everywhere) is refused even when signed by its origin.
#[test]
fn a_sequence_number_far_in_the_future_is_refused() {
    let mut net = Net::new(22);
    let (x, m) = (net.add("x"), net.add("m"));
    let xm = net.connect(x, m, 1);
    net.run_for(500);
    let mut ahead = net.advert_by(m, "sim", "m", &[("x", 1)]);
    ahead.seq = u64::MAX;
    let frame = net.forge(m, &ahead, true);
    let now = net.now();
    net.nodes[x].router.handle_frame(now, xm, frame);
    assert_eq!(refused(&mut net, x, "seq_ahead"), 1);
    // m's own later adverts still get through: x keeps routing to it.
    net.run_for(31_000);
    assert_eq!(route(&mut net, x, "m"), Some(("m".into(), 1)));
}

/// On a public node, a foreign network's domain takes only MAC'd member adverts (it cannot
/// check the MAC, the members do) and its own relay advert; a member of that network without a
/// MAC is refused there too.
#[test]
fn a_public_node_refuses_unmacd_adverts_in_a_foreign_domain() {
    let mut net = Net::new(23);
    let p = net.add_with("p", "public", |_| {});
    let a = net.add_with("a", "sim", |_| {});
    let c = net.add_with("c", "sim", |_| {});
    let ap = net.connect(a, p, 1);
    net.connect(c, p, 1);
    net.run_for(2_000);
    let mut claim = net.advert_by(a, "sim", "c", &[("p", 1)]);
    claim.relay = true;
    let frame = net.forge(a, &claim, false);
    net.inject(p, ap, frame);
    assert_eq!(
        net.report(p).foreign["sim"].adverts_refused.get("no_mac"),
        Some(&1)
    );
}

/// A `punch` frame is obeyed only from the relay on our route to the lower-id peer that would
/// request it, once per interval: another member, or a punch toward a node we do not reach
/// through that relay, sends nothing and is counted.
#[test]
fn punch_frames_are_obeyed_only_when_expected() {
    use crate::addr::Transport;
    use crate::wire::frame::Punch;
    let mut net = Net::new(24);
    let a = net.add("a");
    let r = net.add("r");
    let b = net.add_with("b", "sim", |s| s.hole_punching = true);
    let m = net.add("m");
    net.connect_over(a, r, 1, Transport::Udp);
    let rb = net.connect_over(r, b, 1, Transport::Udp);
    let mb = net.connect(m, b, 1);
    net.run_for(2_000);
    let punch = |peer: &str| {
        Frame::Punch(Punch {
            peer: peer.into(),
            addr: "192.0.2.7:4000".into(),
            token: [7; 16],
        })
    };
    net.inject(b, mb, punch("a"));
    assert_eq!(net.report(b).punches_refused, 1, "m is not b's route to a");
    assert!(!net.report(b).punch.contains_key("a"));
    net.inject(b, rb, punch("zz"));
    assert_eq!(net.report(b).punches_refused, 2, "nobody b reaches");
    net.inject(b, rb, punch("a"));
    assert_eq!(net.report(b).punch["a"].state, "punching");
    net.inject(b, rb, punch("a"));
    assert_eq!(
        net.report(b).punches_refused,
        3,
        "at most once per interval"
    );
}

/// A captured script request replayed at its target runs nothing again, and its cached reply
/// goes out at most once per `REANSWER_INTERVAL_MS` however often it is replayed (no
/// amplification).
#[test]
fn a_replayed_request_runs_once_and_is_reanswered_at_most_a_few_times_per_second() {
    let mut net = Net::new(25);
    let (x, b) = (net.add("x"), net.add("b"));
    let xb = net.connect(x, b, 1);
    net.run_for(500);
    net.tap = true;
    let id = net.send(x, "b", "echo", 5_000).expect("sent");
    assert!(net.run_until(1_000, |n| n.outcome(x, id).is_some()));
    let request = net
        .tapped
        .iter()
        .find(|(from, _, e)| *from == x && e.id == id)
        .map(|(_, _, e)| e.clone())
        .expect("request captured");
    let replies_from_b = |net: &Net| net.tapped.iter().filter(|(from, _, _)| *from == b).count();
    let before = replies_from_b(&net);
    for _ in 0..20 {
        net.inject(b, xb, Frame::Data(request.clone()));
    }
    net.run_for(10);
    assert_eq!(net.nodes[b].scripts_run.len(), 1, "the script ran once");
    assert_eq!(
        replies_from_b(&net),
        before + 1,
        "one re-answer for 20 replays"
    );
    net.run_for(super::REANSWER_INTERVAL_MS);
    net.inject(b, xb, Frame::Data(request.clone()));
    net.run_for(10);
    assert_eq!(replies_from_b(&net), before + 2);
    assert_eq!(net.nodes[b].scripts_run.len(), 1);
}

/// An `over_budget` answer completes a request only when it comes from the neighbour the
/// request went to; from anyone else it is ignored (an off-path member cannot fail sends).
#[test]
fn an_over_budget_answer_counts_only_from_where_the_request_went() {
    use crate::wire::frame::OverBudget;
    let mut net = Net::new(26);
    let p = net.add_with("p", "pub", |s| {
        s.relay_network_whitelist = vec!["sim".into()];
    });
    let (a, b, m) = (net.add("a"), net.add("b"), net.add("m"));
    let ap = net.connect(a, p, 50);
    net.connect(b, p, 50);
    let am = net.connect(m, a, 1);
    net.run_for(3_000);
    let id = net.send(a, "b", "hello", 5_000).expect("sent");
    let refusal = |retry| {
        Frame::OverBudget(OverBudget {
            id,
            source: "a".into(),
            target: "b".into(),
            retry_after_ms: retry,
            hops: 0,
        })
    };
    net.inject(a, am, refusal(7));
    assert!(
        net.outcome(a, id).is_none(),
        "m is not where the request went"
    );
    net.inject(a, ap, refusal(9));
    assert!(matches!(
        net.outcome(a, id),
        Some(Err(SendError::OverBudget { retry_after_ms: 9, relay })) if relay == "p"
    ));
}

/// An origin's own, validly signed advert replayed after a newer one (an old `seq`, other
/// neighbours) changes nothing: receivers keep the newest and never re-flood the old one.
#[test]
fn a_replayed_older_advert_changes_nothing() {
    let mut net = Net::new(27);
    let (x, b) = (net.add("x"), net.add("b"));
    let xb = net.connect(x, b, 1);
    net.run_for(2_000);
    let mut old = net.advert_by(b, "sim", "b", &[("x", 1), ("z", 1)]);
    old.seq = 1; // far below b's current seq (its start time in unix microseconds)
    let frame = net.forge(b, &old, true);
    let before = net.adverts_delivered;
    net.inject(x, xb, frame);
    net.run_for(10);
    assert!(!net.report(x).routes.contains_key("z"));
    assert_eq!(net.adverts_delivered, before, "not re-flooded");
    assert_eq!(route(&mut net, x, "b"), Some(("b".into(), 1)));
}

/// A message to a neighbour over our own member link goes unsealed end to end (`clear`: the
/// link authenticates us to it); one that crosses a relay is always sealed, so the relay reads
/// nothing, and its reply too.
#[test]
fn only_a_message_over_the_direct_link_to_its_target_goes_clear() {
    let mut net = Net::new(27);
    let (a, r, b) = (net.add("a"), net.add("r"), net.add("b"));
    net.connect(a, r, 1);
    net.connect(r, b, 1);
    net.run_for(1_000);
    net.tap = true;
    let direct = net.send(a, "r", "hi", 5_000).expect("sent");
    let relayed = net.send(a, "b", "hi", 5_000).expect("sent");
    assert!(net.run_until(2_000, |n| n.outcome(a, direct).is_some()
        && n.outcome(a, relayed).is_some()));
    let sent = |id: u64| -> Vec<bool> {
        net.tapped
            .iter()
            .filter(|(_, _, e)| e.id == id)
            .map(|(_, _, e)| e.clear)
            .collect()
    };
    assert_eq!(sent(direct), vec![true], "a -> r over their link");
    assert_eq!(
        sent(relayed),
        vec![false, false],
        "a -> r -> b, sealed on both hops"
    );
    // b's reply to a crosses r too: sealed on both hops.
    let replies: Vec<bool> = net
        .tapped
        .iter()
        .filter(|(from, _, e)| *from == b && e.kind == crate::wire::frame::MessageKind::Response)
        .map(|(_, _, e)| e.clear)
        .collect();
    assert!(
        !replies.is_empty() && replies.iter().all(|c| !c),
        "{replies:?}"
    );
}
