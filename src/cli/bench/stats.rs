//! Latency statistics for the benchmark: percentiles, mean and throughput of one mode, and how a
//! proxied mode compares with the direct one. Pure functions over durations.

use std::time::Duration;

use serde::Serialize;

/// What one mode measured, in milliseconds and calls per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub mean_ms: f64,
    /// Measured calls over the wall time of the rounds that made them (warm-up excluded).
    pub calls_per_s: f64,
}

/// A proxied mode against the direct one. The differences are of the percentiles, not percentiles
/// of per-call differences: the two modes' calls are not paired.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Added {
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    pub added_p999_ms: f64,
    pub ratio_p50: f64,
    /// This mode's calls/s over the direct mode's.
    pub ratio_calls_per_s: f64,
}

impl Summary {
    /// Summarises `latencies`, made over `busy` wall time. An empty sample is all zeros.
    pub fn of(latencies: &[Duration], busy: Duration) -> Summary {
        let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let mean_ms = if ms.is_empty() { 0.0 } else { ms.iter().sum::<f64>() / ms.len() as f64 };
        let calls_per_s = if busy.is_zero() { 0.0 } else { ms.len() as f64 / busy.as_secs_f64() };
        Summary {
            calls: ms.len(),
            p50_ms: percentile(&ms, 0.50),
            p99_ms: percentile(&ms, 0.99),
            p999_ms: percentile(&ms, 0.999),
            mean_ms,
            calls_per_s,
        }
    }

    /// How much slower this (proxied) mode is than `direct`.
    pub fn added_to(&self, direct: &Summary) -> Added {
        Added {
            added_p50_ms: self.p50_ms - direct.p50_ms,
            added_p99_ms: self.p99_ms - direct.p99_ms,
            added_p999_ms: self.p999_ms - direct.p999_ms,
            ratio_p50: ratio(self.p50_ms, direct.p50_ms),
            ratio_calls_per_s: ratio(self.calls_per_s, direct.calls_per_s),
        }
    }
}

/// `a / b`, or NaN (printed as such, serialised as null) when there is nothing to divide by.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// The nearest-rank percentile `q` (0..=1) of an ascending sample: an observed value, never an
/// interpolation, so a p99 over 2,000 calls is the 1,980th fastest call.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred() {
        let mut sample = ms(1..=100);
        // Order of arrival does not matter.
        sample.reverse();
        let s = Summary::of(&sample, Duration::from_secs(2));
        assert_eq!(s.calls, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.p999_ms, 100.0);
        assert!((s.mean_ms - 50.5).abs() < 1e-9, "{}", s.mean_ms);
        assert!((s.calls_per_s - 50.0).abs() < 1e-9, "{}", s.calls_per_s);
    }

    #[test]
    fn one_call_is_every_percentile() {
        let s = Summary::of(&ms([7]), Duration::from_millis(7));
        assert_eq!((s.p50_ms, s.p99_ms, s.mean_ms), (7.0, 7.0, 7.0));
    }

    #[test]
    fn no_calls_summarise_to_zeros_rather_than_panicking() {
        let s = Summary::of(&[], Duration::ZERO);
        assert_eq!(
            (s.calls, s.p50_ms, s.p99_ms, s.mean_ms, s.calls_per_s),
            (0, 0.0, 0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn added_latency_and_ratio_against_direct() {
        let direct = Summary::of(&ms([2, 2, 4]), Duration::from_secs(1));
        let proxied = Summary::of(&ms([3, 3, 7]), Duration::from_secs(1));
        let added = proxied.added_to(&direct);
        assert_eq!(added.added_p50_ms, 1.0);
        assert_eq!(added.added_p99_ms, 3.0);
        assert_eq!(added.ratio_p50, 1.5);
        assert_eq!(added.added_p999_ms, 3.0);
        assert_eq!(added.ratio_calls_per_s, 1.0);
    }
}
