//! Line charts with titles, axis labels and legends, written atomically as PNG.

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;

/// Distinguishable colours (Tableau 10), used in series order.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One curve of a [`LineChart`]; `y_err` (same length as `points`) draws error bars.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub y_err: Option<Vec<f64>>,
    /// Draw a marker at each point (for sparse series such as sweep results).
    pub markers: bool,
}

/// One panel: a title, axes and curves.
#[derive(Debug, Clone, Default)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Axis ranges; `None` fits the data.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
}

/// Default figure size (DESIGN: 1200x800 or larger).
pub const SIZE: (u32, u32) = (1200, 800);

/// Writes one chart as a PNG.
pub fn write_line_chart(path: &Path, chart: &LineChart) -> Result<()> {
    write_panels(path, &chart.title, std::slice::from_ref(chart), SIZE)
}

/// Writes several charts side by side (one row) under a common caption, as a PNG.
pub fn write_panels(
    path: &Path,
    caption: &str,
    panels: &[LineChart],
    size: (u32, u32),
) -> Result<()> {
    super::font::ensure_registered();
    let tmp = crate::util::temp_beside(path);
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    let draw = || -> Result<()> {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let body = if panels.len() > 1 && !caption.is_empty() {
            root.titled(caption, ("sans-serif", 30))
                .map_err(|e| anyhow!("{e}"))?
        } else {
            root.clone()
        };
        let areas = body.split_evenly((1, panels.len().max(1)));
        for (area, chart) in areas.iter().zip(panels) {
            draw_chart(area, chart)?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
        Ok(())
    };
    let result = draw().with_context(|| format!("cannot draw {}", path.display()));
    match result {
        Ok(()) => crate::util::commit_temp(&tmp, path),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn fit_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if (hi - lo).abs() < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    chart: &LineChart,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let x_range = chart.x_range.unwrap_or_else(|| {
        fit_range(
            chart
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0)),
        )
    });
    let y_range = chart.y_range.unwrap_or_else(|| {
        fit_range(chart.series.iter().flat_map(|s| {
            s.points.iter().enumerate().flat_map(move |(i, p)| {
                let e = s.y_err.as_ref().map(|e| e[i]).unwrap_or(0.0);
                [p.1 - e, p.1 + e]
            })
        }))
    });
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
        .map_err(|e| anyhow!("{e}"))?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style(("sans-serif", 18))
        .axis_desc_style(("sans-serif", 22))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let style = ShapeStyle::from(&color).stroke_width(3);
        ctx.draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(|e| anyhow!("{e}"))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        if s.markers {
            ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        if let Some(err) = &s.y_err {
            ctx.draw_series(s.points.iter().zip(err).map(|(&(x, y), &e)| {
                ErrorBar::new_vertical(x, y - e, y, y + e, color.stroke_width(2), 10)
            }))
            .map_err(|e| anyhow!("{e}"))?;
        }
    }
    if chart.series.iter().any(|s| !s.label.is_empty()) {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 20))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_the_requested_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        let chart = LineChart {
            title: "test".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                label: "a".into(),
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                y_err: Some(vec![0.1, 0.2]),
                markers: true,
            }],
            ..Default::default()
        };
        write_line_chart(&p, &chart).unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), SIZE);
    }
}
