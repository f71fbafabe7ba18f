//! Fetch stage of the embedded queue: leases one record for each free slot of the channel to
//! the download stage, so the records a worker holds are bounded by the channel capacity.
//!
//! A renewal task extends the leases of the records in flight and releases the leases of
//! workers on this machine that died, so that their records are processed again at once.
//! Records that are not valid job messages go to the dead letters.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rfo_core::job::JobMessage;
use rfo_core::queue::EmbeddedQueue;
use tokio::sync::{mpsc, watch};

use crate::stage::{Delivery, Receipt};

/// How long the stage waits before it looks for new records when the queue is empty.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Sequence numbers of the records this worker leased and has not settled.
pub type InFlight = Arc<Mutex<BTreeSet<i64>>>;

pub fn lock(in_flight: &Mutex<BTreeSet<i64>>) -> std::sync::MutexGuard<'_, BTreeSet<i64>> {
    in_flight
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the fetch loop. It ends when `shutdown` turns true, dropping `deliveries` so the later stages
/// drain.
pub async fn run(
    queue: EmbeddedQueue,
    in_flight: InFlight,
    deliveries: mpsc::Sender<Delivery>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let permit = tokio::select! {
            permit = deliveries.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.changed() => continue,
        };
        let record = match queue.lease(1).await {
            Ok(mut records) => records.pop(),
            Err(error) => {
                tracing::warn!(%error, "failed to lease from the embedded queue; retrying");
                metrics::counter!("rfo_fetch_errors_total").increment(1);
                drop(permit);
                sleep_or_shutdown(Duration::from_secs(1), &mut shutdown).await;
                continue;
            }
        };
        let Some(record) = record else {
            drop(permit);
            sleep_or_shutdown(POLL_INTERVAL, &mut shutdown).await;
            continue;
        };
        match JobMessage::parse(&record.payload) {
            Ok(message) => {
                lock(&in_flight).insert(record.seq);
                permit.send(Delivery {
                    receipt: Receipt::Embedded { seq: record.seq },
                    message,
                    payload: record.payload,
                    fetched_at: Instant::now(),
                });
            }
            Err(error) => {
                tracing::warn!(seq = record.seq, %error, "record is not a job; moving it to the dead letters");
                metrics::counter!("rfo_dead_letters_total", "code" => "invalid_message")
                    .increment(1);
                if let Err(error) = queue.dead_letter(record.seq, "invalid_message", 0).await {
                    tracing::warn!(seq = record.seq, %error, "failed to move a record to the dead letters; it will be delivered again");
                }
            }
        }
    }
    tracing::info!("fetch stopped");
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// Renews the leases in flight three times per lease period and reclaims the records of dead
/// workers, until aborted. The pipeline aborts it after its last stage has drained.
pub async fn renew(queue: EmbeddedQueue, in_flight: InFlight) {
    let period = queue.lease_duration() / 3;
    loop {
        let seqs: Vec<i64> = lock(&in_flight).iter().copied().collect();
        if let Err(error) = queue.renew(&seqs).await {
            tracing::warn!(%error, records = seqs.len(), "failed to renew leases; other workers may take these records");
        }
        match queue.reclaim_abandoned().await {
            Ok(0) => {}
            Ok(records) => tracing::info!(records, "released the leases of stopped workers"),
            Err(error) => tracing::warn!(%error, "failed to look for leases of stopped workers"),
        }
        tokio::time::sleep(period).await;
    }
}
