//! Publishes again the queued jobs whose message the queue never acknowledged: rfo-api stopped
//! between recording a job and publishing it, or the row could not be updated after the
//! publish. A job older than the give-up age is marked failed with `queue_unavailable`
//! instead, so no job stays `queued` forever.
//!
//! A job published twice is processed twice, which the worker's upsert and the job-derived
//! overlay key make harmless. Several rfo-api processes may sweep the same database.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rfo_core::db::DbError;
use rfo_core::job::{JobMessage, now_micros};

use crate::routes::AppState;
use crate::settings::RepublishSettings;

/// Maximum number of rows one sweep handles. The next sweep takes up a longer backlog.
const SWEEP_BATCH: u32 = 500;

/// Counts of one sweep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepOutcome {
    pub published: usize,
    pub given_up: usize,
    /// Jobs left for the next sweep because the queue did not take a message.
    pub deferred: usize,
}

/// Sweeps at start-up and then every `settings.interval` until the process ends.
pub fn spawn(state: Arc<AppState>, settings: RepublishSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match sweep(&state, &settings).await {
                Ok(outcome) if outcome != SweepOutcome::default() => {
                    tracing::info!(
                        published = outcome.published,
                        given_up = outcome.given_up,
                        deferred = outcome.deferred,
                        "swept jobs the queue never acknowledged"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "failed to search for unpublished jobs; retrying at the next sweep");
                }
            }
            tokio::time::sleep(settings.interval).await;
        }
    })
}

/// Publishes or gives up every unacknowledged job older than `settings.after`, up to
/// [`SWEEP_BATCH`] of them.
pub async fn sweep(
    state: &AppState,
    settings: &RepublishSettings,
) -> Result<SweepOutcome, DbError> {
    let now = now_micros();
    let created_before = cutoff(now, settings.after);
    let give_up_before = cutoff(now, settings.give_up);
    let jobs = state.store.unpublished(created_before, SWEEP_BATCH).await?;
    let mut outcome = SweepOutcome::default();
    let mut queue_down = false;
    for job in jobs {
        let job_id = job.job_id;
        if job.created_at < give_up_before {
            let message = format!(
                "the queue never acknowledged the job within {} s of its submission; submit it again",
                settings.give_up.as_secs()
            );
            state.store.mark_unqueued(job_id, &message).await?;
            tracing::warn!(%job_id, "gave up publishing a job");
            metrics::counter!("rfo_api_republish_total", "outcome" => "given_up").increment(1);
            outcome.given_up += 1;
            continue;
        }
        if queue_down {
            outcome.deferred += 1;
            continue;
        }
        let message = JobMessage::new(job_id, job.image_key, job.created_at);
        match state.publisher().publish(&message).await {
            Ok(()) => {
                state.store.mark_published(job_id).await?;
                tracing::info!(%job_id, "published a job the queue had not acknowledged");
                metrics::counter!("rfo_api_republish_total", "outcome" => "published").increment(1);
                outcome.published += 1;
            }
            Err(error) => {
                // The queue is likely down, so the remaining jobs wait for the next sweep.
                tracing::warn!(%job_id, %error, "failed to publish an unacknowledged job; retrying at the next sweep");
                metrics::counter!("rfo_api_republish_total", "outcome" => "deferred").increment(1);
                queue_down = true;
                outcome.deferred += 1;
            }
        }
    }
    Ok(outcome)
}

/// Returns the time `age` before `now`, or the earliest time chrono represents when that is
/// earlier.
fn cutoff(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}
