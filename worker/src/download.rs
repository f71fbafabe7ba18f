//! Download stage: reads each job's input object from the input store into one buffer sized
//! from the object's length, and hands it to the CPU stage.
//!
//! At most `concurrency` downloads run at once, and a full output channel stops the stage, so
//! memory is bounded by the channel capacity and the concurrency times the input byte limit.

use std::sync::Arc;
use std::time::Instant;

use rfo_core::storage::{ObjectStore, StorageError};
use rfo_core::{ErrorCode, JobError};
use tokio::sync::{Semaphore, mpsc};

use crate::failpoint::{self, Point};
use crate::retry::Backoff;
use crate::stage::{Delivery, Downloaded, StageTimings, elapsed_ms};

/// Settings of the download stage.
#[derive(Debug, Clone)]
pub struct DownloadSettings {
    pub concurrency: usize,
    /// Objects larger than this fail with `input_too_large` before their body is read.
    pub max_input_bytes: u64,
    /// Attempts per job before a storage failure is recorded.
    pub max_attempts: u32,
    pub backoff: Backoff,
}

pub struct Downloader {
    pub input: ObjectStore,
    pub settings: DownloadSettings,
}

impl Downloader {
    /// Runs until `deliveries` closes, then waits for the downloads in flight.
    pub async fn run(
        self: Arc<Self>,
        mut deliveries: mpsc::Receiver<Delivery>,
        downloaded: mpsc::Sender<Downloaded>,
    ) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(delivery) = deliveries.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let downloader = self.clone();
            let downloaded = downloaded.clone();
            tasks.spawn(async move {
                let item = downloader.download(delivery).await;
                let _ = downloaded.send(item).await;
                drop(slot);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn download(&self, delivery: Delivery) -> Downloaded {
        failpoint::hit(Point::Download, Some(delivery.message.job_id)).await;
        let started = Instant::now();
        let job_id = delivery.message.job_id;
        let mut attempts = 0;
        let bytes = loop {
            attempts += 1;
            let error = match self
                .input
                .get(&delivery.message.image_key, self.settings.max_input_bytes)
                .await
            {
                Ok(bytes) => break Ok(bytes),
                Err(error) => error,
            };
            if !error.is_transient() {
                break Err(permanent(error, self.settings.max_input_bytes));
            }
            if attempts >= self.settings.max_attempts {
                tracing::warn!(%job_id, attempts, %error, "download failed; retry budget spent");
                break Err(JobError::new(
                    ErrorCode::StorageUnavailable,
                    format!(
                        "the input image could not be read from the object store after {attempts} attempts"
                    ),
                ));
            }
            let delay = self.settings.backoff.delay(attempts - 1);
            tracing::warn!(%job_id, attempts, %error, ?delay, "download failed; retrying");
            tokio::time::sleep(delay).await;
        };
        let timings = StageTimings {
            download_ms: elapsed_ms(started),
            ..StageTimings::default()
        };
        metrics::histogram!("rfo_stage_duration_seconds", "stage" => "download")
            .record(started.elapsed().as_secs_f64());
        Downloaded {
            delivery,
            attempts,
            timings,
            bytes,
        }
    }
}

/// Turns a failure that retrying cannot fix into the job's error.
fn permanent(error: StorageError, limit: u64) -> JobError {
    match error {
        StorageError::NotFound => JobError::new(
            ErrorCode::InputNotFound,
            "the input image is no longer in the input store",
        ),
        StorageError::TooLarge { size, .. } => JobError::new(
            ErrorCode::InputTooLarge,
            format!(
                "the input image is at least {size} bytes; the limit is {limit} bytes (RFO_MAX_INPUT_BYTES)"
            ),
        ),
        StorageError::InvalidKey(message) => JobError::new(ErrorCode::InvalidKey, message),
        StorageError::Unavailable(message) => JobError::new(ErrorCode::StorageUnavailable, message),
    }
}
