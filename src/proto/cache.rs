//! A bounded, insertion-ordered cache, pure: the one type behind every "remember the last N"
//! table of the router (reply cache, forwarded-envelope ids, punch coordinations).
//!
//! Bounded by entry count and, where entries vary in size, by bytes (the caller says what an
//! entry weighs). When full, the oldest entry goes first (FIFO): for the caches it serves, an
//! old entry is the one least likely to be asked for again, and FIFO keeps every operation
//! O(1) amortised without a clock.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct BoundedCache<K, V> {
    /// Most entries kept (at least 1).
    max_entries: usize,
    /// Most bytes kept, by the weights given to [`BoundedCache::insert`].
    max_bytes: usize,
    /// The entries with their weights.
    map: HashMap<K, (V, usize)>,
    /// Keys oldest first; may hold keys already removed (skipped on eviction).
    order: VecDeque<K>,
    /// Sum of the weights in `map`.
    bytes: usize,
}

impl<K: Hash + Eq + Clone, V> BoundedCache<K, V> {
    /// A cache of at most `max_entries` entries and `max_bytes` bytes of weight.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        BoundedCache {
            max_entries: max_entries.max(1),
            max_bytes,
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    /// A cache bounded by count only (every entry weighs nothing).
    pub fn with_entries(max_entries: usize) -> Self {
        BoundedCache::new(max_entries, usize::MAX)
    }

    /// Stores `value` under `key` with weight `bytes`, evicting the oldest entries until it
    /// fits. An entry heavier than the whole byte bound is not stored (false).
    pub fn insert(&mut self, key: K, value: V, bytes: usize) -> bool {
        if bytes > self.max_bytes {
            return false;
        }
        self.remove(&key);
        while self.map.len() >= self.max_entries || self.bytes + bytes > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&old) {
                self.bytes -= w;
            }
        }
        self.bytes += bytes;
        self.order.push_back(key.clone());
        self.map.insert(key, (value, bytes));
        self.compact();
        true
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (v, w) = self.map.remove(key)?;
        self.bytes -= w;
        Some(v)
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let bytes = &mut self.bytes;
        self.map.retain(|k, (v, w)| {
            let kept = keep(k, v);
            if !kept {
                *bytes -= *w;
            }
            kept
        });
        self.compact();
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of weight held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether one more new key would evict an entry.
    pub fn is_full(&self) -> bool {
        self.map.len() >= self.max_entries
    }

    /// Drops keys of removed entries from the order queue once they are the majority, so the
    /// queue stays within twice the entry count.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_entry_goes_first_when_the_count_is_reached() {
        let mut c = BoundedCache::with_entries(2);
        c.insert("a", 1, 0);
        c.insert("b", 2, 0);
        c.insert("c", 3, 0);
        assert!(!c.contains(&"a"));
        assert_eq!(c.get(&"b"), Some(&2));
        assert_eq!(c.get(&"c"), Some(&3));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn byte_bound_evicts_until_the_new_entry_fits() {
        let mut c = BoundedCache::new(10, 100);
        c.insert(1, (), 40);
        c.insert(2, (), 40);
        c.insert(3, (), 40);
        assert!(!c.contains(&1));
        assert_eq!(c.bytes(), 80);
        assert!(!c.insert(4, (), 101), "heavier than the bound: not stored");
        assert_eq!(c.bytes(), 80);
    }

    #[test]
    fn replacing_a_key_keeps_the_weights_right() {
        let mut c = BoundedCache::new(10, 100);
        c.insert(1, "x", 60);
        c.insert(1, "y", 30);
        assert_eq!(c.bytes(), 30);
        assert_eq!(c.get(&1), Some(&"y"));
        assert_eq!(c.remove(&1), Some("y"));
        assert_eq!(c.bytes(), 0);
        assert!(c.is_empty());
    }

    #[test]
    fn retain_and_churn_keep_the_order_queue_bounded() {
        let mut c = BoundedCache::with_entries(4);
        for i in 0..10_000u32 {
            c.insert(i % 8, i, 0);
            c.retain(|_, v| v % 3 != 0);
        }
        assert!(c.len() <= 4);
        assert!(c.order.len() <= 2 * c.len() + 16);
    }
}
