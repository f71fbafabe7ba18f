//! Overlay rendering: the radiograph in gray with the boxes outlined in colour, encoded as
//! an 8-bit palette PNG.
//!
//! Palette entries 0..=254 are gray levels, and entry 255 is the box colour, so one byte a
//! pixel carries both, which encodes far faster than RGB. Display value `v` becomes index
//! `round(v * 254 / 255)`. The PNG contains only IHDR, PLTE, IDAT and IEND: no text, time or
//! EXIF chunk, since those can carry patient data.

use crate::decode::GrayImage;
use crate::detect::{BoundingBox, Detector};
use crate::resize::{fit_within, resize_gray8, scale_box};
use crate::window::to_display_8bit;

/// Maximum width and height of the preview written beside each overlay, in pixels.
pub const PREVIEW_MAX_SIDE: u32 = 256;

/// Palette index of the box outline.
pub const BOX_INDEX: u8 = 255;
/// Colour of the box outline, RGB.
pub const BOX_COLOR: [u8; 3] = [255, 0, 0];

/// PNG encoder settings of the full-resolution overlay.
#[derive(Debug, Clone, Copy)]
pub struct EncodeSettings {
    pub compression: png::Compression,
    pub filter: png::Filter,
}

impl Default for EncodeSettings {
    /// Returns `Fast` compression with the `Up` filter. By the criterion bench in
    /// bench/benches/image.rs it takes 5 to 6 ms on the largest samples and 40 to 45 ms on
    /// the synthetic radiographs of production size. Its files are within 8 % of those of
    /// `Fast` with `Adaptive`, which takes 14 to 74 % longer. `Balanced` takes 29 to 64
    /// times as long for files at most 19 % smaller.
    fn default() -> Self {
        Self {
            compression: png::Compression::Fast,
            filter: png::Filter::Up,
        }
    }
}

/// Failure to render an overlay or a preview.
#[derive(thiserror::Error, Debug)]
pub enum OverlayError {
    #[error("invalid image size {width} x {height}: both sides must be at least 1 pixel")]
    EmptyImage { width: u32, height: u32 },
    #[error(
        "the display buffer contains {actual} values, but a {width} x {height} image needs {expected}"
    )]
    DisplayLength {
        width: u32,
        height: u32,
        expected: usize,
        actual: usize,
    },
    #[error("invalid preview size limit 0: the longest side must be at least 1 pixel")]
    EmptyPreview,
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
    #[error("downscaling the preview failed: {0}")]
    Resize(String),
}

/// The encoded images of a successful job.
#[derive(Debug)]
pub struct Rendered {
    pub overlay: Vec<u8>,
    pub preview: Vec<u8>,
    pub boxes: Vec<BoundingBox>,
    pub width: u32,
    pub height: u32,
}

/// Runs every step of a job after decoding: windows `image` to 8 bits, runs `detector`
/// with `seed`, and encodes the overlay with `settings` and the preview.
///
/// Consumes the image so that its samples are freed as soon as the display copy exists.
pub fn render(
    image: GrayImage,
    detector: &dyn Detector,
    seed: u128,
    settings: &EncodeSettings,
) -> Result<Rendered, OverlayError> {
    let display = to_display_8bit(&image);
    let boxes = detector.detect(&image, &display, seed);
    let (width, height) = (image.width, image.height);
    drop(image);
    let overlay = render_overlay(width, height, &display, &boxes, settings)?;
    let preview = render_preview(width, height, &display, &boxes, PREVIEW_MAX_SIDE)?;
    Ok(Rendered {
        overlay,
        preview,
        boxes,
        width,
        height,
    })
}

/// Returns the outline thickness for an image: 1/256 of its shorter side, at least 2 pixels.
pub fn line_thickness(width: u32, height: u32) -> u32 {
    (width.min(height) / 256).max(2)
}

/// Renders the full-resolution overlay PNG of `display` (8-bit, row-major, `width` x
/// `height`) with the outline of every box.
///
/// Boxes are clipped to the image, outlines are drawn inside each box, and a box that lies
/// wholly outside the image is skipped.
pub fn render_overlay(
    width: u32,
    height: u32,
    display: &[u8],
    boxes: &[BoundingBox],
    settings: &EncodeSettings,
) -> Result<Vec<u8>, OverlayError> {
    let indices = draw_overlay(width, height, display, boxes)?;
    encode_indexed(width, height, &indices, settings)
}

/// Maps `display` to palette indices and draws the outline of every box, as
/// [`render_overlay`] does before encoding. Returns one index a pixel.
pub fn draw_overlay(
    width: u32,
    height: u32,
    display: &[u8],
    boxes: &[BoundingBox],
) -> Result<Vec<u8>, OverlayError> {
    check_display(width, height, display)?;
    let mut indices = palette_indices(display);
    let thickness = line_thickness(width, height);
    for found in boxes {
        draw_outline(&mut indices, width, height, found, thickness);
    }
    Ok(indices)
}

/// Renders a small overlay PNG whose longest side is at most `max_side` pixels.
///
/// The display image is downscaled with fast_image_resize, and the boxes are mapped to the
/// preview, rounded outwards. An image that already fits keeps its size.
pub fn render_preview(
    width: u32,
    height: u32,
    display: &[u8],
    boxes: &[BoundingBox],
    max_side: u32,
) -> Result<Vec<u8>, OverlayError> {
    check_display(width, height, display)?;
    if max_side == 0 {
        return Err(OverlayError::EmptyPreview);
    }
    let (preview_width, preview_height) = fit_within(width, height, max_side);
    if (preview_width, preview_height) == (width, height) {
        return render_overlay(width, height, display, boxes, &EncodeSettings::default());
    }
    let small = resize_gray8(width, height, display, preview_width, preview_height)
        .map_err(OverlayError::Resize)?;
    let scaled: Vec<BoundingBox> = boxes
        .iter()
        .filter_map(|found| scale_box(found, (width, height), (preview_width, preview_height)))
        .collect();
    render_overlay(
        preview_width,
        preview_height,
        &small,
        &scaled,
        &EncodeSettings::default(),
    )
}

fn check_display(width: u32, height: u32, display: &[u8]) -> Result<(), OverlayError> {
    if width == 0 || height == 0 {
        return Err(OverlayError::EmptyImage { width, height });
    }
    let expected = width as usize * height as usize;
    if display.len() != expected {
        return Err(OverlayError::DisplayLength {
            width,
            height,
            expected,
            actual: display.len(),
        });
    }
    Ok(())
}

/// Maps display values 0..=255 to the gray palette indices 0..=254.
fn palette_indices(display: &[u8]) -> Vec<u8> {
    let mut table = [0u8; 256];
    for (value, index) in table.iter_mut().enumerate() {
        *index = ((value * 254 + 127) / 255) as u8;
    }
    display
        .iter()
        .map(|&value| table[usize::from(value)])
        .collect()
}

/// Returns the palette: 255 gray levels, then the box colour.
fn palette() -> Vec<u8> {
    let mut entries = Vec::with_capacity(256 * 3);
    for index in 0..255u32 {
        let gray = ((index * 255 + 127) / 254) as u8;
        entries.extend_from_slice(&[gray, gray, gray]);
    }
    entries.extend_from_slice(&BOX_COLOR);
    entries
}

/// Sets the pixels of the box's outline, `thickness` pixels wide inside the box, to
/// [`BOX_INDEX`].
fn draw_outline(indices: &mut [u8], width: u32, height: u32, found: &BoundingBox, thickness: u32) {
    let (x1, x2) = (found.x1.min(width), found.x2.min(width));
    let (y1, y2) = (found.y1.min(height), found.y2.min(height));
    if x1 >= x2 || y1 >= y2 {
        return;
    }
    let band_x = thickness.min(x2 - x1);
    let band_y = thickness.min(y2 - y1);
    let row_length = width as usize;
    let (x1, x2, band_x) = (x1 as usize, x2 as usize, band_x as usize);
    for y in y1..y2 {
        let row = &mut indices[y as usize * row_length..][..row_length];
        let in_horizontal_band = y < y1 + band_y || y >= y2 - band_y;
        if in_horizontal_band {
            row[x1..x2].fill(BOX_INDEX);
        } else {
            row[x1..x1 + band_x].fill(BOX_INDEX);
            row[x2 - band_x..x2].fill(BOX_INDEX);
        }
    }
}

/// Encodes palette indices from [`draw_overlay`] as the overlay PNG: IHDR, PLTE, IDAT and IEND.
pub fn encode_indexed(
    width: u32,
    height: u32,
    indices: &[u8],
    settings: &EncodeSettings,
) -> Result<Vec<u8>, OverlayError> {
    let mut out = Vec::with_capacity(indices.len() / 2 + 1024);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette());
    encoder.set_compression(settings.compression);
    // set_compression also picks a filter, so the chosen filter is set after it.
    encoder.set_filter(settings.filter);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(indices)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeLimits, decode_png};
    use crate::test_support::{chunk_types, read_shared};
    use crate::window::to_display_8bit;

    /// Decodes an overlay with the png crate into palette indices and the palette.
    fn decode_indexed(png_bytes: &[u8]) -> (u32, u32, Vec<u8>, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().expect("overlay header");
        let mut indices = vec![0; reader.output_buffer_size().expect("buffer size")];
        let output = reader.next_frame(&mut indices).expect("overlay image data");
        assert_eq!(output.color_type, png::ColorType::Indexed);
        assert_eq!(output.bit_depth, png::BitDepth::Eight);
        let palette = reader.info().palette.as_deref().expect("palette").to_vec();
        (output.width, output.height, indices, palette)
    }

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

    fn gradient(width: u32, height: u32) -> Vec<u8> {
        (0..width * height).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn overlay_sample_round_trip() {
        let bytes = read_shared("samples/png/mhh-covid-006f3a8a-640px.png");
        let image = decode_png(&bytes, &DecodeLimits::default()).unwrap();
        let display = to_display_8bit(&image);
        let found = boxed(100, 50, 400, 300);
        let overlay = render_overlay(
            image.width,
            image.height,
            &display,
            std::slice::from_ref(&found),
            &EncodeSettings::default(),
        )
        .unwrap();
        let (width, height, indices, palette) = decode_indexed(&overlay);
        assert_eq!((width, height), (640, 599));
        assert_eq!(palette.len(), 256 * 3);
        assert_eq!(&palette[255 * 3..], [255, 0, 0], "box colour");

        let at = |x: u32, y: u32| indices[(y * width + x) as usize];
        let thickness = line_thickness(width, height);
        assert_eq!(thickness, 2);
        for x in found.x1..found.x2 {
            assert_eq!(at(x, found.y1), BOX_INDEX, "top edge at x {x}");
            assert_eq!(at(x, found.y2 - 1), BOX_INDEX, "bottom edge at x {x}");
        }
        for y in found.y1..found.y2 {
            assert_eq!(at(found.x1, y), BOX_INDEX, "left edge at y {y}");
            assert_eq!(
                at(found.x1 + thickness - 1, y),
                BOX_INDEX,
                "left band at y {y}"
            );
            assert_eq!(at(found.x2 - 1, y), BOX_INDEX, "right edge at y {y}");
        }
        // Inside and outside the outline the gray image is unchanged.
        let expected_index = |x: u32, y: u32| {
            let value = usize::from(display[(y * width + x) as usize]);
            ((value * 254 + 127) / 255) as u8
        };
        for (x, y) in [
            (250, 175),
            (10, 10),
            (639, 598),
            (found.x1 + thickness, 175),
        ] {
            assert_eq!(at(x, y), expected_index(x, y), "pixel ({x}, {y})");
        }
        assert!(indices.iter().filter(|&&i| i == BOX_INDEX).count() < 5000);
    }

    #[test]
    fn overlay_palette_grays() {
        let display: Vec<u8> = (0..=255).collect();
        let overlay = render_overlay(256, 1, &display, &[], &EncodeSettings::default()).unwrap();
        let (_, _, indices, palette) = decode_indexed(&overlay);
        for (value, &index) in indices.iter().enumerate() {
            let expected_index = (value as f64 * 254.0 / 255.0).round() as u8;
            assert_eq!(index, expected_index, "index of display value {value}");
            let gray = &palette[usize::from(index) * 3..][..3];
            assert_eq!(gray[0], gray[1], "palette entry {index}");
            assert_eq!(gray[1], gray[2], "palette entry {index}");
            assert!(
                gray[0].abs_diff(value as u8) <= 1,
                "value {value} shows as {gray:?}"
            );
        }
    }

    #[test]
    fn overlay_only_critical_chunks() {
        // The source sample has tIME and tEXt chunks, which must not reach the overlay.
        let bytes = read_shared("samples/png/nih-cxr14-00000001_000-512px.png");
        let image = decode_png(&bytes, &DecodeLimits::default()).unwrap();
        let display = to_display_8bit(&image);
        let overlay = render_overlay(
            image.width,
            image.height,
            &display,
            &[boxed(0, 0, 10, 10)],
            &EncodeSettings::default(),
        )
        .unwrap();
        let mut types = chunk_types(&overlay);
        types.dedup();
        assert_eq!(types, ["IHDR", "PLTE", "IDAT", "IEND"]);
    }

    #[test]
    fn overlay_boxes_clipped() {
        let display = gradient(20, 10);
        let boxes = [
            boxed(15, 5, 40, 30),
            boxed(50, 50, 60, 60),
            boxed(3, 3, 4, 4),
        ];
        let overlay = render_overlay(20, 10, &display, &boxes, &EncodeSettings::default()).unwrap();
        let (_, _, indices, _) = decode_indexed(&overlay);
        let at = |x: usize, y: usize| indices[y * 20 + x];
        assert_eq!(at(19, 9), BOX_INDEX, "clipped box corner");
        assert_eq!(at(15, 9), BOX_INDEX, "clipped box bottom band");
        assert_eq!(at(3, 3), BOX_INDEX, "one-pixel box");
        assert_ne!(at(10, 2), BOX_INDEX, "pixel outside every box");
    }

    #[test]
    fn overlay_thick_lines_large_image() {
        assert_eq!(line_thickness(2394, 3062), 9);
        assert_eq!(line_thickness(13, 7), 2);
        let display = vec![128; 1024 * 1024];
        let found = boxed(100, 100, 900, 900);
        let overlay =
            render_overlay(1024, 1024, &display, &[found], &EncodeSettings::default()).unwrap();
        let (_, _, indices, _) = decode_indexed(&overlay);
        let at = |x: usize, y: usize| indices[y * 1024 + x];
        assert_eq!(at(103, 500), BOX_INDEX, "inside the 4-pixel left band");
        assert_ne!(at(104, 500), BOX_INDEX, "just inside the left band");
        assert_ne!(at(99, 500), BOX_INDEX, "just outside the box");
    }

    #[test]
    fn overlay_rejects_bad_display() {
        let result = render_overlay(4, 4, &[0; 15], &[], &EncodeSettings::default());
        assert!(matches!(
            result,
            Err(OverlayError::DisplayLength {
                expected: 16,
                actual: 15,
                ..
            })
        ));
        let result = render_overlay(0, 4, &[], &[], &EncodeSettings::default());
        assert!(matches!(result, Err(OverlayError::EmptyImage { .. })));
    }

    #[test]
    fn overlay_every_setting_decodes() {
        let display = gradient(64, 48);
        let compressions = [
            png::Compression::Fast,
            png::Compression::Balanced,
            png::Compression::High,
        ];
        let filters = [
            png::Filter::NoFilter,
            png::Filter::Sub,
            png::Filter::Up,
            png::Filter::Adaptive,
        ];
        for compression in compressions {
            for filter in filters {
                let settings = EncodeSettings {
                    compression,
                    filter,
                };
                let overlay = render_overlay(64, 48, &display, &[], &settings).unwrap();
                let (width, height, indices, _) = decode_indexed(&overlay);
                assert_eq!((width, height), (64, 48), "{settings:?}");
                assert!(indices == palette_indices(&display), "{settings:?}");
            }
        }
    }

    #[test]
    fn preview_fits_max_side() {
        let bytes = read_shared("samples/png/derived-GH133-mammo-gray16-shl4.png");
        let image = decode_png(&bytes, &DecodeLimits::default()).unwrap();
        let display = to_display_8bit(&image);
        let found = boxed(500, 600, 1500, 2000);
        let preview = render_preview(image.width, image.height, &display, &[found], 256).unwrap();
        let (width, height, indices, palette) = decode_indexed(&preview);
        assert_eq!((width, height), (200, 256));
        assert_eq!(&palette[255 * 3..], [255, 0, 0], "box colour");
        // The box maps to x 41..126, y 50..168 of the preview; its top-left corner is red.
        assert_eq!(indices[(50 * width + 41) as usize], BOX_INDEX);
        let mut types = chunk_types(&preview);
        types.dedup();
        assert_eq!(types, ["IHDR", "PLTE", "IDAT", "IEND"]);
    }

    #[test]
    fn preview_small_image_kept() {
        let display = gradient(13, 7);
        let preview = render_preview(13, 7, &display, &[boxed(0, 0, 13, 7)], 256).unwrap();
        let (width, height, _, _) = decode_indexed(&preview);
        assert_eq!((width, height), (13, 7));
        let wide = render_preview(1000, 10, &gradient(1000, 10), &[], 256).unwrap();
        let (width, height, _, _) = decode_indexed(&wide);
        assert!(width.max(height) <= 256);
        assert_eq!((width, height), (256, 3));
    }

    #[test]
    fn preview_rejects_zero_side() {
        let result = render_preview(4, 4, &[0; 16], &[], 0);
        assert!(matches!(result, Err(OverlayError::EmptyPreview)));
    }
}
