use super::*;
use crate::test_support::{
    TestRng, chunk, ihdr, list_shared, peak_allocation, png_file, raw_image_data, read_shared, zlib,
};

const BOTH: [Decoder; 2] = [Decoder::Png, Decoder::ZunePng];

/// Every PNG sample with its size as listed in the samples' source notes.
const SAMPLES: [(&str, u32, u32); 9] = [
    ("derived-GH133-mammo-gray16-shl4.png", 2394, 3062),
    ("derived-RG1-chest-gray16-inv15bit.png", 1841, 1955),
    ("derived-RG2-hip-gray16-raw10bit.png", 1760, 2140),
    ("mhh-covid-006f3a8a-640px.png", 640, 599),
    ("nih-cxr14-00000001_000-512px.png", 512, 512),
    ("nih-cxr14-00000075_000.png", 1024, 1024),
    ("nih-cxr14-00000100_000-rgba.png", 1024, 1024),
    ("sirm-covid19-caso15-rgba16.png", 1726, 1552),
    ("wikimedia-ARDSSevere-rgb.png", 790, 631),
];

fn case(name: &str) -> Vec<u8> {
    read_shared(&format!("cases/png/{name}"))
}

fn sample(name: &str) -> Vec<u8> {
    read_shared(&format!("samples/png/{name}"))
}

/// Decodes with both decoders, checks that they agree exactly, and returns the outcome.
fn decode_both(bytes: &[u8], limits: &DecodeLimits) -> Result<GrayImage, DecodeError> {
    let by_png = decode_png_with(Decoder::Png, bytes, limits);
    let by_zune = decode_png_with(Decoder::ZunePng, bytes, limits);
    match (&by_png, &by_zune) {
        (Ok(png_image), Ok(zune_image)) => {
            assert!(
                png_image == zune_image,
                "the decoders return different pixels"
            );
        }
        (Err(png_error), Err(zune_error)) => assert_eq!(
            png_error.code(),
            zune_error.code(),
            "png: {png_error}; zune-png: {zune_error}"
        ),
        _ => panic!("the decoders disagree: png {by_png:?}, zune-png {by_zune:?}"),
    }
    by_zune
}

fn error_code(result: Result<GrayImage, DecodeError>) -> &'static str {
    match result {
        Ok(image) => panic!(
            "expected an error, got a {} x {} image",
            image.width, image.height
        ),
        Err(error) => error.code(),
    }
}

fn eight(image: &GrayImage) -> &[u8] {
    match &image.pixels {
        GrayPixels::Eight(samples) => samples,
        GrayPixels::Sixteen(_) => panic!("expected 8-bit pixels, got 16-bit"),
    }
}

fn sixteen(image: &GrayImage) -> &[u16] {
    match &image.pixels {
        GrayPixels::Sixteen(samples) => samples,
        GrayPixels::Eight(_) => panic!("expected 16-bit pixels, got 8-bit"),
    }
}

/// Builds a valid 8-bit gray PNG of a gradient and returns the file and its raw image data.
fn gray8_png(width: usize, height: usize) -> (Vec<u8>, Vec<u8>) {
    let samples: Vec<u16> = (0..width * height).map(|i| (i * 7 % 256) as u16).collect();
    let raw = raw_image_data(width, height, 1, 8, &samples, false);
    let file = png_file(&[
        ihdr(width as u32, height as u32, 8, 0, false),
        chunk(b"IDAT", &zlib(&raw)),
        chunk(b"IEND", &[]),
    ]);
    (file, raw)
}

#[test]
fn samples_decode_identically() {
    let listed: Vec<&str> = SAMPLES.iter().map(|(name, _, _)| *name).collect();
    for name in list_shared("samples/png") {
        assert!(listed.contains(&name.as_str()), "{name} is not in SAMPLES");
    }
    let limits = DecodeLimits::default();
    for (name, width, height) in SAMPLES {
        let image = decode_both(&sample(name), &limits)
            .unwrap_or_else(|error| panic!("{name} does not decode: {error}"));
        assert_eq!((image.width, image.height), (width, height), "{name}");
        let is_sixteen = matches!(image.pixels, GrayPixels::Sixteen(_));
        let source_is_sixteen = name.starts_with("derived-") || name.contains("rgba16");
        assert_eq!(is_sixteen, source_is_sixteen, "{name}: 16-bit output");
    }
}

#[test]
fn samples_headers() {
    let limits = DecodeLimits::default();
    let derived = read_header(&sample("derived-RG2-hip-gray16-raw10bit.png"), &limits).unwrap();
    assert_eq!(
        derived,
        Header {
            width: 1760,
            height: 2140,
            bit_depth: 16,
            color_type: ColorType::Grayscale,
            interlaced: false,
        }
    );
    let rgba16 = read_header(&sample("sirm-covid19-caso15-rgba16.png"), &limits).unwrap();
    assert_eq!(rgba16.color_type, ColorType::Rgba);
    assert_eq!(rgba16.bit_depth, 16);
    let interlaced = read_header(&case("P04_gray16_adam7_13x7.png"), &limits).unwrap();
    assert!(interlaced.interlaced);
}

#[test]
fn rgb_sample_keeps_gray_values() {
    // The RGBA sample stores R = G = B with alpha 255, so luma must equal the red sample.
    let bytes = sample("nih-cxr14-00000100_000-rgba.png");
    let image = decode_png(&bytes, &DecodeLimits::default()).unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes[..]))
        .read_info()
        .unwrap();
    let mut rgba = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut rgba).unwrap();
    let red: Vec<u8> = rgba.chunks_exact(4).map(|pixel| pixel[0]).collect();
    assert!(eight(&image) == red.as_slice());
}

#[test]
fn case_p02_gray16_trns_processed() {
    let image = decode_both(&case("P02_gray16_trns_64x64.png"), &DecodeLimits::default()).unwrap();
    assert_eq!((image.width, image.height), (64, 64));
    assert_eq!(sixteen(&image).len(), 64 * 64);
}

#[test]
fn case_p02_trns_is_ignored() {
    // Dropping the tRNS chunk must not change a single pixel.
    let bytes = case("P02_gray16_trns_64x64.png");
    let trns_length = u32::from_be_bytes(bytes[33..37].try_into().unwrap()) as usize;
    assert_eq!(&bytes[37..41], b"tRNS");
    let mut without_trns = bytes[..33].to_vec();
    without_trns.extend_from_slice(&bytes[33 + 12 + trns_length..]);
    let limits = DecodeLimits::default();
    assert_eq!(
        decode_both(&bytes, &limits).unwrap(),
        decode_both(&without_trns, &limits).unwrap()
    );
}

#[test]
fn case_p04_interlaced_matches_plain() {
    let limits = DecodeLimits::default();
    let interlaced = decode_both(&case("P04_gray16_adam7_13x7.png"), &limits).unwrap();
    let plain = decode_both(&case("P04b_gray16_13x7_noninterlaced.png"), &limits).unwrap();
    assert_eq!((plain.width, plain.height), (13, 7));
    assert!(matches!(plain.pixels, GrayPixels::Sixteen(_)));
    assert_eq!(interlaced, plain);
}

#[test]
fn case_p06_shows_palette_colours() {
    let bytes = case("P06_palette_trns_all_zero_8x8.png");
    let image = decode_both(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!((image.width, image.height), (8, 8));
    // Every pixel must be the luma of a palette entry, and more than one entry is used.
    let plte_start = 33;
    assert_eq!(&bytes[plte_start + 4..plte_start + 8], b"PLTE");
    let palette = &bytes[plte_start + 8..plte_start + 8 + 12];
    let palette_lumas: Vec<u8> = palette
        .chunks_exact(3)
        .map(|rgb| luma::luma8(rgb[0], rgb[1], rgb[2]))
        .collect();
    let pixels = eight(&image);
    assert!(pixels.iter().all(|value| palette_lumas.contains(value)));
    let mut distinct = pixels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 1, "the image is uniform: {distinct:?}");
}

#[test]
fn case_p10_rejected_from_header() {
    let bytes = case("P10_ihdr_claims_100000x100000.png");
    let limits = DecodeLimits::default();
    assert_eq!(
        read_header(&bytes, &limits).unwrap_err().code(),
        "image_too_large"
    );
    for decoder in BOTH {
        let (result, peak) = peak_allocation(|| decode_png_with(decoder, &bytes, &limits));
        assert_eq!(error_code(result), "image_too_large", "{decoder:?}");
        assert!(peak < 4096, "{decoder:?} allocated {peak} bytes");
    }
}

#[test]
fn case_p11_over_default_budget() {
    let bytes = case("P11_idat_bomb_10000x10000_gray8.png");
    let limits = DecodeLimits::default();
    for decoder in BOTH {
        let (result, peak) = peak_allocation(|| decode_png_with(decoder, &bytes, &limits));
        assert_eq!(error_code(result), "image_too_large", "{decoder:?}");
        assert!(peak < 4096, "{decoder:?} allocated {peak} bytes");
    }
}

#[test]
fn case_p11_processed_within_budget() {
    let bytes = case("P11_idat_bomb_10000x10000_gray8.png");
    let limits = DecodeLimits {
        max_pixels: 100_000_000,
        ..DecodeLimits::default()
    };
    let mut images = Vec::new();
    for decoder in BOTH {
        let (result, peak) = peak_allocation(|| decode_png_with(decoder, &bytes, &limits));
        let image = result.unwrap_or_else(|error| panic!("{decoder:?}: {error}"));
        assert_eq!((image.width, image.height), (10_000, 10_000));
        // The output is 100 MB. zune-png 0.5 also keeps the inflated data and its own
        // output while unfiltering, about three times as much in all.
        let bound = match decoder {
            Decoder::Png => 110_000_000,
            Decoder::ZunePng => 310_000_000,
        };
        assert!(peak < bound, "{decoder:?} peaked at {peak} bytes");
        images.push(image);
    }
    assert!(
        images[0] == images[1],
        "the decoders return different pixels"
    );
}

#[test]
fn case_p13_truncated() {
    let result = decode_both(
        &case("P13_truncated_mid_idat.png"),
        &DecodeLimits::default(),
    );
    assert_eq!(error_code(result), "truncated_image");
}

#[test]
fn case_p15_bad_crc_corrupt() {
    let result = decode_both(&case("P15_crc_bad_idat.png"), &DecodeLimits::default());
    assert_eq!(error_code(result), "corrupt_image");
}

#[test]
fn case_p19_zero_width_corrupt() {
    let bytes = case("P19_ihdr_zero_width.png");
    let limits = DecodeLimits::default();
    assert_eq!(
        read_header(&bytes, &limits).unwrap_err().code(),
        "corrupt_image"
    );
    assert_eq!(error_code(decode_both(&bytes, &limits)), "corrupt_image");
}

#[test]
fn case_p24_bad_filter_corrupt() {
    let result = decode_both(&case("P24_bad_filter_type_5.png"), &DecodeLimits::default());
    assert_eq!(error_code(result), "corrupt_image");
}

#[test]
fn cases_all_covered() {
    let covered = [
        "P02_gray16_trns_64x64.png",
        "P04_gray16_adam7_13x7.png",
        "P04b_gray16_13x7_noninterlaced.png",
        "P06_palette_trns_all_zero_8x8.png",
        "P10_ihdr_claims_100000x100000.png",
        "P11_idat_bomb_10000x10000_gray8.png",
        "P13_truncated_mid_idat.png",
        "P15_crc_bad_idat.png",
        "P19_ihdr_zero_width.png",
        "P24_bad_filter_type_5.png",
    ];
    assert_eq!(list_shared("cases/png"), covered);
}

#[test]
fn jpeg_samples_unsupported() {
    let names = list_shared("samples/jpeg");
    assert!(!names.is_empty());
    for name in names {
        let bytes = read_shared(&format!("samples/jpeg/{name}"));
        for decoder in BOTH {
            let error = decode_png_with(decoder, &bytes, &DecodeLimits::default()).unwrap_err();
            assert_eq!(error.code(), "unsupported_format", "{name}");
            assert!(error.to_string().contains("JPEG"), "{name}: {error}");
        }
    }
}

#[test]
fn non_png_inputs_unsupported() {
    let mut rng = TestRng(7);
    let random: Vec<u8> = (0..1000).map(|_| rng.next_u64() as u8).collect();
    let mut dicom = vec![0u8; 128];
    dicom.extend_from_slice(b"DICM");
    dicom.extend_from_slice(&[2, 0, 0, 0]);
    let inputs: [(&str, &[u8], &str); 5] = [
        ("empty", b"", "empty"),
        ("text", b"{\"image_key\": \"test.png\"}\n", "text"),
        ("random bytes", &random, "bytes"),
        ("DICOM", &dicom, "DICOM"),
        ("GIF", b"GIF89a\x01\x00\x01\x00", "GIF"),
    ];
    for (label, bytes, mentioned) in inputs {
        let error = decode_both(bytes, &DecodeLimits::default()).unwrap_err();
        assert_eq!(error.code(), "unsupported_format", "{label}");
        assert!(error.to_string().contains(mentioned), "{label}: {error}");
    }
}

#[test]
fn damaged_signatures() {
    let limits = DecodeLimits::default();
    assert_eq!(
        error_code(decode_both(b"\x89PNG\r\n", &limits)),
        "truncated_image"
    );
    let (file, _) = gray8_png(4, 4);
    let mut unix_line_ending = file[..4].to_vec();
    unix_line_ending.extend_from_slice(b"\n\x1a\n");
    unix_line_ending.extend_from_slice(&file[8..]);
    assert_eq!(
        error_code(decode_both(&unix_line_ending, &limits)),
        "corrupt_image"
    );
}

/// Expected luma of an RGB triple, from the BT.601 weights in floating point.
fn expected_luma(red: f64, green: f64, blue: f64) -> f64 {
    0.299 * red + 0.587 * green + 0.114 * blue
}

#[test]
fn every_color_type_and_depth() {
    // (colour type, channels, bit depths)
    let kinds: [(u8, usize, &[u8]); 5] = [
        (0, 1, &[1, 2, 4, 8, 16]),
        (2, 3, &[8, 16]),
        (3, 1, &[1, 2, 4, 8]),
        (4, 2, &[8, 16]),
        (6, 4, &[8, 16]),
    ];
    let palette: Vec<u8> = (0..200u32)
        .flat_map(|i| {
            [
                (i * 37 % 256) as u8,
                (i * 91 % 256) as u8,
                (i * 13 % 256) as u8,
            ]
        })
        .collect();
    let (width, height) = (13, 11);
    let mut rng = TestRng(42);
    for (color_type, channels, depths) in kinds {
        for &depth in depths {
            for interlaced in [false, true] {
                let label = format!("colour type {color_type}, depth {depth}, Adam7 {interlaced}");
                let max_value = if color_type == 3 {
                    (1u64 << depth).min(200)
                } else {
                    1u64 << depth
                };
                let samples: Vec<u16> = (0..width * height * channels)
                    .map(|_| rng.below(max_value) as u16)
                    .collect();
                let raw = raw_image_data(width, height, channels, depth, &samples, interlaced);
                let mut chunks = vec![ihdr(
                    width as u32,
                    height as u32,
                    depth,
                    color_type,
                    interlaced,
                )];
                if color_type == 3 {
                    chunks.push(chunk(b"PLTE", &palette));
                    chunks.push(chunk(b"tRNS", &[0; 200]));
                }
                if color_type == 0 {
                    chunks.push(chunk(b"tRNS", &[0, 1]));
                }
                chunks.push(chunk(b"IDAT", &zlib(&raw)));
                chunks.push(chunk(b"IEND", &[]));
                let image = decode_both(&png_file(&chunks), &DecodeLimits::default())
                    .unwrap_or_else(|error| panic!("{label}: {error}"));
                assert_eq!((image.width, image.height), (width as u32, height as u32));

                for (index, pixel) in samples.chunks_exact(channels).enumerate() {
                    let (expected, actual) = match (&image.pixels, color_type) {
                        (GrayPixels::Sixteen(values), 0 | 4) => {
                            (f64::from(pixel[0]), f64::from(values[index]))
                        }
                        (GrayPixels::Sixteen(values), _) => (
                            expected_luma(pixel[0].into(), pixel[1].into(), pixel[2].into()),
                            f64::from(values[index]),
                        ),
                        (GrayPixels::Eight(values), 0 | 4) => {
                            let scaled = f64::from(pixel[0]) * 255.0 / ((1u32 << depth) - 1) as f64;
                            (scaled, f64::from(values[index]))
                        }
                        (GrayPixels::Eight(values), 3) => {
                            let entry = &palette[usize::from(pixel[0]) * 3..][..3];
                            let luma =
                                expected_luma(entry[0].into(), entry[1].into(), entry[2].into());
                            (luma, f64::from(values[index]))
                        }
                        (GrayPixels::Eight(values), _) => (
                            expected_luma(pixel[0].into(), pixel[1].into(), pixel[2].into()),
                            f64::from(values[index]),
                        ),
                    };
                    // The 16-bit fixed-point weights differ from BT.601's by up to 5e-6.
                    let tolerance = if depth == 16 { 1.0 } else { 0.51 };
                    assert!(
                        (expected - actual).abs() <= tolerance,
                        "{label}, pixel {index}: expected {expected}, got {actual}"
                    );
                }
                assert_eq!(
                    matches!(image.pixels, GrayPixels::Sixteen(_)),
                    depth == 16,
                    "{label}"
                );
            }
        }
    }
}

#[test]
fn palette_index_past_end_is_black() {
    // Two palette entries, but the pixels use indices 0 to 3.
    let raw = raw_image_data(4, 1, 1, 8, &[0, 1, 2, 3], false);
    let file = png_file(&[
        ihdr(4, 1, 8, 3, false),
        chunk(b"PLTE", &[255, 255, 255, 128, 128, 128]),
        chunk(b"IDAT", &zlib(&raw)),
        chunk(b"IEND", &[]),
    ]);
    let image = decode_both(&file, &DecodeLimits::default()).unwrap();
    assert_eq!(eight(&image), [255, 128, 0, 0]);
}

#[test]
fn trailing_data_after_iend_ignored() {
    let (file, _) = gray8_png(8, 8);
    let mut with_trailer = file.clone();
    with_trailer.extend_from_slice(b"trailing bytes that are not a chunk");
    let limits = DecodeLimits::default();
    assert_eq!(
        decode_both(&file, &limits).unwrap(),
        decode_both(&with_trailer, &limits).unwrap()
    );
}

#[test]
fn ancillary_chunks_skipped() {
    let (file, raw) = gray8_png(8, 8);
    let with_metadata = png_file(&[
        ihdr(8, 8, 8, 0, false),
        chunk(b"tEXt", b"Patient\0Doe^John"),
        chunk(b"gAMA", &45455u32.to_be_bytes()),
        chunk(b"IDAT", &zlib(&raw)),
        chunk(b"tIME", &[7, 234, 1, 2, 3, 4, 5]),
        chunk(b"IEND", &[]),
    ]);
    let limits = DecodeLimits::default();
    assert_eq!(
        decode_both(&file, &limits).unwrap(),
        decode_both(&with_metadata, &limits).unwrap()
    );
}

#[test]
fn crafted_structure_errors() {
    let (_, raw) = gray8_png(8, 8);
    let idat = chunk(b"IDAT", &zlib(&raw));
    let iend = chunk(b"IEND", &[]);
    let gray = ihdr(8, 8, 8, 0, false);
    let mut bad_crc_text = chunk(b"tEXt", b"Comment\0x");
    let last = bad_crc_text.len() - 1;
    bad_crc_text[last] ^= 1;
    let compressed = zlib(&raw);
    let (part_one, part_two) = compressed.split_at(compressed.len() / 2);

    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "ancillary chunk with a bad CRC",
            vec![gray.clone(), bad_crc_text, idat.clone(), iend.clone()],
            "corrupt_image",
        ),
        (
            "no IEND",
            vec![gray.clone(), idat.clone()],
            "truncated_image",
        ),
        ("no IDAT", vec![gray.clone(), iend.clone()], "corrupt_image"),
        (
            "second IHDR",
            vec![gray.clone(), gray.clone(), idat.clone(), iend.clone()],
            "corrupt_image",
        ),
        (
            "IDAT chunks not consecutive",
            vec![
                gray.clone(),
                chunk(b"IDAT", part_one),
                chunk(b"tEXt", b"Comment\0x"),
                chunk(b"IDAT", part_two),
                iend.clone(),
            ],
            "corrupt_image",
        ),
        (
            "palette image without PLTE",
            vec![ihdr(8, 8, 8, 3, false), idat.clone(), iend.clone()],
            "corrupt_image",
        ),
        (
            "grayscale image with PLTE",
            vec![
                gray.clone(),
                chunk(b"PLTE", &[0, 0, 0]),
                idat.clone(),
                iend.clone(),
            ],
            "corrupt_image",
        ),
        (
            "PLTE of 4 bytes",
            vec![
                ihdr(8, 8, 8, 3, false),
                chunk(b"PLTE", &[0; 4]),
                idat.clone(),
                iend.clone(),
            ],
            "corrupt_image",
        ),
        (
            "unknown critical chunk",
            vec![
                gray.clone(),
                chunk(b"XYZW", b""),
                idat.clone(),
                iend.clone(),
            ],
            "corrupt_image",
        ),
        (
            "chunk type not letters",
            vec![
                gray.clone(),
                chunk(b"ab1d", b""),
                idat.clone(),
                iend.clone(),
            ],
            "corrupt_image",
        ),
        (
            "IEND with data",
            vec![gray.clone(), idat.clone(), chunk(b"IEND", b"x")],
            "corrupt_image",
        ),
        (
            "RGB at 4 bits",
            vec![ihdr(8, 8, 4, 2, false), idat.clone(), iend.clone()],
            "corrupt_image",
        ),
        (
            "palette at 16 bits",
            vec![ihdr(8, 8, 16, 3, false), idat.clone(), iend.clone()],
            "corrupt_image",
        ),
        (
            "colour type 5",
            vec![ihdr(8, 8, 8, 5, false), idat.clone(), iend.clone()],
            "corrupt_image",
        ),
        (
            "zero height",
            vec![ihdr(8, 0, 8, 0, false), idat.clone(), iend.clone()],
            "corrupt_image",
        ),
        (
            "side over the limit",
            vec![ihdr(16_385, 1, 8, 0, false), idat.clone(), iend.clone()],
            "image_too_large",
        ),
        (
            "side over 2^31 - 1",
            vec![ihdr(u32::MAX, 1, 8, 0, false), idat.clone(), iend.clone()],
            "corrupt_image",
        ),
    ];
    for (label, chunks, code) in cases {
        let result = decode_both(&png_file(&chunks), &DecodeLimits::default());
        assert_eq!(error_code(result), code, "{label}");
    }
}

#[test]
fn first_chunk_not_ihdr_corrupt() {
    let (_, raw) = gray8_png(8, 8);
    let file = png_file(&[chunk(b"IDAT", &zlib(&raw)), chunk(b"IEND", &[])]);
    let error = decode_both(&file, &DecodeLimits::default()).unwrap_err();
    assert_eq!(error.code(), "corrupt_image");
    assert!(error.to_string().contains("IDAT"), "{error}");
}

#[test]
fn oversized_ancillary_chunk_rejected() {
    let (_, raw) = gray8_png(8, 8);
    let file = png_file(&[
        ihdr(8, 8, 8, 0, false),
        chunk(b"zTXt", &[b'x'; 2000]),
        chunk(b"IDAT", &zlib(&raw)),
        chunk(b"IEND", &[]),
    ]);
    let limits = DecodeLimits {
        max_ancillary_chunk_bytes: 1000,
        ..DecodeLimits::default()
    };
    assert_eq!(error_code(decode_both(&file, &limits)), "image_too_large");
    assert!(decode_both(&file, &DecodeLimits::default()).is_ok());
}

#[test]
fn pixel_budget_from_header() {
    let (file, _) = gray8_png(10, 10);
    let limits = DecodeLimits {
        max_pixels: 99,
        ..DecodeLimits::default()
    };
    let error = read_header(&file, &limits).unwrap_err();
    assert_eq!(error.code(), "image_too_large");
    assert!(error.to_string().contains("99"), "{error}");
    let exact = DecodeLimits {
        max_pixels: 100,
        ..DecodeLimits::default()
    };
    assert!(decode_both(&file, &exact).is_ok());
}

#[test]
fn short_image_data_corrupt() {
    // The file is complete up to IEND, so image data that ends early is corrupt, not
    // truncated.
    let (_, raw) = gray8_png(16, 16);
    let compressed = zlib(&raw);
    let streams = [
        (
            "zlib stream cut in half",
            compressed[..compressed.len() / 2].to_vec(),
        ),
        (
            "complete zlib stream of half the rows",
            zlib(&raw[..raw.len() / 2]),
        ),
    ];
    for (label, data) in streams {
        let file = png_file(&[
            ihdr(16, 16, 8, 0, false),
            chunk(b"IDAT", &data),
            chunk(b"IEND", &[]),
        ]);
        let result = decode_both(&file, &DecodeLimits::default());
        assert_eq!(error_code(result), "corrupt_image", "{label}");
    }
    let interlaced_raw = raw_image_data(16, 16, 1, 8, &[9; 256], true);
    let half = zlib(&interlaced_raw[..interlaced_raw.len() / 2]);
    let file = png_file(&[
        ihdr(16, 16, 8, 0, true),
        chunk(b"IDAT", &half),
        chunk(b"IEND", &[]),
    ]);
    let result = decode_both(&file, &DecodeLimits::default());
    assert_eq!(error_code(result), "corrupt_image", "interlaced");
}

#[test]
fn zlib_stream_after_last_scanline_ignored() {
    let (file, raw) = gray8_png(16, 16);
    let limits = DecodeLimits::default();
    let expected = decode_both(&file, &limits).unwrap();
    let compressed = zlib(&raw);

    let mut bad_adler = compressed.clone();
    let last = bad_adler.len() - 1;
    bad_adler[last] ^= 0x55;
    let without_adler = compressed[..compressed.len() - 4].to_vec();
    // Far more extra rows than zune-png 0.5 allows for (4 bytes a row).
    let mut long_raw = raw.clone();
    long_raw.extend_from_slice(&[0; 4096]);
    let streams = [
        ("wrong Adler-32", bad_adler),
        ("no Adler-32", without_adler),
        ("4096 bytes of extra image data", zlib(&long_raw)),
    ];
    for (label, data) in streams {
        let variant = png_file(&[
            ihdr(16, 16, 8, 0, false),
            chunk(b"IDAT", &data),
            chunk(b"IEND", &[]),
        ]);
        let image =
            decode_both(&variant, &limits).unwrap_or_else(|error| panic!("{label}: {error}"));
        assert_eq!(image, expected, "{label}");
    }
}

#[test]
fn corrupt_deflate_data_corrupt() {
    let (_, raw) = gray8_png(16, 16);
    let mut compressed = zlib(&raw);
    // A deflate block header of type 3 (reserved) right after the zlib header.
    compressed[2] = 0b111;
    let file = png_file(&[
        ihdr(16, 16, 8, 0, false),
        chunk(b"IDAT", &compressed),
        chunk(b"IEND", &[]),
    ]);
    assert_eq!(
        error_code(decode_both(&file, &DecodeLimits::default())),
        "corrupt_image"
    );
}

/// Flips the byte at `position` and, when `fix_crc` is set, rewrites the CRC of the chunk
/// that contains it, so that the change reaches the decoders.
fn flip_byte(file: &[u8], position: usize, fix_crc: bool) -> Vec<u8> {
    let mut mutated = file.to_vec();
    mutated[position] ^= 0xa5;
    if !fix_crc {
        return mutated;
    }
    let mut offset = 8;
    while offset + 12 <= mutated.len() {
        let length = u32::from_be_bytes(mutated[offset..offset + 4].try_into().unwrap()) as usize;
        let end = offset + 12 + length;
        if end > mutated.len() {
            break;
        }
        if (offset + 8..end - 4).contains(&position) {
            let crc = crc32fast::hash(&mutated[offset + 4..end - 4]);
            mutated[end - 4..end].copy_from_slice(&crc.to_be_bytes());
            break;
        }
        offset = end;
    }
    mutated
}

#[test]
fn mutations_never_panic() {
    let inputs = [
        ("P02", case("P02_gray16_trns_64x64.png")),
        ("P04", case("P04_gray16_adam7_13x7.png")),
        ("P06", case("P06_palette_trns_all_zero_8x8.png")),
    ];
    let codes = [
        "unsupported_format",
        "corrupt_image",
        "truncated_image",
        "image_too_large",
    ];
    let limits = DecodeLimits::default();
    let mut rng = TestRng(2024);
    let mut mutation_count = 0;
    for (label, file) in &inputs {
        let mut mutations: Vec<(String, Vec<u8>)> = Vec::new();
        let step = (file.len() / 100).max(1);
        for length in (0..file.len()).step_by(step) {
            mutations.push((
                format!("{label} cut to {length} bytes"),
                file[..length].to_vec(),
            ));
        }
        for _ in 0..150 {
            let position = rng.below(file.len() as u64) as usize;
            let fix_crc = rng.below(2) == 0;
            mutations.push((
                format!("{label} byte {position} flipped, CRC fixed {fix_crc}"),
                flip_byte(file, position, fix_crc),
            ));
        }
        for (description, bytes) in mutations {
            mutation_count += 1;
            for decoder in BOTH {
                if let Err(error) = decode_png_with(decoder, &bytes, &limits) {
                    assert!(codes.contains(&error.code()), "{description}: {error}");
                    assert!(!error.to_string().is_empty(), "{description}");
                }
            }
        }
    }
    assert!(mutation_count >= 300, "only {mutation_count} mutations");
}

#[test]
fn mutations_same_outcome_both_decoders() {
    // Mutations inside chunk data with the CRC fixed reach the decoders, which must then
    // agree: the same pixels or the same error code.
    let samples: Vec<u16> = (0..40 * 9).map(|i| (i % 4) as u16).collect();
    let raw = raw_image_data(40, 9, 1, 2, &samples, true);
    let low_bit_interlaced = png_file(&[
        ihdr(40, 9, 2, 0, true),
        chunk(b"IDAT", &zlib(&raw)),
        chunk(b"IEND", &[]),
    ]);
    let inputs = [
        case("P02_gray16_trns_64x64.png"),
        case("P04_gray16_adam7_13x7.png"),
        case("P06_palette_trns_all_zero_8x8.png"),
        low_bit_interlaced,
    ];
    let limits = DecodeLimits::default();
    let mut rng = TestRng(99);
    for file in &inputs {
        for _ in 0..150 {
            let position = rng.below(file.len() as u64) as usize;
            let _ = decode_both(&flip_byte(file, position, true), &limits);
        }
    }
}
