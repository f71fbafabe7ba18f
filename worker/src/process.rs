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

use crate::stage::{Downloaded, Processed, StageTimings, elapsed_ms};
use rfo_image::decode::{DecodeLimits, decode_png};
use rfo_image::detect::Detector;
use rfo_image::overlay::{EncodeSettings, Rendered, render};

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
        let rendered = render(image, self.detector.as_ref(), seed, &self.encode).map_err(|e| {
            JobError::new(
                ErrorCode::Internal,
                format!("encoding the overlay failed: {e}"),
            )
        })?;
        timings.render_ms = elapsed_ms(started);
        metrics::histogram!("rfo_stage_duration_seconds", "stage" => "render")
            .record(started.elapsed().as_secs_f64());
        Ok(rendered)
    }
}

fn decode_code(code: &str) -> ErrorCode {
    code.parse().unwrap_or(ErrorCode::CorruptImage)
}
