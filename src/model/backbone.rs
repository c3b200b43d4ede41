//! ResNet-style backbone: a stem and four stages of basic or bottleneck blocks, the stage outputs
//! C2..C5 at strides 4, 8, 16, 32.
//!
//! Two stems (`model.stem`): fl-lab's default is one 3x3 stride-2 conv (no max-pool: candle's pool
//! backward only supports kernel == stride) with every stage starting with a stride-2 block;
//! `resnet` is ResNet's own (torchvision's and timm's), a 7x7 stride-2 conv and a 3x3 stride-2
//! max-pool with a stride-1 first stage, which ImageNet weights need. Blocks are torchvision's
//! (ResNet v1.5: a bottleneck strides in its 3x3 conv), so `pretrained` maps their tensors one to
//! one (see `model::pretrained`).
//!
//! Frozen parts (`model.freeze_at`, detectron2's `FREEZE_AT`) hold their conv weights as buffers
//! and their norms as frozen BN: no gradient reaches or passes them.

use super::layers::{max_pool_3x3_s2, Conv, ConvInit, Norm};
use super::params::ParamStore;
use crate::config::{BlockKind, ModelConfig, NormKind, StemKind};
use crate::ops;
use candle_core::{Result, Tensor};

struct Block {
    convs: Vec<(Conv, Norm)>,
    shortcut: Option<(Conv, Norm)>,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &mut ParamStore,
        name: &str,
        cfg: &ModelConfig,
        kind: BlockKind,
        c_in: usize,
        c_out: usize,
        stride: usize,
        frozen: bool,
    ) -> Result<Block> {
        let d = ConvInit::Default;
        let g = cfg.gn_groups;
        let norm = if frozen { NormKind::FrozenBn } else { cfg.norm };
        let conv =
            |store: &mut ParamStore, name: &str, ci: usize, co: usize, k: usize, s: usize| {
                if frozen {
                    Conv::new_frozen(store, name, ci, co, k, s, d)
                } else {
                    Conv::new(store, name, ci, co, k, s, false, d)
                }
            };
        let cn = |store: &mut ParamStore, i: usize, ci: usize, co: usize, k: usize, s: usize| {
            Ok::<_, candle_core::Error>((
                conv(store, &format!("{name}.conv{i}"), ci, co, k, s)?,
                Norm::new(store, &format!("{name}.norm{i}"), norm, co, g)?,
            ))
        };
        let convs = match kind {
            BlockKind::Basic => vec![
                cn(store, 1, c_in, c_out, 3, stride)?,
                cn(store, 2, c_out, c_out, 3, 1)?,
            ],
            BlockKind::Bottleneck => {
                let mid = (c_out / 4).max(1);
                vec![
                    cn(store, 1, c_in, mid, 1, 1)?,
                    cn(store, 2, mid, mid, 3, stride)?,
                    cn(store, 3, mid, c_out, 1, 1)?,
                ]
            }
        };
        let shortcut = if stride != 1 || c_in != c_out {
            Some((
                conv(store, &format!("{name}.shortcut"), c_in, c_out, 1, stride)?,
                Norm::new(store, &format!("{name}.shortcut_norm"), norm, c_out, g)?,
            ))
        } else {
            None
        };
        Ok(Block { convs, shortcut })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, norm)) in self.convs.iter().enumerate() {
            y = conv.forward_norm(norm, &y, train, i != last)?;
        }
        let sc = match &self.shortcut {
            Some((conv, norm)) => conv.forward_norm(norm, x, train, false)?,
            None => x.clone(),
        };
        ops::relu(&(y + sc)?)
    }
}

pub struct Backbone {
    stem: (Conv, Norm),
    /// ResNet's 3x3 stride-2 max-pool after the stem (`model.stem = "resnet"`).
    stem_pool: bool,
    stages: Vec<Vec<Block>>,
    /// Output channels of C2..C5.
    pub channels: [usize; 4],
}

impl Backbone {
    pub fn new(store: &mut ParamStore, cfg: &ModelConfig) -> Result<Backbone> {
        let (kind, depths) = cfg.resolved_blocks().map_err(candle_core::Error::wrap)?;
        let (stem_c, channels) = cfg.stage_channels().map_err(candle_core::Error::wrap)?;
        let resnet = cfg.stem == StemKind::Resnet;
        let (k, name) = ("backbone.stem.conv", "backbone.stem.norm");
        let ksize = if resnet { 7 } else { 3 };
        let stem_frozen = cfg.freeze_at >= 1;
        let stem_conv = if stem_frozen {
            Conv::new_frozen(store, k, 3, stem_c, ksize, 2, ConvInit::Default)?
        } else {
            Conv::new(store, k, 3, stem_c, ksize, 2, false, ConvInit::Default)?
        };
        let stem_norm = if stem_frozen {
            NormKind::FrozenBn
        } else {
            cfg.norm
        };
        let stem = (
            stem_conv,
            Norm::new(store, name, stem_norm, stem_c, cfg.gn_groups)?,
        );
        let mut stages = Vec::new();
        let mut c_in = stem_c;
        for (s, (&depth, &c_out)) in depths.iter().zip(channels.iter()).enumerate() {
            // Stage s holds C_{s+2} (detectron2's res{s+2}); FREEZE_AT = k freezes res2..res_k.
            let frozen = cfg.freeze_at >= s + 2;
            let mut blocks = Vec::new();
            for b in 0..depth {
                let stride = if b == 0 && !(resnet && s == 0) { 2 } else { 1 };
                let name = format!("backbone.stage{}.block{b}", s + 2);
                blocks.push(Block::new(
                    store, &name, cfg, kind, c_in, c_out, stride, frozen,
                )?);
                c_in = c_out;
            }
            stages.push(blocks);
        }
        Ok(Backbone {
            stem,
            stem_pool: resnet,
            stages,
            channels,
        })
    }

    /// `[N, 3, H, W]` -> `[C2, C3, C4, C5]`, strides 4, 8, 16, 32.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut y = self.stem.0.forward_norm(&self.stem.1, x, train, true)?;
        if self.stem_pool {
            y = max_pool_3x3_s2(&y)?;
        }
        let mut outs = Vec::with_capacity(4);
        for stage in &self.stages {
            for block in stage {
                y = block.forward(&y, train)?;
            }
            outs.push(y.clone());
        }
        Ok(outs)
    }
}
