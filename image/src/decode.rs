//! PNG decoding to one luminance channel, with size limits checked from the header.
//!
//! Policy, the same whichever decoder runs:
//! - Every chunk up to IEND is framed and CRC-checked by this module before a decoder
//!   receives the data. A CRC mismatch in any chunk, critical or ancillary, is `corrupt_image`.
//!   Bytes after IEND are ignored.
//! - A file that ends before its IEND chunk is `truncated_image`. Image data that does not
//!   decode to every scanline of a complete file (a cut or invalid zlib stream, an unknown
//!   filter type) is `corrupt_image`, because the encoder wrote it that way.
//! - Once every scanline is decoded, the rest of the zlib stream is ignored: extra data, a
//!   missing end and the Adler-32 checksum, which the chunk CRCs already cover. This is what
//!   the png crate 0.18 does, following libpng.
//! - Transparency is dropped: radiographs are opaque, so alpha samples and tRNS are ignored
//!   and the colour samples are kept as they are. A palette whose tRNS makes every entry
//!   transparent still shows its palette colours.
//! - Colour is reduced to luma with the ITU-R BT.601 weights. 16-bit sources stay 16-bit,
//!   and 1-, 2- and 4-bit gray is scaled to 0..=255.

mod chunks;
mod luma;
#[cfg(test)]
mod tests;

use std::io::Cursor;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_core::result::DecodingResult;
use zune_png::error::PngDecodeErrors;

/// Size limits, checked against the IHDR chunk before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Maximum width times height.
    ///
    /// A decode with the png crate keeps the raw samples and the luminance output in memory
    /// at once. That is 1 byte a pixel for 8-bit gray, 4 for 16-bit gray and 10 for 16-bit
    /// RGBA, so up to 640 MB at the default budget. zune-png needed three times as much as the png
    /// crate on a 100-megapixel 8-bit gray image.
    pub max_pixels: u64,
    /// Maximum width and maximum height, in pixels.
    pub max_side: u32,
    /// Maximum data length of one ancillary chunk, in bytes. Ancillary chunks are skipped,
    /// but a longer one is rejected so that a streaming reader never has to buffer it.
    pub max_ancillary_chunk_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 64_000_000,
            max_side: 16_384,
            max_ancillary_chunk_bytes: 16 * 1024 * 1024,
        }
    }
}

/// PNG colour type, as declared in IHDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorType {
    Grayscale,
    Rgb,
    Indexed,
    GrayscaleAlpha,
    Rgba,
}

/// Image properties declared in a valid IHDR chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Bits per sample (per palette index for indexed images): 1, 2, 4, 8 or 16.
    pub bit_depth: u8,
    pub color_type: ColorType,
    /// Whether the image data is Adam7 interlaced.
    pub interlaced: bool,
}

/// A decoded radiograph reduced to one luminance channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    /// Row-major samples, `width * height` of them.
    pub pixels: GrayPixels,
}

/// Luminance samples: 16-bit sources give `Sixteen`, all others `Eight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrayPixels {
    Eight(Vec<u8>),
    Sixteen(Vec<u16>),
}

/// The PNG decoder that produces the pixels. Both give identical results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// The `png` crate (image-rs), 0.18.
    Png,
    /// The `zune-png` crate, 0.5.
    ZunePng,
}

/// Decoding failure, one variant for each error code of the job record.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The data is not a PNG.
    #[error("unsupported format: {0}")]
    UnsupportedFormat(String),
    /// The PNG breaks its specification.
    #[error("corrupt PNG: {0}")]
    CorruptImage(String),
    /// The PNG ends before its image data is complete.
    #[error("truncated PNG: {0}")]
    TruncatedImage(String),
    /// The header declares more pixels than the limits allow.
    #[error("image too large: {0}")]
    ImageTooLarge(String),
}

impl DecodeError {
    /// Returns the error code stored with a failed job.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedFormat(_) => "unsupported_format",
            Self::CorruptImage(_) => "corrupt_image",
            Self::TruncatedImage(_) => "truncated_image",
            Self::ImageTooLarge(_) => "image_too_large",
        }
    }
}

/// Reads and validates the signature and IHDR chunk, and checks them against `limits`.
///
/// This reads only the first 33 bytes and allocates no pixel memory.
pub fn read_header(bytes: &[u8], limits: &DecodeLimits) -> Result<Header, DecodeError> {
    chunks::parse_header(bytes, limits)
}

/// Decodes a PNG with the production decoder.
pub fn decode_png(bytes: &[u8], limits: &DecodeLimits) -> Result<GrayImage, DecodeError> {
    // By the criterion bench in bench/benches/image.rs, png 0.18 is faster than zune-png 0.5
    // on the three largest samples (medians of 19, 25 and 14 ms against 26, 31 and 15 ms).
    // It is slower on the noisy synthetic radiographs of 4096 x 4096 and 4000 x 5000 (138
    // and 182 ms against 111 and 165 ms). It also peaks at a third of zune-png's memory.
    decode_png_with(Decoder::Png, bytes, limits)
}

/// Decodes a PNG with the given decoder, applying the policy in the module documentation.
pub fn decode_png_with(
    decoder: Decoder,
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<GrayImage, DecodeError> {
    let header = read_header(bytes, limits)?;
    let stream = chunks::sanitize(bytes, &header, limits)?;
    let pixels = match decoder {
        Decoder::Png => decode_with_png(&stream, &header, limits)?,
        Decoder::ZunePng => match decode_with_zune(&stream, &header, limits) {
            Ok(pixels) => pixels,
            // zune-png 0.5 rejects any zlib error, also one after the last scanline, which
            // the policy ignores. The png crate applies the policy to such streams.
            Err(ZuneFailure::Zlib) => decode_with_png(&stream, &header, limits)?,
            Err(ZuneFailure::Other(error)) => return Err(error),
        },
    };
    let expected = header.width as usize * header.height as usize;
    let actual = match &pixels {
        GrayPixels::Eight(samples) => samples.len(),
        GrayPixels::Sixteen(samples) => samples.len(),
    };
    if actual != expected {
        return Err(DecodeError::CorruptImage(format!(
            "the {decoder:?} decoder returned {actual} pixels instead of {expected}"
        )));
    }
    Ok(GrayImage {
        width: header.width,
        height: header.height,
        pixels,
    })
}

fn decode_with_png(
    stream: &[u8],
    header: &Header,
    limits: &DecodeLimits,
) -> Result<GrayPixels, DecodeError> {
    let mut options = png::DecodeOptions::default();
    // CRCs were verified while sanitizing, so the decoder need not repeat them.
    options.set_ignore_crc(true);
    options.set_ignore_adler32(true);
    let mut decoder = png::Decoder::new_with_options(Cursor::new(stream), options);
    // The limit counts the decoder's own buffers (rows, chunk data), not the output buffer.
    decoder.set_limits(png::Limits {
        bytes: png_buffer_limit(limits),
    });
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(map_png_error)?;
    let buffer_size = reader.output_buffer_size().ok_or_else(|| {
        DecodeError::ImageTooLarge("the decoded image would not fit in memory".to_string())
    })?;
    let mut buffer = vec![0u8; buffer_size];
    let output = reader.next_frame(&mut buffer).map_err(map_png_error)?;
    buffer.truncate(output.line_size * output.height as usize);

    let width = header.width as usize;
    let pixels = match (header.color_type, header.bit_depth) {
        (ColorType::Grayscale, 8) => GrayPixels::Eight(buffer),
        (ColorType::Grayscale, 16) => GrayPixels::Sixteen(luma::gray16_from_be_bytes(&buffer, 1)),
        (ColorType::Grayscale, depth) => {
            let table = luma::gray_scale_table(depth);
            GrayPixels::Eight(luma::unpack_rows(
                &buffer,
                width,
                output.line_size,
                depth,
                &table,
            ))
        }
        (ColorType::Indexed, depth) => {
            let palette = reader.info().palette.as_deref().unwrap_or_default();
            let table = luma::palette_luma_table(palette);
            GrayPixels::Eight(luma::unpack_rows(
                &buffer,
                width,
                output.line_size,
                depth,
                &table,
            ))
        }
        (color_type, 16) => GrayPixels::Sixteen(luma::gray16_from_be_bytes(
            &buffer,
            channel_count(color_type),
        )),
        (color_type, _) => {
            GrayPixels::Eight(luma::gray8_from_samples(&buffer, channel_count(color_type)))
        }
    };
    Ok(pixels)
}

/// Returns the png crate's buffer limit: 16 raw rows of the widest allowed image plus 1 MiB.
fn png_buffer_limit(limits: &DecodeLimits) -> usize {
    // A raw row is at most 8 bytes a pixel (RGBA, 16-bit) plus the filter byte.
    let max_row = u64::from(limits.max_side) * 8 + 1;
    usize::try_from(max_row * 16 + (1 << 20)).unwrap_or(usize::MAX)
}

fn channel_count(color_type: ColorType) -> usize {
    match color_type {
        ColorType::Grayscale | ColorType::Indexed => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
    }
}

fn map_png_error(error: png::DecodingError) -> DecodeError {
    match error {
        png::DecodingError::LimitsExceeded => DecodeError::ImageTooLarge(
            "decoding would exceed the png decoder's memory limit".to_string(),
        ),
        // The stream is complete up to IEND, so running out of image data is also corrupt.
        other => DecodeError::CorruptImage(format!("the image data is invalid: {other}")),
    }
}

/// Failure of a zune-png decode.
enum ZuneFailure {
    /// The zlib stream of the image data is invalid, possibly only after the last scanline.
    Zlib,
    Other(DecodeError),
}

fn decode_with_zune(
    stream: &[u8],
    header: &Header,
    limits: &DecodeLimits,
) -> Result<GrayPixels, ZuneFailure> {
    let max_side = limits.max_side as usize;
    // CRCs were verified while sanitizing, so the decoder need not repeat them.
    let options = DecoderOptions::default()
        .set_max_width(max_side)
        .set_max_height(max_side)
        .png_set_confirm_crc(false)
        .inflate_set_confirm_adler(false)
        .png_set_strip_to_8bit(false)
        .png_set_add_alpha_channel(false);
    let mut decoder = zune_png::PngDecoder::new_with_options(ZCursor::new(stream), options);
    let decoded = decoder.decode().map_err(|error| match error {
        PngDecodeErrors::ZlibDecodeErrors(_) => ZuneFailure::Zlib,
        other => ZuneFailure::Other(DecodeError::CorruptImage(format!(
            "the image data is invalid: {}",
            format!("{other:?}").trim_end()
        ))),
    })?;
    let channels = decoder
        .colorspace()
        .map(|colorspace: ColorSpace| colorspace.num_components())
        .unwrap_or(1);
    let expected_channels = match header.color_type {
        // zune-png expands a palette to RGB, and the sanitized stream has no tRNS that
        // would add alpha.
        ColorType::Indexed => 3,
        color_type => channel_count(color_type),
    };
    if channels != expected_channels {
        return Err(ZuneFailure::Other(DecodeError::CorruptImage(format!(
            "the zune-png decoder returned {channels} channels instead of {expected_channels}"
        ))));
    }
    match decoded {
        DecodingResult::U8(samples) if channels == 1 => Ok(GrayPixels::Eight(samples)),
        DecodingResult::U8(samples) => Ok(GrayPixels::Eight(luma::gray8_from_samples(
            &samples, channels,
        ))),
        DecodingResult::U16(samples) if channels == 1 => Ok(GrayPixels::Sixteen(samples)),
        DecodingResult::U16(samples) => Ok(GrayPixels::Sixteen(luma::gray16_from_samples(
            &samples, channels,
        ))),
        _ => Err(ZuneFailure::Other(DecodeError::CorruptImage(
            "the zune-png decoder returned samples that are neither 8- nor 16-bit".to_string(),
        ))),
    }
}
