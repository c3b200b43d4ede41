//! Files of a sweep: `results.csv`, `summary.csv`, `ap.png`, `ap_bars.png`, `loss_curves.png`, `summary.md`.

use super::Merged;
use crate::experiments::collect::{flatten, Collected};
use crate::experiments::runner::run_dir;
use crate::experiments::spec::ExperimentSpec;
use crate::plot::{write_line_chart, LineChart, Series, PALETTE};
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// Writes every output of a sweep into `out` (each file atomically). `results.csv` is merged into
/// the one already there; every other file describes this sweep's runs alone.
pub fn write_all(
    spec: &ExperimentSpec,
    c: &Collected,
    out: &Path,
    context_note: &str,
) -> Result<()> {
    let merged = write_results_csv(&out.join("results.csv"), spec, c)?;
    write_summary_csv(&out.join("summary.csv"), c)?;
    if c.rows.is_empty() {
        return write_summary_md(&out.join("summary.md"), spec, c, context_note, merged);
    }
    write_ap_figure(&out.join("ap.png"), spec, c)?;
    write_ap_bars(&out.join("ap_bars.png"), spec, c)?;
    write_grid_heatmap(&out.join("heatmap.png"), spec, c)?;
    write_loss_curves(&out.join("loss_curves.png"), spec, c, out)?;
    write_shares(spec, c, out)?;
    write_summary_md(&out.join("summary.md"), spec, c, context_note, merged)
}

/// One row per run, merged by (config hash, seed) into the table already at `path`.
pub fn write_results_csv(path: &Path, spec: &ExperimentSpec, c: &Collected) -> Result<Merged> {
    let mut header: Vec<String> = vec![
        "experiment".into(),
        "label".into(),
        "seed".into(),
        "config_hash".into(),
    ];
    header.extend(c.varying_keys.iter().cloned());
    header.extend(crate::experiments::collect::RECORD_COLUMNS.map(String::from));
    let rows: Vec<Vec<String>> = c
        .rows
        .iter()
        .map(|row| {
            let flat = flatten(&row.job.config);
            let r = &row.record;
            let mut rec = vec![
                spec.name.clone(),
                row.job.label.clone(),
                row.job.seed.to_string(),
                row.job.hash.clone(),
            ];
            rec.extend(
                c.varying_keys
                    .iter()
                    .map(|k| flat.get(k).cloned().unwrap_or_default()),
            );
            rec.extend(crate::experiments::collect::record_fields(r));
            rec
        })
        .collect();
    super::write_merged_csv(path, &header, &rows, &["config_hash", "seed"])
}

pub fn write_summary_csv(path: &Path, c: &Collected) -> Result<()> {
    let bytes = super::csv_bytes(|w| {
        w.write_record([
            "label",
            "runs",
            "diverged",
            "ap_mean",
            "ap_std",
            "ap50_mean",
            "ap50_std",
            "ap75_mean",
            "ap75_std",
            "paper_ap",
            "paper_ap50",
            "paper_ap75",
        ])?;
        for s in &c.summaries {
            let p = |f: fn(&crate::experiments::spec::PaperRow) -> f64| {
                s.paper
                    .as_ref()
                    .map(|r| format!("{:.1}", f(r)))
                    .unwrap_or_default()
            };
            let stat = |v: f64| {
                if v.is_finite() {
                    format!("{v:.6}")
                } else {
                    String::new()
                }
            };
            w.write_record([
                s.label.clone(),
                s.runs.to_string(),
                s.diverged.to_string(),
                stat(s.ap.mean),
                stat(s.ap.std),
                stat(s.ap50.mean),
                stat(s.ap50.std),
                stat(s.ap75.mean),
                stat(s.ap75.std),
                p(|r| r.ap),
                p(|r| r.ap50),
                p(|r| r.ap75),
            ])?;
        }
        Ok(())
    })?;
    crate::util::write_atomic(path, &bytes)
}

/// AP against the spec's x key, one series per value of the series key, with the paper's AP dashed-in
/// as its own series for comparison.
fn write_ap_figure(path: &Path, spec: &ExperimentSpec, c: &Collected) -> Result<()> {
    let Some(x) = &spec.x else {
        return Ok(());
    };
    let mut groups: Vec<(String, Vec<&crate::experiments::collect::VariantSummary>)> = Vec::new();
    for s in c.summaries.iter().filter(|s| s.runs > 0 && s.x.is_some()) {
        let key = s.series.clone().unwrap_or_default();
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(s),
            None => groups.push((key, vec![s])),
        }
    }
    let fx = |v: f64| if x.log { v.max(1e-6).log10() } else { v };
    let mut series = Vec::new();
    for (key, mut members) in groups {
        members.sort_by(|a, b| a.x.unwrap_or(0.0).total_cmp(&b.x.unwrap_or(0.0)));
        let name = |what: &str| match (key.is_empty(), spec.series_key.as_deref()) {
            (true, _) => what.to_string(),
            (false, Some(series_key)) => format!("{what}, {series_key} = {key}"),
            (false, None) => format!("{key}: {what}"),
        };
        series.push(Series {
            label: name("fl-lab (mean ± std over seeds)"),
            points: members
                .iter()
                .map(|s| (fx(s.x.unwrap_or(0.0)), 100.0 * s.ap.mean))
                .collect(),
            y_err: Some(members.iter().map(|s| 100.0 * s.ap.std).collect()),
            markers: true,
        });
        let paper: Vec<(f64, f64)> = members
            .iter()
            .filter_map(|s| s.paper.map(|p| (fx(s.x.unwrap_or(0.0)), p.ap)))
            .collect();
        if !paper.is_empty() {
            series.push(Series {
                label: name("paper"),
                points: paper,
                y_err: None,
                markers: true,
            });
        }
    }
    let chart = LineChart {
        title: format!("{}: AP vs {}", spec.title, x.label),
        x_label: if x.log {
            format!("log10 {}", x.label)
        } else {
            x.label.clone()
        },
        y_label: "AP (COCO, %)".into(),
        x_range: None,
        y_range: None,
        series,
    };
    write_line_chart(path, &chart)
}

/// Mean AP over the x key (columns) and the series key (rows), written only when every combination
/// of their values was trained (for example `sweep-gamma --alphas`).
fn write_grid_heatmap(path: &Path, spec: &ExperimentSpec, c: &Collected) -> Result<()> {
    let (Some(x), Some(series_key)) = (&spec.x, &spec.series_key) else {
        return Ok(());
    };
    let cells: Vec<_> = c
        .summaries
        .iter()
        .filter_map(|s| Some((s.x?, s.series.clone()?, s)))
        .collect();
    let mut xs: Vec<f64> = cells.iter().map(|c| c.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let mut ys: Vec<String> = cells.iter().map(|c| c.1.clone()).collect();
    ys.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(a), Ok(b)) => a.total_cmp(&b),
        _ => a.cmp(b),
    });
    ys.dedup();
    if xs.len() < 2 || ys.len() < 2 || cells.len() != xs.len() * ys.len() {
        return Ok(());
    }
    let values = ys
        .iter()
        .map(|y| {
            xs.iter()
                .map(|&xv| {
                    cells
                        .iter()
                        .find(|c| c.0 == xv && &c.1 == y)
                        .filter(|c| c.2.runs > 0)
                        .map(|c| 100.0 * c.2.ap.mean)
                })
                .collect()
        })
        .collect();
    let map = super::heatmap::HeatMap {
        title: format!("{}: mean AP (%)", spec.title),
        x_label: x.label.clone(),
        y_label: series_key.clone(),
        cols: xs.iter().map(|v| format!("{v}")).collect(),
        rows: ys,
        values,
        format: |v| format!("{v:.1}"),
    };
    super::heatmap::write_heatmap(path, &map)
}

/// One bar per variant (mean AP, error bar = std over seeds), the paper's AP as a hollow bar beside it.
fn write_ap_bars(path: &Path, spec: &ExperimentSpec, c: &Collected) -> Result<()> {
    crate::plot::font::ensure_registered();
    let tmp = crate::util::temp_beside(path);
    let items: Vec<_> = c.summaries.iter().collect();
    let n = items.len();
    let top = items
        .iter()
        .flat_map(|s| {
            [
                100.0 * (s.ap.mean + s.ap.std),
                s.paper.map(|p| p.ap).unwrap_or(0.0),
            ]
        })
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.15;
    let draw = || -> Result<()> {
        let root = BitMapBackend::new(&tmp, (1400, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: AP per variant", spec.title),
                ("sans-serif", 26),
            )
            .margin(20)
            .x_label_area_size(220)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..n as f64, 0.0..top)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("AP (COCO, %)")
            .axis_desc_style(("sans-serif", 22))
            .label_style(("sans-serif", 18))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        // Each variant's name under its pair of bars, read top to bottom: the mesh's own x labels
        // sit at round tick values, not at the bars' centres.
        let label_font = ("sans-serif", 16)
            .into_font()
            .transform(FontTransform::Rotate90);
        for (i, s) in items.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                s.label.clone(),
                (x + 8, y + 10),
                label_font.clone(),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        }
        let ours = PALETTE[0];
        let paper = PALETTE[1];
        chart
            .draw_series(
                items
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.ap.mean.is_finite())
                    .map(|(i, s)| {
                        Rectangle::new(
                            [(i as f64 + 0.1, 0.0), (i as f64 + 0.5, 100.0 * s.ap.mean)],
                            ours.filled(),
                        )
                    }),
            )
            .map_err(|e| anyhow!("{e}"))?
            .label("fl-lab (mean over seeds)")
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], ours.filled()));
        chart
            .draw_series(
                items
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.ap.mean.is_finite())
                    .map(|(i, s)| {
                        let x = i as f64 + 0.3;
                        let (m, e) = (100.0 * s.ap.mean, 100.0 * s.ap.std);
                        ErrorBar::new_vertical(x, m - e, m, m + e, BLACK.stroke_width(2), 10)
                    }),
            )
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(items.iter().enumerate().filter_map(|(i, s)| {
                s.paper.map(|p| {
                    Rectangle::new(
                        [(i as f64 + 0.5, 0.0), (i as f64 + 0.9, p.ap)],
                        paper.stroke_width(3),
                    )
                })
            }))
            .map_err(|e| anyhow!("{e}"))?
            .label("paper")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 18, y + 6)], paper.stroke_width(3))
            });
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 20))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
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

/// Training classification loss of each variant's lowest seed whose log is present, overlaid
/// (a row kept from an earlier table has no run folder, hence no log).
fn write_loss_curves(path: &Path, spec: &ExperimentSpec, c: &Collected, out: &Path) -> Result<()> {
    let mut series = Vec::new();
    let mut seeds = std::collections::BTreeSet::new();
    for s in &c.summaries {
        let logged = c
            .rows
            .iter()
            .filter(|r| r.job.label == s.label)
            .map(|r| (r.job.seed, run_dir(out, &r.job).join("metrics.csv")))
            .filter(|(_, metrics)| metrics.exists())
            .min_by_key(|(seed, _)| *seed);
        let Some((seed, metrics)) = logged else {
            continue;
        };
        let Ok(points) = read_loss_curve(&metrics) else {
            continue;
        };
        if !points.is_empty() {
            seeds.insert(seed);
            series.push(Series {
                label: s.label.clone(),
                points,
                ..Default::default()
            });
        }
    }
    if series.is_empty() {
        return Ok(());
    }
    let seed_text = match seeds.iter().collect::<Vec<_>>()[..] {
        [one] => format!("seed {one}"),
        _ => "lowest seed with a log".to_string(),
    };
    let chart = LineChart {
        title: format!(
            "{}: training classification loss ({seed_text}, smoothed)",
            spec.title
        ),
        x_label: "iteration".into(),
        y_label: "classification loss".into(),
        x_range: None,
        y_range: None,
        series,
    };
    write_line_chart(path, &chart)
}

/// (iteration, loss_cls) from a run's metrics.csv, smoothed by a running mean over 5% of the run.
fn read_loss_curve(path: &Path) -> Result<Vec<(f64, f64)>> {
    Ok(read_smoothed(path, &["loss_cls"], 20)?
        .into_iter()
        .map(|(i, v)| (i, v[0]))
        .collect())
}

/// `(iteration, [columns])` from a run's metrics.csv, rows with a non-finite value left out,
/// smoothed by a running mean over 1/`parts` of the rows (windows overlapping by half).
fn read_smoothed(path: &Path, columns: &[&str], parts: usize) -> Result<Vec<(f64, Vec<f64>)>> {
    let mut r = csv::Reader::from_path(path)?;
    let h = r.headers()?.clone();
    let col = |name: &str| {
        h.iter()
            .position(|x| x == name)
            .ok_or_else(|| anyhow!("no column {name}"))
    };
    let ci = col("iteration")?;
    let cols: Vec<usize> = columns.iter().map(|c| col(c)).collect::<Result<_>>()?;
    let mut raw: Vec<(f64, Vec<f64>)> = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        let value = |c: usize| rec.get(c).and_then(|v| v.parse::<f64>().ok());
        let Some(i) = value(ci) else { continue };
        let values: Option<Vec<f64>> = cols.iter().map(|&c| value(c)).collect();
        if let Some(v) = values.filter(|v| v.iter().all(|x| x.is_finite())) {
            raw.push((i, v));
        }
    }
    let w = (raw.len() / parts.max(1)).max(1);
    Ok(raw
        .windows(w)
        .step_by((w / 2).max(1))
        .map(|win| {
            let mean = (0..columns.len())
                .map(|j| win.iter().map(|p| p.1[j]).sum::<f64>() / win.len() as f64)
                .collect();
            (win[win.len() - 1].0, mean)
        })
        .collect())
}

/// The `metrics.csv` columns of the loss and gradient shares, in the panels' order.
const SHARE_COLUMNS: [(&str, &str); 6] = [
    ("loss_share_pos", "positives: share of the loss"),
    ("loss_share_hard_neg", "hard negatives: share of the loss"),
    (
        "loss_share_easy_neg",
        "easy negatives (p_t > 0.5): share of the loss",
    ),
    ("grad_share_pos", "positives: share of the gradient"),
    (
        "grad_share_hard_neg",
        "hard negatives: share of the gradient",
    ),
    (
        "grad_share_easy_neg",
        "easy negatives: share of the gradient",
    ),
];

/// Where the classification loss and its gradient come from over training (positives, hard and
/// easy negatives), one line per variant (for series, the variant with the largest x: the longest
/// schedule of the schedule study), each from its lowest seed with a log: `shares.csv` and
/// `shares.png`. Without logs (tables kept from an earlier `results.csv`) both are left as they are.
fn write_shares(spec: &ExperimentSpec, c: &Collected, out: &Path) -> Result<()> {
    let mut chosen: Vec<&crate::experiments::collect::VariantSummary> = Vec::new();
    for s in c.summaries.iter().filter(|s| s.runs > 0) {
        match chosen
            .iter_mut()
            .find(|o| s.series.is_some() && o.series == s.series)
        {
            Some(o) if s.x.unwrap_or(0.0) > o.x.unwrap_or(0.0) => *o = s,
            Some(_) => {}
            None => chosen.push(s),
        }
    }
    let columns: Vec<&str> = SHARE_COLUMNS.iter().map(|c| c.0).collect();
    let mut curves = Vec::new();
    for s in chosen {
        let logged = c
            .rows
            .iter()
            .filter(|r| r.job.label == s.label)
            .map(|r| (r.job.seed, run_dir(out, &r.job).join("metrics.csv")))
            .filter(|(_, m)| m.exists())
            .min_by_key(|(seed, _)| *seed);
        if let Some((seed, metrics)) = logged {
            // Logs written before the shares were logged have no such columns: skipped.
            if let Ok(points) = read_smoothed(&metrics, &columns, 100) {
                if !points.is_empty() {
                    curves.push((s.label.clone(), seed, points));
                }
            }
        }
    }
    if curves.is_empty() {
        return Ok(());
    }
    let bytes = super::csv_bytes(|w| {
        let mut header = vec!["label", "seed", "iteration"];
        header.extend(&columns);
        w.write_record(&header)?;
        for (label, seed, points) in &curves {
            for (it, v) in points {
                let mut rec = vec![label.clone(), seed.to_string(), it.to_string()];
                rec.extend(v.iter().map(|x| format!("{x:.6}")));
                w.write_record(&rec)?;
            }
        }
        Ok(())
    })?;
    crate::util::write_atomic(&out.join("shares.csv"), &bytes)?;
    let panels: Vec<LineChart> = SHARE_COLUMNS
        .iter()
        .enumerate()
        .map(|(j, (_, title))| LineChart {
            title: title.to_string(),
            x_label: "iteration".into(),
            y_label: "share".into(),
            x_range: None,
            y_range: Some((0.0, 1.0)),
            series: curves
                .iter()
                .map(|(label, seed, points)| Series {
                    label: format!("{label} (seed {seed})"),
                    points: points.iter().map(|(i, v)| (*i, v[j])).collect(),
                    ..Default::default()
                })
                .collect(),
        })
        .collect();
    crate::plot::write_panel_grid(
        &out.join("shares.png"),
        &format!(
            "{}: where the classification loss and its gradient come from (smoothed over 1% of training)",
            spec.name
        ),
        &panels,
        (2, 3),
        (2100, 1300),
    )
}

pub fn write_summary_md(
    path: &Path,
    spec: &ExperimentSpec,
    c: &Collected,
    context_note: &str,
    merged: Merged,
) -> Result<()> {
    let mut s = String::new();
    let _ = writeln!(s, "# {}\n", spec.title);
    let _ = writeln!(s, "Paper: {}.\n", spec.paper);
    if !context_note.is_empty() {
        let _ = writeln!(s, "{context_note}\n");
    }
    let _ = writeln!(
        s,
        "This table covers the runs of experiment `{}` with the preset, overrides and seeds above; \
         `results.csv` holds {} rows, {} of them of other configurations or seeds (kept, not in this table).\n",
        spec.name, merged.rows, merged.kept
    );
    let seeds = c.summaries.iter().map(|v| v.runs).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "{} finished runs ({} seeds at most per variant){}. AP is COCO AP in percent; ours is mean ± std over seeds.\n",
        c.rows.len(),
        seeds,
        if c.missing > 0 { format!(", {} runs not finished yet", c.missing) } else { String::new() }
    );
    if c.kept > 0 {
        let _ = writeln!(
            s,
            "{} of them are rows of the earlier `results.csv` whose run folders are not here.\n",
            c.kept
        );
    }
    if c.borrowed > 0 {
        let _ = writeln!(
            s,
            "{} of them are runs of the same configuration and seed taken from other experiments' \
             tables (`--reuse-from`).\n",
            c.borrowed
        );
    }
    // The committed reference's AP of the same configurations, when this is not the reference.
    let with_reference = c.summaries.iter().any(|v| v.reference.is_some());
    let (ref_head, ref_rule) = if with_reference {
        (" committed AP (runs) |", "---|")
    } else {
        ("", "")
    };
    let _ = writeln!(
        s,
        "| variant | paper AP | paper AP50 | paper AP75 | AP | AP50 | AP75 | runs | diverged |{ref_head}"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|{ref_rule}");
    let pm = |v: &crate::experiments::collect::Stat| {
        if v.mean.is_finite() {
            format!("{:.1} ± {:.1}", 100.0 * v.mean, 100.0 * v.std)
        } else {
            "–".into()
        }
    };
    for v in &c.summaries {
        let (a, b, cc) = match v.paper {
            Some(p) => (
                format!("{:.1}", p.ap),
                format!("{:.1}", p.ap50),
                format!("{:.1}", p.ap75),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let reference = match (with_reference, &v.reference) {
            (false, _) => String::new(),
            (true, Some((stat, runs))) => format!(" {} ({runs}) |", pm(stat)),
            (true, None) => " – |".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {a} | {b} | {cc} | {} | {} | {} | {} | {} |{reference}",
            v.label,
            pm(&v.ap),
            pm(&v.ap50),
            pm(&v.ap75),
            v.runs,
            v.diverged
        );
    }
    if with_reference {
        let _ = writeln!(
            s,
            "\nCommitted AP: the same configurations in the project's committed `results.csv` for this \
             experiment (matched by config hash and seed), mean ± std over every seed it holds."
        );
    }
    if let (Some(tol), Some(x)) = (&spec.convergence, &spec.x) {
        let _ = writeln!(
            s,
            "\n## Convergence\n\nPer method, the shortest {} whose mean AP is within {:.0}% of its AP at \
             the longest {} studied; where that is the longest itself, the method may still be improving.\n",
            x.label,
            100.0 * tol.within,
            x.label
        );
        let _ = writeln!(
            s,
            "| method | longest | AP there | shortest within {:.0}% | AP there | flattened |",
            100.0 * tol.within
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for k in &c.convergence {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} | {:.1} | {} |",
                k.series,
                k.longest.0,
                100.0 * k.longest.1,
                k.shortest_within.0,
                100.0 * k.shortest_within.1,
                if k.flattened {
                    "yes"
                } else {
                    "no: extend the study"
                }
            );
        }
    }
    if !c.verdicts.is_empty() {
        let _ = writeln!(s, "\n## The paper's findings\n");
        for v in &c.verdicts {
            let verdict = match v.reproduced {
                Some(true) => "**Reproduced.**",
                Some(false) => "**Not reproduced.**",
                None => "**Not yet known.**",
            };
            let _ = writeln!(s, "- Paper: {}. {verdict} Ours: {}.", v.paper, v.ours);
        }
    }
    crate::util::write_atomic(path, s.as_bytes())
}
