//! From finished runs to the ladder's answer: per rung and loss, the setting with the best mean AP on
//! the held-out images; its validation AP per seed; AP(FL) - AP(CE) paired by seed; and where that
//! difference changes sign along the measured imbalance ratio.

use super::executor::HoldoutRecord;
use super::ladder::Imbalance;
use super::{Candidate, Family};
use crate::data::shapes::ShapesConfig;
use crate::experiments::collect::Stat;
use crate::experiments::runner::{Job, RunRecord};

/// A rung's settings and measured imbalance.
#[derive(Debug, Clone)]
pub struct RungInfo {
    pub label: String,
    pub shapes: ShapesConfig,
    pub imbalance: Imbalance,
}

/// One finished run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub rung: usize,
    pub candidate: Candidate,
    pub job: Job,
    pub record: RunRecord,
    pub holdout: HoldoutRecord,
}

/// The setting a loss keeps on one rung.
#[derive(Debug, Clone)]
pub struct Choice {
    pub candidate: Candidate,
    /// Mean held-out AP over the setting's finished tuning seeds (what it was chosen by).
    pub holdout_ap: f64,
    /// Validation AP over seeds.
    pub ap: Stat,
    /// (seed, validation AP).
    pub per_seed: Vec<(u64, f64)>,
    pub diverged: usize,
}

/// One rung's result.
#[derive(Debug, Clone)]
pub struct RungResult {
    pub info: RungInfo,
    pub fl: Option<Choice>,
    pub ce: Option<Choice>,
    /// AP(FL) - AP(CE) per seed both chosen settings finished, paired by seed.
    pub diffs: Vec<f64>,
    pub diff: Stat,
}

/// Validation AP (a fraction) below which a loss has barely learned a rung within its schedule.
pub const LEARNED_AP: f64 = 0.05;

impl RungResult {
    /// Both losses were compared here but neither chosen setting reached [`LEARNED_AP`] on average:
    /// the sign of their difference says little about the losses, only that training was too short.
    pub fn neither_learned(&self) -> bool {
        let ap = |c: &Option<Choice>| c.as_ref().map_or(0.0, |c| c.ap.mean);
        !self.diffs.is_empty() && ap(&self.fl).max(ap(&self.ce)) < LEARNED_AP
    }
}

/// Where the difference changes sign between two adjacent rungs (by measured ratio).
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    /// Indices into [`Ladder::rungs`] (sorted by ratio) of the rungs on either side.
    pub below: usize,
    pub above: usize,
    /// The ratio where the straight line between the two points (in log ratio) crosses zero.
    pub ratio: f64,
    /// FL overtakes CE as the ratio grows (else CE overtakes FL).
    pub fl_overtakes: bool,
}

/// The whole ladder, rungs sorted by measured imbalance ratio.
#[derive(Debug, Clone)]
pub struct Ladder {
    pub rungs: Vec<RungResult>,
    pub outcomes: Vec<Outcome>,
    pub missing: usize,
    pub seeds: usize,
    /// Seeds 0..tune_seeds trained the whole grid and chose the settings.
    pub tune_seeds: usize,
    pub crossings: Vec<Crossing>,
}

/// The best setting of `family` on `rung` by mean held-out AP over the tuning seeds (ties: the first
/// in grid order); its validation AP is reported over every seed it finished.
pub fn choose(
    outcomes: &[Outcome],
    rung: usize,
    family: Family,
    tune_seeds: usize,
) -> Option<Choice> {
    let mine: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.rung == rung && o.candidate.family == family)
        .collect();
    let tuning = |o: &&&Outcome| o.job.seed < tune_seeds as u64;
    let mut settings: Vec<Candidate> = Vec::new();
    for o in mine.iter().filter(tuning) {
        if !settings.contains(&o.candidate) {
            settings.push(o.candidate);
        }
    }
    let runs_of =
        |c: &Candidate| -> Vec<&&Outcome> { mine.iter().filter(|o| o.candidate == *c).collect() };
    let mean_holdout = |c: &Candidate| {
        let runs: Vec<&&Outcome> = mine
            .iter()
            .filter(tuning)
            .filter(|o| o.candidate == *c)
            .collect();
        runs.iter().map(|o| o.holdout.ap).sum::<f64>() / runs.len() as f64
    };
    let mut best: Option<(Candidate, f64)> = None;
    for c in settings {
        let h = mean_holdout(&c);
        if best.is_none_or(|(_, b)| h > b) {
            best = Some((c, h));
        }
    }
    let (candidate, holdout_ap) = best?;
    let runs = runs_of(&candidate);
    let mut per_seed: Vec<(u64, f64)> = runs.iter().map(|o| (o.job.seed, o.record.ap)).collect();
    per_seed.sort_by_key(|p| p.0);
    let aps: Vec<f64> = per_seed.iter().map(|p| p.1).collect();
    Some(Choice {
        candidate,
        holdout_ap,
        ap: Stat::of(&aps),
        per_seed,
        diverged: runs.iter().filter(|o| o.record.diverged).count(),
    })
}

impl Ladder {
    pub fn build(
        infos: Vec<RungInfo>,
        outcomes: Vec<Outcome>,
        missing: usize,
        seeds: usize,
        tune_seeds: usize,
    ) -> Ladder {
        let mut rungs: Vec<RungResult> = infos
            .into_iter()
            .enumerate()
            .map(|(r, info)| {
                let fl = choose(&outcomes, r, Family::Fl, tune_seeds);
                let ce = choose(&outcomes, r, Family::Ce, tune_seeds);
                let diffs: Vec<f64> = match (&fl, &ce) {
                    (Some(f), Some(c)) => f
                        .per_seed
                        .iter()
                        .filter_map(|(s, a)| c.per_seed.iter().find(|p| p.0 == *s).map(|p| a - p.1))
                        .collect(),
                    _ => Vec::new(),
                };
                RungResult {
                    info,
                    fl,
                    ce,
                    diff: Stat::of(&diffs),
                    diffs,
                }
            })
            .collect();
        rungs.sort_by(|a, b| {
            a.info
                .imbalance
                .ratio()
                .total_cmp(&b.info.imbalance.ratio())
        });
        let crossings = crossings(&rungs);
        Ladder {
            rungs,
            outcomes,
            missing,
            seeds,
            tune_seeds,
            crossings,
        }
    }
}

/// Sign changes of the mean difference between adjacent rungs that both have one, with the zero of
/// the straight line through them on a log-ratio axis. A difference of exactly 0 counts as CE ahead.
pub fn crossings(rungs: &[RungResult]) -> Vec<Crossing> {
    let pts: Vec<(usize, f64, f64)> = rungs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.diffs.is_empty() && r.info.imbalance.ratio().is_finite())
        .map(|(i, r)| (i, r.info.imbalance.ratio().ln(), r.diff.mean))
        .collect();
    pts.windows(2)
        .filter(|w| (w[0].2 > 0.0) != (w[1].2 > 0.0))
        .map(|w| {
            let ((i, x0, y0), (j, x1, y1)) = (w[0], w[1]);
            let t = if y1 != y0 { -y0 / (y1 - y0) } else { 0.5 };
            Crossing {
                below: i,
                above: j,
                ratio: (x0 + t * (x1 - x0)).exp(),
                fl_overtakes: y1 > 0.0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::anchor_counts::AnchorCounts;

    fn info(ratio: usize) -> RungInfo {
        RungInfo {
            label: format!("r{ratio}"),
            shapes: ShapesConfig::default(),
            imbalance: Imbalance {
                images: 1,
                classes: 1,
                counts: AnchorCounts {
                    anchors: 10,
                    binary_positives: 1,
                    binary_negatives: ratio,
                    ..Default::default()
                },
            },
        }
    }

    fn outcome(
        rung: usize,
        family: Family,
        alpha: f64,
        lr: f64,
        seed: u64,
        holdout: f64,
        ap: f64,
    ) -> Outcome {
        let job = Job {
            variant: 0,
            label: String::new(),
            seed,
            overrides: vec![],
            config: crate::config::Config::default(),
            hash: String::new(),
        };
        Outcome {
            rung,
            candidate: Candidate {
                family,
                gamma: if family == Family::Fl { 2.0 } else { 0.0 },
                alpha,
                lr,
            },
            job,
            record: RunRecord {
                ap,
                ap50: 0.0,
                ap75: 0.0,
                aps: 0.0,
                apm: 0.0,
                apl: 0.0,
                final_loss_cls: 0.0,
                final_loss_box: 0.0,
                positives_per_image: 0.0,
                iterations: 1,
                wall_seconds: 1.0,
                diverged: false,
                device: "cpu".into(),
                version: "t".into(),
                git_revision: "t".into(),
                threads: None,
                same_as: None,
            },
            holdout: HoldoutRecord {
                ap: holdout,
                ap50: 0.0,
                ap75: 0.0,
            },
        }
    }

    #[test]
    fn choice_is_made_on_the_holdout_not_on_val() {
        use Family::*;
        let o = vec![
            // lr .01: better on val, worse on the held-out images
            outcome(0, Ce, 0.5, 0.01, 0, 0.20, 0.40),
            outcome(0, Ce, 0.5, 0.01, 1, 0.22, 0.42),
            outcome(0, Ce, 0.75, 0.02, 0, 0.30, 0.30),
            outcome(0, Ce, 0.75, 0.02, 1, 0.28, 0.34),
            outcome(0, Fl, 0.25, 0.01, 0, 0.1, 0.35),
            outcome(0, Fl, 0.25, 0.01, 1, 0.1, 0.31),
        ];
        let c = choose(&o, 0, Ce, 2).unwrap();
        assert_eq!((c.candidate.alpha, c.candidate.lr), (0.75, 0.02));
        assert!((c.holdout_ap - 0.29).abs() < 1e-12);
        assert_eq!(c.per_seed, vec![(0, 0.30), (1, 0.34)]);
        assert!(choose(&o, 1, Ce, 2).is_none());
        let ladder = Ladder::build(vec![info(100)], o, 0, 2, 2);
        let r = &ladder.rungs[0];
        // paired by seed: .35 - .30, .31 - .34
        assert!((r.diffs[0] - 0.05).abs() < 1e-12 && (r.diffs[1] + 0.03).abs() < 1e-12);
        assert!((r.diff.mean - 0.01).abs() < 1e-12);
    }

    #[test]
    fn crossover_is_interpolated_on_the_log_ratio() {
        use Family::*;
        let mut o = Vec::new();
        // ratios 10, 100, 1000 (given out of order); differences -0.02, +0.02, +0.04
        for (rung, diff) in [(0, 0.04), (1, -0.02), (2, 0.02)] {
            o.push(outcome(rung, Fl, 0.25, 0.01, 0, 0.5, 0.3 + diff));
            o.push(outcome(rung, Ce, 0.75, 0.01, 0, 0.5, 0.3));
        }
        let ladder = Ladder::build(vec![info(1000), info(10), info(100)], o, 0, 1, 1);
        let ratios: Vec<f64> = ladder
            .rungs
            .iter()
            .map(|r| r.info.imbalance.ratio())
            .collect();
        assert_eq!(ratios, vec![10.0, 100.0, 1000.0]);
        assert_eq!(ladder.crossings.len(), 1);
        assert!(ladder.rungs.iter().all(|r| !r.neither_learned()));
        let c = &ladder.crossings[0];
        assert_eq!((c.below, c.above, c.fl_overtakes), (0, 1, true));
        // halfway between log 10 and log 100
        assert!((c.ratio - 1000f64.sqrt()).abs() < 1e-9, "{}", c.ratio);
    }

    #[test]
    fn a_rung_where_both_losses_stay_below_5_ap_is_flagged() {
        use Family::*;
        let o = vec![
            outcome(0, Fl, 0.25, 0.01, 0, 0.02, 0.049),
            outcome(0, Ce, 0.75, 0.01, 0, 0.01, 0.01),
            // one loss above the bar is enough
            outcome(1, Fl, 0.25, 0.01, 0, 0.02, 0.02),
            outcome(1, Ce, 0.75, 0.01, 0, 0.30, 0.05),
            // FL alone: nothing was compared
            outcome(2, Fl, 0.25, 0.01, 0, 0.02, 0.02),
        ];
        let ladder = Ladder::build(vec![info(10), info(100), info(1000)], o, 1, 1, 1);
        let flags: Vec<bool> = ladder.rungs.iter().map(|r| r.neither_learned()).collect();
        assert_eq!(flags, vec![true, false, false]);
    }
}
