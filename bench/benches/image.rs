//! Criterion benchmarks of the worker's CPU path, one group per step: PNG decode with each
//! decoder, windowing, detection, overlay drawing, overlay encoding at each compression and
//! filter, and the preview.
//!
//! Inputs are the three largest sample radiographs (when `shared/samples/png` or
//! `RFO_SAMPLES_DIR` exists) and two synthetic radiographs of production size, 4096 x 4096
//! and 4000 x 5000. Before the timed runs, a table of encoded overlay sizes and single-run
//! times for every compression and filter is printed, since criterion reports only times.
//!
//! Run with `cargo bench -p rfo-bench --bench image`; add a filter such as `-- decode/` to
//! run one group.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rfo_image::decode::{DecodeLimits, Decoder, GrayImage, decode_png, decode_png_with};
use rfo_image::detect::{Detector, ExposureDetector, RandomDetector};
use rfo_image::overlay::{
    EncodeSettings, PREVIEW_MAX_SIDE, draw_overlay, encode_indexed, render_preview,
};
use rfo_image::resize::{fit_within, resize_gray8};
use rfo_image::window::to_display_8bit;

/// Noise seed of the synthetic inputs; the same as the ceiling's and the load harness's.
const SYNTH_SEED: u64 = 1;

/// A benchmark input: a name for the report and the PNG bytes.
struct Input {
    name: String,
    bytes: Vec<u8>,
}

/// A decoded input with everything the later steps need.
struct Prepared {
    name: String,
    image: GrayImage,
    display: Vec<u8>,
    indices: Vec<u8>,
}

fn inputs() -> Vec<Input> {
    let mut samples = rfo_bench::read_samples().expect("read the sample radiographs");
    samples.sort_by_key(|sample| std::cmp::Reverse(sample.bytes.len()));
    let mut inputs: Vec<Input> = samples
        .into_iter()
        .take(3)
        .map(|sample| Input {
            name: sample.name.trim_end_matches(".png").to_string(),
            bytes: sample.bytes,
        })
        .collect();
    let paths = rfo_bench::image_set(2, SYNTH_SEED).expect("generate the synthetic radiographs");
    for path in paths {
        let bytes = std::fs::read(&path).expect("read a synthetic radiograph");
        let header = rfo_image::decode::read_header(&bytes, &DecodeLimits::default())
            .expect("synthetic radiographs have a valid header");
        inputs.push(Input {
            name: format!("synth-{}x{}", header.width, header.height),
            bytes,
        });
    }
    inputs
}

fn prepare(input: &Input) -> Prepared {
    let image = decode_png(&input.bytes, &DecodeLimits::default()).expect("inputs decode");
    let display = to_display_8bit(&image);
    let boxes = RandomDetector.detect(&image, &display, 42);
    let indices = draw_overlay(image.width, image.height, &display, &boxes).expect("overlay draws");
    Prepared {
        name: input.name.clone(),
        image,
        display,
        indices,
    }
}

fn pixels(image: &GrayImage) -> u64 {
    u64::from(image.width) * u64::from(image.height)
}

const COMPRESSIONS: [(&str, png::Compression); 5] = [
    ("none", png::Compression::NoCompression),
    ("fastest", png::Compression::Fastest),
    ("fast", png::Compression::Fast),
    ("balanced", png::Compression::Balanced),
    ("high", png::Compression::High),
];

const FILTERS: [(&str, png::Filter); 6] = [
    ("nofilter", png::Filter::NoFilter),
    ("sub", png::Filter::Sub),
    ("up", png::Filter::Up),
    ("avg", png::Filter::Avg),
    ("paeth", png::Filter::Paeth),
    ("adaptive", png::Filter::Adaptive),
];

/// Prints the encoded size and one run's time of the overlay at every compression and
/// filter, and of an RGB overlay at the production setting for comparison.
fn print_encode_table(prepared: &[Prepared]) {
    println!("overlay encoding: input, compression, filter, bytes, bits per pixel, ms (one run)");
    for item in prepared {
        let (width, height) = (item.image.width, item.image.height);
        for (compression_name, compression) in COMPRESSIONS {
            for (filter_name, filter) in FILTERS {
                let settings = EncodeSettings {
                    compression,
                    filter,
                };
                let started = Instant::now();
                let encoded =
                    encode_indexed(width, height, &item.indices, &settings).expect("encodes");
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let bits = encoded.len() as f64 * 8.0 / pixels(&item.image) as f64;
                println!(
                    "{}\t{compression_name}\t{filter_name}\t{}\t{bits:.2}\t{ms:.1}",
                    item.name,
                    encoded.len()
                );
            }
        }
        let started = Instant::now();
        let encoded = encode_rgb(width, height, &item.display);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let bits = encoded.len() as f64 * 8.0 / pixels(&item.image) as f64;
        println!(
            "{}\trgb-fast\tup\t{}\t{bits:.2}\t{ms:.1}",
            item.name,
            encoded.len()
        );
    }
}

/// Encodes the display image as 8-bit RGB with `Fast` and `Up`: the alternative to the
/// palette overlay, with the gray copied to all three channels.
fn encode_rgb(width: u32, height: u32, display: &[u8]) -> Vec<u8> {
    let rgb: Vec<u8> = display.iter().flat_map(|&value| [value; 3]).collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Up);
    let mut writer = encoder.write_header().expect("RGB header");
    writer.write_image_data(&rgb).expect("RGB data");
    writer.finish().expect("RGB end");
    out
}

fn bench_decode(c: &mut Criterion, inputs: &[Input]) {
    let limits = DecodeLimits::default();
    let mut group = c.benchmark_group("decode");
    for input in inputs {
        group.throughput(Throughput::Bytes(input.bytes.len() as u64));
        for (name, decoder) in [("png", Decoder::Png), ("zune-png", Decoder::ZunePng)] {
            group.bench_with_input(
                BenchmarkId::new(name, &input.name),
                &input.bytes,
                |b, bytes| b.iter(|| decode_png_with(decoder, black_box(bytes), &limits)),
            );
        }
    }
    group.finish();
}

fn bench_steps(c: &mut Criterion, prepared: &[Prepared]) {
    let mut group = c.benchmark_group("window");
    for item in prepared {
        group.throughput(Throughput::Elements(pixels(&item.image)));
        group.bench_function(&item.name, |b| {
            b.iter(|| to_display_8bit(black_box(&item.image)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("detect");
    for item in prepared {
        group.bench_function(BenchmarkId::new("random", &item.name), |b| {
            b.iter(|| RandomDetector.detect(&item.image, black_box(&item.display), 42))
        });
        group.bench_function(BenchmarkId::new("exposure", &item.name), |b| {
            b.iter(|| ExposureDetector.detect(&item.image, black_box(&item.display), 42))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("draw");
    for item in prepared {
        let (width, height) = (item.image.width, item.image.height);
        let boxes = RandomDetector.detect(&item.image, &item.display, 42);
        group.throughput(Throughput::Elements(pixels(&item.image)));
        group.bench_function(&item.name, |b| {
            b.iter(|| draw_overlay(width, height, black_box(&item.display), &boxes))
        });
    }
    group.finish();
}

/// Times the encoder settings worth choosing between: `High` and the slow filters of
/// `Balanced` are left to the printed table, where one run each shows they are out of the
/// running.
fn bench_encode(c: &mut Criterion, prepared: &[Prepared]) {
    let candidates = [
        ("fastest", "up"),
        ("fast", "nofilter"),
        ("fast", "sub"),
        ("fast", "up"),
        ("fast", "paeth"),
        ("fast", "adaptive"),
        ("balanced", "up"),
    ];
    let mut group = c.benchmark_group("encode");
    for item in prepared {
        let (width, height) = (item.image.width, item.image.height);
        group.throughput(Throughput::Elements(pixels(&item.image)));
        for (compression_name, filter_name) in candidates {
            let settings = EncodeSettings {
                compression: lookup(&COMPRESSIONS, compression_name),
                filter: lookup(&FILTERS, filter_name),
            };
            let id = BenchmarkId::new(format!("{compression_name}-{filter_name}"), &item.name);
            group.bench_function(id, |b| {
                b.iter(|| encode_indexed(width, height, black_box(&item.indices), &settings))
            });
        }
        group.bench_function(BenchmarkId::new("rgb-fast-up", &item.name), |b| {
            b.iter(|| encode_rgb(width, height, black_box(&item.display)))
        });
    }
    group.finish();
}

fn lookup<T: Copy>(table: &[(&str, T)], name: &str) -> T {
    table
        .iter()
        .find(|(entry, _)| *entry == name)
        .map(|(_, value)| *value)
        .expect("a name from the table")
}

fn bench_preview(c: &mut Criterion, prepared: &[Prepared]) {
    let mut group = c.benchmark_group("preview");
    for item in prepared {
        let (width, height) = (item.image.width, item.image.height);
        let boxes = RandomDetector.detect(&item.image, &item.display, 42);
        let (small_width, small_height) = fit_within(width, height, PREVIEW_MAX_SIDE);
        group.throughput(Throughput::Elements(pixels(&item.image)));
        group.bench_function(BenchmarkId::new("resize", &item.name), |b| {
            b.iter(|| {
                resize_gray8(
                    width,
                    height,
                    black_box(&item.display),
                    small_width,
                    small_height,
                )
            })
        });
        group.bench_function(BenchmarkId::new("render", &item.name), |b| {
            b.iter(|| {
                render_preview(
                    width,
                    height,
                    black_box(&item.display),
                    &boxes,
                    PREVIEW_MAX_SIDE,
                )
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let inputs = inputs();
    for input in &inputs {
        println!("input {}: {} bytes", input.name, input.bytes.len());
    }
    let prepared: Vec<Prepared> = inputs.iter().map(prepare).collect();
    if std::env::var_os("RFO_BENCH_SKIP_TABLE").is_none() {
        print_encode_table(&prepared);
    }
    bench_decode(c, &inputs);
    bench_steps(c, &prepared);
    bench_encode(c, &prepared);
    bench_preview(c, &prepared);
}

criterion_group! {
    name = image;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(image);
