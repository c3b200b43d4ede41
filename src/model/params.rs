//! Parameter storage with seeded initialization.
//!
//! Trainable tensors live in a candle `VarMap` (so gradients and the optimizer find them by name);
//! BatchNorm running statistics live in a second map of buffers that the optimizer never sees.
//! Initial values come from a ChaCha generator seeded by the config, drawn in construction order,
//! so the same seed and config give the same weights on every device.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Reads the tensors of a safetensors file. Shapes are checked first: candle multiplies the dims
/// of a shape like [0, 2^40, 2^40] (no data, so the file is valid) and overflows.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    use candle_core::safetensors::{Load, SliceSafetensors};
    let bytes = std::fs::read(path)?;
    let file = SliceSafetensors::new(&bytes)?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        let dims = view.shape();
        if dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d.max(1)))
            .is_none()
        {
            candle_core::bail!("tensor {name} has shape {dims:?}, beyond any memory");
        }
        out.insert(name, view.load(device)?);
    }
    Ok(out)
}

/// A loaded tensor as f32 on `device`, refusing NaN and infinities: a damaged file would
/// otherwise only show up later, as a diverged run or NaN scores.
pub fn finite_f32(name: &str, t: &Tensor, device: &Device) -> Result<Tensor> {
    let t = t.to_dtype(DType::F32)?.to_device(device)?;
    // 0 * x is 0 for every finite x and NaN otherwise: one reduction, on any device.
    if t.affine(0.0, 0.0)?.sum_all()?.to_scalar::<f32>()? != 0.0 {
        candle_core::bail!("checkpoint tensor {name} has NaN or infinite values");
    }
    Ok(t)
}

/// How a parameter starts.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// U(-bound, bound); PyTorch's conv default uses bound = 1/sqrt(fan_in).
    Uniform(f64),
    /// N(0, std^2); the paper's head init uses std = 0.01.
    Normal(f64),
    Const(f64),
}

/// Every parameter and buffer of a model, by dotted name.
pub struct ParamStore {
    pub vars: VarMap,
    pub buffers: BTreeMap<String, Var>,
    /// Names of normalization scales and shifts (their weight decay differs).
    pub norm_params: Vec<String>,
    rng: ChaCha8Rng,
    device: Device,
}

impl ParamStore {
    pub fn new(seed: u64, device: &Device) -> Self {
        ParamStore {
            vars: VarMap::new(),
            buffers: BTreeMap::new(),
            norm_params: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn values(&mut self, n: usize, init: Init) -> Vec<f32> {
        match init {
            Init::Uniform(b) => (0..n).map(|_| self.rng.gen_range(-b..b) as f32).collect(),
            Init::Normal(std) => (0..n)
                .map(|_| {
                    // Box-Muller; 1 - u keeps the log argument in (0, 1].
                    let u1: f64 = 1.0 - self.rng.gen::<f64>();
                    let u2: f64 = self.rng.gen::<f64>();
                    (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
                })
                .collect(),
            Init::Const(v) => vec![v as f32; n],
        }
    }

    /// A new trainable parameter of `shape`, registered under `name`.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let n = shape.iter().product();
        let data = self.values(n, init);
        let t = Tensor::from_vec(data, shape, &self.device)?;
        let var = Var::from_tensor(&t)?;
        let mut map = self.vars.data().lock().expect("varmap lock poisoned");
        if map.contains_key(name) {
            candle_core::bail!("parameter {name} registered twice");
        }
        map.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    /// A normalization scale or shift (tracked for its own weight decay).
    pub fn norm_param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        self.norm_params.push(name.to_string());
        self.param(name, shape, init)
    }

    /// A non-trainable buffer (BatchNorm running statistics).
    pub fn buffer(&mut self, name: &str, shape: &[usize], value: f64) -> Result<Var> {
        let var = Var::from_tensor(&Tensor::full(value as f32, shape, &self.device)?)?;
        self.buffers.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// A fixed tensor initialized like a parameter (a frozen conv's weights, a frozen norm's
    /// statistics): a buffer, saved and loaded with the parameters but never trained.
    pub fn frozen(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let n = shape.iter().product();
        let data = self.values(n, init);
        let var = Var::from_tensor(&Tensor::from_vec(data, shape, &self.device)?)?;
        if self.buffers.insert(name.to_string(), var.clone()).is_some() {
            candle_core::bail!("buffer {name} registered twice");
        }
        Ok(var)
    }

    /// Trainable parameters sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let map = self.vars.data().lock().expect("varmap lock poisoned");
        let mut v: Vec<(String, Var)> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Parameters and buffers, by name (what a checkpoint holds).
    pub fn all_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        for (k, v) in &self.buffers {
            out.insert(k.clone(), v.as_tensor().clone());
        }
        out
    }

    /// Overwrites every parameter and buffer from `tensors`; all must be present with equal shapes.
    pub fn load_from(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let mut targets: Vec<(String, Var)> = self.named_vars();
        targets.extend(self.buffers.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (name, var) in targets {
            let Some(t) = tensors.get(&name) else {
                candle_core::bail!("checkpoint has no tensor {name}");
            };
            if t.dims() != var.dims() {
                candle_core::bail!(
                    "checkpoint tensor {name} has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&finite_f32(&name, t, &self.device)?)?;
        }
        Ok(())
    }

    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }
}
