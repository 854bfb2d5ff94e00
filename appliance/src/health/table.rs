//! The checker's per-target memory, kept small because there are up to 100,000 targets: one
//! 60-byte [`Slot`] per target in a slab, an 8-byte-per-bucket hash index from [`Target`] to
//! slot, and settings and outcome reasons interned (few are distinct), so nothing is allocated
//! per target. Decisions are not made here: [`Slot::observe`] widens the slot to a
//! [`TargetState`], runs the pure [`state::observe`] on it and narrows the result back.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::time::{Duration, SystemTime};

use super::state::{self, Health, Outcome, TargetState, Thresholds};
use super::{Settings, Target};

/// Values shared by many targets, stored once with a count of their users; an id stays valid
/// until its last user releases it.
#[derive(Debug)]
pub(super) struct Interner<T> {
    items: Vec<(T, u32)>,
    ids: HashMap<T, u32>,
    free: Vec<u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            items: Vec::new(),
            ids: HashMap::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Clone + Eq + Hash> Interner<T> {
    /// The id of `value`, counting one more user of it.
    pub(super) fn acquire(&mut self, value: T) -> u32 {
        if let Some(&id) = self.ids.get(&value) {
            let refs = &mut self.items[id as usize].1;
            *refs = refs.saturating_add(1);
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.items[id as usize] = (value.clone(), 1);
                id
            }
            None => {
                self.items.push((value.clone(), 1));
                u32::try_from(self.items.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.ids.insert(value, id);
        id
    }

    /// One user fewer of `id`; forgets the value when it was the last.
    pub(super) fn release(&mut self, id: u32) {
        let Some((value, refs)) = self.items.get_mut(id as usize) else {
            return;
        };
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.ids.remove(value);
            self.free.push(id);
        }
    }

    pub(super) fn get(&self, id: u32) -> &T {
        &self.items[id as usize].0
    }

    /// Distinct values in use.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// What the last probe found, without its reason.
const LAST_NONE: u8 = 0;
const LAST_UP: u8 = 1;
const LAST_UNHEALTHY: u8 = 2;
const LAST_FAILED: u8 = 3;

/// One target and everything remembered about it, in 60 bytes.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) target: Target,
    /// Id in the settings [`Interner`].
    pub(super) settings: u32,
    /// A new one, from the table's counter, when the target is (re)scheduled or removed, so
    /// stale schedule entries and probe results are recognised.
    pub(super) generation: u32,
    /// Consecutive successes if the last probe was up, else consecutive failures: `observe`
    /// always zeroes one of the two, so one counter holds both.
    streak: u32,
    /// Id in the reasons [`Interner`] when `last` is unhealthy or failed.
    reason: u32,
    last_latency_micros: u32,
    since: Nanos,
    last_probe: Nanos,
    health: Health,
    /// `LAST_*`; none also means no latency and no probe time yet.
    last: u8,
}

/// A `SystemTime` as nanoseconds since the Unix epoch, kept as two halves so a [`Slot`] needs no
/// 8-byte alignment. Exact from 1970 to 2554; earlier times read as 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nanos([u32; 2]);

impl Nanos {
    fn new(t: SystemTime) -> Nanos {
        let ns = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Nanos([(ns >> 32) as u32, ns as u32])
    }

    fn get(self) -> SystemTime {
        let ns = (u64::from(self.0[0]) << 32) | u64::from(self.0[1]);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
    }
}

impl Slot {
    pub(super) fn new(target: Target, settings: u32, now: SystemTime) -> Slot {
        Slot {
            target,
            settings,
            generation: 0,
            streak: 0,
            reason: 0,
            last_latency_micros: 0,
            since: Nanos::new(now),
            last_probe: Nanos::new(now),
            health: Health::Unknown,
            last: LAST_NONE,
        }
    }

    pub(super) fn serves(&self) -> bool {
        self.health != Health::Down
    }

    /// The state as the rest of the appliance sees it. Latency is kept to the microsecond.
    pub(super) fn view(&self, reasons: &Interner<Box<str>>) -> TargetState {
        let mut s = self.view_without_reason();
        let reason = || reasons.get(self.reason).to_string();
        s.last = match self.last {
            LAST_UP => Some(Outcome::Up),
            LAST_UNHEALTHY => Some(Outcome::Unhealthy(reason())),
            LAST_FAILED => Some(Outcome::Failed(reason())),
            _ => None,
        };
        s
    }

    /// The state with `last` left `None` even when there was a probe (`observe` never reads it).
    fn view_without_reason(&self) -> TargetState {
        let probed = self.last != LAST_NONE;
        let up = self.last == LAST_UP;
        TargetState {
            health: self.health,
            since: self.since.get(),
            successes: if up { self.streak } else { 0 },
            failures: if probed && !up { self.streak } else { 0 },
            last: None,
            last_latency: probed.then(|| Duration::from_micros(u64::from(self.last_latency_micros))),
            last_probe: probed.then(|| self.last_probe.get()),
        }
    }

    /// Records a probe with [`state::observe`]; returns the new health when it changed.
    pub(super) fn observe(
        &mut self,
        outcome: Outcome,
        latency: Duration,
        t: Thresholds,
        now: SystemTime,
        reasons: &mut Interner<Box<str>>,
    ) -> Option<Health> {
        let mut s = self.view_without_reason();
        let (code, reason) = match outcome {
            Outcome::Up => (LAST_UP, None),
            Outcome::Unhealthy(m) => (LAST_UNHEALTHY, Some(m)),
            Outcome::Failed(m) => (LAST_FAILED, Some(m)),
        };
        // Only whether it was up matters to the decision; the reason is kept aside.
        let probe = if code == LAST_UP {
            Outcome::Up
        } else {
            Outcome::Failed(String::new())
        };
        let changed = state::observe(&mut s, probe, latency, t, now);
        // Acquire before releasing, so a reason that repeats is not forgotten in between.
        let old = self.has_reason().then_some(self.reason);
        self.reason = reason.map_or(0, |m| reasons.acquire(m.into_boxed_str()));
        if let Some(old) = old {
            reasons.release(old);
        }
        self.last = code;
        self.health = s.health;
        self.since = Nanos::new(s.since);
        self.streak = s.successes.max(s.failures);
        self.last_latency_micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.last_probe = Nanos::new(now);
        changed
    }

    /// Whether the slot holds a reason id (which must be released with it).
    pub(super) fn has_reason(&self) -> bool {
        matches!(self.last, LAST_UNHEALTHY | LAST_FAILED)
    }
}

/// Every target, by slot number: slot numbers stay put while a target is kept, so the schedule
/// refers to a target by (slot, generation) instead of a copy of it.
#[derive(Default)]
pub(super) struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The last generation handed out. Table-wide, so a slot freed and taken again (or the
    /// slab emptied and refilled) never repeats a generation an old schedule entry holds.
    generation: u32,
    index: Index,
    pub(super) settings: Interner<Settings>,
    pub(super) reasons: Interner<Box<str>>,
}

impl Table {
    pub(super) fn len(&self) -> usize {
        self.index.len
    }

    pub(super) fn find(&self, t: &Target) -> Option<u32> {
        self.index.find(t, &self.slots)
    }

    pub(super) fn get(&self, t: &Target) -> Option<&Slot> {
        self.find(t).map(|i| &self.slots[i as usize])
    }

    pub(super) fn slot(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize)
    }

    /// Slot numbers of every target, in no particular order.
    pub(super) fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.index.buckets.iter().filter(|b| **b != EMPTY).map(|b| *b as u32)
    }

    /// Room for `more` new targets, allocated exactly (a full set of targets arrives at once).
    pub(super) fn reserve(&mut self, more: usize) {
        let more = more.saturating_sub(self.free.len());
        if self.slots.len() + more > self.slots.capacity() {
            self.slots.reserve_exact(more);
        }
    }

    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.generation
    }

    /// Adds a target or updates its settings, keeping its state. Returns (slot, generation) when
    /// the target needs (re)scheduling: it is new, or its interval changed.
    pub(super) fn upsert(&mut self, t: Target, settings: Settings, now: SystemTime) -> Option<(u32, u32)> {
        let id = self.settings.acquire(settings);
        let Some(i) = self.find(&t) else {
            return Some(self.insert(Slot::new(t, id, now)));
        };
        let old = std::mem::replace(&mut self.slots[i as usize].settings, id);
        let same_interval = self.settings.get(old).interval == settings.interval;
        self.settings.release(old);
        if same_interval {
            return None;
        }
        let generation = self.next_generation();
        self.slots[i as usize].generation = generation;
        Some((i, generation))
    }

    /// Adds a target that is not in the table yet; returns its slot number and generation.
    pub(super) fn insert(&mut self, mut slot: Slot) -> (u32, u32) {
        slot.generation = self.next_generation();
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                // Grow by an eighth, not double: at 100,000 targets doubling would leave
                // tens of thousands of empty 60-byte slots.
                if self.slots.len() == self.slots.capacity() {
                    self.slots.reserve_exact((self.slots.len() / 8).max(16));
                }
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let hash = self.index.hash(&self.slots[i as usize].target);
        self.index.insert(hash, i);
        (i, self.slots[i as usize].generation)
    }

    /// Records a probe of the target in `slot` (slot number, generation) with
    /// [`state::observe`]; returns the new health when it changed. A probe of a target removed
    /// or rescheduled since (another generation) is ignored.
    pub(super) fn observe(
        &mut self,
        (i, generation): (u32, u32),
        outcome: Outcome,
        latency: Duration,
        now: SystemTime,
    ) -> Option<Health> {
        let s = self.slots.get_mut(i as usize).filter(|s| s.generation == generation)?;
        let thresholds = self.settings.get(s.settings).thresholds;
        s.observe(outcome, latency, thresholds, now, &mut self.reasons)
    }

    /// What the last probe of the target in slot `i` found, as text.
    pub(super) fn reason(&self, i: u32) -> &str {
        match self.slots.get(i as usize) {
            Some(s) if s.has_reason() => self.reasons.get(s.reason),
            _ => "ok",
        }
    }

    /// Forgets a target, releasing what it holds in the interners.
    pub(super) fn remove(&mut self, t: &Target) -> bool {
        let Some(i) = self.index.remove(t, &self.slots) else {
            return false;
        };
        let generation = self.next_generation();
        let slot = &mut self.slots[i as usize];
        slot.generation = generation;
        let (settings, reason) = (slot.settings, slot.has_reason().then_some(slot.reason));
        slot.last = LAST_NONE;
        self.settings.release(settings);
        if let Some(r) = reason {
            self.reasons.release(r);
        }
        self.free.push(i);
        if self.index.len == 0 {
            // Nothing left: give the slab back (generations go on from the counter).
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        true
    }
}

const EMPTY: u64 = u64::MAX;

/// An open-addressing hash index (linear probing, deletion by backward shift) of slot numbers.
/// Each bucket is 8 bytes, the low 32 bits of the target's hash above its slot number, so
/// neither the target nor its hash is stored twice and a probe compares the slab's target only
/// when the hash bits match.
struct Index {
    buckets: Vec<u64>,
    len: usize,
    hasher: RandomState,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            buckets: Vec::new(),
            len: 0,
            hasher: RandomState::new(),
        }
    }
}

impl Index {
    fn hash(&self, t: &Target) -> u32 {
        self.hasher.hash_one(t) as u32
    }

    fn mask(&self) -> usize {
        self.buckets.len().wrapping_sub(1)
    }

    fn find_bucket(&self, t: &Target, slots: &[Slot]) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let hash = self.hash(t);
        let mask = self.mask();
        let mut i = hash as usize & mask;
        loop {
            let b = self.buckets[i];
            if b == EMPTY {
                return None;
            }
            if (b >> 32) as u32 == hash && slots[b as u32 as usize].target == *t {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    fn find(&self, t: &Target, slots: &[Slot]) -> Option<u32> {
        self.find_bucket(t, slots).map(|i| self.buckets[i] as u32)
    }

    fn insert(&mut self, hash: u32, slot: u32) {
        // At most 7/8 full, so probe runs stay short and a miss always ends on an empty bucket.
        if (self.len + 1) * 8 > self.buckets.len() * 7 {
            self.resize((self.buckets.len() * 2).max(16));
        }
        self.place((u64::from(hash) << 32) | u64::from(slot));
        self.len += 1;
    }

    fn place(&mut self, entry: u64) {
        let mask = self.mask();
        let mut i = (entry >> 32) as usize & mask;
        while self.buckets[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.buckets[i] = entry;
    }

    fn resize(&mut self, n: usize) {
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; n]);
        for b in old.into_iter().filter(|b| *b != EMPTY) {
            self.place(b);
        }
    }

    fn remove(&mut self, t: &Target, slots: &[Slot]) -> Option<u32> {
        let mut i = self.find_bucket(t, slots)?;
        let slot = self.buckets[i] as u32;
        let mask = self.mask();
        // Backward shift: pull later entries of the run into the hole unless they would move
        // before their ideal bucket, so no tombstones are needed.
        'hole: loop {
            self.buckets[i] = EMPTY;
            let mut j = i;
            loop {
                j = (j + 1) & mask;
                let b = self.buckets[j];
                if b == EMPTY {
                    break 'hole;
                }
                let ideal = (b >> 32) as usize & mask;
                let stays = if i <= j {
                    i < ideal && ideal <= j
                } else {
                    i < ideal || ideal <= j
                };
                if !stays {
                    self.buckets[i] = b;
                    i = j;
                    continue 'hole;
                }
            }
        }
        self.len -= 1;
        // Give memory back after mass removals, leaving the index at most half full.
        if self.buckets.len() > 16 && self.len * 4 < self.buckets.len() {
            self.resize(self.buckets.len() / 2);
        }
        Some(slot)
    }
}
