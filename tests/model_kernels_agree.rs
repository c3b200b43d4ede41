//! The fast CPU kernels and candle's own give the same loss and the same gradient for every
//! parameter of the default model on a real batch of the built-in benchmark, through the real
//! objective (targets, focal loss, smooth L1). Kept in its own test binary: the kernel switch is
//! process-wide.

use candle_core::{Device, Tensor};
use fl_lab::config::Config;
use fl_lab::data::Split;
use fl_lab::model::RetinaNet;
use fl_lab::train::objective::{compute, Normalizer};
use fl_lab::train::targets::TargetBuilder;
use fl_lab::train::GtBoxes;

fn loss_and_grads(
    model: &RetinaNet,
    cfg: &Config,
    images: &Tensor,
    gt: &[GtBoxes],
) -> (f32, Vec<(String, Vec<f32>)>) {
    let (_, _, h, w) = images.dims4().unwrap();
    let mut builder = TargetBuilder::new(&cfg.anchors, &cfg.matcher);
    let tg = builder.build(gt, h, w);
    let out = model.forward(images, true).unwrap();
    let mut norm = Normalizer::new(cfg.loss.normalizer, cfg.loss.ema_momentum);
    let terms = compute(&out, &tg, &builder, cfg, &mut norm).unwrap();
    let grads = terms.total.backward().unwrap();
    let named = model
        .store
        .named_vars()
        .into_iter()
        .map(|(name, var)| {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            (name, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    (terms.total.to_scalar::<f32>().unwrap(), named)
}

#[test]
fn fast_kernels_match_candle_on_the_default_model() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/cpu.toml");
    let cfg = Config::load(std::path::Path::new(path), &[]).unwrap();
    let ds = fl_lab::train::dataset_source::open_dataset(&cfg, Split::Val, true).unwrap();
    let batch = ds
        .batch(&[0, 1, 2], &[false, true, false], &Device::Cpu)
        .unwrap();
    let gt: Vec<GtBoxes> = batch.gt.iter().map(GtBoxes::from).collect();
    let model = RetinaNet::new(&cfg, &Device::Cpu).unwrap();
    let (fast_loss, fast) = loss_and_grads(&model, &cfg, &batch.images, &gt);
    fl_lab::ops::use_candle_kernels_only(true);
    let (ref_loss, reference) = loss_and_grads(&model, &cfg, &batch.images, &gt);
    fl_lab::ops::use_candle_kernels_only(false);
    assert!(
        (fast_loss - ref_loss).abs() <= 1e-4 * ref_loss.abs(),
        "loss {fast_loss} vs {ref_loss}"
    );
    for ((name, a), (_, b)) in fast.iter().zip(&reference) {
        let diff: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
        eprintln!(
            "{name}: |g| {scale:.3e} rel diff {:.2e}",
            diff / scale.max(1e-30)
        );
        assert!(
            diff <= 1e-3 * scale + 1e-9,
            "{name}: gradient differs by {diff:.3e} (norm {scale:.3e})"
        );
    }
}
