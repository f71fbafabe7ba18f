//! Helpers shared by the unit tests: sample files, an allocation counter and a minimal PNG
//! writer for crafted inputs that no encoder would produce.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Returns the `shared` directory, found by walking up from the crate's manifest directory,
/// so that the tests work wherever the repository is cloned, as long as `shared` sits in
/// one of its parent directories.
pub fn shared_dir() -> PathBuf {
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in start.ancestors() {
        let candidate = dir.join("shared");
        if candidate.join("samples").is_dir() {
            return candidate;
        }
    }
    panic!(
        "no directory `shared/samples` found in {} or any of its parents",
        start.display()
    );
}

/// Reads a file under `shared`, given its path relative to that directory.
pub fn read_shared(relative: &str) -> Vec<u8> {
    let path = shared_dir().join(relative);
    std::fs::read(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Lists the file names in a directory under `shared`, sorted.
pub fn list_shared(relative: &str) -> Vec<String> {
    let path = shared_dir().join(relative);
    let entries = std::fs::read_dir(&path)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", path.display()));
    let mut names: Vec<String> = entries
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

thread_local! {
    static ALLOCATED_NOW: Cell<isize> = const { Cell::new(0) };
    static ALLOCATED_PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Wraps the system allocator and counts the bytes held by each thread, so that a test can
/// measure the peak memory of the code it calls.
pub struct CountingAllocator;

fn record_allocation(delta: isize) {
    let _ = ALLOCATED_NOW.try_with(|now| {
        let value = now.get() + delta;
        now.set(value);
        let _ = ALLOCATED_PEAK.try_with(|peak| peak.set(peak.get().max(value)));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds bookkeeping in thread-local cells, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size() as isize);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size() as isize);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        record_allocation(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_pointer = unsafe { System.realloc(pointer, layout, new_size) };
        if !new_pointer.is_null() {
            record_allocation(new_size as isize - layout.size() as isize);
        }
        new_pointer
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `work` and returns its result with the peak number of bytes it had allocated on
/// this thread at any moment, above what the thread held before.
pub fn peak_allocation<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED_NOW.with(Cell::get);
    ALLOCATED_PEAK.with(|peak| peak.set(before));
    let result = work();
    let peak = ALLOCATED_PEAK.with(Cell::get);
    (result, (peak - before).max(0) as usize)
}

/// Encodes one chunk: length, type, data and CRC.
pub fn chunk(chunk_type: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(chunk_type);
    out.extend_from_slice(data);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(chunk_type);
    hasher.update(data);
    out.extend_from_slice(&hasher.finalize().to_be_bytes());
    out
}

/// Encodes an IHDR chunk.
pub fn ihdr(width: u32, height: u32, bit_depth: u8, color_type: u8, interlaced: bool) -> Vec<u8> {
    let mut data = Vec::with_capacity(13);
    data.extend_from_slice(&width.to_be_bytes());
    data.extend_from_slice(&height.to_be_bytes());
    data.extend_from_slice(&[bit_depth, color_type, 0, 0, u8::from(interlaced)]);
    chunk(b"IHDR", &data)
}

/// Joins the PNG signature and the given encoded chunks.
pub fn png_file(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    for encoded in chunks {
        out.extend_from_slice(encoded);
    }
    out
}

/// Compresses `data` as a zlib stream.
pub fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("write to a Vec");
    encoder.finish().expect("finish a zlib stream in a Vec")
}

/// Adam7 pass origins and spacings: (x origin, y origin, x spacing, y spacing).
const ADAM7_PASSES: [(usize, usize, usize, usize); 7] = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
];

/// Lays out unfiltered image data (filter type 0 on every scanline) for `samples`, which
/// contains `channels` samples a pixel, row by row, each sample below 2^depth.
pub fn raw_image_data(
    width: usize,
    height: usize,
    channels: usize,
    depth: u8,
    samples: &[u16],
    interlaced: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut write_row = |pixels: &[(usize, usize)]| {
        out.push(0);
        let mut row_bits = RowBits::default();
        for &(x, y) in pixels {
            for channel in 0..channels {
                let value = samples[(y * width + x) * channels + channel];
                row_bits.push(value, depth, &mut out);
            }
        }
        row_bits.flush(&mut out);
    };
    if !interlaced {
        for y in 0..height {
            let pixels: Vec<(usize, usize)> = (0..width).map(|x| (x, y)).collect();
            write_row(&pixels);
        }
        return out;
    }
    for (x0, y0, dx, dy) in ADAM7_PASSES {
        let columns: Vec<usize> = (x0..width).step_by(dx).collect();
        if columns.is_empty() {
            continue;
        }
        for y in (y0..height).step_by(dy) {
            let pixels: Vec<(usize, usize)> = columns.iter().map(|&x| (x, y)).collect();
            write_row(&pixels);
        }
    }
    out
}

/// Packs samples of fewer than 8 bits into bytes, most significant bits first.
#[derive(Default)]
struct RowBits {
    byte: u8,
    used_bits: u8,
}

impl RowBits {
    fn push(&mut self, value: u16, depth: u8, out: &mut Vec<u8>) {
        match depth {
            16 => out.extend_from_slice(&value.to_be_bytes()),
            8 => out.push(value as u8),
            _ => {
                self.used_bits += depth;
                self.byte |= (value as u8) << (8 - self.used_bits);
                if self.used_bits == 8 {
                    out.push(self.byte);
                    *self = Self::default();
                }
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.used_bits > 0 {
            out.push(self.byte);
            *self = Self::default();
        }
    }
}

/// Lists the chunk types of a well-formed PNG, in order.
pub fn chunk_types(png: &[u8]) -> Vec<String> {
    let mut types = Vec::new();
    let mut offset = 8;
    while offset + 8 <= png.len() {
        let length = u32::from_be_bytes(png[offset..offset + 4].try_into().expect("4 bytes"));
        types.push(String::from_utf8_lossy(&png[offset + 4..offset + 8]).into_owned());
        offset += 12 + length as usize;
    }
    types
}

/// A small deterministic generator of test data (SplitMix64).
pub struct TestRng(pub u64);

impl TestRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a value in `0..bound`; `bound` must not be 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}
