//! Helpers shared by the benchmarks and the load harness: the sample radiographs, the cached
//! set of large synthetic radiographs, and the percentile arithmetic of the reports.

pub mod ceiling;
pub mod peer;
pub mod sampler;
pub mod stack;

use std::path::{Path, PathBuf};

use anyhow::Context;
use rfo_image::synth;

/// Returns the folder of sample PNGs: `RFO_SAMPLES_DIR`, or else `shared/samples/png` in the
/// workspace or one of its parent folders. `None` when neither exists.
pub fn samples_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("RFO_SAMPLES_DIR") {
        return Some(PathBuf::from(dir));
    }
    workspace_dir()
        .ancestors()
        .map(|dir| dir.join("shared/samples/png"))
        .find(|candidate| candidate.is_dir())
}

/// Returns the workspace root, the parent of this crate's folder.
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Returns the cargo target folder: `CARGO_TARGET_DIR` when set, else `target/` in the
/// workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_dir().join("target"),
    }
}

/// Returns the path of a binary of this workspace built with `cargo build --release`.
pub fn release_binary(name: &str) -> PathBuf {
    target_dir().join("release").join(name)
}

/// One sample radiograph: its file name and its bytes.
pub struct Sample {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Reads every `*.png` of the samples folder, sorted by name. Empty when there is no folder.
pub fn read_samples() -> anyhow::Result<Vec<Sample>> {
    let Some(dir) = samples_dir() else {
        return Ok(Vec::new());
    };
    let entries =
        std::fs::read_dir(&dir).with_context(|| format!("failed to list {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("failed to list {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|extension| extension == "png") {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Sample { name, bytes })
        })
        .collect()
}

/// Source radiographs of the synthetic set: the samples that are at least 1024 pixels on
/// their shorter side, so that upscaling to 4096 pixels keeps some detail. Empty when there
/// are no samples, and the set is then drawn from scratch.
pub fn synth_sources(samples: &[Sample]) -> anyhow::Result<Vec<Vec<u8>>> {
    let limits = rfo_image::decode::DecodeLimits::default();
    let mut sources = Vec::new();
    for sample in samples {
        let header = rfo_image::decode::read_header(&sample.bytes, &limits)
            .with_context(|| format!("invalid sample {}", sample.name))?;
        if header.width.min(header.height) >= 1024 {
            sources.push(sample.bytes.clone());
        }
    }
    Ok(sources)
}

/// Returns the paths of a synthetic set of `count` images with `seed`, generating the
/// missing files under `target/bench-images/<seed>-<sources>`.
///
/// A file that exists is trusted: the generator is deterministic, so only an interrupted
/// write could leave a wrong file, and files are renamed into place once complete.
pub fn image_set(count: usize, seed: u64) -> anyhow::Result<Vec<PathBuf>> {
    let samples = read_samples()?;
    let sources = synth_sources(&samples)?;
    let dir = workspace_dir()
        .join("target/bench-images")
        .join(format!("seed{seed}-sources{}", sources.len()));
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let missing: Vec<usize> = (0..count)
        .filter(|&index| !dir.join(synth::set_file_name(index)).exists())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "generating {} synthetic radiographs in {} ({} sources)",
            missing.len(),
            dir.display(),
            sources.len()
        );
    }
    use rayon::prelude::*;
    missing.par_iter().try_for_each(|&index| {
        let bytes = synth::generate(&synth::set_spec(index, &sources, seed))?;
        let path = dir.join(synth::set_file_name(index));
        let partial = path.with_extension("png.partial");
        std::fs::write(&partial, bytes)
            .and_then(|()| std::fs::rename(&partial, &path))
            .with_context(|| format!("failed to write {}", path.display()))
    })?;
    Ok((0..count)
        .map(|index| dir.join(synth::set_file_name(index)))
        .collect())
}

/// Returns the first three fields of /proc/loadavg (1, 5 and 15 minutes), or `unknown`.
///
/// The figures depend on what else runs, so the reports print the load beside them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Returns the `q`-quantile (0..=1) of `values` by the nearest-rank method, or `None` when
/// `values` is empty. Sorts `values`.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut values, 0.5), Some(50.0));
        assert_eq!(quantile(&mut values, 0.99), Some(99.0));
        assert_eq!(quantile(&mut values, 1.0), Some(100.0));
        assert_eq!(quantile(&mut values, 0.0), Some(1.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
