//! Reduction of decoded samples to one luminance channel.
//!
//! Colour becomes luma with the ITU-R BT.601 weights (0.299 R + 0.587 G + 0.114 B, the
//! weights of Pillow's `convert("L")`), in 16-bit fixed point, rounded to nearest. The
//! weights sum to exactly 65536, so a pixel with R = G = B keeps its value. Alpha samples
//! are dropped.

/// BT.601 weights scaled by 2^16: 19595 + 38470 + 7471 = 65536.
const RED_WEIGHT: u32 = 19595;
const GREEN_WEIGHT: u32 = 38470;
const BLUE_WEIGHT: u32 = 7471;
const ROUNDING: u32 = 1 << 15;

pub(super) fn luma8(red: u8, green: u8, blue: u8) -> u8 {
    let sum = RED_WEIGHT * u32::from(red)
        + GREEN_WEIGHT * u32::from(green)
        + BLUE_WEIGHT * u32::from(blue)
        + ROUNDING;
    // The sum is at most 255 * 65536 + 32768, so the shifted value fits in a u8.
    (sum >> 16) as u8
}

pub(super) fn luma16(red: u16, green: u16, blue: u16) -> u16 {
    // At most 65535 * 65536 + 32768 = 4_294_934_528, which still fits in a u32.
    let sum = RED_WEIGHT * u32::from(red)
        + GREEN_WEIGHT * u32::from(green)
        + BLUE_WEIGHT * u32::from(blue)
        + ROUNDING;
    (sum >> 16) as u16
}

/// Reduces interleaved 8-bit samples with `channels` samples a pixel (1 to 4) to luminance.
pub(super) fn gray8_from_samples(samples: &[u8], channels: usize) -> Vec<u8> {
    match channels {
        1 => samples.to_vec(),
        2 => samples.chunks_exact(2).map(|pixel| pixel[0]).collect(),
        _ => samples
            .chunks_exact(channels)
            .map(|pixel| luma8(pixel[0], pixel[1], pixel[2]))
            .collect(),
    }
}

/// Reduces interleaved 16-bit samples to luminance, like [`gray8_from_samples`].
pub(super) fn gray16_from_samples(samples: &[u16], channels: usize) -> Vec<u16> {
    match channels {
        1 => samples.to_vec(),
        2 => samples.chunks_exact(2).map(|pixel| pixel[0]).collect(),
        _ => samples
            .chunks_exact(channels)
            .map(|pixel| luma16(pixel[0], pixel[1], pixel[2]))
            .collect(),
    }
}

/// Reduces interleaved big-endian 16-bit samples, as PNG stores them, to luminance.
pub(super) fn gray16_from_be_bytes(bytes: &[u8], channels: usize) -> Vec<u16> {
    let sample =
        |pixel: &[u8], index: usize| u16::from_be_bytes([pixel[2 * index], pixel[2 * index + 1]]);
    match channels {
        1 | 2 => bytes
            .chunks_exact(2 * channels)
            .map(|pixel| sample(pixel, 0))
            .collect(),
        _ => bytes
            .chunks_exact(2 * channels)
            .map(|pixel| luma16(sample(pixel, 0), sample(pixel, 1), sample(pixel, 2)))
            .collect(),
    }
}

/// Unpacks rows of 1-, 2-, 4- or 8-bit values and maps each value through `table`.
///
/// `rows` contains `height` rows of `stride` bytes each, with the first value of a row in
/// the most significant bits of its first byte, as PNG packs them. `table` has an entry for
/// every possible value (2^depth entries or more).
pub(super) fn unpack_rows(
    rows: &[u8],
    width: usize,
    stride: usize,
    depth: u8,
    table: &[u8; 256],
) -> Vec<u8> {
    let height = rows.len() / stride;
    let mut out = Vec::with_capacity(width * height);
    if depth == 8 {
        for row in rows.chunks_exact(stride) {
            out.extend(row[..width].iter().map(|&value| table[usize::from(value)]));
        }
        return out;
    }
    let values_per_byte = usize::from(8 / depth);
    let mask = (1u8 << depth) - 1;
    for row in rows.chunks_exact(stride) {
        for x in 0..width {
            let byte = row[x / values_per_byte];
            let shift = 8 - depth as usize * (x % values_per_byte + 1);
            out.push(table[usize::from((byte >> shift) & mask)]);
        }
    }
    out
}

/// Returns the table that scales a gray value of `depth` bits (1, 2, 4 or 8) to 0..=255.
pub(super) fn gray_scale_table(depth: u8) -> [u8; 256] {
    let max_value = (1u32 << depth) - 1;
    let mut table = [0u8; 256];
    for (value, entry) in table.iter_mut().enumerate().take(max_value as usize + 1) {
        *entry = (value as u32 * 255 / max_value) as u8;
    }
    table
}

/// Returns the luminance of each palette entry. Indices past the palette's end map to 0,
/// as zune-png 0.5 does when it expands them to RGB (0, 0, 0).
pub(super) fn palette_luma_table(palette: &[u8]) -> [u8; 256] {
    let mut table = [0u8; 256];
    for (entry, rgb) in table.iter_mut().zip(palette.chunks_exact(3)) {
        *entry = luma8(rgb[0], rgb[1], rgb[2]);
    }
    table
}
