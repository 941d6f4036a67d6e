//! The key book: which identity key belongs to which node id, with one precedence rule, pure.
//!
//! Used by the router (to seal end to end and to check adverts) and by the peer table (to
//! admit links). Three sources, strongest first:
//! 1. **pinned** by the operator (config `pinned_keys`): the only key ever accepted for that id;
//! 2. **proven** by the node itself on a direct link (its Noise static key): replaces a gossiped
//!    key, and is never replaced: a link proving another key for the id is refused as a key
//!    mismatch (the operator pins the new key to accept a regenerated identity);
//! 3. **gossiped** (a `link_state` advert, a `welcome` list): taken only for an id we know no
//!    key of, and never replaces anything.
//!
//! So an advert that arrives before a node's direct link cannot keep the link's proven key
//! out, and no amount of gossip can replace a key a node proved or an operator pinned.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Conflicts kept for `/status` (each logged once); beyond it they are only counted.
pub const MAX_CONFLICTS: usize = 64;

/// Where a key came from, weakest first (the derived order is the precedence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Heard from a third party (an advert or a welcome list).
    Gossiped,
    /// In an advert with the network CA's certificate for it.
    Certified,
    /// Proven by the node on a direct link.
    Proven,
    /// Pinned in the config.
    Pinned,
}

impl Source {
    /// The name `/status` shows: a gossiped key is "unverified".
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Gossiped => "unverified",
            Source::Certified => "certified",
            Source::Proven => "proven",
            Source::Pinned => "pinned",
        }
    }
}

/// What [`KeyBook::offer`] did with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// We held this key already (its source may have been upgraded).
    Same,
    /// Stored: the id was new, or the key replaced a weaker one. Anything derived from the old
    /// key (pair keys) must be dropped.
    Changed,
    /// Refused: a stronger or equal source holds another key for the id (or the book is full of
    /// gossip). The caller ignores whatever carried the key.
    Refused,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct KeyBook {
    /// Key and source by node id.
    keys: HashMap<String, ([u8; 32], Source)>,
    /// Most gossiped entries kept (proven and pinned ones are bounded by links and config).
    max_gossiped: usize,
    /// Gossiped entries held.
    gossiped: usize,
}

impl KeyBook {
    /// A book holding the operator's pinned keys, keeping at most `max_gossiped` gossiped ones.
    pub fn new(pinned: &BTreeMap<String, [u8; 32]>, max_gossiped: usize) -> KeyBook {
        KeyBook {
            keys: pinned
                .iter()
                .map(|(id, k)| (id.clone(), (*k, Source::Pinned)))
                .collect(),
            max_gossiped,
            gossiped: 0,
        }
    }

    /// Takes on a new set of pinned keys (a config reload): a pin no longer listed is
    /// forgotten (the id's key is learned again, from a link or an advert), a new pin replaces
    /// whatever was held for its id. Links up now keep the key they proved until they close.
    pub fn repin(&mut self, pinned: &BTreeMap<String, [u8; 32]>) {
        self.keys
            .retain(|id, (_, source)| *source != Source::Pinned || pinned.contains_key(id));
        for (id, key) in pinned {
            if let Some((_, Source::Gossiped)) =
                self.keys.insert(id.clone(), (*key, Source::Pinned))
            {
                self.gossiped -= 1;
            }
        }
    }

    /// Offers `key` for `id` from `source`; see [`Offer`].
    pub fn offer(&mut self, id: &str, key: [u8; 32], source: Source) -> Offer {
        match self.keys.get_mut(id) {
            Some((held, from)) if *held == key => {
                if source > *from {
                    if *from == Source::Gossiped {
                        self.gossiped -= 1;
                    }
                    *from = source;
                }
                Offer::Same
            }
            // Only a stronger source replaces a key: a proof replaces gossip, nothing replaces
            // a pin, and a proven key stays pinned to its id (another key's link is refused).
            Some((held, from)) if source > *from => {
                if *from == Source::Gossiped {
                    self.gossiped -= 1;
                }
                *held = key;
                *from = source;
                Offer::Changed
            }
            Some(_) => Offer::Refused,
            None => {
                if source == Source::Gossiped {
                    if self.gossiped >= self.max_gossiped {
                        return Offer::Refused;
                    }
                    self.gossiped += 1;
                }
                self.keys.insert(id.to_string(), (key, source));
                Offer::Changed
            }
        }
    }

    /// Whether `offer(id, key, source)` would be refused, without changing anything.
    pub fn would_refuse(&self, id: &str, key: &[u8; 32], source: Source) -> bool {
        match self.keys.get(id) {
            Some((held, _)) if held == key => false,
            Some((_, from)) => source <= *from,
            None => source == Source::Gossiped && self.gossiped >= self.max_gossiped,
        }
    }

    /// The key held for `id`.
    pub fn get(&self, id: &str) -> Option<&[u8; 32]> {
        self.keys.get(id).map(|(k, _)| k)
    }

    /// Where the key held for `id` came from.
    pub fn source(&self, id: &str) -> Option<Source> {
        self.keys.get(id).map(|(_, s)| *s)
    }

    /// The key held for `id` and where it came from.
    #[cfg(test)]
    pub fn entry(&self, id: &str) -> Option<([u8; 32], Source)> {
        self.keys.get(id).copied()
    }

    /// Whether a key is held for `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Forgets a gossiped key (e.g. its advert expired); proven and pinned keys stay.
    pub fn forget_gossiped(&mut self, id: &str) {
        if let Some((_, Source::Gossiped)) = self.keys.get(id) {
            self.keys.remove(id);
            self.gossiped -= 1;
        }
    }
}

/// One refused key: someone offered `offered` for a node whose key we hold as `held`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The node the key was offered for.
    pub node_id: String,
    /// The key we hold for it, hex.
    pub held: String,
    /// Where the held key came from (`pinned`, `proven`, `unverified`).
    pub held_source: &'static str,
    /// The key refused, hex.
    pub offered: String,
    /// How it came: `link` (a node proved it in a handshake) or `advert from <id>`.
    pub via: String,
    /// Times this key was offered for this node.
    pub count: u64,
    /// When it was first seen, unix ms.
    pub first_unix_ms: u64,
}

/// Refused keys, for `/status` `key_conflicts`: never silently resolved, logged once each.
#[derive(Debug, Clone, Default)]
pub struct Conflicts {
    /// By (node id, offered key).
    recent: BTreeMap<(String, [u8; 32]), Conflict>,
    /// Every conflict seen, also those beyond [`MAX_CONFLICTS`].
    total: u64,
}

impl Conflicts {
    /// Records that `offered` was refused for `node_id` (held: `held` from `held_source`).
    /// Returns true the first time this key is seen for this node: the caller logs it then.
    pub fn record(
        &mut self,
        node_id: &str,
        held: ([u8; 32], Source),
        offered: [u8; 32],
        via: String,
        now_unix_ms: u64,
    ) -> bool {
        self.total += 1;
        if let Some(c) = self.recent.get_mut(&(node_id.to_string(), offered)) {
            c.count += 1;
            return false;
        }
        if self.recent.len() < MAX_CONFLICTS {
            self.recent.insert(
                (node_id.to_string(), offered),
                Conflict {
                    node_id: node_id.to_string(),
                    held: hex::encode(held.0),
                    held_source: held.1.as_str(),
                    offered: hex::encode(offered),
                    via,
                    count: 1,
                    first_unix_ms: now_unix_ms,
                },
            );
        }
        true
    }

    /// The conflicts kept, by node id.
    pub fn list(&self) -> Vec<Conflict> {
        self.recent.values().cloned().collect()
    }

    /// Every conflict counted.
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_logged_once_counted_always_and_bounded() {
        let mut c = Conflicts::default();
        assert!(c.record("b", (A, Source::Proven), B, "link".into(), 1));
        assert!(!c.record("b", (A, Source::Proven), B, "link".into(), 2));
        assert_eq!(c.list().len(), 1);
        assert_eq!(c.list()[0].count, 2);
        assert_eq!(c.list()[0].held_source, "proven");
        for i in 0..100u8 {
            c.record("b", (A, Source::Proven), [i + 3; 32], "link".into(), 3);
        }
        assert_eq!(c.list().len(), MAX_CONFLICTS);
        assert_eq!(c.total(), 102);
    }

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];

    fn book() -> KeyBook {
        KeyBook::new(&BTreeMap::new(), 16)
    }

    #[test]
    fn a_proof_replaces_a_key_an_advert_brought_first() {
        // The advert-before-link case: a relay gossips its own key for `b` before `b`'s direct
        // link proves the real one.
        let mut k = book();
        assert_eq!(k.offer("b", B, Source::Gossiped), Offer::Changed);
        assert_eq!(k.offer("b", A, Source::Proven), Offer::Changed);
        assert_eq!(k.get("b"), Some(&A));
        assert_eq!(k.entry("b").map(|e| e.1), Some(Source::Proven));
    }

    #[test]
    fn gossip_never_replaces_a_proven_key() {
        let mut k = book();
        k.offer("b", A, Source::Proven);
        assert_eq!(k.offer("b", B, Source::Gossiped), Offer::Refused);
        assert!(k.would_refuse("b", &B, Source::Gossiped));
        assert_eq!(k.get("b"), Some(&A));
    }

    #[test]
    fn gossip_does_not_replace_gossip() {
        let mut k = book();
        k.offer("b", A, Source::Gossiped);
        assert_eq!(k.offer("b", B, Source::Gossiped), Offer::Refused);
        assert_eq!(k.get("b"), Some(&A));
    }

    #[test]
    fn repinning_replaces_and_forgets_pins() {
        let mut k = KeyBook::new(&BTreeMap::from([("b".to_string(), A)]), 16);
        assert_eq!(k.offer("c", B, Source::Gossiped), Offer::Changed);
        // Pin c to another key, unpin b.
        k.repin(&BTreeMap::from([("c".to_string(), A)]));
        assert_eq!(k.entry("c"), Some((A, Source::Pinned)));
        assert_eq!(
            k.offer("c", B, Source::Proven),
            Offer::Refused,
            "the new pin holds"
        );
        assert!(!k.contains("b"), "the old pin is gone");
        assert_eq!(k.offer("b", B, Source::Gossiped), Offer::Changed);
        assert_eq!(k.gossiped, 1, "c's gossiped entry became a pin");
    }

    #[test]
    fn a_pinned_key_is_the_only_one_accepted() {
        let pinned = BTreeMap::from([("b".to_string(), A)]);
        let mut k = KeyBook::new(&pinned, 16);
        assert_eq!(k.offer("b", B, Source::Proven), Offer::Refused);
        assert_eq!(k.offer("b", B, Source::Gossiped), Offer::Refused);
        assert_eq!(k.offer("b", A, Source::Proven), Offer::Same);
        assert_eq!(k.entry("b"), Some((A, Source::Pinned)));
    }

    #[test]
    fn a_proven_key_stays_pinned_to_its_id() {
        let mut k = book();
        k.offer("b", A, Source::Proven);
        assert_eq!(k.offer("b", B, Source::Proven), Offer::Refused);
        assert!(k.would_refuse("b", &B, Source::Proven));
        assert_eq!(k.get("b"), Some(&A));
    }

    #[test]
    fn gossiped_entries_are_bounded_and_upgrades_free_their_slot() {
        let mut k = KeyBook::new(&BTreeMap::new(), 2);
        k.offer("a", A, Source::Gossiped);
        k.offer("b", A, Source::Gossiped);
        assert_eq!(k.offer("c", A, Source::Gossiped), Offer::Refused);
        assert_eq!(
            k.offer("c", A, Source::Proven),
            Offer::Changed,
            "proofs always fit"
        );
        k.offer("a", A, Source::Proven); // upgrade frees a gossip slot
        assert_eq!(k.offer("d", A, Source::Gossiped), Offer::Changed);
        k.forget_gossiped("d");
        k.forget_gossiped("a"); // proven: stays
        assert!(!k.contains("d"));
        assert!(k.contains("a"));
    }
}
