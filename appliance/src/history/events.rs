//! Real servers' health transitions: one text file a day in `history/events/` (`<day>.log`, the
//! day counted from the Unix epoch), a line a transition, appended with the minute's chunk.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use edgelb_api::HealthState;

use super::SeriesKey;
use crate::forwarding::VsKey;

/// A real server that changed health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Unix seconds.
    pub time: i64,
    pub vs: VsKey,
    pub real_server: SocketAddr,
    pub from: HealthState,
    pub to: HealthState,
    /// The last probe's result when it changed.
    pub reason: String,
}

fn state_str(h: HealthState) -> &'static str {
    match h {
        HealthState::Unknown => "unknown",
        HealthState::Up => "up",
        HealthState::Down => "down",
    }
}

fn parse_state(s: &str) -> Option<HealthState> {
    [HealthState::Unknown, HealthState::Up, HealthState::Down]
        .into_iter()
        .find(|h| state_str(*h) == s)
}

const DAY: i64 = 86_400;

fn day_path(dir: &Path, day: i64) -> std::path::PathBuf {
    dir.join("events").join(format!("{day}.log"))
}

pub fn append(dir: &Path, transitions: &[Transition]) -> std::io::Result<()> {
    let mut by_day: std::collections::BTreeMap<i64, String> = std::collections::BTreeMap::new();
    for t in transitions {
        let reason: String = t.reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        by_day.entry(t.time.div_euclid(DAY)).or_default().push_str(&format!(
            "{}\t{} {}\t{}\t{}\t{}\t{reason}\n",
            t.time,
            t.vs.protocol,
            SocketAddr::new(t.vs.vip, t.vs.port),
            t.real_server,
            state_str(t.from),
            state_str(t.to),
        ));
    }
    for (day, text) in by_day {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(day_path(dir, day))?
            .write_all(text.as_bytes())?;
    }
    Ok(())
}

fn parse_line(line: &str) -> Option<Transition> {
    let f: Vec<&str> = line.splitn(6, '\t').collect();
    let [time, vs, rs, from, to, reason] = f.as_slice() else {
        return None;
    };
    let Ok(SeriesKey::Service(vs)) = format!("vs {vs}").parse::<SeriesKey>() else {
        return None;
    };
    Some(Transition {
        time: time.parse().ok()?,
        vs,
        real_server: rs.parse().ok()?,
        from: parse_state(from)?,
        to: parse_state(to)?,
        reason: (*reason).to_owned(),
    })
}

/// The transitions of the real servers of `vs` from `from` on (a torn line is skipped).
pub fn read(dir: &Path, vs: &[VsKey], from: i64) -> std::io::Result<Vec<Transition>> {
    let mut out = Vec::new();
    let mut days: Vec<i64> = Vec::new();
    for e in std::fs::read_dir(dir.join("events"))? {
        let name = e?.file_name();
        if let Some(d) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
            && d >= from.div_euclid(DAY)
        {
            days.push(d);
        }
    }
    days.sort_unstable();
    for d in days {
        let text = match std::fs::read_to_string(day_path(dir, d)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.extend(
            text.lines()
                .filter_map(parse_line)
                .filter(|t| t.time >= from && vs.contains(&t.vs)),
        );
    }
    Ok(out)
}

/// Removes the days that ended before `before`.
pub fn expire(dir: &Path, before: i64) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir.join("events"))? {
        let e = e?;
        let name = e.file_name();
        if name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(|d| (d + 1) * DAY < before)
        {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}
