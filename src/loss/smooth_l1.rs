//! Smooth L1 (Huber with a `beta` transition, as in Fast R-CNN and Detectron) for box regression.

use super::focal::LossParamError;
use candle_core::Tensor;

/// `sum(smooth_l1(pred - target))` with `smooth_l1(d) = 0.5 d^2 / beta` for `|d| < beta`, else
/// `|d| - 0.5 beta`; `beta = 0` is plain L1. `pred` and `target` have the same shape (e.g.
/// `[P, 4]` deltas of the positive anchors). Built from candle ops, so it backpropagates
/// through candle's autograd on any device.
pub fn smooth_l1_loss(pred: &Tensor, target: &Tensor, beta: f32) -> candle_core::Result<Tensor> {
    if !(beta.is_finite() && beta >= 0.0) {
        return Err(candle_core::Error::wrap(LossParamError::SmoothL1Beta(beta)));
    }
    if pred.shape() != target.shape() {
        candle_core::bail!(
            "smooth L1: prediction shape {:?} differs from target shape {:?}",
            pred.dims(),
            target.dims()
        );
    }
    let n = pred.sub(target)?.abs()?;
    if beta == 0.0 {
        return n.sum_all();
    }
    // With c = min(|d|, beta): 0.5 c^2 / beta + (|d| - c) is both branches at once, and its
    // autograd gradient is d/beta inside and sign(d) outside.
    let c = n.minimum(beta as f64)?;
    let quad = c.sqr()?.affine(0.5 / beta as f64, 0.0)?;
    quad.add(&n.sub(&c)?)?.sum_all()
}

/// Smooth L1 of one difference `d` (for scoring anchors, as OHEM does, without a tensor).
pub fn smooth_l1_elem(d: f32, beta: f32) -> f32 {
    let d = d.abs();
    if d < beta {
        0.5 * d * d / beta
    } else {
        d - 0.5 * beta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn closed_form(d: f64, beta: f64) -> (f64, f64) {
        if d.abs() < beta {
            (0.5 * d * d / beta, d / beta)
        } else {
            (d.abs() - 0.5 * beta, d.signum())
        }
    }

    #[test]
    fn one_difference_matches_the_closed_form() {
        for beta in [0.0f32, 0.11, 1.0] {
            for d in [-3.0f32, -0.05, 0.0, 0.1, 2.5] {
                let want = closed_form(d as f64, beta as f64).0;
                assert!(
                    (smooth_l1_elem(d, beta) as f64 - want).abs() < 1e-6,
                    "{d} {beta}"
                );
            }
        }
    }

    #[test]
    fn matches_closed_form_value_and_gradient() {
        let diffs = [-3.0f32, -0.5, -0.05, 0.02, 0.1, 0.7, 2.5];
        for beta in [0.0f32, 1.0 / 9.0, 0.11, 1.0] {
            let pred = Var::from_vec(diffs.to_vec(), (7,), &Device::Cpu).unwrap();
            let target = Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap();
            let loss = smooth_l1_loss(pred.as_tensor(), &target, beta).unwrap();
            let grads = loss.backward().unwrap();
            let g = grads.get(&pred).unwrap().to_vec1::<f32>().unwrap();
            let mut want = 0.0;
            for (i, &d) in diffs.iter().enumerate() {
                let (v, dg) = closed_form(d as f64, beta as f64);
                want += v;
                assert!(
                    (g[i] as f64 - dg).abs() < 1e-5,
                    "beta {beta} d {d}: {} vs {dg}",
                    g[i]
                );
            }
            let got = loss.to_scalar::<f32>().unwrap() as f64;
            assert!((got - want).abs() < 1e-5, "beta {beta}: {got} vs {want}");
        }
    }

    #[test]
    fn beta_zero_is_l1_and_bad_beta_is_rejected() {
        let p = Tensor::new(&[[1.0f32, -2.0], [0.5, 4.0]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[[0.0f32, 1.0], [0.5, -1.0]], &Device::Cpu).unwrap();
        let l1 = smooth_l1_loss(&p, &t, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(l1, 1.0 + 3.0 + 0.0 + 5.0);
        for bad in [-0.1f32, f32::NAN, f32::INFINITY] {
            let err = smooth_l1_loss(&p, &t, bad).unwrap_err().to_string();
            assert!(err.contains("beta"), "{err}");
        }
        let short = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(smooth_l1_loss(&p, &short, 1.0).is_err());
    }
}
