//! PNG charts with plotters' bitmap backend. Text uses ab_glyph with a TrueType font loaded
//! from the usual system locations (no fontconfig needed); without one, the charts are drawn
//! without text and the Markdown around them carries the labels.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{BenchError, Result};
use crate::results::ScenarioResult;
use crate::scenarios::Family;

/// Fonts tried in order.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Registers a font once; true if text can be drawn.
pub fn fonts_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        FONT_PATHS.iter().any(|p| {
            let Ok(bytes) = std::fs::read(p) else {
                return false;
            };
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}

fn draw_err<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError::Invalid(format!("chart drawing failed: {e}"))
}

/// Colour of the i-th series.
fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// One named series of (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Goodput (first bulk test, 1 stream up) against loss, one line per system, from the
/// loss-sweep scenarios. Returns the series drawn (empty: nothing to draw).
pub fn goodput_series(results: &[ScenarioResult]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for sc in results
        .iter()
        .filter(|s| s.scenario.family == Family::LossSweep)
    {
        for r in &sc.systems {
            let Some(m) = r.bulk.first().and_then(|b| b.mbit) else {
                continue;
            };
            let pt = (sc.scenario.loss_pct, m);
            match out.iter_mut().find(|(n, _)| *n == r.system) {
                Some((_, v)) => v.push(pt),
                None => out.push((r.system.clone(), vec![pt])),
            }
        }
    }
    out
}

/// Latency CDF series (forward latency) of one scenario.
pub fn cdf_series(sc: &ScenarioResult) -> Vec<Series> {
    sc.systems
        .iter()
        .filter_map(|r| {
            let l = r.latency_forward.as_ref()?;
            let n = l.samples_ms.len() as f64;
            let pts = l
                .samples_ms
                .iter()
                .enumerate()
                .map(|(i, ms)| (*ms, (i + 1) as f64 / n))
                .collect();
            Some((r.system.clone(), pts))
        })
        .collect()
}

/// Draws line series into a PNG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<()> {
    let text = fonts_available();
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for (_, pts) in series {
        for (x, y) in pts {
            x_max = x_max.max(*x);
            y_max = y_max.max(*y);
        }
    }
    let x_max = if x_max > 0.0 { x_max * 1.05 } else { 1.0 };
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption(title, ("sans-serif", 22))
            .x_label_area_size(45)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(draw_err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(x_desc).y_desc(y_desc);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(draw_err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colour(i);
        let s = chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(draw_err)?;
        if text {
            s.label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        // Markers only on sparse series (goodput points), not on CDFs.
        if pts.len() <= 30 {
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
                .map_err(draw_err)?;
        }
    }
    if text && !series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_or_without_text() {
        let dir = std::env::temp_dir().join(format!("gtb-chart-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.png");
        let series = vec![
            ("a".to_string(), vec![(0.0, 90.0), (1.0, 50.0), (10.0, 5.0)]),
            ("b".to_string(), vec![(0.0, 80.0), (10.0, 70.0)]),
        ];
        line_chart(&path, "title", "loss %", "Mbit/s", &series).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.get(..8).unwrap(), b"\x89PNG\r\n\x1a\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
