//! Summaries of timing samples and the formatting used in the table.

use std::time::Duration;

/// Order statistics of a set of samples (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// Nearest-rank percentile of sorted samples: the smallest sample with at
/// least `p` of all samples at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        let mut s = samples.to_vec();
        s.sort();
        let n = s.len();
        let total: Duration = s.iter().sum();
        Summary {
            n,
            min: s.first().copied().unwrap_or_default(),
            p50: percentile(&s, 0.50),
            p95: percentile(&s, 0.95),
            p99: percentile(&s, 0.99),
            max: s.last().copied().unwrap_or_default(),
            mean: if n == 0 {
                Duration::ZERO
            } else {
                total / n as u32
            },
        }
    }
}

/// Milliseconds with a precision that suits the size.
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 1.0 {
        format!("{v:.3} ms")
    } else if v < 100.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Megabytes (10^6 bytes) per second.
pub fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

/// `a / b` as "0.42×".
pub fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 || !a.is_finite() || !b.is_finite() {
        return "–".into();
    }
    format!("{:.2}×", a / b)
}

pub fn ratio_d(a: Duration, b: Duration) -> String {
    ratio(a.as_secs_f64(), b.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(d).collect();
        let s = Summary::of(&v);
        assert_eq!(s.p50, d(50));
        assert_eq!(s.p95, d(95));
        assert_eq!(s.p99, d(99));
        assert_eq!(s.min, d(1));
        assert_eq!(s.max, d(100));
        let one = Summary::of(&[d(7)]);
        assert_eq!((one.p50, one.p99), (d(7), d(7)));
        assert_eq!(Summary::of(&[]).n, 0);
    }

    #[test]
    fn formatting() {
        assert_eq!(ms(Duration::from_micros(250)), "0.250 ms");
        assert_eq!(ms(Duration::from_micros(12_345)), "12.35 ms");
        assert_eq!(ratio(1.0, 4.0), "0.25×");
        assert_eq!(ratio(1.0, 0.0), "–");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
