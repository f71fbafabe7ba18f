//! Feeds arbitrary bytes through a job's CPU path: decoding with both PNG decoders, then
//! windowing, both detectors, the overlay and the preview.
//!
//! It fails on a panic, on the two decoders disagreeing (about the pixels, or about the
//! error code), and on an overlay or preview that does not decode back to the right size.
//!
//! Every chunk CRC is checked before decoding, so nearly every mutation of a valid file
//! would stop at the first damaged chunk. When the first input byte is odd, the target
//! therefore rewrites the CRC of every complete chunk before decoding, and the mutations
//! reach the image data and the decoders.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rfo_image::decode::{DecodeLimits, Decoder, decode_png_with};
use rfo_image::detect::{Detector, ExposureDetector, RandomDetector};
use rfo_image::overlay::{EncodeSettings, PREVIEW_MAX_SIDE, Rendered, render};

/// Limits below the production defaults, so that one input cannot take libFuzzer's whole
/// memory budget (16 million pixels of 16-bit RGBA is 128 MB of raw samples per decoder).
/// The largest sample radiograph, 2394 x 3062, is within them.
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 16_000_000,
    max_side: 8_192,
    max_ancillary_chunk_bytes: 1 << 20,
};

const SIGNATURE_LEN: usize = 8;

fuzz_target!(|data: &[u8]| {
    let fixed;
    let bytes = match data.first() {
        Some(first) if first % 2 == 1 => {
            fixed = with_valid_crcs(data);
            &fixed[..]
        }
        _ => data,
    };

    let from_png = decode_png_with(Decoder::Png, bytes, &LIMITS);
    let from_zune = decode_png_with(Decoder::ZunePng, bytes, &LIMITS);
    let image = match (from_png, from_zune) {
        (Ok(image), Ok(other)) => {
            assert!(image == other, "png and zune-png decoded different samples");
            image
        }
        (Err(error), Err(other)) => {
            assert_eq!(
                error.code(),
                other.code(),
                "png failed with `{error}`, zune-png with `{other}`"
            );
            return;
        }
        (Ok(_), Err(error)) => panic!("zune-png failed with `{error}`, png decoded the image"),
        (Err(error), Ok(_)) => panic!("png failed with `{error}`, zune-png decoded the image"),
    };

    let seed = u128::from(data.len() as u64);
    let detectors: [&dyn Detector; 2] = [&RandomDetector, &ExposureDetector];
    for detector in detectors {
        let rendered = render(image.clone(), detector, seed, &EncodeSettings::default())
            .expect("a decoded image always renders");
        check_rendered(&rendered);
    }
});

/// Checks that the overlay has the source's size, that the preview is the source scaled
/// down to the preview limit (or the source's size when it already fits), and that every
/// box is non-empty and lies within the image.
fn check_rendered(rendered: &Rendered) {
    let size = |encoded: &[u8]| {
        let decoder = png::Decoder::new(std::io::Cursor::new(encoded));
        let reader = decoder
            .read_info()
            .expect("the encoded PNG has a valid header");
        (reader.info().width, reader.info().height)
    };
    assert_eq!(size(&rendered.overlay), (rendered.width, rendered.height));
    let (width, height) = (rendered.width, rendered.height);
    let preview = size(&rendered.preview);
    assert!(preview.0 >= 1, "preview width {}", preview.0);
    assert!(preview.1 >= 1, "preview height {}", preview.1);
    assert!(
        preview.0 <= width,
        "preview width {} over {width}",
        preview.0
    );
    assert!(
        preview.1 <= height,
        "preview height {} over {height}",
        preview.1
    );
    assert!(preview.0.max(preview.1) <= PREVIEW_MAX_SIDE || preview == (width, height));
    for found in &rendered.boxes {
        assert!(found.x1 < found.x2, "empty box {found:?}");
        assert!(found.y1 < found.y2, "empty box {found:?}");
        assert!(
            found.x2 <= width,
            "box {found:?} outside a width of {width}"
        );
        assert!(
            found.y2 <= height,
            "box {found:?} outside a height of {height}"
        );
    }
}

/// Returns `data` with the CRC of every complete chunk after the signature recomputed.
fn with_valid_crcs(data: &[u8]) -> Vec<u8> {
    let mut fixed = data.to_vec();
    let mut offset = SIGNATURE_LEN;
    while let Some(header) = fixed.get(offset..offset + 8) {
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(crc_end) = (offset + 12).checked_add(length) else {
            break;
        };
        if crc_end > fixed.len() {
            break;
        }
        let crc = crc32fast::hash(&fixed[offset + 4..crc_end - 4]);
        fixed[crc_end - 4..crc_end].copy_from_slice(&crc.to_be_bytes());
        offset = crc_end;
    }
    fixed
}
