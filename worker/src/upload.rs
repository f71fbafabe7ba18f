//! Upload stage: writes each job's overlay and preview to the output bucket, with a multipart
//! upload for overlays above a size threshold, and hands the result to the insert stage.
//!
//! A failed multipart upload is aborted so that no parts are left behind. Keys are functions of
//! the job id, so a re-run overwrites the same objects.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use rfo_core::job::{overlay_key, preview_key};
use rfo_core::{ErrorCode, JobError};
use tokio::sync::{Semaphore, mpsc};

use crate::retry::Backoff;
use crate::stage::{Finished, Processed, Uploaded, elapsed_ms};

/// Settings of the upload stage.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub bucket: String,
    pub prefix: String,
    pub concurrency: usize,
    /// Objects of at least this many bytes go up as multipart uploads.
    pub multipart_threshold: usize,
    /// Size of each part but the last (S3 needs at least 5 MiB).
    pub part_size: usize,
    pub max_attempts: u32,
    pub backoff: Backoff,
}

pub struct Uploader {
    pub client: aws_sdk_s3::Client,
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
                        self.put(&overlay, overlay_bytes.clone()).await?;
                        self.put(&preview, preview_bytes.clone()).await
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
        Finished {
            delivery,
            attempts,
            timings,
            outcome,
        }
    }

    /// Writes one object, as a multipart upload when it is large.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), String> {
        let key = format!("{}{}", self.settings.prefix, key);
        if body.len() < self.settings.multipart_threshold {
            return self
                .client
                .put_object()
                .bucket(&self.settings.bucket)
                .key(&key)
                .content_type("image/png")
                .body(ByteStream::from(body))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| DisplayErrorContext(e).to_string());
        }
        self.put_multipart(&key, body).await
    }

    async fn put_multipart(&self, key: &str, body: Bytes) -> Result<(), String> {
        let bucket = &self.settings.bucket;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("image/png")
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        let Some(upload_id) = created.upload_id() else {
            return Err("the object store returned no upload id".to_owned());
        };
        match self.upload_parts(key, upload_id, &body).await {
            Ok(parts) => {
                let completed = self
                    .client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await;
                match completed {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        self.abort(key, upload_id).await;
                        Err(DisplayErrorContext(e).to_string())
                    }
                }
            }
            Err(error) => {
                self.abort(key, upload_id).await;
                Err(error)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        body: &Bytes,
    ) -> Result<Vec<CompletedPart>, String> {
        let part_size = self.settings.part_size.max(5 * 1024 * 1024);
        let mut parts = Vec::new();
        let mut start = 0;
        let mut number = 1;
        while start < body.len() {
            let end = (start + part_size).min(body.len());
            let output = self
                .client
                .upload_part()
                .bucket(&self.settings.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body.slice(start..end)))
                .send()
                .await
                .map_err(|e| DisplayErrorContext(e).to_string())?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(output.e_tag().map(str::to_owned))
                    .build(),
            );
            start = end;
            number += 1;
        }
        Ok(parts)
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %DisplayErrorContext(e), "failed to abort a multipart upload; its parts stay until a bucket lifecycle rule removes them");
        }
    }
}
