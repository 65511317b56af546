//! Per-transform counters, shared with the metrics module through an `Arc`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::error::FailureKind;

/// Upper bounds (inclusive, milliseconds) of the batch-latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [f64; 9] = [0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0];

/// Counters for one transform in the chain. All fields but `instances` only ever grow.
#[derive(Debug, Default)]
pub struct TransformStats {
    /// Calls into the guest's `transform-batch` (including one-by-one re-runs after a trap).
    pub invocations: AtomicU64,
    /// Rows handed to the transform (each counted once, re-runs excluded).
    pub rows_in: AtomicU64,
    /// Rows the transform emitted that went on down the chain.
    pub rows_out: AtomicU64,
    /// Input rows the transform filtered out (it emitted zero rows for them). A row that failed
    /// counts in `rows_failed` only, whatever the `on_error` policy did with its record.
    pub rows_dropped: AtomicU64,
    /// Input rows that failed (guest error, trap, timeout, memory, fuel, protocol, output limit).
    pub rows_failed: AtomicU64,
    /// `rows_failed` by how each row failed, indexed like [`FailureKind::ALL`]: a run that
    /// quarantines a few guest errors and one that quarantines timeouts call for different fixes.
    pub rows_failed_by_kind: [AtomicU64; FailureKind::ALL.len()],
    /// Rows the transform emitted that were thrown away because their record failed on another
    /// of its rows (one a flat-map upstream split it into): a record fails as a whole.
    pub rows_discarded: AtomicU64,
    /// Rows in a batch that failed as a whole in this transform (too many of its rows timed out,
    /// or no instance could be built): not out, dropped or failed, but left unprocessed, their
    /// records kept for a later run. For the last transform, also the rows it emitted from a
    /// batch that failed in another worker's part: nothing of that batch comes out.
    pub rows_unfinished: AtomicU64,
    /// Batch calls that trapped or broke the contract while none of their rows did so run alone
    /// (each row ran again alone, and came out right): a transform that breaks only on batches.
    pub batch_only_failures: AtomicU64,
    /// Times an instance was thrown away and rebuilt after a trap or limit.
    pub instance_restarts: AtomicU64,
    /// Instances alive now, across the workers: a gauge, not a count (each holds up to
    /// `memory_mb`).
    pub instances: AtomicU64,
    /// Fuel consumed by the guest, when the transform sets `fuel`.
    pub fuel_consumed: AtomicU64,
    /// Batch-call latency histogram: `latency_buckets[i]` counts calls that took at most
    /// `LATENCY_BUCKETS_MS[i]` (cumulative, Prometheus style).
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    /// Sum of all batch-call latencies, in nanoseconds (a call of a few rows can take less than a
    /// microsecond).
    pub latency_sum_ns: AtomicU64,
    /// Number of observations in the latency histogram.
    pub latency_count: AtomicU64,
}

impl TransformStats {
    /// Records one batch call's latency.
    pub fn observe_latency(&self, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        for (bound, bucket) in LATENCY_BUCKETS_MS.iter().zip(&self.latency_buckets) {
            if ms <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// Counts one input row that failed as `kind`.
    pub(crate) fn note_failed(&self, kind: FailureKind) {
        self.rows_failed.fetch_add(1, Relaxed);
        self.rows_failed_by_kind[kind as usize].fetch_add(1, Relaxed);
    }

    /// The kinds rows failed as, with how many rows each, in [`FailureKind::ALL`] order.
    pub fn failed_by_kind(&self) -> impl Iterator<Item = (FailureKind, u64)> + '_ {
        (FailureKind::ALL.iter().zip(&self.rows_failed_by_kind))
            .map(|(kind, n)| (*kind, n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative() {
        let s = TransformStats::default();
        s.observe_latency(Duration::from_micros(300));
        s.observe_latency(Duration::from_millis(20));
        let counts: Vec<u64> = s.latency_buckets.iter().map(|b| b.load(Relaxed)).collect();
        assert_eq!(counts, [0, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(s.latency_count.load(Relaxed), 2);
        assert_eq!(s.latency_sum_ns.load(Relaxed), 20_300_000);
    }

    #[test]
    fn failed_rows_are_counted_by_kind() {
        // `note_failed` indexes by discriminant, so `ALL` must list the kinds in that order.
        for (i, kind) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{kind:?}");
        }
        let s = TransformStats::default();
        for kind in [
            FailureKind::Timeout,
            FailureKind::Guest,
            FailureKind::Timeout,
        ] {
            s.note_failed(kind);
        }
        assert_eq!(s.rows_failed.load(Relaxed), 3);
        let by_kind: Vec<_> = s.failed_by_kind().collect();
        assert_eq!(
            by_kind,
            [(FailureKind::Guest, 1), (FailureKind::Timeout, 2)]
        );
    }
}
