//! Flap damping, as a pure function: a target's health changes only after `rise` consecutive
//! successes or `fall` consecutive failures, so one lost probe never drains a node and one lucky
//! probe never restores a broken one.

use std::time::{Duration, SystemTime};

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (TCP) or answered 200 (HTTP).
    Up,
    /// Answered, but "not healthy": e.g. HTTP 503 from kube-proxy's healthz (no local endpoints).
    Unhealthy(String),
    /// Refused, reset, timed out, unreachable.
    Failed(String),
}

impl Outcome {
    pub fn is_up(&self) -> bool {
        matches!(self, Outcome::Up)
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::Up => "ok".to_owned(),
            Outcome::Unhealthy(m) | Outcome::Failed(m) => m.clone(),
        }
    }
}

/// A target's health as decided so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not probed enough yet. Treated as healthy: a new node must not start drained, and the
    /// first `fall` failures will take it out soon enough.
    Unknown,
    Up,
    Down,
}

/// Thresholds of the damping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thresholds {
    pub rise: u32,
    pub fall: u32,
}

/// Everything remembered about one target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetState {
    pub health: Health,
    /// When `health` last changed (or the target was first seen).
    pub since: SystemTime,
    pub successes: u32,
    pub failures: u32,
    pub last: Option<Outcome>,
    pub last_latency: Option<Duration>,
    pub last_probe: Option<SystemTime>,
}

impl TargetState {
    pub fn new(now: SystemTime) -> TargetState {
        TargetState {
            health: Health::Unknown,
            since: now,
            successes: 0,
            failures: 0,
            last: None,
            last_latency: None,
            last_probe: None,
        }
    }

    /// Whether new connections may go to the target.
    pub fn serves(&self) -> bool {
        self.health != Health::Down
    }
}

/// Records a probe; returns the new health when it changed.
pub fn observe(
    state: &mut TargetState,
    outcome: Outcome,
    latency: Duration,
    t: Thresholds,
    now: SystemTime,
) -> Option<Health> {
    let up = outcome.is_up();
    state.last = Some(outcome);
    state.last_latency = Some(latency);
    state.last_probe = Some(now);
    if up {
        state.successes = state.successes.saturating_add(1);
        state.failures = 0;
    } else {
        state.failures = state.failures.saturating_add(1);
        state.successes = 0;
    }
    let next = match state.health {
        Health::Up if state.failures >= t.fall.max(1) => Health::Down,
        Health::Down if state.successes >= t.rise.max(1) => Health::Up,
        Health::Unknown if state.successes >= t.rise.max(1) => Health::Up,
        Health::Unknown if state.failures >= t.fall.max(1) => Health::Down,
        h => h,
    };
    if next == state.health {
        return None;
    }
    state.health = next;
    state.since = now;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { rise: 2, fall: 3 };

    fn run(outcomes: &str) -> (Vec<Health>, Vec<Option<Health>>) {
        let mut s = TargetState::new(SystemTime::UNIX_EPOCH);
        let mut healths = Vec::new();
        let mut changes = Vec::new();
        for (i, c) in outcomes.chars().enumerate() {
            let o = match c {
                '+' => Outcome::Up,
                '5' => Outcome::Unhealthy("HTTP 503".into()),
                _ => Outcome::Failed("refused".into()),
            };
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(i as u64);
            changes.push(observe(&mut s, o, Duration::from_millis(1), T, now));
            healths.push(s.health);
        }
        (healths, changes)
    }

    #[test]
    fn health_changes_only_after_rise_or_fall_consecutive_results() {
        use Health::*;
        // (name, probes: + up, - failed, 5 unhealthy; expected health after each)
        let cases: &[(&str, &str, &[Health])] = &[
            ("rises after two successes", "++", &[Unknown, Up]),
            (
                "falls from unknown after three failures",
                "---",
                &[Unknown, Unknown, Down],
            ),
            ("one failure does not drain", "++-+", &[Unknown, Up, Up, Up]),
            ("two failures do not drain", "++--+", &[Unknown, Up, Up, Up, Up]),
            ("three failures drain", "++---", &[Unknown, Up, Up, Up, Down]),
            ("a 503 counts as a failure", "++555", &[Unknown, Up, Up, Up, Down]),
            (
                "one success does not restore",
                "++---+-",
                &[Unknown, Up, Up, Up, Down, Down, Down],
            ),
            (
                "two successes restore",
                "++---++",
                &[Unknown, Up, Up, Up, Down, Down, Up],
            ),
            (
                "flapping never changes state",
                "++-+-+-+-+",
                &[Unknown, Up, Up, Up, Up, Up, Up, Up, Up, Up],
            ),
            (
                "flapping while down stays down",
                "---+-+-+",
                &[Unknown, Unknown, Down, Down, Down, Down, Down, Down],
            ),
        ];
        for (name, probes, want) in cases {
            let (got, _) = run(probes);
            assert_eq!(&got, want, "case '{name}' ({probes})");
        }
    }

    #[test]
    fn a_change_is_reported_once_with_its_time() {
        let mut s = TargetState::new(SystemTime::UNIX_EPOCH);
        let at = |n| SystemTime::UNIX_EPOCH + Duration::from_secs(n);
        assert_eq!(observe(&mut s, Outcome::Up, Duration::ZERO, T, at(1)), None);
        assert_eq!(observe(&mut s, Outcome::Up, Duration::ZERO, T, at(2)), Some(Health::Up));
        assert_eq!(observe(&mut s, Outcome::Up, Duration::ZERO, T, at(3)), None);
        assert_eq!(s.since, at(2));
        assert!(s.serves());
        for n in 4..7 {
            observe(
                &mut s,
                Outcome::Failed("timeout".into()),
                Duration::from_secs(1),
                T,
                at(n),
            );
        }
        assert_eq!(s.health, Health::Down);
        assert_eq!(s.since, at(6));
        assert!(!s.serves());
        assert_eq!(s.last, Some(Outcome::Failed("timeout".into())));
        assert_eq!(s.last_latency, Some(Duration::from_secs(1)));
    }

    #[test]
    fn unknown_targets_serve_until_proven_down() {
        let s = TargetState::new(SystemTime::UNIX_EPOCH);
        assert!(s.serves());
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut s = TargetState::new(SystemTime::UNIX_EPOCH);
        let t = Thresholds { rise: 0, fall: 0 };
        assert_eq!(
            observe(&mut s, Outcome::Up, Duration::ZERO, t, SystemTime::UNIX_EPOCH),
            Some(Health::Up)
        );
        assert_eq!(
            observe(
                &mut s,
                Outcome::Failed("x".into()),
                Duration::ZERO,
                t,
                SystemTime::UNIX_EPOCH
            ),
            Some(Health::Down)
        );
    }
}
