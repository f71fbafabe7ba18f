//! `synth`: writes synthetic radiographs to a folder and prints each file's size.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use rayon::prelude::*;
use rfo_image::synth;

/// Writes `img-0001.png`, `img-0002.png`, ... made from the sample radiographs (or drawn from
/// scratch without samples or with --scratch), alternating 4096 x 4096 and 4000 x 5000.
#[derive(Debug, Parser)]
struct Args {
    /// Folder to write to; created when missing.
    #[arg(long)]
    out: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 4)]
    count: usize,
    /// Seed of the first image's noise; image i uses seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Draw every image from scratch, ignoring the samples.
    #[arg(long)]
    scratch: bool,
    /// Standard deviation of the added noise, in 12-bit sample values.
    #[arg(long, default_value_t = synth::DEFAULT_NOISE_SIGMA)]
    noise_sigma: f32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sources = if args.scratch {
        Vec::new()
    } else {
        rfo_bench::synth_sources(&rfo_bench::read_samples()?)?
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let started = Instant::now();
    let paths: Vec<PathBuf> = (0..args.count)
        .into_par_iter()
        .map(|index| {
            let spec = synth::SynthSpec {
                noise_sigma: args.noise_sigma,
                ..synth::set_spec(index, &sources, args.seed)
            };
            let path = args.out.join(synth::set_file_name(index));
            let bytes = synth::generate(&spec)?;
            std::fs::write(&path, bytes)
                .with_context(|| format!("failed to write {}", path.display()))?;
            Ok(path)
        })
        .collect::<anyhow::Result<_>>()?;
    for path in &paths {
        let size = std::fs::metadata(path)
            .with_context(|| format!("failed to read {}", path.display()))?
            .len();
        println!("{}\t{size}", path.display());
    }
    eprintln!(
        "wrote {} images from {} sources in {:.1} s",
        paths.len(),
        sources.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
