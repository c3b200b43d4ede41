//! ResNet-style backbone: a strided-conv stem and four stages of basic or bottleneck blocks.
//!
//! The stem is one 3x3 stride-2 conv (no max-pool: candle's pool backward only supports
//! kernel == stride), and every stage starts with a stride-2 block, so the stage outputs C2..C5
//! have strides 4, 8, 16, 32.

use super::layers::{Conv, ConvInit, Norm};
use super::params::ParamStore;
use crate::config::{BlockKind, ModelConfig};
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
    ) -> Result<Block> {
        let d = ConvInit::Default;
        let g = cfg.gn_groups;
        let cn = |store: &mut ParamStore, i: usize, ci: usize, co: usize, k: usize, s: usize| {
            Ok::<_, candle_core::Error>((
                Conv::new(store, &format!("{name}.conv{i}"), ci, co, k, s, false, d)?,
                Norm::new(store, &format!("{name}.norm{i}"), cfg.norm, co, g)?,
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
                Conv::new(
                    store,
                    &format!("{name}.shortcut"),
                    c_in,
                    c_out,
                    1,
                    stride,
                    false,
                    d,
                )?,
                Norm::new(store, &format!("{name}.shortcut_norm"), cfg.norm, c_out, g)?,
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
            let z = conv.forward(&y)?;
            y = if i != last {
                norm.forward_relu(&z, train)?
            } else {
                norm.forward(&z, train)?
            };
        }
        let sc = match &self.shortcut {
            Some((conv, norm)) => norm.forward(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        ops::relu(&(y + sc)?)
    }
}

pub struct Backbone {
    stem: (Conv, Norm),
    stages: Vec<Vec<Block>>,
    /// Output channels of C2..C5.
    pub channels: [usize; 4],
}

impl Backbone {
    pub fn new(store: &mut ParamStore, cfg: &ModelConfig) -> Result<Backbone> {
        let (kind, depths) = cfg.resolved_blocks().map_err(candle_core::Error::wrap)?;
        let (stem_c, channels) = cfg.stage_channels().map_err(candle_core::Error::wrap)?;
        let stem = (
            Conv::new(
                store,
                "backbone.stem.conv",
                3,
                stem_c,
                3,
                2,
                false,
                ConvInit::Default,
            )?,
            Norm::new(store, "backbone.stem.norm", cfg.norm, stem_c, cfg.gn_groups)?,
        );
        let mut stages = Vec::new();
        let mut c_in = stem_c;
        for (s, (&depth, &c_out)) in depths.iter().zip(channels.iter()).enumerate() {
            let mut blocks = Vec::new();
            for b in 0..depth {
                let stride = if b == 0 { 2 } else { 1 };
                let name = format!("backbone.stage{}.block{b}", s + 2);
                blocks.push(Block::new(store, &name, cfg, kind, c_in, c_out, stride)?);
                c_in = c_out;
            }
            stages.push(blocks);
        }
        Ok(Backbone {
            stem,
            stages,
            channels,
        })
    }

    /// `[N, 3, H, W]` -> `[C2, C3, C4, C5]`, strides 4, 8, 16, 32.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut y = self.stem.1.forward_relu(&self.stem.0.forward(x)?, train)?;
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
