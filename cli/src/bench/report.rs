//! Bench output: results tables (printed as Markdown, cells as CSV rows), a
//! progress bar on long runs, and SVG charts for the README: a latency CDF,
//! and curves of a measure against load.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;

/// A bar that fills over `duration`; drawn only when stderr is a terminal.
pub fn timed_bar(label: &str, duration: Duration) -> ProgressBar {
    let bar = ProgressBar::new(duration.as_millis().try_into().unwrap_or(u64::MAX));
    if let Ok(style) = ProgressStyle::with_template("{msg:>24} [{bar:40}] {elapsed}/{duration}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Writes a header and rows as CSV (fields must not contain commas).
pub fn write_csv(path: &Path, header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut text = header.join(",");
    text.push('\n');
    for row in rows {
        text += &row.join(",");
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// One line per series: latency (ms, log scale) against the fraction of requests.
pub fn latency_cdf_svg(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let latencies = || {
        series
            .iter()
            .flat_map(|(_, points)| points.iter().map(|p| p.0))
    };
    let max_ms = latencies().fold(1.0_f64, f64::max);
    let min_ms = latencies().fold(max_ms, f64::min).max(0.01);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min_ms / 2.0..max_ms * 1.2).log_scale(), 0.0_f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of requests")
        .draw()?;
    draw_lines(&mut chart, series, false, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// One line per series, each point marked: a measure (`y_desc`, from 0)
/// against load (`x_desc`, from 0), e.g. deliveries/s against subscribers.
pub fn curves_svg(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|(_, points)| points.iter());
    let max_x = points().map(|p| p.0).fold(1.0_f64, f64::max);
    let max_y = points()
        .map(|p| p.1)
        .filter(|y| y.is_finite())
        .fold(f64::MIN_POSITIVE, f64::max);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y * 1.15)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    draw_lines(&mut chart, series, true, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

/// The series of a chart as lines (with a dot on each point when `marks`)
/// and their legend.
fn draw_lines<'a, 'b: 'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
    series: &[(String, Vec<(f64, f64)>)],
    marks: bool,
    legend: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
        if marks {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(legend)
        .draw()?;
    Ok(())
}

/// A results table: a title, a header, rows, and notes under it.
pub struct Table {
    scenario: &'static str,
    title: String,
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(scenario: &'static str, title: String, header: &[&'static str]) -> Self {
        Self {
            scenario,
            title,
            header: header.to_vec(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    #[allow(clippy::print_stdout)] // a bench prints its results table
    pub fn print(&self) {
        println!("\n{}", self.title);
        println!("| {} |", self.header.join(" | "));
        println!("|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        for note in &self.notes {
            println!("- {note}");
        }
    }

    /// One CSV row per cell, keyed by the row's first cell (and its round,
    /// when the table has that column).
    pub fn csv_rows(&self) -> Vec<Vec<String>> {
        let clean = |s: &str| s.replace(',', ";");
        let key_cells = if self.header.get(1) == Some(&"round") {
            2
        } else {
            1
        };
        let mut out = Vec::new();
        for row in &self.rows {
            let key = row
                .iter()
                .take(key_cells)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" round ");
            for (column, value) in self.header.iter().zip(row).skip(key_cells) {
                out.push(vec![
                    self.scenario.to_owned(),
                    clean(&key),
                    clean(column),
                    clean(value),
                ]);
            }
        }
        out
    }
}
