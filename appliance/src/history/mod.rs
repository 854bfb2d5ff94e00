//! The appliance's own time series: traffic per Service port and per real server, pools' usage,
//! reconcile passes, and real servers' health transitions, kept in the data directory
//! (`history/`) across restarts, with nothing else to install.
//!
//! - **Two tiers.** Every 10 s ([`STEP`]) the sampler records one value of every series; a fine
//!   chunk file holds one minute of them and is kept 24 hours. Each hour that ends is rolled up
//!   into a coarse chunk of twelve 5-minute means, kept 30 days. A graph of 1 hour reads the
//!   fine tier (360 points), of 24 hours the coarse (288 points), of 30 days the coarse in hourly
//!   means (720 points). The hour not rolled up yet is read from its fine chunks.
//! - **Memory is one minute.** What is in memory is the minute being filled (six slots a
//!   series), the previous counters a rate is computed from, and the series' names: about 200
//!   bytes a series, whatever the retention. Chunks hold only the series that were not zero, so
//!   an idle real server costs no disk.
//! - **Writes are batched**: one chunk file a minute, written whole and renamed into place, and
//!   one an hour; new series names and health transitions go out with the minute's chunk.
//! - **Series ids** index the chunks; `history/series` names them. An id whose series was last
//!   seen longer ago than the coarse retention is given to a new series at the next start (no
//!   chunk kept refers to it any more). At most [`Options::max_series`] series are kept; the
//!   samples of any more are counted ([`Stats::over_cap`]) and dropped.
//! - **Gaps**: a slot the appliance did not sample (it was down) reads as no data (`NaN`, `null`
//!   in the API), not as zero.
//!
//! [`sampler`] is the task that feeds it; `http` reads it for the API and the console.

pub mod chunk;
mod events;
pub mod sampler;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use edgelb_api::{HealthState, Protocol};

use crate::forwarding::VsKey;
use chunk::{Chunk, Header};
pub use events::Transition;

/// Values of one series at one time. Traffic: new connections per second, active connections,
/// bytes per second in (client to real server), bytes per second out. A pool: addresses
/// allocated, addresses held, free addresses of its family that runs out first, 0. The
/// appliance: passes in the interval, their mean duration in milliseconds, virtual services,
/// real servers. `NaN` is no data.
pub const METRICS: usize = 4;
pub type Values = [f32; METRICS];
const NO_DATA: Values = [f32::NAN; METRICS];

/// The sampling interval, seconds.
pub const STEP: i64 = 10;
const FINE_SLOTS: usize = 6;
const FINE_SPAN: i64 = STEP * FINE_SLOTS as i64;
/// How long the 10-second values are kept.
pub const FINE_KEEP: i64 = 24 * 3600;
/// The coarse tier's resolution, seconds.
pub const COARSE_STEP: i64 = 300;
const COARSE_SLOTS: usize = 12;
const COARSE_SPAN: i64 = COARSE_STEP * COARSE_SLOTS as i64;
/// How long the 5-minute values are kept.
pub const COARSE_KEEP: i64 = 30 * 86_400;

/// What a series is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeriesKey {
    /// Reconcile passes and the size of the kernel state.
    Appliance,
    /// The traffic of every virtual service together.
    Totals,
    Pool(String),
    /// One port of one VIP.
    Service(VsKey),
    RealServer(VsKey, SocketAddr),
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vs = |k: &VsKey| format!("{} {}", k.protocol, SocketAddr::new(k.vip, k.port));
        match self {
            SeriesKey::Appliance => f.write_str("appliance"),
            SeriesKey::Totals => f.write_str("totals"),
            SeriesKey::Pool(p) => write!(f, "pool {p}"),
            SeriesKey::Service(k) => write!(f, "vs {}", vs(k)),
            SeriesKey::RealServer(k, a) => write!(f, "rs {} {a}", vs(k)),
        }
    }
}

fn parse_protocol(s: &str) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| p.as_str() == s)
}

impl std::str::FromStr for SeriesKey {
    type Err = String;

    fn from_str(s: &str) -> Result<SeriesKey, String> {
        let words: Vec<&str> = s.split(' ').collect();
        let vs = |proto: &str, addr: &str| -> Option<VsKey> {
            let a: SocketAddr = addr.parse().ok()?;
            Some(VsKey::new(a.ip(), a.port(), parse_protocol(proto)?))
        };
        let key = match words.as_slice() {
            ["appliance"] => Some(SeriesKey::Appliance),
            ["totals"] => Some(SeriesKey::Totals),
            ["pool", name] => Some(SeriesKey::Pool((*name).to_owned())),
            ["vs", proto, addr] => vs(proto, addr).map(SeriesKey::Service),
            ["rs", proto, addr, rs] => vs(proto, addr).and_then(|k| Some(SeriesKey::RealServer(k, rs.parse().ok()?))),
            _ => None,
        };
        key.ok_or_else(|| format!("not a series name: {s:?}"))
    }
}

/// A time range a graph shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Range {
    #[default]
    Hour,
    Day,
    Month,
}

impl Range {
    pub const ALL: [Range; 3] = [Range::Hour, Range::Day, Range::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "24h",
            Range::Month => "30d",
        }
    }

    pub fn parse(s: &str) -> Option<Range> {
        Range::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn span(self) -> i64 {
        match self {
            Range::Hour => 3600,
            Range::Day => 86_400,
            Range::Month => COARSE_KEEP,
        }
    }

    /// Seconds between points.
    pub fn step(self) -> i64 {
        match self {
            Range::Hour => STEP,
            Range::Day => COARSE_STEP,
            Range::Month => 3600,
        }
    }
}

/// The API's name for the same ranges.
impl From<edgelb_api::HistoryRange> for Range {
    fn from(r: edgelb_api::HistoryRange) -> Range {
        match r {
            edgelb_api::HistoryRange::Hour => Range::Hour,
            edgelb_api::HistoryRange::Day => Range::Day,
            edgelb_api::HistoryRange::Month => Range::Month,
        }
    }
}

/// Points of one series: `points[i]` is at `start + i * step` (unix seconds), the mean over the
/// step that begins there.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub start: i64,
    pub step: i64,
    pub points: Vec<Values>,
}

impl Series {
    /// The last point with data of metric `m`.
    pub fn last(&self, m: usize) -> Option<(i64, f32)> {
        let i = self.points.iter().rposition(|p| !p[m].is_nan())?;
        Some((self.start + i as i64 * self.step, self.points[i][m]))
    }
}

/// One value to record. With `counters` (cumulative connections, bytes in, bytes out), the
/// history makes metrics 0, 2 and 3 rates from the previous sample of the series.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub key: SeriesKey,
    pub values: Values,
    pub counters: Option<[u64; 3]>,
    /// A real server's health now, since when, and why.
    pub health: Option<(HealthState, i64, &'a str)>,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub max_series: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { max_series: 250_000 }
    }
}

/// What the history has done, for `/metrics` and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub series: usize,
    pub bytes_written: u64,
    pub chunks_written: u64,
    pub over_cap: u64,
}

/// The history of one appliance; cheap to clone.
#[derive(Clone)]
pub struct History {
    dir: Arc<PathBuf>,
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History").field("dir", &self.dir).finish()
    }
}

struct Inner {
    options: Options,
    ids: HashMap<SeriesKey, u32>,
    /// By id: when the series was last sampled (its previous sample for a rate); `i64::MIN`
    /// for a free id.
    last_seen: Vec<i64>,
    prev: Vec<[u64; 3]>,
    health: Vec<u8>,
    free: Vec<u32>,
    /// Names not yet in `history/series`.
    unsaved: Vec<(u32, SeriesKey)>,
    transitions: Vec<Transition>,
    /// The minute being filled: its start, the slots sampled, and `id * FINE_SLOTS + slot`.
    open_start: i64,
    open_present: u16,
    open: Vec<Values>,
    stats: Stats,
}

fn fine_path(dir: &Path, start: i64) -> PathBuf {
    dir.join("fine").join(format!("{start}.chunk"))
}

fn coarse_path(dir: &Path, start: i64) -> PathBuf {
    dir.join("coarse").join(format!("{start}.chunk"))
}

fn floor(t: i64, to: i64) -> i64 {
    t - t.rem_euclid(to)
}

fn health_code(h: HealthState) -> u8 {
    match h {
        HealthState::Unknown => 1,
        HealthState::Up => 2,
        HealthState::Down => 3,
    }
}

fn health_of(code: u8) -> Option<HealthState> {
    match code {
        1 => Some(HealthState::Unknown),
        2 => Some(HealthState::Up),
        3 => Some(HealthState::Down),
        _ => None,
    }
}

/// Means of each metric over the values that have it (`NaN` when none has).
fn mean<'a>(values: impl Iterator<Item = &'a Values>) -> Values {
    let mut sum = [0f64; METRICS];
    let mut n = [0u32; METRICS];
    for v in values {
        for m in 0..METRICS {
            if !v[m].is_nan() {
                sum[m] += f64::from(v[m]);
                n[m] += 1;
            }
        }
    }
    std::array::from_fn(|m| {
        if n[m] == 0 {
            f32::NAN
        } else {
            (sum[m] / f64::from(n[m])) as f32
        }
    })
}

/// A chunk to read, or `None`: there is none, or it cannot be read (truncated, not ours, an I/O
/// error). A damaged chunk costs its minute or hour of graphs (a gap), never the rest; it is
/// logged, and replaced when its minute is written again or expires.
fn readable(path: &Path) -> Option<Chunk> {
    match Chunk::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "skipping a history chunk that cannot be read");
            None
        }
    }
}

/// Series `id` in chunk `c`, a damaged entry read as absent (logged).
fn found_in(c: &Chunk, id: u32) -> Option<Vec<Values>> {
    c.find(id).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "a history chunk's entry cannot be read");
        None
    })
}

/// The next entry of a chunk being merged; a read error ends that chunk (logged).
fn next_entry(entries: &mut chunk::Entries) -> Option<(u32, Vec<Values>)> {
    match entries.next()? {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(error = %e, "a history chunk ends early in a rollup");
            None
        }
    }
}

fn is_zero(row: &[Values]) -> bool {
    row.iter().flatten().all(|x| *x == 0.0 || x.is_nan())
}

impl History {
    /// Opens (or makes) the history in `dir`, as of `now` (unix seconds): names loaded, ids of
    /// series gone longer than the retention freed, hours not rolled up yet rolled up, expired
    /// chunks removed.
    pub fn open(dir: &Path, now: i64, options: Options) -> std::io::Result<History> {
        for sub in ["fine", "coarse", "events"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut inner = Inner {
            options,
            ids: HashMap::new(),
            last_seen: Vec::new(),
            prev: Vec::new(),
            health: Vec::new(),
            free: Vec::new(),
            unsaved: Vec::new(),
            transitions: Vec::new(),
            open_start: i64::MIN,
            open_present: 0,
            open: Vec::new(),
            stats: Stats::default(),
        };
        let names = match std::fs::read_to_string(dir.join("series")) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        // A torn last line (a crash while appending) is skipped; later lines win.
        let mut named: HashMap<u32, (i64, SeriesKey)> = HashMap::new();
        for line in names.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(id), Some(seen), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(id), Ok(seen), Ok(key)) = (id.parse::<u32>(), seen.parse::<i64>(), key.parse::<SeriesKey>()) else {
                continue;
            };
            named.insert(id, (seen, key));
        }
        let expired = now - COARSE_KEEP - COARSE_SPAN;
        let len = named.keys().max().map_or(0, |m| *m as usize + 1);
        inner.last_seen = vec![i64::MIN; len];
        inner.prev = vec![[0; 3]; len];
        inner.health = vec![0; len];
        for (id, (seen, key)) in named {
            if seen < expired || inner.ids.contains_key(&key) {
                continue;
            }
            inner.last_seen[id as usize] = seen;
            inner.ids.insert(key, id);
        }
        inner.free = (0..len as u32)
            .rev()
            .filter(|i| inner.last_seen[*i as usize] == i64::MIN)
            .collect();
        inner.open = vec![NO_DATA; len * FINE_SLOTS];
        let history = History {
            dir: Arc::new(dir.to_owned()),
            inner: Arc::new(Mutex::new(inner)),
        };
        history.save_names()?;
        // Hours that ended while the appliance was down, or before their rollup ran.
        let mut hour = floor(now - FINE_KEEP, COARSE_SPAN);
        while hour + COARSE_SPAN <= now {
            if !coarse_path(dir, hour).exists() {
                history.roll_up(hour)?;
            }
            hour += COARSE_SPAN;
        }
        history.expire(now)?;
        Ok(history)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        Stats {
            series: inner.ids.len(),
            ..inner.stats
        }
    }

    /// Records the samples of time `t` (unix seconds, rounded down to [`STEP`]). The minute
    /// before is written out when `t` is past it, and the hour before rolled up when `t` is past
    /// that. Blocking: call it from a blocking task.
    pub fn record<'a>(&self, t: i64, samples: impl IntoIterator<Item = Sample<'a>>) -> std::io::Result<()> {
        let t = floor(t, STEP);
        let minute = floor(t, FINE_SPAN);
        let mut inner = self.lock();
        let mut ended_hour = None;
        if inner.open_start != minute {
            if inner.open_start != i64::MIN {
                let old = inner.open_start;
                self.write_open(&mut inner)?;
                if floor(old, COARSE_SPAN) != floor(minute, COARSE_SPAN) {
                    ended_hour = Some(floor(old, COARSE_SPAN));
                }
            }
            inner.open_start = minute;
            inner.open_present = 0;
            inner.open.fill(NO_DATA);
        }
        let slot = ((t - minute) / STEP) as usize;
        for s in samples {
            let Some(id) = inner.id_of(&s.key) else { continue };
            inner.put(id, slot, t, &s);
        }
        inner.open_present |= 1 << slot;
        drop(inner);
        if let Some(hour) = ended_hour {
            self.roll_up(hour)?;
            self.save_names()?;
            self.expire(t)?;
        }
        Ok(())
    }

    /// Writes the minute being filled now (at shutdown), so a restart loses nothing recorded.
    pub fn flush(&self) -> std::io::Result<()> {
        let mut inner = self.lock();
        if inner.open_start == i64::MIN {
            return Ok(());
        }
        self.write_open(&mut inner)
    }

    /// Writes the open minute, merged with a chunk already there for it (the same minute before
    /// a restart), with the names and transitions it needs.
    fn write_open(&self, inner: &mut Inner) -> std::io::Result<()> {
        if !inner.unsaved.is_empty() {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("series"))?;
            let mut text = String::new();
            // Taken, not drained: the first minute names every series, and its room is not
            // kept for the next ones.
            for (id, key) in std::mem::take(&mut inner.unsaved) {
                text.push_str(&format!("{id} {} {key}\n", inner.last_seen[id as usize]));
            }
            f.write_all(text.as_bytes())?;
        }
        let pending = std::mem::take(&mut inner.transitions);
        events::append(&self.dir, &pending)?;
        let path = fine_path(&self.dir, inner.open_start);
        let mut header = Header {
            step: STEP as u32,
            slots: FINE_SLOTS as u16,
            present: inner.open_present,
            start: inner.open_start,
            count: 0,
        };
        let n = inner.last_seen.len();
        let written = match Chunk::open(&path).ok().flatten() {
            None => {
                let open = &inner.open;
                let rows = (0..n as u32)
                    .map(|id| (id, &open[id as usize * FINE_SLOTS..(id as usize + 1) * FINE_SLOTS]))
                    .filter(|(_, row)| !is_zero(row));
                chunk::write(&path, header, rows)?
            }
            Some(old) => {
                let old_present = old.header.present;
                let mut rows: std::collections::BTreeMap<u32, Vec<Values>> = std::collections::BTreeMap::new();
                for e in old.entries() {
                    let (id, mut v) = e?;
                    // Where both sampled, the new values win: zero for a series absent now.
                    for (s, slot) in v.iter_mut().enumerate() {
                        if inner.open_present & (1 << s) != 0 {
                            *slot = [0.0; METRICS];
                        }
                    }
                    rows.insert(id, v);
                }
                for id in 0..n {
                    let row = &inner.open[id * FINE_SLOTS..(id + 1) * FINE_SLOTS];
                    if is_zero(row) {
                        continue;
                    }
                    let merged = rows
                        .entry(id as u32)
                        .or_insert_with(|| vec![[0.0; METRICS]; FINE_SLOTS]);
                    for (s, v) in row.iter().enumerate() {
                        if inner.open_present & (1 << s) != 0 {
                            merged[s] = *v;
                        }
                    }
                }
                header.present |= old_present;
                chunk::write(&path, header, rows.iter().map(|(id, v)| (*id, v.as_slice())))?
            }
        };
        inner.stats.bytes_written += written;
        inner.stats.chunks_written += 1;
        Ok(())
    }

    /// Rewrites `history/series` whole, with when each series was last seen.
    fn save_names(&self) -> std::io::Result<()> {
        let text = {
            let mut inner = self.lock();
            inner.unsaved.clear();
            let mut text = String::with_capacity(inner.ids.len() * 48);
            for (key, id) in &inner.ids {
                text.push_str(&format!("{id} {} {key}\n", inner.last_seen[*id as usize]));
            }
            text
        };
        let tmp = self.dir.join("series.tmp");
        std::fs::write(&tmp, text.as_bytes())?;
        std::fs::rename(tmp, self.dir.join("series"))
    }

    /// Rolls the fine chunks of the hour from `hour` into its coarse chunk: per series, the mean
    /// of each 5 minutes over the slots sampled (a series absent from a sampled chunk was 0).
    fn roll_up(&self, hour: i64) -> std::io::Result<()> {
        const PER_COARSE: usize = (COARSE_STEP / STEP) as usize;
        let mut sources = Vec::new();
        // Sampled fine slots in each coarse slot.
        let mut sampled = [0u32; COARSE_SLOTS];
        for m in 0..(COARSE_SPAN / FINE_SPAN) {
            let Some(c) = readable(&fine_path(&self.dir, hour + m * FINE_SPAN)) else {
                continue;
            };
            let base = m as usize * FINE_SLOTS;
            for s in 0..FINE_SLOTS {
                if c.header.sampled(s) {
                    sampled[(base + s) / PER_COARSE] += 1;
                }
            }
            let mut entries = c.entries();
            let head = next_entry(&mut entries);
            sources.push((base, entries, head));
        }
        if sources.is_empty() {
            return Ok(());
        }
        let mut present = 0u16;
        for (i, n) in sampled.iter().enumerate() {
            if *n > 0 {
                present |= 1 << i;
            }
        }
        let header = Header {
            step: COARSE_STEP as u32,
            slots: COARSE_SLOTS as u16,
            present,
            start: hour,
            count: 0,
        };
        let mut out = chunk::Writer::create(&coarse_path(&self.dir, hour), header)?;
        while let Some(id) = sources.iter().filter_map(|s| s.2.as_ref().map(|h| h.0)).min() {
            let mut sum = [[0f64; METRICS]; COARSE_SLOTS];
            let mut nan = [[0u32; METRICS]; COARSE_SLOTS];
            for (base, entries, head) in sources.iter_mut() {
                if head.as_ref().is_none_or(|h| h.0 != id) {
                    continue;
                }
                let (_, values) = head.take().expect("checked");
                for (s, v) in values.iter().enumerate() {
                    // An unsampled slot is NaN here and not in `sampled` either: skip it.
                    if !entries.header.sampled(s) {
                        continue;
                    }
                    let c = (*base + s) / PER_COARSE;
                    for m in 0..METRICS {
                        if v[m].is_nan() {
                            nan[c][m] += 1;
                        } else {
                            sum[c][m] += f64::from(v[m]);
                        }
                    }
                }
                *head = next_entry(entries);
            }
            let row: Vec<Values> = (0..COARSE_SLOTS)
                .map(|c| {
                    std::array::from_fn(|m| {
                        let n = sampled[c].saturating_sub(nan[c][m]);
                        if n == 0 {
                            f32::NAN
                        } else {
                            (sum[c][m] / f64::from(n)) as f32
                        }
                    })
                })
                .collect();
            if !is_zero(&row) {
                out.push(id, &row)?;
            }
        }
        let written = out.finish()?;
        let mut inner = self.lock();
        inner.stats.bytes_written += written;
        inner.stats.chunks_written += 1;
        Ok(())
    }

    /// Removes chunks and transition logs older than their retention.
    fn expire(&self, now: i64) -> std::io::Result<()> {
        for (sub, keep) in [("fine", FINE_KEEP + FINE_SPAN), ("coarse", COARSE_KEEP + COARSE_SPAN)] {
            for e in std::fs::read_dir(self.dir.join(sub))? {
                let e = e?;
                let name = e.file_name();
                let start = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".chunk"))
                    .and_then(|n| n.parse::<i64>().ok());
                if start.is_some_and(|s| s < now - keep) {
                    std::fs::remove_file(e.path())?;
                }
            }
        }
        events::expire(&self.dir, now - COARSE_KEEP - 86_400)
    }

    /// The series `key` over `range`, ending with the step that holds `now`.
    pub fn series(&self, key: &SeriesKey, range: Range, now: i64) -> std::io::Result<Series> {
        Ok(self.series_many(std::slice::from_ref(key), range, now)?.remove(0))
    }

    /// Several series over the same range, each chunk opened once for all of them (a page
    /// with 50 pools reads 60 files for its hour, not 3,000).
    pub fn series_many(&self, keys: &[SeriesKey], range: Range, now: i64) -> std::io::Result<Vec<Series>> {
        let step = range.step();
        let n = range.span() / step;
        let start = floor(now, step) + step - n * step;
        let end = start + n * step;
        let open = {
            let inner = self.lock();
            let ids: Vec<Option<u32>> = keys.iter().map(|k| inner.ids.get(k).copied()).collect();
            let rows = ids
                .iter()
                .map(|id| id.map(|id| inner.open[id as usize * FINE_SLOTS..(id as usize + 1) * FINE_SLOTS].to_vec()))
                .collect();
            Open {
                start: inner.open_start,
                present: inner.open_present,
                ids,
                rows,
            }
        };
        let mut points: Vec<Vec<Values>> = vec![Vec::with_capacity(n as usize); keys.len()];
        if step == STEP {
            let mut minute = floor(start, FINE_SPAN);
            while minute < end {
                for (k, slots) in self.fine_slots(minute, &open)?.iter().enumerate() {
                    for (s, v) in slots.iter().enumerate() {
                        let t = minute + s as i64 * STEP;
                        if t >= start && t < end {
                            points[k].push(*v);
                        }
                    }
                }
                minute += FINE_SPAN;
            }
        } else {
            let per = (step / COARSE_STEP) as usize;
            let mut five: Vec<Vec<Values>> = vec![Vec::new(); keys.len()];
            let mut hour = floor(start, COARSE_SPAN);
            while hour < end {
                for (k, slots) in self.coarse_slots(hour, now, &open)?.iter().enumerate() {
                    for (s, v) in slots.iter().enumerate() {
                        if hour + s as i64 * COARSE_STEP >= start {
                            five[k].push(*v);
                        }
                    }
                }
                hour += COARSE_SPAN;
            }
            for (k, f) in five.iter().enumerate() {
                points[k].extend(f.chunks(per).map(|c| mean(c.iter())).take(n as usize));
            }
        }
        Ok(points
            .into_iter()
            .map(|points| Series { start, step, points })
            .collect())
    }

    /// The six 10-second values of the minute from `minute`, for each series of `open`.
    fn fine_slots(&self, minute: i64, open: &Open) -> std::io::Result<Vec<[Values; FINE_SLOTS]>> {
        let mut out = vec![[NO_DATA; FINE_SLOTS]; open.ids.len()];
        let in_memory = minute == open.start;
        if in_memory {
            for (k, slots) in out.iter_mut().enumerate() {
                for (s, slot) in slots.iter_mut().enumerate() {
                    if open.present & (1 << s) != 0 {
                        *slot = open.rows[k].as_ref().map_or([0.0; METRICS], |r| r[s]);
                    }
                }
            }
            // The minute may also have a chunk from before a restart.
            if open.present == (1 << FINE_SLOTS) - 1 {
                return Ok(out);
            }
        }
        let Some(c) = readable(&fine_path(&self.dir, minute)) else {
            return Ok(out);
        };
        for (k, slots) in out.iter_mut().enumerate() {
            let found = match open.ids[k] {
                Some(id) => found_in(&c, id),
                None => None,
            };
            for (s, slot) in slots.iter_mut().enumerate() {
                if c.header.sampled(s) && (!in_memory || open.present & (1 << s) == 0) {
                    *slot = found.as_ref().map_or([0.0; METRICS], |v| v[s]);
                }
            }
        }
        Ok(out)
    }

    /// The twelve 5-minute values of the hour from `hour`, for each series of `open`: its
    /// coarse chunk, or, for an hour not rolled up yet, the means of its fine chunks.
    fn coarse_slots(&self, hour: i64, now: i64, open: &Open) -> std::io::Result<Vec<[Values; COARSE_SLOTS]>> {
        let mut out = vec![[NO_DATA; COARSE_SLOTS]; open.ids.len()];
        if let Some(c) = readable(&coarse_path(&self.dir, hour)) {
            for (k, slots) in out.iter_mut().enumerate() {
                let found = match open.ids[k] {
                    Some(id) => found_in(&c, id),
                    None => None,
                };
                for (s, slot) in slots.iter_mut().enumerate() {
                    if c.header.sampled(s) {
                        *slot = found.as_ref().map_or([0.0; METRICS], |v| v[s]);
                    }
                }
            }
            return Ok(out);
        }
        // Not rolled up, and its fine chunks gone too (or never there): no data.
        if hour + COARSE_SPAN <= now - FINE_KEEP - FINE_SPAN {
            return Ok(out);
        }
        let per = (COARSE_STEP / FINE_SPAN) as usize * FINE_SLOTS;
        let mut fine: Vec<Vec<Values>> = vec![Vec::with_capacity((COARSE_SPAN / STEP) as usize); open.ids.len()];
        for m in 0..(COARSE_SPAN / FINE_SPAN) {
            for (k, slots) in self.fine_slots(hour + m * FINE_SPAN, open)?.into_iter().enumerate() {
                fine[k].extend(slots);
            }
        }
        for (k, slots) in out.iter_mut().enumerate() {
            for (s, slot) in slots.iter_mut().enumerate() {
                *slot = mean(fine[k][s * per..(s + 1) * per].iter());
            }
        }
        Ok(out)
    }

    /// The last sample of each series, from memory (no file is read): `None` for a series not
    /// sampled last time. For live figures, such as the Services list's.
    pub fn latest(&self, keys: &[SeriesKey]) -> Vec<Option<Values>> {
        let inner = self.lock();
        let Some(slot) = (0..FINE_SLOTS).rev().find(|s| inner.open_present & (1 << s) != 0) else {
            return vec![None; keys.len()];
        };
        let t = inner.open_start + slot as i64 * STEP;
        keys.iter()
            .map(|k| {
                let id = *inner.ids.get(k)? as usize;
                (inner.last_seen[id] == t).then(|| inner.open[id * FINE_SLOTS + slot])
            })
            .collect()
    }

    /// The real servers virtual service `vs` has had in the history (a scan of the names: a
    /// millisecond at 100,000 series, and no index to keep in memory).
    pub fn real_servers_of(&self, vs: VsKey) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .lock()
            .ids
            .keys()
            .filter_map(|k| match k {
                SeriesKey::RealServer(k, a) if *k == vs => Some(*a),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// The pools the history has series of.
    pub fn pools(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .ids
            .keys()
            .filter_map(|k| match k {
                SeriesKey::Pool(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// The health transitions of the real servers of `vs` from `from` on, oldest first.
    pub fn transitions(&self, vs: &[VsKey], from: i64) -> std::io::Result<Vec<Transition>> {
        let mut out = events::read(&self.dir, vs, from)?;
        out.extend(
            self.lock()
                .transitions
                .iter()
                .filter(|t| t.time >= from && vs.contains(&t.vs))
                .cloned(),
        );
        out.sort_by_key(|t| t.time);
        Ok(out)
    }
}

/// What a reader copied under the lock: the series' ids and their rows of the minute in
/// memory.
struct Open {
    start: i64,
    present: u16,
    ids: Vec<Option<u32>>,
    rows: Vec<Option<Vec<Values>>>,
}

impl Inner {
    /// The id of `key`, made if new (`None` past the cap).
    fn id_of(&mut self, key: &SeriesKey) -> Option<u32> {
        if let Some(id) = self.ids.get(key) {
            return Some(*id);
        }
        if self.ids.len() >= self.options.max_series {
            self.stats.over_cap += 1;
            return None;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.prev[id as usize] = [0; 3];
                self.health[id as usize] = 0;
                id
            }
            None => {
                let id = self.last_seen.len() as u32;
                self.last_seen.push(i64::MIN);
                self.prev.push([0; 3]);
                self.health.push(0);
                self.open.extend([NO_DATA; FINE_SLOTS]);
                id
            }
        };
        // Not seen before: no rate from a previous sample.
        self.last_seen[id as usize] = i64::MIN;
        self.unsaved.push((id, key.clone()));
        self.ids.insert(key.clone(), id);
        Some(id)
    }

    /// Puts sample `s` of series `id` in slot `slot` of the open minute (time `t`).
    fn put(&mut self, id: u32, slot: usize, t: i64, s: &Sample) {
        let mut values = s.values;
        let i = id as usize;
        if let Some(c) = s.counters {
            let elapsed = match self.last_seen[i] {
                i64::MIN => 0,
                seen => t.saturating_sub(seen),
            };
            let prev = self.prev[i];
            for (m, k) in [(0, 0), (2, 1), (3, 2)] {
                // No previous sample, a gap, or a counter that went back (its virtual service
                // made anew) gives no rate for this step.
                values[m] = if elapsed <= 0 || elapsed > 3 * STEP || c[k] < prev[k] {
                    f32::NAN
                } else {
                    ((c[k] - prev[k]) as f64 / elapsed as f64) as f32
                };
            }
            self.prev[i] = c;
        }
        if let Some((h, since, reason)) = s.health {
            let code = health_code(h);
            let before = self.health[i];
            if before != 0
                && before != code
                && let SeriesKey::RealServer(vs, rs) = &s.key
            {
                self.transitions.push(Transition {
                    time: since,
                    vs: *vs,
                    real_server: *rs,
                    from: health_of(before).expect("set"),
                    to: h,
                    reason: reason.to_owned(),
                });
            }
            self.health[i] = code;
        }
        self.last_seen[i] = t;
        self.open[i * FINE_SLOTS + slot] = values;
    }
}
