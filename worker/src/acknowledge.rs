//! Acknowledging jobs once the database has recorded them: Kafka offsets are committed up to
//! each partition's watermark, and embedded queue records are deleted. A job that failed
//! transiently after its whole retry budget goes to the dead-letter queue first.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{CommitMode, Consumer};
use rfo_core::queue::EmbeddedQueue;
use tokio::sync::watch;

use crate::embedded_source::{self, InFlight};
use crate::kafka_source::{DeadLetters, JobConsumer, lock, offsets_list};
use crate::offsets::OffsetTracker;
use crate::stage::Receipt;

/// A recorded job, ready to be acknowledged.
pub struct Settled {
    pub receipt: Receipt,
    /// Set when the job's message goes to the dead-letter queue.
    pub dead_letter: Option<DeadLetter>,
}

/// A job message bound for the dead-letter queue.
pub struct DeadLetter {
    pub key: String,
    pub payload: Vec<u8>,
    pub code: &'static str,
    pub attempts: u32,
}

pub enum Acknowledger {
    Kafka {
        consumer: Arc<JobConsumer>,
        offsets: Arc<Mutex<OffsetTracker>>,
        topic: String,
        dead_letters: Arc<DeadLetters>,
    },
    Embedded {
        queue: EmbeddedQueue,
        in_flight: InFlight,
    },
}

impl Acknowledger {
    /// Acknowledges recorded jobs. A job whose dead letter cannot be written is left
    /// unacknowledged, so the queue delivers it again.
    pub async fn settle(&self, items: Vec<Settled>, shutdown: &watch::Receiver<bool>) {
        match self {
            Acknowledger::Kafka {
                offsets,
                dead_letters,
                ..
            } => {
                for item in items {
                    let Receipt::Kafka { partition, offset } = item.receipt else {
                        continue;
                    };
                    if let Some(letter) = &item.dead_letter {
                        let key = Some(letter.key.as_bytes());
                        let sent = dead_letters
                            .send(
                                key,
                                Some(&letter.payload),
                                letter.code,
                                letter.attempts,
                                shutdown,
                            )
                            .await;
                        if !sent {
                            continue;
                        }
                        metrics::counter!("rfo_dead_letters_total", "code" => letter.code)
                            .increment(1);
                    }
                    lock(offsets).complete(partition, offset);
                }
                self.commit(CommitMode::Async);
            }
            Acknowledger::Embedded { queue, in_flight } => {
                let mut done = Vec::with_capacity(items.len());
                for item in items {
                    let Receipt::Embedded { seq } = item.receipt else {
                        continue;
                    };
                    match &item.dead_letter {
                        Some(letter) => {
                            match queue.dead_letter(seq, letter.code, letter.attempts).await {
                                Ok(()) => {
                                    metrics::counter!("rfo_dead_letters_total", "code" => letter.code).increment(1);
                                }
                                Err(error) => {
                                    tracing::warn!(seq, %error, "failed to move a record to the dead letters; it will be delivered again");
                                }
                            }
                        }
                        None => done.push(seq),
                    }
                    embedded_source::lock(in_flight).remove(&seq);
                }
                if let Err(error) = queue.acknowledge(&done).await {
                    tracing::warn!(%error, records = done.len(), "failed to delete recorded jobs from the embedded queue; they will be delivered again");
                }
            }
        }
    }

    /// Commits what is done, waiting for the broker; called once the pipeline has drained.
    pub fn finish(&self) {
        self.commit(CommitMode::Sync);
    }

    fn commit(&self, mode: CommitMode) {
        let Acknowledger::Kafka {
            consumer,
            offsets,
            topic,
            ..
        } = self
        else {
            return;
        };
        let moved = lock(offsets).take_committable();
        if moved.is_empty() {
            return;
        }
        let tpl = offsets_list(topic, &moved);
        if let Err(error) = consumer.commit(&tpl, mode) {
            tracing::warn!(%error, "failed to commit offsets; the next commit covers them");
        }
    }
}
