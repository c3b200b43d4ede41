//! ReLU on the CPU in f32 with a one-pass backward. candle's own backward builds the mask from
//! the input in four full passes (zeros, compare, cast, multiply); here the gradient is masked by
//! the saved output in one.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{cpu_f32, with_f32};

/// Values per parallel task: large enough that the task overhead is noise.
const CHUNK: usize = 1 << 15;

pub struct ReluOp;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "fl-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "relu input")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| yc.iter_mut().zip(xc).for_each(|(o, v)| *o = v.max(0.0)));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(res, "relu output", |y| {
            with_f32(grad, "relu output gradient", |dy| {
                let mut dx = vec![0f32; y.len()];
                dx.par_chunks_mut(CHUNK)
                    .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
                    .for_each(|(dc, (yc, gc))| {
                        for ((d, o), g) in dc.iter_mut().zip(yc).zip(gc) {
                            *d = if *o > 0.0 { *g } else { 0.0 };
                        }
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, res.shape(), &Device::Cpu)?))
    }
}

/// Fast-path ReLU on a CPU f32 tensor, with autograd through `ReluOp`.
pub fn relu_cpu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(ReluOp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, rand_tensor};
    use candle_core::Var;

    #[test]
    fn matches_candle_in_value_and_gradient() {
        let dev = Device::Cpu;
        for (i, dims) in [[2, 3, 5, 7], [1, 1, 1, 1], [3, 70, 33, 17]]
            .iter()
            .enumerate()
        {
            let x = Var::from_tensor(&rand_tensor(dims, i as u64, &dev)).unwrap();
            let r = rand_tensor(dims, 10 + i as u64, &dev);
            let ours = relu_cpu(&x).unwrap();
            let theirs = x.relu().unwrap();
            assert_close(&ours, &theirs, "relu value");
            let g_ours = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_theirs = (theirs * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert_close(
                g_ours.get(&x).unwrap(),
                g_theirs.get(&x).unwrap(),
                "relu gradient",
            );
        }
    }
}
