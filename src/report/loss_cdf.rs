//! Files of the loss-CDF analysis: `cdf.csv`, `figure4.png`, `summary.csv`, `summary.md`, and for
//! `--over-training` `over_training.csv` and `over_training.png`.
//!
//! Both analyses share `summary.csv` and `summary.md` in one output directory: each rewrites its own
//! rows (the `analysis` column) and its own part of the markdown and keeps the other's, but only
//! when both are of the same model or samples file: `analysed.txt` names what the folder's files
//! describe, and an analysis of something else first removes the other's files, so that every file
//! of a folder comes from one source.

use crate::analysis::loss_cdf::{
    figure_readings, paper_findings, Checkpoint, Curve, Finding, SampleSet, HARD_FRACTIONS,
};
use crate::analysis::loss_cdf_spread::{
    AcrossModels, Agreement, CurveSpread, ModelCheckpoints, ModelCurves,
};
use crate::plot::{write_panels, LineChart, Series};
use crate::util::stat::Stat;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// Where the samples came from, for the summary's header.
pub struct Provenance {
    /// What was analysed, as a key: `model <run dir>` or `samples <file>`.
    pub key: String,
    pub source: String,
    pub positives_seen: u64,
    pub negatives_seen: u64,
    pub note: String,
}

/// Every file an analysis may write into its folder.
const OUTPUTS: [&str; 6] = [
    "cdf.csv",
    "figure4.png",
    "summary.csv",
    "summary.md",
    "over_training.csv",
    "over_training.png",
];
const KEY_FILE: &str = "analysed.txt";

/// Makes `out_dir` a folder of `key`'s analyses: when it holds outputs of something else (or of an
/// unknown source), they are removed first, with a warning naming the folder.
fn claim_folder(out_dir: &Path, key: &str) -> Result<()> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let key_path = out_dir.join(KEY_FILE);
    let previous = std::fs::read_to_string(&key_path).ok();
    if previous.as_deref().map(str::trim) == Some(key) {
        return Ok(());
    }
    let stale: Vec<&str> = OUTPUTS
        .into_iter()
        .filter(|f| out_dir.join(f).exists())
        .collect();
    if !stale.is_empty() {
        eprintln!(
            "note: {} held the analysis of {}; its files ({}) are replaced by this one's",
            out_dir.display(),
            previous.as_deref().map_or("another source", str::trim),
            stale.join(", ")
        );
        for f in stale {
            std::fs::remove_file(out_dir.join(f))
                .with_context(|| format!("cannot remove {}", out_dir.join(f).display()))?;
        }
    }
    crate::util::write_atomic(&key_path, format!("{key}\n").as_bytes())
}

/// Writes all outputs into `out_dir` (each file atomically). The figure, `cdf.csv` and the
/// statements are of the first model; `summary.csv` holds every model's rows and `summary.md`
/// their spread (`across`, for two models or more).
pub fn write_all(
    out_dir: &Path,
    models: &[ModelCurves],
    across: Option<&AcrossModels>,
    provenance: &Provenance,
) -> Result<()> {
    let first = models
        .first()
        .context("no model to write the loss CDF of")?;
    claim_folder(out_dir, &provenance.key)?;
    write_cdf_csv(&out_dir.join("cdf.csv"), &first.curves)?;
    let caption = if models.len() > 1 {
        format!(
            "Figure 4: cumulative normalized loss ({}, the first of {} models)",
            model_label(&first.model, first.seed),
            models.len()
        )
    } else {
        "Figure 4: cumulative normalized loss".into()
    };
    write_figure(&out_dir.join("figure4.png"), &first.curves, &caption)?;
    let rows: Vec<SummaryRow> = models
        .iter()
        .flat_map(|m| {
            m.curves.iter().map(move |c| SummaryRow {
                model: &m.model,
                seed: m.seed,
                iteration: None,
                curve: c,
            })
        })
        .collect();
    merge_summary_csv(&out_dir.join("summary.csv"), FIGURE4, &rows)?;
    write_summary_md(&out_dir.join("summary.md"), models, across, provenance)
}

/// `` `runs/x` (seed 1) ``: a model as the summaries name it.
fn model_label(model: &str, seed: Option<u64>) -> String {
    match seed {
        Some(s) => format!("`{model}` (seed {s})"),
        None => format!("`{model}`"),
    }
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
    let labelled: Vec<(String, &Curve)> = curves
        .iter()
        .map(|c| (format!("γ = {}", c.gamma), c))
        .collect();
    write_two_panels(path, caption, &labelled)
}

/// Positives (left) and negatives (right), one labelled curve per entry.
fn write_two_panels(path: &Path, caption: &str, curves: &[(String, &Curve)]) -> Result<()> {
    let panel = |set: SampleSet, title: &str, x_label: &str| LineChart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: "cumulative normalized loss".into(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.0)),
        series: curves
            .iter()
            .filter(|(_, c)| c.set == set)
            .map(|(label, c)| Series {
                label: label.clone(),
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

const FIGURE4: &str = "figure4";
const OVER_TRAINING: &str = "over-training";

/// One row of `summary.csv`: a curve of a model, at a checkpoint for `--over-training`.
struct SummaryRow<'a> {
    model: &'a str,
    seed: Option<u64>,
    /// Empty for Figure 4 rows.
    iteration: Option<usize>,
    curve: &'a Curve,
}

fn summary_header() -> Vec<String> {
    let mut header = vec![
        "analysis".to_string(),
        "model".into(),
        "seed".into(),
        "iteration".into(),
        "gamma".into(),
        "set".into(),
        "samples".into(),
    ];
    header.extend(
        HARD_FRACTIONS
            .iter()
            .map(|q| format!("share_hardest_{}pct", (q * 100.0).round())),
    );
    header
}

/// Rewrites the rows of `analysis` in `summary.csv`, keeping the other analysis' rows (when the
/// existing file has this header).
fn merge_summary_csv(path: &Path, analysis: &str, rows: &[SummaryRow]) -> Result<()> {
    let header = summary_header();
    let mut kept: Vec<csv::StringRecord> = Vec::new();
    if let Ok(mut r) = csv::Reader::from_path(path) {
        if r.headers().is_ok_and(|h| h.iter().eq(header.iter())) {
            kept = r
                .records()
                .filter_map(|rec| rec.ok())
                .filter(|rec| rec.get(0) != Some(analysis))
                .collect();
        }
    }
    let bytes = super::csv_bytes(|w| {
        w.write_record(&header)?;
        let mut mine = Vec::new();
        for r in rows {
            let c = r.curve;
            let mut row = vec![
                analysis.to_string(),
                r.model.to_string(),
                r.seed.map(|s| s.to_string()).unwrap_or_default(),
                r.iteration.map(|i| i.to_string()).unwrap_or_default(),
                c.gamma.to_string(),
                c.set.name().into(),
                c.samples.to_string(),
            ];
            row.extend(c.hardest_shares.iter().map(|s| format!("{s:.6}")));
            mine.push(csv::StringRecord::from(row));
        }
        // Figure 4 first, then the checkpoints, whichever was written last.
        let (first, second) = if analysis == FIGURE4 {
            (mine, kept)
        } else {
            (kept, mine)
        };
        for rec in first.iter().chain(&second) {
            w.write_record(rec)?;
        }
        Ok(())
    })?;
    crate::util::write_atomic(path, &bytes)
}

const OT_BEGIN: &str = "<!-- over-training: written by loss-cdf --over-training -->";
const OT_END: &str = "<!-- /over-training -->";

/// Splits `summary.md` text into (Figure 4 part, over-training section with its markers).
fn split_summary_md(text: &str) -> (String, String) {
    match (text.find(OT_BEGIN), text.find(OT_END)) {
        (Some(a), Some(b)) if b > a => {
            let end = b + OT_END.len();
            let rest = format!("{}{}", &text[..a], &text[end..]);
            (rest.trim_end().to_string(), text[a..end].to_string())
        }
        _ => (text.trim_end().to_string(), String::new()),
    }
}

fn write_summary_md(
    path: &Path,
    models: &[ModelCurves],
    across: Option<&AcrossModels>,
    provenance: &Provenance,
) -> Result<()> {
    let first = models.first().context("no model to summarize")?;
    let curves = first.curves.as_slice();
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
    if models.len() > 1 {
        let _ = writeln!(
            s,
            "The table, `figure4.png`, `cdf.csv` and the statements below are of the first model, {}; \
             [Across the {} models](#across-the-models) gives the spread over all of them and each \
             one's numbers.\n",
            model_label(&first.model, first.seed),
            models.len()
        );
    }
    let _ = writeln!(
        s,
        "Share of the loss held by the hardest fraction of samples:\n"
    );
    let _ = writeln!(
        s,
        "{}",
        share_header("| set | gamma | samples |", "|---|---|---|")
    );
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
    write_findings(&mut s, &paper_findings(curves));
    let _ = writeln!(
        s,
        "\n## Figure 4 read off the plot\n\nThe project's reading of the paper's curves (docs/paper.md §5), \
         stricter than the text's \"roughly half\":\n"
    );
    let _ = writeln!(
        s,
        "| reading | criterion | ours | agrees |\n|---|---|---|---|"
    );
    write_findings(&mut s, &figure_readings(curves));
    if let Some(a) = across {
        write_across_models(&mut s, models, a);
    }
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let (_, section) = split_summary_md(&existing);
    if !section.is_empty() {
        let _ = writeln!(s, "\n{section}");
    }
    crate::util::write_atomic(path, s.as_bytes())
}

/// A table header: `lead` columns, then one per hard fraction.
fn share_header(lead: &str, lead_rule: &str) -> String {
    let (mut header, mut rule) = (lead.to_string(), lead_rule.to_string());
    for q in HARD_FRACTIONS {
        let _ = write!(header, " hardest {}% |", (q * 100.0).round());
        rule.push_str("---|");
    }
    format!("{header}\n{rule}")
}

/// `68.6 ± 1.2%`: a share's mean and sample standard deviation, in percent.
fn pct_spread(v: &Stat) -> String {
    format!("{:.1} ± {:.1}%", 100.0 * v.mean, 100.0 * v.std)
}

/// The shares' spread, one row per curve, after `lead` cells.
fn write_spread_rows(s: &mut String, lead: &str, spreads: &[CurveSpread]) {
    for c in spreads {
        let _ = write!(s, "| {lead}{} | {} |", c.set.name(), c.gamma);
        for v in &c.shares {
            let _ = write!(s, " {} |", pct_spread(v));
        }
        let _ = writeln!(s);
    }
}

/// `summary.md`'s section on several models: the shares' spread and each statement model by model.
fn write_across_models(s: &mut String, models: &[ModelCurves], a: &AcrossModels) {
    let _ = writeln!(s, "\n## Across the models\n");
    let names: Vec<String> = models
        .iter()
        .map(|m| model_label(&m.model, m.seed))
        .collect();
    let _ = writeln!(
        s,
        "{} models: {}. Share of the loss held by the hardest fraction of samples, mean ± sample \
         standard deviation over the models:\n",
        a.models,
        names.join(", ")
    );
    let _ = writeln!(s, "{}", share_header("| set | gamma |", "|---|---|"));
    write_spread_rows(s, "", &a.spreads);
    let _ = writeln!(
        s,
        "\nThe paper's statements and the project's readings, model by model (ours in the order above):\n"
    );
    let _ = writeln!(
        s,
        "| statement | criterion | agrees on | ours |\n|---|---|---|---|"
    );
    for g in a.paper.iter().chain(&a.readings) {
        write_agreement(s, g);
    }
}

fn write_agreement(s: &mut String, g: &Agreement) {
    let _ = writeln!(
        s,
        "| \"{}\" | {} | {} of {} models | {} |",
        g.paper,
        g.criterion,
        g.agree,
        g.judged,
        g.ours.join(" / ")
    );
}

/// One table row per finding: the statement, our criterion, our number and the verdict.
fn write_findings(s: &mut String, findings: &[Finding]) {
    for f in findings {
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
}

/// `iteration N (x%)`: a checkpoint's legend label.
pub fn checkpoint_label(c: &Checkpoint) -> String {
    format!(
        "iteration {} ({:.0}%)",
        c.iteration,
        100.0 * c.iteration as f64 / c.of_iterations.max(1) as f64
    )
}

/// The files of `loss-cdf --over-training`: `over_training.csv`, `over_training.png` (the first
/// model's checkpoints), and every model's checkpoint rows in `summary.csv` and section in
/// `summary.md`, with their spread (`spreads`, per iteration, for two models or more).
pub fn write_over_training(
    out_dir: &Path,
    models: &[ModelCheckpoints],
    spreads: &[(usize, Vec<CurveSpread>)],
    provenance: &Provenance,
) -> Result<()> {
    let first = models
        .first()
        .context("no model to write the checkpoints of")?;
    claim_folder(out_dir, &provenance.key)?;
    let bytes = super::csv_bytes(|w| {
        w.write_record([
            "model",
            "seed",
            "iteration",
            "set",
            "fraction",
            "cumulative_loss",
        ])?;
        for m in models {
            let seed = m.seed.map(|s| s.to_string()).unwrap_or_default();
            for cp in &m.checkpoints {
                for c in &cp.curves {
                    for &(f, y) in &c.points {
                        w.write_record([
                            m.model.clone(),
                            seed.clone(),
                            cp.iteration.to_string(),
                            c.set.name().into(),
                            format!("{f:.6}"),
                            format!("{y:.9}"),
                        ])?;
                    }
                }
            }
        }
        Ok(())
    })?;
    crate::util::write_atomic(&out_dir.join("over_training.csv"), &bytes)?;

    let checkpoints = &first.checkpoints;
    let gamma = checkpoints
        .first()
        .and_then(|c| c.curves.first())
        .map_or(0.0, |c| c.gamma);
    let labelled: Vec<(String, &Curve)> = checkpoints
        .iter()
        .flat_map(|cp| cp.curves.iter().map(move |c| (checkpoint_label(cp), c)))
        .collect();
    let of_models = if models.len() > 1 {
        format!(
            ", {}",
            model_label(&first.model, first.seed).replace('`', "")
        )
    } else {
        String::new()
    };
    write_two_panels(
        &out_dir.join("over_training.png"),
        &format!("Cumulative normalized loss during training (γ = {gamma}{of_models})"),
        &labelled,
    )?;

    let rows: Vec<SummaryRow> = models
        .iter()
        .flat_map(|m| {
            m.checkpoints.iter().flat_map(move |cp| {
                cp.curves.iter().map(move |c| SummaryRow {
                    model: &m.model,
                    seed: m.seed,
                    iteration: Some(cp.iteration),
                    curve: c,
                })
            })
        })
        .collect();
    merge_summary_csv(&out_dir.join("summary.csv"), OVER_TRAINING, &rows)?;

    let md_path = out_dir.join("summary.md");
    let mut sec = String::new();
    let _ = writeln!(sec, "{OT_BEGIN}\n");
    let _ = writeln!(sec, "## Over training (γ = {gamma})\n");
    let _ = writeln!(sec, "Source: {}\n", provenance.source);
    if !provenance.note.is_empty() {
        let _ = writeln!(sec, "{}\n", provenance.note);
    }
    let several = models.len() > 1;
    let _ = writeln!(
        sec,
        "Share of the loss held by the hardest fraction of samples at each checkpoint \
         (`over_training.png`{}, `over_training.csv`):\n",
        if several {
            " draws the first model"
        } else {
            ""
        }
    );
    let (lead, lead_rule) = if several {
        (
            "| model | checkpoint | set | samples |",
            "|---|---|---|---|",
        )
    } else {
        ("| checkpoint | set | samples |", "|---|---|---|")
    };
    let _ = writeln!(sec, "{}", share_header(lead, lead_rule));
    for m in models {
        for cp in &m.checkpoints {
            for c in &cp.curves {
                if several {
                    let _ = write!(sec, "| {} ", model_label(&m.model, m.seed));
                }
                let _ = write!(
                    sec,
                    "| {} | {} | {} |",
                    checkpoint_label(cp),
                    c.set.name(),
                    c.samples
                );
                for v in &c.hardest_shares {
                    let _ = write!(sec, " {:.1}% |", 100.0 * v);
                }
                let _ = writeln!(sec);
            }
        }
    }
    if !spreads.is_empty() {
        let _ = writeln!(
            sec,
            "\nMean ± sample standard deviation over the {} models, checkpoint by checkpoint:\n",
            models.len()
        );
        let _ = writeln!(
            sec,
            "{}",
            share_header("| iteration | set | gamma |", "|---|---|---|")
        );
        for (iteration, sp) in spreads {
            write_spread_rows(&mut sec, &format!("{iteration} | "), sp);
        }
    }
    let _ = write!(sec, "\n{OT_END}");
    let existing = std::fs::read_to_string(&md_path).unwrap_or_default();
    let (figure4, _) = split_summary_md(&existing);
    let text = if figure4.is_empty() {
        format!("# Loss CDF\n\n{sec}\n")
    } else {
        format!("{figure4}\n\n{sec}\n")
    };
    crate::util::write_atomic(&md_path, text.as_bytes())
}
