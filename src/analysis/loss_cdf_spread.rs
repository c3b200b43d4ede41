//! Figure 4 over several models (training seeds): the spread of the hardest-fraction shares and
//! how many models agree with each of the paper's statements.

use super::loss_cdf::{figure_readings, paper_findings, Checkpoint, Curve, Finding, SampleSet};
use crate::util::stat::Stat;

/// One model's (or samples file's) curves, named for the summaries.
#[derive(Debug, Clone)]
pub struct ModelCurves {
    /// The run directory or samples file.
    pub model: String,
    /// The training seed of a model (`None` for a samples file).
    pub seed: Option<u64>,
    pub curves: Vec<Curve>,
}

/// One model's checkpoints (`loss-cdf --over-training`), named for the summaries.
#[derive(Debug, Clone)]
pub struct ModelCheckpoints {
    pub model: String,
    pub seed: Option<u64>,
    pub checkpoints: Vec<Checkpoint>,
}

/// One (set, gamma) curve over the models: each hardest-fraction share's mean and spread.
#[derive(Debug, Clone)]
pub struct CurveSpread {
    pub set: SampleSet,
    pub gamma: f64,
    /// One entry per fraction of `HARD_FRACTIONS`.
    pub shares: Vec<Stat>,
}

/// One statement checked on every model.
#[derive(Debug, Clone)]
pub struct Agreement {
    pub paper: &'static str,
    pub criterion: &'static str,
    /// Models whose numbers agree with the statement.
    pub agree: usize,
    /// Models on which it could be checked (their curves include the gammas it needs).
    pub judged: usize,
    /// Each model's number (`Finding::value`), in model order.
    pub ours: Vec<String>,
}

/// What several models say together.
#[derive(Debug, Clone)]
pub struct AcrossModels {
    pub models: usize,
    pub spreads: Vec<CurveSpread>,
    pub paper: Vec<Agreement>,
    pub readings: Vec<Agreement>,
}

/// The spread of every curve the first model has and every other model has too, in the first
/// model's order.
pub fn spreads(models: &[&[Curve]]) -> Vec<CurveSpread> {
    let Some(first) = models.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter_map(|c| {
            let same: Option<Vec<&Curve>> = models
                .iter()
                .map(|m| {
                    m.iter()
                        .find(|o| o.set == c.set && (o.gamma - c.gamma).abs() < 1e-12)
                })
                .collect();
            let same = same?;
            let shares = (0..c.hardest_shares.len())
                .map(|i| {
                    let v: Vec<f64> = same.iter().map(|o| o.hardest_shares[i]).collect();
                    Stat::of(&v)
                })
                .collect();
            Some(CurveSpread {
                set: c.set,
                gamma: c.gamma,
                shares,
            })
        })
        .collect()
}

/// Counts, statement by statement, the models that agree; `findings[m]` are model m's findings,
/// all from the same checker (so in the same order).
fn agreement(findings: &[Vec<Finding>]) -> Vec<Agreement> {
    let Some(first) = findings.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let of_models: Vec<&Finding> = findings.iter().filter_map(|f| f.get(i)).collect();
            Agreement {
                paper: first[i].paper,
                criterion: first[i].criterion,
                agree: of_models.iter().filter(|f| f.agrees == Some(true)).count(),
                judged: of_models.iter().filter(|f| f.agrees.is_some()).count(),
                ours: of_models.iter().map(|f| f.value.clone()).collect(),
            }
        })
        .collect()
}

/// The spread and agreement of two or more models; `None` for one.
pub fn across_models(models: &[ModelCurves]) -> Option<AcrossModels> {
    if models.len() < 2 {
        return None;
    }
    let curves: Vec<&[Curve]> = models.iter().map(|m| m.curves.as_slice()).collect();
    let paper: Vec<Vec<Finding>> = curves.iter().map(|c| paper_findings(c)).collect();
    let readings: Vec<Vec<Finding>> = curves.iter().map(|c| figure_readings(c)).collect();
    Some(AcrossModels {
        models: models.len(),
        spreads: spreads(&curves),
        paper: agreement(&paper),
        readings: agreement(&readings),
    })
}

/// For each checkpoint of the first model that every model has (the same iteration), the spread
/// of its curves over the models; empty for one model.
pub fn spreads_over_training(models: &[ModelCheckpoints]) -> Vec<(usize, Vec<CurveSpread>)> {
    let Some(first) = models.first().filter(|_| models.len() > 1) else {
        return Vec::new();
    };
    first
        .checkpoints
        .iter()
        .filter_map(|cp| {
            let curves: Option<Vec<&[Curve]>> = models
                .iter()
                .map(|m| {
                    m.checkpoints
                        .iter()
                        .find(|o| o.iteration == cp.iteration)
                        .map(|o| o.curves.as_slice())
                })
                .collect();
            Some((cp.iteration, spreads(&curves?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(set: SampleSet, gamma: f64, shares: [f64; 5]) -> Curve {
        Curve {
            gamma,
            set,
            samples: 10,
            points: vec![(0.0, 0.0), (1.0, 1.0)],
            hardest_shares: shares.to_vec(),
        }
    }

    fn model(seed: u64, pos20: f64, neg5: f64) -> ModelCurves {
        ModelCurves {
            model: format!("runs/m{seed}"),
            seed: Some(seed),
            curves: vec![
                curve(SampleSet::Positive, 2.0, [0.1, 0.3, 0.5, pos20, 0.9]),
                curve(SampleSet::Negative, 2.0, [0.9, neg5, 0.99, 0.995, 1.0]),
            ],
        }
    }

    #[test]
    fn spread_is_over_models_and_readings_are_counted() {
        let models = [
            model(0, 0.70, 0.99),
            model(1, 0.50, 0.97),
            model(2, 0.66, 0.90),
        ];
        let a = across_models(&models).unwrap();
        assert_eq!(a.models, 3);
        assert_eq!(a.spreads.len(), 2);
        let pos = &a.spreads[0];
        assert_eq!((pos.set, pos.gamma), (SampleSet::Positive, 2.0));
        let want = Stat::of(&[0.70, 0.50, 0.66]);
        assert!((pos.shares[3].mean - want.mean).abs() < 1e-12);
        assert!((pos.shares[3].std - want.std).abs() < 1e-12);
        assert!(
            pos.shares[0].std.abs() < 1e-12,
            "equal shares have no spread"
        );
        // "hardest 20% of positives above 60%": seeds 0 and 2; "hardest 5% of negatives above
        // 95%": seeds 0 and 1.
        let counts: Vec<(usize, usize)> = a.readings.iter().map(|r| (r.agree, r.judged)).collect();
        assert_eq!(counts, vec![(2, 3), (2, 3)]);
        assert_eq!(a.readings[0].ours.len(), 3);
        assert_eq!(a.readings[1].ours[2], "90.0%");
    }

    #[test]
    fn one_model_has_no_spread_and_a_missing_curve_is_left_out() {
        assert!(across_models(&[model(0, 0.7, 0.99)]).is_none());
        let mut short = model(1, 0.6, 0.98);
        short.curves.pop();
        let both = [model(0, 0.7, 0.99), short];
        let a = across_models(&both).unwrap();
        assert_eq!(
            a.spreads.len(),
            1,
            "the negatives' curve is not in every model"
        );
        assert_eq!(a.readings[1].judged, 1);
    }

    #[test]
    fn over_training_spreads_only_the_checkpoints_every_model_has() {
        let run = |seed, iterations: &[usize]| ModelCheckpoints {
            model: format!("runs/m{seed}"),
            seed: Some(seed),
            checkpoints: iterations
                .iter()
                .map(|&i| Checkpoint {
                    iteration: i,
                    of_iterations: 100,
                    curves: model(seed, 0.5 + seed as f64 / 10.0, 0.9).curves,
                })
                .collect(),
        };
        let s = spreads_over_training(&[run(0, &[10, 50, 100]), run(1, &[10, 100])]);
        let at: Vec<usize> = s.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, vec![10, 100]);
        assert!((s[0].1[0].shares[3].mean - 0.55).abs() < 1e-12);
        assert!(spreads_over_training(&[run(0, &[10, 100])]).is_empty());
    }
}
