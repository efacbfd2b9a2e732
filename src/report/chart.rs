//! One rule's chart as SVG: the readings of its signal over time against the threshold,
//! the stretch that proved the rule's bound (`for`, consecutive readings), and a marker
//! for each moment of the incident (the change, the breach, firing, the decision, each
//! step, verification, the end).
//!
//! It is written by hand rather than with a plotting crate: the chart needs marks a
//! plotting library does not have (readings without a value drawn as what they are, in a
//! band of their own, never as zero), it is a few hundred lines of text, and it adds no
//! dependency to build. Rendering is pure: no I/O, no clock. Every element a reader must
//! find carries a `data-marker` or `data-reading` attribute, which the tests look for.

use std::fmt::Write as _;

use super::history::{Point, Seen};
use crate::config::units::Unit;
use crate::engine::Ts;

/// A moment of the incident, drawn as a vertical line with a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    Change,
    Breach,
    Fired,
    Decision,
    Step,
    Verification,
    Resolved,
}

impl MarkerKind {
    /// The stable name written in `data-marker`.
    pub fn name(self) -> &'static str {
        match self {
            MarkerKind::Change => "change",
            MarkerKind::Breach => "breach",
            MarkerKind::Fired => "fired",
            MarkerKind::Decision => "decision",
            MarkerKind::Step => "step",
            MarkerKind::Verification => "verification",
            MarkerKind::Resolved => "resolved",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            MarkerKind::Change => "#6a3d9a",
            MarkerKind::Breach => "#e31a1c",
            MarkerKind::Fired => "#b10026",
            MarkerKind::Decision => "#1f78b4",
            MarkerKind::Step => "#33a02c",
            MarkerKind::Verification => "#117733",
            MarkerKind::Resolved => "#555555",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub at: Ts,
    pub kind: MarkerKind,
    pub label: String,
}

/// What one chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    /// How values are written on the axis.
    pub unit: Unit,
    /// A pass/fail signal: values are 0 (passing) and 1 (failing).
    pub check: bool,
    /// The threshold's value and how the condition reads (`> 5%`); `None` when it has
    /// no fixed value (a baseline ratio, a check).
    pub threshold: Option<(f64, String)>,
    pub points: Vec<Point>,
    pub from: Ts,
    pub to: Ts,
    /// The stretch of readings that proved the rule's bound, and the bound (`for 2m`).
    pub proof: Option<(Ts, Ts, String)>,
    pub markers: Vec<Marker>,
}

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 330.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 840.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 230.0;
/// The rows of marker labels above the plot.
const LABEL_ROWS: [f64; 4] = [28.0, 40.0, 52.0, 64.0];
/// Where readings without a value are drawn, below the plot.
const BAND: f64 = 242.0;
/// Value points drawn as dots only up to this many; the line is always drawn.
const DOTS_MAX: usize = 300;

/// The chart as a standalone SVG document.
pub fn svg(c: &Chart) -> String {
    let frame = Frame::new(c);
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11" role="img" aria-label="{}">"##,
        esc(&c.title)
    );
    let _ = write!(
        out,
        r##"<title>{}</title><rect width="100%" height="100%" fill="#ffffff"/><text x="{LEFT}" y="14" font-size="13" font-weight="bold">{}</text>"##,
        esc(&c.title),
        esc(&c.title)
    );
    proof(&mut out, c, &frame);
    axes(&mut out, c, &frame);
    threshold(&mut out, c, &frame);
    values(&mut out, c, &frame);
    without_value(&mut out, c, &frame);
    markers(&mut out, c, &frame);
    legend(&mut out);
    out.push_str("</svg>\n");
    out
}

/// The scales from time and value to the picture.
struct Frame {
    from: u64,
    span: f64,
    top: f64,
}

impl Frame {
    fn new(c: &Chart) -> Frame {
        let span = c.to.0.saturating_sub(c.from.0).max(1) as f64;
        let top = if c.check {
            1.0
        } else {
            let highest = c
                .points
                .iter()
                .filter_map(|p| match p.seen {
                    Seen::Value(v) if v.is_finite() => Some(v),
                    _ => None,
                })
                .chain(c.threshold.as_ref().map(|t| t.0))
                .fold(0.0_f64, f64::max);
            if highest > 0.0 { highest * 1.15 } else { 1.0 }
        };
        Frame {
            from: c.from.0,
            span,
            top,
        }
    }

    fn x(&self, at: Ts) -> f64 {
        let t = at.0.saturating_sub(self.from) as f64 / self.span;
        LEFT + t.clamp(0.0, 1.0) * (RIGHT - LEFT)
    }

    fn y(&self, v: f64) -> f64 {
        let t = (v / self.top).clamp(0.0, 1.0);
        BOTTOM - t * (BOTTOM - TOP)
    }
}

fn axes(out: &mut String, c: &Chart, f: &Frame) {
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#bbbbbb"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let ticks: Vec<(f64, String)> = if c.check {
        vec![(0.0, "passing".to_owned()), (1.0, "failing".to_owned())]
    } else {
        (0..=4)
            .map(|i| {
                let v = f.top * f64::from(i) / 4.0;
                (v, c.unit.format(v))
            })
            .collect()
    };
    for (v, label) in ticks {
        let y = f.y(v);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#eeeeee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 4.0,
            y + 4.0,
            esc(&label)
        );
    }
    let (step, precise) = time_step(c.to.0.saturating_sub(c.from.0));
    let mut at = c.from.0.div_ceil(step) * step;
    while at <= c.to.0 {
        let clock = Ts(at).clock();
        let label = if precise { &clock[..10] } else { &clock[..8] };
        let x = f.x(Ts(at));
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{BOTTOM}" x2="{x:.1}" y2="{}" stroke="#bbbbbb"/><text x="{x:.1}" y="{}" text-anchor="middle" fill="#444444">{}</text>"##,
            BOTTOM + 4.0,
            BAND + 26.0,
            esc(label)
        );
        at += step;
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" text-anchor="end" fill="#444444">no value</text>"##,
        LEFT - 4.0,
        BAND + 8.0
    );
}

/// The step between time ticks (a round length, about six ticks over `span_ms`) and
/// whether labels need tenths of a second.
fn time_step(span_ms: u64) -> (u64, bool) {
    const STEPS: [u64; 17] = [
        100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000,
        600_000, 900_000, 1_800_000, 3_600_000, 7_200_000,
    ];
    let step = STEPS
        .into_iter()
        .find(|&s| span_ms / s <= 6)
        .unwrap_or_else(|| span_ms.div_ceil(6 * 3_600_000) * 3_600_000);
    (step, step < 1_000)
}

fn threshold(out: &mut String, c: &Chart, f: &Frame) {
    let Some((value, text)) = &c.threshold else {
        return;
    };
    let y = f.y(*value);
    let _ = write!(
        out,
        r##"<g data-marker="threshold"><line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#e31a1c" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" fill="#e31a1c">threshold {}</text></g>"##,
        RIGHT - 4.0,
        y - 4.0,
        esc(text)
    );
}

fn proof(out: &mut String, c: &Chart, f: &Frame) {
    let Some((from, to, text)) = &c.proof else {
        return;
    };
    let (x0, x1) = (f.x(*from), f.x(*to));
    let _ = write!(
        out,
        r##"<g data-marker="for"><rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{}" fill="#fdd49e" fill-opacity="0.5"><title>{}</title></rect><text x="{:.1}" y="{}" fill="#b35806">{}</text></g>"##,
        (x1 - x0).max(2.0),
        BOTTOM - TOP,
        esc(text),
        x0 + 3.0,
        BOTTOM - 4.0,
        esc(text)
    );
}

fn values(out: &mut String, c: &Chart, f: &Frame) {
    // Runs of consecutive value readings: a reading without a value breaks the line.
    let mut runs: Vec<Vec<&Point>> = vec![Vec::new()];
    for p in &c.points {
        match p.seen {
            Seen::Value(v) if v.is_finite() => runs.last_mut().expect("never empty").push(p),
            _ => runs.push(Vec::new()),
        }
    }
    let dots = c.points.len() <= DOTS_MAX;
    for run in &runs {
        if run.len() > 1 {
            let pts: Vec<String> = run
                .iter()
                .map(|p| format!("{:.1},{:.1}", f.x(p.at), f.y(value(p))))
                .collect();
            let _ = write!(
                out,
                r##"<polyline data-reading="value" points="{}" fill="none" stroke="#1f78b4" stroke-width="1.5"/>"##,
                pts.join(" ")
            );
        }
        // A lone value has no line to show it, so it gets a dot however many there are.
        if !(dots || run.len() == 1) {
            continue;
        }
        for p in run {
            let v = value(p);
            let text = if c.check {
                if v > 0.5 { "failing" } else { "passing" }.to_owned()
            } else {
                c.unit.format(v)
            };
            let _ = write!(
                out,
                r##"<circle data-reading="value" cx="{:.1}" cy="{:.1}" r="2.2" fill="#1f78b4"><title>{} {}</title></circle>"##,
                f.x(p.at),
                f.y(v),
                esc(&p.at.clock()),
                esc(&text)
            );
        }
    }
}

fn value(p: &Point) -> f64 {
    match p.seen {
        Seen::Value(v) => v,
        _ => 0.0,
    }
}

/// Runs of readings without a value (no data, insufficient samples, source errors),
/// one mark per run, in the band below the plot.
fn without_value(out: &mut String, c: &Chart, f: &Frame) {
    let mut i = 0;
    while i < c.points.len() {
        let kind = match c.points[i].seen {
            Seen::Value(_) => {
                i += 1;
                continue;
            }
            Seen::NoData => ("no-data", "no data", "#999999"),
            Seen::Insufficient => ("insufficient", "insufficient samples", "#e69f00"),
            Seen::Error => ("source-error", "source error", "#d7191c"),
        };
        let start = i;
        while i < c.points.len() && same_kind(&c.points[i].seen, &c.points[start].seen) {
            i += 1;
        }
        let (first, last) = (c.points[start].at, c.points[i - 1].at);
        let (x0, x1) = (f.x(first), f.x(last));
        let _ = write!(
            out,
            r##"<rect data-reading="{}" x="{:.1}" y="{BAND}" width="{:.1}" height="10" fill="{}"><title>{}: {} reading{} from {} to {}</title></rect>"##,
            kind.0,
            x0 - 2.0,
            (x1 - x0).max(0.0) + 4.0,
            kind.2,
            kind.1,
            i - start,
            if i - start == 1 { "" } else { "s" },
            esc(&first.clock()),
            esc(&last.clock())
        );
    }
}

fn same_kind(a: &Seen, b: &Seen) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// A line per marker; its label goes in the first row above the plot where it does not
/// overlap another (markers close in time share the space); one that fits nowhere keeps
/// only its tooltip.
fn markers(out: &mut String, c: &Chart, f: &Frame) {
    let mut ends = [f64::MIN; LABEL_ROWS.len()];
    for m in &c.markers {
        let x = f.x(m.at);
        let width = 6.0 * m.label.chars().count() as f64;
        let (start, anchor) = if x + 2.0 + width > WIDTH - 4.0 {
            (x - 2.0 - width, "end")
        } else {
            (x + 2.0, "start")
        };
        let row = ends.iter().position(|&end| start > end + 4.0);
        let (top, label) = match row {
            Some(i) => {
                ends[i] = start + width;
                let tx = if anchor == "end" { x - 2.0 } else { x + 2.0 };
                (
                    LABEL_ROWS[i] + 2.0,
                    format!(
                        r##"<text x="{tx:.1}" y="{}" text-anchor="{anchor}" fill="{}">{}</text>"##,
                        LABEL_ROWS[i],
                        m.kind.colour(),
                        esc(&m.label)
                    ),
                )
            }
            None => (TOP, String::new()),
        };
        let _ = write!(
            out,
            r##"<g data-marker="{}"><line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{BOTTOM}" stroke="{}" stroke-width="1.2"/>{label}<title>{} {}</title></g>"##,
            m.kind.name(),
            m.kind.colour(),
            esc(&m.at.clock()),
            esc(&m.label)
        );
    }
}

fn legend(out: &mut String) {
    let items = [
        ("#1f78b4", "value"),
        ("#e31a1c", "threshold"),
        ("#fdd49e", "bound proved"),
        ("#999999", "no data"),
        ("#e69f00", "insufficient samples"),
        ("#d7191c", "source error"),
    ];
    let mut x = LEFT;
    for (colour, label) in items {
        let _ = write!(
            out,
            r##"<rect x="{x:.1}" y="{}" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="{}">{label}</text>"##,
            HEIGHT - 22.0,
            x + 14.0,
            HEIGHT - 13.0
        );
        x += 26.0 + 6.5 * label.len() as f64;
    }
}

/// Escapes text for SVG and HTML content and attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(s: u64, seen: Seen) -> Point {
        Point {
            at: Ts(s * 1000),
            seen,
        }
    }

    fn chart(points: Vec<Point>) -> Chart {
        Chart {
            title: "shop: error-rate <on> \"5xx\"".to_owned(),
            unit: Unit::Percent,
            check: false,
            threshold: Some((0.05, "> 5%".to_owned())),
            points,
            from: Ts(0),
            to: Ts(100_000),
            proof: Some((Ts(40_000), Ts(60_000), "for 20s".to_owned())),
            markers: vec![
                Marker {
                    at: Ts(30_000),
                    kind: MarkerKind::Change,
                    label: "change v1 -> v2".to_owned(),
                },
                Marker {
                    at: Ts(40_000),
                    kind: MarkerKind::Breach,
                    label: "breach".to_owned(),
                },
                Marker {
                    at: Ts(60_000),
                    kind: MarkerKind::Fired,
                    label: "fired".to_owned(),
                },
                Marker {
                    at: Ts(61_000),
                    kind: MarkerKind::Decision,
                    label: "roll back".to_owned(),
                },
                Marker {
                    at: Ts(65_000),
                    kind: MarkerKind::Step,
                    label: "step 1 ok".to_owned(),
                },
                Marker {
                    at: Ts(90_000),
                    kind: MarkerKind::Verification,
                    label: "verified".to_owned(),
                },
            ],
        }
    }

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    #[test]
    fn a_chart_marks_the_threshold_the_bound_and_every_moment_of_the_incident() {
        let svg = svg(&chart(vec![
            point(10, Seen::Value(0.01)),
            point(20, Seen::Value(0.02)),
            point(50, Seen::Value(0.2)),
        ]));
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        for marker in [
            "threshold",
            "for",
            "change",
            "breach",
            "fired",
            "decision",
            "step",
            "verification",
        ] {
            assert_eq!(
                count(&svg, &format!("data-marker=\"{marker}\"")),
                1,
                "{marker} in {svg}"
            );
        }
        assert!(svg.contains("threshold &gt; 5%"), "{svg}");
        assert!(svg.contains("change v1 -&gt; v2"));
        assert!(
            svg.contains("&lt;on&gt; &quot;5xx&quot;"),
            "the title is escaped"
        );
        assert!(!svg.contains("<on>"));
        assert_eq!(count(&svg, "<polyline data-reading=\"value\""), 1);
        assert_eq!(count(&svg, "<circle data-reading=\"value\""), 3);
    }

    #[test]
    fn readings_without_a_value_are_drawn_as_what_they_are_never_as_zero() {
        let svg = svg(&chart(vec![
            point(10, Seen::Value(0.01)),
            point(20, Seen::NoData),
            point(21, Seen::NoData),
            point(30, Seen::Insufficient),
            point(40, Seen::Error),
            point(50, Seen::Value(0.3)),
            point(60, Seen::Value(0.4)),
        ]));
        assert_eq!(count(&svg, "data-reading=\"no-data\""), 1, "one run");
        assert!(svg.contains("no data: 2 readings"), "{svg}");
        assert_eq!(count(&svg, "data-reading=\"insufficient\""), 1);
        assert_eq!(count(&svg, "data-reading=\"source-error\""), 1);
        // The line breaks at the gap: only the two values after it are joined, and no
        // value is drawn at zero (the bottom of the plot).
        assert_eq!(count(&svg, "<polyline data-reading=\"value\""), 1);
        assert_eq!(count(&svg, "<circle data-reading=\"value\""), 3);
        assert!(!svg.contains(&format!("cy=\"{BOTTOM:.1}\"")), "{svg}");
    }

    #[test]
    fn time_ticks_are_round_and_about_six() {
        assert_eq!(time_step(3_870), (1_000, false));
        assert_eq!(time_step(900), (200, true));
        assert_eq!(time_step(40 * 60_000), (600_000, false));
        assert_eq!(time_step(3 * 86_400_000), (43_200_000, false));
    }

    #[test]
    fn labels_of_markers_close_in_time_go_on_separate_rows() {
        let mut c = chart(vec![point(10, Seen::Value(0.01))]);
        for m in &mut c.markers {
            m.at = Ts(60_000);
        }
        let svg = svg(&c);
        let rows: Vec<&str> = LABEL_ROWS
            .iter()
            .filter(|y| svg.contains(&format!("y=\"{y}\" text-anchor")))
            .map(|_| "row")
            .collect();
        assert_eq!(rows.len(), LABEL_ROWS.len(), "{svg}");
        // Six markers, four rows: two keep only their tooltip, and each is still drawn.
        assert_eq!(count(&svg, "<g data-marker="), 8);
        assert_eq!(count(&svg, "<title>00:01:00.000 "), 6);
    }

    #[test]
    fn a_check_is_drawn_as_passing_and_failing_without_a_threshold_line() {
        let mut c = chart(vec![
            point(10, Seen::Value(0.0)),
            point(20, Seen::Value(1.0)),
        ]);
        c.check = true;
        c.threshold = None;
        let svg = svg(&c);
        assert!(svg.contains(">passing</text>") && svg.contains(">failing</text>"));
        assert_eq!(count(&svg, "data-marker=\"threshold\""), 0);
        assert!(svg.contains("<title>00:00:20.000 failing</title>"), "{svg}");
    }
}
