use std::net::SocketAddr;

use edgelb_api::{HealthState, Protocol};

use super::*;

fn vs() -> VsKey {
    VsKey::new("203.0.113.5".parse().expect("ip"), 80, Protocol::Tcp)
}

fn rs(i: u8) -> SocketAddr {
    format!("10.0.0.{i}:30080").parse().expect("addr")
}

/// An hour boundary, so that tests know which chunk a time falls in.
const T0: i64 = 1_800_000_000;

fn open(dir: &Path, now: i64) -> History {
    History::open(dir, now, Options::default()).expect("open")
}

fn gauge(key: SeriesKey, v: f32) -> Sample<'static> {
    Sample {
        key,
        values: [v, v * 2.0, 0.0, 0.0],
        counters: None,
        health: None,
    }
}

fn at(s: &Series, t: i64) -> Values {
    s.points[((t - s.start) / s.step) as usize]
}

#[test]
fn a_recorded_value_reads_back_at_its_time_and_unsampled_times_are_gaps() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = open(dir.path(), T0);
    let key = SeriesKey::Pool("public".into());
    // Three minutes, every 10 s, except 40 s in the middle.
    for i in 0..18 {
        if (8..12).contains(&i) {
            continue;
        }
        h.record(T0 + i * STEP, [gauge(key.clone(), i as f32)]).expect("record");
    }
    let now = T0 + 17 * STEP;
    let s = h.series(&key, Range::Hour, now).expect("read");
    assert_eq!((s.step, s.points.len()), (10, 360));
    assert_eq!(s.start + 359 * 10, now, "the last point is the step holding now");
    for i in 0..18 {
        let v = at(&s, T0 + i * STEP);
        if (8..12).contains(&i) {
            assert!(v[0].is_nan(), "{i} was not sampled: {v:?}");
        } else {
            assert_eq!(v, [i as f32, 2.0 * i as f32, 0.0, 0.0], "at {i}");
        }
    }
    assert!(at(&s, T0 - STEP)[0].is_nan(), "before the first sample");
    // Two minutes were written; the third is still in memory, and read from there.
    assert_eq!(h.stats().chunks_written, 2);
}

#[test]
fn counters_become_rates_and_a_counter_that_goes_back_gives_no_rate() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = open(dir.path(), T0);
    let key = SeriesKey::Service(vs());
    let counted = |c: [u64; 3]| Sample {
        key: key.clone(),
        values: [f32::NAN, 7.0, f32::NAN, f32::NAN],
        counters: Some(c),
        health: None,
    };
    h.record(T0, [counted([100, 1000, 5000])]).expect("record");
    h.record(T0 + 10, [counted([150, 3000, 5000])]).expect("record");
    h.record(T0 + 20, [counted([10, 3100, 6000])]).expect("record");
    h.record(T0 + 30, [counted([40, 3200, 7000])]).expect("record");
    let s = h.series(&key, Range::Hour, T0 + 30).expect("read");
    assert!(at(&s, T0)[0].is_nan(), "no previous sample: no rate");
    assert_eq!(at(&s, T0)[1], 7.0, "a gauge needs none");
    assert_eq!(at(&s, T0 + 10), [5.0, 7.0, 200.0, 0.0]);
    assert!(at(&s, T0 + 20)[0].is_nan(), "connections went back: recreated");
    assert_eq!(at(&s, T0 + 20)[2], 10.0);
    assert_eq!(at(&s, T0 + 30), [3.0, 7.0, 10.0, 100.0]);
}

#[test]
fn only_series_with_a_value_take_room_in_a_chunk() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = open(dir.path(), T0);
    let samples = |t: i64| {
        (0..100u8).map(move |i| Sample {
            key: SeriesKey::RealServer(vs(), rs(i)),
            values: [0.0, if i == 7 { t as f32 } else { 0.0 }, 0.0, 0.0],
            counters: None,
            health: None,
        })
    };
    for i in 0..7 {
        h.record(T0 + i * STEP, samples(T0 + i * STEP)).expect("record");
    }
    let c = Chunk::open(&fine_path(dir.path(), T0)).expect("open").expect("written");
    assert_eq!(c.header.count, 1, "99 idle real servers cost nothing");
    assert_eq!(c.header.present, 0b11_1111);
    let s = h
        .series(&SeriesKey::RealServer(vs(), rs(3)), Range::Hour, T0 + 60)
        .expect("read");
    assert_eq!(at(&s, T0 + 20), [0.0; METRICS], "idle reads as zero, not a gap");
    assert_eq!(h.real_servers_of(vs()).len(), 100);
}

#[test]
fn an_hour_rolls_up_into_five_minute_means_and_thirty_days_into_hourly_means() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = open(dir.path(), T0);
    let key = SeriesKey::Totals;
    // Two hours and a minute; the value is the minute's number within the hour.
    let end = T0 + 2 * 3600 + 60;
    let mut t = T0;
    while t <= end {
        h.record(t, [gauge(key.clone(), ((t - T0) % 3600 / 60) as f32)])
            .expect("record");
        t += STEP;
    }
    assert!(coarse_path(dir.path(), T0).exists());
    assert!(coarse_path(dir.path(), T0 + 3600).exists());
    let day = h.series(&key, Range::Day, end).expect("read");
    assert_eq!((day.step, day.points.len()), (300, 288));
    // Minutes 0..4 of each hour: mean 2; minutes 55..59: mean 57.
    assert_eq!(at(&day, T0)[0], 2.0);
    assert_eq!(at(&day, T0 + 3600 - 300)[0], 57.0);
    assert_eq!(at(&day, T0 + 3600)[1], 4.0, "metric 1 is twice metric 0");
    // The hour not rolled up yet comes from its fine chunks (and memory): six slots of minute
    // 0 and one of minute 1 so far.
    assert_eq!(at(&day, T0 + 7200)[0], 1.0 / 7.0);
    assert!(at(&day, T0 - 300)[0].is_nan());
    let month = h.series(&key, Range::Month, end).expect("read");
    assert_eq!((month.step, month.points.len()), (3600, 720));
    assert_eq!(at(&month, T0)[0], 29.5, "the mean of minutes 0 to 59");
    assert_eq!(at(&month, T0 + 3600)[0], 29.5);
}

#[test]
fn a_restart_keeps_what_was_recorded_and_the_series_ids() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = SeriesKey::RealServer(vs(), rs(1));
    {
        let h = open(dir.path(), T0);
        h.record(T0, [gauge(SeriesKey::Totals, 1.0), gauge(key.clone(), 3.0)])
            .expect("record");
        h.record(T0 + 10, [gauge(key.clone(), 4.0)]).expect("record");
        h.flush().expect("flush at shutdown");
    }
    // Back within the same minute: its earlier slots stay, and new ones join them.
    let h = open(dir.path(), T0 + 30);
    h.record(T0 + 30, [gauge(key.clone(), 5.0)]).expect("record");
    h.record(T0 + 60, [gauge(key.clone(), 6.0)]).expect("record");
    let s = h.series(&key, Range::Hour, T0 + 60).expect("read");
    assert_eq!(at(&s, T0)[0], 3.0);
    assert_eq!(at(&s, T0 + 10)[0], 4.0);
    assert!(at(&s, T0 + 20)[0].is_nan(), "down then");
    assert_eq!(at(&s, T0 + 30)[0], 5.0);
    assert_eq!(at(&s, T0 + 60)[0], 6.0);
    assert_eq!(h.stats().series, 2);
    assert_eq!(h.real_servers_of(vs()), [rs(1)]);
}

#[test]
fn hours_that_ended_while_down_are_rolled_up_at_the_next_start_and_old_chunks_expire() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = SeriesKey::Totals;
    {
        let h = open(dir.path(), T0);
        for i in 0..30 {
            h.record(T0 + i * STEP, [gauge(key.clone(), 8.0)]).expect("record");
        }
        h.flush().expect("flush");
    }
    assert!(!coarse_path(dir.path(), T0).exists());
    let later = T0 + 2 * 3600;
    let h = open(dir.path(), later);
    assert!(coarse_path(dir.path(), T0).exists(), "rolled up at start");
    let day = h.series(&key, Range::Day, later).expect("read");
    assert_eq!(at(&day, T0)[0], 8.0);
    assert!(at(&day, T0 + 600)[0].is_nan(), "not sampled after 5 minutes");
    drop(h);
    // Two days on: the fine chunks are gone, the coarse one stays.
    let h = open(dir.path(), T0 + 2 * 86_400);
    assert!(!fine_path(dir.path(), T0).exists());
    assert!(coarse_path(dir.path(), T0).exists());
    let month = h.series(&key, Range::Month, T0 + 2 * 86_400).expect("read");
    assert_eq!(at(&month, T0)[0], 8.0);
    drop(h);
    let h = open(dir.path(), T0 + 32 * 86_400);
    assert!(!coarse_path(dir.path(), T0).exists());
    // And the series, unseen for 32 days, lost its id: the next series takes it.
    assert_eq!(h.stats().series, 0);
}

#[test]
fn health_transitions_are_kept_with_their_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = SeriesKey::RealServer(vs(), rs(2));
    let other = VsKey::new("203.0.113.6".parse().expect("ip"), 443, Protocol::Tcp);
    let probe = |t: i64, h: HealthState, why: &'static str| Sample {
        key: key.clone(),
        values: [0.0; METRICS],
        counters: None,
        health: Some((h, t - 3, why)),
    };
    {
        let h = open(dir.path(), T0);
        h.record(T0, [probe(T0, HealthState::Unknown, "")]).expect("record");
        h.record(T0 + 10, [probe(T0 + 10, HealthState::Up, "ok")])
            .expect("record");
        h.record(T0 + 20, [probe(T0 + 20, HealthState::Up, "ok")])
            .expect("record");
        h.record(T0 + 30, [probe(T0 + 30, HealthState::Down, "connect: refused\nagain")])
            .expect("record");
        // Not written yet, and read all the same.
        assert_eq!(h.transitions(&[vs()], T0).expect("read").len(), 2);
        h.flush().expect("flush");
    }
    let h = open(dir.path(), T0 + 60);
    let t = h.transitions(&[vs()], T0).expect("read");
    assert_eq!(
        t,
        [
            Transition {
                time: T0 + 7,
                vs: vs(),
                real_server: rs(2),
                from: HealthState::Unknown,
                to: HealthState::Up,
                reason: "ok".into()
            },
            Transition {
                time: T0 + 27,
                vs: vs(),
                real_server: rs(2),
                from: HealthState::Up,
                to: HealthState::Down,
                reason: "connect: refused again".into()
            },
        ]
    );
    assert!(h.transitions(&[other], T0).expect("read").is_empty());
    assert_eq!(h.transitions(&[vs()], T0 + 20).expect("read").len(), 1);
}

#[test]
fn series_past_the_cap_are_counted_and_dropped() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = History::open(dir.path(), T0, Options { max_series: 3 }).expect("open");
    h.record(T0, (1..=5u8).map(|i| gauge(SeriesKey::RealServer(vs(), rs(i)), 1.0)))
        .expect("record");
    assert_eq!(h.stats().series, 3);
    assert_eq!(h.stats().over_cap, 2);
}

#[test]
fn series_names_round_trip() {
    for key in [
        SeriesKey::Appliance,
        SeriesKey::Totals,
        SeriesKey::Pool("public-v4".into()),
        SeriesKey::Service(vs()),
        SeriesKey::RealServer(
            VsKey::new("2001:db8::5".parse().expect("ip"), 53, Protocol::Udp),
            "[fd00::7]:31053".parse().expect("addr"),
        ),
    ] {
        assert_eq!(key.to_string().parse::<SeriesKey>(), Ok(key.clone()), "{key}");
    }
    assert!(
        "vs tcp 1.2.3.4:80".parse::<SeriesKey>().is_err(),
        "protocols are upper case"
    );
}

#[test]
fn a_rollup_averages_over_the_sampled_slots_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = open(dir.path(), T0);
    let key = SeriesKey::Totals;
    // The first 5 minutes: only the first three slots of each minute sampled, each 6.0;
    // then one sample in the next hour, to roll this one up.
    for m in 0..5 {
        for s in 0..3 {
            h.record(T0 + m * 60 + s * STEP, [gauge(key.clone(), 6.0)])
                .expect("record");
        }
    }
    h.record(T0 + 3600, [gauge(key.clone(), 1.0)]).expect("record");
    assert!(coarse_path(dir.path(), T0).exists());
    let day = h.series(&key, Range::Day, T0 + 3600).expect("read");
    assert_eq!(at(&day, T0), [6.0, 12.0, 0.0, 0.0]);
}

#[test]
fn the_latest_sample_is_read_from_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = open(dir.path(), T0);
    let (a, b) = (SeriesKey::Pool("a".into()), SeriesKey::Pool("b".into()));
    assert_eq!(h.latest(std::slice::from_ref(&a)), [None], "nothing sampled yet");
    h.record(T0, [gauge(a.clone(), 1.0), gauge(b.clone(), 5.0)])
        .expect("record");
    h.record(T0 + 10, [gauge(a.clone(), 2.0)]).expect("record");
    assert_eq!(
        h.latest(&[a, b]),
        [Some([2.0, 4.0, 0.0, 0.0]), None],
        "b was not in the last sample"
    );
}

#[test]
fn a_damaged_chunk_is_a_gap_not_an_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = open(dir.path(), T0);
    let key = SeriesKey::Totals;
    for i in 0..18 {
        h.record(T0 + i * STEP, [gauge(key.clone(), 3.0)]).expect("record");
    }
    // The first minute cut short (a full disk, say), the second not ours at all.
    let first = fine_path(dir.path(), T0);
    let len = std::fs::metadata(&first).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .expect("open")
        .set_len(len - 3)
        .expect("truncate");
    std::fs::write(fine_path(dir.path(), T0 + 60), b"not a chunk").expect("write");
    let s = h.series(&key, Range::Hour, T0 + 170).expect("still read");
    assert!(at(&s, T0)[0].is_nan() && at(&s, T0 + 60)[0].is_nan(), "gaps");
    assert_eq!(at(&s, T0 + 120)[0], 3.0, "the rest is there");
    // The hour still rolls up, from what can be read.
    h.record(T0 + 3600, [gauge(key.clone(), 3.0)]).expect("record");
    let day = h.series(&key, Range::Day, T0 + 3600).expect("read");
    assert_eq!(at(&day, T0)[0], 3.0);
}
