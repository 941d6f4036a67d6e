//! Unit tests of the router, on the simulated network of [`super::sim`].

use crate::proto::e2e::Outcome;
use crate::wire::frame::{Frame, LinkState, Neighbor};

use super::sim::Net;
use super::{LinkKind, SendError};

/// A forged advert from the node at `via` (on `link`) claiming `origin` has key `key`.
fn forged_advert(net: &mut Net, at: usize, link: u64, origin: &str, key: [u8; 32], via: &str) {
    let now = net.now();
    let frame = Frame::LinkState(LinkState {
        relay: false,
        origin: origin.to_string(),
        seq: u64::MAX / 2,
        public_key: key,
        addrs: Vec::new(),
        neighbors: vec![Neighbor {
            id: via.to_string(),
            cost_us: 1,
        }],
    });
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
    let m_key = net.nodes[m].public_key;
    forged_advert(&mut net, x, xm, "b", m_key, "m");
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
    let m_key = net.nodes[m].public_key;
    forged_advert(&mut net, x, xm, "b", m_key, "m");
    let b_key = hex::encode(net.nodes[b].public_key);
    assert_eq!(net.report(x).routes["b"].public_key, Some(b_key));
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
    let id = r.send(now, "b", b"x".to_vec(), 1_000).expect("sent");
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
