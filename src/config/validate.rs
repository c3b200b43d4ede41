//! The checks each config section makes of its values, beyond what its types enforce. Every
//! error names its key and value.
//!
//! Floats are checked against the range in which they are used: a value the model, loss or
//! optimizer computes with in float32 must also survive the conversion (`1e40` is finite as f64
//! but infinite as f32, `1e-50` becomes 0), and sizes and rates get sensible bounds so that a typo
//! fails here instead of training a degenerate model that exits 0.

use anyhow::{bail, Result};

use super::{
    AnchorsConfig, DataConfig, LossConfig, LossKind, MatcherConfig, ModelConfig, NormKind,
    ScheduleConfig, StemKind,
};

impl ModelConfig {
    pub(super) fn validate(&self) -> Result<()> {
        let (_, depths) = self.resolved_blocks()?;
        if depths.len() != 4 {
            bail!(
                "model.depths: expected 4 stages, got {} ({depths:?})",
                depths.len()
            );
        }
        if depths.contains(&0) {
            bail!("model.depths: every stage needs at least one block, got {depths:?}");
        }
        // Layer counts are built (and their memory estimated) one by one: 2^62 would never end.
        if depths.iter().any(|&d| d > 1000) {
            bail!("model.depths: at most 1000 blocks per stage, got {depths:?}");
        }
        if self.head_convs > 64 {
            bail!(
                "model.head_convs must be at most 64, got {}",
                self.head_convs
            );
        }
        positive("model.width", self.width)?;
        // Stage widths are 64..512 x width: at 16 one 3x3 conv of the last stage holds 2.4 GB.
        require(
            "model.width",
            self.width,
            self.width <= 16.0,
            "be at most 16",
        )?;
        nonzero("model.gn_groups", self.gn_groups)?;
        nonzero("model.fpn_channels", self.fpn_channels)?;
        nonzero("model.num_classes", self.num_classes)?;
        if !(self.prior_prob > 0.0 && self.prior_prob < 1.0) {
            bail!(
                "model.prior_prob must lie in (0, 1), got {}",
                self.prior_prob
            );
        }
        self.validate_pretrained()
    }

    /// ImageNet weights, frozen BN and frozen stages need each other and ResNet's own layout.
    fn validate_pretrained(&self) -> Result<()> {
        if !self.pretrained.is_empty() {
            let p = &self.pretrained;
            if !["r18", "r34", "r50"].contains(&self.backbone.as_str()) {
                bail!(
                    "model.pretrained = '{p}' needs model.backbone r18, r34 or r50 (ResNet-18/34/50), got '{}'",
                    self.backbone
                );
            }
            if self.width != 1.0 {
                bail!(
                    "model.pretrained = '{p}' needs model.width = 1 (ResNet's own widths), got {}",
                    self.width
                );
            }
            if self.stem != StemKind::Resnet {
                bail!("model.pretrained = '{p}' needs model.stem = \"resnet\" (ResNet's 7x7 conv and max-pool)");
            }
            if self.norm == NormKind::Gn {
                bail!(
                    "model.pretrained = '{p}' needs model.norm = \"frozen_bn\" or \"bn\" (the file holds BatchNorm statistics), got \"gn\""
                );
            }
        }
        if self.norm == NormKind::FrozenBn && self.pretrained.is_empty() {
            bail!("model.norm = \"frozen_bn\" needs model.pretrained (frozen statistics of a fresh init are an identity)");
        }
        if self.freeze_at > 5 {
            bail!(
                "model.freeze_at must be between 0 and 5 (0: nothing, 1: the stem, k: the stem and the first k - 1 stages), got {}",
                self.freeze_at
            );
        }
        if self.freeze_at > 0 && self.pretrained.is_empty() {
            bail!(
                "model.freeze_at = {} needs model.pretrained (freezing a fresh init fixes random weights)",
                self.freeze_at
            );
        }
        Ok(())
    }
}

impl AnchorsConfig {
    pub(super) fn validate(&self) -> Result<()> {
        if self.min_level > self.max_level {
            bail!(
                "anchors.min_level ({}) > anchors.max_level ({}): zero pyramid levels",
                self.min_level,
                self.max_level
            );
        }
        if !(2..=5).contains(&self.min_level) {
            bail!(
                "anchors.min_level must be between 2 and 5 (backbone levels C2-C5), got {}",
                self.min_level
            );
        }
        if !(5..=7).contains(&self.max_level) {
            bail!(
                "anchors.max_level must be between 5 and 7 (P5 to P7), got {}",
                self.max_level
            );
        }
        // Anchor sides are anchor_scale x stride: 0.1 gives sub-pixel anchors on P3, 100 anchors
        // larger than the largest input (8192 px) on P7; no box matches either.
        let scale = self.anchor_scale;
        let scale_ok = (0.1..=100.0).contains(&scale);
        require("anchors.anchor_scale", scale, scale_ok, "lie in [0.1, 100]")?;
        if !(1..=64).contains(&self.scales_per_octave) {
            bail!(
                "anchors.scales_per_octave must be between 1 and 64, got {}",
                self.scales_per_octave
            );
        }
        if self.aspect_ratios.is_empty() {
            bail!("anchors.aspect_ratios must not be empty");
        }
        for &r in &self.aspect_ratios {
            // Height / width: 100 is already a 10:1 stretch of each side.
            let ok = (0.01..=100.0).contains(&r);
            require("anchors.aspect_ratios", r, ok, "hold ratios in [0.01, 100]")?;
        }
        Ok(())
    }
}

impl MatcherConfig {
    pub(super) fn validate(&self) -> Result<()> {
        let (neg, pos) = (self.neg_iou, self.pos_iou);
        if !(neg > 0.0 && neg <= pos && pos <= 1.0) {
            bail!(
                "matcher.neg_iou / matcher.pos_iou: need 0 < neg_iou <= pos_iou <= 1, got {neg} and {pos}"
            );
        }
        fits_f32("matcher.neg_iou", neg)
    }
}

impl LossConfig {
    pub(super) fn validate(&self) -> Result<()> {
        non_negative_f32("loss.gamma", self.gamma)?;
        // (1 - p)^gamma: at 10 a sample at p = 0.5 already weighs 1e-3 (the bound of
        // `loss-cdf --gammas` too).
        require(
            "loss.gamma",
            self.gamma,
            self.gamma <= 10.0,
            "be at most 10",
        )?;
        if self.kind == LossKind::FlStar && self.gamma <= 0.0 {
            bail!(
                "loss.gamma must be > 0 for fl_star (FL* divides by gamma), got {}",
                self.gamma
            );
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            bail!("loss.alpha must lie in [0, 1], got {}", self.alpha);
        }
        fits_f32("loss.alpha", self.alpha)?;
        if !self.beta.is_finite() {
            bail!("loss.beta must be finite, got {}", self.beta);
        }
        fits_f32("loss.beta", self.beta)?;
        nonzero("loss.ohem_batch", self.ohem_batch)?;
        if !(self.ohem_nms > 0.0 && self.ohem_nms <= 1.0) {
            bail!("loss.ohem_nms must lie in (0, 1], got {}", self.ohem_nms);
        }
        fits_f32("loss.ohem_nms", self.ohem_nms)?;
        non_negative_f32("loss.box_beta", self.box_beta)?;
        non_negative_f32("loss.box_weight", self.box_weight)?;
        if !(self.ema_momentum >= 0.0 && self.ema_momentum < 1.0) {
            bail!(
                "loss.ema_momentum must lie in [0, 1), got {}",
                self.ema_momentum
            );
        }
        Ok(())
    }
}

impl ScheduleConfig {
    pub(super) fn validate(&self) -> Result<()> {
        nonzero("schedule.iterations", self.iterations)?;
        nonzero("schedule.batch_size", self.batch_size)?;
        positive("schedule.lr", self.lr)?;
        // No upper bound: a diverging lr is a result (tests force one with 1e12), but the update
        // runs in float32.
        fits_f32("schedule.lr", self.lr)?;
        // 0.99999999999 is below 1 as f64 but exactly 1 in the float32 update: no decay at all.
        let m = self.momentum;
        if !((0.0..1.0).contains(&m) && (m as f32) < 1.0) {
            bail!("schedule.momentum must lie in [0, 1) (also in float32), got {m}");
        }
        fits_f32("schedule.momentum", m)?;
        non_negative_f32("schedule.weight_decay", self.weight_decay)?;
        non_negative_f32("schedule.weight_decay_norm", self.weight_decay_norm)?;
        if !(self.warmup_factor > 0.0 && self.warmup_factor <= 1.0) {
            bail!(
                "schedule.warmup_factor must lie in (0, 1], got {}",
                self.warmup_factor
            );
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            bail!(
                "schedule.steps must be strictly increasing, got {:?}",
                self.steps
            );
        }
        // A step schedule lowers the lr (detectron2: 0.1); above 1 it would raise it at each step.
        let decay_ok = self.decay > 0.0 && self.decay <= 1.0;
        require("schedule.decay", self.decay, decay_ok, "lie in (0, 1]")
    }
}

impl DataConfig {
    pub(super) fn validate(&self) -> Result<()> {
        if self.source.is_empty() {
            bail!("data.source must be 'builtin' or a path to a COCO JSON file");
        }
        let stride = 1usize << 5;
        if self.input_size == 0 || !self.input_size.is_multiple_of(stride) {
            bail!(
                "data.input_size must be a positive multiple of {stride} (the C5 stride), got {}",
                self.input_size
            );
        }
        // The loader's limit (`data::loader`); `random` data would allocate before it is checked.
        if self.input_size > 8192 {
            bail!(
                "data.input_size must be at most 8192, got {}",
                self.input_size
            );
        }
        self.validate_resize()
    }

    /// The paper's resize: shorter side `min_size`, longer side capped at `max_size`.
    fn validate_resize(&self) -> Result<()> {
        let (min, max) = (self.min_size, self.max_size);
        if min > 0 && !(32..=8192).contains(&min) {
            bail!("data.min_size must be 0 (the square input_size path) or between 32 and 8192, got {min}");
        }
        if max > 0 {
            if min == 0 {
                bail!("data.max_size = {max} needs data.min_size (the cap applies to the paper's resize only)");
            }
            if !(min..=8192).contains(&max) {
                bail!("data.max_size must lie between data.min_size ({min}) and 8192, got {max}");
            }
        }
        Ok(())
    }
}

fn positive(key: &str, v: f64) -> Result<()> {
    if !(v > 0.0 && v.is_finite()) {
        bail!("{key} must be a positive number, got {v}");
    }
    Ok(())
}

/// A finite value >= 0 that is used in float32.
fn non_negative_f32(key: &str, v: f64) -> Result<()> {
    if !(v >= 0.0 && v.is_finite()) {
        bail!("{key} must be >= 0, got {v}");
    }
    fits_f32(key, v)
}

/// `ok` says whether `v` satisfies the rule `what` (e.g. "lie in (0, 1]").
fn require(key: &str, v: f64, ok: bool, what: &str) -> Result<()> {
    if !ok {
        bail!("{key} must {what}, got {v:?}");
    }
    Ok(())
}

/// A value used in float32 must stay finite there, and a nonzero one must not round to 0.
fn fits_f32(key: &str, v: f64) -> Result<()> {
    let x = v as f32;
    if !x.is_finite() || (x == 0.0) != (v == 0.0) {
        bail!("{key} = {v:?} is outside the float32 range it is used in (it would become {x:?})");
    }
    Ok(())
}

fn nonzero(key: &str, v: usize) -> Result<()> {
    if v == 0 {
        bail!("{key} must be at least 1, got 0");
    }
    Ok(())
}
