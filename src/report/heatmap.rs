//! A heat map of one value over a two-way grid (for example mean AP over gamma x alpha), each cell
//! coloured on a white-to-blue scale and labelled with its value; missing cells stay grey.

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;

/// A grid to draw: `values[row][col]`, rows labelled by `rows` (y axis, top to bottom) and columns
/// by `cols` (x axis, left to right).
pub struct HeatMap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub cols: Vec<String>,
    pub rows: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
    /// How a value is written in its cell.
    pub format: fn(f64) -> String,
}

/// The cell colour of `v` on a scale from `lo` (white) to `hi` (dark blue).
fn shade(v: f64, lo: f64, hi: f64) -> RGBColor {
    let t = if hi > lo {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

/// Writes the heat map as a PNG, atomically.
pub fn write_heatmap(path: &Path, map: &HeatMap) -> Result<()> {
    let (nr, nc) = (map.rows.len(), map.cols.len());
    if nr == 0 || nc == 0 || map.values.len() != nr || map.values.iter().any(|r| r.len() != nc) {
        anyhow::bail!(
            "heat map {}: values do not match its {nr} x {nc} labels",
            path.display()
        );
    }
    crate::plot::font::ensure_registered();
    let present: Vec<f64> = map
        .values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let lo = present.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tmp = crate::util::temp_beside(path);
    let draw = || -> Result<()> {
        let root = BitMapBackend::new(&tmp, (200 + 140 * nc as u32, 200 + 90 * nr as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&map.title, ("sans-serif", 24))
            .margin(20)
            .x_label_area_size(70)
            .y_label_area_size(110)
            .build_cartesian_2d(0.0..nc as f64, 0.0..nr as f64)
            .map_err(|e| anyhow!("{e}"))?;
        let (cols, rows) = (map.cols.clone(), map.rows.clone());
        // Labels at cell centres; rows run top to bottom.
        let centre = |v: f64, n: usize, labels: &[String], flip: bool| {
            let i = v.floor();
            if (v - i - 0.5).abs() < 1e-6 && (i as usize) < n {
                let i = i as usize;
                labels[if flip { n - 1 - i } else { i }].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(2 * nc + 1)
            .y_labels(2 * nr + 1)
            .x_label_formatter(&|v| centre(*v, nc, &cols, false))
            .y_label_formatter(&|v| centre(*v, nr, &rows, true))
            .x_desc(map.x_label.as_str())
            .y_desc(map.y_label.as_str())
            .axis_desc_style(("sans-serif", 20))
            .label_style(("sans-serif", 18))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (r, row) in map.values.iter().enumerate() {
            let y0 = (nr - 1 - r) as f64;
            for (c, v) in row.iter().enumerate() {
                let x0 = c as f64;
                let fill = match v {
                    Some(v) if v.is_finite() => shade(*v, lo, hi),
                    _ => RGBColor(200, 200, 200),
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                        fill.filled(),
                    )))
                    .map_err(|e| anyhow!("{e}"))?;
                let text = v
                    .filter(|v| v.is_finite())
                    .map_or("-".to_string(), map.format);
                let dark = v.is_some_and(|v| hi > lo && (v - lo) / (hi - lo) > 0.55);
                let colour = if dark { WHITE } else { BLACK };
                let style = ("sans-serif", 20).into_font().color(&colour).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ),
                );
                chart
                    .draw_series(std::iter::once(Text::new(
                        text,
                        (x0 + 0.5, y0 + 0.5),
                        style,
                    )))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
        Ok(())
    };
    match draw().with_context(|| format!("cannot draw {}", path.display())) {
        Ok(()) => crate::util::commit_temp(&tmp, path),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_grid_with_a_missing_cell_and_rejects_bad_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        let mut map = HeatMap {
            title: "AP".into(),
            x_label: "gamma".into(),
            y_label: "alpha".into(),
            cols: vec!["0".into(), "2".into()],
            rows: vec![".25".into(), ".75".into()],
            values: vec![vec![Some(10.0), None], vec![Some(12.5), Some(20.0)]],
            format: |v| format!("{v:.1}"),
        };
        write_heatmap(&path, &map).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (200 + 280, 200 + 180));
        // The largest value is the darkest cell, the smallest white-ish.
        assert_eq!(shade(20.0, 10.0, 20.0), RGBColor(8, 48, 107));
        assert_eq!(shade(10.0, 10.0, 20.0), RGBColor(247, 251, 255));
        map.values.pop();
        assert!(write_heatmap(&path, &map).is_err());
    }
}
