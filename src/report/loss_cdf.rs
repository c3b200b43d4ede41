//! Files of the loss-CDF analysis: `cdf.csv`, `figure4.png`, `summary.csv`, `summary.md`.

use super::plot::{write_panels, LineChart, Series};
use crate::analysis::loss_cdf::{paper_findings, Curve, SampleSet, HARD_FRACTIONS};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

/// Where the samples came from, for the summary's header.
pub struct Provenance {
    pub source: String,
    pub positives_seen: u64,
    pub negatives_seen: u64,
    pub note: String,
}

/// Writes all outputs into `out_dir` (each file atomically).
pub fn write_all(out_dir: &Path, curves: &[Curve], provenance: &Provenance) -> Result<()> {
    write_cdf_csv(&out_dir.join("cdf.csv"), curves)?;
    write_figure(
        &out_dir.join("figure4.png"),
        curves,
        "Figure 4: cumulative normalized loss",
    )?;
    write_summary_csv(&out_dir.join("summary.csv"), curves)?;
    write_summary_md(&out_dir.join("summary.md"), curves, provenance)
}

pub fn write_cdf_csv(path: &Path, curves: &[Curve]) -> Result<()> {
    let bytes = super::csv_bytes(|w| {
        w.write_record(["gamma", "set", "fraction", "cumulative_loss"])?;
        for c in curves {
            for &(f, y) in &c.points {
                w.write_record([
                    c.gamma.to_string(),
                    c.set.name().into(),
                    format!("{f:.6}"),
                    format!("{y:.9}"),
                ])?;
            }
        }
        Ok(())
    })?;
    crate::util::write_atomic(path, &bytes)
}

/// Two panels as in the paper: positives (left) and negatives (right), one curve per gamma.
pub fn write_figure(path: &Path, curves: &[Curve], caption: &str) -> Result<()> {
    let panel = |set: SampleSet, title: &str, x_label: &str| LineChart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: "cumulative normalized loss".into(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.0)),
        series: curves
            .iter()
            .filter(|c| c.set == set)
            .map(|c| Series {
                label: format!("γ = {}", c.gamma),
                points: c.points.clone(),
                ..Default::default()
            })
            .collect(),
    };
    let panels = [
        panel(
            SampleSet::Positive,
            "positive samples",
            "fraction of foreground examples",
        ),
        panel(
            SampleSet::Negative,
            "negative samples",
            "fraction of background examples",
        ),
    ];
    write_panels(path, caption, &panels, (2000, 900))
}

pub fn write_summary_csv(path: &Path, curves: &[Curve]) -> Result<()> {
    let bytes = super::csv_bytes(|w| {
        let mut header = vec!["gamma".to_string(), "set".into(), "samples".into()];
        header.extend(
            HARD_FRACTIONS
                .iter()
                .map(|q| format!("share_hardest_{}pct", (q * 100.0).round())),
        );
        w.write_record(&header)?;
        for c in curves {
            let mut row = vec![
                c.gamma.to_string(),
                c.set.name().into(),
                c.samples.to_string(),
            ];
            row.extend(c.hardest_shares.iter().map(|s| format!("{s:.6}")));
            w.write_record(&row)?;
        }
        Ok(())
    })?;
    crate::util::write_atomic(path, &bytes)
}

pub fn write_summary_md(path: &Path, curves: &[Curve], provenance: &Provenance) -> Result<()> {
    let mut s = String::new();
    let _ = writeln!(s, "# Loss CDF (the paper's Figure 4)\n");
    let _ = writeln!(s, "Source: {}\n", provenance.source);
    if !provenance.note.is_empty() {
        let _ = writeln!(s, "{}\n", provenance.note);
    }
    let _ = writeln!(
        s,
        "Samples seen: {} positive, {} negative (curves use a uniform sample of at most the caps).\n",
        provenance.positives_seen, provenance.negatives_seen
    );
    let _ = writeln!(
        s,
        "Share of the loss held by the hardest fraction of samples:\n"
    );
    let mut header = "| set | gamma | samples |".to_string();
    let mut rule = "|---|---|---|".to_string();
    for q in HARD_FRACTIONS {
        let _ = write!(header, " hardest {}% |", (q * 100.0).round());
        rule.push_str("---|");
    }
    let _ = writeln!(s, "{header}\n{rule}");
    for c in curves {
        let _ = write!(s, "| {} | {} | {} |", c.set.name(), c.gamma, c.samples);
        for v in &c.hardest_shares {
            let _ = write!(s, " {:.1}% |", 100.0 * v);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n## The paper's statements beside ours\n");
    let _ = writeln!(
        s,
        "| paper (§5.1, Figure 4) | criterion | ours | agrees |\n|---|---|---|---|"
    );
    for f in paper_findings(curves) {
        let verdict = match f.agrees {
            Some(true) => "yes",
            Some(false) => "no",
            None => "n/a",
        };
        let _ = writeln!(
            s,
            "| \"{}\" | {} | {} | {} |",
            f.paper, f.criterion, f.ours, verdict
        );
    }
    crate::util::write_atomic(path, s.as_bytes())
}
