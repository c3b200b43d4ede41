//! Experiment configuration: serde structs for the model, anchors, matcher, loss, schedule and data,
//! loaded from TOML presets (`experiments/*.toml`) with `--set key.sub=value` overrides, validated
//! with errors that name the offending key, and hashed for provenance.
//!
//! Every field has a default, so a preset only names what it changes. The defaults describe a small
//! CPU model, not the paper's: the loss (gamma 2, alpha .25), anchors, IoU thresholds, head depth,
//! prior init and SGD hyper-parameters are the paper's values, but the model size (`backbone`,
//! `width`, `fpn_channels`), input size, batch size and schedule length are fl-lab's, and some
//! details come from Detectron or detectron2 (`matcher.low_quality`, `loss.box_beta`, the warm-up).
//! docs/paper.md §9 lists every default with its source. Unknown keys and wrong types are rejected
//! before deserialization by comparing the user's table with the serialized defaults, which gives
//! messages such as "unknown key `model.widht`" instead of serde's position-only errors.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

mod validate;

/// The whole resolved configuration of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seeds parameter init, data order and augmentation.
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub model: ModelConfig,
    pub anchors: AnchorsConfig,
    pub matcher: MatcherConfig,
    pub loss: LossConfig,
    pub schedule: ScheduleConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            device: "cpu".into(),
            model: ModelConfig::default(),
            anchors: AnchorsConfig::default(),
            matcher: MatcherConfig::default(),
            loss: LossConfig::default(),
            schedule: ScheduleConfig::default(),
            data: DataConfig::default(),
            train: TrainConfig::default(),
        }
    }
}

/// Residual block type of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convs (ResNet-18/34).
    Basic,
    /// 1x1 - 3x3 - 1x1 with 4x expansion (ResNet-50+).
    Bottleneck,
}

/// Normalization layer of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// GroupNorm: independent of batch size, the default for training from scratch on small batches.
    Gn,
    /// BatchNorm: batch statistics in training, running statistics in evaluation.
    Bn,
    /// Frozen BatchNorm (detectron2's `FrozenBatchNorm2d`, eps 1e-5): the pretrained running
    /// statistics and affine parameters applied as a fixed per-channel scale and shift, in training
    /// and evaluation alike, with no gradient. Needs `model.pretrained`.
    FrozenBn,
}

/// The backbone's stem and the stride of its first stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StemKind {
    /// One 3x3 stride-2 conv and no pooling; every stage starts with a stride-2 block (candle's
    /// pooling backward only supports kernel == stride, so this stem trains everywhere).
    #[default]
    Conv3x3,
    /// ResNet's own stem, as torchvision and timm build it: a 7x7 stride-2 conv (64 channels at
    /// width 1), ReLU, a 3x3 stride-2 max-pool with padding 1; the first stage has stride 1.
    /// ImageNet weights (`model.pretrained`) need it.
    Resnet,
}

impl StemKind {
    fn is_default(&self) -> bool {
        *self == StemKind::default()
    }
}

/// What the convolutions' multiplications run in on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvProducts {
    /// f32 throughout (the default).
    #[default]
    F32,
    /// Each operand of the shifted-product convolutions (3x3 layers on maps 8 wide and more)
    /// rounded to bfloat16, the products summed in f32 on AMX tiles, as PyTorch's CPU autocast
    /// runs convolutions; everything else stays f32. Needs a CPU with AMX-BF16.
    Bf16,
}

impl ConvProducts {
    fn is_default(&self) -> bool {
        *self == ConvProducts::default()
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// RetinaNet architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Named ResNet-style variant: `r10` (1,1,1,1 basic), `r18` (2,2,2,2 basic), `r34` (3,4,6,3 basic),
    /// `r50` (3,4,6,3 bottleneck) or `custom` (then `block` and `depths` decide).
    pub backbone: String,
    /// Block type for `backbone = "custom"`.
    pub block: BlockKind,
    /// Blocks per stage (four stages, strides 4, 8, 16, 32) for `backbone = "custom"`.
    pub depths: Vec<usize>,
    /// Multiplier on ResNet's stage widths 64, 128, 256, 512 (and the stem's 64).
    pub width: f64,
    pub norm: NormKind,
    /// The stem: `conv3x3` (fl-lab's, the default) or `resnet` (torchvision's and timm's; needed by
    /// `pretrained`). Not written to the resolved config when default, so that the hashes of
    /// configs written before it existed do not change.
    #[serde(skip_serializing_if = "StemKind::is_default")]
    pub stem: StemKind,
    /// A safetensors file holding an ImageNet ResNet-18/34/50 state dict under torchvision's (and
    /// timm's) names (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`,
    /// `layer1.0.downsample.0.weight`, ...), loaded into the backbone before training starts; `fc.*`
    /// and `*.num_batches_tracked` are ignored. "" (the default) trains from the seeded init. Needs
    /// `backbone` r18, r34 or r50, `width = 1`, `stem = "resnet"` and `norm` bn or frozen_bn.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pretrained: String,
    /// Freeze the stem (1) or the stem and the first `freeze_at - 1` stages (2..=5) of the backbone:
    /// their convs and norms are fixed (norms as frozen BN) and get no gradient, as detectron2's
    /// `MODEL.BACKBONE.FREEZE_AT` (2 in its RetinaNet configs: the stem and res2). 0 (the default)
    /// freezes nothing. Needs `pretrained`.
    #[serde(skip_serializing_if = "is_zero")]
    pub freeze_at: usize,
    /// GroupNorm groups; a layer with fewer or indivisible channels uses gcd(groups, channels).
    pub gn_groups: usize,
    /// FPN output channels (paper: 256).
    pub fpn_channels: usize,
    /// 3x3 conv + ReLU layers in each subnet before the predictor (paper: 4).
    pub head_convs: usize,
    /// Subnet width; 0 means `fpn_channels` (paper: C = 256 = FPN width).
    pub head_channels: usize,
    /// GroupNorm after each subnet conv (detectron2's `RETINANET.NORM = "GN"`, torchvision's v2
    /// head), shared across levels; the paper's subnets have none. With narrow heads the paper's
    /// N(0, 0.01) init shrinks the signal at every layer and training stalls for hundreds of steps.
    pub head_gn: bool,
    /// Number of object classes K (no background class: sigmoid outputs).
    pub num_classes: usize,
    /// Initialize the class predictor's bias to -log((1-pi)/pi) (paper §3.3); false gives bias 0.
    pub prior_init: bool,
    /// The prior pi.
    pub prior_prob: f64,
    /// `f32` (the default) or `bf16`: see `ConvProducts`. Not written to the resolved config when
    /// default, so that the hashes of configs written before it existed do not change.
    #[serde(skip_serializing_if = "ConvProducts::is_default")]
    pub conv_products: ConvProducts,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            backbone: "r18".into(),
            block: BlockKind::Basic,
            depths: vec![2, 2, 2, 2],
            width: 0.25,
            norm: NormKind::Gn,
            stem: StemKind::Conv3x3,
            pretrained: String::new(),
            freeze_at: 0,
            gn_groups: 8,
            fpn_channels: 64,
            head_convs: 4,
            head_channels: 0,
            head_gn: false,
            num_classes: 10,
            prior_init: true,
            prior_prob: 0.01,
            conv_products: ConvProducts::F32,
        }
    }
}

impl ModelConfig {
    /// The block type and per-stage depths after resolving the named variant.
    pub fn resolved_blocks(&self) -> Result<(BlockKind, Vec<usize>)> {
        Ok(match self.backbone.as_str() {
            "r10" => (BlockKind::Basic, vec![1, 1, 1, 1]),
            "r18" => (BlockKind::Basic, vec![2, 2, 2, 2]),
            "r34" => (BlockKind::Basic, vec![3, 4, 6, 3]),
            "r50" => (BlockKind::Bottleneck, vec![3, 4, 6, 3]),
            "custom" => (self.block, self.depths.clone()),
            other => bail!(
                "model.backbone: unknown variant '{other}'; expected r10, r18, r34, r50 or custom"
            ),
        })
    }

    /// Channels of the stem and of the four stages' outputs.
    pub fn stage_channels(&self) -> Result<(usize, [usize; 4])> {
        let (block, _) = self.resolved_blocks()?;
        let scale = |c: f64| ((c * self.width).round() as usize).max(4);
        let expansion = if block == BlockKind::Bottleneck { 4 } else { 1 };
        let mut out = [0; 4];
        for (i, o) in out.iter_mut().enumerate() {
            *o = scale(64.0 * (1 << i) as f64) * expansion;
        }
        Ok((scale(64.0), out))
    }

    pub fn head_width(&self) -> usize {
        if self.head_channels == 0 {
            self.fpn_channels
        } else {
            self.head_channels
        }
    }
}

/// Anchor layout (paper §4, Detectron's `ANCHOR_SCALE`, `SCALES_PER_OCTAVE`, `ASPECT_RATIOS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnchorsConfig {
    /// Lowest pyramid level (stride 2^min_level); the paper uses P3.
    pub min_level: usize,
    /// Highest pyramid level; the paper uses P7.
    pub max_level: usize,
    /// Anchor size = stride x anchor_scale x octave scale.
    pub anchor_scale: f64,
    pub scales_per_octave: usize,
    /// Height / width ratios.
    pub aspect_ratios: Vec<f64>,
}

impl Default for AnchorsConfig {
    fn default() -> Self {
        AnchorsConfig {
            min_level: 3,
            max_level: 7,
            anchor_scale: 4.0,
            scales_per_octave: 3,
            aspect_ratios: vec![0.5, 1.0, 2.0],
        }
    }
}

impl AnchorsConfig {
    /// Anchors per location, A.
    pub fn per_location(&self) -> usize {
        self.scales_per_octave * self.aspect_ratios.len()
    }
}

/// Which anchors are forced positive when their best IoU is below `pos_iou`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowQualityKind {
    /// The paper: no extra positives.
    None,
    /// Detectron: the best anchor for each box, only if its IoU is at least `neg_iou`.
    Detectron,
    /// detectron2 / torchvision: the best anchor(s) for each box at any IoU.
    Any,
}

/// Anchor-to-box assignment (paper §4: IoU >= 0.5 object, < 0.4 background, between ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatcherConfig {
    /// Anchors with best IoU >= pos_iou are foreground.
    pub pos_iou: f64,
    /// Anchors with best IoU < neg_iou are background; the band between is ignored.
    pub neg_iou: f64,
    pub low_quality: LowQualityKind,
}

impl Default for MatcherConfig {
    fn default() -> Self {
        MatcherConfig {
            pos_iou: 0.5,
            neg_iou: 0.4,
            low_quality: LowQualityKind::Detectron,
        }
    }
}

/// Classification loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// alpha-balanced focal loss (alpha, gamma).
    Focal,
    /// alpha-balanced cross entropy (alpha; gamma ignored).
    Ce,
    /// FL* of Appendix A (gamma, beta; alpha-balanced).
    FlStar,
    /// Cross entropy on the anchors selected by online hard example mining.
    Ohem,
}

/// How the summed losses are normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizerKind {
    /// max(1, positive anchors in the minibatch): the paper.
    Positives,
    /// detectron2: an exponential moving average of the positive count.
    Ema,
}

/// Loss settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub kind: LossKind,
    pub gamma: f64,
    pub alpha: f64,
    /// FL* shift beta.
    pub beta: f64,
    /// OHEM: anchors kept per image.
    pub ohem_batch: usize,
    /// OHEM: IoU threshold of the NMS over scored anchors.
    pub ohem_nms: f64,
    /// OHEM: negatives per positive (3 for SSD's 1:3); 0 means no ratio constraint.
    pub ohem_ratio: usize,
    /// Smooth L1 transition point (Detectron: 0.11); 0 gives L1.
    pub box_beta: f64,
    /// Weight of the box loss in the total.
    pub box_weight: f64,
    pub normalizer: NormalizerKind,
    /// EMA momentum of the `ema` normalizer (detectron2: 0.9).
    pub ema_momentum: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            kind: LossKind::Focal,
            gamma: 2.0,
            alpha: 0.25,
            beta: 1.0,
            ohem_batch: 128,
            ohem_nms: 0.7,
            ohem_ratio: 0,
            box_beta: 0.11,
            box_weight: 1.0,
            normalizer: NormalizerKind::Positives,
            ema_momentum: 0.9,
        }
    }
}

/// SGD and learning-rate schedule (detectron2 semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub iterations: usize,
    /// Images per minibatch.
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Weight decay of normalization scales and shifts (detectron2: 0).
    pub weight_decay_norm: f64,
    /// Linear warm-up length in iterations (0 disables).
    pub warmup_iters: usize,
    /// The warm-up starts at lr x warmup_factor.
    pub warmup_factor: f64,
    /// Iterations at which the lr is multiplied by `decay`.
    pub steps: Vec<usize>,
    pub decay: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            iterations: 2000,
            batch_size: 8,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            weight_decay_norm: 0.0,
            warmup_iters: 100,
            warmup_factor: 1.0 / 3.0,
            steps: vec![1500, 1800],
            decay: 0.1,
        }
    }
}

/// Training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `builtin` (the generated shapes benchmark), a COCO-format annotation JSON (or a directory
    /// holding `train.json`), or `random` (noise images with random boxes: for timing only).
    pub source: String,
    /// Image directory for a COCO source ("" = the loader's default for that JSON).
    pub images: String,
    /// Square input side in pixels; a multiple of 32.
    pub input_size: usize,
    /// The paper's resize for COCO-scale data (Detectron's `SCALES` and `MAX_SIZE`): each image is
    /// scaled so that its shorter side is `min_size` pixels (600 in the paper's Table 1), or less
    /// when its longer side would then exceed `max_size`, and the images of a batch are padded
    /// bottom/right to a common size divisible by 2^`anchors.max_level` (128 with P7). 0 (the
    /// default) keeps the square `input_size` path. Not written when 0 (config hashes stay).
    #[serde(skip_serializing_if = "is_zero")]
    pub min_size: usize,
    /// The cap on the longer side with `min_size` (1000 with 600 in the paper); 0: none but the
    /// loader's largest side, 8192.
    #[serde(skip_serializing_if = "is_zero")]
    pub max_size: usize,
    /// Train on only the first this many images (0: all), e.g. for smoke runs.
    pub max_images: usize,
    /// Random horizontal flip (the paper's only augmentation).
    pub flip: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: "builtin".into(),
            images: String::new(),
            input_size: 128,
            min_size: 0,
            max_size: 0,
            max_images: 0,
            flip: true,
        }
    }
}

/// Bookkeeping of the training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Write a resumable checkpoint every this many iterations (0: only at the end).
    pub checkpoint_every: usize,
    /// Append a metrics row every this many iterations.
    pub log_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            checkpoint_every: 500,
            log_every: 1,
        }
    }
}

impl Config {
    /// Loads a preset file and applies `key.sub=value` overrides, then validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml_str(&text, overrides)
            .with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses TOML text, applies overrides and validates.
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Config> {
        let mut table: toml::Table = text.parse().context("TOML syntax error")?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        Self::from_table(table)
    }

    /// Builds a config from a parsed table: schema check, deserialization, validation.
    pub fn from_table(table: toml::Table) -> Result<Config> {
        let schema = Self::schema()?;
        check_schema(&table, &schema, "")?;
        // Types were checked above; what serde can still reject is an enum value. Deserialize
        // section by section first so the message names the section.
        for (key, value) in &table {
            let section = key.as_str();
            let r = match section {
                "model" => value.clone().try_into::<ModelConfig>().map(|_| ()),
                "anchors" => value.clone().try_into::<AnchorsConfig>().map(|_| ()),
                "matcher" => value.clone().try_into::<MatcherConfig>().map(|_| ()),
                "loss" => value.clone().try_into::<LossConfig>().map(|_| ()),
                "schedule" => value.clone().try_into::<ScheduleConfig>().map(|_| ()),
                "data" => value.clone().try_into::<DataConfig>().map(|_| ()),
                "train" => value.clone().try_into::<TrainConfig>().map(|_| ()),
                _ => Ok(()),
            };
            r.with_context(|| format!("invalid value in section [{section}]"))?;
        }
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .context("config does not match its schema")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every key a config file may hold, with a value of its type: the serialized defaults plus
    /// the fields that are left out of the resolved TOML while they hold their default (so that
    /// the hashes of configs written before those fields existed stay the same).
    fn schema() -> Result<toml::Table> {
        let mut c = Config::default();
        c.model.stem = StemKind::Resnet;
        c.model.pretrained = "resnet50.safetensors".into();
        c.model.freeze_at = 2;
        c.model.conv_products = ConvProducts::Bf16;
        c.data.min_size = 600;
        c.data.max_size = 1000;
        toml::Table::try_from(c).context("serializing the schema")
    }

    /// The fields left out of the resolved TOML while they hold their default, as `(key, default
    /// value as TOML text)`: what tables of many configs show for a config that does not set them.
    pub const OMITTED_AT_DEFAULT: [(&'static str, &'static str); 6] = [
        ("model.stem", "conv3x3"),
        ("model.conv_products", "f32"),
        ("model.pretrained", ""),
        ("model.freeze_at", "0"),
        ("data.min_size", "0"),
        ("data.max_size", "0"),
    ];

    /// The resolved configuration as TOML (every field, declaration order, except the ones that
    /// are left out while they hold their default: `model.stem`, `model.pretrained`,
    /// `model.freeze_at`, `model.conv_products`, `data.min_size`, `data.max_size`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("serializing config")
    }

    /// A stable 16-hex-digit hash of the resolved config (SHA-256 of its TOML).
    pub fn hash(&self) -> Result<String> {
        let digest = Sha256::digest(self.to_toml()?.as_bytes());
        Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// What the padded input's height and width are multiples of with the paper's resize
    /// (`data.min_size`): the stride of the coarsest pyramid level, 2^`anchors.max_level` (128 with
    /// P7, as Detectron's RetinaNet configs set `FPN.COARSEST_STRIDE`), so that every level's
    /// feature map halves its parent's exactly (docs/paper.md §8.1).
    pub fn size_divisibility(&self) -> usize {
        1 << self.anchors.max_level
    }

    /// Checks values that types alone cannot; each error names its key and value (section by
    /// section, in `validate.rs`).
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.anchors.validate()?;
        self.matcher.validate()?;
        self.loss.validate()?;
        self.schedule.validate()?;
        self.data.validate()?;
        if self.train.log_every == 0 {
            bail!("train.log_every must be at least 1, got 0");
        }
        if self.device.trim().is_empty() {
            bail!("device must be cpu, cuda or cuda:N");
        }
        if self.model.conv_products == ConvProducts::Bf16 && !crate::device::is_cpu(&self.device) {
            bail!(
                "model.conv_products = \"bf16\" runs on the CPU's AMX tiles; device is {:?}",
                self.device
            );
        }
        Ok(())
    }
}

/// Applies one `key.sub=value` override. The value is parsed as TOML (`1e-3`, `true`, `[1, 2]`,
/// `"x"`); if that fails it is taken as a bare string, so `loss.kind=focal` works unquoted.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .with_context(|| format!("--set '{spec}': expected key.sub=value"))?;
    let key = key.trim();
    let raw = raw.trim();
    if key.is_empty() || key.split('.').any(|p| p.is_empty()) {
        bail!("--set '{spec}': empty key");
    }
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for (i, p) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => bail!(
                "--set {key}: `{}` is a value, not a table",
                parts[..=i].join(".")
            ),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Types agree, except that an integer may stand for a float (`lr = 1`).
fn compatible(user: &toml::Value, schema: &toml::Value) -> bool {
    use toml::Value as V;
    matches!(
        (user, schema),
        (V::String(_), V::String(_))
            | (V::Integer(_), V::Integer(_))
            | (V::Integer(_), V::Float(_))
            | (V::Float(_), V::Float(_))
            | (V::Boolean(_), V::Boolean(_))
            | (V::Array(_), V::Array(_))
            | (V::Table(_), V::Table(_))
    )
}

/// Rejects keys the schema does not have and values of the wrong type, naming the full key.
fn check_schema(user: &toml::Table, schema: &toml::Table, prefix: &str) -> Result<()> {
    for (k, v) in user {
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(s) = schema.get(k) else {
            let known: Vec<&str> = schema.keys().map(|s| s.as_str()).collect();
            bail!("unknown key `{full}` (known here: {})", known.join(", "));
        };
        if !compatible(v, s) {
            bail!(
                "`{full}` must be {}, got {} ({v})",
                type_name(s),
                type_name(v)
            );
        }
        match (v, s) {
            (toml::Value::Table(ut), toml::Value::Table(st)) => check_schema(ut, st, &full)?,
            (toml::Value::Array(ua), toml::Value::Array(sa)) => {
                if let Some(s0) = sa.first() {
                    for (i, e) in ua.iter().enumerate() {
                        if !compatible(e, s0) {
                            bail!(
                                "`{full}[{i}]` must be {}, got {} ({e})",
                                type_name(s0),
                                type_name(e)
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Config::from_toml_str(text, &sets).unwrap_err())
    }

    #[test]
    fn defaults_validate_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        let back = Config::from_toml_str(&c.to_toml().unwrap(), &[]).unwrap();
        assert_eq!(c, back);
        assert_eq!(c.hash().unwrap(), back.hash().unwrap());
        assert_eq!(c.hash().unwrap().len(), 16);
    }

    #[test]
    fn overrides_parse_values_as_toml() {
        let sets = [
            "schedule.lr=1e-3",
            "loss.kind=fl_star",
            "anchors.aspect_ratios=[1.0]",
            "model.prior_init=false",
            "schedule.lr=2", // an integer is accepted where a float is expected
        ];
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let c = Config::from_toml_str("seed = 3\n[model]\nwidth = 0.5\n", &sets).unwrap();
        assert_eq!(c.schedule.lr, 2.0);
        assert_eq!(c.loss.kind, LossKind::FlStar);
        assert_eq!(c.anchors.aspect_ratios, vec![1.0]);
        assert!(!c.model.prior_init);
        assert_eq!(c.model.width, 0.5);
        assert_eq!(c.seed, 3);
        assert_ne!(c.hash().unwrap(), Config::default().hash().unwrap());
    }

    #[test]
    fn fields_at_their_defaults_leave_existing_hashes_alone() {
        // The committed plots/short-schedule/anchors/results.csv row "1 scale, 1 ratio", seed 0: the
        // cpu preset at its earlier length with the variant's overrides, trained before the optional
        // fields existed.
        let cpu = include_str!("../../experiments/cpu.toml");
        let sets: Vec<String> = [
            "schedule.iterations=1200",
            "schedule.steps=[900, 1080]",
            "schedule.warmup_iters=100",
            "anchors.scales_per_octave=1",
            "anchors.aspect_ratios=[1.0]",
            "seed=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = Config::from_toml_str(cpu, &sets).unwrap();
        assert_eq!(c.hash().unwrap(), "9d4ffc78155a5f2c");
        let text = Config::default().to_toml().unwrap();
        for key in [
            "stem",
            "pretrained",
            "freeze_at",
            "conv_products",
            "min_size",
            "max_size",
        ] {
            assert!(!text.contains(key), "{key} written at its default:\n{text}");
        }
        // OMITTED_AT_DEFAULT lists exactly the schema's keys that the defaults leave out.
        let flat = |t: &toml::Table| -> Vec<String> {
            t.iter()
                .flat_map(|(s, v)| {
                    v.as_table()
                        .map(|t| t.keys().map(|k| format!("{s}.{k}")).collect::<Vec<_>>())
                        .unwrap_or_else(|| vec![s.clone()])
                })
                .collect()
        };
        let written = flat(&toml::Table::try_from(Config::default()).unwrap());
        let mut omitted: Vec<String> = flat(&Config::schema().unwrap())
            .into_iter()
            .filter(|k| !written.contains(k))
            .collect();
        omitted.sort();
        let mut listed: Vec<String> = Config::OMITTED_AT_DEFAULT
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        listed.sort();
        assert_eq!(omitted, listed);
        // Set, each is written, read back, and changes the hash.
        let base = Config::default().hash().unwrap();
        for set in [
            vec!["model.stem=resnet"],
            vec!["data.min_size=600"],
            vec!["data.min_size=600", "data.max_size=1000"],
            vec!["model.conv_products=bf16"],
            vec![
                "model.backbone=r50",
                "model.width=1",
                "model.stem=resnet",
                "model.norm=frozen_bn",
                "model.pretrained=w.safetensors",
                "model.freeze_at=2",
            ],
        ] {
            let sets: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            let c = Config::from_toml_str("", &sets).unwrap();
            let back = Config::from_toml_str(&c.to_toml().unwrap(), &[]).unwrap();
            assert_eq!(c, back, "{set:?}");
            assert_ne!(c.hash().unwrap(), base, "{set:?}");
        }
    }

    #[test]
    fn pretrained_frozen_and_resize_settings_are_checked() {
        let ok = [
            "model.backbone=r18",
            "model.width=1",
            "model.stem=resnet",
            "model.norm=frozen_bn",
            "model.pretrained=w.safetensors",
        ];
        let with = |extra: &[&str]| -> String {
            let mut v: Vec<&str> = ok.to_vec();
            v.extend_from_slice(extra);
            err("", &v)
        };
        assert!(with(&["model.backbone=r10"]).contains("model.backbone"));
        assert!(with(&["model.width=0.5"]).contains("model.width"));
        assert!(with(&["model.stem=conv3x3"]).contains("model.stem"));
        assert!(with(&["model.norm=gn"]).contains("model.norm"));
        assert!(with(&["model.freeze_at=6"]).contains("model.freeze_at"));
        assert!(err("", &["model.norm=frozen_bn"]).contains("needs model.pretrained"));
        assert!(err("", &["model.freeze_at=2"]).contains("needs model.pretrained"));
        assert!(err("", &["model.stem=vgg"]).contains("vgg"));
        assert!(err("", &["data.min_size=16"]).contains("data.min_size"));
        assert!(err("", &["data.max_size=1000"]).contains("needs data.min_size"));
        assert!(err("", &["data.min_size=600", "data.max_size=500"]).contains("data.max_size"));
        let mut sets: Vec<String> = ok.iter().map(|s| s.to_string()).collect();
        sets.push("model.freeze_at=2".into());
        Config::from_toml_str("", &sets).unwrap();
    }

    #[test]
    fn bad_configs_name_the_key() {
        assert!(err("[model]\nwidht = 0.5\n", &[]).contains("model.widht"));
        assert!(err("", &["schedule.foo=1"]).contains("schedule.foo"));
        assert!(err("[schedule]\nlr = \"fast\"\n", &[]).contains("schedule.lr"));
        assert!(err("", &["schedule.lr=-0.1"]).contains("schedule.lr"));
        assert!(err("", &["anchors.min_level=5", "anchors.max_level=4"])
            .contains("zero pyramid levels"));
        assert!(err("", &["anchors.min_level=6"]).contains("anchors.min_level"));
        assert!(err("", &["loss.kind=hinge"]).contains("hinge"));
        assert!(err("", &["model.backbone=r99"]).contains("model.backbone"));
        assert!(err("", &["data.input_size=100"]).contains("data.input_size"));
        assert!(
            err("", &["model.depths=[1, \"a\"]", "model.backbone=custom"])
                .contains("model.depths[1]")
        );
        assert!(err("seed = ", &[]).contains("TOML"));
        assert!(err("", &["model.width.x=1"]).contains("model.width"));
    }
}
