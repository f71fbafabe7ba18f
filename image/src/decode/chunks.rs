//! Chunk-level validation of a PNG stream, done before either decoder runs.
//!
//! Both decoders get the same sanitized stream: the signature, IHDR, PLTE (for indexed
//! images only), the IDAT chunks and IEND. Everything the policy ignores (ancillary chunks,
//! among them tRNS, and bytes after IEND) is removed here, so neither decoder can apply a
//! policy of its own to it.

use std::borrow::Cow;
use std::ops::Range;

use super::{ColorType, DecodeError, DecodeLimits, Header};

pub(super) const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Length, type and CRC fields around each chunk's data.
const CHUNK_OVERHEAD: usize = 12;
/// Signature plus the whole IHDR chunk.
const HEADER_END: usize = 8 + CHUNK_OVERHEAD + 13;
/// The PNG specification limits a chunk's data to 2^31 - 1 bytes.
const MAX_CHUNK_LENGTH: u32 = 0x7fff_ffff;

/// Rejects anything that does not start with the PNG signature, naming what the data is.
pub(super) fn check_signature(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.starts_with(&PNG_SIGNATURE) {
        return Ok(());
    }
    if bytes.is_empty() {
        return Err(DecodeError::UnsupportedFormat(
            "the data is empty (0 bytes), so it is not a PNG image".to_string(),
        ));
    }
    if PNG_SIGNATURE.starts_with(bytes) {
        return Err(DecodeError::TruncatedImage(format!(
            "the data ends after {} bytes, inside the 8-byte PNG signature",
            bytes.len()
        )));
    }
    if bytes.starts_with(b"\x89PNG") {
        return Err(DecodeError::CorruptImage(format!(
            "the PNG signature is damaged: it ends with {} instead of 0D 0A 1A 0A, \
             as happens when a text-mode transfer rewrites line endings",
            hex_prefix(&bytes[4..], 4)
        )));
    }
    Err(DecodeError::UnsupportedFormat(describe_non_png(bytes)))
}

/// Names the format that `bytes` start with, for the message of an `unsupported_format` error.
fn describe_non_png(bytes: &[u8]) -> String {
    let known = [
        (&b"\xff\xd8\xff"[..], "JPEG"),
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"II*\0", "TIFF"),
        (b"MM\0*", "TIFF"),
        (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
        (b"\0\0\0\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"BM", "BMP"),
        (b"%PDF", "PDF"),
    ];
    for (signature, name) in known {
        if bytes.starts_with(signature) {
            return format!(
                "the data is a {name} image (it starts with the {name} signature), but only PNG \
                 is read, so convert it to PNG first"
            );
        }
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return "the data is a WebP image (it starts with the WebP signature), but only PNG is \
                read, so convert it to PNG first"
            .to_string();
    }
    // A DICOM Part 10 file has a 128-byte preamble, then "DICM".
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        return "the data is a DICOM file (DICM prefix after the 128-byte preamble), but only PNG \
                is read, so convert it to PNG first"
            .to_string();
    }
    let head = &bytes[..bytes.len().min(64)];
    let is_text = head
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace() || b >= 0x80);
    if is_text && std::str::from_utf8(head).is_ok() {
        return "the data looks like text, not like a PNG image".to_string();
    }
    format!(
        "the data starts with the bytes {}, not the PNG signature, so it is not a PNG image",
        hex_prefix(bytes, 8)
    )
}

/// Parses and validates the IHDR chunk, then checks the size limits.
pub(super) fn parse_header(bytes: &[u8], limits: &DecodeLimits) -> Result<Header, DecodeError> {
    check_signature(bytes)?;
    if bytes.len() < 16 {
        return Err(DecodeError::TruncatedImage(format!(
            "the data ends after {} bytes, before the first chunk header is complete",
            bytes.len()
        )));
    }
    let length = read_u32(bytes, 8);
    let chunk_type = chunk_type_at(bytes, 12);
    if chunk_type != *b"IHDR" {
        return Err(DecodeError::CorruptImage(format!(
            "the first chunk is {}, but a PNG must start with IHDR",
            chunk_name(chunk_type)
        )));
    }
    if length != 13 {
        return Err(DecodeError::CorruptImage(format!(
            "the IHDR chunk is {length} bytes long instead of 13"
        )));
    }
    if bytes.len() < HEADER_END {
        return Err(DecodeError::TruncatedImage(format!(
            "the data ends after {} bytes, inside the IHDR chunk",
            bytes.len()
        )));
    }
    check_crc(bytes, 8, 13)?;

    let data = &bytes[16..29];
    let width = read_u32(data, 0);
    let height = read_u32(data, 4);
    let bit_depth = data[8];
    let color_type_code = data[9];
    let (compression, filter, interlace) = (data[10], data[11], data[12]);

    if width == 0 || height == 0 {
        return Err(DecodeError::CorruptImage(format!(
            "the IHDR chunk declares a size of {width} x {height} pixels, and neither side may be 0"
        )));
    }
    if width > MAX_CHUNK_LENGTH || height > MAX_CHUNK_LENGTH {
        return Err(DecodeError::CorruptImage(format!(
            "the IHDR chunk declares a size of {width} x {height} pixels, \
             over the PNG maximum of 2^31 - 1 a side"
        )));
    }
    let color_type = match color_type_code {
        0 => ColorType::Grayscale,
        2 => ColorType::Rgb,
        3 => ColorType::Indexed,
        4 => ColorType::GrayscaleAlpha,
        6 => ColorType::Rgba,
        other => {
            return Err(DecodeError::CorruptImage(format!(
                "the IHDR chunk declares colour type {other}, which PNG does not define"
            )));
        }
    };
    let depth_is_valid = match color_type {
        ColorType::Grayscale => matches!(bit_depth, 1 | 2 | 4 | 8 | 16),
        ColorType::Indexed => matches!(bit_depth, 1 | 2 | 4 | 8),
        ColorType::Rgb | ColorType::GrayscaleAlpha | ColorType::Rgba => {
            matches!(bit_depth, 8 | 16)
        }
    };
    if !depth_is_valid {
        return Err(DecodeError::CorruptImage(format!(
            "the IHDR chunk declares bit depth {bit_depth} for colour type {color_type_code}, \
             a combination PNG does not allow"
        )));
    }
    if compression != 0 || filter != 0 {
        return Err(DecodeError::CorruptImage(format!(
            "the IHDR chunk declares compression method {compression} and filter method \
             {filter}, but PNG defines only method 0 for both"
        )));
    }
    if interlace > 1 {
        return Err(DecodeError::CorruptImage(format!(
            "the IHDR chunk declares interlace method {interlace}, but PNG defines only 0 and 1"
        )));
    }

    let header = Header {
        width,
        height,
        bit_depth,
        color_type,
        interlaced: interlace == 1,
    };
    check_limits(&header, limits)?;
    Ok(header)
}

fn check_limits(header: &Header, limits: &DecodeLimits) -> Result<(), DecodeError> {
    let (width, height) = (header.width, header.height);
    if width > limits.max_side || height > limits.max_side {
        return Err(DecodeError::ImageTooLarge(format!(
            "the image is {width} x {height} pixels, and a side over {} pixels is not processed",
            limits.max_side
        )));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(DecodeError::ImageTooLarge(format!(
            "the image is {width} x {height} = {pixels} pixels, over the budget of {} pixels",
            limits.max_pixels
        )));
    }
    Ok(())
}

/// Walks every chunk up to IEND, checking CRCs, lengths and the order rules for critical
/// chunks, and returns the stream that the decoders get.
///
/// The returned stream borrows `bytes` when nothing has to be removed.
pub(super) fn sanitize<'a>(
    bytes: &'a [u8],
    header: &Header,
    limits: &DecodeLimits,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    // Byte ranges of the whole chunks (length, type, data and CRC) that are kept, after IHDR.
    let mut kept_chunks: Vec<Range<usize>> = Vec::new();
    let mut seen_plte = false;
    let mut seen_idat = false;
    let mut idat_sequence_ended = false;
    let mut offset = HEADER_END;

    let iend_end = loop {
        if offset == bytes.len() {
            return Err(DecodeError::TruncatedImage(format!(
                "the data ends after {offset} bytes without an IEND chunk"
            )));
        }
        if offset + 8 > bytes.len() {
            return Err(DecodeError::TruncatedImage(format!(
                "the data ends after {} bytes, inside the header of a chunk at byte offset \
                 {offset}",
                bytes.len()
            )));
        }
        let length = read_u32(bytes, offset);
        let chunk_type = chunk_type_at(bytes, offset + 4);
        if !chunk_type.iter().all(u8::is_ascii_alphabetic) {
            return Err(DecodeError::CorruptImage(format!(
                "the chunk at byte offset {offset} has the type {}, which is not four ASCII \
                 letters",
                chunk_name(chunk_type)
            )));
        }
        let name = chunk_name(chunk_type);
        if length > MAX_CHUNK_LENGTH {
            return Err(DecodeError::CorruptImage(format!(
                "the {name} chunk at byte offset {offset} declares {length} bytes, \
                 over the PNG maximum of 2^31 - 1"
            )));
        }
        let data_length = length as usize;
        let chunk_end = offset.saturating_add(CHUNK_OVERHEAD + data_length);
        if chunk_end > bytes.len() {
            return Err(DecodeError::TruncatedImage(format!(
                "the {name} chunk at byte offset {offset} declares {length} bytes of data, \
                 but the data ends {} bytes early",
                chunk_end - bytes.len()
            )));
        }
        check_crc(bytes, offset, data_length)?;

        let is_idat = chunk_type == *b"IDAT";
        if seen_idat && !is_idat {
            idat_sequence_ended = true;
        }
        match &chunk_type {
            b"IHDR" => {
                return Err(DecodeError::CorruptImage(format!(
                    "a second IHDR chunk appears at byte offset {offset}"
                )));
            }
            b"PLTE" => {
                check_plte(header, data_length, offset, seen_plte, seen_idat)?;
                seen_plte = true;
                // A palette in a truecolour image is only a suggestion for display.
                if header.color_type == ColorType::Indexed {
                    kept_chunks.push(offset..chunk_end);
                }
            }
            b"IDAT" => {
                if idat_sequence_ended {
                    return Err(DecodeError::CorruptImage(format!(
                        "the IDAT chunk at byte offset {offset} follows another chunk after the \
                         image data, but IDAT chunks must be consecutive"
                    )));
                }
                if header.color_type == ColorType::Indexed && !seen_plte {
                    return Err(DecodeError::CorruptImage(
                        "the image uses a palette, but no PLTE chunk precedes the image data"
                            .to_string(),
                    ));
                }
                seen_idat = true;
                kept_chunks.push(offset..chunk_end);
            }
            b"IEND" => {
                if !seen_idat {
                    return Err(DecodeError::CorruptImage(
                        "the PNG has no IDAT chunk, so it contains no image data".to_string(),
                    ));
                }
                if length != 0 {
                    return Err(DecodeError::CorruptImage(format!(
                        "the IEND chunk is {length} bytes long instead of 0"
                    )));
                }
                kept_chunks.push(offset..chunk_end);
                break chunk_end;
            }
            _ if chunk_type[0].is_ascii_uppercase() => {
                return Err(DecodeError::CorruptImage(format!(
                    "the PNG contains the critical chunk {name}, which this decoder does not know"
                )));
            }
            _ => {
                if u64::from(length) > limits.max_ancillary_chunk_bytes {
                    return Err(DecodeError::ImageTooLarge(format!(
                        "the ancillary {name} chunk is {length} bytes, over the limit of {} bytes",
                        limits.max_ancillary_chunk_bytes
                    )));
                }
            }
        }
        offset = chunk_end;
    };

    let contiguous = kept_chunks
        .iter()
        .try_fold(HEADER_END, |expected, range| {
            (range.start == expected).then_some(range.end)
        })
        .is_some();
    if contiguous {
        return Ok(Cow::Borrowed(&bytes[..iend_end]));
    }
    let kept_length: usize = kept_chunks.iter().map(|range| range.len()).sum();
    let mut stream = Vec::with_capacity(HEADER_END + kept_length);
    stream.extend_from_slice(&bytes[..HEADER_END]);
    for range in kept_chunks {
        stream.extend_from_slice(&bytes[range]);
    }
    Ok(Cow::Owned(stream))
}

fn check_plte(
    header: &Header,
    data_length: usize,
    offset: usize,
    seen_plte: bool,
    seen_idat: bool,
) -> Result<(), DecodeError> {
    if matches!(
        header.color_type,
        ColorType::Grayscale | ColorType::GrayscaleAlpha
    ) {
        return Err(DecodeError::CorruptImage(
            "the PNG is grayscale but contains a PLTE chunk, which PNG forbids".to_string(),
        ));
    }
    if seen_plte {
        return Err(DecodeError::CorruptImage(format!(
            "a second PLTE chunk appears at byte offset {offset}"
        )));
    }
    if seen_idat {
        return Err(DecodeError::CorruptImage(
            "the PLTE chunk comes after the image data, but it must precede IDAT".to_string(),
        ));
    }
    if data_length == 0 || !data_length.is_multiple_of(3) || data_length > 256 * 3 {
        return Err(DecodeError::CorruptImage(format!(
            "the PLTE chunk is {data_length} bytes long, but a palette has 1 to 256 entries \
             of 3 bytes"
        )));
    }
    Ok(())
}

/// Checks the CRC of the chunk at `offset`, whose data is `data_length` bytes long.
/// The caller has checked that the whole chunk lies inside `bytes`.
fn check_crc(bytes: &[u8], offset: usize, data_length: usize) -> Result<(), DecodeError> {
    let covered = &bytes[offset + 4..offset + 8 + data_length];
    let stored = read_u32(bytes, offset + 8 + data_length);
    let computed = crc32fast::hash(covered);
    if stored == computed {
        return Ok(());
    }
    Err(DecodeError::CorruptImage(format!(
        "the CRC of the {} chunk at byte offset {offset} is {stored:08x}, but its contents \
         give {computed:08x}",
        chunk_name(chunk_type_at(bytes, offset + 4))
    )))
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut field = [0; 4];
    field.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_be_bytes(field)
}

fn chunk_type_at(bytes: &[u8], offset: usize) -> [u8; 4] {
    let mut chunk_type = [0; 4];
    chunk_type.copy_from_slice(&bytes[offset..offset + 4]);
    chunk_type
}

/// Formats a chunk type as its four letters, or as hex when it is not printable ASCII.
fn chunk_name(chunk_type: [u8; 4]) -> String {
    if chunk_type.iter().all(u8::is_ascii_graphic) {
        chunk_type.iter().map(|&b| char::from(b)).collect()
    } else {
        format!("0x{}", hex_prefix(&chunk_type, 4).replace(' ', ""))
    }
}

fn hex_prefix(bytes: &[u8], max_bytes: usize) -> String {
    let hex_bytes: Vec<String> = bytes
        .iter()
        .take(max_bytes)
        .map(|b| format!("{b:02X}"))
        .collect();
    hex_bytes.join(" ")
}
