//! Items passed between the pipeline stages. A job that failed in one stage keeps moving, so
//! that its failure is recorded and its offset committed like any other result.

use std::time::Instant;

use rfo_core::JobError;
use rfo_core::JobMessage;
use rfo_core::record::BoundingBox;
use rfo_image::overlay::Rendered;

/// What the queue needs back to acknowledge a delivery once its result is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    Kafka { partition: i32, offset: i64 },
    Embedded { seq: i64 },
}

/// A job taken from the queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub receipt: Receipt,
    pub message: JobMessage,
    /// The record's value as it was read, for the dead-letter queue.
    pub payload: Vec<u8>,
    pub fetched_at: Instant,
}

/// Milliseconds each stage spent on one job.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimings {
    pub download_ms: u64,
    pub decode_ms: u64,
    pub render_ms: u64,
    pub upload_ms: u64,
}

/// Output of the download stage.
pub struct Downloaded {
    pub delivery: Delivery,
    pub attempts: u32,
    pub timings: StageTimings,
    pub bytes: Result<Vec<u8>, JobError>,
}

/// Output of the CPU stage.
pub struct Processed {
    pub delivery: Delivery,
    pub attempts: u32,
    pub timings: StageTimings,
    pub rendered: Result<Rendered, JobError>,
}

/// Output of the upload stage: what the database gets.
pub struct Finished {
    pub delivery: Delivery,
    pub attempts: u32,
    pub timings: StageTimings,
    pub outcome: Result<Uploaded, JobError>,
}

/// Where a successful job's objects went and what was found.
pub struct Uploaded {
    pub overlay_key: String,
    pub preview_key: String,
    pub boxes: Vec<BoundingBox>,
    pub width: u32,
    pub height: u32,
}

pub fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
