//! SGD with momentum and weight decay, with PyTorch / detectron2 semantics:
//! `g = grad + wd * p; buf = momentum * buf + g` (`buf = g` on the first step); `p -= lr * buf`.
//! (candle-nn's SGD has neither momentum nor weight decay.) Because the learning rate multiplies the
//! buffer rather than entering it, a schedule change takes effect at once, as in detectron2.

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Storage, Tensor, Var};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// One optimized parameter: its name, variable and weight decay.
struct Slot {
    name: String,
    var: Var,
    weight_decay: f64,
    momentum_buf: Option<Tensor>,
}

pub struct Sgd {
    slots: Vec<Slot>,
    momentum: f64,
}

/// Prefix of the momentum buffers' names in a checkpoint.
pub const STATE_PREFIX: &str = "optimizer.momentum.";

impl Sgd {
    /// `params` as (name, var, weight decay).
    pub fn new(params: Vec<(String, Var, f64)>, momentum: f64) -> Sgd {
        Sgd {
            slots: params
                .into_iter()
                .map(|(name, var, weight_decay)| Slot {
                    name,
                    var,
                    weight_decay,
                    momentum_buf: None,
                })
                .collect(),
            momentum,
        }
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left untouched
    /// (and keep their momentum), as in PyTorch.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_summed(std::slice::from_ref(grads), lr)
    }

    /// One update with the sum of `grads` (the gradients of a batch's parts) as the gradient.
    /// Parameters update in parallel, each in one pass on the CPU.
    pub fn step_summed(&mut self, grads: &[GradStore], lr: f64) -> Result<()> {
        let momentum = self.momentum;
        self.slots.par_iter_mut().try_for_each(|slot| {
            let parts: Vec<Tensor> = grads
                .iter()
                .filter_map(|g| g.get(slot.var.as_tensor()))
                .map(|g| g.detach())
                .collect();
            if parts.is_empty() || fused_update(slot, &parts, lr, momentum)? {
                return Ok(());
            }
            tensor_update(slot, parts, lr, momentum)
        })
    }

    /// Momentum buffers by checkpoint name (parameters that have not stepped yet are absent).
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        self.slots
            .iter()
            .filter_map(|s| {
                s.momentum_buf
                    .as_ref()
                    .map(|b| (format!("{STATE_PREFIX}{}", s.name), b.clone()))
            })
            .collect()
    }

    /// Restores buffers saved by [`Sgd::state`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for slot in &mut self.slots {
            let key = format!("{STATE_PREFIX}{}", slot.name);
            slot.momentum_buf = match tensors.get(&key) {
                Some(t) => {
                    if t.dims() != slot.var.dims() {
                        anyhow::bail!(
                            "optimizer state {key} has shape {:?}, expected {:?}",
                            t.dims(),
                            slot.var.dims()
                        );
                    }
                    Some(
                        crate::model::params::finite_f32(&key, t, slot.var.device())
                            .with_context(|| format!("loading {key}"))?,
                    )
                }
                None => None,
            };
        }
        Ok(())
    }
}

/// The update in tensor ops, for any device:
/// `g = Σ parts + wd * p; buf = momentum * buf + g; p -= lr * buf`.
fn tensor_update(slot: &mut Slot, parts: Vec<Tensor>, lr: f64, momentum: f64) -> Result<()> {
    let mut parts = parts.into_iter();
    let Some(mut g) = parts.next() else {
        return Ok(());
    };
    for other in parts {
        g = (g + other)?;
    }
    let p = slot.var.as_tensor().detach();
    if slot.weight_decay != 0.0 {
        g = (g + (&p * slot.weight_decay)?)?;
    }
    let buf = match &slot.momentum_buf {
        Some(b) if momentum != 0.0 => ((b * momentum)? + g)?,
        _ => g,
    };
    slot.var.set(&(p - (&buf * lr)?)?)?;
    slot.momentum_buf = Some(buf);
    Ok(())
}

/// [`tensor_update`] in one pass over f32 CPU tensors, with the same f32 operations in the same
/// order (so the same bits), without the tensor ops' seven allocations. Returns
/// false, changing nothing, for tensors elsewhere.
fn fused_update(slot: &mut Slot, parts: &[Tensor], lr: f64, momentum: f64) -> Result<bool> {
    let p = slot.var.as_tensor();
    let buf = slot.momentum_buf.as_ref().filter(|_| momentum != 0.0);
    let inputs: Vec<Tensor> = std::iter::once(p)
        .chain(parts)
        .chain(buf)
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<_>>()?;
    if inputs
        .iter()
        .any(|t| !t.device().is_cpu() || t.dtype() != DType::F32)
    {
        return Ok(false);
    }
    let (new_p, new_buf) = {
        let guards: Vec<_> = inputs.iter().map(|t| t.storage_and_layout()).collect();
        let data = guards
            .iter()
            .map(|(s, l)| match &**s {
                Storage::Cpu(c) => Ok(crate::ops::conv::cpu_f32(c, l, "sgd")?),
                _ => anyhow::bail!("sgd: expected a CPU tensor"),
            })
            .collect::<Result<Vec<&[f32]>>>()?;
        let (pv, grads) = (data[0], &data[1..1 + parts.len()]);
        let bv = buf.map(|_| data[1 + parts.len()]);
        let (wd, m, lr) = (slot.weight_decay as f32, momentum as f32, lr as f32);
        // The parts' sum, then one pass for decay, momentum and step: `g += p * wd`,
        // `buf = g + buf * m`, `p - buf * lr` per value (each loop vectorizes).
        let mut new_buf = grads[0].to_vec();
        for other in &grads[1..] {
            new_buf.iter_mut().zip(*other).for_each(|(g, &o)| *g += o);
        }
        let mut new_p = Vec::with_capacity(pv.len());
        let step = |g: &mut f32, p: f32, b: Option<f32>| {
            if wd != 0.0 {
                *g += p * wd;
            }
            if let Some(b) = b {
                *g += b * m;
            }
            p - *g * lr
        };
        match bv {
            Some(bv) => {
                let values = new_buf.iter_mut().zip(pv).zip(bv);
                new_p.extend(values.map(|((g, &p), &b)| step(g, p, Some(b))));
            }
            None => new_p.extend(new_buf.iter_mut().zip(pv).map(|(g, &p)| step(g, p, None))),
        }
        (new_p, new_buf)
    };
    let shape = p.shape().clone();
    slot.var
        .set(&Tensor::from_vec(new_p, shape.clone(), p.device())?)?;
    slot.momentum_buf = Some(Tensor::from_vec(new_buf, shape, p.device())?);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps by hand: p0 = 1, grads 2 then 4 (loss = c * p), lr 0.1, momentum 0.9, wd 0.5.
    #[test]
    fn matches_hand_computed_momentum_and_decay() {
        let var = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut sgd = Sgd::new(vec![("p".into(), var.clone(), 0.5)], 0.9);
        let g1 = (var.as_tensor() * 2.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        sgd.step(&g1, 0.1).unwrap();
        // g = 2 + 0.5 * 1 = 2.5; buf = 2.5; p = 1 - 0.25 = 0.75
        let p1 = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((p1 - 0.75).abs() < 1e-6, "{p1}");
        let g2 = (var.as_tensor() * 4.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        sgd.step(&g2, 0.01).unwrap();
        // g = 4 + 0.375 = 4.375; buf = 0.9 * 2.5 + 4.375 = 6.625; p = 0.75 - 0.06625 = 0.68375
        let p2 = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((p2 - 0.68375).abs() < 1e-6, "{p2}");
        let state = sgd.state();
        let buf = state[&format!("{STATE_PREFIX}p")].to_vec1::<f32>().unwrap()[0];
        assert!((buf - 6.625).abs() < 1e-6);
    }

    /// The one-pass CPU update gives the bits of the tensor-op update, over steps and summed parts.
    #[test]
    fn fused_update_equals_the_tensor_ops_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut random = |n: usize| -> Tensor {
            let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            Tensor::from_vec(v, n, &Device::Cpu).unwrap()
        };
        let start = random(1001);
        let steps: Vec<Vec<Tensor>> = (0..3)
            .map(|k| (0..=k % 2).map(|_| random(1001)).collect())
            .collect();
        for (wd, momentum) in [(1e-4, 0.9), (0.0, 0.9), (0.5, 0.0)] {
            let run = |fused: bool| -> (Vec<f32>, Vec<f32>) {
                let mut slot = Slot {
                    name: "p".into(),
                    var: Var::from_tensor(&start.copy().unwrap()).unwrap(),
                    weight_decay: wd,
                    momentum_buf: None,
                };
                for parts in &steps {
                    if fused {
                        assert!(fused_update(&mut slot, parts, 0.01, momentum).unwrap());
                    } else {
                        tensor_update(&mut slot, parts.clone(), 0.01, momentum).unwrap();
                    }
                }
                let buf = slot.momentum_buf.unwrap().to_vec1().unwrap();
                (slot.var.as_tensor().to_vec1().unwrap(), buf)
            };
            assert_eq!(run(true), run(false), "wd {wd}, momentum {momentum}");
        }
    }
}
