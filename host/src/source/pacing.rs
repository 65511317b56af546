//! Replay pacing: when each row may be sent.
//!
//! `rate` and `event_time` keep an absolute schedule (row *n* is due at a fixed instant), so a
//! slow send is caught up afterwards and the average rate holds over a long replay. `fixed`
//! waits its delay after the previous row was released, like the seed's `sleep(1)` loop: rows
//! never come closer together than the delay.

use std::time::Duration;

use tokio::time::Instant;

use super::config::Pacing;

/// A wait longer than any replay: where a schedule would overflow (a rate of 1e-300 rows/s).
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `seconds` as a duration; `None` where none can hold it (too large, or not a number).
fn secs(seconds: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(seconds).ok()
}

/// Computes each row's release instant.
#[derive(Debug)]
pub struct Pacer {
    mode: Mode,
    /// When the previous row was due (or released, for `fixed`).
    last: Option<Instant>,
    /// The latest event time seen so far, microseconds: the replayed feed's clock.
    last_event_us: Option<i64>,
    /// The event time of the previous row, when it was further behind the clock than
    /// `max_gap` of replay: a lone late row if the next row is back on the clock, else where
    /// the feed stepped back to.
    back: Option<i64>,
    /// Rows scheduled so far, for `rate`.
    count: u64,
    start: Option<Instant>,
}

#[derive(Debug)]
enum Mode {
    None,
    Fixed(Duration),
    Rate(f64),
    EventTime { speed: f64, max_gap: Duration },
}

impl Pacer {
    /// A pacer for a configured mode.
    pub fn new(pacing: &Pacing) -> Pacer {
        let mode = match pacing {
            Pacing::None => Mode::None,
            Pacing::Fixed { delay_ms } => Mode::Fixed(Duration::from_millis(*delay_ms)),
            Pacing::Rate { rows_per_sec } => Mode::Rate(*rows_per_sec),
            Pacing::EventTime {
                speed, max_gap_ms, ..
            } => Mode::EventTime {
                speed: *speed,
                max_gap: Duration::from_millis(*max_gap_ms),
            },
        };
        Pacer {
            mode,
            last: None,
            last_event_us: None,
            back: None,
            count: 0,
            start: None,
        }
    }

    /// Records that a row was actually sent at `at` (after any wait): `fixed` measures its delay
    /// from here, so a late wake-up never brings two rows closer than the delay.
    pub fn sent(&mut self, at: Instant) {
        if let Mode::Fixed(_) = self.mode {
            self.last = Some(at);
        }
    }

    /// Starts the feed's clock again: the file begins another loop, whose first row goes at
    /// once rather than waiting out the gap back to the previous loop's times.
    pub fn restart(&mut self) {
        self.last_event_us = None;
        self.back = None;
    }

    /// When the next row may be sent, given `now` and (for `event_time`) the row's event time.
    /// `None` means at once. Rows without an event time go at once and do not move the clock;
    /// nor do rows earlier than the latest event time seen (a late arrival in the feed): the
    /// row after one waits only the gap from the latest time, not from the late row's. Two rows
    /// in a row further back than `max_gap` of replay are a step back, not late arrivals: the
    /// clock moves back to the first, so that one outlier far ahead (or two files joined end to
    /// end) does not leave the rest of the file unpaced.
    pub fn next_due(&mut self, now: Instant, event_us: Option<i64>) -> Option<Instant> {
        match self.mode {
            Mode::None => None,
            Mode::Fixed(delay) => self.last.map(|l| l + delay).filter(|d| *d > now),
            Mode::Rate(rate) => {
                let start = *self.start.get_or_insert(now);
                let due = secs(self.count as f64 / rate)
                    .and_then(|d| start.checked_add(d))
                    .unwrap_or(now + FAR);
                self.count += 1;
                (due > now).then_some(due)
            }
            Mode::EventTime { speed, max_gap } => {
                let event_us = event_us?;
                // How long the gap from `a` to `b` takes to replay, at most `max_gap`.
                let replayed = |a: i64, b: i64| {
                    let gap_us = b.saturating_sub(a) as f64 / speed;
                    secs(gap_us / 1e6).map_or(max_gap, |d| d.min(max_gap))
                };
                let back = self.back.take();
                let (due, latest) = match (self.last, self.last_event_us) {
                    (Some(last), Some(latest)) => {
                        // The row before was far behind the clock, and this one is behind it
                        // too: the feed stepped back there, and the clock follows.
                        let latest = match back {
                            Some(back) if event_us < latest => back,
                            _ => latest,
                        };
                        if event_us < latest && replayed(event_us, latest) >= max_gap {
                            // Far behind: goes at once; the next row tells a lone late row
                            // from a step back.
                            self.back = Some(event_us);
                            (last, latest)
                        } else if event_us <= latest {
                            // Late or repeated: goes with the row before it, the clock stays.
                            (last, latest)
                        } else {
                            (last + replayed(latest, event_us), event_us)
                        }
                    }
                    _ => (now, event_us),
                };
                self.last = Some(due);
                self.last_event_us = Some(latest);
                (due > now).then_some(due)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Option<Instant>, t0: Instant) -> Option<u128> {
        d.map(|d| (d - t0).as_millis())
    }

    #[test]
    fn fixed_spaces_from_previous_release() {
        let mut p = Pacer::new(&Pacing::Fixed { delay_ms: 100 });
        let t0 = Instant::now();
        let at = |n| t0 + Duration::from_millis(n);
        assert_eq!(ms(p.next_due(t0, None), t0), None);
        p.sent(t0);
        assert_eq!(ms(p.next_due(t0, None), t0), Some(100));
        // Woke up late, sent at 103 ms: the next one waits the full delay from then.
        p.sent(at(103));
        assert_eq!(ms(p.next_due(at(150), None), t0), Some(203));
        p.sent(at(203));
        assert_eq!(ms(p.next_due(at(400), None), t0), None);
    }

    #[test]
    fn rate_keeps_an_absolute_schedule() {
        let mut p = Pacer::new(&Pacing::Rate { rows_per_sec: 10.0 });
        let t0 = Instant::now();
        assert_eq!(ms(p.next_due(t0, None), t0), None);
        assert_eq!(ms(p.next_due(t0, None), t0), Some(100));
        // Late at 350 ms: the rows due at 200 and 300 ms catch up at once, then the schedule holds.
        let late = t0 + Duration::from_millis(350);
        assert_eq!(ms(p.next_due(late, None), t0), None);
        assert_eq!(ms(p.next_due(late, None), t0), None);
        assert_eq!(ms(p.next_due(late, None), t0), Some(400));
    }

    #[test]
    fn event_time_scales_and_clamps_gaps() {
        let mut p = Pacer::new(&Pacing::EventTime {
            column: "at".into(),
            speed: 2.0,
            max_gap_ms: 1000,
        });
        let t0 = Instant::now();
        let s = 1_000_000;
        assert_eq!(ms(p.next_due(t0, Some(10 * s)), t0), None);
        assert_eq!(ms(p.next_due(t0, Some(11 * s)), t0), Some(500));
        assert_eq!(ms(p.next_due(t0, Some(100 * s)), t0), Some(1500));
        // Late by less than max_gap of replay (1.5 s of feed time is 0.75 s at speed 2).
        assert_eq!(ms(p.next_due(t0, Some(98_500_000)), t0), Some(1500));
        assert_eq!(ms(p.next_due(t0, None), t0), None);
        // After the late row, the next waits its gap from the latest time (100 s), not 98.5 s.
        assert_eq!(ms(p.next_due(t0, Some(101 * s)), t0), Some(2000));
        // One row far behind (more than max_gap of replay) and the next back on the clock: a
        // lone late row, which costs no wait.
        assert_eq!(ms(p.next_due(t0, Some(50 * s)), t0), Some(2000));
        assert_eq!(ms(p.next_due(t0, Some(102 * s)), t0), Some(2500));
        // An outlier far ahead costs one max_gap; the rows after it, far behind it, are a step
        // back, not late rows: the clock follows them and they are paced again.
        assert_eq!(ms(p.next_due(t0, Some(1_000_000 * s)), t0), Some(3500));
        assert_eq!(ms(p.next_due(t0, Some(103 * s)), t0), Some(3500));
        assert_eq!(ms(p.next_due(t0, Some(104 * s)), t0), Some(4000));
        assert_eq!(ms(p.next_due(t0, Some(105 * s)), t0), Some(4500));
        // A gap too long for any duration at a tiny speed is clamped, not a panic.
        let mut slow = Pacer::new(&Pacing::EventTime {
            column: "at".into(),
            speed: 1e-300,
            max_gap_ms: 1000,
        });
        assert_eq!(ms(slow.next_due(t0, Some(0)), t0), None);
        assert_eq!(ms(slow.next_due(t0, Some(i64::MAX)), t0), Some(1000));
        let mut rare = Pacer::new(&Pacing::Rate {
            rows_per_sec: 1e-300,
        });
        assert_eq!(ms(rare.next_due(t0, None), t0), None);
        assert!(rare.next_due(t0, None).unwrap() > t0 + Duration::from_secs(1 << 30));
        // A new loop starts the clock again: its first row goes at once.
        p.restart();
        assert_eq!(ms(p.next_due(t0, Some(10 * s)), t0), None);
        assert_eq!(ms(p.next_due(t0, Some(11 * s)), t0), Some(500));
    }
}
