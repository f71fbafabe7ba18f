//! Publishing jobs: to a Kafka topic, or to the embedded queue of single-machine runs, chosen
//! by URL. The worker's side of the embedded queue is [`EmbeddedQueue`] itself; its side of
//! Kafka is the consumer in `rfo-worker`.

mod embedded;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

pub use embedded::{DEFAULT_LEASE, EmbeddedQueue, LeasedRecord};

use crate::config::QueueUrl;
use crate::job::JobMessage;
use crate::kafka::KafkaContext;

/// Failure of a queue call. Every variant is transient.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue did not accept the record: {0}")]
    Unavailable(String),
    #[error("the embedded queue failed: {0}")]
    Embedded(#[from] sqlx::Error),
}

/// Where submitted jobs go.
#[derive(Clone)]
pub enum Publisher {
    Kafka(KafkaPublisher),
    Embedded(EmbeddedQueue),
}

impl Publisher {
    /// Opens the queue named by `url`. `timeout` bounds how long one publish may wait for the
    /// broker's acknowledgement; `kafka` contains extra librdkafka settings, and `context` makes
    /// MSK IAM tokens when those ask for OAUTHBEARER.
    pub async fn open(
        url: &QueueUrl,
        timeout: Duration,
        kafka: &BTreeMap<String, String>,
        context: KafkaContext,
    ) -> Result<Publisher, QueueError> {
        match url {
            QueueUrl::Kafka { brokers, topic } => {
                let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                let producer: FutureProducer<KafkaContext> =
                    crate::kafka::producer_config(brokers, timeout_ms, kafka)
                        .create_with_context(context)
                        .map_err(|e| {
                            QueueError::Unavailable(format!(
                                "failed to create the Kafka producer: {e}"
                            ))
                        })?;
                Ok(Publisher::Kafka(KafkaPublisher {
                    producer,
                    topic: topic.clone(),
                    timeout,
                }))
            }
            QueueUrl::Embedded { path } => Ok(Publisher::Embedded(
                EmbeddedQueue::open(path, embedded::DEFAULT_LEASE).await?,
            )),
        }
    }

    /// Publishes a job and returns once the queue has stored it durably.
    pub async fn publish(&self, message: &JobMessage) -> Result<(), QueueError> {
        let key = message.job_id.to_string();
        let payload = message.to_json();
        match self {
            Publisher::Kafka(kafka) => kafka.send(&key, &payload).await,
            Publisher::Embedded(queue) => queue.publish(&key, &payload).await,
        }
    }

    /// Checks that the queue can be reached within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        match self {
            Publisher::Kafka(kafka) => kafka.ready(timeout).await,
            Publisher::Embedded(queue) => {
                matches!(
                    tokio::time::timeout(timeout, queue.depth()).await,
                    Ok(Ok(_))
                )
            }
        }
    }
}

/// A producer that waits for every in-sync replica.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer<KafkaContext>,
    topic: String,
    timeout: Duration,
}

impl KafkaPublisher {
    async fn send(&self, key: &str, payload: &[u8]) -> Result<(), QueueError> {
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        match self
            .producer
            .send(record, Timeout::After(self.timeout))
            .await
        {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(QueueError::Unavailable(error.to_string())),
        }
    }

    /// Fetches the topic's metadata on a blocking thread, since librdkafka's call blocks.
    async fn ready(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }
}
