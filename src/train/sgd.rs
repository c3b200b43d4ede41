//! SGD with momentum and weight decay, with PyTorch / detectron2 semantics:
//! `g = grad + wd * p; buf = momentum * buf + g` (`buf = g` on the first step); `p -= lr * buf`.
//! (candle-nn's SGD has neither momentum nor weight decay.) Because the learning rate multiplies the
//! buffer rather than entering it, a schedule change takes effect at once, as in detectron2.

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
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
    pub fn step_summed(&mut self, grads: &[GradStore], lr: f64) -> Result<()> {
        for slot in &mut self.slots {
            let mut parts = grads.iter().filter_map(|g| g.get(slot.var.as_tensor()));
            let Some(first) = parts.next() else {
                continue;
            };
            let mut g = first.detach();
            for other in parts {
                g = (g + other.detach())?;
            }
            let p = slot.var.as_tensor().detach();
            if slot.weight_decay != 0.0 {
                g = (g + (&p * slot.weight_decay)?)?;
            }
            let buf = match &slot.momentum_buf {
                Some(b) if self.momentum != 0.0 => ((b * self.momentum)? + g)?,
                _ => g,
            };
            slot.var.set(&(p - (&buf * lr)?)?)?;
            slot.momentum_buf = Some(buf);
        }
        Ok(())
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
                        t.to_device(slot.var.device())
                            .with_context(|| format!("loading {key}"))?,
                    )
                }
                None => None,
            };
        }
        Ok(())
    }
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
}
