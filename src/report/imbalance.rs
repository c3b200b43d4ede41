//! Files of `sweep-imbalance`: `results.csv` (every run), `summary.csv` (per rung), `imbalance.png`
//! (AP(FL) - AP(CE), and both APs, against the measured ratio on a log axis) and `summary.md`.

use crate::experiments::imbalance::select::{Choice, Ladder, LEARNED_AP};
use crate::experiments::imbalance::{Family, ImbalanceSpec};
use crate::plot::PALETTE;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

pub const FIGURE: &str = "imbalance.png";

/// Writes every output into `out` (each file atomically).
pub fn write_all(spec: &ImbalanceSpec, ladder: &Ladder, out: &Path, note: &str) -> Result<()> {
    write_results_csv(&out.join("results.csv"), spec, ladder)?;
    write_summary_csv(&out.join("summary.csv"), ladder)?;
    write_figure(&out.join(FIGURE), ladder)?;
    crate::util::write_atomic(
        &out.join("summary.md"),
        summary_md(spec, ladder, note).as_bytes(),
    )
}

fn f6(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        String::new()
    }
}

/// One row per run, merged by (config hash, seed) into the table already at `path`.
pub fn write_results_csv(path: &Path, spec: &ImbalanceSpec, ladder: &Ladder) -> Result<()> {
    let header: Vec<String> = [
        "experiment",
        "rung",
        "canvas",
        "classes",
        "objects_min",
        "objects_max",
        "neg_per_pos_binary",
        "loss",
        "gamma",
        "alpha",
        "lr",
        "seed",
        "config_hash",
        "holdout_ap",
        "chosen",
    ]
    .into_iter()
    .chain(crate::experiments::collect::RECORD_COLUMNS)
    .map(String::from)
    .collect();
    let mut table = Vec::new();
    for rung in &ladder.rungs {
        let rows = ladder
            .outcomes
            .iter()
            .filter(|o| spec.rungs.get(o.rung).map(|r| &r.label) == Some(&rung.info.label));
        for o in rows {
            let c = &o.candidate;
            let chosen = [&rung.fl, &rung.ce]
                .iter()
                .any(|ch| ch.as_ref().is_some_and(|ch| ch.candidate == *c));
            let s = &rung.info.shapes;
            let r = &o.record;
            table.push(vec![
                spec.name.clone(),
                rung.info.label.clone(),
                s.size.to_string(),
                s.classes.to_string(),
                s.objects.0.to_string(),
                s.objects.1.to_string(),
                format!("{:.3}", rung.info.imbalance.ratio()),
                c.family.name().to_string(),
                c.gamma.to_string(),
                c.alpha.to_string(),
                c.lr.to_string(),
                o.job.seed.to_string(),
                o.job.hash.clone(),
                f6(o.holdout.ap),
                chosen.to_string(),
            ]);
            table
                .last_mut()
                .expect("just pushed")
                .extend(crate::experiments::collect::record_fields(r));
        }
    }
    super::write_merged_csv(path, &header, &table, &["config_hash", "seed"])?;
    Ok(())
}

pub fn write_summary_csv(path: &Path, ladder: &Ladder) -> Result<()> {
    let bytes = super::csv_bytes(|w| {
        w.write_record([
            "rung",
            "canvas",
            "classes",
            "objects_min",
            "objects_max",
            "images",
            "anchors_per_image",
            "positives_per_image",
            "ignored_per_image",
            "negatives_per_image",
            "neg_per_pos_anchors",
            "neg_per_pos_binary",
            "fl_lr",
            "fl_holdout_ap",
            "fl_ap_mean",
            "fl_ap_std",
            "ce_alpha",
            "ce_lr",
            "ce_holdout_ap",
            "ce_ap_mean",
            "ce_ap_std",
            "seeds",
            "diff_mean",
            "diff_std",
        ])?;
        for r in &ladder.rungs {
            let m = &r.info.imbalance;
            let s = &r.info.shapes;
            let choice = |c: &Option<Choice>, f: fn(&Choice) -> String| {
                c.as_ref().map(f).unwrap_or_default()
            };
            w.write_record([
                r.info.label.clone(),
                s.size.to_string(),
                s.classes.to_string(),
                s.objects.0.to_string(),
                s.objects.1.to_string(),
                m.images.to_string(),
                m.anchors_per_image().to_string(),
                format!("{:.4}", m.per_image(m.counts.positives)),
                format!("{:.4}", m.per_image(m.counts.ignored)),
                format!("{:.4}", m.per_image(m.counts.negatives)),
                format!("{:.4}", m.anchor_ratio()),
                format!("{:.4}", m.ratio()),
                choice(&r.fl, |c| c.candidate.lr.to_string()),
                choice(&r.fl, |c| f6(c.holdout_ap)),
                choice(&r.fl, |c| f6(c.ap.mean)),
                choice(&r.fl, |c| f6(c.ap.std)),
                choice(&r.ce, |c| c.candidate.alpha.to_string()),
                choice(&r.ce, |c| c.candidate.lr.to_string()),
                choice(&r.ce, |c| f6(c.holdout_ap)),
                choice(&r.ce, |c| f6(c.ap.mean)),
                choice(&r.ce, |c| f6(c.ap.std)),
                r.diffs.len().to_string(),
                f6(r.diff.mean),
                f6(r.diff.std),
            ])?;
        }
        Ok(())
    })?;
    crate::util::write_atomic(path, &bytes)
}

/// One point with an error bar: (ratio, AP points, std in AP points).
type Point = (f64, f64, f64);

fn log_range(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for x in xs.filter(|x| x.is_finite() && *x > 0.0) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    // a third of a decade of margin on either side
    (lo / 10f64.powf(1.0 / 3.0), hi * 10f64.powf(1.0 / 3.0))
}

/// Tick labels at 1, 2 and 5 of each decade only: a log axis ticks every integer multiple, and
/// labels at 6, 7, 8 and 9 run into each other.
fn log_tick_label(x: f64) -> String {
    if !(x.is_finite() && x > 0.0) {
        return String::new();
    }
    let mantissa = x / 10f64.powf(x.log10().floor());
    if [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6)
    {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

fn y_range(points: &[&[Point]], include_zero: bool) -> (f64, f64) {
    let mut lo = if include_zero { 0.0 } else { f64::INFINITY };
    let mut hi = if include_zero { 0.0 } else { f64::NEG_INFINITY };
    for p in points.iter().flat_map(|s| s.iter()) {
        lo = lo.min(p.1 - p.2);
        hi = hi.max(p.1 + p.2);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (-1.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(0.5);
    (lo - pad, hi + pad)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    series: &[(&str, Vec<Point>)],
    zero_line: bool,
    x_range: (f64, f64),
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let all: Vec<&[Point]> = series.iter().map(|s| s.1.as_slice()).collect();
    let (y0, y1) = y_range(&all, zero_line);
    let mut ctx = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d((x_range.0..x_range.1).log_scale(), y0..y1)
        .map_err(|e| anyhow!("{e}"))?;
    ctx.configure_mesh()
        .x_desc("binary (anchor, class) negatives per positive (log scale)")
        .y_desc(y_label)
        .x_label_formatter(&|x| log_tick_label(*x))
        .label_style(("sans-serif", 18))
        .axis_desc_style(("sans-serif", 20))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    if zero_line {
        ctx.draw_series(LineSeries::new(
            [(x_range.0, 0.0), (x_range.1, 0.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    }
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        ctx.draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.1)),
            color.stroke_width(3),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label(label.to_string())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
        ctx.draw_series(
            pts.iter()
                .map(|p| Circle::new((p.0, p.1), 5, color.filled())),
        )
        .map_err(|e| anyhow!("{e}"))?;
        ctx.draw_series(pts.iter().map(|p| {
            ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.stroke_width(2), 10)
        }))
        .map_err(|e| anyhow!("{e}"))?;
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 18))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Two panels: AP(FL) - AP(CE) with error bars over seeds, and each loss's AP.
pub fn write_figure(path: &Path, ladder: &Ladder) -> Result<()> {
    crate::plot::font::ensure_registered();
    let ratio = |r: &crate::experiments::imbalance::select::RungResult| r.info.imbalance.ratio();
    let diff: Vec<Point> = ladder
        .rungs
        .iter()
        .filter(|r| !r.diffs.is_empty() && ratio(r).is_finite())
        .map(|r| (ratio(r), 100.0 * r.diff.mean, 100.0 * r.diff.std))
        .collect();
    let aps = |f: fn(&crate::experiments::imbalance::select::RungResult) -> &Option<Choice>| {
        ladder
            .rungs
            .iter()
            .filter_map(|r| {
                f(r).as_ref()
                    .filter(|_| ratio(r).is_finite())
                    .map(|c| (ratio(r), 100.0 * c.ap.mean, 100.0 * c.ap.std))
            })
            .collect::<Vec<Point>>()
    };
    let fl = aps(|r| &r.fl);
    let ce = aps(|r| &r.ce);
    let x_range = log_range(ladder.rungs.iter().map(ratio));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = crate::util::temp_beside(path);
    let draw = || -> Result<()> {
        let root = BitMapBackend::new(&tmp, (1800, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let body = root
            .titled(
                "Focal loss vs cross entropy along the foreground:background imbalance",
                ("sans-serif", 28),
            )
            .map_err(|e| anyhow!("{e}"))?;
        let panels = body.split_evenly((1, 2));
        draw_panel(
            &panels[0],
            "AP(FL) - AP(CE), mean ± std over seeds",
            "AP difference (points)",
            &[("FL - CE", diff)],
            true,
            x_range,
        )?;
        draw_panel(
            &panels[1],
            "validation AP of each loss at its chosen settings",
            "AP (points)",
            &[("FL (gamma 2)", fl), ("CE (best alpha)", ce)],
            false,
            x_range,
        )?;
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

fn pts(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}", 100.0 * v)
    } else {
        "–".into()
    }
}

/// The crossover statement of the summary.
pub fn crossover_text(ladder: &Ladder) -> String {
    let with: Vec<_> = ladder
        .rungs
        .iter()
        .filter(|r| !r.diffs.is_empty())
        .collect();
    if with.is_empty() {
        return "No rung has finished runs of both losses yet, so nothing can be said about a crossover."
            .into();
    }
    let lo = with
        .first()
        .map(|r| r.info.imbalance.ratio())
        .unwrap_or(0.0);
    let hi = with.last().map(|r| r.info.imbalance.ratio()).unwrap_or(0.0);
    let spread = with.iter().map(|r| r.diff.std).fold(0.0f64, f64::max);
    let seeds = with.iter().map(|r| r.diffs.len()).min().unwrap_or(0);
    let spread_text = if seeds < 2 {
        "one seed per rung, so no seed spread is known and no difference can be called beyond it"
            .to_string()
    } else {
        format!(
            "the largest seed spread (std of the paired difference) is {} AP points over {seeds} seeds",
            pts(spread)
        )
    };
    let beyond = |r: &crate::experiments::imbalance::select::RungResult| {
        seeds >= 2 && r.diff.mean.abs() > r.diff.std
    };
    let mut t = String::new();
    if ladder.crossings.is_empty() {
        let fl_ahead = with[0].diff.mean > 0.0;
        let _ = write!(
            t,
            "**No crossover was found** between 1:{lo:.0} and 1:{hi:.0}: {} ({} of {} rungs beyond the seed spread); {spread_text}.",
            if fl_ahead {
                "FL is ahead of CE at every rung"
            } else {
                "FL is not ahead of CE at any rung (behind or tied)"
            },
            with.iter().filter(|r| beyond(r)).count(),
            with.len()
        );
    } else {
        for (i, c) in ladder.crossings.iter().enumerate() {
            let (a, b) = (&ladder.rungs[c.below], &ladder.rungs[c.above]);
            let _ = write!(
                t,
                "{}**{} overtakes {} near 1:{:.0}** (linear in log ratio between '{}' at 1:{:.0}, {:+} AP, and '{}' at 1:{:.0}, {:+} AP). ",
                if i > 0 { "Then " } else { "" },
                if c.fl_overtakes { "FL" } else { "CE" },
                if c.fl_overtakes { "CE" } else { "FL" },
                c.ratio,
                a.info.label,
                a.info.imbalance.ratio(),
                pts(a.diff.mean),
                b.info.label,
                b.info.imbalance.ratio(),
                pts(b.diff.mean),
            );
        }
        if ladder.crossings.len() > 1 {
            t += "The sign changes more than once, so the curve is dominated by noise in this range. ";
        }
        let _ = write!(
            t,
            "{} of {} rungs differ by more than the seed spread; {spread_text}.",
            with.iter().filter(|r| beyond(r)).count(),
            with.len()
        );
    }
    let unlearned: Vec<String> = with
        .iter()
        .filter(|r| r.neither_learned())
        .map(|r| format!("'{}'", r.info.label))
        .collect();
    if !unlearned.is_empty() {
        let _ = write!(
            t,
            " Neither loss reaches {} AP at {}: the detectors have barely learned {} in this schedule, so the sign \
             there says little about the losses (a longer `--iterations` may).",
            pts(LEARNED_AP),
            unlearned.join(", "),
            if unlearned.len() == 1 { "that rung" } else { "those rungs" }
        );
    }
    t
}

pub fn summary_md(spec: &ImbalanceSpec, ladder: &Ladder, note: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "# {}\n", spec.title);
    let _ = writeln!(t, "{note}\n");
    let _ = writeln!(
        t,
        "Imbalance ratio: binary (anchor, class) sigmoid samples with target 0 per sample with target 1 over \
         the training images, with the runs' anchors and matcher, ignored anchors excluded (K per negative anchor, \
         K - 1 per positive anchor): what the classification loss sums over.\n"
    );
    let _ = writeln!(t, "## Crossover\n\n{}\n", crossover_text(ladder));
    let _ = writeln!(t, "![AP(FL) - AP(CE) against the imbalance]({FIGURE})\n");
    let _ = writeln!(t, "## Rungs (sorted by measured ratio)\n");
    let _ = writeln!(
        t,
        "| rung | canvas | K | objects | anchors/img | pos/img | neg:pos anchors | neg:pos binary | FL lr | FL AP | CE alpha, lr | CE AP | FL - CE (per seed) |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &ladder.rungs {
        let m = &r.info.imbalance;
        let s = &r.info.shapes;
        let ap = |c: &Option<Choice>| match c {
            Some(c) if c.ap.mean.is_finite() => format!(
                "{} ± {}{}",
                pts(c.ap.mean),
                pts(c.ap.std),
                if c.diverged > 0 {
                    format!(" ({} diverged)", c.diverged)
                } else {
                    String::new()
                }
            ),
            _ => "–".into(),
        };
        let per_seed = r
            .diffs
            .iter()
            .map(|d| format!("{:+.1}", 100.0 * d))
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = writeln!(
            t,
            "| {} | {} | {} | {}-{} | {} | {:.1} | 1:{:.0} | 1:{:.0} | {} | {} | {} | {} | {} ± {} ({}) |",
            r.info.label,
            s.size,
            s.classes,
            s.objects.0,
            s.objects.1,
            m.anchors_per_image(),
            m.per_image(m.counts.positives),
            m.anchor_ratio(),
            m.ratio(),
            r.fl.as_ref().map(|c| c.candidate.lr.to_string()).unwrap_or("–".into()),
            ap(&r.fl),
            r.ce
                .as_ref()
                .map(|c| format!("{}, {}", c.candidate.alpha, c.candidate.lr))
                .unwrap_or("–".into()),
            ap(&r.ce),
            pts(r.diff.mean),
            pts(r.diff.std),
            if per_seed.is_empty() { "–".into() } else { per_seed },
        );
    }
    let tuned_on = match ladder.tune_seeds {
        1 => "seed 0".to_string(),
        n => format!("seeds 0-{}", n - 1),
    };
    let _ = writeln!(
        t,
        "\nAP in points (COCO AP@[.5:.95] x 100) on the validation split; ± is the sample standard deviation over seeds. \
         Each loss's lr (and CE's alpha) is the one with the highest mean AP on the held-out training images over \
         {tuned_on}, which trained the whole grid; every run's held-out and validation AP is in `results.csv`.\n"
    );
    let _ = writeln!(
        t,
        "Caveat: the rungs change K and objects per image (and possibly the canvas) together, so a rung with more classes \
         also has fewer training instances per class; the ratio is the axis, not the only thing that changes."
    );
    let finished = ladder.outcomes.len();
    if ladder.missing > 0 {
        let _ = writeln!(
            t,
            "\n**Incomplete:** {} of {} runs have not finished; choices and differences use the finished ones.",
            ladder.missing,
            finished + ladder.missing
        );
    }
    let fam = |f: Family| {
        ladder
            .outcomes
            .iter()
            .filter(|o| o.candidate.family == f && o.record.diverged)
            .count()
    };
    let (dfl, dce) = (fam(Family::Fl), fam(Family::Ce));
    if dfl + dce > 0 {
        let _ = writeln!(t, "\nDiverged runs (counted as AP 0): FL {dfl}, CE {dce}.");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_labels_only_1_2_and_5_of_each_decade() {
        let labels: Vec<String> = [
            100.0, 200.0, 300.0, 500.0, 900.0, 1000.0, 2000.0, 7000.0, 50000.0,
        ]
        .into_iter()
        .map(log_tick_label)
        .collect();
        assert_eq!(
            labels,
            ["100", "200", "", "500", "", "1000", "2000", "", "50000"]
        );
        assert_eq!(log_tick_label(0.0), "");
    }
}
