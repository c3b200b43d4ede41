//! Checkpoints: a run interrupted and resumed writes the same metrics as an uninterrupted run, and a
//! run whose loss becomes non-finite stops cleanly as diverged.

mod common;

use candle_core::Device;
use fl_lab::train::trainer::read_metrics;
use fl_lab::train::{train, FixedSource, MetricsRow, TrainOptions};

fn without_time(rows: Vec<MetricsRow>) -> Vec<(usize, f64, f64, f64, usize)> {
    rows.into_iter()
        .map(|r| (r.iteration, r.lr, r.loss_cls, r.loss_box, r.positives))
        .collect()
}

/// Resumes the interrupted run `cut` and trains it to the end: its summary and the options used.
fn resume_to_the_end(
    cfg: &fl_lab::config::Config,
    batch: &fl_lab::train::TrainBatch,
    cut: &TrainOptions,
) -> (fl_lab::train::trainer::Summary, TrainOptions) {
    let resumed = TrainOptions {
        resume: true,
        stop_after: None,
        ..cut.clone()
    };
    let summary = train(cfg, &mut FixedSource(batch.clone()), &Device::Cpu, &resumed).unwrap();
    assert!(summary.finished);
    (summary, resumed)
}

#[test]
fn resume_after_interruption_reproduces_metrics() {
    // BatchNorm and the EMA normalizer put state outside the weights into the checkpoint too.
    let sets = [
        "schedule.iterations=8",
        "schedule.warmup_iters=4",
        "schedule.steps=[6]",
        "train.checkpoint_every=3",
        "loss.normalizer=ema",
        "model.norm=bn",
    ];
    let cfg = common::tiny(&sets);
    let batch = common::two_boxes();
    let dir = tempfile::tempdir().unwrap();
    let full = TrainOptions {
        run_dir: dir.path().join("full"),
        quiet: true,
        ..Default::default()
    };
    let a = train(&cfg, &mut FixedSource(batch.clone()), &Device::Cpu, &full).unwrap();
    assert!(a.finished);

    let cut = TrainOptions {
        run_dir: dir.path().join("cut"),
        quiet: true,
        stop_after: Some(5),
        ..Default::default()
    };
    // Stops after 5 iterations; the last checkpoint is at 3, so iterations 3 and 4 are redone.
    let b = train(&cfg, &mut FixedSource(batch.clone()), &Device::Cpu, &cut).unwrap();
    assert!(!b.finished && b.iterations == 5);
    assert_eq!(
        read_metrics(&cut.run_dir.join("metrics.csv"))
            .unwrap()
            .len(),
        5
    );
    // A second start without --resume refuses to overwrite the run.
    let again = train(&cfg, &mut FixedSource(batch.clone()), &Device::Cpu, &cut);
    assert!(format!("{:#}", again.unwrap_err()).contains("--resume"));
    let (_, resumed) = resume_to_the_end(&cfg, &batch, &cut);

    let ma = without_time(read_metrics(&full.run_dir.join("metrics.csv")).unwrap());
    let mc = without_time(read_metrics(&cut.run_dir.join("metrics.csv")).unwrap());
    assert_eq!(ma.len(), 8);
    assert_eq!(ma, mc);

    // A resumed run must use the same config.
    let other = common::tiny(&["schedule.iterations=9"]);
    let err = train(&other, &mut FixedSource(batch), &Device::Cpu, &resumed).unwrap_err();
    assert!(format!("{err:#}").contains("differs"), "{err:#}");
}

#[test]
fn non_finite_loss_is_recorded_as_divergence() {
    let cfg = common::tiny(&[
        "schedule.iterations=30",
        "schedule.lr=1e12",
        "schedule.warmup_iters=0",
        "loss.kind=ce",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        run_dir: dir.path().join("boom"),
        quiet: true,
        ..Default::default()
    };
    let s = train(
        &cfg,
        &mut FixedSource(common::two_boxes()),
        &Device::Cpu,
        &opts,
    )
    .unwrap();
    assert!(s.diverged && !s.finished, "{s:?}");
    let at = s.diverged_at.unwrap();
    let rows = read_metrics(&opts.run_dir.join("metrics.csv")).unwrap();
    let last = rows.last().unwrap();
    assert_eq!(last.iteration, at);
    assert!(!(last.loss_cls + last.loss_box).is_finite());
    let summary = std::fs::read_to_string(opts.run_dir.join("summary.json")).unwrap();
    assert!(summary.contains("\"diverged\": true"));
}

#[test]
fn every_loss_kind_trains_a_few_steps() {
    for kind in ["focal", "ce", "fl_star", "ohem"] {
        let k = format!("loss.kind={kind}");
        let cfg = common::tiny(&["schedule.iterations=3", &k, "loss.ohem_ratio=3"]);
        let dir = tempfile::tempdir().unwrap();
        let opts = TrainOptions {
            run_dir: dir.path().join(kind),
            quiet: true,
            ..Default::default()
        };
        let s = train(
            &cfg,
            &mut FixedSource(common::two_boxes()),
            &Device::Cpu,
            &opts,
        )
        .unwrap();
        assert!(
            s.finished && s.final_loss_cls.is_finite() && s.final_loss_cls > 0.0,
            "{kind}: {s:?}"
        );
    }
}

/// OHEM 1:3's record of whether its positive quota filled survives an interruption: a run cut at a
/// checkpoint and resumed reports what the uninterrupted run reports, and a quota of one positive
/// (batch 4) fills where one of a thousand (batch 4,000) does not.
#[test]
fn the_ohem_quota_record_survives_a_resume() {
    let batch = common::two_boxes();
    let dir = tempfile::tempdir().unwrap();
    for (ohem_batch, filled) in [(4, true), (4000, false)] {
        let b = format!("loss.ohem_batch={ohem_batch}");
        let sets = [
            "schedule.iterations=6",
            "schedule.warmup_iters=2",
            "schedule.steps=[5]",
            "train.checkpoint_every=2",
            "loss.kind=\"ohem\"",
            "loss.ohem_ratio=3",
            &b,
        ];
        let cfg = common::tiny(&sets);
        let whole = TrainOptions {
            run_dir: dir.path().join(format!("whole-{ohem_batch}")),
            quiet: true,
            ..Default::default()
        };
        let a = train(&cfg, &mut FixedSource(batch.clone()), &Device::Cpu, &whole).unwrap();
        assert_eq!(
            a.ohem_positive_quota_filled,
            Some(filled),
            "batch {ohem_batch}"
        );
        let cut = TrainOptions {
            run_dir: dir.path().join(format!("cut-{ohem_batch}")),
            stop_after: Some(3),
            ..whole.clone()
        };
        train(&cfg, &mut FixedSource(batch.clone()), &Device::Cpu, &cut).unwrap();
        let (c, _) = resume_to_the_end(&cfg, &batch, &cut);
        assert_eq!(
            c.ohem_positive_quota_filled,
            Some(filled),
            "resumed, batch {ohem_batch}"
        );
    }
    // Other losses do not record it.
    let focal = common::tiny(&[
        "schedule.iterations=2",
        "schedule.warmup_iters=1",
        "schedule.steps=[1]",
    ]);
    let opts = TrainOptions {
        run_dir: dir.path().join("focal"),
        quiet: true,
        ..Default::default()
    };
    let f = train(&focal, &mut FixedSource(batch), &Device::Cpu, &opts).unwrap();
    assert_eq!(f.ohem_positive_quota_filled, None);
}
