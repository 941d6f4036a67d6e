//! UDP hole punching, pure: the coordinator's decision and one side's attempt state machine.
//!
//! Flow (NOTES.md, issue 4): two nodes that reach each other only through a relay learn their
//! reflexive UDP addresses from the `welcome`s they got. Either sends `punch_request` through the
//! relay; the relay ([`coordinate`]) answers both with `punch` carrying the other's address; both
//! then send punch datagrams from their UDP listener socket to that address for a bounded time
//! ([`Puncher`]); the first datagram that arrives from the peer opens the path, and the side
//! with the lower id dials it with the normal Noise handshake. Attempts are bounded and backed
//! off, and datagrams are paced so punching never looks like a flood. The RelayActor drives
//! both roles.

use std::net::SocketAddr;

/// How long one attempt sends punch datagrams (NAT mappings live for tens of seconds; five
/// seconds covers the two sides starting up to a few RTTs apart).
pub const PUNCH_WINDOW_MS: u64 = 5_000;
/// One punch datagram every 200 ms: 25 per attempt, far from anything a NAT would call a flood.
pub const PUNCH_INTERVAL_MS: u64 = 200;
/// Attempts before giving up on a peer (a symmetric NAT never opens).
pub const MAX_PUNCH_ATTEMPTS: u32 = 4;
/// Wait after a failed attempt, doubled per failure: 10 s, 20 s, 40 s.
pub const PUNCH_RETRY_BASE_MS: u64 = 10_000;

/// Why the relay cannot coordinate a punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinateError {
    /// The requester has no known reflexive UDP address.
    RequesterUnknown,
    /// The target has no known reflexive UDP address (no UDP link to the relay).
    TargetUnknown,
    /// Both sides are behind the same public address: punching cannot help, use the LAN.
    SameAddress,
}

impl std::fmt::Display for CoordinateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CoordinateError::RequesterUnknown => {
                "the relay has no UDP link to the requester (no reflexive address)"
            }
            CoordinateError::TargetUnknown => {
                "the relay has no UDP link to the target (no reflexive address)"
            }
            CoordinateError::SameAddress => "both sides share one public address",
        })
    }
}

/// The relay's answer to a `punch_request`: the `punch` each side gets (the other's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Punches {
    /// Sent to the requester: punch toward this address.
    pub to_requester: SocketAddr,
    /// Sent to the target: punch toward this address.
    pub to_target: SocketAddr,
}

/// Decides a `punch_request` at the relay from the reflexive addresses it saw.
pub fn coordinate(
    requester: Option<SocketAddr>,
    target: Option<SocketAddr>,
) -> Result<Punches, CoordinateError> {
    let requester = requester.ok_or(CoordinateError::RequesterUnknown)?;
    let target = target.ok_or(CoordinateError::TargetUnknown)?;
    if requester == target {
        return Err(CoordinateError::SameAddress);
    }
    Ok(Punches {
        to_requester: target,
        to_target: requester,
    })
}

/// What the owner of a [`Puncher`] must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send `punch_request` for the peer through the relay.
    Request,
    /// Send one punch datagram to this address from the UDP listener socket.
    Send(SocketAddr),
    /// The path is open: dial the peer over UDP at this address (lower id dials).
    Dial(SocketAddr),
}

/// One side's state for one peer, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting until `at_ms` before (re)trying.
    Waiting { at_ms: u64 },
    /// `punch_request` sent; waiting for the relay's `punch`.
    Requested { since_ms: u64 },
    /// Sending punch datagrams to `addr` until `until_ms`.
    Punching {
        addr: SocketAddr,
        until_ms: u64,
        next_send_ms: u64,
    },
    /// The peer's datagram arrived: the path is open.
    Open { addr: SocketAddr },
    /// Gave up after [`MAX_PUNCH_ATTEMPTS`]; `reason` is shown on `/status`.
    GaveUp { reason: String },
}

/// One side's punching toward one peer.
#[derive(Debug, Clone)]
pub struct Puncher {
    state: State,
    /// Failed attempts so far.
    failures: u32,
    /// Why the last attempt failed.
    last_error: Option<String>,
}

impl Puncher {
    /// Starts punching toward a peer now.
    pub fn new(now_ms: u64) -> Puncher {
        Puncher {
            state: State::Waiting { at_ms: now_ms },
            failures: 0,
            last_error: None,
        }
    }

    /// Failed attempts in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Why the last attempt failed, if one did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// What to do at `now_ms`, if anything.
    pub fn poll(&mut self, now_ms: u64) -> Option<Action> {
        match self.state.clone() {
            State::Waiting { at_ms } if now_ms >= at_ms => {
                self.state = State::Requested { since_ms: now_ms };
                Some(Action::Request)
            }
            // The relay never answered within a punch window: count it as a failed attempt.
            State::Requested { since_ms } if now_ms >= since_ms + PUNCH_WINDOW_MS => {
                self.fail(now_ms, "the relay did not coordinate");
                None
            }
            State::Punching {
                addr,
                until_ms,
                next_send_ms,
            } => {
                if now_ms >= until_ms {
                    self.fail(now_ms, "no punch datagram came back (symmetric NAT?)");
                    None
                } else if now_ms >= next_send_ms {
                    self.state = State::Punching {
                        addr,
                        until_ms,
                        next_send_ms: now_ms + PUNCH_INTERVAL_MS,
                    };
                    Some(Action::Send(addr))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The relay's `punch` arrived with the peer's address: start sending.
    pub fn on_punch(&mut self, addr: SocketAddr, now_ms: u64) -> Option<Action> {
        if matches!(self.state, State::Open { .. } | State::GaveUp { .. }) {
            return None;
        }
        self.state = State::Punching {
            addr,
            until_ms: now_ms + PUNCH_WINDOW_MS,
            next_send_ms: now_ms + PUNCH_INTERVAL_MS,
        };
        Some(Action::Send(addr))
    }

    /// A punch datagram (or ack) arrived from `from`: the path is open. `we_dial` says whether
    /// this side dials (the lower id), so only one handshake starts.
    pub fn on_datagram(&mut self, from: SocketAddr, we_dial: bool) -> Option<Action> {
        if matches!(self.state, State::GaveUp { .. } | State::Open { .. }) {
            return None;
        }
        self.state = State::Open { addr: from };
        self.failures = 0;
        we_dial.then_some(Action::Dial(from))
    }

    /// The relay refused to coordinate (its `punch_refused` reason: no reflexive address, same
    /// public address). Ignored unless a request is outstanding.
    pub fn on_refused(&mut self, now_ms: u64, reason: &str) {
        if matches!(self.state, State::Requested { .. }) {
            self.fail(now_ms, &format!("the relay cannot coordinate: {reason}"));
        }
    }

    /// The direct link closed: punch again later (the mapping may have expired).
    pub fn on_link_lost(&mut self, now_ms: u64) {
        self.state = State::Waiting {
            at_ms: now_ms + PUNCH_RETRY_BASE_MS,
        };
    }

    fn fail(&mut self, now_ms: u64, reason: &str) {
        self.failures += 1;
        self.last_error = Some(reason.to_string());
        if self.failures >= MAX_PUNCH_ATTEMPTS {
            self.state = State::GaveUp {
                reason: format!("{reason}; gave up after {} attempts", self.failures),
            };
            return;
        }
        let wait = PUNCH_RETRY_BASE_MS << (self.failures - 1).min(16);
        self.state = State::Waiting {
            at_ms: now_ms + wait,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_relay_swaps_the_two_reflexive_addresses() {
        let (a, b) = (addr("198.18.0.2:6666"), addr("198.18.0.3:7777"));
        let p = coordinate(Some(a), Some(b)).unwrap();
        assert_eq!((p.to_requester, p.to_target), (b, a));
        assert_eq!(
            coordinate(None, Some(b)),
            Err(CoordinateError::RequesterUnknown)
        );
        assert_eq!(
            coordinate(Some(a), None),
            Err(CoordinateError::TargetUnknown)
        );
        assert_eq!(
            coordinate(Some(a), Some(a)),
            Err(CoordinateError::SameAddress)
        );
    }

    #[test]
    fn a_successful_punch_requests_sends_paced_datagrams_and_dials() {
        let peer = addr("198.18.0.3:7777");
        let mut p = Puncher::new(0);
        assert_eq!(p.poll(0), Some(Action::Request));
        assert_eq!(p.poll(100), None);
        assert_eq!(p.on_punch(peer, 150), Some(Action::Send(peer)));
        // Paced: nothing before the interval, then one datagram per interval.
        assert_eq!(p.poll(300), None);
        assert_eq!(p.poll(350), Some(Action::Send(peer)));
        assert_eq!(p.poll(360), None);
        assert_eq!(p.poll(550), Some(Action::Send(peer)));
        assert_eq!(p.on_datagram(peer, true), Some(Action::Dial(peer)));
        assert_eq!(p.state(), &State::Open { addr: peer });
        assert_eq!(p.poll(10_000), None);
    }

    #[test]
    fn only_the_lower_id_dials() {
        let peer = addr("198.18.0.3:7777");
        let mut p = Puncher::new(0);
        p.poll(0);
        p.on_punch(peer, 0);
        assert_eq!(p.on_datagram(peer, false), None);
        assert_eq!(p.state(), &State::Open { addr: peer });
    }

    #[test]
    fn a_symmetric_nat_backs_off_and_gives_up() {
        let peer = addr("198.18.0.3:7777");
        let mut p = Puncher::new(0);
        let mut now = 0;
        let mut sent = 0;
        let mut requests = 0;
        // Simulate an hour at 50 ms steps; the relay always answers, nothing ever comes back.
        while now < 3_600_000 {
            match p.poll(now) {
                Some(Action::Request) => {
                    requests += 1;
                    p.on_punch(peer, now);
                    sent += 1;
                }
                Some(Action::Send(_)) => sent += 1,
                _ => {}
            }
            now += 50;
        }
        assert_eq!(requests, MAX_PUNCH_ATTEMPTS);
        // At most one datagram per interval per attempt.
        assert!(sent <= MAX_PUNCH_ATTEMPTS as u64 * (PUNCH_WINDOW_MS / PUNCH_INTERVAL_MS + 1));
        let State::GaveUp { reason } = p.state() else {
            panic!("{:?}", p.state());
        };
        assert!(reason.contains("symmetric NAT"), "{reason}");
    }

    #[test]
    fn retries_wait_longer_each_time() {
        let mut p = Puncher::new(0);
        assert_eq!(p.poll(0), Some(Action::Request));
        // No answer from the relay within the window: first failure, retry after the base wait.
        p.poll(PUNCH_WINDOW_MS);
        assert_eq!(
            p.state(),
            &State::Waiting {
                at_ms: PUNCH_WINDOW_MS + PUNCH_RETRY_BASE_MS
            }
        );
        let t = PUNCH_WINDOW_MS + PUNCH_RETRY_BASE_MS;
        assert_eq!(p.poll(t), Some(Action::Request));
        p.on_refused(t + 1, &CoordinateError::TargetUnknown.to_string());
        assert_eq!(
            p.state(),
            &State::Waiting {
                at_ms: t + 1 + 2 * PUNCH_RETRY_BASE_MS
            }
        );
    }

    #[test]
    fn a_lost_direct_link_punches_again_later() {
        let peer = addr("198.18.0.3:7777");
        let mut p = Puncher::new(0);
        p.poll(0);
        p.on_punch(peer, 0);
        p.on_datagram(peer, true);
        p.on_link_lost(1_000);
        assert_eq!(
            p.state(),
            &State::Waiting {
                at_ms: 1_000 + PUNCH_RETRY_BASE_MS
            }
        );
    }
}
