//! Sorted-vector map and set for the allocation state's many tiny collections: almost every
//! address has one user and almost every Service one or two addresses, where a `BTreeMap` or
//! `BTreeSet` spends a whole node (up to ~1 KB) on each. They iterate in key order like the
//! B-trees they replace (messages and picks depend on it). Insert and remove are O(n): only for
//! collections of a few entries.

use std::borrow::Borrow;
use std::fmt;

/// A map kept as a vector sorted by key.
#[derive(Clone, PartialEq, Eq)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { entries: Vec::new() }
    }
}

/// Makes room for one more element: exactly one while small (a `Vec`'s first push reserves
/// four), by doubling beyond.
fn reserve_one<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() && v.len() < 4 {
        v.reserve_exact(1);
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub fn new() -> Self {
        VecMap::default()
    }

    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                reserve_one(&mut self.entries);
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.find(key).ok()?;
        Some(self.entries.remove(i).1)
    }
}

impl<K, V> VecMap<K, V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        // Frees the buffer too: a cleared map (a held address's users) stays empty.
        self.entries = Vec::new();
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    /// Entries in key order.
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = VecMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V> std::ops::Index<&Q> for VecMap<K, V> {
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for the key in VecMap")
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A set kept as a sorted vector.
#[derive(Clone, PartialEq, Eq)]
pub struct VecSet<T> {
    items: Vec<T>,
}

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        VecSet { items: Vec::new() }
    }
}

impl<T: Ord> VecSet<T> {
    pub fn new() -> Self {
        VecSet::default()
    }

    pub fn contains(&self, item: &T) -> bool {
        self.items.binary_search(item).is_ok()
    }

    /// Adds `item`; returns false when it was present.
    pub fn insert(&mut self, item: T) -> bool {
        match self.items.binary_search(&item) {
            Ok(_) => false,
            Err(i) => {
                reserve_one(&mut self.items);
                self.items.insert(i, item);
                true
            }
        }
    }

    /// Removes `item`; returns false when it was absent.
    pub fn remove(&mut self, item: &T) -> bool {
        match self.items.binary_search(item) {
            Ok(i) => {
                self.items.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

impl<T> VecSet<T> {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }
}

impl<'a, T> IntoIterator for &'a VecSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

impl<T: Ord> FromIterator<T> for VecSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut s = VecSet::new();
        for x in iter {
            s.insert(x);
        }
        s
    }
}

impl<T: fmt::Debug> fmt::Debug for VecSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// A small deterministic generator (xorshift), so failures replay.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn map_iterates_in_key_order_whatever_the_insert_order() {
        let mut m = VecMap::new();
        for k in [5, 1, 4, 2, 3] {
            assert_eq!(m.insert(k, k * 10), None);
        }
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [10, 20, 30, 40, 50]);
        assert_eq!(m.iter().next_back(), Some((&5, &50)));
    }

    #[test]
    fn map_insert_replaces_and_remove_returns_the_value() {
        let mut m = VecMap::new();
        assert_eq!(m.insert("b".to_string(), 1), None);
        assert_eq!(m.insert("b".to_string(), 2), Some(1));
        assert_eq!(m.len(), 1);
        assert_eq!(m["b"], 2);
        assert_eq!(m.get("a"), None);
        *m.get_mut("b").expect("present") += 1;
        assert_eq!(m.remove("b"), Some(3));
        assert_eq!(m.remove("b"), None);
        assert!(m.is_empty());
    }

    #[test]
    fn one_entry_takes_room_for_one() {
        let mut m = VecMap::new();
        m.insert(1u128, 0u64);
        assert_eq!(m.entries.capacity(), 1);
        let mut s = VecSet::new();
        s.insert(1u128);
        s.insert(2);
        assert_eq!(s.items.capacity(), 2);
        m.clear();
        assert_eq!(m.entries.capacity(), 0);
    }

    #[test]
    fn map_equals_btreemap_on_random_operations() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut m = VecMap::new();
        let mut b = BTreeMap::new();
        for step in 0..20_000 {
            let k = rng.next() % 32;
            let v = rng.next();
            match rng.next() % 4 {
                0 | 1 => assert_eq!(m.insert(k, v), b.insert(k, v), "insert at step {step}"),
                2 => assert_eq!(m.remove(&k), b.remove(&k), "remove at step {step}"),
                _ => {
                    assert_eq!(m.get(&k), b.get(&k));
                    assert_eq!(m.contains_key(&k), b.contains_key(&k));
                }
            }
            if step % 1000 == 999 {
                m.clear();
                b.clear();
            }
            assert_eq!(m.len(), b.len());
            assert!(m.iter().eq(b.iter()), "contents differ at step {step}");
        }
    }

    #[test]
    fn set_equals_btreeset_on_random_operations() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut s = VecSet::new();
        let mut b = BTreeSet::new();
        for step in 0..20_000 {
            let x = u128::from(rng.next() % 32);
            match rng.next() % 3 {
                0 | 1 => assert_eq!(s.insert(x), b.insert(x), "insert at step {step}"),
                _ => assert_eq!(s.remove(&x), b.remove(&x), "remove at step {step}"),
            }
            assert_eq!(s.contains(&x), b.contains(&x));
            assert_eq!(s.len(), b.len());
            assert!(s.iter().eq(b.iter()), "contents differ at step {step}");
        }
        assert_eq!(s.iter().copied().collect::<VecSet<_>>(), s);
    }
}
