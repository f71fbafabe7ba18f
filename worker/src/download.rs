//! Download stage: streams each job's input object from S3 into one buffer sized from the
//! object's length, and hands it to the CPU stage.
//!
//! At most `concurrency` downloads run at once, and a full output channel stops the stage, so
//! memory is bounded by the channel capacity and the concurrency times the input byte limit.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use rfo_core::{ErrorCode, JobError};
use tokio::sync::{Semaphore, mpsc};

use crate::retry::Backoff;
use crate::stage::{Delivery, Downloaded, StageTimings, elapsed_ms};

/// Settings of the download stage.
#[derive(Debug, Clone)]
pub struct DownloadSettings {
    pub bucket: String,
    pub prefix: String,
    pub concurrency: usize,
    /// Objects larger than this fail with `input_too_large` before their body is read.
    pub max_input_bytes: u64,
    /// Attempts per job before a storage failure is recorded.
    pub max_attempts: u32,
    pub backoff: Backoff,
}

pub struct Downloader {
    pub client: aws_sdk_s3::Client,
    pub settings: DownloadSettings,
}

enum Failure {
    Permanent(JobError),
    Transient(String),
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
        let started = Instant::now();
        let key = format!("{}{}", self.settings.prefix, delivery.message.image_key);
        let mut attempts = 0;
        let bytes = loop {
            attempts += 1;
            match self.fetch(&key).await {
                Ok(bytes) => break Ok(bytes),
                Err(Failure::Permanent(error)) => break Err(error),
                Err(Failure::Transient(error)) if attempts < self.settings.max_attempts => {
                    let delay = self.settings.backoff.delay(attempts - 1);
                    tracing::warn!(job_id = %delivery.message.job_id, attempts, %error, ?delay, "download failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(Failure::Transient(error)) => {
                    tracing::warn!(job_id = %delivery.message.job_id, attempts, %error, "download failed; retry budget spent");
                    break Err(JobError::new(
                        ErrorCode::StorageUnavailable,
                        format!(
                            "the input image could not be read from the object store after {attempts} attempts"
                        ),
                    ));
                }
            }
        };
        let timings = StageTimings {
            download_ms: elapsed_ms(started),
            ..StageTimings::default()
        };
        Downloaded {
            delivery,
            attempts,
            timings,
            bytes,
        }
    }

    async fn fetch(&self, key: &str) -> Result<Vec<u8>, Failure> {
        let response = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await;
        let mut output = match response {
            Ok(output) => output,
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), GetObjectError::NoSuchKey(_))
                    || e.raw().status().as_u16() == 404 =>
            {
                return Err(Failure::Permanent(JobError::new(
                    ErrorCode::InputNotFound,
                    "the input image is no longer in the input bucket",
                )));
            }
            Err(e) => return Err(Failure::Transient(DisplayErrorContext(e).to_string())),
        };
        let length = output
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let limit = self.settings.max_input_bytes;
        if length > limit {
            return Err(Failure::Permanent(too_large(length, limit)));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
        loop {
            match output.body.try_next().await {
                Ok(Some(chunk)) => {
                    if (bytes.len() + chunk.len()) as u64 > limit {
                        return Err(Failure::Permanent(too_large(
                            (bytes.len() + chunk.len()) as u64,
                            limit,
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Failure::Transient(format!(
                        "reading the object body failed: {e}"
                    )));
                }
            }
        }
        if length != 0 && bytes.len() as u64 != length {
            return Err(Failure::Transient(format!(
                "object body ended after {} of {length} bytes",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

fn too_large(size: u64, limit: u64) -> JobError {
    JobError::new(
        ErrorCode::InputTooLarge,
        format!(
            "the input image is at least {size} bytes; the limit is {limit} bytes (RFO_MAX_INPUT_BYTES)"
        ),
    )
}
