//! `ceiling`: images per second of the worker's CPU path alone, on the synthetic set.

use clap::Parser;

/// Runs decode, window, detect, overlay, encode and preview over the synthetic radiographs
/// held in memory, one image per thread at a time, and prints images per second. Run it
/// while the local services are idle.
#[derive(Debug, Parser)]
struct Args {
    /// Number of synthetic radiographs (generated once, then cached under target/).
    #[arg(long, default_value_t = 24)]
    count: usize,
    /// Noise seed of the synthetic set; the load harness uses 1 too.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads of the pool; 0 means one per core, as in rfo-worker.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let paths = rfo_bench::image_set(args.count, args.seed)?;
    let report = rfo_bench::ceiling::measure(&paths, threads)?;
    rfo_bench::ceiling::print(&report);
    Ok(())
}
