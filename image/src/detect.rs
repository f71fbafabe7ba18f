//! Detectors: the interface the worker runs, and the built-in detectors.

use crate::decode::GrayImage;
use crate::resize::{fit_within, resize_gray8, scale_box};

/// A detection in full-resolution pixels. `x2` and `y2` are exclusive.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BoundingBox {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
    pub label: String,
    pub score: f32,
}

/// A detector that finds boxes in a decoded radiograph.
///
/// Implementations must be deterministic for a given image and seed, so that a redelivered
/// job gets the same boxes.
pub trait Detector: Send + Sync {
    /// Returns the detector's name, stored with each result and used as its `RFO_DETECTOR`
    /// value.
    fn name(&self) -> &'static str;
    /// Returns the version stored with each result.
    fn version(&self) -> &'static str;
    /// Returns the boxes found in `image`.
    ///
    /// `display` contains the 8-bit display values of the same pixels, and `seed` is the job
    /// id's 128 bits.
    fn detect(&self, image: &GrayImage, display: &[u8], seed: u128) -> Vec<BoundingBox>;
}

/// The reference deployment's placeholder: one box at a position drawn from the seed.
///
/// The box is a pure function of the seed and the image size. Each side is at least
/// [`RandomDetector::MIN_SIDE`] pixels, or the whole image side when the image is smaller.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomDetector;

impl RandomDetector {
    /// Minimum box side, in pixels, for images at least this large.
    pub const MIN_SIDE: u32 = 4;
    /// Label of every box.
    pub const LABEL: &'static str = "finding";
    /// Score of every box.
    pub const SCORE: f32 = 0.5;
}

impl Detector for RandomDetector {
    fn name(&self) -> &'static str {
        "random"
    }

    fn version(&self) -> &'static str {
        "1"
    }

    /// Returns one box, or none for an image with no pixels.
    fn detect(&self, image: &GrayImage, _display: &[u8], seed: u128) -> Vec<BoundingBox> {
        if image.width == 0 || image.height == 0 {
            return Vec::new();
        }
        let mut rng = SplitMix64::from_seed(seed);
        let (x1, x2) = random_span(&mut rng, image.width);
        let (y1, y2) = random_span(&mut rng, image.height);
        vec![BoundingBox {
            x1,
            y1,
            x2,
            y2,
            label: Self::LABEL.to_string(),
            score: Self::SCORE,
        }]
    }
}

/// A classical detector: the bounding box of the exposed region.
///
/// It works on a copy of the display image downscaled to at most [`Self::WORKING_SIDE`]
/// pixels a side. Otsu's threshold splits the pixels in two classes, and the class that
/// contains most of the image's outer ring is the background. The box spans the rows and
/// columns in which at least 2 % of the pixels are foreground, so that isolated specks
/// do not widen it, and is mapped back to full-resolution pixels, rounded outwards.
/// The score is the foreground share of the pixels inside the box.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExposureDetector;

impl ExposureDetector {
    /// Maximum side of the working copy, in pixels.
    pub const WORKING_SIDE: u32 = 256;
    /// Label of the box.
    pub const LABEL: &'static str = "exposed_region";
}

impl Detector for ExposureDetector {
    fn name(&self) -> &'static str {
        "exposure"
    }

    fn version(&self) -> &'static str {
        "1"
    }

    /// Returns one box, or none when the image is uniform, has no pixels, or `display`
    /// does not hold one value a pixel.
    fn detect(&self, image: &GrayImage, display: &[u8], _seed: u128) -> Vec<BoundingBox> {
        let (width, height) = (image.width, image.height);
        if width == 0 || height == 0 || display.len() != width as usize * height as usize {
            return Vec::new();
        }
        let (small_width, small_height) = fit_within(width, height, Self::WORKING_SIDE);
        let small = if (small_width, small_height) == (width, height) {
            display.to_vec()
        } else {
            match resize_gray8(width, height, display, small_width, small_height) {
                Ok(pixels) => pixels,
                Err(_) => return Vec::new(),
            }
        };
        let Some(found) = exposed_box(&small, small_width as usize, small_height as usize) else {
            return Vec::new();
        };
        scale_box(&found, (small_width, small_height), (width, height))
            .into_iter()
            .collect()
    }
}

/// Finds the exposed region's box in a small image, in its own pixels.
fn exposed_box(pixels: &[u8], width: usize, height: usize) -> Option<BoundingBox> {
    let mut histogram = [0u64; 256];
    for &value in pixels {
        histogram[usize::from(value)] += 1;
    }
    let threshold = otsu_threshold(&histogram)?;

    // The background is the class that contains most of the outer ring.
    let ring: Vec<u8> = (0..width)
        .flat_map(|x| [pixels[x], pixels[(height - 1) * width + x]])
        .chain((0..height).flat_map(|y| [pixels[y * width], pixels[y * width + width - 1]]))
        .collect();
    let bright_ring = ring.iter().filter(|&&value| value > threshold).count();
    let background_is_bright = bright_ring * 2 > ring.len();
    let is_foreground = |value: u8| (value > threshold) != background_is_bright;

    let mut row_counts = vec![0usize; height];
    let mut column_counts = vec![0usize; width];
    for (y, row) in pixels.chunks_exact(width).enumerate() {
        for (x, &value) in row.iter().enumerate() {
            if is_foreground(value) {
                row_counts[y] += 1;
                column_counts[x] += 1;
            }
        }
    }
    let (y1, y2) = dense_span(&row_counts, width)?;
    let (x1, x2) = dense_span(&column_counts, height)?;
    let inside: usize = (y1..y2)
        .map(|y| {
            pixels[y * width + x1..y * width + x2]
                .iter()
                .filter(|&&value| is_foreground(value))
                .count()
        })
        .sum();
    let area = (x2 - x1) * (y2 - y1);
    Some(BoundingBox {
        x1: x1 as u32,
        y1: y1 as u32,
        x2: x2 as u32,
        y2: y2 as u32,
        label: ExposureDetector::LABEL.to_string(),
        score: inside as f32 / area as f32,
    })
}

/// Returns the first and one past the last index whose count is at least 2 % of `line`
/// (and at least 1).
fn dense_span(counts: &[usize], line: usize) -> Option<(usize, usize)> {
    let minimum = (line / 50).max(1);
    let first = counts.iter().position(|&count| count >= minimum)?;
    let last = counts.iter().rposition(|&count| count >= minimum)?;
    Some((first, last + 1))
}

/// Returns Otsu's threshold: values at or below it form one class, values above the
/// other. Returns `None` for a histogram with fewer than two occupied values.
fn otsu_threshold(histogram: &[u64; 256]) -> Option<u8> {
    let total: u64 = histogram.iter().sum();
    let weighted_total: f64 = histogram
        .iter()
        .enumerate()
        .map(|(value, &count)| value as f64 * count as f64)
        .sum();
    let mut below_count = 0u64;
    let mut below_weighted = 0f64;
    let mut best: Option<(f64, u8)> = None;
    for (value, &count) in histogram.iter().enumerate().take(255) {
        below_count += count;
        below_weighted += value as f64 * count as f64;
        let above_count = total - below_count;
        if below_count == 0 || above_count == 0 {
            continue;
        }
        let below_mean = below_weighted / below_count as f64;
        let above_mean = (weighted_total - below_weighted) / above_count as f64;
        let difference = below_mean - above_mean;
        let between_variance = below_count as f64 * above_count as f64 * difference * difference;
        if best.is_none_or(|(variance, _)| between_variance > variance) {
            best = Some((between_variance, value as u8));
        }
    }
    best.map(|(_, threshold)| threshold)
}

/// Draws a span `start..end` inside `0..side` (`side` > 0) that is at least
/// `min(side, MIN_SIDE)` long and at most half the side, or the minimum when that is longer.
fn random_span(rng: &mut SplitMix64, side: u32) -> (u32, u32) {
    let min_length = side.min(RandomDetector::MIN_SIDE);
    let max_length = (side / 2).max(min_length);
    let length = min_length + rng.below(max_length - min_length + 1);
    let start = rng.below(side - length + 1);
    (start, start + length)
}

/// The SplitMix64 generator (Steele, Lea and Flood, 2014), small and statistically sound
/// enough for placing placeholder boxes.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Seeds the generator from 128 bits: the high half is mixed with one output of a
    /// generator seeded by the low half, so that every bit of the seed counts.
    fn from_seed(seed: u128) -> Self {
        let low = seed as u64;
        let high = (seed >> 64) as u64;
        let mut first = Self { state: low };
        Self {
            state: first.next_u64() ^ high,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a value in `0..bound`, by Lemire's multiply-shift (bias below 2^-32).
    fn below(&mut self, bound: u32) -> u32 {
        ((u64::from(bound) * (self.next_u64() >> 32)) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::GrayPixels;

    fn blank(width: u32, height: u32) -> GrayImage {
        GrayImage {
            width,
            height,
            pixels: GrayPixels::Eight(vec![0; (width * height) as usize]),
        }
    }

    fn assert_inside(found: &BoundingBox, width: u32, height: u32, context: &str) {
        assert!(found.x1 < found.x2, "{context}: {found:?}");
        assert!(found.y1 < found.y2, "{context}: {found:?}");
        assert!(found.x2 <= width, "{context}: {found:?}");
        assert!(found.y2 <= height, "{context}: {found:?}");
    }

    fn detect_one(width: u32, height: u32, seed: u128) -> BoundingBox {
        let image = blank(width, height);
        let display = vec![0; (width * height) as usize];
        let mut boxes = RandomDetector.detect(&image, &display, seed);
        assert_eq!(boxes.len(), 1);
        boxes.remove(0)
    }

    #[test]
    fn random_box_inside_image() {
        let sizes = [(1, 1), (13, 7), (2, 100), (640, 599), (2394, 3062)];
        for (width, height) in sizes {
            for seed in 0..200u128 {
                let seed = seed.wrapping_mul(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
                let found = detect_one(width, height, seed);
                let context = format!("{width} x {height}, seed {seed:x}");
                assert_inside(&found, width, height, &context);
                let min_width = width.min(RandomDetector::MIN_SIDE);
                let min_height = height.min(RandomDetector::MIN_SIDE);
                assert!(found.x2 - found.x1 >= min_width, "{context}: {found:?}");
                assert!(found.y2 - found.y1 >= min_height, "{context}: {found:?}");
            }
        }
    }

    #[test]
    fn random_box_label_and_score() {
        let found = detect_one(100, 100, 1);
        assert_eq!(found.label, "finding");
        assert_eq!(found.score, 0.5);
        assert_eq!(RandomDetector.name(), "random");
    }

    #[test]
    fn random_same_seed_same_box() {
        let seed = 0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b;
        assert_eq!(detect_one(1024, 768, seed), detect_one(1024, 768, seed));
    }

    #[test]
    fn random_seeds_give_different_boxes() {
        let boxes: Vec<BoundingBox> = (0..100u128)
            .map(|i| detect_one(1024, 1024, i << 64 | 0x7000))
            .collect();
        let corners: std::collections::HashSet<(u32, u32, u32, u32)> =
            boxes.iter().map(|b| (b.x1, b.y1, b.x2, b.y2)).collect();
        // Seeds differing only in the high half must also move the box.
        assert!(corners.len() >= 95, "only {} distinct boxes", corners.len());
    }

    #[test]
    fn random_tiny_image_whole() {
        // Sides below MIN_SIDE pixels get a box covering the whole side.
        for (width, height) in [(1, 1), (3, 2)] {
            let found = detect_one(width, height, 5);
            assert_eq!(
                (found.x1, found.y1, found.x2, found.y2),
                (0, 0, width, height)
            );
        }
    }

    #[test]
    fn random_empty_image_no_box() {
        let image = blank(0, 0);
        assert!(RandomDetector.detect(&image, &[], 1).is_empty());
    }

    fn rectangle_image(width: u32, height: u32, background: u8, foreground: u8) -> Vec<u8> {
        let mut display = vec![background; (width * height) as usize];
        for y in 40..160 {
            for x in 60..240 {
                display[(y * width + x) as usize] = foreground;
            }
        }
        display
    }

    #[test]
    fn exposure_finds_rectangle() {
        for (background, foreground) in [(10, 200), (230, 40)] {
            let (width, height) = (300, 200);
            let display = rectangle_image(width, height, background, foreground);
            let boxes = ExposureDetector.detect(&blank(width, height), &display, 0);
            assert_eq!(boxes.len(), 1, "background {background}");
            let found = &boxes[0];
            let context = format!("background {background}: {found:?}");
            // The working copy is 256 px wide, so edges may move by up to 2 pixels.
            assert!((57..=60).contains(&found.x1), "{context}");
            assert!((37..=40).contains(&found.y1), "{context}");
            assert!((240..=243).contains(&found.x2), "{context}");
            assert!((160..=163).contains(&found.y2), "{context}");
            assert!(found.score > 0.9, "{context}");
            assert_eq!(found.label, "exposed_region");
        }
    }

    #[test]
    fn exposure_ignores_specks() {
        let (width, height) = (200, 200);
        let mut display = vec![0u8; 40_000];
        for y in 50..150 {
            for x in 50..150 {
                display[y * 200 + x] = 180;
            }
        }
        display[5 * 200 + 5] = 255;
        let found = &ExposureDetector.detect(&blank(width, height), &display, 0)[0];
        assert_eq!((found.x1, found.y1, found.x2, found.y2), (50, 50, 150, 150));
    }

    #[test]
    fn exposure_uniform_no_box() {
        let display = vec![77; 64 * 64];
        assert!(
            ExposureDetector
                .detect(&blank(64, 64), &display, 0)
                .is_empty()
        );
    }

    #[test]
    fn exposure_sample_deterministic() {
        use crate::decode::{DecodeLimits, decode_png};
        use crate::test_support::read_shared;
        use crate::window::to_display_8bit;

        let bytes = read_shared("samples/png/derived-RG2-hip-gray16-raw10bit.png");
        let image = decode_png(&bytes, &DecodeLimits::default()).unwrap();
        let display = to_display_8bit(&image);
        let boxes = ExposureDetector.detect(&image, &display, 0);
        assert_eq!(boxes.len(), 1);
        let found = &boxes[0];
        assert_inside(found, image.width, image.height, "RG2 sample");
        let area = f64::from(found.x2 - found.x1) * f64::from(found.y2 - found.y1);
        let share = area / (f64::from(image.width) * f64::from(image.height));
        assert!(
            (0.1..=1.0).contains(&share),
            "box covers {share:.2} of the image"
        );
        assert_eq!(boxes, ExposureDetector.detect(&image, &display, 99));
    }

    #[test]
    fn exposure_tiny_images() {
        for (width, height) in [(1, 1), (13, 7), (2, 300)] {
            let display: Vec<u8> = (0..width * height).map(|i| (i * 37 % 256) as u8).collect();
            for found in ExposureDetector.detect(&blank(width, height), &display, 0) {
                assert_inside(&found, width, height, &format!("{width} x {height}"));
            }
        }
    }

    #[test]
    fn exposure_wrong_display_length() {
        assert!(ExposureDetector.detect(&blank(4, 4), &[0; 3], 0).is_empty());
    }
}
