//! RetinaNet: backbone, FPN P_min..P_max, class and box subnets, prior init, safetensors save/load.
//!
//! `forward` returns the predictions of every level flattened once, in the order
//! (level, y, x, anchor, class): class logits `[N, T, K]` and box deltas `[N, T, 4]`, with
//! T = sum over levels of H_l x W_l x A. Anchors must be generated in the same order.

pub mod backbone;
pub mod fpn;
pub mod head;
pub mod layers;
pub mod memory;
pub mod params;
pub mod pretrained;

use crate::config::Config;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use params::ParamStore;
use std::path::{Path, PathBuf};

/// Flattened predictions of one forward pass.
pub struct Output {
    /// `[N, T, K]` class logits.
    pub cls: Tensor,
    /// `[N, T, 4]` box deltas (dx, dy, dw, dh).
    pub boxes: Tensor,
    /// `(H_l, W_l)` of each level, lowest level first.
    pub level_sizes: Vec<(usize, usize)>,
}

pub struct RetinaNet {
    config: Config,
    pub store: ParamStore,
    backbone: backbone::Backbone,
    fpn: fpn::Fpn,
    cls_head: head::Subnet,
    box_head: head::Subnet,
    num_anchors: usize,
    num_classes: usize,
}

impl RetinaNet {
    /// Builds a freshly initialized model from `config` (seeded by `config.seed`).
    pub fn new(config: &Config, device: &Device) -> Result<RetinaNet> {
        config.validate()?;
        memory::check_parameters_fit(config, memory::available_bytes())?;
        let m = &config.model;
        let a = &config.anchors;
        let mut store = ParamStore::new(config.seed, device);
        let backbone = backbone::Backbone::new(&mut store, m)?;
        let fpn = fpn::Fpn::new(
            &mut store,
            backbone.channels,
            m.fpn_channels,
            a.min_level,
            a.max_level,
        )?;
        let na = a.per_location();
        let k = m.num_classes;
        let hw = m.head_width();
        let bias = if m.prior_init {
            head::prior_bias(m.prior_prob)
        } else {
            0.0
        };
        let head_gn = m.head_gn.then_some(m.gn_groups);
        let cls_head = head::Subnet::new(
            &mut store,
            "head.cls",
            m.fpn_channels,
            hw,
            m.head_convs,
            na * k,
            bias,
            head_gn,
        )?;
        let box_head = head::Subnet::new(
            &mut store,
            "head.box",
            m.fpn_channels,
            hw,
            m.head_convs,
            na * 4,
            0.0,
            head_gn,
        )?;
        Ok(RetinaNet {
            config: config.clone(),
            store,
            backbone,
            fpn,
            cls_head,
            box_head,
            num_anchors: na,
            num_classes: k,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.store.device()
    }

    /// `(H_l, W_l)` of each pyramid level for an input of `h x w` (each stride-2 conv with padding 1
    /// maps n to ceil(n / 2)).
    pub fn level_sizes(&self, h: usize, w: usize) -> Vec<(usize, usize)> {
        let a = &self.config.anchors;
        let (mut ch, mut cw) = (h, w);
        let mut out = Vec::new();
        for l in 1..=a.max_level {
            ch = ch.div_ceil(2);
            cw = cw.div_ceil(2);
            if l >= a.min_level {
                out.push((ch, cw));
            }
        }
        out
    }

    /// Total anchors T for an `h x w` input.
    pub fn total_anchors(&self, h: usize, w: usize) -> usize {
        self.level_sizes(h, w)
            .iter()
            .map(|(a, b)| a * b * self.num_anchors)
            .sum()
    }

    /// `[N, 3, H, W]` -> class logits `[N, T, K]` and box deltas `[N, T, 4]`. `train` selects
    /// BatchNorm's batch statistics (and running-statistic updates); GroupNorm ignores it.
    pub fn forward(&self, images: &Tensor, train: bool) -> Result<Output> {
        // No weight changes inside a forward pass: the subnets' weights are prepared for the
        // convolutions once and shared by the pyramid levels.
        crate::ops::conv::share_weight_preparations(|| self.forward_levels(images, train))
    }

    fn forward_levels(&self, images: &Tensor, train: bool) -> Result<Output> {
        let (n, _, _, _) = images.dims4()?;
        let c = self.backbone.forward(images, train)?;
        let p = self.fpn.forward(&c)?;
        let mut cls = Vec::with_capacity(p.len());
        let mut boxes = Vec::with_capacity(p.len());
        let mut level_sizes = Vec::with_capacity(p.len());
        for f in &p {
            let (_, _, h, w) = f.dims4()?;
            level_sizes.push((h, w));
            // [N, A*K, H, W] -> [N, H, W, A*K] -> [N, H*W*A, K]: order (y, x, anchor, class).
            let lc = self.cls_head.forward(f)?.permute((0, 2, 3, 1))?.reshape((
                n,
                h * w * self.num_anchors,
                self.num_classes,
            ))?;
            let lb = self.box_head.forward(f)?.permute((0, 2, 3, 1))?.reshape((
                n,
                h * w * self.num_anchors,
                4,
            ))?;
            cls.push(lc);
            boxes.push(lb);
        }
        Ok(Output {
            cls: Tensor::cat(&cls, 1)?,
            boxes: Tensor::cat(&boxes, 1)?,
            level_sizes,
        })
    }

    /// The backbone's features `[C2, C3, C4, C5]` of `[N, 3, H, W]` images (for checks against
    /// other implementations of the same backbone).
    pub fn backbone_features(&self, images: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        Ok(self.backbone.forward(images, train)?)
    }

    /// Loads the ImageNet weights `model.pretrained` names (if any) into the backbone: the starting
    /// point of a fresh run (a resumed or saved model has them in its own weights already).
    pub fn load_pretrained(&self) -> Result<()> {
        let m = &self.config.model;
        if m.pretrained.is_empty() {
            return Ok(());
        }
        let what = format!(
            "ResNet-{} (model.backbone = {})",
            m.backbone.trim_start_matches('r'),
            m.backbone
        );
        pretrained::load_resnet(&self.store, Path::new(&m.pretrained), &what)?;
        Ok(())
    }

    /// Saves parameters and buffers to `path` (safetensors) and the resolved config beside it
    /// (`path` with extension `toml`), both atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_tensors(path, &self.store.all_tensors())?;
        crate::util::write_atomic(&config_path(path), self.config.to_toml()?.as_bytes())
    }

    /// Loads a model saved by [`RetinaNet::save`], or a run's checkpoint or snapshot: builds it
    /// from the config beside the weights ([`find_config`]), then overwrites every parameter.
    pub fn load(path: &Path, device: &Device) -> Result<RetinaNet> {
        let cfg_path = find_config(path)?;
        let cfg = Config::load(&cfg_path, &[])?;
        let model = RetinaNet::new(&cfg, device)
            .with_context(|| format!("cannot build the model of {}", cfg_path.display()))?;
        model.load_weights(path)?;
        Ok(model)
    }

    /// Loads the final model of a run directory (`fl-lab train` or a sweep run) on the device its
    /// config names.
    pub fn load_run(run_dir: &Path) -> Result<RetinaNet> {
        let weights = run_dir.join("model.safetensors");
        if !weights.exists() {
            anyhow::bail!(
                "{} has no model.safetensors: is it a finished `fl-lab train` run?",
                run_dir.display()
            );
        }
        let cfg = Config::load(&config_path(&weights), &[])?;
        let device = crate::device::parse_device(&cfg.device)?;
        RetinaNet::load(&weights, &device)
    }

    /// Overwrites parameters and buffers from a safetensors file.
    pub fn load_weights(&self, path: &Path) -> Result<()> {
        let tensors = params::read_safetensors(path, self.device())
            .with_context(|| format!("cannot read weights {}", path.display()))?;
        self.store
            .load_from(&tensors)
            .with_context(|| format!("weights {} do not fit this model", path.display()))
    }
}

/// The config file [`RetinaNet::save`] writes beside a weights file.
pub fn config_path(weights: &Path) -> PathBuf {
    weights.with_extension("toml")
}

/// The config of a weights file: the one saved beside it (`model.toml` for `model.safetensors`),
/// else its run's `config.toml` (checkpoints and snapshots have no config of their own).
pub fn find_config(weights: &Path) -> Result<PathBuf> {
    let own = config_path(weights);
    let run = weights
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("config.toml");
    [own.clone(), run.clone()]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{}: no config beside it (looked for {} and {})",
                weights.display(),
                own.display(),
                run.display()
            )
        })
}

/// Writes named tensors as safetensors through a temporary file and a rename.
pub fn save_tensors(
    path: &Path,
    tensors: &std::collections::BTreeMap<String, Tensor>,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tmp = crate::util::temp_beside(path);
    candle_core::safetensors::save(&map, &tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    crate::util::commit_temp(&tmp, path)
}

/// Holds the products setting of `model.conv_products` while the guard lives (training or
/// evaluating a model); an error names the key where this CPU or this process cannot give it.
pub fn hold_conv_products(cfg: &Config) -> Result<crate::ops::conv::ProductsGuard> {
    let bf16 = cfg.model.conv_products == crate::config::ConvProducts::Bf16;
    crate::ops::conv::hold_products(bf16).map_err(|e| {
        anyhow::anyhow!(
            "model.conv_products = {:?}: {e}",
            if bf16 { "bf16" } else { "f32" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny_config() -> Config {
        let mut c = Config::default();
        c.model.backbone = "r10".into();
        c.model.width = 0.125;
        c.model.fpn_channels = 16;
        c.model.head_convs = 2;
        c.model.num_classes = 3;
        c.data.input_size = 64;
        c
    }

    fn input(n: usize, size: usize, seed: u64) -> Tensor {
        let mut s = ParamStore::new(seed, &Device::Cpu);
        s.param("x", &[n, 3, size, size], params::Init::Uniform(1.0))
            .unwrap()
            .detach()
    }

    #[test]
    fn output_shapes_and_flatten_order() {
        let cfg = tiny_config();
        let m = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
        let x = input(2, 64, 1);
        let out = m.forward(&x, true).unwrap();
        let sizes = m.level_sizes(64, 64);
        assert_eq!(sizes, vec![(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]);
        assert_eq!(out.level_sizes, sizes);
        let t = m.total_anchors(64, 64);
        assert_eq!(t, (64 + 16 + 4 + 1 + 1) * 9);
        assert_eq!(out.cls.dims(), &[2, t, 3]);
        assert_eq!(out.boxes.dims(), &[2, t, 4]);
        // Recompute P4's class map directly and compare with the flattened slice:
        // cls[n, off + (y*W + x)*A + a, k] == head[n, a*K + k, y, x].
        let c = m.backbone.forward(&x, true).unwrap();
        let p = m.fpn.forward(&c).unwrap();
        let head4 = m.cls_head.forward(&p[1]).unwrap();
        let head4: Vec<Vec<Vec<Vec<f32>>>> = (0..2)
            .map(|n| head4.get(n).unwrap().to_vec3::<f32>().unwrap())
            .collect();
        let flat: Vec<Vec<Vec<f32>>> = out.cls.to_vec3().unwrap();
        let off = 64 * 9;
        for n in 0..2 {
            for y in 0..4 {
                for xx in 0..4 {
                    for a in 0..9 {
                        for k in 0..3 {
                            let want = head4[n][a * 3 + k][y][xx];
                            let got = flat[n][off + (y * 4 + xx) * 9 + a][k];
                            assert!((want - got).abs() < 1e-5);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn prior_init_gives_probability_pi() {
        let cfg = tiny_config();
        let m = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
        let out = m.forward(&input(1, 64, 2), true).unwrap();
        let p = candle_nn::ops::sigmoid(&out.cls).unwrap();
        let mean = p.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(
            (mean - 0.01).abs() < 1e-3,
            "mean foreground probability {mean}"
        );
        let b = head::prior_bias(0.01);
        assert!((b + 4.59512).abs() < 1e-5);
    }

    #[test]
    fn upsample_accumulates_gradient_of_shared_input() {
        // x feeds both the upsample and a second op: d/dx sum(up(x)) + sum(3x) = 4 + 3.
        let x = candle_core::Var::from_tensor(
            &Tensor::arange(0f32, 8., &Device::Cpu)
                .unwrap()
                .reshape((1, 2, 2, 2))
                .unwrap(),
        )
        .unwrap();
        let y = layers::upsample2x(x.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[1, 2, 4, 4]);
        let row: Vec<f32> = y
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(row, vec![0., 0., 1., 1.]);
        let loss =
            (y.sum_all().unwrap() + (x.as_tensor() * 3.0).unwrap().sum_all().unwrap()).unwrap();
        let g = loss.backward().unwrap();
        let gx: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(gx.iter().all(|&v| v == 7.0), "{gx:?}");
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        use crate::config::NormKind::{Bn, Gn};
        for (norm, head_gn) in [(Gn, false), (Bn, false), (Gn, true)] {
            let mut cfg = tiny_config();
            cfg.model.norm = norm;
            cfg.model.head_gn = head_gn;
            let m = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
            let out = m.forward(&input(2, 64, 3), true).unwrap();
            let r1 = input(1, 1, 4); // a few fixed weights to break symmetry of the sum
            let w = r1.flatten_all().unwrap();
            let lc = out
                .cls
                .broadcast_mul(&w.reshape((1, 1, 3)).unwrap())
                .unwrap();
            let lb = out.boxes.sqr().unwrap();
            let loss = (lc.sum_all().unwrap() + lb.sum_all().unwrap()).unwrap();
            let grads = loss.backward().unwrap();
            for (name, var) in m.store.named_vars() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no gradient"));
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    norm > 0.0 && norm.is_finite(),
                    "{name}: gradient norm {norm}"
                );
            }
        }
    }

    #[test]
    fn save_load_gives_identical_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny_config();
        cfg.model.norm = crate::config::NormKind::Bn;
        let m = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
        let x = input(1, 64, 5);
        m.forward(&x, true).unwrap(); // moves the BN running statistics away from their init
        let path = dir.path().join("model.safetensors");
        m.save(&path).unwrap();
        assert!(config_path(&path).exists());
        let loaded = RetinaNet::load(&path, &Device::Cpu).unwrap();
        let a = m.forward(&x, false).unwrap();
        let b = loaded.forward(&x, false).unwrap();
        let d = (&a.cls - &b.cls).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let d = (&a.boxes - &b.boxes)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        // A different seed gives different weights; loading overwrites them all.
        let mut other = cfg.clone();
        other.seed = 9;
        let m2 = RetinaNet::new(&other, &Device::Cpu).unwrap();
        let c = m2.forward(&x, false).unwrap();
        let d = (&a.boxes - &c.boxes)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() > 0.0);
        m2.load_weights(&path).unwrap();
        let c = m2.forward(&x, false).unwrap();
        let d = (a.boxes - c.boxes)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}
