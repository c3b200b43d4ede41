//! The paper's Figure 4: the cumulative distribution of the normalized focal loss over positive and
//! negative binary samples, for several gammas.
//!
//! A sample is one (anchor, class) sigmoid output with its 0/1 target, stored as its *margin*
//! `x_t` (the logit signed toward the target: `x` for a positive, `-x` for a negative), so that
//! `p_t = sigmoid(x_t)`. The analysis follows docs/paper.md §5: per set (positives, negatives)
//! compute FL for each gamma, normalize to sum 1, sort ascending and accumulate against the
//! fraction of samples.
//!
//! Alpha is left out: it is a constant factor within each set and cancels in the normalization.
//!
//! FL(p_t) = -(1 - p_t)^gamma log(p_t) is decreasing in `x_t` for every gamma >= 0, so ascending loss
//! is descending margin for *all* gammas: the samples are sorted once (radix sort) and all gammas are
//! accumulated in one linear pass.

use anyhow::{bail, Result};
use rand::Rng;
use rayon::prelude::*;

/// Which set a curve describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleSet {
    Positive,
    Negative,
}

impl SampleSet {
    pub fn name(self) -> &'static str {
        match self {
            SampleSet::Positive => "positive",
            SampleSet::Negative => "negative",
        }
    }
}

/// Uniform sampling of a stream down to a fixed capacity (Algorithm R), with a seeded generator.
#[derive(Debug, Clone)]
pub struct Reservoir {
    capacity: usize,
    seen: u64,
    items: Vec<f32>,
}

impl Reservoir {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: 0,
            items: Vec::with_capacity(capacity.min(1 << 20)),
        }
    }

    pub fn push<R: Rng>(&mut self, value: f32, rng: &mut R) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(value);
        } else if self.capacity > 0 {
            let j = rng.gen_range(0..self.seen);
            if (j as usize) < self.capacity {
                self.items[j as usize] = value;
            }
        }
    }

    /// How many values were offered, kept or not.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn into_items(self) -> Vec<f32> {
        self.items
    }
}

/// The margins of one set, sorted once (descending margin = ascending loss for every gamma).
#[derive(Debug, Clone)]
pub struct SortedMargins {
    margins: Vec<f32>,
}

impl SortedMargins {
    pub fn new(margins: Vec<f32>) -> Result<Self> {
        if let Some(i) = margins.iter().position(|m| m.is_nan()) {
            bail!("sample {i} has a NaN logit");
        }
        Ok(Self {
            margins: sort_descending(margins),
        })
    }

    pub fn len(&self) -> usize {
        self.margins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.margins.is_empty()
    }
}

/// Sorts margins in descending order (`total_cmp` order, reversed) with an LSD radix sort on
/// order-preserving integer keys: three 11-bit passes are several times faster than a comparison
/// sort of 10^7 floats, and the result is the same permutation-free sequence of values.
fn sort_descending(margins: Vec<f32>) -> Vec<f32> {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    const PASSES: usize = 3; // 3 * 11 >= 32
                             // Ascending in the key = descending in total_cmp order: flip the usual monotone map.
    let key = |v: f32| {
        let b = v.to_bits();
        let ordered = if b & 0x8000_0000 != 0 {
            !b
        } else {
            b | 0x8000_0000
        };
        !ordered
    };
    let unkey = |k: u32| {
        let ordered = !k;
        let b = if ordered & 0x8000_0000 != 0 {
            ordered & 0x7fff_ffff
        } else {
            !ordered
        };
        f32::from_bits(b)
    };
    let mut keys: Vec<u32> = margins.iter().map(|&v| key(v)).collect();
    drop(margins);
    let mut counts = vec![[0usize; BUCKETS]; PASSES];
    for &k in &keys {
        for (p, c) in counts.iter_mut().enumerate() {
            c[((k >> (p as u32 * BITS)) as usize) & (BUCKETS - 1)] += 1;
        }
    }
    let mut scratch = vec![0u32; keys.len()];
    for (p, c) in counts.iter().enumerate() {
        // A pass whose digit is the same for every key moves nothing.
        if c.contains(&keys.len()) {
            continue;
        }
        let mut offsets = [0usize; BUCKETS];
        let mut acc = 0;
        for (o, &n) in offsets.iter_mut().zip(c.iter()) {
            *o = acc;
            acc += n;
        }
        let shift = p as u32 * BITS;
        for &k in &keys {
            let d = ((k >> shift) as usize) & (BUCKETS - 1);
            scratch[offsets[d]] = k;
            offsets[d] += 1;
        }
        std::mem::swap(&mut keys, &mut scratch);
    }
    keys.into_iter().map(unkey).collect()
}

/// FL of a sample with margin `x_t`, without alpha (see the module doc).
pub fn focal_of_margin(margin: f64, gamma: f64) -> f64 {
    crate::loss::focal::focal_elem(margin, true, gamma, None)
}

/// One CDF curve: `points[i] = (fraction of samples, cumulative normalized loss)`, from (0, 0) to (1, 1).
#[derive(Debug, Clone)]
pub struct Curve {
    pub gamma: f64,
    pub set: SampleSet,
    pub samples: usize,
    pub points: Vec<(f64, f64)>,
    /// Share of the loss held by the hardest q of the samples, for each q in [`HARD_FRACTIONS`].
    pub hardest_shares: Vec<f64>,
}

/// The curves (positives, negatives) of one model saved during a run, for `--over-training`.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Iterations trained when the weights were saved.
    pub iteration: usize,
    /// The run's schedule length.
    pub of_iterations: usize,
    pub curves: Vec<Curve>,
}

/// The fractions of hardest samples reported in the summary.
pub const HARD_FRACTIONS: [f64; 5] = [0.01, 0.05, 0.10, 0.20, 0.50];

/// Builds the curve of one set for one gamma, with about `max_points` points (exact at both ends).
pub fn curve(
    sorted: &SortedMargins,
    set: SampleSet,
    gamma: f64,
    max_points: usize,
) -> Result<Curve> {
    let mut c = curves(sorted, set, &[gamma], max_points)?;
    Ok(c.remove(0))
}

/// Builds the curves of one set for every gamma in one pass over the sorted samples.
///
/// Only the cumulative loss at the plotted fractions and at the hardest-share cut points is ever
/// read, so the samples are cut into segments between those indices: each segment's loss is summed
/// sequentially (segments in parallel), and the segment sums are accumulated in order. The segments
/// depend only on `n` and `max_points`, so the result does not depend on the thread count. Each
/// sample's exponential and logarithm are computed once and shared by all gammas.
pub fn curves(
    sorted: &SortedMargins,
    set: SampleSet,
    gammas: &[f64],
    max_points: usize,
) -> Result<Vec<Curve>> {
    let n = sorted.len();
    if n == 0 {
        bail!("no {} samples: the CDF needs at least one", set.name());
    }
    // The indices k (number of easiest samples) whose cumulative loss is read.
    let step = (n as f64 / max_points.max(1) as f64).max(1.0);
    let mut point_ks = Vec::with_capacity(max_points + 2);
    let mut t = 0.0f64;
    while (t.round() as usize) < n {
        point_ks.push(t.round() as usize);
        t += step;
    }
    let hard_ks: Vec<usize> = HARD_FRACTIONS
        .iter()
        .map(|&q| n - ((q * n as f64).round() as usize).min(n))
        .collect();
    let mut bounds: Vec<usize> = point_ks.iter().chain(&hard_ks).copied().collect();
    bounds.push(0);
    bounds.push(n);
    bounds.sort_unstable();
    bounds.dedup();

    let kinds: Vec<u8> = gammas
        .iter()
        .map(|&g| crate::loss::focal::gamma_kind(g))
        .collect();
    let segment_sums: Vec<Vec<f64>> = bounds
        .par_windows(2)
        .map(|w| {
            let mut sums = vec![0.0f64; gammas.len()];
            for &m in &sorted.margins[w[0]..w[1]] {
                focal_all_gammas(m as f64, gammas, &kinds, &mut sums);
            }
            sums
        })
        .collect();
    // cumulative[b][g]: loss of the bounds[b] easiest samples at gamma g.
    let mut cumulative = Vec::with_capacity(bounds.len());
    let mut acc = vec![0.0f64; gammas.len()];
    cumulative.push(acc.clone());
    for s in &segment_sums {
        for (a, v) in acc.iter_mut().zip(s) {
            *a += v;
        }
        cumulative.push(acc.clone());
    }
    let slot = |k: usize| bounds.partition_point(|&b| b < k);

    let mut out = Vec::with_capacity(gammas.len());
    for (gi, &gamma) in gammas.iter().enumerate() {
        let total = acc[gi];
        if !(total.is_finite() && total > 0.0) {
            bail!(
                "the total {} loss at gamma {gamma} is {total}: the curve cannot be normalized",
                set.name()
            );
        }
        let at = |k: usize| cumulative[slot(k)][gi] / total;
        let mut points: Vec<(f64, f64)> = point_ks
            .iter()
            .map(|&k| (k as f64 / n as f64, if k == 0 { 0.0 } else { at(k) }))
            .collect();
        points.push((1.0, 1.0));
        let hardest_shares = hard_ks.iter().map(|&k| 1.0 - at(k)).collect();
        out.push(Curve {
            gamma,
            set,
            samples: n,
            points,
            hardest_shares,
        });
    }
    Ok(out)
}

/// Adds FL(margin) for every gamma to `sums`, with the same arithmetic as
/// [`crate::loss::focal::focal_terms`] (so each term equals [`focal_of_margin`]) but one exp and one
/// log1p per sample instead of one per gamma.
#[inline]
fn focal_all_gammas(margin: f64, gammas: &[f64], kinds: &[u8], sums: &mut [f64]) {
    use crate::loss::focal::{GAMMA_ONE, GAMMA_TWO, GAMMA_ZERO};
    use crate::loss::stable::{LogitParts, StdMath, Transcendental};
    let parts = LogitParts::<f64>::new::<StdMath>(margin);
    let (_, q) = parts.sigmoids();
    let nlp = parts.softplus_neg();
    for ((s, &g), &kind) in sums.iter_mut().zip(gammas).zip(kinds) {
        let w = match kind {
            GAMMA_ZERO => 1.0,
            GAMMA_ONE => q,
            GAMMA_TWO => q * q,
            _ => <StdMath as Transcendental<f64>>::exp_nonpos(-(g * parts.softplus())),
        };
        *s += w * nlp;
    }
}

/// Curves for both sets and every gamma.
pub fn analyze(
    positives: Vec<f32>,
    negatives: Vec<f32>,
    gammas: &[f64],
    max_points: usize,
) -> Result<Vec<Curve>> {
    if positives.is_empty() {
        bail!("no positive samples: the loss CDF needs at least one positive (target 1)");
    }
    if negatives.is_empty() {
        bail!("no negative samples: the loss CDF needs at least one negative (target 0)");
    }
    let sets = [
        (SampleSet::Positive, SortedMargins::new(positives)?),
        (SampleSet::Negative, SortedMargins::new(negatives)?),
    ];
    let mut out = Vec::new();
    for (set, sorted) in &sets {
        out.extend(curves(sorted, *set, gammas, max_points)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn equal_samples_give_the_diagonal() {
        let sorted = SortedMargins::new(vec![0.3; 1000]).unwrap();
        for g in [0.0, 0.5, 2.0] {
            let c = curve(&sorted, SampleSet::Positive, g, 100).unwrap();
            for &(f, y) in &c.points {
                assert!((f - y).abs() < 1e-12, "gamma {g}: ({f}, {y})");
            }
            assert!((c.hardest_shares[3] - 0.2).abs() < 1e-12);
        }
    }

    #[test]
    fn two_valued_distribution_matches_its_analytic_cdf() {
        // 900 easy samples (margin 3) and 100 hard ones (margin -1): the curve is two straight
        // segments meeting at (0.9, 900 l_e / (900 l_e + 100 l_h)).
        let mut m = vec![3.0f32; 900];
        m.extend(vec![-1.0f32; 100]);
        let sorted = SortedMargins::new(m).unwrap();
        for g in [0.0, 1.0, 2.0] {
            let le = focal_of_margin(3.0, g);
            let lh = focal_of_margin(-1.0, g);
            let knee = 900.0 * le / (900.0 * le + 100.0 * lh);
            let c = curve(&sorted, SampleSet::Negative, g, 1000).unwrap();
            for &(f, y) in &c.points {
                let expect = if f <= 0.9 {
                    f / 0.9 * knee
                } else {
                    knee + (f - 0.9) / 0.1 * (1.0 - knee)
                };
                assert!(
                    (y - expect).abs() < 1e-9,
                    "gamma {g} at {f}: {y} vs {expect}"
                );
            }
            // hardest 10% = exactly the hard samples
            assert!((c.hardest_shares[2] - (1.0 - knee)).abs() < 1e-9);
        }
    }

    #[test]
    fn curves_are_monotone_and_end_at_one() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let m: Vec<f32> = (0..5000).map(|_| rng.gen_range(-8.0f32..8.0)).collect();
        let curves = analyze(m.clone(), m, &[0.0, 0.5, 1.0, 2.0], 300).unwrap();
        for c in &curves {
            assert_eq!(c.points.first(), Some(&(0.0, 0.0)));
            assert_eq!(c.points.last(), Some(&(1.0, 1.0)));
            for w in c.points.windows(2) {
                assert!(w[1].0 > w[0].0 && w[1].1 >= w[0].1, "{:?}", w);
            }
            // convex from below: the easiest half never holds more than half the loss
            assert!(c.points.iter().all(|&(f, y)| y <= f + 1e-12));
        }
    }

    #[test]
    fn gamma_zero_is_cross_entropy() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let m: Vec<f32> = (0..2000).map(|_| rng.gen_range(-6.0f32..6.0)).collect();
        let sorted = SortedMargins::new(m.clone()).unwrap();
        let c = curve(&sorted, SampleSet::Positive, 0.0, 2000).unwrap();
        // CE = softplus(-x_t), sorted ascending, normalized, accumulated independently here.
        let mut ce: Vec<f64> = m.iter().map(|&x| (-(x as f64)).exp().ln_1p()).collect();
        ce.sort_by(f64::total_cmp);
        let total: f64 = ce.iter().sum();
        let mut acc = 0.0;
        let mut expected = vec![0.0];
        for v in &ce {
            acc += v;
            expected.push(acc / total);
        }
        for &(f, y) in &c.points {
            let k = (f * 2000.0).round() as usize;
            assert!(
                (y - expected[k]).abs() < 1e-9,
                "{f}: {y} vs {}",
                expected[k]
            );
        }
    }

    #[test]
    fn radix_sort_matches_a_comparison_sort() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut m: Vec<f32> = (0..20_000)
            .map(|i| match i % 5 {
                0 => rng.gen_range(-1e-30f32..1e-30),
                1 => rng.gen_range(-1e30f32..1e30),
                _ => rng.gen_range(-20.0f32..20.0),
            })
            .collect();
        m.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN,
            f32::MAX,
            3.0,
            3.0,
        ]);
        let mut expect = m.clone();
        expect.sort_by(|a, b| b.total_cmp(a));
        let got = SortedMargins::new(m).unwrap().margins;
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            expect.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn one_pass_curves_match_the_sort_per_gamma_recipe() {
        // The straightforward recipe: losses per gamma, sorted ascending, sequential prefix sums.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let n = 30_011;
        let m: Vec<f32> = (0..n).map(|_| rng.gen_range(-12.0f32..9.0)).collect();
        let gammas = [0.0, 0.5, 1.0, 2.0, 3.7];
        let sorted = SortedMargins::new(m.clone()).unwrap();
        let got = curves(&sorted, SampleSet::Negative, &gammas, 997).unwrap();
        for (c, &g) in got.iter().zip(&gammas) {
            let mut l: Vec<f64> = m.iter().map(|&x| focal_of_margin(x as f64, g)).collect();
            l.sort_by(f64::total_cmp);
            let mut cum = vec![0.0];
            for v in &l {
                cum.push(cum.last().unwrap() + v);
            }
            let total = cum[n];
            for &(f, y) in &c.points {
                let k = (f * n as f64).round() as usize;
                assert!((y - cum[k] / total).abs() < 1e-12, "gamma {g} at {f}");
            }
            for (share, q) in c.hardest_shares.iter().zip(HARD_FRACTIONS) {
                let k = n - (q * n as f64).round() as usize;
                assert!(
                    (share - (1.0 - cum[k] / total)).abs() < 1e-12,
                    "gamma {g} q {q}"
                );
            }
        }
    }

    #[test]
    fn reservoir_keeps_a_uniform_sample() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut r = Reservoir::new(1000);
        for i in 0..100_000 {
            r.push(i as f32, &mut rng);
        }
        assert_eq!(r.seen(), 100_000);
        let items = r.into_items();
        assert_eq!(items.len(), 1000);
        let mean = items.iter().map(|&v| v as f64).sum::<f64>() / 1000.0;
        // uniform over 0..1e5: mean 5e4, std of the mean ~ 28868 / sqrt(1000) ~ 913
        assert!((mean - 50_000.0).abs() < 4_000.0, "{mean}");
    }

    #[test]
    fn figure_readings_compare_the_gamma_2_shares_with_60_and_95_percent() {
        let curve = |set, shares: [f64; 5]| Curve {
            gamma: 2.0,
            set,
            samples: 100,
            points: vec![(0.0, 0.0), (1.0, 1.0)],
            hardest_shares: shares.to_vec(),
        };
        assert_eq!(HARD_FRACTIONS[SHARE_20], 0.20);
        assert_eq!(HARD_FRACTIONS[SHARE_5], 0.05);
        let pos = curve(SampleSet::Positive, [0.05, 0.2, 0.4, 0.61, 0.9]);
        let neg = curve(SampleSet::Negative, [0.5, 0.94, 0.97, 0.98, 0.99]);
        let r = figure_readings(&[pos, neg]);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].agrees, r[1].agrees), (Some(true), Some(false)));
        assert!(r[0].ours.contains("61.0%"), "{}", r[0].ours);
        assert!(
            r[1].ours.contains("hardest 5% of negatives hold 94.0%"),
            "{}",
            r[1].ours
        );
        // Without a gamma-2 curve there is nothing to compare.
        let other = Curve {
            gamma: 1.0,
            ..curve(SampleSet::Positive, [0.0; 5])
        };
        assert!(figure_readings(&[other]).iter().all(|f| f.agrees.is_none()));
    }

    #[test]
    fn empty_sets_are_errors() {
        assert!(analyze(vec![], vec![1.0], &[2.0], 10)
            .unwrap_err()
            .to_string()
            .contains("positive"));
        assert!(analyze(vec![1.0], vec![], &[2.0], 10)
            .unwrap_err()
            .to_string()
            .contains("negative"));
    }
}

/// One of the paper's statements about Figure 4, the number we measured for it, and whether it agrees.
#[derive(Debug, Clone)]
pub struct Finding {
    pub paper: &'static str,
    pub criterion: &'static str,
    pub ours: String,
    /// The number `ours` states, alone (e.g. `68.6%`): what a table over several models lists.
    pub value: String,
    /// `None` when the gammas needed for the check were not computed.
    pub agrees: Option<bool>,
}

fn find(curves: &[Curve], set: SampleSet, gamma: f64) -> Option<&Curve> {
    curves
        .iter()
        .find(|c| c.set == set && (c.gamma - gamma).abs() < 1e-12)
}

/// Linear interpolation of a curve at fraction `f`.
pub fn value_at(curve: &Curve, f: f64) -> f64 {
    let p = &curve.points;
    let i = p.partition_point(|&(x, _)| x < f);
    if i == 0 {
        return p[0].1;
    }
    if i >= p.len() {
        return p[p.len() - 1].1;
    }
    let (x0, y0) = p[i - 1];
    let (x1, y1) = p[i];
    if x1 == x0 {
        y1
    } else {
        y0 + (y1 - y0) * (f - x0) / (x1 - x0)
    }
}

const SHARE_20: usize = 3; // index of 0.20 in HARD_FRACTIONS
const SHARE_10: usize = 2;
const SHARE_5: usize = 1;

/// Checks the paper's sentences (docs/paper.md §5) against our curves, criteria spelled out.
pub fn paper_findings(curves: &[Curve]) -> Vec<Finding> {
    let pos = |g| find(curves, SampleSet::Positive, g);
    let neg = |g| find(curves, SampleSet::Negative, g);
    let gammas: Vec<f64> = curves
        .iter()
        .filter(|c| c.set == SampleSet::Positive)
        .map(|c| c.gamma)
        .collect();
    let (g_lo, g_hi) = (
        gammas.iter().copied().fold(f64::INFINITY, f64::min),
        gammas.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let mut out = Vec::new();

    out.push(match pos(2.0).or_else(|| pos(g_hi)) {
        Some(c) => {
            let s = c.hardest_shares[SHARE_20];
            Finding {
                paper: "approximately 20% of the hardest positive samples account for roughly half of the positive loss",
                criterion: "hardest 20% of positives hold 35-70% of the positive loss (gamma 2)",
                ours: format!("hardest 20% of positives hold {:.1}% at gamma {}", 100.0 * s, c.gamma),
                value: format!("{:.1}%", 100.0 * s),
                agrees: Some((0.35..=0.70).contains(&s)),
            }
        }
        None => unreachable_finding("positives"),
    });

    out.push(match (pos(g_lo), pos(g_hi)) {
        (Some(a), Some(b)) if g_hi > g_lo => {
            let (sa, sb) = (a.hardest_shares[SHARE_20], b.hardest_shares[SHARE_20]);
            Finding {
                paper: "as gamma increases more of the loss gets concentrated in the top 20% of examples, but the effect is minor",
                criterion: "hardest-20% share of positives grows from the lowest to the highest gamma by at most 20 points",
                ours: format!(
                    "hardest 20% of positives: {:.1}% at gamma {} vs {:.1}% at gamma {}",
                    100.0 * sa,
                    a.gamma,
                    100.0 * sb,
                    b.gamma
                ),
                value: format!("{:.1}% -> {:.1}%", 100.0 * sa, 100.0 * sb),
                agrees: Some(sb >= sa && sb - sa <= 0.20),
            }
        }
        _ => skipped("positives' concentration as gamma increases", "needs two gammas"),
    });

    out.push(match (pos(0.0), neg(0.0)) {
        (Some(p), Some(n)) => {
            let gap = (0..=100)
                .map(|i| i as f64 / 100.0)
                .map(|f| (value_at(p, f) - value_at(n, f)).abs())
                .fold(0.0, f64::max);
            Finding {
                paper: "for gamma = 0, the positive and negative CDFs are quite similar",
                criterion: "largest vertical gap between the gamma-0 positive and negative CDFs at most 0.2",
                ours: format!("largest gap between the gamma-0 CDFs: {gap:.3}"),
                value: format!("{gap:.3}"),
                agrees: Some(gap <= 0.2),
            }
        }
        _ => skipped("gamma-0 positive and negative CDFs", "needs gamma 0"),
    });

    out.push(match neg(2.0) {
        Some(c) => {
            let s = c.hardest_shares[SHARE_10];
            Finding {
                paper: "with gamma = 2 (our default setting), the vast majority of the loss comes from a small fraction of samples",
                criterion: "hardest 10% of negatives hold at least 80% of the negative loss (gamma 2)",
                ours: format!(
                    "hardest 10% of negatives hold {:.1}% (hardest 5%: {:.1}%) at gamma 2",
                    100.0 * s,
                    100.0 * c.hardest_shares[SHARE_5]
                ),
                value: format!("{:.1}%", 100.0 * s),
                agrees: Some(s >= 0.80),
            }
        }
        None => skipped("negatives at gamma 2", "needs gamma 2"),
    });

    out.push(match (neg(g_lo), neg(g_hi)) {
        (Some(a), Some(b)) if g_hi > g_lo => {
            let (sa, sb) = (a.hardest_shares[SHARE_5], b.hardest_shares[SHARE_5]);
            Finding {
                paper: "for negatives, increasing gamma heavily concentrates the loss on hard examples",
                criterion: "hardest-5% share of negatives grows by at least 20 points from the lowest to the highest gamma",
                ours: format!(
                    "hardest 5% of negatives: {:.1}% at gamma {} vs {:.1}% at gamma {}",
                    100.0 * sa,
                    a.gamma,
                    100.0 * sb,
                    b.gamma
                ),
                value: format!("{:.1}% -> {:.1}%", 100.0 * sa, 100.0 * sb),
                agrees: Some(sb - sa >= 0.20),
            }
        }
        _ => skipped("negatives' concentration as gamma increases", "needs two gammas"),
    });
    out
}

/// Figure 4 read off the plot rather than from the text (the project's notes, docs/paper.md §5):
/// with γ = 2 the hardest 20% of positives carry more than 60% of the positive loss (the text says
/// "roughly half") and the hardest 5% of negatives more than 95% of the negative loss.
pub fn figure_readings(curves: &[Curve]) -> Vec<Finding> {
    let reading = |set, q: usize, at_least: f64, paper, criterion| match find(curves, set, 2.0) {
        Some(c) => {
            let s = c.hardest_shares[q];
            Finding {
                paper,
                criterion,
                ours: format!(
                    "hardest {:.0}% of {}s hold {:.1}% at gamma 2",
                    100.0 * HARD_FRACTIONS[q],
                    c.set.name(),
                    100.0 * s
                ),
                value: format!("{:.1}%", 100.0 * s),
                agrees: Some(s > at_least),
            }
        }
        None => skipped(paper, "needs gamma 2"),
    };
    vec![
        reading(
            SampleSet::Positive,
            SHARE_20,
            0.60,
            "with gamma 2, the hardest 20% of positives carry more than 60% of the positive loss",
            "hardest 20% of positives hold more than 60% (gamma 2)",
        ),
        reading(
            SampleSet::Negative,
            SHARE_5,
            0.95,
            "with gamma 2, the hardest 5% of negatives carry more than 95% of the negative loss",
            "hardest 5% of negatives hold more than 95% (gamma 2)",
        ),
    ]
}

fn skipped(what: &'static str, why: &'static str) -> Finding {
    Finding {
        paper: what,
        criterion: why,
        ours: "not computed".into(),
        value: "-".into(),
        agrees: None,
    }
}

fn unreachable_finding(set: &'static str) -> Finding {
    skipped(set, "no curve")
}
