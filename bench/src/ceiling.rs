//! The ceiling: the worker's own CPU path (decode, window, detect, overlay, encode, preview)
//! over images already in memory, one image per pool thread at a time, with no I/O and no
//! queue. The pipeline's throughput over this figure is its ceiling fraction.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use rayon::prelude::*;
use rfo_image::decode::DecodeLimits;
use rfo_image::detect::RandomDetector;
use rfo_image::overlay::EncodeSettings;
use rfo_worker::process::Processor;
use rfo_worker::stage::StageTimings;

/// Result of one ceiling measurement.
#[derive(Debug, Clone)]
pub struct CeilingReport {
    pub images: usize,
    pub threads: usize,
    pub seconds: f64,
    pub images_per_s: f64,
    pub input_bytes: u64,
    /// Decode and render (window, detect, overlay, encode, preview) times of each image, ms.
    pub decode_ms: Vec<f64>,
    pub render_ms: Vec<f64>,
}

/// Runs the worker's CPU path over `paths` on a rayon pool of `threads` threads and returns
/// images per second over the timed pass.
///
/// The files are read into memory first. A warm-up pass over the first `threads` images
/// faults in the allocator's pages and the code before the timed pass over all images.
pub fn measure(paths: &[PathBuf], threads: usize) -> anyhow::Result<CeilingReport> {
    let images: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| {
            std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|index| format!("ceiling-{index}"))
        .build()
        .context("failed to start the thread pool")?;
    let processor = Processor {
        pool: rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .context("failed to start the processor's thread pool")?,
        limits: DecodeLimits::default(),
        detector: Arc::new(RandomDetector),
        encode: EncodeSettings::default(),
    };
    let failures = AtomicUsize::new(0);
    let run = |batch: &[Vec<u8>]| -> Vec<StageTimings> {
        pool.install(|| {
            batch
                .par_iter()
                // One image per task, so each thread works on at most one image at a time.
                .with_max_len(1)
                .enumerate()
                .map(|(index, bytes)| {
                    let mut timings = StageTimings::default();
                    if processor
                        .render(bytes, index as u128, &mut timings)
                        .is_err()
                    {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    timings
                })
                .collect()
        })
    };

    run(&images[..threads.min(images.len())]);
    let started = Instant::now();
    let timings = run(&images);
    let seconds = started.elapsed().as_secs_f64();
    let failed = failures.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} images failed to render");
    Ok(CeilingReport {
        images: images.len(),
        threads,
        seconds,
        images_per_s: images.len() as f64 / seconds,
        input_bytes: images.iter().map(|bytes| bytes.len() as u64).sum(),
        decode_ms: timings.iter().map(|t| t.decode_ms as f64).collect(),
        render_ms: timings.iter().map(|t| t.render_ms as f64).collect(),
    })
}

/// Prints the report, ending with one `ceiling: images_per_s=...` line that scripts parse.
pub fn print(report: &CeilingReport) {
    let mut decode = report.decode_ms.clone();
    let mut render = report.render_ms.clone();
    let p = |values: &mut Vec<f64>, q| crate::quantile(values, q).unwrap_or(f64::NAN);
    println!(
        "ceiling: decode_ms p50={:.0} p99={:.0}; render_ms p50={:.0} p99={:.0}",
        p(&mut decode, 0.5),
        p(&mut decode, 0.99),
        p(&mut render, 0.5),
        p(&mut render, 0.99)
    );
    println!(
        "ceiling: {} images, {:.1} MB of PNG, {} threads, {:.2} s",
        report.images,
        report.input_bytes as f64 / 1e6,
        report.threads,
        report.seconds
    );
    println!("ceiling: load average {}", crate::load_average());
    println!("ceiling: images_per_s={:.3}", report.images_per_s);
}
