//! CPU stage: decode, detect, draw the overlay and encode it, on a rayon pool sized to the
//! cores. No CPU work runs on the tokio threads.
//!
//! At most one job per pool thread is in the stage, so decoded images in memory are bounded by
//! the pool size. A panic inside a job is caught and recorded as `internal`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use rfo_core::{ErrorCode, JobError};
use tokio::sync::{Semaphore, mpsc};

use crate::decode::{DecodeLimits, decode_png};
use crate::detect::Detector;
use crate::overlay::{EncodeSettings, render_overlay, render_preview};
use crate::stage::{Downloaded, Processed, Rendered, StageTimings, elapsed_ms};
use crate::window::to_display_8bit;

/// Longest side of the preview written beside each overlay, in pixels.
pub const PREVIEW_MAX_SIDE: u32 = 256;

pub struct Processor {
    pub pool: rayon::ThreadPool,
    pub limits: DecodeLimits,
    pub detector: Arc<dyn Detector>,
    pub encode: EncodeSettings,
}

impl Processor {
    /// Runs until `downloaded` closes, then waits for the jobs on the pool.
    pub async fn run(
        self: Arc<Self>,
        mut downloaded: mpsc::Receiver<Downloaded>,
        processed: mpsc::Sender<Processed>,
    ) {
        let threads = self.pool.current_num_threads();
        let slots = Arc::new(Semaphore::new(threads));
        while let Some(item) = downloaded.recv().await {
            let Downloaded {
                delivery,
                attempts,
                timings,
                bytes,
            } = item;
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(error) => {
                    let _ = processed
                        .send(Processed {
                            delivery,
                            attempts,
                            timings,
                            rendered: Err(error),
                        })
                        .await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let processor = self.clone();
            let processed = processed.clone();
            self.pool.spawn(move || {
                let seed = delivery.message.job_id.as_u128();
                let mut timings = timings;
                let rendered = processor.render(&bytes, seed, &mut timings);
                drop(bytes);
                let _ = processed.blocking_send(Processed {
                    delivery,
                    attempts,
                    timings,
                    rendered,
                });
                drop(slot);
            });
        }
        // Every slot back means every job on the pool has been handed on.
        let _ = slots
            .acquire_many(u32::try_from(threads).unwrap_or(u32::MAX))
            .await;
    }

    /// Decodes `bytes` and draws the overlay, catching any panic as an `internal` failure.
    pub fn render(
        &self,
        bytes: &[u8],
        seed: u128,
        timings: &mut StageTimings,
    ) -> Result<Rendered, JobError> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.render_inner(bytes, seed, timings)))
        {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "image processing panicked");
                Err(JobError::new(
                    ErrorCode::Internal,
                    "processing the image failed because of a bug in the worker",
                ))
            }
        }
    }

    fn render_inner(
        &self,
        bytes: &[u8],
        seed: u128,
        timings: &mut StageTimings,
    ) -> Result<Rendered, JobError> {
        let started = Instant::now();
        let image = decode_png(bytes, &self.limits)
            .map_err(|e| JobError::new(decode_code(e.code()), e.to_string()))?;
        timings.decode_ms = elapsed_ms(started);
        metrics::histogram!("rfo_stage_duration_seconds", "stage" => "decode")
            .record(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let display = to_display_8bit(&image);
        let boxes = self.detector.detect(&image, &display, seed);
        let (width, height) = (image.width, image.height);
        drop(image);
        let internal = |e: crate::overlay::OverlayError| {
            JobError::new(
                ErrorCode::Internal,
                format!("encoding the overlay failed: {e}"),
            )
        };
        let overlay =
            render_overlay(width, height, &display, &boxes, &self.encode).map_err(internal)?;
        let preview =
            render_preview(width, height, &display, &boxes, PREVIEW_MAX_SIDE).map_err(internal)?;
        timings.render_ms = elapsed_ms(started);
        metrics::histogram!("rfo_stage_duration_seconds", "stage" => "render")
            .record(started.elapsed().as_secs_f64());
        Ok(Rendered {
            overlay,
            preview,
            boxes,
            width,
            height,
        })
    }
}

fn decode_code(code: &str) -> ErrorCode {
    code.parse().unwrap_or(ErrorCode::CorruptImage)
}
