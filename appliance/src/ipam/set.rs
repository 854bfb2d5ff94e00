//! A set of addresses stored as disjoint, non-adjacent inclusive intervals, so that a nearly
//! full /16 or a sparse /64 costs memory by its number of runs, not of addresses, and the first
//! free address of a range is found in O(log n).

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalSet {
    /// start -> end (inclusive); intervals never overlap nor touch.
    runs: BTreeMap<u128, u128>,
}

impl IntervalSet {
    pub fn contains(&self, n: u128) -> bool {
        self.run_containing(n).is_some()
    }

    fn run_containing(&self, n: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=n)
            .next_back()
            .filter(|(_, e)| **e >= n)
            .map(|(s, e)| (*s, *e))
    }

    /// Adds `n`; returns false when it was present.
    pub fn insert(&mut self, n: u128) -> bool {
        if self.contains(n) {
            return false;
        }
        let left = n.checked_sub(1).and_then(|p| self.run_containing(p)).map(|(s, _)| s);
        let right = n
            .checked_add(1)
            .and_then(|q| self.runs.get(&q).copied().map(|e| (q, e)));
        match (left, right) {
            (Some(ls), Some((rs, re))) => {
                self.runs.remove(&rs);
                self.runs.insert(ls, re);
            }
            (Some(ls), None) => {
                self.runs.insert(ls, n);
            }
            (None, Some((rs, re))) => {
                self.runs.remove(&rs);
                self.runs.insert(n, re);
            }
            (None, None) => {
                self.runs.insert(n, n);
            }
        }
        true
    }

    /// Removes `n`; returns false when it was absent.
    pub fn remove(&mut self, n: u128) -> bool {
        let Some((s, e)) = self.run_containing(n) else {
            return false;
        };
        self.runs.remove(&s);
        if s < n {
            self.runs.insert(s, n - 1);
        }
        if n < e {
            self.runs.insert(n + 1, e);
        }
        true
    }

    /// The lowest `x` in `[lo, hi]` not in the set for which `accept(x)` holds.
    /// `accept` rejects few addresses (the `.0`/`.255` ones), so this stays logarithmic.
    pub fn first_free(&self, lo: u128, hi: u128, accept: impl Fn(u128) -> bool) -> Option<u128> {
        let mut c = lo;
        loop {
            if c > hi {
                return None;
            }
            if let Some((_, e)) = self.run_containing(c) {
                c = e.checked_add(1)?;
                continue;
            }
            if accept(c) {
                return Some(c);
            }
            c = c.checked_add(1)?;
        }
    }

    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}
