//! Gathers the records of a sweep's finished runs into rows, per-variant means and standard
//! deviations, and verdicts on the paper's findings.

use super::runner::{read_record, run_dir, Job, RunRecord};
use super::spec::{label_matches, ExperimentSpec, FindingKind, PaperRow};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use crate::util::stat::Stat;

/// One finished run.
#[derive(Debug, Clone)]
pub struct Row {
    pub job: Job,
    pub record: RunRecord,
}

/// Per-variant summary over seeds.
#[derive(Debug, Clone)]
pub struct VariantSummary {
    pub label: String,
    pub runs: usize,
    pub diverged: usize,
    pub ap: Stat,
    pub ap50: Stat,
    pub ap75: Stat,
    pub paper: Option<PaperRow>,
    /// AP of the same configuration in the reference table, over every seed it holds (matched by
    /// config hash and seed), and how many runs.
    pub reference: Option<(Stat, usize)>,
    /// Value of the spec's x key for this variant, when numeric.
    pub x: Option<f64>,
    /// The variant's series: its own, or the value of the spec's series key as text.
    pub series: Option<String>,
}

/// Where one series of a training-length sweep converges.
#[derive(Debug, Clone, PartialEq)]
pub struct Converged {
    pub series: String,
    /// The largest x with runs, and its mean AP.
    pub longest: (f64, f64),
    /// The smallest x whose mean AP is within the tolerance of the longest's, and that AP.
    pub shortest_within: (f64, f64),
    /// Whether a shorter length than the longest is within the tolerance: if not, the series may
    /// still be rising and the sweep should be extended.
    pub flattened: bool,
}

/// Per series (a variant without one is its own), the shortest x whose mean AP is within `within`
/// (relative) of the mean AP at the series' largest x. Series with fewer than two lengths are left out.
pub fn convergence(summaries: &[VariantSummary], within: f64) -> Vec<Converged> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for s in summaries
        .iter()
        .filter(|s| s.runs > 0 && s.ap.mean.is_finite())
    {
        let (Some(x), key) = (s.x, s.series.clone().unwrap_or_else(|| s.label.clone())) else {
            continue;
        };
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, points)) => points.push((x, s.ap.mean)),
            None => series.push((key, vec![(x, s.ap.mean)])),
        }
    }
    series
        .into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .map(|(key, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let longest = points[points.len() - 1];
            let shortest_within = *points
                .iter()
                .find(|p| p.1 >= (1.0 - within) * longest.1)
                .unwrap_or(&longest);
            Converged {
                series: key,
                longest,
                shortest_within,
                flattened: shortest_within.0 < longest.0,
            }
        })
        .collect()
}

/// A paper finding with our verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub paper: String,
    pub ours: String,
    /// `None` when the runs needed are missing, or when a comparison has only one seed.
    pub reproduced: Option<bool>,
}

/// Everything the report needs.
#[derive(Debug, Clone)]
pub struct Collected {
    pub rows: Vec<Row>,
    /// Config keys whose value differs between the runs (the knobs the sweep turns).
    pub varying_keys: Vec<String>,
    pub summaries: Vec<VariantSummary>,
    pub verdicts: Vec<Verdict>,
    /// Per series, where its AP comes within the spec's tolerance of its AP at the largest x.
    pub convergence: Vec<Converged>,
    pub missing: usize,
    /// Rows taken from an earlier `results.csv` because their run folders are absent.
    pub kept: usize,
    /// Rows taken from other experiments' tables (`--reuse-from`).
    pub borrowed: usize,
}

/// Reads whatever runs of `jobs` have finished under `out`. A job whose run folder has no record
/// keeps its row of an earlier `results.csv` in `out`, if there is one: run folders are not part
/// of a shared or committed results folder, and `--collect` there must not erase the table.
/// `reference`: a results table whose rows of the same configurations are summarized beside ours,
/// with the jobs of the seeds to look for there (the same variants, any number of seeds).
/// `borrowed`: runs of other experiments' tables (`borrowed_records`), taken last.
pub fn collect(
    spec: &ExperimentSpec,
    jobs: &[Job],
    out: &Path,
    reference: Option<(&Path, &[Job])>,
    borrowed: &HashMap<RunKey, RunRecord>,
) -> Result<Collected> {
    let earlier = earlier_records(&out.join("results.csv"))?;
    let reference = match reference {
        Some((path, ref_jobs)) => Some((earlier_records(path)?, ref_jobs)),
        None => None,
    };
    let mut rows = Vec::new();
    let (mut missing, mut kept, mut taken) = (0, 0, 0);
    for job in jobs {
        let key = (job.hash.clone(), job.seed);
        let record = match read_record(&run_dir(out, job))? {
            Some(record) => Some(record),
            None => match earlier.get(&key) {
                Some(row) => {
                    kept += 1;
                    Some(row.clone())
                }
                None => {
                    let row = borrowed.get(&key).cloned();
                    taken += usize::from(row.is_some());
                    row
                }
            },
        };
        match record {
            Some(record) => rows.push(Row {
                job: job.clone(),
                record,
            }),
            None => missing += 1,
        }
    }
    let varying_keys = varying_keys(jobs);
    let mut labels: Vec<(usize, String)> =
        jobs.iter().map(|j| (j.variant, j.label.clone())).collect();
    labels.dedup();
    let mut seen = std::collections::HashSet::new();
    labels.retain(|l| seen.insert(l.1.clone()));
    let summaries = labels
        .iter()
        .map(|(variant, label)| {
            let runs: Vec<&Row> = rows.iter().filter(|r| &r.job.label == label).collect();
            let pick =
                |f: fn(&RunRecord) -> f64| runs.iter().map(|r| f(&r.record)).collect::<Vec<_>>();
            let first = jobs.iter().find(|j| &j.label == label);
            VariantSummary {
                label: label.clone(),
                runs: runs.len(),
                diverged: runs.iter().filter(|r| r.record.diverged).count(),
                ap: Stat::of(&pick(|r| r.ap)),
                ap50: Stat::of(&pick(|r| r.ap50)),
                ap75: Stat::of(&pick(|r| r.ap75)),
                paper: spec.variants[*variant].paper,
                reference: reference.as_ref().and_then(|(table, ref_jobs)| {
                    let aps: Vec<f64> = ref_jobs
                        .iter()
                        .filter(|j| &j.label == label)
                        .filter_map(|j| table.get(&(j.hash.clone(), j.seed)).map(|r| r.ap))
                        .collect();
                    (!aps.is_empty()).then(|| (Stat::of(&aps), aps.len()))
                }),
                x: spec
                    .x
                    .as_ref()
                    .and_then(|x| first.and_then(|j| config_value(&j.config, &x.key)))
                    .and_then(|v| v.parse().ok()),
                series: spec.variants[*variant].series.clone().or_else(|| {
                    spec.series_key
                        .as_ref()
                        .and_then(|k| first.and_then(|j| config_value(&j.config, k)))
                }),
            }
        })
        .collect::<Vec<_>>();
    let verdicts = spec
        .findings
        .iter()
        .map(|f| judge(f.kind, &f.paper, &f.a, &f.b, &summaries))
        .collect();
    let convergence = spec
        .convergence
        .map(|c| convergence(&summaries, c.within))
        .unwrap_or_default();
    Ok(Collected {
        rows,
        varying_keys,
        summaries,
        verdicts,
        convergence,
        missing,
        kept,
        borrowed: taken,
    })
}

/// The runs of `jobs` that the tables `paths` (other experiments' `results.csv`) record, by
/// configuration hash and seed; the first table to record a run wins. A table that does not exist
/// is an error: `--reuse-from` names it on purpose.
pub fn borrowed_records(paths: &[PathBuf], jobs: &[Job]) -> Result<HashMap<RunKey, RunRecord>> {
    let mut out = HashMap::new();
    for path in paths {
        if !path.is_file() {
            bail!(
                "--reuse-from {}: no such results table (give an experiment's results folder or its results.csv)",
                path.display()
            );
        }
        let records = earlier_records(path)?;
        for job in jobs {
            let key = (job.hash.clone(), job.seed);
            if let Some(r) = records.get(&key) {
                out.entry(key).or_insert_with(|| r.clone());
            }
        }
    }
    Ok(out)
}

/// The records of an earlier `results.csv`, keyed by (config hash, seed); none if it does not
/// exist. A file that exists but cannot be read is an error, never a silently emptied table.
pub fn earlier_records(path: &Path) -> Result<HashMap<RunKey, RunRecord>> {
    Ok(earlier_rows(path, &[])?
        .into_iter()
        .map(|(key, (record, _))| (key, record))
        .collect())
}

/// A run's key in a results table: (config hash, seed).
pub type RunKey = (String, u64);

/// As [`earlier_records`], with the values of the numeric columns `extra` of each row beside its
/// record (in that order), for tables that hold more than a run record.
pub fn earlier_rows(path: &Path, extra: &[&str]) -> Result<HashMap<RunKey, (RunRecord, Vec<f64>)>> {
    let mut out = HashMap::new();
    if !path.exists() {
        return Ok(out);
    }
    let what = || {
        format!("cannot read the earlier rows of {} (move it away to rebuild the table from the run folders only)", path.display())
    };
    let mut reader = csv::Reader::from_path(path).with_context(what)?;
    let header = reader.headers().with_context(what)?.clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow!("no column '{name}'"))
            .with_context(what)
    };
    // Tables written before threads were recorded, or before runs could repeat others, lack
    // those columns.
    let optional = |name: &str| header.iter().position(|h| h == name);
    let (threads_col, same_as_col) = (optional(THREADS_COLUMN), optional(SAME_AS_COLUMN));
    let names: Vec<&str> = ["config_hash", "seed"]
        .into_iter()
        .chain(
            RECORD_COLUMNS
                .into_iter()
                .filter(|c| !OPTIONAL_COLUMNS.contains(c)),
        )
        .chain(extra.iter().copied())
        .collect();
    let cols: Vec<usize> = names.iter().map(|c| column(c)).collect::<Result<_>>()?;
    for (line, rec) in reader.records().enumerate() {
        let rec = rec.with_context(what)?;
        let field = |i: usize| rec.get(cols[i]).unwrap_or_default();
        let parse_f = |i: usize| -> Result<f64> {
            field(i)
                .parse()
                .with_context(|| format!("row {}: {} = '{}'", line + 2, names[i], field(i)))
        };
        // Losses and positives of a diverged run may be written as an empty field.
        let parse_nullable = |i: usize| -> Result<f64> {
            if field(i).is_empty() {
                Ok(f64::NAN)
            } else {
                parse_f(i)
            }
        };
        let parsed = (|| -> Result<(RunKey, (RunRecord, Vec<f64>))> {
            let key = (field(0).to_string(), parse_f(1)? as u64);
            let record =
                RunRecord {
                    ap: parse_f(2)?,
                    ap50: parse_f(3)?,
                    ap75: parse_f(4)?,
                    aps: parse_f(5)?,
                    apm: parse_f(6)?,
                    apl: parse_f(7)?,
                    final_loss_cls: parse_nullable(8)?,
                    final_loss_box: parse_nullable(9)?,
                    positives_per_image: parse_nullable(10)?,
                    iterations: parse_f(11)? as usize,
                    wall_seconds: parse_f(12)?,
                    device: field(13).to_string(),
                    diverged: field(14) == "true",
                    version: field(15).to_string(),
                    git_revision: field(16).to_string(),
                    threads: match threads_col
                        .and_then(|c| rec.get(c))
                        .filter(|v| !v.is_empty())
                    {
                        Some(v) => Some(v.parse().with_context(|| {
                            format!("row {}: {THREADS_COLUMN} = '{v}'", line + 2)
                        })?),
                        None => None,
                    },
                    same_as: same_as_col
                        .and_then(|c| rec.get(c))
                        .filter(|v| !v.is_empty())
                        .map(String::from),
                };
            let extras = (2 + RECORD_COLUMNS.len() - OPTIONAL_COLUMNS.len()..names.len())
                .map(parse_f)
                .collect::<Result<Vec<f64>>>()?;
            Ok((key, (record, extras)))
        })()
        .with_context(what)?;
        out.insert(parsed.0, parsed.1);
    }
    Ok(out)
}

/// A run record's fields in the order of [`RECORD_COLUMNS`], as `results.csv` writes them (a
/// non-finite loss or positives count, as a diverged run has, is an empty field).
pub fn record_fields(r: &RunRecord) -> Vec<String> {
    let nullable = |v: f64, digits: usize| {
        if v.is_finite() {
            format!("{v:.digits$}")
        } else {
            String::new()
        }
    };
    vec![
        format!("{:.6}", r.ap),
        format!("{:.6}", r.ap50),
        format!("{:.6}", r.ap75),
        format!("{:.6}", r.aps),
        format!("{:.6}", r.apm),
        format!("{:.6}", r.apl),
        nullable(r.final_loss_cls, 6),
        nullable(r.final_loss_box, 6),
        nullable(r.positives_per_image, 3),
        r.iterations.to_string(),
        format!("{:.1}", r.wall_seconds),
        r.device.clone(),
        r.diverged.to_string(),
        r.version.clone(),
        r.git_revision.clone(),
        r.threads.map(|t| t.to_string()).unwrap_or_default(),
        r.same_as.clone().unwrap_or_default(),
    ]
}

/// The threads a run trained on (empty for runs recorded before it was).
const THREADS_COLUMN: &str = "threads";
/// The run a run repeats step for step, empty for trained runs.
const SAME_AS_COLUMN: &str = "same_as";
/// Record columns that older tables lack.
const OPTIONAL_COLUMNS: [&str; 2] = [THREADS_COLUMN, SAME_AS_COLUMN];

/// The columns of a run record in `results.csv`, after the label, seed, hash and varying knobs.
pub const RECORD_COLUMNS: [&str; 17] = [
    "ap",
    "ap50",
    "ap75",
    "aps",
    "apm",
    "apl",
    "final_loss_cls",
    "final_loss_box",
    "positives_per_image",
    "iterations",
    "wall_seconds",
    "device",
    "diverged",
    "version",
    "git_revision",
    THREADS_COLUMN,
    SAME_AS_COLUMN,
];

fn judge(
    kind: FindingKind,
    paper: &str,
    a: &[String],
    b: &[String],
    summaries: &[VariantSummary],
) -> Verdict {
    let matching = |patterns: &[String]| -> Vec<&VariantSummary> {
        summaries
            .iter()
            .filter(|s| s.runs > 0 && patterns.iter().any(|p| label_matches(p, &s.label)))
            .collect()
    };
    let best = |v: &[&VariantSummary]| {
        v.iter()
            .copied()
            .max_by(|x, y| x.ap.mean.total_cmp(&y.ap.mean))
            .cloned()
    };
    // A best over some of its variants, or over variants with unequal seeds, may still change: no
    // verdict until each has as many runs as the sweep's most complete variant.
    let most = summaries.iter().map(|s| s.runs).max().unwrap_or(0);
    let unfinished = |patterns: &[String]| {
        summaries
            .iter()
            .any(|s| s.runs < most && patterns.iter().any(|p| label_matches(p, &s.label)))
    };
    let (ga, gb) = (matching(a), matching(b));
    let none = |why: &str| Verdict {
        paper: paper.into(),
        ours: why.into(),
        reproduced: None,
    };
    match kind {
        FindingKind::Beats => {
            let (Some(x), Some(y)) = (best(&ga), best(&gb)) else {
                return none("the runs needed have not finished");
            };
            if unfinished(a) || unfinished(b) {
                return none("some of the variants compared have not finished");
            }
            let diff = x.ap.mean - y.ap.mean;
            let spread = x.ap.std.max(y.ap.std);
            let seeds = x.runs.min(y.runs);
            // One seed has no spread to weigh the difference against: the direction is reported,
            // but no verdict is given.
            let reproduced = (seeds >= 2).then_some(diff > 0.0 && diff > spread);
            let spread_text = if seeds < 2 {
                "one seed, so no seed spread: run --seeds 3 for a verdict".to_string()
            } else {
                format!("seed spread (largest std) {:.1}", 100.0 * spread)
            };
            Verdict {
                paper: paper.into(),
                ours: format!(
                    "'{}' {:.1} AP vs '{}' {:.1} AP: difference {:+.1} ({spread_text})",
                    x.label,
                    100.0 * x.ap.mean,
                    y.label,
                    100.0 * y.ap.mean,
                    100.0 * diff
                ),
                reproduced,
            }
        }
        FindingKind::Collapses => {
            let top = summaries
                .iter()
                .filter(|s| s.runs > 0)
                .map(|s| s.ap.mean)
                .fold(f64::NEG_INFINITY, f64::max);
            if ga.is_empty() || !top.is_finite() {
                return none("the runs needed have not finished");
            }
            if summaries.iter().any(|s| s.runs < most) {
                return none("the sweep's best is not known until every variant has finished");
            }
            let collapsed = ga
                .iter()
                .all(|s| s.diverged == s.runs || s.ap.mean < 0.5 * top);
            let desc: Vec<String> = ga
                .iter()
                .map(|s| {
                    if s.diverged == s.runs {
                        format!("'{}' diverged", s.label)
                    } else {
                        format!("'{}' {:.1} AP", s.label, 100.0 * s.ap.mean)
                    }
                })
                .collect();
            // As for a difference, one seed gives the direction but no verdict (a seed can diverge).
            let seeds = ga.iter().map(|s| s.runs).min().unwrap_or(0);
            let one_seed = if seeds < 2 {
                "; one seed: run --seeds 3 for a verdict"
            } else {
                ""
            };
            Verdict {
                paper: paper.into(),
                ours: format!(
                    "{} against the sweep's best {:.1} AP (collapse = diverged or below half the best{one_seed})",
                    desc.join(", "),
                    100.0 * top
                ),
                reproduced: (seeds >= 2).then_some(collapsed),
            }
        }
    }
}

/// Flattens a config to `key.sub -> value text`, every key included (those the resolved TOML leaves
/// out at their defaults with their default text).
pub fn flatten(config: &crate::config::Config) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            toml::Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(config) {
        walk("", &v, &mut out);
    }
    for (key, default) in crate::config::Config::OMITTED_AT_DEFAULT {
        out.entry(key.to_string())
            .or_insert_with(|| default.to_string());
    }
    out
}

fn config_value(config: &crate::config::Config, key: &str) -> Option<String> {
    flatten(config).remove(key)
}

fn varying_keys(jobs: &[Job]) -> Vec<String> {
    let flat: Vec<BTreeMap<String, String>> = jobs.iter().map(|j| flatten(&j.config)).collect();
    let Some(first) = flat.first() else {
        return Vec::new();
    };
    first
        .keys()
        .filter(|k| k.as_str() != "seed" && flat.iter().any(|f| f.get(*k) != first.get(*k)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_shows_fields_left_out_at_their_defaults() {
        let default = crate::config::Config::default();
        let set = crate::config::Config::from_toml_str("", &["data.min_size=600".into()]).unwrap();
        let (a, b) = (flatten(&default), flatten(&set));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        assert_eq!(a["data.min_size"], "0");
        assert_eq!(b["data.min_size"], "600");
        assert_eq!(a["model.stem"], "conv3x3");
        assert_eq!(a["model.pretrained"], "");
    }

    #[test]
    fn convergence_is_the_shortest_length_within_the_tolerance_of_the_longest() {
        let v = |label: &str, series: &str, x: f64, ap: f64| VariantSummary {
            label: label.into(),
            runs: 2,
            diverged: 0,
            ap: Stat {
                mean: ap,
                std: 0.01,
            },
            ap50: Stat::default(),
            ap75: Stat::default(),
            paper: None,
            reference: None,
            x: Some(x),
            series: Some(series.into()),
        };
        let rows = [
            v("a1", "A", 1200.0, 0.10),
            v("a2", "A", 2400.0, 0.37),
            v("a3", "A", 3600.0, 0.40),
            v("b1", "B", 1200.0, 0.10),
            v("b2", "B", 2400.0, 0.20),
            v("b3", "B", 3600.0, 0.40),
            v("c1", "C", 1200.0, 0.30),
        ];
        let c = convergence(&rows, 0.10);
        assert_eq!(c.len(), 2, "a series of one length has no verdict");
        assert_eq!(
            (c[0].shortest_within, c[0].flattened),
            ((2400.0, 0.37), true)
        );
        // 0.36 is the bound: B reaches it only at the longest length, so it may still be rising
        assert_eq!(
            (c[1].shortest_within, c[1].flattened),
            ((3600.0, 0.40), false)
        );
    }

    #[test]
    fn verdicts_wait_for_every_variant_and_for_two_seeds() {
        let v = |label: &str, runs: usize, ap: f64| VariantSummary {
            label: label.into(),
            runs,
            diverged: 0,
            ap: Stat {
                mean: ap,
                std: 0.001,
            },
            ap50: Stat::default(),
            ap75: Stat::default(),
            paper: None,
            reference: None,
            x: None,
            series: None,
        };
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (low, fl, ce) = (labels(&["low"]), labels(&["fl"]), labels(&["ce *"]));
        let collapse =
            |rows: &[VariantSummary]| judge(FindingKind::Collapses, "", &low, &[], rows).reproduced;
        let beats =
            |rows: &[VariantSummary]| judge(FindingKind::Beats, "", &fl, &ce, rows).reproduced;
        // Half of a best that has not been trained yet is unknown, so is a best of part of a group.
        let partial = [
            v("low", 2, 0.2),
            v("fl", 2, 0.3),
            v("ce a", 2, 0.25),
            v("ce b", 0, 0.0),
        ];
        assert_eq!(collapse(&partial), None);
        assert_eq!(beats(&partial), None);
        let done = [
            v("low", 2, 0.2),
            v("fl", 2, 0.3),
            v("ce a", 2, 0.25),
            v("ce b", 2, 0.5),
        ];
        assert_eq!(collapse(&done), Some(true));
        assert_eq!(beats(&done), Some(false));
        // A variant behind the others in seeds leaves its group's best open.
        let mut uneven = done.clone();
        uneven[3].runs = 1;
        assert_eq!(collapse(&uneven), None);
        assert_eq!(beats(&uneven), None);
        // One seed gives a direction, never a verdict.
        let one = done.clone().map(|s| VariantSummary { runs: 1, ..s });
        assert_eq!(collapse(&one), None);
        assert_eq!(beats(&one), None);
    }

    #[test]
    fn earlier_rows_read_extra_columns_and_empty_losses_of_diverged_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        // A table written before the `same_as` column.
        let header = ["config_hash", "seed", "holdout_ap"]
            .into_iter()
            .chain(
                RECORD_COLUMNS
                    .into_iter()
                    .filter(|c| !OPTIONAL_COLUMNS.contains(c)),
            )
            .collect::<Vec<_>>()
            .join(",");
        let ok_row =
            "abc,2,0.25,0.4,0.6,0.45,0.1,0.4,0.5,0.3,0.2,12.5,1200,99.5,cpu,false,0.1.0,deadbeef";
        let diverged = "def,0,0,0,0,0,0,0,0,,,,40,3.0,cpu,true,0.1.0,deadbeef";
        std::fs::write(&path, format!("{header}\n{ok_row}\n{diverged}\n")).unwrap();
        let rows = earlier_rows(&path, &["holdout_ap"]).unwrap();
        let (r, extra) = &rows[&("abc".to_string(), 2)];
        assert_eq!(
            (r.ap, r.iterations, extra.as_slice()),
            (0.4, 1200, &[0.25][..])
        );
        let (d, _) = &rows[&("def".to_string(), 0)];
        assert!(d.diverged && d.final_loss_cls.is_nan() && d.positives_per_image.is_nan());
        assert!(r.same_as.is_none() && r.threads.is_none());
        // With it: empty for a trained run, the repeated run's folder otherwise.
        let current = ["config_hash", "seed"]
            .into_iter()
            .chain(RECORD_COLUMNS)
            .collect::<Vec<_>>()
            .join(",");
        let trained =
            "abc,2,0.4,0.6,0.45,0.1,0.4,0.5,0.3,0.2,12.5,1200,99.5,cpu,false,0.1.0,dead,1,";
        let repeat =
            "fed,2,0.4,0.6,0.45,0.1,0.4,0.5,0.3,0.2,12.5,1200,0.0,cpu,false,0.1.0,dead,1,abc";
        std::fs::write(&path, format!("{current}\n{trained}\n{repeat}\n")).unwrap();
        let rows = earlier_records(&path).unwrap();
        assert_eq!(rows[&("abc".to_string(), 2)].same_as, None);
        assert_eq!(rows[&("abc".to_string(), 2)].threads, Some(1));
        assert_eq!(
            rows[&("fed".to_string(), 2)].same_as.as_deref(),
            Some("abc")
        );
        let written = record_fields(&rows[&("fed".to_string(), 2)]);
        assert_eq!(written.last().map(String::as_str), Some("abc"));
        // an empty AP is not a diverged run's loss: it is an error naming the field
        std::fs::write(
            &path,
            format!("{header}\n{}\n", ok_row.replace(",0.4,0.6,", ",,0.6,")),
        )
        .unwrap();
        let err = format!("{:#}", earlier_rows(&path, &["holdout_ap"]).unwrap_err());
        assert!(err.contains("ap = ''"), "{err}");
        assert!(format!("{:#}", earlier_rows(&path, &["nope"]).unwrap_err()).contains("'nope'"));
    }
}
