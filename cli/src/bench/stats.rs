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
}
