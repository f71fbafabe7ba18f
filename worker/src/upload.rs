//! Upload stage: writes each job's overlay and preview to the output store, and hands the
//! result to the insert stage. The S3 backend writes large overlays as multipart uploads and
//! aborts a failed one, so no parts are left behind. Keys are functions of the job id, so a
//! re-run overwrites the same objects.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rfo_core::job::{overlay_key, preview_key};
use rfo_core::storage::ObjectStore;
use rfo_core::{ErrorCode, JobError};
use tokio::sync::{Semaphore, mpsc};

use crate::failpoint::{self, Point};
use crate::retry::Backoff;
use crate::stage::{Finished, Processed, Uploaded, elapsed_ms};

/// Settings of the upload stage.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

pub struct Uploader {
    pub output: ObjectStore,
    pub settings: UploadSettings,
}

impl Uploader {
    /// Runs until `processed` closes, then waits for the uploads in flight.
    pub async fn run(
        self: Arc<Self>,
        mut processed: mpsc::Receiver<Processed>,
        finished: mpsc::Sender<Finished>,
    ) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(item) = processed.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let uploader = self.clone();
            let finished = finished.clone();
            tasks.spawn(async move {
                let item = uploader.upload(item).await;
                if item.outcome.is_ok() {
                    failpoint::hit(Point::AfterUpload, Some(item.delivery.message.job_id)).await;
                }
                let _ = finished.send(item).await;
                drop(slot);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn upload(&self, item: Processed) -> Finished {
        let Processed {
            delivery,
            attempts,
            mut timings,
            rendered,
        } = item;
        let started = Instant::now();
        let outcome = match rendered {
            Err(error) => Err(error),
            Ok(rendered) => {
                let job_id = delivery.message.job_id;
                let overlay = overlay_key(job_id);
                let preview = preview_key(job_id);
                let overlay_bytes = Bytes::from(rendered.overlay);
                let preview_bytes = Bytes::from(rendered.preview);
                let mut tries = 0;
                loop {
                    tries += 1;
                    let result = async {
                        self.output
                            .put(&overlay, overlay_bytes.clone(), "image/png")
                            .await?;
                        self.output
                            .put(&preview, preview_bytes.clone(), "image/png")
                            .await
                    }
                    .await;
                    match result {
                        Ok(()) => {
                            break Ok(Uploaded {
                                overlay_key: overlay,
                                preview_key: preview,
                                boxes: rendered.boxes,
                                width: rendered.width,
                                height: rendered.height,
                            });
                        }
                        Err(error) if tries < self.settings.max_attempts => {
                            let delay = self.settings.backoff.delay(tries - 1);
                            tracing::warn!(%job_id, attempts = tries, %error, ?delay, "upload failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        Err(error) => {
                            tracing::warn!(%job_id, attempts = tries, %error, "upload failed; retry budget spent");
                            break Err(JobError::new(
                                ErrorCode::StorageUnavailable,
                                format!(
                                    "the overlay could not be written to the object store after {tries} attempts"
                                ),
                            ));
                        }
                    }
                }
            }
        };
        timings.upload_ms = elapsed_ms(started);
        metrics::histogram!("rfo_stage_duration_seconds", "stage" => "upload")
            .record(started.elapsed().as_secs_f64());
        Finished {
            delivery,
            attempts,
            timings,
            outcome,
        }
    }
}
