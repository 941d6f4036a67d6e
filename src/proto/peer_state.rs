//! The connection state machine the card asks of every PeerActor, pure.
//!
//! ```text
//!   Init --up--> Active --down--> Disconnected --up--> Active ...
//!    |  ^                              |  ^
//!    +--+ down (never got up: still Init, re-dialling)
//!                                      +--+ down (a re-dial attempt failed)
//! ```
//! `connect` (a socket exists, the handshake runs) never changes the visible state: a node that
//! was lost stays Disconnected while it is being re-dialled, and one that never came up stays
//! Init. The actor keeps the data of each state; this module decides which state comes next.

use serde::Serialize;

/// A link's visible state, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PeerState {
    /// Not Active yet since the actor was created: dialling or handshaking.
    Init,
    /// Authenticated and admitted; heartbeats flowing.
    Active,
    /// Was Active (or refused after), lost; a dialler re-dials from here.
    Disconnected,
}

/// What happened to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A connection attempt started (socket up, handshake running).
    Connect,
    /// The peer authenticated and was admitted.
    Up,
    /// The connection ended: error, timeout, close, or a caught panic.
    Down,
}

impl PeerState {
    /// The state after `step`.
    pub fn next(self, step: Step) -> PeerState {
        match (self, step) {
            (s, Step::Connect) => s,
            (_, Step::Up) => PeerState::Active,
            (PeerState::Init, Step::Down) => PeerState::Init,
            (PeerState::Active | PeerState::Disconnected, Step::Down) => PeerState::Disconnected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steps: &[Step]) -> Vec<PeerState> {
        let mut s = PeerState::Init;
        steps
            .iter()
            .map(|step| {
                s = s.next(*step);
                s
            })
            .collect()
    }

    #[test]
    fn first_connection_goes_init_to_active() {
        use PeerState::*;
        assert_eq!(run(&[Step::Connect, Step::Up]), [Init, Active]);
    }

    #[test]
    fn failed_first_attempts_stay_init() {
        use PeerState::*;
        let steps = [Step::Connect, Step::Down, Step::Connect, Step::Down];
        assert_eq!(run(&steps), [Init, Init, Init, Init]);
    }

    #[test]
    fn a_lost_link_is_disconnected_until_a_reconnect_succeeds() {
        use PeerState::*;
        let steps = [
            Step::Connect,
            Step::Up,
            Step::Down,
            Step::Connect,
            Step::Down,
            Step::Connect,
            Step::Up,
        ];
        assert_eq!(
            run(&steps),
            [
                Init,
                Active,
                Disconnected,
                Disconnected,
                Disconnected,
                Disconnected,
                Active
            ]
        );
    }
}
