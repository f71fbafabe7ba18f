//! Insert stage: writes finished jobs to the database in batches, one statement per batch,
//! then acknowledges to the queue what the batch made durable.
//!
//! A batch holds at most `max_batch` jobs and waits at most `linger` for more. While the
//! database is unreachable the stage retries the same batch, so the pipeline behind it fills
//! and stops: an outage delays jobs but fails none.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rfo_core::ErrorKind;
use rfo_core::db::JobStore;
use rfo_core::record::{Detection, JobResult};
use tokio::sync::{mpsc, watch};

use crate::acknowledge::{Acknowledger, DeadLetter, Settled};
use crate::failpoint::{self, Point};
use crate::retry::Backoff;
use crate::stage::{Finished, elapsed_ms};

/// Settings of the insert stage.
#[derive(Debug, Clone)]
pub struct InsertSettings {
    pub max_batch: usize,
    pub linger: Duration,
    pub backoff: Backoff,
    /// After shutdown starts, how long a failing batch is retried before the worker gives up on
    /// it; its jobs are then delivered again after a restart.
    pub shutdown_retry: Duration,
    pub detector: String,
    pub detector_version: String,
    pub log_keys: bool,
}

pub struct Inserter {
    pub store: JobStore,
    pub acknowledger: Arc<Acknowledger>,
    pub settings: InsertSettings,
}

impl Inserter {
    /// Runs until `finished` closes and the last batch is written.
    pub async fn run(
        self,
        mut finished: mpsc::Receiver<Finished>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut batch: Vec<Finished> = Vec::with_capacity(self.settings.max_batch);
        loop {
            let Some(first) = finished.recv().await else {
                break;
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.settings.linger;
            while batch.len() < self.settings.max_batch {
                match tokio::time::timeout_at(deadline, finished.recv()).await {
                    Ok(Some(item)) => batch.push(item),
                    Ok(None) | Err(_) => break,
                }
            }
            self.write(&mut batch, &shutdown).await;
        }
        self.acknowledger.finish();
        tracing::info!("insert stage stopped");
    }

    async fn write(&self, batch: &mut Vec<Finished>, shutdown: &watch::Receiver<bool>) {
        let started = Instant::now();
        let processed_at = chrono::Utc::now();
        let results: Vec<JobResult> = batch.iter().map(|f| self.result(f, processed_at)).collect();
        let mut failures = 0;
        let mut shutdown_since: Option<Instant> = None;
        loop {
            match self.store.upsert_results(&results).await {
                Ok(()) => break,
                Err(error) => {
                    failures += 1;
                    metrics::counter!("rfo_insert_retries_total").increment(1);
                    if *shutdown.borrow() {
                        let since = *shutdown_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.settings.shutdown_retry {
                            tracing::error!(%error, jobs = batch.len(), "giving up on a batch at shutdown; its jobs will be delivered again");
                            batch.clear();
                            return;
                        }
                    }
                    let delay = self.settings.backoff.delay(failures - 1);
                    tracing::warn!(%error, jobs = batch.len(), failures, ?delay, "database write failed; retrying the batch");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        failpoint::hit(Point::AfterInsert, None).await;
        let insert_ms = elapsed_ms(started);
        metrics::histogram!("rfo_stage_duration_seconds", "stage" => "insert")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("rfo_insert_batch_size").record(batch.len() as f64);
        let settled = batch.iter().map(settle).collect();
        self.acknowledger.settle(settled, shutdown).await;
        for item in batch.drain(..) {
            log_job(&item, insert_ms, self.settings.log_keys);
        }
    }

    fn result(&self, item: &Finished, processed_at: chrono::DateTime<chrono::Utc>) -> JobResult {
        let message = &item.delivery.message;
        let outcome = match &item.outcome {
            Ok(uploaded) => Ok(Detection {
                overlay_key: uploaded.overlay_key.clone(),
                preview_key: uploaded.preview_key.clone(),
                boxes: uploaded.boxes.clone(),
                width: uploaded.width,
                height: uploaded.height,
                detector: self.settings.detector.clone(),
                detector_version: self.settings.detector_version.clone(),
            }),
            Err(error) => Err(error.clone()),
        };
        JobResult {
            job_id: message.job_id,
            image_key: message.image_key.clone(),
            submitted_at: message.submitted_at,
            outcome,
            attempts: item.attempts.max(1),
            processed_at,
        }
    }
}

/// Decides how a recorded job is acknowledged: a transient failure that spent its retry
/// budget also goes to the dead-letter queue.
fn settle(item: &Finished) -> Settled {
    let dead_letter = match &item.outcome {
        Err(error) if error.code.kind() == ErrorKind::Transient => Some(DeadLetter {
            key: item.delivery.message.job_id.to_string(),
            payload: item.delivery.payload.clone(),
            code: error.code.as_str(),
            attempts: item.attempts,
        }),
        _ => None,
    };
    Settled {
        receipt: item.delivery.receipt,
        dead_letter,
    }
}

fn log_job(item: &Finished, insert_ms: u64, log_keys: bool) {
    let job_id = item.delivery.message.job_id;
    let t = &item.timings;
    let total_ms = elapsed_ms(item.delivery.fetched_at);
    metrics::histogram!("rfo_job_duration_seconds")
        .record(item.delivery.fetched_at.elapsed().as_secs_f64());
    match &item.outcome {
        Ok(u) => {
            metrics::counter!("rfo_jobs_total", "status" => "done", "code" => "").increment(1);
            let b = u.boxes.first();
            tracing::info!(
                %job_id,
                overlay_key = %u.overlay_key,
                box_x1 = b.map(|b| b.x1), box_y1 = b.map(|b| b.y1), box_x2 = b.map(|b| b.x2), box_y2 = b.map(|b| b.y2),
                width = u.width, height = u.height,
                download_ms = t.download_ms, decode_ms = t.decode_ms, render_ms = t.render_ms,
                upload_ms = t.upload_ms, insert_ms, total_ms,
                "job done"
            );
        }
        Err(error) => {
            metrics::counter!("rfo_jobs_total", "status" => "failed", "code" => error.code.as_str()).increment(1);
            tracing::info!(
                %job_id, code = %error.code, message = %error.message,
                download_ms = t.download_ms, decode_ms = t.decode_ms, render_ms = t.render_ms,
                upload_ms = t.upload_ms, insert_ms, total_ms,
                "job failed"
            );
        }
    }
    if log_keys {
        tracing::debug!(%job_id, image_key = %item.delivery.message.image_key, "job image key");
    }
}
