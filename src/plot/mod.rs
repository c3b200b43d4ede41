//! Plotting primitives every layer may use (a leaf): line charts with titles, axis labels and
//! legends, written atomically as PNG, and the font shipped in the repository ([`font`]).

pub mod font;

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
    write_panel_grid(path, caption, panels, (1, panels.len().max(1)), size)
}

/// Panels in a grid of `(rows, columns)`, filled row by row, under one caption.
pub fn write_panel_grid(
    path: &Path,
    caption: &str,
    panels: &[LineChart],
    grid: (usize, usize),
    size: (u32, u32),
) -> Result<()> {
    font::ensure_registered();
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
        let areas = body.split_evenly(grid);
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
    let has_legend = chart.series.iter().any(|s| !s.label.is_empty());
    let (corner, y_range) = if has_legend {
        place_legend(chart, x_range, y_range)
    } else {
        (SeriesLabelPosition::UpperRight, y_range)
    };
    let mut ctx = ChartBuilder::on(area)
        .caption(
            &chart.title,
            ("sans-serif", caption_size(area, &chart.title)),
        )
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
    if has_legend {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 20))
            .position(corner)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

/// The largest caption font size, up to 26 px, at which `title` fits the width of `area`.
fn caption_size<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
) -> u32 {
    let width = area.dim_in_pixel().0.saturating_sub(20);
    (12..=26)
        .rev()
        .find(|&size| {
            area.estimate_text_size(title, &TextStyle::from(("sans-serif", size).into_font()))
                .is_ok_and(|(w, _)| w <= width)
        })
        .unwrap_or(12)
}

/// Legend box as fractions of the plot area: half the width, and a row per labelled series.
fn legend_size(chart: &LineChart) -> (f64, f64) {
    let rows = chart.series.iter().filter(|s| !s.label.is_empty()).count();
    (0.5, (0.04 + 0.065 * rows as f64).min(0.9))
}

/// Where the legend goes: a corner where it hides none of the lines or, when every corner would
/// hide some and the y range is automatic, the upper right of a y range raised to make room.
fn place_legend(
    chart: &LineChart,
    x_range: (f64, f64),
    y_range: (f64, f64),
) -> (SeriesLabelPosition, (f64, f64)) {
    let (corner, hidden) = legend_corner(chart, x_range, y_range);
    if hidden == 0 || chart.y_range.is_some() {
        return (corner, y_range);
    }
    let h = legend_size(chart).1;
    let (y0, y1) = y_range;
    let raised = (y0, y1 + (y1 - y0) * h / (1.0 - h));
    (SeriesLabelPosition::UpperRight, raised)
}

/// The corner whose legend box would hide the fewest sampled points of the plotted lines (upper
/// right on ties), and how many it hides.
fn legend_corner(
    chart: &LineChart,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> (SeriesLabelPosition, usize) {
    let (w, h) = legend_size(chart);
    // Points along every segment, as fractions of the plot area.
    let mut samples = Vec::new();
    for s in &chart.series {
        for pair in s.points.windows(2) {
            for t in 0..=16 {
                let t = t as f64 / 16.0;
                let x = pair[0].0 + t * (pair[1].0 - pair[0].0);
                let y = pair[0].1 + t * (pair[1].1 - pair[0].1);
                samples.push(((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)));
            }
        }
        samples.extend(
            s.points
                .iter()
                .map(|p| ((p.0 - x0) / (x1 - x0), (p.1 - y0) / (y1 - y0))),
        );
    }
    let hidden = |right: bool, upper: bool| {
        let in_x = |fx: f64| if right { fx >= 1.0 - w } else { fx <= w };
        let in_y = |fy: f64| if upper { fy >= 1.0 - h } else { fy <= h };
        samples
            .iter()
            .filter(|(fx, fy)| in_x(*fx) && in_y(*fy))
            .count()
    };
    [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ]
    .into_iter()
    .map(|(pos, right, upper)| (pos, hidden(right, upper)))
    .min_by_key(|&(_, n)| n)
    .unwrap_or((SeriesLabelPosition::UpperRight, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(label: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
            ..Default::default()
        }
    }

    #[test]
    fn the_legend_goes_where_it_hides_the_least() {
        let chart = |series| LineChart {
            series,
            ..Default::default()
        };
        let (xr, yr) = ((0.0, 4.0), (0.0, 10.0));
        // Lines along the top: the legend goes below them, on the right.
        let top = chart(vec![
            line("a", vec![(0.0, 9.5), (4.0, 9.5)]),
            line("b", vec![(0.0, 9.0), (4.0, 9.0)]),
        ]);
        assert!(matches!(
            legend_corner(&top, xr, yr),
            (SeriesLabelPosition::LowerRight, 0)
        ));
        // A line rising to the upper right: the upper left is free.
        let rising = chart(vec![line("a", vec![(0.0, 0.0), (4.0, 10.0)])]);
        assert!(matches!(
            legend_corner(&rising, xr, yr),
            (SeriesLabelPosition::UpperLeft, 0)
        ));
        // Lines along the bottom leave the default corner free.
        let bottom = chart(vec![line("a", vec![(0.0, 0.5), (4.0, 0.5)])]);
        assert!(matches!(
            legend_corner(&bottom, xr, yr),
            (SeriesLabelPosition::UpperRight, 0)
        ));
        // Lines in every corner: the y range is raised so the legend sits above them.
        let everywhere = chart(vec![
            line("a", vec![(0.0, 0.0), (4.0, 10.0)]),
            line("b", vec![(0.0, 10.0), (4.0, 0.0)]),
        ]);
        assert!(legend_corner(&everywhere, xr, yr).1 > 0);
        let (pos, (lo, hi)) = place_legend(&everywhere, xr, yr);
        assert!(matches!(pos, SeriesLabelPosition::UpperRight));
        assert_eq!(lo, 0.0);
        let h = legend_size(&everywhere).1;
        assert!(((10.0 - lo) / (hi - lo) - (1.0 - h)).abs() < 1e-9, "{hi}");
        // A fixed y range is kept as given.
        let fixed = LineChart {
            y_range: Some(yr),
            ..everywhere
        };
        assert_eq!(place_legend(&fixed, xr, yr).1, yr);
    }

    #[test]
    fn long_titles_get_a_smaller_font_that_fits() {
        crate::plot::font::ensure_registered();
        let mut buf = vec![0u8; 600 * 100 * 3];
        let area = BitMapBackend::with_buffer(&mut buf, (600, 100)).into_drawing_area();
        assert_eq!(caption_size(&area, "short"), 26);
        let long = "a title far too long to fit six hundred pixels at twenty-six pixels a glyph";
        let size = caption_size(&area, long);
        assert!(size < 26, "{size}");
        let style = TextStyle::from(("sans-serif", size).into_font());
        assert!(area.estimate_text_size(long, &style).unwrap().0 <= 580);
    }

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
