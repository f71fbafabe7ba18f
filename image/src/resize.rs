//! Downscaling of 8-bit gray images with fast_image_resize, and mapping of boxes between
//! resolutions.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::detect::BoundingBox;

/// Returns the size that fits `width` x `height` within `max_side` a side while keeping
/// the aspect ratio, rounded to whole pixels, each side at least 1. An image that already
/// fits keeps its size.
pub fn fit_within(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= max_side {
        return (width, height);
    }
    let scale = |side: u32| {
        let scaled =
            (u64::from(side) * u64::from(max_side) + u64::from(longest) / 2) / u64::from(longest);
        (scaled as u32).max(1)
    };
    (scale(width), scale(height))
}

/// Resizes a row-major 8-bit gray image with a bilinear (triangle) convolution, whose
/// support grows with the scale factor, so that every source pixel contributes.
pub fn resize_gray8(
    width: u32,
    height: u32,
    pixels: &[u8],
    new_width: u32,
    new_height: u32,
) -> Result<Vec<u8>, String> {
    let source = ImageRef::new(width, height, pixels, PixelType::U8)
        .map_err(|error| format!("invalid source image: {error}"))?;
    let mut destination = Image::new(new_width, new_height, PixelType::U8);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&source, &mut destination, &options)
        .map_err(|error| error.to_string())?;
    Ok(destination.into_vec())
}

/// Maps a box from an image of size `from` to one of size `to`, rounding outwards so that
/// the mapped box covers at least the same area. Returns `None` when the box lies outside
/// the source image or `from` has an empty side.
pub fn scale_box(found: &BoundingBox, from: (u32, u32), to: (u32, u32)) -> Option<BoundingBox> {
    let (x1, x2) = scale_span(found.x1, found.x2, from.0, to.0)?;
    let (y1, y2) = scale_span(found.y1, found.y2, from.1, to.1)?;
    Some(BoundingBox {
        x1,
        y1,
        x2,
        y2,
        label: found.label.clone(),
        score: found.score,
    })
}

/// Maps `start..end` (exclusive) of a side `from` long to a side `to` long, clamped to
/// the side and at least one pixel long.
fn scale_span(start: u32, end: u32, from: u32, to: u32) -> Option<(u32, u32)> {
    let end = end.min(from);
    if start >= end || to == 0 {
        return None;
    }
    let (from64, to64) = (u64::from(from), u64::from(to));
    let mapped_start = (u64::from(start) * to64 / from64) as u32;
    let mapped_end = (u64::from(end) * to64).div_ceil(from64) as u32;
    let mapped_end = mapped_end.clamp(mapped_start + 1, to);
    let mapped_start = mapped_start.min(mapped_end - 1);
    Some((mapped_start, mapped_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(x1: u32, y1: u32, x2: u32, y2: u32) -> BoundingBox {
        BoundingBox {
            x1,
            y1,
            x2,
            y2,
            label: "finding".to_string(),
            score: 0.5,
        }
    }

    #[test]
    fn fit_keeps_aspect() {
        assert_eq!(fit_within(2394, 3062, 256), (200, 256));
        assert_eq!(fit_within(3062, 2394, 256), (256, 200));
        assert_eq!(fit_within(100, 50, 256), (100, 50));
        assert_eq!(fit_within(10_000, 1, 256), (256, 1));
    }

    #[test]
    fn scale_box_rounds_outwards() {
        let mapped = scale_box(&boxed(10, 10, 21, 21), (100, 100), (10, 10)).unwrap();
        assert_eq!((mapped.x1, mapped.y1, mapped.x2, mapped.y2), (1, 1, 3, 3));
        let back = scale_box(&mapped, (10, 10), (100, 100)).unwrap();
        assert_eq!((back.x1, back.y1, back.x2, back.y2), (10, 10, 30, 30));
    }

    #[test]
    fn scale_box_tiny_stays_visible() {
        let mapped = scale_box(&boxed(99, 0, 100, 1), (100, 100), (10, 10)).unwrap();
        assert_eq!((mapped.x1, mapped.y1, mapped.x2, mapped.y2), (9, 0, 10, 1));
    }

    #[test]
    fn scale_box_outside_none() {
        assert!(scale_box(&boxed(120, 0, 130, 5), (100, 100), (10, 10)).is_none());
        assert!(scale_box(&boxed(5, 5, 5, 9), (100, 100), (10, 10)).is_none());
    }

    #[test]
    fn resize_averages() {
        // A 4 x 1 image of 0, 0, 200, 200 halves to about 0 and 200.
        let small = resize_gray8(4, 1, &[0, 0, 200, 200], 2, 1).unwrap();
        assert_eq!(small.len(), 2);
        assert!(small[0] < 40, "{small:?}");
        assert!(small[1] > 160, "{small:?}");
    }
}
