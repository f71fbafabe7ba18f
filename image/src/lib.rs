//! The image code of an rfo job, free of any I/O: PNG decoding under size limits, windowing
//! to 8 bits, detection, and encoding of the overlay and its preview. The worker runs it on
//! its CPU pool; the benchmarks and the fuzz target call it directly.

pub mod decode;
pub mod detect;
pub mod overlay;
pub mod resize;
pub mod synth;
pub mod window;

#[cfg(test)]
mod test_support;
