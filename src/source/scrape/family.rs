//! The rules of an exposition that span lines: which metric family each sample belongs
//! to, that a family's lines are together and its descriptors come once and first, that
//! no series appears twice, and the values a family's type allows (counters never
//! negative, histogram buckets cumulative up to a `+Inf` bucket that `_count` agrees
//! with, summaries' quantiles in [0, 1]). It sees one exposition at a time and knows
//! nothing of the signal or of earlier scrapes.

use std::collections::{HashMap, HashSet};

use super::exposition::{Descriptor, ParseError, Sample, number, shown, shown_number};

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    /// Untyped in the text format, unknown in OpenMetrics, and any sample without a type.
    Unknown,
}

impl Kind {
    fn parse(word: &str, openmetrics: bool) -> Option<Kind> {
        Some(match (word, openmetrics) {
            ("counter", _) => Kind::Counter,
            ("gauge", _) => Kind::Gauge,
            ("histogram", _) => Kind::Histogram,
            ("summary", _) => Kind::Summary,
            ("untyped", false) | ("unknown", true) => Kind::Unknown,
            ("gaugehistogram", true) => Kind::GaugeHistogram,
            ("info", true) => Kind::Info,
            ("stateset", true) => Kind::StateSet,
            _ => return None,
        })
    }

    /// What a sample's name adds to its family's name, by format.
    fn suffixes(self, openmetrics: bool) -> &'static [&'static str] {
        match (self, openmetrics) {
            (Kind::Counter, true) => &["_total", "_created"],
            (Kind::Histogram, true) => &["_bucket", "_count", "_sum", "_created"],
            (Kind::Histogram, false) => &["_bucket", "_count", "_sum"],
            (Kind::GaugeHistogram, _) => &["_bucket", "_gcount", "_gsum"],
            (Kind::Summary, true) => &["", "_count", "_sum", "_created"],
            (Kind::Summary, false) => &["", "_count", "_sum"],
            (Kind::Info, _) => &["_info"],
            _ => &[""],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::GaugeHistogram => "gaugehistogram",
            Kind::Summary => "summary",
            Kind::Info => "info",
            Kind::StateSet => "stateset",
            Kind::Unknown => "untyped",
        }
    }
}

/// The families of one exposition, read in order.
pub struct Families {
    openmetrics: bool,
    current: Option<Family>,
    /// Families already ended: their kind and first line.
    ended: HashMap<String, (Kind, usize)>,
}

struct Family {
    name: String,
    kind: Kind,
    first_line: usize,
    /// The descriptors seen, by keyword.
    described: Vec<&'static str>,
    sampled: bool,
    /// Every series' key, line and timestamp, to find one written twice.
    series: HashMap<String, (usize, Option<f64>)>,
    /// The metric (labels without `le`, `quantile` or a state) read now, and those
    /// ended, whose samples must be together in OpenMetrics.
    metric: String,
    metrics_ended: HashSet<String>,
    /// The buckets, count and sum of each histogram in the family, by metric.
    histograms: HashMap<String, Histogram>,
}

/// One histogram as it is read.
#[derive(Default)]
struct Histogram {
    /// The last bucket's bound and count.
    last: Option<(f64, f64)>,
    inf: Option<f64>,
    count: Option<f64>,
    sum: Option<f64>,
    /// Whether a bucket's bound is below 0.
    negative: bool,
    /// The last line of the histogram.
    line: usize,
}

type Step = Result<(), ParseError>;

impl Families {
    pub fn new(openmetrics: bool) -> Families {
        Families {
            openmetrics,
            current: None,
            ended: HashMap::new(),
        }
    }

    /// A `# TYPE`, `# HELP` or `# UNIT` line for `name`.
    pub fn descriptor(&mut self, line: usize, name: &str, d: Descriptor) -> Step {
        let err = |reason: String| Err(ParseError { line, reason });
        let keyword = d.keyword();
        if self.current.as_ref().is_none_or(|f| f.name != name) {
            if let Some((_, first)) = self.ended.get(name) {
                return err(split(name, *first));
            }
            self.start(line, name)?;
        }
        let openmetrics = self.openmetrics;
        let family = self.current.as_mut().expect("started above");
        if family.sampled {
            return err(format!("# {keyword} {name} comes after samples of {name}"));
        }
        if family.described.contains(&keyword) {
            return err(format!("a second # {keyword} for {name}"));
        }
        family.described.push(keyword);
        if let Descriptor::Type(word) = d {
            family.kind = Kind::parse(word, openmetrics).ok_or_else(|| ParseError {
                line,
                reason: format!("# TYPE {name} has unknown type {}", shown(word)),
            })?;
        }
        if let Descriptor::Unit(unit) = d
            && !unit.is_empty()
            && !name.ends_with(&format!("_{unit}"))
        {
            return err(format!(
                "# UNIT {name} is {unit}, but the name does not end in _{unit}"
            ));
        }
        if matches!(family.kind, Kind::Info | Kind::StateSet) && family.described.contains(&"UNIT")
        {
            return err(format!(
                "{} {name} cannot have a # UNIT",
                family.kind.name()
            ));
        }
        if let Descriptor::Type(_) = d
            && openmetrics
            && let Some(clash) = self.clash(name, family_kind(&self.current))
        {
            return err(clash);
        }
        Ok(())
    }

    /// Why a family `name` of `kind` clashes with an ended one, if it does: a sample
    /// name of one would be the name of the other.
    fn clash(&self, name: &str, kind: Kind) -> Option<String> {
        // The earliest family that matches, so the reason never depends on map order.
        self.ended
            .iter()
            .filter(|(other, (other_kind, _))| {
                let of = |a: &str, k: Kind, b: &str| {
                    k.suffixes(true)
                        .iter()
                        .any(|s| !s.is_empty() && format!("{a}{s}") == b)
                };
                of(name, kind, other) || of(other, *other_kind, name)
            })
            .min_by_key(|(_, (_, first))| *first)
            .map(|(other, (_, first))| {
                format!("the names of {name} clash with metric family {other} of line {first}")
            })
    }

    /// A sample line: finds its family, then checks it against the family's type.
    pub fn sample(&mut self, line: usize, sample: &Sample) -> Step {
        let err = |reason: String| ParseError { line, reason };
        let openmetrics = self.openmetrics;
        let suffix = self
            .current
            .as_ref()
            .and_then(|f| member(&f.name, f.kind, sample.name, openmetrics));
        let suffix = match suffix {
            Some(suffix) => suffix,
            None => {
                if let Some(owner) = self.owner(sample.name) {
                    return Err(err(owner));
                }
                if let Some(f) = self.current.as_ref().filter(|f| f.name == sample.name) {
                    let names = f.kind.suffixes(openmetrics).join(", ");
                    return Err(err(format!(
                        "{} is not a sample name of {} {}, whose samples end in {names}",
                        sample.name,
                        f.kind.name(),
                        f.name
                    )));
                }
                self.start(line, sample.name)?;
                ""
            }
        };
        let family = self.current.as_mut().expect("a family is current");
        family.sampled = true;
        family.repeat(line, sample).map_err(err)?;
        if openmetrics {
            family.together(sample).map_err(err)?;
        }
        family.check(line, suffix, sample, openmetrics).map_err(err)
    }

    /// The end of the exposition: the last family is complete.
    pub fn finish(&mut self) -> Step {
        match self.current.take() {
            Some(family) => family.finish(self.openmetrics),
            None => Ok(()),
        }
    }

    /// Ends the current family and starts one named `name`.
    fn start(&mut self, line: usize, name: &str) -> Step {
        if let Some(family) = self.current.take() {
            self.ended
                .insert(family.name.clone(), (family.kind, family.first_line));
            family.finish(self.openmetrics)?;
        }
        self.current = Some(Family {
            name: name.to_owned(),
            kind: Kind::Unknown,
            first_line: line,
            described: Vec::new(),
            sampled: false,
            series: HashMap::new(),
            metric: String::new(),
            metrics_ended: HashSet::new(),
            histograms: HashMap::new(),
        });
        Ok(())
    }

    /// Why a sample named `name` would split an ended family, if it belongs to one.
    fn owner(&self, name: &str) -> Option<String> {
        // The earliest family that owns it, so the reason never depends on map order.
        self.ended
            .iter()
            .filter(|(family, (kind, _))| member(family, *kind, name, self.openmetrics).is_some())
            .min_by_key(|(_, (_, first))| *first)
            .map(|(family, (_, first))| split(family, *first))
    }
}

/// The suffix that makes `name` a sample of the family, if it is one.
fn member(family: &str, kind: Kind, name: &str, openmetrics: bool) -> Option<&'static str> {
    let suffix = name.strip_prefix(family)?;
    kind.suffixes(openmetrics)
        .iter()
        .find(|s| **s == suffix)
        .copied()
}

fn family_kind(family: &Option<Family>) -> Kind {
    family.as_ref().map_or(Kind::Unknown, |f| f.kind)
}

fn split(family: &str, first: usize) -> String {
    format!(
        "metric family {family} is split: it began at line {first}, and a family's lines must be together"
    )
}

fn shown_series(sample: &Sample) -> String {
    super::series_key(sample.name, &sample.labels)
}

impl Family {
    /// A series may be written again only at a later time or the same: both with a
    /// timestamp, the second not earlier. The reading keeps the last.
    fn repeat(&mut self, line: usize, s: &Sample) -> Result<(), String> {
        let key = super::series_key(s.name, &s.labels);
        if let Some((first, before)) = self.series.insert(key, (line, s.timestamp)) {
            let ordered = matches!((before, s.timestamp), (Some(a), Some(b)) if b >= a);
            if !ordered {
                return Err(format!(
                    "{} appears again after line {first}, without a later timestamp",
                    shown_series(s)
                ));
            }
        }
        Ok(())
    }

    /// In OpenMetrics, the samples of one metric (one label set) are together.
    fn together(&mut self, s: &Sample) -> Result<(), String> {
        let state = (self.kind == Kind::StateSet).then_some(self.name.as_str());
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le" && k != "quantile" && Some(k.as_str()) != state)
            .cloned()
            .collect();
        labels.sort();
        let metric = super::series_key("", &labels);
        if metric == self.metric {
            return Ok(());
        }
        if self.metrics_ended.contains(&metric) {
            return Err(format!(
                "the samples of {}{metric} are split by those of other labels; they must be together",
                self.name
            ));
        }
        let before = std::mem::replace(&mut self.metric, metric);
        self.metrics_ended.insert(before);
        Ok(())
    }

    /// Checks a sample's value and labels against the family's type.
    fn check(
        &mut self,
        line: usize,
        suffix: &str,
        s: &Sample,
        openmetrics: bool,
    ) -> Result<(), String> {
        let v = s.value;
        let series = shown_series(s);
        let text_counter = !openmetrics && suffix.is_empty();
        match (self.kind, suffix) {
            (Kind::Counter, _) if text_counter || suffix == "_total" => {
                counted(&series, v, "a counter")?
            }
            (_, "_created") if !v.is_finite() => {
                return Err(format!("{series} is {}, not a time", shown_number(v)));
            }
            (Kind::Histogram | Kind::GaugeHistogram, "_bucket") => {
                self.bucket(line, s, openmetrics)?
            }
            (
                Kind::Histogram | Kind::GaugeHistogram | Kind::Summary,
                "_count" | "_gcount" | "_sum" | "_gsum",
            ) => self.total(line, suffix, s, openmetrics)?,
            (Kind::Summary, "") => quantile(s, openmetrics)?,
            (Kind::Info, _) if v != 1.0 => {
                return Err(format!("{series} is {}; an info is 1", shown_number(v)));
            }
            (Kind::StateSet, _) => self.state(s)?,
            _ => {}
        }
        let exemplar_allowed = matches!(
            (self.kind, suffix),
            (Kind::Counter, "_total") | (Kind::Histogram | Kind::GaugeHistogram, "_bucket")
        );
        if openmetrics && s.exemplar && !exemplar_allowed {
            return Err(format!(
                "{series} has an exemplar; only counter _total and histogram _bucket samples may"
            ));
        }
        Ok(())
    }

    /// A count (`_count`, `_gcount`) or sum (`_sum`, `_gsum`) of a histogram or summary.
    fn total(
        &mut self,
        line: usize,
        suffix: &str,
        s: &Sample,
        openmetrics: bool,
    ) -> Result<(), String> {
        let (v, series) = (s.value, shown_series(s));
        let count = suffix.ends_with("count");
        if count {
            counted(&series, v, "a count")?;
        } else if v.is_nan() {
            return Err(format!("{series} is NaN"));
        }
        if openmetrics && s.label("le").is_some() {
            return Err(format!("{series} has an le label, which only buckets have"));
        }
        if self.kind == Kind::Summary {
            if openmetrics && !count && v < 0.0 {
                return Err(format!(
                    "{series} is {}; a summary's sum cannot be negative",
                    shown_number(v)
                ));
            }
            return Ok(());
        }
        let histogram = self.histograms.entry(without(s, "le")).or_default();
        if count {
            histogram.count = Some(v);
        } else {
            histogram.sum = Some(v);
        }
        histogram.line = line;
        Ok(())
    }

    /// A state of a state set: labelled with the family's name, 0 or 1.
    fn state(&self, s: &Sample) -> Result<(), String> {
        let series = shown_series(s);
        if s.label(&self.name).is_none() {
            return Err(format!("{series} has no label {}", self.name));
        }
        if s.value != 0.0 && s.value != 1.0 {
            return Err(format!(
                "{series} is {}; a state is 0 or 1",
                shown_number(s.value)
            ));
        }
        Ok(())
    }

    /// A `_bucket` sample: an `le` that is a number above the one before, and a count at
    /// least the one before.
    fn bucket(&mut self, line: usize, s: &Sample, openmetrics: bool) -> Result<(), String> {
        let series = shown_series(s);
        let text = s
            .label("le")
            .ok_or_else(|| format!("{series} has no le label"))?;
        let le = number(text)
            .filter(|le| !le.is_nan())
            .ok_or_else(|| format!("{series} has le={text:?}, not a number"))?;
        if openmetrics && le == f64::INFINITY && text != "+Inf" {
            return Err(format!(
                "{series} has le={text:?}; OpenMetrics writes it +Inf"
            ));
        }
        counted(&series, s.value, "a bucket")?;
        let histogram = self.histograms.entry(without(s, "le")).or_default();
        if let Some((last_le, last_count)) = histogram.last {
            if le <= last_le {
                return Err(format!(
                    "{series} comes after le=\"{}\"; buckets must be in increasing le order",
                    shown_number(last_le)
                ));
            }
            if s.value < last_count {
                return Err(format!(
                    "{series} is {}, less than {} of le=\"{}\"; buckets are cumulative",
                    shown_number(s.value),
                    shown_number(last_count),
                    shown_number(last_le)
                ));
            }
        }
        histogram.last = Some((le, s.value));
        histogram.negative |= le < 0.0;
        histogram.line = line;
        if le == f64::INFINITY {
            histogram.inf = Some(s.value);
        }
        Ok(())
    }

    /// Checks what needs the whole family: every histogram has a `+Inf` bucket and its
    /// count agrees with it; in OpenMetrics, a count and a sum come together, and a sum is
    /// not negative, nor there at all in a histogram with a bucket below 0. The earliest
    /// line wins when several are wrong.
    fn finish(self, openmetrics: bool) -> Step {
        let mut worst: Option<ParseError> = None;
        for (labels, h) in &self.histograms {
            let Some(reason) = self.incomplete(labels, h, openmetrics) else {
                continue;
            };
            if worst.as_ref().is_none_or(|w| h.line < w.line) {
                worst = Some(ParseError {
                    line: h.line,
                    reason,
                });
            }
        }
        worst.map_or(Ok(()), Err)
    }

    /// What is wrong with a histogram read whole, if anything.
    fn incomplete(&self, labels: &str, h: &Histogram, openmetrics: bool) -> Option<String> {
        let gauge = self.kind == Kind::GaugeHistogram;
        let (count, sum) = if gauge {
            ("_gcount", "_gsum")
        } else {
            ("_count", "_sum")
        };
        let name = &self.name;
        let inf = match h.inf {
            None => {
                return Some(format!(
                    "histogram {name}{labels} has no le=\"+Inf\" bucket"
                ));
            }
            Some(inf) => inf,
        };
        if let Some(c) = h.count.filter(|c| *c != inf) {
            return Some(format!(
                "{name}{count}{labels} is {}, but its le=\"+Inf\" bucket is {}; they must agree",
                shown_number(c),
                shown_number(inf)
            ));
        }
        if !openmetrics {
            return None;
        }
        if h.count.is_some() != h.sum.is_some() {
            return Some(format!(
                "{name}{labels} has one of {count} and {sum} without the other"
            ));
        }
        match h.sum {
            Some(_) if h.negative && !gauge => Some(format!(
                "{name}{labels} has a bucket below 0, so it cannot have a {sum}"
            )),
            Some(v) if v < 0.0 && !h.negative => Some(format!(
                "{name}{sum}{labels} is {}, but no bucket is below 0",
                shown_number(v)
            )),
            _ => None,
        }
    }
}

/// A summary's quantile sample: a `quantile` label in [0, 1]; in OpenMetrics, a value
/// that is not negative (NaN when there are no observations).
fn quantile(s: &Sample, openmetrics: bool) -> Result<(), String> {
    let series = shown_series(s);
    let q = s
        .label("quantile")
        .ok_or_else(|| format!("{series} has no quantile label"))?;
    if !number(q).is_some_and(|q| (0.0..=1.0).contains(&q)) {
        return Err(format!(
            "{series} has quantile={q:?}, not a number in [0, 1]"
        ));
    }
    if openmetrics && s.value < 0.0 {
        return Err(format!(
            "{series} is {}; a summary's quantile cannot be negative",
            shown_number(s.value)
        ));
    }
    Ok(())
}

/// A counter, bucket or count: a number of events, never negative, NaN or infinite.
fn counted(series: &str, v: f64, what: &str) -> Result<(), String> {
    if v.is_finite() && v >= 0.0 {
        return Ok(());
    }
    let why = if v < 0.0 {
        "negative"
    } else {
        "not a finite number"
    };
    Err(format!(
        "{series} is {}, and {what} cannot be {why}",
        shown_number(v)
    ))
}

/// The labels of a sample without `label`, sorted, as a key.
fn without(s: &Sample, label: &str) -> String {
    let labels: Vec<(String, String)> = s
        .labels
        .iter()
        .filter(|(k, _)| k != label)
        .cloned()
        .collect();
    super::series_key("", &labels)
}
