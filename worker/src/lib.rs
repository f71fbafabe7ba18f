//! The rfo worker's stages and the wiring between them. The image code they run is in
//! `rfo-image`.

pub mod acknowledge;
pub mod download;
pub mod embedded_source;
pub mod failpoint;
pub mod insert;
pub mod kafka_source;
pub mod offsets;
pub mod pipeline;
pub mod process;
pub mod retry;
pub mod settings;
pub mod stage;
pub mod standalone;
pub mod telemetry;
pub mod upload;
