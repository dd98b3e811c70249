//! The figures of a bench run: latency histograms, ratios to the ceilings,
//! and the verdict (which invariants failed).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Longest latency a histogram tells apart (one hour); longer ones are
/// recorded as one hour.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub(super) struct Latency {
    hist: Histogram<u64>,
}

impl Latency {
    pub(super) fn new() -> Latency {
        // 1 us .. 1 h at 3 significant digits: fixed bounds that are valid.
        let hist = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_US, 3)
            .unwrap_or_else(|e| unreachable!("fixed histogram bounds are valid: {e}"));
        Latency { hist }
    }

    /// Records `us` microseconds (negative values, from clocks read a
    /// moment apart, count as 0; beyond an hour as an hour).
    pub(super) fn record_us(&mut self, us: i64) {
        self.hist.saturating_record(us.max(0) as u64);
    }

    pub(super) fn record(&mut self, d: Duration) {
        self.record_us(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    }

    /// `{count, p50, p90, p99, p999, max}` in milliseconds (3 decimals);
    /// the quantiles are null when nothing was recorded.
    pub(super) fn summary_ms(&self) -> Value {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.hist.is_empty() {
            return json!({
                "count": 0, "p50": null, "p90": null, "p99": null, "p999": null, "max": null,
            });
        }
        json!({
            "count": self.hist.len(),
            "p50": ms(self.hist.value_at_quantile(0.50)),
            "p90": ms(self.hist.value_at_quantile(0.90)),
            "p99": ms(self.hist.value_at_quantile(0.99)),
            "p999": ms(self.hist.value_at_quantile(0.999)),
            "max": ms(self.hist.max()),
        })
    }
}

/// `figure / ceiling`, rounded to 3 decimals; `None` when either is not a
/// positive finite number (a ceiling not measured, or nothing decided).
pub(super) fn ratio(figure: f64, ceiling: f64) -> Option<f64> {
    if !figure.is_finite() || !ceiling.is_finite() || ceiling <= 0.0 || figure < 0.0 {
        return None;
    }
    Some((figure / ceiling * 1000.0).round() / 1000.0)
}

/// The measured batch size closest to `batch_max`, by ratio (so 1024 is
/// closer to 2000 than 256 is to 500): the processor decides at most
/// `batch_max` requests per call, and the one-call-per-batch ceiling of
/// that size is the one its decision rate is compared with.
pub(super) fn closest_batch(sizes: &[usize], batch_max: usize) -> Option<usize> {
    let target = (batch_max.max(1) as f64).ln();
    sizes.iter().copied().filter(|s| *s > 0).min_by(|a, b| {
        let da = ((*a as f64).ln() - target).abs();
        let db = ((*b as f64).ln() - target).abs();
        da.total_cmp(&db)
    })
}

/// The entries of the invariants object that are not zero, as
/// `(name, count)`: any of them fails the run. A value that is not a
/// count fails it too (it cannot be read as "nothing wrong").
pub(super) fn failures(invariants: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    invariants
        .iter()
        .filter(|(_, v)| v.as_u64() != Some(0))
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_has_no_failures_and_any_nonzero_entry_is_one() {
        let mut inv = serde_json::Map::new();
        inv.insert("oversold".into(), json!(0));
        inv.insert("undecided_requests".into(), json!(0));
        inv.insert("conflicting_decisions_seen".into(), json!(0));
        assert!(failures(&inv).is_empty());

        inv.insert("undecided_requests".into(), json!(7));
        assert_eq!(
            failures(&inv),
            vec![("undecided_requests".to_owned(), "7".to_owned())]
        );
        inv.insert("conflicting_decisions_seen".into(), json!(1));
        inv.insert("oversold".into(), json!(2));
        let names: Vec<String> = failures(&inv).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "conflicting_decisions_seen",
                "oversold",
                "undecided_requests"
            ]
        );
    }

    #[test]
    fn an_invariant_that_is_not_a_count_fails_the_run() {
        let mut inv = serde_json::Map::new();
        inv.insert("oversold".into(), json!(null));
        inv.insert("counters".into(), json!(-1));
        assert_eq!(failures(&inv).len(), 2);
    }

    #[test]
    fn ratios_of_figures_to_ceilings() {
        assert_eq!(ratio(50_000.0, 200_000.0), Some(0.25));
        assert_eq!(ratio(1.0, 3.0), Some(0.333));
        assert_eq!(ratio(0.0, 10.0), Some(0.0));
        // Nothing to compare with: no ratio rather than inf or NaN.
        assert_eq!(ratio(10.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 10.0), None);
        assert_eq!(ratio(10.0, f64::NAN), None);
        assert_eq!(ratio(-1.0, 10.0), None);
    }

    #[test]
    fn the_batch_ceiling_compared_is_the_size_closest_to_batch_max() {
        let sizes = [64, 256, 1024];
        assert_eq!(closest_batch(&sizes, 2000), Some(1024));
        assert_eq!(closest_batch(&sizes, 1024), Some(1024));
        assert_eq!(closest_batch(&sizes, 300), Some(256));
        // By ratio, not difference: 600 is 1.7x from 1024 but 2.3x from 256.
        assert_eq!(closest_batch(&sizes, 600), Some(1024));
        assert_eq!(closest_batch(&sizes, 100), Some(64));
        assert_eq!(closest_batch(&sizes, 1), Some(64));
        // 512 is 2x from both 256 and 1024: either is as close.
        assert!(matches!(closest_batch(&sizes, 512), Some(256 | 1024)));
        assert_eq!(closest_batch(&[], 2000), None);
    }

    #[test]
    fn latency_quantiles_come_from_the_histogram_in_ms() {
        let mut l = Latency::new();
        assert_eq!(l.summary_ms()["p50"], Value::Null);
        for ms in 1..=1000 {
            l.record(Duration::from_millis(ms));
        }
        l.record_us(-5);
        let s = l.summary_ms();
        assert_eq!(s["count"], 1001);
        let p50 = s["p50"].as_f64().expect("p50");
        let p99 = s["p99"].as_f64().expect("p99");
        let max = s["max"].as_f64().expect("max");
        // 3 significant digits: within 0.1 % of the exact value.
        assert!((p50 - 500.0).abs() <= 0.6, "{s}");
        assert!((p99 - 990.0).abs() <= 1.0, "{s}");
        assert!((max - 1000.0).abs() <= 1.0, "{s}");
        assert!(s["p90"].as_f64().expect("p90") <= p99 && p99 <= s["p999"].as_f64().expect("p999"));
    }
}
