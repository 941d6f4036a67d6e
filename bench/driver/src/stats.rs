//! Percentiles of one run, and what the runs of a whole session collected.
//!
//! Every figure is a named sample per run ([`Results::add`]); the table shows each name's
//! median over the runs with the min-max range. Failures (a timeout, lost messages) are kept as
//! notes next to the figures rather than silently dropped.

use std::collections::BTreeMap;

/// The `p`-th percentile (0..=100) of `sorted` (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts `v` and returns its p50, p90 and p99.
pub fn p50_p90_p99(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        percentile(v, 50.0),
        percentile(v, 90.0),
        percentile(v, 99.0),
    )
}

/// Median, min and max of the runs of one figure.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Median over the runs.
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
    /// How many runs produced the figure.
    pub runs: usize,
}

/// Everything a session measured.
#[derive(Default)]
pub struct Results {
    /// Figure name -> one value per run that produced it.
    samples: BTreeMap<&'static str, Vec<f64>>,
    /// Figure name -> why a run did not produce it.
    failures: BTreeMap<&'static str, Vec<String>>,
    /// Observations to print under the table (errors, lost messages, checks).
    pub notes: Vec<String>,
    /// The run in progress (1-based; 0 = outside any run), prefixed to notes.
    pub run: usize,
}

impl Results {
    /// Records one run's value of `key`.
    pub fn add(&mut self, key: &'static str, v: f64) {
        if v.is_finite() {
            self.samples.entry(key).or_default().push(v);
        }
    }

    /// Records that a run could not produce `key`, and why (shown in the cell and the notes).
    pub fn fail(&mut self, key: &'static str, why: impl Into<String>) {
        let why = why.into();
        self.note(format!("{key}: {why}"));
        self.failures.entry(key).or_default().push(why);
    }

    /// Adds a note.
    pub fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        match self.run {
            0 => self.notes.push(s),
            run => self.notes.push(format!("run {run}: {s}")),
        }
    }

    /// The summary of `key` over the runs, if any run produced it.
    pub fn summary(&self, key: &str) -> Option<Summary> {
        let mut v = self.samples.get(key)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            runs: n,
        })
    }

    /// The median of `key`.
    pub fn median(&self, key: &str) -> Option<f64> {
        self.summary(key).map(|s| s.median)
    }

    /// How many runs failed to produce `key`, with the first reason.
    pub fn failure(&self, key: &str) -> Option<(usize, &str)> {
        let f = self.failures.get(key)?;
        Some((f.len(), f.first()?.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(p50_p90_p99(&mut v), (50.0, 90.0, 99.0));
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn summary_is_median_min_max() {
        let mut r = Results::default();
        for v in [3.0, 1.0, 2.0, 10.0] {
            r.add("x", v);
        }
        let s = r.summary("x").expect("summary");
        assert_eq!((s.median, s.min, s.max, s.runs), (2.5, 1.0, 10.0, 4));
        assert!(r.summary("y").is_none());
    }
}
