//! Fetch stage of the Kafka backend: reads job records from the consumer group and hands them
//! to the download stage through a bounded channel.
//!
//! When that channel is full the stage pauses its partitions and keeps polling, so the consumer
//! stays in the group while Kafka holds the backlog. Records that are not valid job messages go
//! to the dead-letter topic and are committed like finished jobs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::OAuthToken;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use rfo_core::job::{JobMessage, format_timestamp};
use rfo_core::kafka::KafkaContext;
use tokio::sync::{mpsc, watch};

use crate::offsets::OffsetTracker;
use crate::stage::{Delivery, Receipt};

/// Consumer context that commits what is done when partitions are revoked, and makes MSK IAM
/// tokens through [`KafkaContext`].
pub struct WorkerContext {
    pub topic: String,
    pub offsets: Arc<Mutex<OffsetTracker>>,
    pub kafka: KafkaContext,
}

impl ClientContext for WorkerContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn stats(&self, statistics: Statistics) {
        crate::telemetry::record_consumer_lag(&self.topic, &statistics);
    }

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.kafka.oauth_token()
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        let finals = lock(&self.offsets).revoke(&partitions);
        crate::telemetry::clear_consumer_lag(&self.topic, &partitions);
        tracing::info!(?partitions, "partitions revoked");
        if finals.is_empty() {
            return;
        }
        let tpl = offsets_list(&self.topic, &finals);
        if let Err(error) = consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(%error, "failed to commit offsets of revoked partitions; their jobs will be delivered again");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "partitions assigned");
        }
    }
}

pub type JobConsumer = StreamConsumer<WorkerContext>;

/// Locks the tracker. A panic while the lock is held cannot leave it inconsistent, because
/// every method completes its change before it can panic, so a poisoned lock is still used.
pub fn lock(offsets: &Mutex<OffsetTracker>) -> std::sync::MutexGuard<'_, OffsetTracker> {
    offsets
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn offsets_list(topic: &str, offsets: &[(i32, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (partition, offset) in offsets {
        // Adding a partition to a fresh list cannot fail.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

/// The dead-letter topic and the producer that writes to it.
pub struct DeadLetters {
    pub producer: FutureProducer<KafkaContext>,
    pub topic: String,
}

impl DeadLetters {
    /// Sends a record to the dead-letter topic, retrying until the broker takes it or the
    /// worker shuts down. Returns whether it was sent.
    pub async fn send(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        code: &str,
        attempts: u32,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        let attempts = attempts.to_string();
        let failed_at = format_timestamp(&chrono::Utc::now());
        let mut delay = Duration::from_millis(200);
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "rfo-error-code",
                    value: Some(code),
                })
                .insert(Header {
                    key: "rfo-attempts",
                    value: Some(attempts.as_str()),
                })
                .insert(Header {
                    key: "rfo-failed-at",
                    value: Some(failed_at.as_str()),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(value) = value {
                record = record.payload(value);
            }
            match self
                .producer
                .send(record, Timeout::After(Duration::from_secs(10)))
                .await
            {
                Ok(_) => return true,
                Err((error, _)) => {
                    tracing::warn!(%error, topic = %self.topic, "failed to write to the dead-letter topic; retrying");
                    if *shutdown.borrow() {
                        return false;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// The fetch loop. Ends when `shutdown` turns true, dropping `deliveries` so the later stages
/// drain.
pub async fn run(
    consumer: Arc<JobConsumer>,
    offsets: Arc<Mutex<OffsetTracker>>,
    dead_letters: Arc<DeadLetters>,
    deliveries: mpsc::Sender<Delivery>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backlog: VecDeque<Delivery> = VecDeque::new();
    let mut paused = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Hand on what is waiting before taking more.
        while let Some(delivery) = backlog.pop_front() {
            match deliveries.try_send(delivery) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    backlog.push_front(delivery);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if backlog.is_empty() && paused {
            set_paused(&consumer, false);
            paused = false;
        } else if !backlog.is_empty() && !paused {
            set_paused(&consumer, true);
            paused = true;
        }

        tokio::select! {
            received = consumer.recv() => match received {
                Ok(record) => {
                    if let Some(delivery) = accept(&record, &offsets, &dead_letters, &shutdown).await {
                        backlog.push_back(delivery);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "failed to fetch from Kafka; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            permit = deliveries.reserve(), if !backlog.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(delivery) = backlog.pop_front() {
                        permit.send(delivery);
                    }
                }
                Err(_) => return,
            },
            _ = shutdown.changed() => {}
        }
    }
    tracing::info!(undelivered = backlog.len(), "fetch stopped");
}

/// Parses one record. Returns the delivery to process, or `None` when the record went to the
/// dead-letter topic.
async fn accept(
    record: &BorrowedMessage<'_>,
    offsets: &Mutex<OffsetTracker>,
    dead_letters: &DeadLetters,
    shutdown: &watch::Receiver<bool>,
) -> Option<Delivery> {
    let (partition, offset) = (record.partition(), record.offset());
    lock(offsets).track(partition, offset);
    let payload = record.payload().unwrap_or_default();
    match JobMessage::parse(payload) {
        Ok(message) => Some(Delivery {
            receipt: Receipt::Kafka { partition, offset },
            message,
            payload: payload.to_vec(),
            fetched_at: Instant::now(),
        }),
        Err(error) => {
            tracing::warn!(partition, offset, %error, "record is not a job; sending it to the dead-letter topic");
            metrics::counter!("rfo_dead_letters_total", "code" => "invalid_message").increment(1);
            if dead_letters
                .send(
                    record.key(),
                    record.payload(),
                    "invalid_message",
                    0,
                    shutdown,
                )
                .await
            {
                lock(offsets).complete(partition, offset);
            }
            None
        }
    }
}

fn set_paused(consumer: &JobConsumer, pause: bool) {
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            tracing::warn!(%error, "failed to read the partition assignment");
            return;
        }
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => tracing::debug!(pause, "partitions paused or resumed"),
        Err(error) => tracing::warn!(%error, pause, "failed to pause or resume partitions"),
    }
}
