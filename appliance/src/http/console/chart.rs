//! Graphs drawn on the server as inline SVG: nothing to fetch, no script needed. Colours and
//! the hover targets' look come from `console.css` (the Content-Security-Policy forbids inline
//! styles). Hovering a column shows its time and values (an SVG `<title>`); each chart also
//! has a table view with the same numbers the API gives.

use std::fmt::Write;

use edgelb_api::HistoryWindow;
use time::OffsetDateTime;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    pub label: String,
    pub values: &'a [Option<f64>],
}

/// A moment marked on the time axis (a health transition).
#[derive(Debug, Clone)]
pub struct Mark {
    pub time: OffsetDateTime,
    /// `up`, `down` or `unknown`: the CSS class of the mark.
    pub kind: &'static str,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// The element id (and the table's, with `-table`).
    pub id: String,
    pub title: String,
    pub unit: &'static str,
    pub window: &'a HistoryWindow,
    pub lines: Vec<Line<'a>>,
    pub marks: Vec<Mark>,
}

const W: f64 = 720.0;
const H: f64 = 200.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 712.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 172.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A value as the table shows it: the API's number, with `k`, `M`, `G` for large ones only
/// on the axis.
pub fn number(x: f64) -> String {
    format!("{x}")
}

fn axis_number(x: f64) -> String {
    let a = x.abs();
    let (v, suffix) = if a >= 1e9 {
        (x / 1e9, "G")
    } else if a >= 1e6 {
        (x / 1e6, "M")
    } else if a >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let v = (v * 100.0).round() / 100.0;
    format!("{v}{suffix}")
}

/// The smallest of 1, 2, 5 times a power of ten at or above `x`.
fn nice_max(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * p)
}

pub fn time_label(t: OffsetDateTime, step: u32) -> String {
    if step >= 3600 {
        format!("{:02}-{:02} {:02}:00", u8::from(t.month()), t.day(), t.hour())
    } else if step >= 300 {
        format!(
            "{:02}-{:02} {:02}:{:02}",
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        )
    } else {
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
    }
}

impl Chart<'_> {
    fn time_at(&self, i: usize) -> OffsetDateTime {
        self.window.start + time::Duration::seconds(i as i64 * i64::from(self.window.step_seconds))
    }

    fn points(&self) -> usize {
        self.window.points as usize
    }

    /// The SVG, then a table of the points that have a value.
    pub fn render(&self) -> String {
        let n = self.points().max(1);
        let max = nice_max(
            self.lines
                .iter()
                .flat_map(|l| l.values.iter().flatten())
                .fold(0.0f64, |a, b| a.max(*b)),
        );
        let x = |i: usize| LEFT + (RIGHT - LEFT) * (i as f64 + 0.5) / n as f64;
        let y = |v: f64| BOTTOM - (BOTTOM - TOP) * (v / max);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<figure class="chart" id="{id}" data-step="{step}" data-points="{n}"><figcaption>{title} <span class="muted small">({unit})</span></figcaption><svg viewBox="0 0 {W} {H}" role="img" aria-label="{title}">"#,
            id = esc(&self.id),
            step = self.window.step_seconds,
            title = esc(&self.title),
            unit = esc(self.unit),
        );
        for k in 0..=2 {
            let v = max * f64::from(k) / 2.0;
            let _ = write!(
                s,
                r#"<line class="grid" x1="{LEFT}" x2="{RIGHT}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
                y = y(v),
                tx = LEFT - 4.0,
                ty = y(v) + 4.0,
                label = axis_number(v),
            );
        }
        for (i, anchor) in [(0, "start"), (n / 2, "middle"), (n - 1, "end")] {
            let _ = write!(
                s,
                r#"<text class="axis" x="{x:.1}" y="{ty}" text-anchor="{anchor}">{label}</text>"#,
                x = x(i),
                ty = H - 8.0,
                label = time_label(self.time_at(i), self.window.step_seconds),
            );
        }
        let span = (self.window.step_seconds as i64) * n as i64;
        for m in &self.marks {
            let off = (m.time - self.window.start).whole_seconds();
            if off < 0 || off >= span {
                continue;
            }
            let mx = LEFT + (RIGHT - LEFT) * off as f64 / span as f64;
            let _ = write!(
                s,
                r#"<line class="mark mark-{kind}" x1="{mx:.1}" x2="{mx:.1}" y1="{TOP}" y2="{BOTTOM}"><title>{label}</title></line>"#,
                kind = m.kind,
                label = esc(&m.label),
            );
        }
        for (li, line) in self.lines.iter().enumerate() {
            let class = format!("s{}", li % 6);
            let mut run: Vec<(f64, f64)> = Vec::new();
            let flush = |run: &mut Vec<(f64, f64)>, s: &mut String| {
                match run.len() {
                    0 => {}
                    1 => {
                        let _ = write!(
                            s,
                            r#"<circle class="{class}" cx="{:.1}" cy="{:.1}" r="2"/>"#,
                            run[0].0, run[0].1
                        );
                    }
                    _ => {
                        let pts: Vec<String> = run.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
                        let _ = write!(s, r#"<polyline class="{class}" points="{}"/>"#, pts.join(" "));
                    }
                }
                run.clear();
            };
            for (i, v) in line.values.iter().enumerate() {
                match v {
                    Some(v) => run.push((x(i), y(*v))),
                    None => flush(&mut run, &mut s),
                }
            }
            flush(&mut run, &mut s);
        }
        // Hover targets: one column a point with data.
        let w = (RIGHT - LEFT) / n as f64;
        for i in 0..n {
            let vals: Vec<String> = self
                .lines
                .iter()
                .filter_map(|l| {
                    l.values
                        .get(i)
                        .copied()
                        .flatten()
                        .map(|v| format!("{}: {}", l.label, number(v)))
                })
                .collect();
            if vals.is_empty() {
                continue;
            }
            let _ = write!(
                s,
                r#"<rect class="hit" x="{:.1}" y="{TOP}" width="{:.2}" height="{}"><title>{} · {}</title></rect>"#,
                x(i) - w / 2.0,
                w,
                BOTTOM - TOP,
                time_label(self.time_at(i), self.window.step_seconds.min(10)),
                esc(&vals.join(" · ")),
            );
        }
        s.push_str("</svg>");
        s.push_str(r#"<div class="legend">"#);
        for (li, line) in self.lines.iter().enumerate() {
            let _ = write!(s, r#"<span class="k s{}"></span>{} "#, li % 6, esc(&line.label));
        }
        if !self.marks.is_empty() {
            s.push_str(r#"<span class="k mark-down"></span>went down <span class="k mark-up"></span>came up"#);
        }
        s.push_str("</div>");
        self.table(&mut s);
        s.push_str("</figure>");
        s
    }

    fn table(&self, s: &mut String) {
        let rows: Vec<usize> = (0..self.points())
            .filter(|i| self.lines.iter().any(|l| l.values.get(*i).copied().flatten().is_some()))
            .collect();
        let _ = write!(
            s,
            r#"<details class="chart-table"><summary>Table ({} points with data)</summary><div class="table-wrap"><table id="{}-table"><thead><tr><th scope="col">Time (UTC)</th>"#,
            rows.len(),
            esc(&self.id)
        );
        for l in &self.lines {
            let _ = write!(s, r#"<th scope="col">{}</th>"#, esc(&l.label));
        }
        s.push_str("</tr></thead><tbody>");
        for i in rows {
            let t = self.time_at(i);
            let _ = write!(
                s,
                r#"<tr data-time="{}"><td>{} {}</td>"#,
                t.unix_timestamp(),
                t.date(),
                time_label(t, 10)
            );
            for l in &self.lines {
                match l.values.get(i).copied().flatten() {
                    Some(v) => {
                        let _ = write!(s, "<td>{}</td>", number(v));
                    }
                    None => s.push_str(r#"<td class="muted">–</td>"#),
                }
            }
            s.push_str("</tr>");
        }
        s.push_str("</tbody></table></div></details>");
        if !self.marks.is_empty() {
            s.push_str(r#"<ul class="plain small marks">"#);
            for m in &self.marks {
                let _ = write!(
                    s,
                    r#"<li><span class="badge health-{}">{}</span> {} {}</li>"#,
                    m.kind,
                    m.kind,
                    esc(&format!("{} {}", m.time.date(), time_label(m.time, 10))),
                    esc(&m.label)
                );
            }
            s.push_str("</ul>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(points: u32) -> HistoryWindow {
        HistoryWindow {
            range: edgelb_api::HistoryRange::Hour,
            start: OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time"),
            step_seconds: 10,
            points,
        }
    }

    #[test]
    fn a_gap_breaks_the_line_and_the_table_lists_only_points_with_data() {
        let w = window(6);
        let values = [Some(1.0), Some(2.0), None, None, Some(4.0), None];
        let c = Chart {
            id: "c".into(),
            title: "Connections <new>".into(),
            unit: "per second",
            window: &w,
            lines: vec![Line {
                label: "web".into(),
                values: &values,
            }],
            marks: vec![Mark {
                time: w.start + time::Duration::seconds(25),
                kind: "down",
                label: "10.0.0.2 down: refused".into(),
            }],
        };
        let svg = c.render();
        assert_eq!(svg.matches("<polyline").count(), 1, "two points before the gap: {svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "one point alone after it");
        assert_eq!(svg.matches(r#"class="hit""#).count(), 3);
        assert_eq!(svg.matches("<tr data-time").count(), 3);
        assert!(svg.contains("Connections &lt;new&gt;"), "text is escaped");
        assert!(svg.contains(r#"class="mark mark-down""#));
        assert!(svg.contains("<td>4</td>"));
        assert!(svg.contains(r#"data-step="10""#));
    }

    #[test]
    fn the_axis_ends_on_a_round_number() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(1200.0), 2000.0);
        assert_eq!(nice_max(10.0), 10.0);
        assert_eq!(axis_number(2500.0), "2.5k");
    }
}
