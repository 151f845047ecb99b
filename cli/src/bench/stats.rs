//! Latency samples and the summary row every bench prints.

use std::time::Duration;

#[derive(Debug, Default)]
pub struct Samples {
    micros: Vec<u32>,
}

impl Samples {
    pub fn record(&mut self, d: Duration) {
        self.micros
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Quantile in milliseconds (`q` in 0..=1).
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        self.micros.sort_unstable();
        let idx = ((self.micros.len() - 1) as f64 * q).round() as usize;
        f64::from(self.micros[idx]) / 1000.0
    }

    /// Up to `points` (latency ms, fraction of samples at or below it) pairs.
    pub fn cdf_ms(&mut self, points: usize) -> Vec<(f64, f64)> {
        if self.micros.is_empty() || points == 0 {
            return Vec::new();
        }
        self.micros.sort_unstable();
        let n = self.micros.len();
        let step = (n / points).max(1);
        let mut cdf: Vec<(f64, f64)> = (0..n)
            .step_by(step)
            .map(|i| {
                (
                    f64::from(self.micros[i]) / 1000.0,
                    (i + 1) as f64 / n as f64,
                )
            })
            .collect();
        cdf.push((f64::from(self.micros[n - 1]) / 1000.0, 1.0));
        cdf
    }
}
