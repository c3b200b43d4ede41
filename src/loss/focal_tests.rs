// The fixtures are the values printed in docs/paper.md (§3, §7); some happen to be ln 2 or ln 10.
#![allow(clippy::approx_constant)]

use super::*;
use candle_core::{Device, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const GAMMAS: [f64; 8] = [0.0, 0.2, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0];
const ALPHAS: [Option<f64>; 3] = [None, Some(0.25), Some(0.75)];

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

#[test]
fn figure1_table_values() {
    // docs/paper.md §3: FL(p_t) without alpha, natural log.
    let gammas = [0.0, 0.5, 1.0, 2.0, 5.0];
    let table: [(f64, [f64; 5]); 5] = [
        (0.1, [2.30259, 2.18442, 2.07233, 1.86509, 1.35965]),
        (0.25, [1.38629, 1.20057, 1.03972, 0.77979, 0.32897]),
        (0.5, [0.69315, 0.49013, 0.34657, 0.17329, 0.02166]),
        (0.75, [0.28768, 0.14384, 0.07192, 0.01798, 0.00028]),
        (0.9, [0.10536, 0.03332, 0.01054, 0.00105, 1e-6]),
    ];
    for (p_t, row) in table {
        for (g, want) in gammas.iter().zip(row) {
            // p_t reached both as a positive with x = logit(p_t) and as a negative with x = -logit(p_t).
            let pos = focal_elem(logit(p_t), true, *g, None);
            let neg = focal_elem(-logit(p_t), false, *g, None);
            assert!(
                (pos - want).abs() < 1e-4,
                "p_t {p_t} gamma {g}: {pos} vs {want}"
            );
            assert!(
                (neg - want).abs() < 1e-4,
                "p_t {p_t} gamma {g}: {neg} vs {want}"
            );
            let f32_value = focal_elem_value_grad(logit(p_t) as f32, true, *g as f32, None).0;
            assert!((f32_value as f64 - want).abs() < 1e-4);
        }
    }
    // The paper's text: gamma = 2 at p_t = 0.9 is 100x below CE, at p_t ~ 0.968 1000x.
    let ratio = |p: f64| ce_elem(logit(p), true, None) / focal_elem(logit(p), true, 2.0, None);
    assert!((ratio(0.9) - 100.0).abs() < 1e-9);
    assert!((ratio(0.968) - 976.6).abs() < 1.0);
}

#[test]
fn fl_star_appendix_values() {
    // docs/paper.md §7 at x_t = -5, -2, 0, 2, 5.
    let xs = [-5.0, -2.0, 0.0, 2.0, 5.0];
    let cases: [(&str, [f64; 5]); 3] = [
        ("fl* 2 1", [4.5001, 1.5243, 0.1566, 0.0034, 0.0]),
        ("fl* 4 0", [5.0, 2.0001, 0.1733, 0.0001, 0.0]),
        ("ce", [5.0067, 2.1269, 0.6931, 0.1269, 0.0067]),
    ];
    for (name, values) in cases {
        for (x, want) in xs.iter().zip(values) {
            let got = match name {
                "fl* 2 1" => fl_star_elem(*x, true, 2.0, 1.0),
                "fl* 4 0" => fl_star_elem(*x, true, 4.0, 0.0),
                _ => ce_elem(*x, true, None),
            };
            // Values are given to 4 decimals: allow the rounding plus 1e-4.
            assert!(
                (got - want).abs() < 1e-4 + 5e-5,
                "{name} at {x}: {got} vs {want}"
            );
            let neg = match name {
                "fl* 2 1" => fl_star_elem(-x, false, 2.0, 1.0),
                "fl* 4 0" => fl_star_elem(-x, false, 4.0, 0.0),
                _ => ce_elem(-x, false, None),
            };
            assert_eq!(got, neg, "{name}: y = -1 at -x equals y = 1 at x");
        }
    }
}

fn grid() -> Vec<f64> {
    (-60..=60).map(|i| i as f64 * 0.25 + 0.0123).collect()
}

#[test]
fn gradients_match_central_differences() {
    let h = 1e-6;
    for x in grid() {
        for positive in [true, false] {
            for gamma in GAMMAS {
                for alpha in ALPHAS {
                    let fd = (focal_elem(x + h, positive, gamma, alpha)
                        - focal_elem(x - h, positive, gamma, alpha))
                        / (2.0 * h);
                    let g = focal_elem_grad(x, positive, gamma, alpha);
                    assert!(
                        (g - fd).abs() < 1e-7 + 1e-6 * fd.abs(),
                        "focal x {x} pos {positive} gamma {gamma} alpha {alpha:?}: {g} vs {fd}"
                    );
                }
                if gamma > 0.0 {
                    for beta in [-1.0, 0.0, 1.0] {
                        let fd = (fl_star_elem(x + h, positive, gamma, beta)
                            - fl_star_elem(x - h, positive, gamma, beta))
                            / (2.0 * h);
                        let g = fl_star_elem_grad(x, positive, gamma, beta);
                        assert!(
                            (g - fd).abs() < 1e-7 + 1e-6 * fd.abs(),
                            "fl* x {x} gamma {gamma} beta {beta}: {g} vs {fd}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gradients_match_paper_equations_9_to_11() {
    for x in grid() {
        for positive in [true, false] {
            let y = if positive { 1.0 } else { -1.0 };
            let p_t = 1.0 / (1.0 + (-y * x).exp());
            // eq. 9: dCE/dx = y (p_t - 1)
            let ce = ce_elem_grad(x, positive, None);
            assert!((ce - y * (p_t - 1.0)).abs() < 1e-12, "CE at {x}");
            // eq. 10: dFL/dx = y (1 - p_t)^gamma (gamma p_t log p_t + p_t - 1)
            for gamma in GAMMAS {
                let eq10 = y * (1.0 - p_t).powf(gamma) * (gamma * p_t * p_t.ln() + p_t - 1.0);
                let g = focal_elem_grad(x, positive, gamma, None);
                assert!(
                    (g - eq10).abs() < 1e-9 * (1.0 + eq10.abs()),
                    "FL at {x} gamma {gamma}: {g} vs {eq10}"
                );
                // With alpha the gradient is alpha_t times eq. 10.
                let a = focal_elem_grad(x, positive, gamma, Some(0.25));
                let alpha_t = if positive { 0.25 } else { 0.75 };
                assert!((a - alpha_t * g).abs() < 1e-15);
            }
            // eq. 11: dFL*/dx = y (p*_t - 1), p*_t = sigmoid(gamma x_t + beta)
            for (gamma, beta) in [(2.0, 1.0), (4.0, 0.0), (0.5, -1.0)] {
                let p_star = 1.0 / (1.0 + (-(gamma * y * x + beta)).exp());
                let g = fl_star_elem_grad(x, positive, gamma, beta);
                assert!((g - y * (p_star - 1.0)).abs() < 1e-12, "FL* at {x}");
            }
        }
    }
}

#[test]
fn finite_at_extreme_logits_for_all_gammas() {
    for x in [-1e4, -1e3, -88.0, -30.0, 30.0, 88.0, 1e3, 1e4] {
        for positive in [true, false] {
            for gamma in [0.0, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0] {
                for alpha in ALPHAS {
                    let (v, g) = focal_elem_value_grad(x, positive, gamma, alpha);
                    let (v32, g32) = focal_elem_value_grad(
                        x as f32,
                        positive,
                        gamma as f32,
                        alpha.map(|a| a as f32),
                    );
                    let (vf, gf) = fused_single(x as f32, positive, gamma as f32, alpha);
                    for (name, val) in [("f64", v), ("f32", v32 as f64), ("fused", vf as f64)] {
                        assert!(val.is_finite() && val >= 0.0, "{name} value {x} {gamma}");
                    }
                    for (name, val) in [("f64", g), ("f32", g32 as f64), ("fused", gf as f64)] {
                        assert!(val.is_finite(), "{name} grad {x} {gamma}: {val}");
                    }
                    // Far on the wrong side: loss -> alpha_t |x|, gradient -> -y alpha_t.
                    let x_t = if positive { x } else { -x };
                    let alpha_t = match alpha {
                        None => 1.0,
                        Some(a) if positive => a,
                        Some(a) => 1.0 - a,
                    };
                    let y = if positive { 1.0 } else { -1.0 };
                    if x_t <= -30.0 {
                        assert!((v - alpha_t * -x_t).abs() < 1e-9 * -x_t);
                        assert!((g + y * alpha_t).abs() < 1e-9);
                        assert!((vf as f64 - alpha_t * -x_t).abs() < 1e-6 * -x_t);
                        assert!((gf as f64 + y * alpha_t).abs() < 1e-6);
                    } else {
                        assert!(v < 1e-12 && g.abs() < 1e-11, "{v} {g}");
                        assert!(vf < 1e-12 && gf.abs() < 1e-11, "{vf} {gf}");
                    }
                }
            }
        }
    }
    for x in [-1e4f64, 1e4] {
        for gamma in [0.5, 2.0, 4.0] {
            for beta in [-1.0, 0.0, 1.0] {
                let (v, g) = fl_star_elem_value_grad(x, true, gamma, beta, Some(0.25));
                assert!(v.is_finite() && g.is_finite());
            }
        }
    }
}

/// Value and gradient of one logit through the fused tensor op.
fn fused_single(x: f32, positive: bool, gamma: f32, alpha: Option<f64>) -> (f32, f32) {
    let v = Var::from_vec(vec![x], (1, 1), &Device::Cpu).unwrap();
    let labels = Tensor::new(&[if positive { 1i64 } else { 0 }], &Device::Cpu).unwrap();
    let p = FocalParams::new(gamma, alpha.map(|a| a as f32)).unwrap();
    let loss = sigmoid_focal_loss(v.as_tensor(), &labels, &p).unwrap();
    let g = loss
        .backward()
        .unwrap()
        .get(&v)
        .unwrap()
        .flatten_all()
        .unwrap();
    (loss.to_scalar().unwrap(), g.to_vec1::<f32>().unwrap()[0])
}

#[test]
fn gamma_zero_is_alpha_balanced_ce() {
    for x in grid() {
        for positive in [true, false] {
            for alpha in ALPHAS {
                let p = 1.0 / (1.0 + (-x).exp());
                let a = alpha.unwrap_or(0.5);
                let want = match (positive, alpha.is_some()) {
                    (true, true) => -a * p.ln(),
                    (false, true) => -(1.0 - a) * (-p).ln_1p(),
                    (true, false) => -p.ln(),
                    (false, false) => -(-p).ln_1p(),
                };
                let got = ce_elem(x, positive, alpha);
                assert!(
                    (got - want).abs() < 1e-10 * (1.0 + want),
                    "{x}: {got} vs {want}"
                );
                assert_eq!(got.to_bits(), focal_elem(x, positive, 0.0, alpha).to_bits());
            }
        }
    }
    // Tensors: value and gradient bit for bit.
    let (logits, labels) = random_problem(300, 7, 11, 8.0);
    for alpha in [None, Some(0.25)] {
        let v = Var::from_tensor(&logits).unwrap();
        let fl = sigmoid_focal_loss(
            v.as_tensor(),
            &labels,
            &FocalParams::new(0.0, alpha).unwrap(),
        )
        .unwrap();
        let g_fl = fl
            .backward()
            .unwrap()
            .get(&v)
            .unwrap()
            .flatten_all()
            .unwrap();
        let ce = alpha_balanced_ce(v.as_tensor(), &labels, alpha).unwrap();
        let g_ce = ce
            .backward()
            .unwrap()
            .get(&v)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_eq!(
            fl.to_scalar::<f32>().unwrap().to_bits(),
            ce.to_scalar::<f32>().unwrap().to_bits()
        );
        let (a, b) = (
            g_fl.to_vec1::<f32>().unwrap(),
            g_ce.to_vec1::<f32>().unwrap(),
        );
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

/// Logits `[m, k]` uniform in `[-scale, scale]` with a few extreme values, labels with ~10%
/// ignored and ~20% positives.
fn random_problem(m: usize, k: usize, seed: u64, scale: f32) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-scale..scale)).collect();
    for v in x.iter_mut().step_by(97) {
        *v = if rng.gen::<bool>() { 60.0 } else { -60.0 };
    }
    let labels: Vec<i64> = (0..m)
        .map(|_| {
            let u: f32 = rng.gen();
            if u < 0.1 {
                -1
            } else if u < 0.3 {
                rng.gen_range(1..=k as i64)
            } else {
                0
            }
        })
        .collect();
    (
        Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap(),
        Tensor::from_vec(labels, m, &Device::Cpu).unwrap(),
    )
}

fn assert_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= rel * y.abs() + 1e-8,
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

fn value_and_grad(
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    logits: &Tensor,
) -> (f32, Vec<f32>) {
    let v = Var::from_tensor(logits).unwrap();
    let loss = f(v.as_tensor()).unwrap();
    let g = loss
        .backward()
        .unwrap()
        .get(&v)
        .unwrap()
        .flatten_all()
        .unwrap();
    (loss.to_scalar().unwrap(), g.to_vec1().unwrap())
}

#[test]
fn fused_matches_composed_reference() {
    // Sizes that exercise several parallel tasks, ragged vector tails and K = 1.
    for (m, k, seed) in [(5000, 10, 1u64), (777, 3, 2), (64, 1, 3), (4099, 17, 4)] {
        let (logits, labels) = random_problem(m, k, seed, 10.0);
        for gamma in [0.0f32, 0.2, 0.5, 1.0, 2.0, 2.5, 5.0] {
            for alpha in [None, Some(0.25f32)] {
                let p = FocalParams::new(gamma, alpha).unwrap();
                let (v, g) = value_and_grad(|x| sigmoid_focal_loss(x, &labels, &p), &logits);
                let (rv, rg) =
                    value_and_grad(|x| sigmoid_focal_loss_composed(x, &labels, &p), &logits);
                assert!(
                    (v - rv).abs() <= 1e-5 * rv.abs(),
                    "{m}x{k} {p:?}: {v} vs {rv}"
                );
                assert_close(&g, &rg, 1e-5, &format!("grad {m}x{k} {p:?}"));
            }
        }
        for (gamma, beta) in [(2.0f32, 1.0f32), (4.0, 0.0), (0.5, -2.0)] {
            let p = FlStarParams::new(gamma, beta, Some(0.25)).unwrap();
            let (v, g) = value_and_grad(|x| fl_star_loss_with(x, &labels, &p), &logits);
            let (rv, rg) = value_and_grad(|x| fl_star_loss_composed(x, &labels, &p), &logits);
            assert!((v - rv).abs() <= 1e-5 * rv.abs(), "{p:?}: {v} vs {rv}");
            assert_close(&g, &rg, 1e-5, &format!("FL* grad {p:?}"));
        }
        // per_anchor_loss sums to the loss.
        let p = FocalParams::paper();
        let per = per_anchor_loss(&logits, &labels, &p).unwrap();
        let total: f64 = per.iter().map(|&v| v as f64).sum();
        let fused = sigmoid_focal_loss(&logits, &labels, &p).unwrap();
        let fused = fused.to_scalar::<f32>().unwrap() as f64;
        assert!((total - fused).abs() <= 1e-5 * fused);
    }
}

#[test]
fn per_anchor_loss_matches_scalar_reference() {
    let (logits, labels) = random_problem(200, 5, 9, 6.0);
    let x = logits.to_vec2::<f32>().unwrap();
    let lab = labels.to_vec1::<i64>().unwrap();
    for gamma in [0.0f32, 0.5, 2.0] {
        let p = FocalParams::new(gamma, Some(0.25)).unwrap();
        let per = per_anchor_loss(&logits, &labels, &p).unwrap();
        for (r, row) in x.iter().enumerate() {
            let want: f64 = if lab[r] < 0 {
                0.0
            } else {
                row.iter()
                    .enumerate()
                    .map(|(c, &v)| {
                        focal_elem(v as f64, lab[r] == c as i64 + 1, gamma as f64, Some(0.25))
                    })
                    .sum()
            };
            assert!(
                (per[r] as f64 - want).abs() <= 1e-5 * want + 1e-7,
                "row {r}"
            );
            if lab[r] < 0 {
                assert_eq!(per[r], 0.0);
            }
        }
    }
}

#[test]
fn ignored_anchors_contribute_exactly_zero() {
    let (logits, labels) = random_problem(3000, 6, 5, 8.0);
    let lab = labels.to_vec1::<i64>().unwrap();
    // Poison the ignored rows: they must never be read into the value or the gradient.
    let mut x = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (r, &l) in lab.iter().enumerate() {
        if l < 0 {
            for (c, v) in x[r * 6..(r + 1) * 6].iter_mut().enumerate() {
                *v = [f32::NAN, 1e4, -1e4, f32::INFINITY, 0.0, 3.0][c];
            }
        }
    }
    let poisoned = Tensor::from_vec(x, (3000, 6), &Device::Cpu).unwrap();
    for p in [FocalParams::paper(), FocalParams::new(0.5, None).unwrap()] {
        let (v1, g1) = value_and_grad(|t| sigmoid_focal_loss(t, &labels, &p), &logits);
        let (v2, g2) = value_and_grad(|t| sigmoid_focal_loss(t, &labels, &p), &poisoned);
        assert_eq!(v1.to_bits(), v2.to_bits());
        for (r, &l) in lab.iter().enumerate() {
            for c in 0..6 {
                let i = r * 6 + c;
                if l < 0 {
                    assert_eq!(g2[i].to_bits(), 0.0f32.to_bits());
                } else {
                    assert_eq!(g1[i].to_bits(), g2[i].to_bits());
                }
            }
        }
    }
    // All ignored: zero loss, zero gradient.
    let all = Tensor::new(&[-1i64, -1], &Device::Cpu).unwrap();
    let x = Tensor::new(&[[3.0f32, -2.0], [1.0, 0.0]], &Device::Cpu).unwrap();
    let (v, g) = value_and_grad(|t| sigmoid_focal_loss(t, &all, &FocalParams::paper()), &x);
    assert_eq!(v, 0.0);
    assert!(g.iter().all(|&g| g == 0.0));
}

#[test]
fn backward_is_scaled_and_repeatable() {
    let (logits, labels) = random_problem(500, 4, 6, 5.0);
    let p = FocalParams::paper();
    let v = Var::from_tensor(&logits).unwrap();
    let loss = sigmoid_focal_loss(v.as_tensor(), &labels, &p).unwrap();
    let g1 = loss
        .backward()
        .unwrap()
        .get(&v)
        .unwrap()
        .flatten_all()
        .unwrap();
    // A second backward over the same graph recomputes the gradient.
    let g2 = loss
        .backward()
        .unwrap()
        .get(&v)
        .unwrap()
        .flatten_all()
        .unwrap();
    let (g1, g2) = (g1.to_vec1::<f32>().unwrap(), g2.to_vec1::<f32>().unwrap());
    assert_eq!(g1, g2);
    // The upstream gradient scales the result (e.g. normalization by the number of positives).
    let scaled = (sigmoid_focal_loss(v.as_tensor(), &labels, &p).unwrap() * 0.25).unwrap();
    let g3 = scaled
        .backward()
        .unwrap()
        .get(&v)
        .unwrap()
        .flatten_all()
        .unwrap();
    let g3 = g3.to_vec1::<f32>().unwrap();
    assert!(g1
        .iter()
        .zip(&g3)
        .all(|(a, b)| (a * 0.25 - b).abs() <= 1e-7 * a.abs()));
    // Without a variable, no gradient is kept and the value is the same.
    let plain = sigmoid_focal_loss(&logits, &labels, &p).unwrap();
    assert_eq!(
        plain.to_scalar::<f32>().unwrap(),
        loss.to_scalar::<f32>().unwrap()
    );
}

#[test]
fn invalid_parameters_and_labels_are_rejected() {
    for g in [-1.0f32, -1e-9, f32::NAN, f32::INFINITY] {
        let e = FocalParams::new(g, None).unwrap_err();
        assert!(matches!(e, LossParamError::Gamma(v) if v.to_bits() == g.to_bits()));
        assert!(e.to_string().contains("gamma"));
    }
    for a in [-0.1f32, 1.5, f32::NAN] {
        let e = FocalParams::new(2.0, Some(a)).unwrap_err().to_string();
        assert!(e.contains("alpha") && e.contains(&a.to_string()), "{e}");
    }
    assert!(FocalParams::new(0.0, Some(0.0)).is_ok() && FocalParams::new(10.0, Some(1.0)).is_ok());
    assert!(FlStarParams::new(0.0, 1.0, None).is_err());
    assert!(FlStarParams::new(2.0, f32::NAN, None).is_err());
    assert!(FlStarParams::new(2.0, 1.0, Some(2.0)).is_err());
    let x = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let ok = Tensor::new(&[0i64, 1, 2], &Device::Cpu).unwrap();
    let bad = FocalParams {
        gamma: -2.0,
        alpha: None,
    };
    assert!(sigmoid_focal_loss(&x, &ok, &bad)
        .unwrap_err()
        .to_string()
        .contains("-2"));
    assert!(per_anchor_loss(&x, &ok, &bad).is_err());
    assert!(fl_star_loss(&x, &ok, -1.0, 0.0).is_err());
    for labels in [vec![0i64, 3, 1], vec![-2, 0, 0]] {
        let l = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
        let e = sigmoid_focal_loss(&x, &l, &FocalParams::paper())
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside -1..=2"), "{e}");
        assert!(per_anchor_loss(&x, &l, &FocalParams::paper()).is_err());
    }
    // A diverged model (NaN logits) gets a NaN loss, not a finite one.
    let nan = Tensor::new(&[[f32::NAN, 0.0], [1.0, 2.0], [0.0, 0.0]], &Device::Cpu).unwrap();
    for l in [vec![0i64, 0, 0], vec![1, 0, 0]] {
        let l = Tensor::new(l.as_slice(), &Device::Cpu).unwrap();
        let v = sigmoid_focal_loss(&nan, &l, &FocalParams::paper()).unwrap();
        assert!(v.to_scalar::<f32>().unwrap().is_nan());
    }
    let short = Tensor::new(&[0i64, 1], &Device::Cpu).unwrap();
    assert!(sigmoid_focal_loss(&x, &short, &FocalParams::paper()).is_err());
}

#[test]
fn loss_split_matches_direct_f64_sums_per_group() {
    use super::super::split::{group_of, LossSplit};
    // Sizes spanning several parallel tasks and ragged tails; logits within +-8 so that f32 sums
    // of the kernel and the f64 reference agree closely.
    for (m, k, seed) in [(5000, 7, 1u64), (300, 1, 2), (4100, 13, 3)] {
        let (logits, labels) = random_problem(m, k, seed, 8.0);
        let x: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let lab: Vec<i64> = labels.to_vec1().unwrap();
        for (gamma, alpha) in [(0.0, Some(0.75)), (2.0, Some(0.25)), (0.5, None)] {
            let mut want = LossSplit::default();
            for (r, &label) in lab.iter().enumerate() {
                if label < 0 {
                    continue;
                }
                for c in 0..k {
                    let v = x[r * k + c] as f64;
                    let positive = label == c as i64 + 1;
                    let g = group_of(positive, x[r * k + c]);
                    want.loss[g] += focal_elem(v, positive, gamma, alpha);
                    want.grad[g] += focal_elem_grad(v, positive, gamma, alpha).abs();
                }
            }
            let p = FocalParams {
                gamma: gamma as f32,
                alpha: alpha.map(|a| a as f32),
            };
            let (loss, got) = sigmoid_focal_loss_split(&logits, &labels, &p).unwrap();
            let total: f64 = got.loss.iter().sum();
            let value = loss.to_scalar::<f32>().unwrap() as f64;
            assert!((total - value).abs() <= 1e-4 * value, "{total} vs {value}");
            for g in 0..3 {
                for (what, a, b) in [
                    ("loss", got.loss[g], want.loss[g]),
                    ("grad", got.grad[g], want.grad[g]),
                ] {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs() + 1e-6,
                        "m {m} k {k} gamma {gamma}: {what}[{g}] {a} vs {b}"
                    );
                }
            }
            // every group is present in these problems, and the shares sum to one
            assert!(want.loss.iter().all(|&v| v > 0.0));
            let s: f64 = got.loss_shares().iter().sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
    }
}
