//! The rfo worker's stages, the image code they run, and the wiring between them.

pub mod acknowledge;
pub mod decode;
pub mod detect;
pub mod download;
pub mod embedded_source;
pub mod failpoint;
pub mod insert;
pub mod kafka_source;
pub mod offsets;
pub mod overlay;
pub mod pipeline;
pub mod process;
pub mod resize;
pub mod retry;
pub mod settings;
pub mod stage;
pub mod standalone;
pub mod synth;
pub mod telemetry;
pub mod upload;
pub mod window;

#[cfg(test)]
mod test_support;
