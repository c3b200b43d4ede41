//! Loader throughput: images/s for decode + resize + normalise + batch (batch 8, 2 rayon threads),
//! from PNG files (no cache) and from the in-memory cache the built-in benchmark uses.

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fl_lab::data::generate::generate_shapes;
use fl_lab::data::loader::{CachePolicy, Dataset, LoaderConfig};
use fl_lab::data::shapes::ShapesConfig;
use fl_lab::data::DataSource;

const BATCH: usize = 8;

fn bench_loader(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("thread pool");
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("loader");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    // 128 px canvases load without resizing; 192 px canvases are resized to the 128 px input.
    for canvas in [128usize, 192] {
        let dir = tmp.path().join(format!("s{canvas}"));
        let cfg = ShapesConfig {
            size: canvas,
            ..ShapesConfig::default()
        };
        pool.install(|| generate_shapes(&dir, &cfg, 0, 64, 1, true))
            .expect("generate");
        let src = DataSource {
            json: dir.join("train.json"),
            images: dir.join("images"),
        };
        for cache in [CachePolicy::Never, CachePolicy::Always] {
            let ds = pool
                .install(|| {
                    Dataset::open(
                        &src,
                        LoaderConfig {
                            input_size: 128,
                            shorter_side: None,
                            hflip: true,
                            cache,
                        },
                    )
                })
                .expect("open");
            let name = format!(
                "{}px_to_128_{}",
                canvas,
                if cache == CachePolicy::Never {
                    "decode"
                } else {
                    "cached"
                }
            );
            let dev = Device::Cpu;
            let mut epoch = 0u64;
            group.bench_function(name, |b| {
                b.iter(|| {
                    pool.install(|| {
                        let (order, flips) = ds.epoch_plan(1, epoch, true);
                        epoch += 1;
                        ds.batch(&order[..BATCH], &flips[..BATCH], &dev)
                            .expect("batch")
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_loader);
criterion_main!(benches);
