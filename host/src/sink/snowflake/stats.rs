//! Counters and latency histograms of the Snowflake sink, rendered as Prometheus text by the
//! metrics module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in milliseconds (`+Inf` is implicit).
pub const LATENCY_BUCKETS_MS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

/// A fixed-bucket latency histogram with cumulative bucket counts, like Prometheus' own.
#[derive(Debug, Default)]
pub struct Histogram {
    /// `buckets[i]` counts observations `<= LATENCY_BUCKETS_MS[i]` (cumulative).
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    /// Sum of all observations, in microseconds.
    sum_us: AtomicU64,
    /// Number of observations.
    count: AtomicU64,
}

/// A consistent-enough copy of a [`Histogram`] for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)` per bucket, `+Inf` excluded (it equals `count`).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        for (bound, bucket) in LATENCY_BUCKETS_MS.iter().zip(&self.buckets) {
            if ms <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads the current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: LATENCY_BUCKETS_MS
                .iter()
                .zip(&self.buckets)
                .map(|(b, c)| (*b as f64 / 1000.0, c.load(Ordering::Relaxed)))
                .collect(),
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// Statistics of one sink, shared (`Arc`) with the metrics module.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Files staged (uploaded or found already present), each try of a load that is tried again
    /// included.
    pub files: AtomicU64,
    /// Files loaded by a committed transaction: what a summary counts.
    pub files_loaded: AtomicU64,
    /// Compressed bytes uploaded to the stage.
    pub bytes: AtomicU64,
    /// Uploads skipped because the object already existed (S3 HEAD).
    pub uploads_skipped: AtomicU64,
    /// Rows COPY reported loaded.
    pub rows_loaded: AtomicU64,
    /// Rows sent to the dead-letter channel by the sink.
    pub rows_dead_lettered: AtomicU64,
    /// Rows not loaded because another delivery of their record is, or was (see
    /// [`SinkSummary::rows_redelivered`](super::sink::SinkSummary::rows_redelivered)).
    pub rows_redelivered: AtomicU64,
    /// Warehouse transactions committed (each moves one partition's offsets row).
    pub commits: AtomicU64,
    /// HTTP requests retried (query-request, login, stage uploads).
    pub retries: AtomicU64,
    /// Session renewals or re-logins.
    pub session_renewals: AtomicU64,
    /// Latency of PUT plus the upload it asks for.
    pub put_latency: Histogram,
    /// Latency of the COPY + offsets transaction, BEGIN to COMMIT.
    pub copy_latency: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.005, 1));
        assert_eq!(s.buckets[3], (0.05, 2));
        assert_eq!(s.buckets.last().unwrap().1, 2);
        assert!((s.sum_seconds - 60.033).abs() < 1e-9);
    }
}
