//! Deterministic synthetic radiographs as large as production inputs, for benchmarks and load
//! tests.
//!
//! A source radiograph (a real PNG, or a chest-like image drawn from scratch) is windowed to
//! 8 bits and placed in a 12-bit range. It is then upscaled to the requested size with
//! fast_image_resize (bilinear, centre-cropped to the target's aspect ratio), and noise from a
//! seeded PRNG is added. The result is encoded as a 16-bit grayscale PNG with the png crate's
//! `Balanced` compression and adaptive filtering. The same spec always gives the same bytes.
//!
//! With the default noise, the 4096 x 4096 and 4000 x 5000 images made from the sample
//! radiographs measured 9.1 to 12.0 MB, and those drawn from scratch 8.6 and 10.2 MB
//! (png 0.18), inside the 8 to 13 MB of production inputs.

use std::path::{Path, PathBuf};

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::U16;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use rayon::prelude::*;

use crate::decode::{DecodeError, DecodeLimits, decode_png};
use crate::window::to_display_8bit;

/// Pixel sizes of the generated set, width x height: a square detector and a portrait one.
pub const SIZES: [(u32, u32); 2] = [(4096, 4096), (4000, 5000)];

/// Largest sample value: the images carry 12 significant bits.
pub const MAX_VALUE: u16 = 4095;

/// 12-bit value of display value 0 of a source radiograph.
const BASE_LOW: u16 = 400;

/// 12-bit levels per display level of a source radiograph, so the anatomy spans about 1000 of
/// the 4096 levels. Each display step of the source becomes an edge of this height after
/// upscaling, and with a step of 16 (the full 12-bit range) the files exceeded 13 MB whatever
/// the noise.
const BASE_STEP: u16 = 4;

/// Standard deviation of the added noise, in sample values.
///
/// Chosen so that the encoded files land between 8 and 13 MB at [`SIZES`]. Most of a file's
/// size is the noise, so a sigma of 2 already took the largest image past 13 MB.
pub const DEFAULT_NOISE_SIGMA: f32 = 1.0;

/// The image a synthetic radiograph is made from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A PNG radiograph of any size and colour type that the worker decodes.
    Png(&'a [u8]),
    /// A chest-like image drawn from scratch, for machines without sample radiographs.
    Scratch,
}

/// Parameters of one synthetic radiograph.
#[derive(Debug, Clone, Copy)]
pub struct SynthSpec<'a> {
    pub width: u32,
    pub height: u32,
    pub source: Source<'a>,
    /// Seed of the noise; different seeds give different files from the same source.
    pub seed: u64,
    /// Standard deviation of the noise, in sample values.
    pub noise_sigma: f32,
}

impl<'a> SynthSpec<'a> {
    /// Returns a spec with [`DEFAULT_NOISE_SIGMA`].
    pub fn new(width: u32, height: u32, source: Source<'a>, seed: u64) -> Self {
        Self {
            width,
            height,
            source,
            seed,
            noise_sigma: DEFAULT_NOISE_SIGMA,
        }
    }
}

/// Failure to generate a synthetic radiograph.
#[derive(thiserror::Error, Debug)]
pub enum SynthError {
    #[error("invalid size {width} x {height}: both sides must be at least 1 pixel")]
    EmptySize { width: u32, height: u32 },
    #[error("the source PNG could not be decoded: {0}")]
    Source(#[from] DecodeError),
    #[error("upscaling failed: {0}")]
    Resize(String),
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Generates one synthetic radiograph and returns its PNG bytes.
pub fn generate(spec: &SynthSpec) -> Result<Vec<u8>, SynthError> {
    let pixels = generate_pixels(spec)?;
    encode_gray16(spec.width, spec.height, &pixels)
}

/// Generates the samples of one synthetic radiograph, row-major, values 0..=[`MAX_VALUE`].
pub fn generate_pixels(spec: &SynthSpec) -> Result<Vec<u16>, SynthError> {
    let (width, height) = (spec.width, spec.height);
    if width == 0 || height == 0 {
        return Err(SynthError::EmptySize { width, height });
    }
    let (base_width, base_height, base) = match spec.source {
        Source::Png(bytes) => base_from_png(bytes)?,
        Source::Scratch => {
            let (base_width, base_height) = scratch_base_size(width, height);
            let base = draw_scratch(base_width, base_height);
            (base_width, base_height, base)
        }
    };
    let mut pixels = upscale(base_width, base_height, &base, width, height)?;
    add_noise(&mut pixels, width as usize, spec.seed, spec.noise_sigma);
    Ok(pixels)
}

/// Writes `count` synthetic radiographs to `dir` as `img-0001.png`, `img-0002.png`, ... and
/// returns their paths.
///
/// Image `i` (from 0) has size `SIZES[i % 2]`, is made from `sources[i % sources.len()]`, or
/// from scratch when `sources` is empty, and has noise seed `seed + i`. Images are generated
/// in parallel on the current rayon pool. An existing file of the same name is replaced.
pub fn write_set(
    dir: &Path,
    count: usize,
    sources: &[Vec<u8>],
    seed: u64,
) -> Result<Vec<PathBuf>, SynthError> {
    std::fs::create_dir_all(dir).map_err(|source| SynthError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    (0..count)
        .into_par_iter()
        .map(|index| {
            let path = dir.join(set_file_name(index));
            let bytes = generate(&set_spec(index, sources, seed))?;
            std::fs::write(&path, bytes).map_err(|source| SynthError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

/// Returns the spec of image `index` of a set made by [`write_set`].
pub fn set_spec<'a>(index: usize, sources: &'a [Vec<u8>], seed: u64) -> SynthSpec<'a> {
    let (width, height) = SIZES[index % SIZES.len()];
    let source = match sources {
        [] => Source::Scratch,
        _ => Source::Png(&sources[index % sources.len()]),
    };
    SynthSpec::new(width, height, source, seed.wrapping_add(index as u64))
}

/// Returns the file name of image `index` of a set: `img-0001.png` for index 0.
pub fn set_file_name(index: usize) -> String {
    format!("img-{:04}.png", index + 1)
}

/// Decodes a source PNG and returns its display image widened to 12 bits.
fn base_from_png(bytes: &[u8]) -> Result<(u32, u32, Vec<u16>), SynthError> {
    let image = decode_png(bytes, &DecodeLimits::default())?;
    let display = to_display_8bit(&image);
    let base = display.iter().map(|&value| widen(value)).collect();
    Ok((image.width, image.height, base))
}

/// Maps display values 0..=255 to 12-bit values [`BASE_LOW`], [`BASE_LOW`] + 4, ... 1420.
fn widen(value: u8) -> u16 {
    BASE_LOW + u16::from(value) * BASE_STEP
}

fn upscale(
    width: u32,
    height: u32,
    base: &[u16],
    new_width: u32,
    new_height: u32,
) -> Result<Vec<u16>, SynthError> {
    let source_pixels: Vec<U16> = base.iter().map(|&value| U16::new(value)).collect();
    let source = TypedImageRef::new(width, height, &source_pixels)
        .map_err(|error| SynthError::Resize(format!("invalid source image: {error}")))?;
    let mut destination = TypedImage::<U16>::new(new_width, new_height);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .fit_into_destination(Some((0.5, 0.5)));
    Resizer::new()
        .resize_typed(&source, &mut destination, &options)
        .map_err(|error| SynthError::Resize(error.to_string()))?;
    Ok(destination.pixels().iter().map(|pixel| pixel.0).collect())
}

/// Adds zero-mean, roughly Gaussian noise of standard deviation `sigma`, clamped to the
/// sample range. Each row has its own PRNG stream, so rows are filled in parallel and the
/// result does not depend on the thread count.
fn add_noise(pixels: &mut [u16], width: usize, seed: u64, sigma: f32) {
    // The sum of four uniform 16-bit values (Irwin-Hall, n = 4) has mean 2 * 65535 and a
    // standard deviation of 65536 / sqrt(3).
    const MEAN: f32 = 2.0 * 65535.0;
    let scale = sigma * 3f32.sqrt() / 65536.0;
    pixels
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(row, samples)| {
            let mut rng = SplitMix64::new(seed ^ (row as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            for sample in samples {
                let bits = rng.next_u64();
                let sum =
                    (bits & 0xFFFF) + (bits >> 16 & 0xFFFF) + (bits >> 32 & 0xFFFF) + (bits >> 48);
                let noise = (sum as f32 - MEAN) * scale;
                let value = (f32::from(*sample) + noise).round();
                *sample = value.clamp(0.0, f32::from(MAX_VALUE)) as u16;
            }
        });
}

/// Encodes 16-bit gray samples as a PNG with `Balanced` compression and adaptive filtering.
fn encode_gray16(width: u32, height: u32, pixels: &[u16]) -> Result<Vec<u8>, SynthError> {
    let bytes: Vec<u8> = pixels
        .iter()
        .flat_map(|value| value.to_be_bytes())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() / 2);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Sixteen);
    encoder.set_compression(png::Compression::Balanced);
    encoder.set_filter(png::Filter::Adaptive);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&bytes)?;
    writer.finish()?;
    Ok(out)
}

/// Returns the size of the scratch drawing: 512 pixels on the shorter side, the target's
/// aspect ratio, never larger than the target.
fn scratch_base_size(width: u32, height: u32) -> (u32, u32) {
    let shorter = width.min(height).min(512);
    let scale = |side: u32| {
        let scaled = u64::from(side) * u64::from(shorter) / u64::from(width.min(height));
        (scaled as u32).max(1)
    };
    (scale(width), scale(height))
}

/// Draws a frontal chest-like radiograph in 12-bit values: dark air, a body with soft edges,
/// two darker lung fields crossed by ribs, a bright spine and heart, and a square marker.
fn draw_scratch(width: u32, height: u32) -> Vec<u16> {
    let mut pixels = Vec::with_capacity(width as usize * height as usize);
    for y in 0..height {
        let v = (f64::from(y) + 0.5) / f64::from(height);
        for x in 0..width {
            let u = (f64::from(x) + 0.5) / f64::from(width);
            pixels.push(chest_value(u, v));
        }
    }
    pixels
}

/// Returns the 12-bit value of the chest drawing at `u`, `v` (0..1 across and down).
fn chest_value(u: f64, v: f64) -> u16 {
    let air = 180.0;
    let body = soft_inside(ellipse(u, v, (0.5, 0.56), (0.44, 0.52)), 0.08);
    let lung_left = soft_inside(ellipse(u, v, (0.32, 0.44), (0.14, 0.27)), 0.25);
    let lung_right = soft_inside(ellipse(u, v, (0.68, 0.44), (0.14, 0.27)), 0.25);
    let lungs = lung_left.max(lung_right);
    let spine = soft_inside(((u - 0.5) / 0.045).abs(), 0.3) * body;
    let heart = soft_inside(ellipse(u, v, (0.56, 0.58), (0.13, 0.12)), 0.3);
    // Ribs: arcs that sag towards the sides, visible inside the lung fields.
    let rib_phase = (v - 0.2 + 0.35 * (u - 0.5) * (u - 0.5)) * 22.0;
    let ribs = (rib_phase * std::f64::consts::PI).sin().max(0.0).powi(4) * lungs;
    let gradient = 0.15 * v;
    let mut value = air + body * (2200.0 + 600.0 * gradient);
    value -= lungs * 1300.0;
    value += ribs * 450.0 + spine * 1100.0 + heart * (1.0 - spine) * 700.0;
    let marker = (0.06..0.11).contains(&u) && (0.05..0.09).contains(&v);
    if marker {
        value = 3900.0;
    }
    value.clamp(0.0, f64::from(MAX_VALUE)).round() as u16
}

/// Returns the normalized elliptic distance of `u`, `v` from `centre`: below 1 inside.
fn ellipse(u: f64, v: f64, centre: (f64, f64), radii: (f64, f64)) -> f64 {
    let du = (u - centre.0) / radii.0;
    let dv = (v - centre.1) / radii.1;
    (du * du + dv * dv).sqrt()
}

/// Returns 1 well inside (distance below 1 - `edge`), 0 outside, and a smooth step between.
fn soft_inside(distance: f64, edge: f64) -> f64 {
    let t = ((1.0 - distance) / edge).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// SplitMix64: a small and fast PRNG, good enough for image noise.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{GrayPixels, read_header};
    use crate::test_support::read_shared;

    fn decode_sixteen(bytes: &[u8]) -> (u32, u32, Vec<u16>) {
        let image = decode_png(bytes, &DecodeLimits::default()).unwrap();
        let GrayPixels::Sixteen(samples) = image.pixels else {
            panic!("synthetic images are 16-bit gray");
        };
        (image.width, image.height, samples)
    }

    #[test]
    fn scratch_has_requested_size() {
        let bytes = generate(&SynthSpec::new(300, 200, Source::Scratch, 1)).unwrap();
        let header = read_header(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!((header.width, header.height), (300, 200));
        assert_eq!(header.bit_depth, 16);
        let (_, _, samples) = decode_sixteen(&bytes);
        assert!(samples.iter().all(|&value| value <= MAX_VALUE));
    }

    #[test]
    fn same_spec_same_bytes() {
        let spec = SynthSpec::new(256, 320, Source::Scratch, 7);
        assert!(generate(&spec).unwrap() == generate(&spec).unwrap());
        let other_seed = SynthSpec { seed: 8, ..spec };
        assert!(generate(&spec).unwrap() != generate(&other_seed).unwrap());
    }

    #[test]
    fn noise_has_requested_sigma() {
        let spec = SynthSpec::new(512, 512, Source::Scratch, 3);
        let clean = SynthSpec {
            noise_sigma: 0.0,
            ..spec
        };
        let noisy = generate_pixels(&spec).unwrap();
        let base = generate_pixels(&clean).unwrap();
        let count = noisy.len() as f64;
        let differences: Vec<f64> = noisy
            .iter()
            .zip(&base)
            .map(|(&a, &b)| f64::from(a) - f64::from(b))
            .collect();
        let mean = differences.iter().sum::<f64>() / count;
        let variance = differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / count;
        assert!(mean.abs() < 0.1, "mean {mean}");
        let sigma = variance.sqrt();
        let expected = f64::from(DEFAULT_NOISE_SIGMA);
        assert!((sigma - expected).abs() < 0.1 * expected, "sigma {sigma}");
    }

    #[test]
    fn sample_source_keeps_anatomy() {
        // The sample's windowed display and the upscaled copy agree at the centre.
        let sample = read_shared("samples/png/nih-cxr14-00000075_000.png");
        let spec = SynthSpec {
            noise_sigma: 0.0,
            ..SynthSpec::new(2048, 2048, Source::Png(&sample), 0)
        };
        let pixels = generate_pixels(&spec).unwrap();
        let image = decode_png(&sample, &DecodeLimits::default()).unwrap();
        let display = to_display_8bit(&image);
        let centre_source = widen(display[512 * 1024 + 512]);
        let centre_synth = pixels[1024 * 2048 + 1024];
        assert!(
            centre_source.abs_diff(centre_synth) < 200,
            "{centre_source} against {centre_synth}"
        );
    }

    #[test]
    fn set_cycles_sizes_and_sources() {
        let sources = vec![vec![1u8], vec![2u8], vec![3u8]];
        let sizes: Vec<(u32, u32)> = (0..4)
            .map(|i| {
                let spec = set_spec(i, &sources, 10);
                (spec.width, spec.height)
            })
            .collect();
        assert_eq!(sizes, [SIZES[0], SIZES[1], SIZES[0], SIZES[1]]);
        assert!(matches!(set_spec(4, &sources, 10).source, Source::Png([2])));
        assert_eq!(set_spec(4, &sources, 10).seed, 14);
        assert!(matches!(set_spec(0, &[], 10).source, Source::Scratch));
        assert_eq!(set_file_name(0), "img-0001.png");
    }

    #[test]
    fn full_size_files_like_production() {
        // Production inputs are 8 to 13 MB; one image of each size, from scratch and from a
        // sample, must land in that range.
        let sample = read_shared("samples/png/derived-RG1-chest-gray16-inv15bit.png");
        let specs = [
            SynthSpec::new(SIZES[0].0, SIZES[0].1, Source::Scratch, 1),
            SynthSpec::new(SIZES[1].0, SIZES[1].1, Source::Png(&sample), 2),
        ];
        for spec in specs {
            let size = generate(&spec).unwrap().len();
            assert!(
                (8_000_000..=13_000_000).contains(&size),
                "{} x {}: {size} bytes",
                spec.width,
                spec.height
            );
        }
    }
}
