//! Display windowing of 16-bit radiographs to 8 bits.
//!
//! 16-bit radiographs often use only 10, 12 or 15 bits, so dropping the low byte leaves an
//! almost black image. The window instead runs from the 0.5th to the 99.5th percentile of
//! the image's own values, mapped linearly to 0..=255. Percentiles rather than the minimum
//! and maximum keep a few extreme pixels (burned-in labels, dead or saturated detector
//! elements) from squeezing the anatomy into a narrow band of gray levels.

use crate::decode::{GrayImage, GrayPixels};

/// Share of the pixels clipped at each end of the window, in parts per thousand.
const CLIPPED_PER_MILLE: u64 = 5;

/// Maps an image to 8-bit display values, one a pixel, row by row.
///
/// 8-bit images are returned unchanged. 16-bit images are windowed as the module
/// documentation describes. An image whose values all fall in one level of the window (a
/// flat image) keeps its absolute level instead: each value is shifted right by 8 bits.
pub fn to_display_8bit(img: &GrayImage) -> Vec<u8> {
    match &img.pixels {
        GrayPixels::Eight(samples) => samples.clone(),
        GrayPixels::Sixteen(samples) => window_sixteen(samples),
    }
}

fn window_sixteen(samples: &[u16]) -> Vec<u8> {
    if samples.is_empty() {
        return Vec::new();
    }
    let mut histogram = vec![0u64; 1 << 16];
    for &value in samples {
        histogram[usize::from(value)] += 1;
    }
    let (low, high) = percentile_window(&histogram, samples.len() as u64);
    let table = window_table(low, high);
    samples
        .iter()
        .map(|&value| table[usize::from(value)])
        .collect()
}

/// Returns the values at the lower and upper clipping percentiles of a histogram of
/// `count` samples.
fn percentile_window(histogram: &[u64], count: u64) -> (u16, u16) {
    let clipped = count * CLIPPED_PER_MILLE / 1000;
    // Zero-based ranks in sorted order: the low end skips `clipped` samples, and so does
    // the high end.
    let low_rank = clipped;
    let high_rank = count - 1 - clipped;
    (
        value_at_rank(histogram, low_rank),
        value_at_rank(histogram, high_rank),
    )
}

/// Returns the smallest value whose cumulative count exceeds `rank`.
fn value_at_rank(histogram: &[u64], rank: u64) -> u16 {
    let mut cumulative = 0;
    for (value, &count) in histogram.iter().enumerate() {
        cumulative += count;
        if cumulative > rank {
            return value as u16;
        }
    }
    u16::MAX
}

/// Builds the lookup table from every 16-bit value to its display value.
fn window_table(low: u16, high: u16) -> Vec<u8> {
    if low >= high {
        return (0..=u16::MAX).map(|value| (value >> 8) as u8).collect();
    }
    let (low, high) = (u32::from(low), u32::from(high));
    let span = high - low;
    (0..=u32::from(u16::MAX))
        .map(|value| {
            let clamped = value.clamp(low, high);
            ((clamped - low) * 255 + span / 2) / span
        })
        .map(|level| level as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeLimits, decode_png};
    use crate::test_support::read_shared;

    fn sixteen_bit(width: u32, height: u32, samples: Vec<u16>) -> GrayImage {
        GrayImage {
            width,
            height,
            pixels: GrayPixels::Sixteen(samples),
        }
    }

    fn mean(values: &[u8]) -> f64 {
        values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64
    }

    #[test]
    fn eight_bit_unchanged() {
        let bytes = read_shared("samples/png/nih-cxr14-00000001_000-512px.png");
        let image = decode_png(&bytes, &DecodeLimits::default()).unwrap();
        let GrayPixels::Eight(samples) = &image.pixels else {
            panic!("the sample is 8-bit gray");
        };
        assert!(to_display_8bit(&image) == *samples);
    }

    #[test]
    fn derived_samples_not_black() {
        let names = [
            "derived-GH133-mammo-gray16-shl4.png",
            "derived-RG1-chest-gray16-inv15bit.png",
            "derived-RG2-hip-gray16-raw10bit.png",
        ];
        for name in names {
            let bytes = read_shared(&format!("samples/png/{name}"));
            let image = decode_png(&bytes, &DecodeLimits::default()).unwrap();
            let display = to_display_8bit(&image);
            assert_eq!(
                display.len(),
                (image.width * image.height) as usize,
                "{name}"
            );
            let display_mean = mean(&display);
            assert!(
                (30.0..=225.0).contains(&display_mean),
                "{name}: mean display value {display_mean:.1}"
            );
            let mut levels = display.clone();
            levels.sort_unstable();
            levels.dedup();
            assert!(
                levels.len() > 200,
                "{name}: only {} gray levels",
                levels.len()
            );
        }
    }

    #[test]
    fn ten_bit_sample_black_without_window() {
        // The premise of windowing: the 10-bit sample (values 0..893) is black after >> 8.
        let bytes = read_shared("samples/png/derived-RG2-hip-gray16-raw10bit.png");
        let image = decode_png(&bytes, &DecodeLimits::default()).unwrap();
        let GrayPixels::Sixteen(samples) = &image.pixels else {
            panic!("the sample is 16-bit gray");
        };
        let shifted: Vec<u8> = samples.iter().map(|&v| (v >> 8) as u8).collect();
        assert!(mean(&shifted) < 5.0);
    }

    #[test]
    fn ramp_spans_full_range() {
        let samples: Vec<u16> = (0..=893).collect();
        let display = to_display_8bit(&sixteen_bit(894, 1, samples));
        assert_eq!(display.first(), Some(&0));
        assert_eq!(display.last(), Some(&255));
        assert!(
            display.windows(2).all(|pair| pair[0] <= pair[1]),
            "not monotonic"
        );
    }

    #[test]
    fn outliers_clipped() {
        // 99.9 % of the pixels lie in 1000..2000 and 0.1 % are saturated at 65535.
        let mut samples: Vec<u16> = (0..9990).map(|i| 1000 + (i % 1000) as u16).collect();
        samples.extend(std::iter::repeat_n(u16::MAX, 10));
        let display = to_display_8bit(&sixteen_bit(10_000, 1, samples));
        // The middle of the occupied range must land near mid-gray, not near black.
        let middle = display[500];
        assert!((110..=145).contains(&middle), "1500 maps to {middle}");
        assert_eq!(display[9999], 255);
    }

    #[test]
    fn flat_image_keeps_level() {
        let display = to_display_8bit(&sixteen_bit(4, 4, vec![40_000; 16]));
        assert_eq!(display, vec![(40_000u16 >> 8) as u8; 16]);
    }

    #[test]
    fn empty_image_empty_display() {
        assert!(to_display_8bit(&sixteen_bit(0, 0, Vec::new())).is_empty());
    }

    #[test]
    fn percentile_ranks() {
        let mut histogram = vec![0u64; 1 << 16];
        // 1000 samples: 5 at 10, 990 at 500, 5 at 60000.
        histogram[10] = 5;
        histogram[500] = 990;
        histogram[60_000] = 5;
        assert_eq!(percentile_window(&histogram, 1000), (500, 500));
        histogram[10] = 6;
        histogram[500] = 988;
        histogram[60_000] = 6;
        assert_eq!(percentile_window(&histogram, 1000), (10, 60_000));
    }
}
