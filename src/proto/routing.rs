//! Link-state routing: who is reachable through whom, pure.
//!
//! Used by an actor through plain types (no actor, wire or clock types here: the caller converts
//! wire adverts and passes the time as `now_ms`), so every rule is unit-tested on hand-built
//! graphs with simulated time.
//!
//! # Algorithm
//!
//! As in EasyTier (and OSPF before it), every node floods an advertisement ([`Advert`]) of its
//! direct links, periodically and whenever they change: its id, a sequence number, and each
//! neighbour with the link's cost in microseconds (the measured RTT). Every node keeps the
//! newest advertisement per origin ([`RoutingTable::apply`]) and so holds the same map of the
//! network as everyone else; from it, it computes shortest paths from itself
//! ([`RoutingTable::routes`]).
//!
//! - **Sequence numbers.** A higher `seq` from an origin replaces the stored advert; an equal or
//!   lower one is a duplicate or stale copy and is neither stored nor re-flooded, which is what
//!   stops the flood. A node's first `seq` is the caller's `unix-ms-at-start * 1000`, so a
//!   restarted node's adverts beat those of its previous life everywhere. If an advert for our
//!   own id shows up with a higher `seq` than ours anyway (a clock stepped back), or with our
//!   `seq` but other links, we jump past it and the caller re-advertises, so the network drops
//!   the stale one.
//! - **Edges need both ends.** An edge between `a` and `b` exists only if `a`'s advert lists `b`
//!   and `b`'s advert lists `a`. A dead node's advert lingers until it expires, but its
//!   neighbours stop listing it, so it attracts no traffic; a link one end withdraws disappears
//!   at once. The price: a neighbour is routable only once its own advert has arrived (the
//!   caller sends everything it holds to a neighbour that links up, so that takes one trip; a
//!   direct link can be used directly meanwhile). The edge's cost is the larger of the two
//!   measurements: both ends measure the same round trip, the larger one honours a link that one
//!   side sees degrading, and the graph stays symmetric, so the route back follows the route
//!   there.
//! - **Shortest paths.** Dijkstra from ourselves, ordering paths by `(cost, hops, first hop id)`
//!   lexicographically: the lowest total cost wins, a tie goes to the path with fewer hops, and a
//!   remaining tie to the lower next-hop id, so every run on the same adverts gives the same
//!   answer. Extending a path adds a positive hop and a non-negative cost and keeps its first hop,
//!   so this order is monotone and Dijkstra finds the optimum under it.
//! - **Hop limit.** A node whose best path is longer than [`MAX_HOPS`] is unreachable. The limit
//!   cuts best paths off rather than constraining the search (a costlier path within the limit
//!   is not looked for): then every subpath of a chosen path is itself chosen, so when all nodes
//!   hold the same adverts, forwarding hop by hop to each node's `next_hop` is loop-free and
//!   reaches the target in exactly `hops` steps, and no node on the way calls it unreachable. A
//!   hop-constrained search would lose that property. While adverts are still spreading, views
//!   can differ for a moment, so forwarded messages should still carry a hop budget.
//! - **Caching.** Routes are asked for per message; they are recomputed only when an advert that
//!   changes the graph was stored or dropped since the last computation.
//! - **Bounds.** At most [`MAX_ORIGINS`] adverts besides our own are held (new origins beyond are
//!   refused, known ones still update, expiry makes room) and each keeps at most
//!   [`MAX_NEIGHBORS`] neighbours, so memory and the O(E log V) recomputation stay bounded.
//! - **Expiry.** An advert not superseded for the caller's maximum age is dropped, seq and all.
//!   If a neighbour still holds a copy and sends it again, it comes back for another maximum age;
//!   that is harmless, since its links count only where the other ends still list them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Longest usable path, in hops (links). A node whose best path is longer is unreachable. A
/// RIP-style bound (RFC 2453 counts a metric of 16 as infinity; here 16 hops still count): far
/// beyond any sane overlay path, small enough to serve as a forwarded message's hop budget.
pub const MAX_HOPS: u32 = 16;

/// Most adverts held besides our own. Matches the node table bound (`MAX_KNOWN_NODES`) and the
/// wire limit on `welcome.known`: a network we cannot list, we do not route.
pub const MAX_ORIGINS: usize = 1024;

/// Most neighbours kept per advert (the lowest-cost ones win). Each node can link to at most
/// every other node, so the origin bound is also the degree bound.
pub const MAX_NEIGHBORS: usize = 1024;

/// An advertisement as the table sees it (the wire type is converted by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// The node whose links these are.
    pub origin: String,
    /// The origin's sequence number: higher supersedes lower.
    pub seq: u64,
    /// Direct links as `(neighbour id, cost in microseconds)`. Stored adverts hold these sorted
    /// by id, without duplicates, without the origin itself, and at most [`MAX_NEIGHBORS`].
    pub neighbors: Vec<(String, u32)>,
}

/// The best path from us to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The neighbour to hand a message for this node to (`path[1]`).
    pub next_hop: String,
    /// Links on the path (`path.len() - 1`), at most [`MAX_HOPS`].
    pub hops: u32,
    /// Sum of the path's link costs, in microseconds.
    pub cost_us: u64,
    /// The nodes on the path, from us to the target, for tests and status.
    pub path: Vec<String>,
}

/// What [`RoutingTable::apply`] did with an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Stored: it is newer than what we had. The caller re-floods it to its other neighbours.
    Newer,
    /// Ignored: we hold this seq or a newer one for that origin. Not re-flooded.
    Stale,
    /// It claimed our id with a higher seq than ours, or ours with other links (a leftover from
    /// before a restart). Our seq jumped past it; the caller floods
    /// [`RoutingTable::local_advert`] to every neighbour instead, so the leftover is overridden
    /// everywhere.
    Readvertise,
    /// Ignored: a new origin while [`MAX_ORIGINS`] adverts are held. Not re-flooded.
    TableFull,
}

/// An advert and when we stored it.
#[derive(Debug, Clone)]
struct Stored {
    /// The normalised advert.
    advert: Advert,
    /// When it was stored, in the caller's milliseconds.
    stored_ms: u64,
}

/// Adverts per origin and the routes computed from them. See the module docs.
#[derive(Debug)]
pub struct RoutingTable {
    /// Our node id.
    local_id: String,
    /// Our own advert (never expires, never counted against [`MAX_ORIGINS`]).
    local: Stored,
    /// Everyone else's newest advert, by origin.
    remote: HashMap<String, Stored>,
    /// Routes from the last computation.
    routes: HashMap<String, Route>,
    /// The graph changed since `routes` was computed.
    dirty: bool,
    /// Bumped whenever the graph changes: lets the router notice route changes cheaply.
    generation: u64,
    /// How many times routes were computed (lets tests check the cache).
    #[cfg(test)]
    computations: u64,
}

impl RoutingTable {
    /// An empty table for node `local_id`. `seq_base` is the first sequence number this node
    /// uses (the caller passes unix-ms-at-start * 1000, so a restarted node's adverts supersede
    /// its old ones everywhere); the initial advert lists no neighbours.
    pub fn new(local_id: &str, seq_base: u64) -> Self {
        RoutingTable {
            local_id: local_id.to_string(),
            local: Stored {
                advert: Advert {
                    origin: local_id.to_string(),
                    seq: seq_base,
                    neighbors: Vec::new(),
                },
                stored_ms: 0,
            },
            remote: HashMap::new(),
            routes: HashMap::new(),
            dirty: false,
            generation: 0,
            #[cfg(test)]
            computations: 0,
        }
    }

    /// Our own direct links changed (or a refresh is due): stores and returns our new advert,
    /// with the next seq, stamped `now_ms` (our own advert never expires). `neighbors` are
    /// `(id, cost_us)`; duplicates keep their lowest cost, our own id is dropped, and beyond
    /// [`MAX_NEIGHBORS`] the lowest-cost links are kept.
    pub fn set_local(&mut self, neighbors: Vec<(String, u32)>, now_ms: u64) -> Advert {
        let neighbors = normalize(&self.local_id, neighbors);
        if neighbors != self.local.advert.neighbors {
            self.dirty = true;
            self.generation += 1;
        }
        self.local.advert.seq = self.local.advert.seq.saturating_add(1);
        self.local.advert.neighbors = neighbors;
        self.local.stored_ms = now_ms;
        self.local.advert.clone()
    }

    /// The seq held for `origin` (ours for our own id), if any: an advert at or below it is
    /// stale, so a caller can skip checking its signature.
    pub fn seq_of(&self, origin: &str) -> Option<u64> {
        if origin == self.local_id {
            return Some(self.local.advert.seq);
        }
        self.remote.get(origin).map(|s| s.advert.seq)
    }

    /// Our current advert (to send to a neighbour that just linked up).
    pub fn local_advert(&self) -> Advert {
        self.local.advert.clone()
    }

    /// Takes an advert from the network (see [`Applied`] for what the caller does next). A
    /// higher seq for an origin replaces the stored advert. An advert for our own id is never
    /// stored; if its seq is higher than ours, or equal with other links than ours, our seq
    /// jumps past it. Neighbour lists are normalised as in [`RoutingTable::set_local`].
    pub fn apply(&mut self, advert: Advert, now_ms: u64) -> Applied {
        if advert.origin == self.local_id {
            let ours = &mut self.local.advert;
            let conflicting = advert.seq > ours.seq
                || (advert.seq == ours.seq
                    && normalize(&self.local_id, advert.neighbors) != ours.neighbors);
            if !conflicting {
                return Applied::Stale;
            }
            ours.seq = advert.seq.saturating_add(1);
            self.local.stored_ms = now_ms;
            return Applied::Readvertise;
        }
        match self.remote.get(&advert.origin) {
            Some(held) if advert.seq <= held.advert.seq => return Applied::Stale,
            None if self.remote.len() >= MAX_ORIGINS => return Applied::TableFull,
            _ => {}
        }
        let neighbors = normalize(&advert.origin, advert.neighbors);
        let changed = self
            .remote
            .get(&advert.origin)
            .is_none_or(|held| held.advert.neighbors != neighbors);
        if changed {
            self.dirty = true;
            self.generation += 1;
        }
        let stored = Stored {
            advert: Advert {
                origin: advert.origin.clone(),
                seq: advert.seq,
                neighbors,
            },
            stored_ms: now_ms,
        };
        self.remote.insert(advert.origin, stored);
        Applied::Newer
    }

    /// Drops every advert (but ours) stored more than `max_age_ms` before `now_ms`; returns the
    /// origins dropped, sorted. The caller picks `max_age_ms` as a few refresh periods.
    pub fn expire(&mut self, now_ms: u64, max_age_ms: u64) -> Vec<String> {
        let mut dropped: Vec<String> = self
            .remote
            .values()
            .filter(|s| now_ms.saturating_sub(s.stored_ms) > max_age_ms)
            .map(|s| s.advert.origin.clone())
            .collect();
        for origin in &dropped {
            self.remote.remove(origin);
        }
        if !dropped.is_empty() {
            self.dirty = true;
            self.generation += 1;
        }
        dropped.sort();
        dropped
    }

    /// Every advert we hold, ours included, sorted by origin (for a neighbour that just linked
    /// up: send it everything; tests).
    #[cfg(test)]
    pub fn adverts(&self) -> Vec<Advert> {
        let mut all: Vec<Advert> = self.remote.values().map(|s| s.advert.clone()).collect();
        all.push(self.local.advert.clone());
        all.sort_by(|a, b| a.origin.cmp(&b.origin));
        all
    }

    /// Shortest paths from us to every reachable node, ourselves excluded, by target id.
    /// Recomputed only if the graph changed since the last call.
    pub fn routes(&mut self) -> &HashMap<String, Route> {
        if self.dirty {
            self.routes = self.compute();
            #[cfg(test)]
            {
                self.computations += 1;
            }
            self.dirty = false;
        }
        &self.routes
    }

    /// Changes to the graph so far (see [`RoutingTable::routes`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The route to `target`, if it is reachable (never for ourselves).
    pub fn route(&mut self, target: &str) -> Option<Route> {
        self.routes().get(target).cloned()
    }

    /// Ids of every origin we hold an advert for, ours included, sorted.
    #[cfg(test)]
    pub fn origins(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.remote.keys().cloned().collect();
        ids.push(self.local_id.clone());
        ids.sort();
        ids
    }

    /// The graph as routing sees it: every origin we hold an advert for (ours included) and
    /// every edge both ends list, each once as `(lower id, higher id, cost_us)` with the cost
    /// routing uses (the larger of the two measurements). Sorted, for the topology view.
    pub fn graph(&self) -> (Vec<String>, Vec<(String, String, u64)>) {
        let mut adverts: Vec<&Advert> = self.remote.values().map(|s| &s.advert).collect();
        adverts.push(&self.local.advert);
        adverts.sort_by(|a, b| a.origin.cmp(&b.origin));
        let by_id: HashMap<&str, &Advert> =
            adverts.iter().map(|a| (a.origin.as_str(), *a)).collect();
        let mut edges = Vec::new();
        for a in &adverts {
            for (id, cost) in &a.neighbors {
                if a.origin.as_str() >= id.as_str() {
                    continue;
                }
                let Some(back) = by_id
                    .get(id.as_str())
                    .and_then(|b| listed_cost(b, &a.origin))
                else {
                    continue;
                };
                edges.push((a.origin.clone(), id.clone(), u64::from((*cost).max(back))));
            }
        }
        edges.sort();
        let nodes = adverts.iter().map(|a| a.origin.clone()).collect();
        (nodes, edges)
    }

    /// Dijkstra over the edges both ends list; see the module docs for the order and the limit.
    fn compute(&self) -> HashMap<String, Route> {
        // Nodes are numbered in id order, so comparing numbers compares ids (the tie-break).
        let mut adverts: Vec<&Advert> = self.remote.values().map(|s| &s.advert).collect();
        adverts.push(&self.local.advert);
        adverts.sort_by(|a, b| a.origin.cmp(&b.origin));
        let index: HashMap<&str, usize> = adverts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.origin.as_str(), i))
            .collect();
        let Some(&source) = index.get(self.local_id.as_str()) else {
            return HashMap::new();
        };
        let adjacency: Vec<Vec<(usize, u64)>> = adverts
            .iter()
            .map(|a| {
                a.neighbors
                    .iter()
                    .filter_map(|(id, cost)| {
                        let &j = index.get(id.as_str())?;
                        let back = listed_cost(adverts[j], &a.origin)?;
                        Some((j, u64::from((*cost).max(back))))
                    })
                    .collect()
            })
            .collect();

        // Label of a node: (cost, hops, first hop) of its best path so far.
        let n = adverts.len();
        let mut best: Vec<Option<(u64, u32, usize)>> = vec![None; n];
        let mut previous: Vec<usize> = vec![source; n];
        let mut settled = vec![false; n];
        let mut heap = BinaryHeap::new();
        best[source] = Some((0, 0, source));
        heap.push(Reverse((0u64, 0u32, source, source)));
        while let Some(Reverse((cost, hops, first, node))) = heap.pop() {
            if settled[node] {
                continue;
            }
            settled[node] = true;
            for &(next, edge_cost) in &adjacency[node] {
                if settled[next] {
                    continue;
                }
                let via = if node == source { next } else { first };
                let label = (cost + edge_cost, hops + 1, via);
                if best[next].is_none_or(|held| label < held) {
                    best[next] = Some(label);
                    previous[next] = node;
                    heap.push(Reverse((label.0, label.1, label.2, next)));
                }
            }
        }

        let mut routes = HashMap::new();
        for (target, label) in best.iter().enumerate() {
            let Some((cost_us, hops, first)) = *label else {
                continue;
            };
            if target == source || hops > MAX_HOPS {
                continue;
            }
            let mut path = vec![adverts[target].origin.clone()];
            let mut at = target;
            while at != source {
                at = previous[at];
                path.push(adverts[at].origin.clone());
            }
            path.reverse();
            routes.insert(
                adverts[target].origin.clone(),
                Route {
                    next_hop: adverts[first].origin.clone(),
                    hops,
                    cost_us,
                    path,
                },
            );
        }
        routes
    }
}

/// Canonical neighbour list of `origin`: without `origin`, one entry per id with its lowest
/// cost, at most [`MAX_NEIGHBORS`] (the cheapest, ties by id), sorted by id.
fn normalize(origin: &str, neighbors: Vec<(String, u32)>) -> Vec<(String, u32)> {
    let mut lowest: HashMap<String, u32> = HashMap::new();
    for (id, cost) in neighbors {
        if id == origin {
            continue;
        }
        lowest
            .entry(id)
            .and_modify(|held| *held = (*held).min(cost))
            .or_insert(cost);
    }
    let mut list: Vec<(String, u32)> = lowest.into_iter().collect();
    if list.len() > MAX_NEIGHBORS {
        list.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        list.truncate(MAX_NEIGHBORS);
    }
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list
}

/// The cost `advert` lists for `id`, if it lists it (its neighbours are sorted by id).
fn listed_cost(advert: &Advert, id: &str) -> Option<u32> {
    advert
        .neighbors
        .binary_search_by(|(n, _)| n.as_str().cmp(id))
        .ok()
        .map(|i| advert.neighbors[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ad(origin: &str, seq: u64, neighbors: &[(&str, u32)]) -> Advert {
        Advert {
            origin: origin.into(),
            seq,
            neighbors: neighbors.iter().map(|&(n, c)| (n.into(), c)).collect(),
        }
    }

    /// Neighbour lists of an undirected graph: every edge listed by both ends, same cost.
    fn lists(edges: &[(&str, &str, u32)]) -> BTreeMap<String, Vec<(String, u32)>> {
        let mut lists: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
        for &(a, b, cost) in edges {
            lists.entry(a.into()).or_default().push((b.into(), cost));
            lists.entry(b.into()).or_default().push((a.into(), cost));
        }
        lists
    }

    /// The table at `local` once it holds every node's advert (seq 1) at time 0.
    fn table(local: &str, edges: &[(&str, &str, u32)]) -> RoutingTable {
        let mut t = RoutingTable::new(local, 100);
        for (node, neighbors) in lists(edges) {
            if node == local {
                t.set_local(neighbors, 0);
            } else {
                let advert = Advert {
                    origin: node,
                    seq: 1,
                    neighbors,
                };
                assert_eq!(t.apply(advert, 0), Applied::Newer);
            }
        }
        t
    }

    fn path(route: &Route) -> Vec<&str> {
        route.path.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_line_routes_through_the_middle() {
        let mut t = table("a", &[("a", "b", 10), ("b", "c", 20)]);
        let c = t.route("c").unwrap();
        assert_eq!((c.next_hop.as_str(), c.hops, c.cost_us), ("b", 2, 30));
        assert_eq!(path(&c), ["a", "b", "c"]);
        let b = t.route("b").unwrap();
        assert_eq!((b.next_hop.as_str(), b.hops, b.cost_us), ("b", 1, 10));
        assert_eq!(t.route("a"), None, "no route to ourselves");
        assert_eq!(t.routes().len(), 2);
    }

    #[test]
    fn the_graph_shows_edges_both_ends_list_once_with_the_larger_cost() {
        let mut t = table("a", &[("a", "b", 10), ("b", "c", 20)]);
        // c claims a link to d, which d does not list: no edge. b measures b-c at 20, c at 25.
        t.apply(ad("c", 2, &[("b", 25), ("d", 5)]), 0);
        t.apply(ad("d", 1, &[("e", 5)]), 0);
        let (nodes, edges) = t.graph();
        assert_eq!(nodes, ["a", "b", "c", "d"]);
        let edges: Vec<(&str, &str, u64)> = edges
            .iter()
            .map(|(x, y, c)| (x.as_str(), y.as_str(), *c))
            .collect();
        assert_eq!(edges, [("a", "b", 10), ("b", "c", 25)]);
    }

    #[test]
    fn a_ring_takes_the_cheaper_side_in_both_directions() {
        let mut t = table(
            "a",
            &[("a", "b", 10), ("b", "c", 10), ("c", "d", 1), ("d", "a", 1)],
        );
        let c = t.route("c").unwrap();
        assert_eq!((path(&c), c.cost_us), (vec!["a", "d", "c"], 2));
        // Direct (10) beats the long way round (1 + 1 + 10).
        assert_eq!(path(&t.route("b").unwrap()), ["a", "b"]);

        let mut t = table(
            "a",
            &[("a", "b", 1), ("b", "c", 1), ("c", "d", 10), ("d", "a", 10)],
        );
        let c = t.route("c").unwrap();
        assert_eq!((path(&c), c.cost_us), (vec!["a", "b", "c"], 2));
        // And from the other end the same path comes back.
        let mut at_c = table(
            "c",
            &[("a", "b", 1), ("b", "c", 1), ("c", "d", 10), ("d", "a", 10)],
        );
        assert_eq!(path(&at_c.route("a").unwrap()), ["c", "b", "a"]);
    }

    #[test]
    fn equal_costs_go_to_fewer_hops_then_the_lower_next_hop_id() {
        // Square, all costs equal: both ways to c cost the same in the same hops; b < d wins,
        // whatever order the adverts arrived in.
        let edges = [("a", "b", 5), ("b", "c", 5), ("c", "d", 5), ("d", "a", 5)];
        let mut forward = table("a", &edges);
        let mut reversed = RoutingTable::new("a", 100);
        for (node, neighbors) in lists(&edges).into_iter().rev() {
            if node == "a" {
                reversed.set_local(neighbors, 0);
            } else {
                reversed.apply(
                    Advert {
                        origin: node,
                        seq: 1,
                        neighbors,
                    },
                    0,
                );
            }
        }
        let c = forward.route("c").unwrap();
        assert_eq!((c.next_hop.as_str(), c.hops, c.cost_us), ("b", 2, 10));
        assert_eq!(forward.routes(), reversed.routes());

        // Pentagon: a-e-d (3 + 3) and a-b-c-d (2 + 2 + 2) cost the same; fewer hops beats the
        // lower next-hop id.
        let mut t = table(
            "a",
            &[
                ("a", "b", 2),
                ("b", "c", 2),
                ("c", "d", 2),
                ("a", "e", 3),
                ("e", "d", 3),
            ],
        );
        let d = t.route("d").unwrap();
        assert_eq!((path(&d), d.hops, d.cost_us), (vec!["a", "e", "d"], 2, 6));
    }

    #[test]
    fn a_withdrawn_link_disappears_at_once() {
        let mut t = table("a", &[("a", "b", 1), ("b", "c", 1)]);
        assert!(t.route("c").is_some());
        // b stops listing c; c still lists b (its advert is older), but one end is enough.
        assert_eq!(t.apply(ad("b", 2, &[("a", 1)]), 10), Applied::Newer);
        assert_eq!(t.route("c"), None);
        assert!(t.route("b").is_some());
    }

    #[test]
    fn a_one_sided_listing_never_makes_an_edge() {
        let mut t = RoutingTable::new("a", 100);
        t.set_local(vec![("b".into(), 1), ("x".into(), 1)], 0);
        t.apply(ad("b", 1, &[("a", 1)]), 0);
        // c claims b, b does not list c.
        t.apply(ad("c", 1, &[("b", 1)]), 0);
        // d lists a, a does not list d.
        t.apply(ad("d", 1, &[("a", 1)]), 0);
        let mut reachable: Vec<&String> = t.routes().keys().collect();
        reachable.sort();
        // x is linked to us but has not advertised yet: not routable until it does.
        assert_eq!(reachable, ["b"]);
    }

    #[test]
    fn losing_the_middle_node_fails_over_to_the_other_path() {
        let mut t = table(
            "a",
            &[("a", "b", 1), ("b", "c", 1), ("a", "d", 5), ("d", "c", 5)],
        );
        assert_eq!(path(&t.route("c").unwrap()), ["a", "b", "c"]);
        // b dies: we drop our link to it. Its stale advert still lists a and c, but without
        // our side the edge a-b is gone.
        t.set_local(vec![("d".into(), 5)], 10);
        let c = t.route("c").unwrap();
        assert_eq!((path(&c), c.cost_us), (vec!["a", "d", "c"], 10));
        // c has not noticed yet, so b still looks alive behind c.
        assert_eq!(path(&t.route("b").unwrap()), ["a", "d", "c", "b"]);
        // Once c drops it too, b's stale advert attracts nothing.
        t.apply(ad("c", 2, &[("d", 5)]), 20);
        assert_eq!(t.route("b"), None);
        assert_eq!(path(&t.route("c").unwrap()), ["a", "d", "c"]);
    }

    #[test]
    fn paths_longer_than_the_hop_limit_are_unreachable() {
        let names: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
        let edges: Vec<(&str, &str, u32)> = names
            .windows(2)
            .map(|w| (w[0].as_str(), w[1].as_str(), 1))
            .collect();
        let mut t = table("n00", &edges);
        for (k, name) in names.iter().enumerate().skip(1) {
            let route = t.route(name);
            if k as u32 <= MAX_HOPS {
                assert_eq!(route.map(|r| r.hops), Some(k as u32), "{name}");
            } else {
                assert_eq!(route, None, "{name}");
            }
        }
        // The limit cuts the best path off; it does not search for a shorter, costlier one
        // (that would break hop-by-hop consistency), so even a direct but expensive link to n18
        // does not make it reachable while the 18-hop line is cheaper. A cheaper one does.
        let mut with_shortcut = edges.clone();
        with_shortcut.push(("n00", "n18", 1_000));
        assert_eq!(table("n00", &with_shortcut).route("n18"), None);
        with_shortcut.pop();
        with_shortcut.push(("n00", "n18", 10));
        let mut t = table("n00", &with_shortcut);
        assert_eq!(t.route("n18").map(|r| r.hops), Some(1));
        assert_eq!(t.route("n19").map(|r| r.hops), Some(2));
        assert_eq!(
            t.route("n17").map(|r| r.hops),
            Some(2),
            "back along the line"
        );
    }

    #[test]
    fn stale_and_duplicate_adverts_are_ignored() {
        let mut t = RoutingTable::new("a", 100);
        t.set_local(vec![("b".into(), 1), ("c".into(), 1)], 0);
        t.apply(ad("c", 1, &[("a", 1)]), 0);
        assert_eq!(t.apply(ad("b", 5, &[("a", 1)]), 0), Applied::Newer);
        assert_eq!(t.apply(ad("b", 5, &[("a", 1)]), 1), Applied::Stale);
        // An older advert with other content changes nothing.
        assert_eq!(
            t.apply(ad("b", 4, &[("a", 9), ("c", 9)]), 2),
            Applied::Stale
        );
        assert_eq!(t.route("b").unwrap().cost_us, 1);
        assert_eq!(t.adverts()[1], ad("b", 5, &[("a", 1)]));
        assert_eq!(t.apply(ad("b", 6, &[("a", 7)]), 3), Applied::Newer);
        assert_eq!(t.route("b").unwrap().cost_us, 7);
    }

    #[test]
    fn our_own_advert_from_a_past_life_makes_us_jump_past_it() {
        let mut t = RoutingTable::new("a", 1_000);
        assert_eq!(t.local_advert(), ad("a", 1_000, &[]));
        let mine = t.set_local(vec![("b".into(), 3)], 0);
        assert_eq!(mine, ad("a", 1_001, &[("b", 3)]));
        // Our own advert echoed back, or an older one: nothing to do.
        assert_eq!(t.apply(mine.clone(), 1), Applied::Stale);
        assert_eq!(t.apply(ad("a", 7, &[("x", 1)]), 1), Applied::Stale);
        // A higher seq under our id (before a clock step back, say): jump past it, keep our links.
        assert_eq!(
            t.apply(ad("a", 5_000, &[("x", 1)]), 2),
            Applied::Readvertise
        );
        assert_eq!(t.local_advert(), ad("a", 5_001, &[("b", 3)]));
        // The same seq as ours with other links is a conflict too.
        assert_eq!(
            t.apply(ad("a", 5_001, &[("x", 1)]), 3),
            Applied::Readvertise
        );
        assert_eq!(t.local_advert().seq, 5_002);
        // It is never stored as someone else's advert, and the next change counts on from there.
        assert_eq!(t.origins(), ["a"]);
        assert_eq!(t.set_local(vec![], 4).seq, 5_003);
    }

    #[test]
    fn expiry_drops_adverts_and_their_routes_but_never_ours() {
        let mut t = table("a", &[("a", "b", 1), ("b", "c", 1)]);
        // b refreshes (same links, new seq) at 600; c never does.
        assert_eq!(
            t.apply(ad("b", 2, &[("a", 1), ("c", 1)]), 600),
            Applied::Newer
        );
        assert!(
            t.expire(1_000, 1_000).is_empty(),
            "exactly max age is still fresh"
        );
        assert_eq!(t.expire(1_500, 1_000), ["c"]);
        assert_eq!(t.route("c"), None, "b still lists c, but c's side is gone");
        assert!(t.route("b").is_some());
        assert_eq!(t.origins(), ["a", "b"]);
        assert_eq!(t.expire(10_000, 1_000), ["b"]);
        assert!(t.routes().is_empty());
        assert_eq!(t.origins(), ["a"]);
        // An expired origin comes back with its next advert.
        assert_eq!(t.apply(ad("b", 3, &[("a", 1)]), 10_000), Applied::Newer);
        assert!(t.route("b").is_some());
    }

    #[test]
    fn neighbour_lists_are_deduplicated_cleaned_and_capped() {
        let mut t = RoutingTable::new("a", 0);
        let mine = t.set_local(
            vec![
                ("c".into(), 7),
                ("b".into(), 30),
                ("a".into(), 5),
                ("b".into(), 10),
            ],
            0,
        );
        assert_eq!(mine, ad("a", 1, &[("b", 10), ("c", 7)]));
        t.apply(ad("b", 1, &[("b", 1), ("a", 4), ("a", 2)]), 0);
        assert_eq!(t.adverts()[1], ad("b", 1, &[("a", 2)]));

        // Over the cap, the cheapest links stay: n{i} costs MAX + 10 - i, so the 10 lowest i go.
        let many: Vec<(String, u32)> = (0..MAX_NEIGHBORS + 10)
            .map(|i| (format!("n{i:05}"), (MAX_NEIGHBORS + 10 - i) as u32))
            .collect();
        let mine = t.set_local(many.clone(), 0);
        assert_eq!(mine.neighbors.len(), MAX_NEIGHBORS);
        assert_eq!(mine.neighbors[0].0, "n00010");
        t.apply(
            Advert {
                origin: "z".into(),
                seq: 1,
                neighbors: many,
            },
            0,
        );
        assert_eq!(t.adverts()[2].neighbors, mine.neighbors);
    }

    #[test]
    fn the_number_of_origins_is_bounded() {
        let mut t = RoutingTable::new("a", 0);
        for i in 0..MAX_ORIGINS {
            assert_eq!(t.apply(ad(&format!("n{i}"), 1, &[]), 0), Applied::Newer);
        }
        assert_eq!(t.apply(ad("late", 1, &[]), 0), Applied::TableFull);
        // Known origins still update, and our own advert does not count.
        assert_eq!(t.apply(ad("n0", 2, &[]), 500), Applied::Newer);
        assert_eq!(t.apply(ad("a", 9, &[]), 500), Applied::Readvertise);
        assert_eq!(t.origins().len(), MAX_ORIGINS + 1);
        assert_eq!(t.adverts().len(), MAX_ORIGINS + 1);
        // Expiry makes room.
        assert_eq!(t.expire(1_000, 600).len(), MAX_ORIGINS - 1);
        assert_eq!(t.apply(ad("late", 1, &[]), 1_000), Applied::Newer);
    }

    #[test]
    fn routes_are_recomputed_only_when_the_graph_changed() {
        let mut t = table("a", &[("a", "b", 1), ("b", "c", 1)]);
        t.routes();
        t.route("c");
        assert_eq!(t.computations, 1);
        // Duplicates, refreshes with the same links, our readvertising: no change.
        t.apply(ad("b", 1, &[("a", 1), ("c", 1)]), 1);
        t.apply(ad("b", 2, &[("a", 1), ("c", 1)]), 1);
        t.set_local(vec![("b".into(), 1)], 1);
        t.apply(ad("a", 1_000, &[]), 1);
        t.expire(1, 1_000);
        t.routes();
        assert_eq!(t.computations, 1);
        // A cost change is a change.
        t.set_local(vec![("b".into(), 2)], 2);
        assert_eq!(t.route("c").unwrap().cost_us, 3);
        assert_eq!(t.computations, 2);
        t.apply(ad("c", 2, &[]), 3);
        assert_eq!(t.route("c"), None);
        assert_eq!(t.computations, 3);
    }

    #[test]
    fn adverts_hold_everything_we_know_ours_included() {
        let t = table("b", &[("a", "b", 1), ("b", "c", 2)]);
        let all = t.adverts();
        assert_eq!(
            all,
            [
                ad("a", 1, &[("b", 1)]),
                ad("b", 101, &[("a", 1), ("c", 2)]),
                ad("c", 1, &[("b", 2)]),
            ]
        );
        assert_eq!(t.origins(), ["a", "b", "c"]);
        assert_eq!(t.local_advert(), all[1]);
    }

    #[test]
    fn an_edge_costs_the_larger_of_its_two_measurements() {
        let mut at_a = RoutingTable::new("a", 0);
        at_a.set_local(vec![("b".into(), 10)], 0);
        at_a.apply(ad("b", 1, &[("a", 30)]), 0);
        assert_eq!(at_a.route("b").unwrap().cost_us, 30);
        let mut at_b = RoutingTable::new("b", 0);
        at_b.set_local(vec![("a".into(), 30)], 0);
        at_b.apply(ad("a", 1, &[("b", 10)]), 0);
        assert_eq!(at_b.route("a").unwrap().cost_us, 30);
    }

    /// A random network: `listed[i][j]` is the cost node i lists for node j, if it does; only
    /// nodes with `held[i]` have an advert in the tables. Node ids sort like their indices.
    #[derive(Debug, Clone)]
    struct Net {
        listed: Vec<Vec<Option<u32>>>,
        held: Vec<bool>,
    }

    impl Net {
        fn id(i: usize) -> String {
            format!("n{i:02}")
        }

        fn neighbors(&self, i: usize) -> Vec<(String, u32)> {
            (0..self.listed.len())
                .filter_map(|j| self.listed[i][j].map(|c| (Net::id(j), c)))
                .collect()
        }

        /// The cost of the edge i-j, if both ends hold an advert and list each other.
        fn edge(&self, i: usize, j: usize) -> Option<u64> {
            if i == j || !self.held[i] || !self.held[j] {
                return None;
            }
            Some(u64::from(self.listed[i][j]?.max(self.listed[j][i]?)))
        }

        /// The table at node `local`, adverts applied in index order or reversed.
        fn table(&self, local: usize, reversed: bool) -> RoutingTable {
            let mut t = RoutingTable::new(&Net::id(local), 1_000);
            t.set_local(self.neighbors(local), 0);
            let mut order: Vec<usize> = (0..self.listed.len()).collect();
            if reversed {
                order.reverse();
            }
            for i in order {
                if i != local && self.held[i] {
                    let advert = Advert {
                        origin: Net::id(i),
                        seq: 1,
                        neighbors: self.neighbors(i),
                    };
                    assert_eq!(t.apply(advert, 0), Applied::Newer);
                }
            }
            t
        }

        /// Reference: Bellman-Ford on labels (cost, hops, first hop), unbounded, from `source`.
        fn reference(&self, source: usize) -> Vec<Option<(u64, u32, usize)>> {
            let n = self.listed.len();
            let mut best: Vec<Option<(u64, u32, usize)>> = vec![None; n];
            best[source] = Some((0, 0, source));
            for _ in 0..n {
                for u in 0..n {
                    let Some((cost, hops, first)) = best[u] else {
                        continue;
                    };
                    for (v, slot) in best.iter_mut().enumerate() {
                        let Some(w) = self.edge(u, v).filter(|_| v != source) else {
                            continue;
                        };
                        let via = if u == source { v } else { first };
                        let label = (cost + w, hops + 1, via);
                        if slot.is_none_or(|held| label < held) {
                            *slot = Some(label);
                        }
                    }
                }
            }
            best
        }
    }

    fn net() -> impl Strategy<Value = Net> {
        const MAX_NODES: usize = 24;
        let cost = prop_oneof![8 => 0u32..4, 1 => Just(u32::MAX)];
        (
            2..=MAX_NODES,
            // Percent of pairs linked: sparse graphs have long paths, dense ones many ties.
            0u8..40,
            prop::collection::vec((0u8..100, cost.clone(), cost), MAX_NODES * MAX_NODES),
            prop::collection::vec(prop::bool::weighted(0.95), MAX_NODES),
            // Thread a chain through all nodes, for long paths that reach the hop limit.
            any::<bool>(),
        )
            .prop_map(|(n, density, pairs, mut held, chain)| {
                // With a chain, few shortcuts, or paths stay short.
                let density = if chain { density / 10 } else { density };
                let mut listed = vec![vec![None; n]; n];
                for i in 0..n {
                    for j in i + 1..n {
                        let (roll, ci, cj) = pairs[i * MAX_NODES + j];
                        // Below `density` both ends list the link; just above, one end only.
                        let both = roll < density || (chain && j == i + 1);
                        if both || (density..density + 5).contains(&roll) {
                            listed[i][j] = Some(ci);
                        }
                        if both || (density + 5..density + 10).contains(&roll) {
                            listed[j][i] = Some(cj);
                        }
                    }
                }
                held[0] = true;
                held.truncate(n);
                Net { listed, held }
            })
    }

    proptest! {
        #[test]
        fn every_route_is_a_valid_minimal_path(net in net()) {
            let n = net.listed.len();
            let mut t = net.table(0, false);
            let mut reversed = net.table(0, true);
            let expected = net.reference(0);
            let routes = t.routes().clone();
            prop_assert_eq!(&routes, reversed.routes(), "arrival order does not matter");
            for (target, label) in expected.iter().enumerate().skip(1) {
                let route = routes.get(&Net::id(target));
                let Some((cost, hops, first)) = *label else {
                    prop_assert!(route.is_none());
                    continue;
                };
                if hops > MAX_HOPS {
                    prop_assert!(route.is_none());
                    continue;
                }
                let route = route.expect("reachable within the hop limit");
                prop_assert_eq!(route.cost_us, cost);
                prop_assert_eq!(route.hops, hops);
                prop_assert_eq!(&route.next_hop, &Net::id(first));
                prop_assert_eq!(route.hops as usize, route.path.len() - 1);
                prop_assert_eq!(&route.path[0], &Net::id(0));
                prop_assert_eq!(&route.path[route.path.len() - 1], &Net::id(target));
                prop_assert_eq!(&route.path[1], &route.next_hop);
                let index: Vec<usize> =
                    route.path.iter().map(|id| id[1..].parse().unwrap()).collect();
                let mut sum = 0;
                for w in index.windows(2) {
                    sum += net.edge(w[0], w[1]).expect("both ends list every link on the path");
                }
                prop_assert_eq!(sum, route.cost_us);
                let mut distinct = index.clone();
                distinct.sort();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), index.len(), "no node twice");
            }
            prop_assert!(routes.len() < n);
        }

        #[test]
        fn forwarding_hop_by_hop_is_loop_free(net in net()) {
            let n = net.listed.len();
            let mut tables: Vec<Option<RoutingTable>> =
                (0..n).map(|i| net.held[i].then(|| net.table(i, false))).collect();
            let mut index = HashMap::new();
            for i in 0..n {
                index.insert(Net::id(i), i);
            }
            for s in 0..n {
                for t in 0..n {
                    let (Some(_), Some(_)) = (&tables[s], &tables[t]) else {
                        continue;
                    };
                    let target = Net::id(t);
                    let there = tables[s].as_mut().unwrap().route(&target);
                    let back = tables[t].as_mut().unwrap().route(&Net::id(s));
                    prop_assert_eq!(
                        there.as_ref().map(|r| (r.cost_us, r.hops)),
                        back.as_ref().map(|r| (r.cost_us, r.hops)),
                        "the way back costs the same"
                    );
                    let Some(first) = there else { continue };
                    // Each next hop knows a route one hop shorter, until the target.
                    let mut at = index[&first.next_hop];
                    let mut left = first.hops - 1;
                    while at != t {
                        let step = tables[at].as_mut().unwrap().route(&target);
                        let step = step.expect("every node on the way knows the target");
                        prop_assert_eq!(step.hops, left);
                        at = index[&step.next_hop];
                        left -= 1;
                    }
                    prop_assert_eq!(left, 0);
                }
            }
        }
    }
}
