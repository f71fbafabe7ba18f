//! Wires the stages together, from the insert stage back to the fetch stage:
//!
//! ```text
//! fetch -> download -> decode + detect + overlay + encode -> upload -> batched insert -> ack
//! ```
//!
//! Each pair of stages is joined by a bounded channel of `channel_capacity` jobs, and the
//! depth of each is exported as `rfo_channel_depth{channel=STAGE}`, STAGE being the stage that
//! reads it. Shutdown
//! stops the fetch stage; each later stage ends when the channel before it is closed and empty.
//! The stages are the same for every backend; only the fetch stage and the acknowledgement
//! differ between Kafka and the embedded queue.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use rfo_core::config::QueueUrl;
use rfo_core::db::{JobStore, PoolSettings};
use rfo_core::kafka::KafkaContext;
use rfo_core::queue::EmbeddedQueue;
use rfo_core::s3::S3Settings;
use rfo_core::storage::ObjectStore;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::acknowledge::Acknowledger;
use crate::download::{DownloadSettings, Downloader};
use crate::insert::{InsertSettings, Inserter};
use crate::kafka_source::{DeadLetters, JobConsumer, WorkerContext};
use crate::offsets::OffsetTracker;
use crate::process::Processor;
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::stage::Delivery;
use crate::telemetry::{Gauges, STATISTICS_INTERVAL_MS};
use crate::upload::{UploadSettings, Uploader};
use rfo_image::decode::DecodeLimits;
use rfo_image::detect::{Detector, ExposureDetector, RandomDetector};
use rfo_image::overlay::EncodeSettings;

/// Attempts per job of a download or an upload before the job fails as `storage_unavailable`.
/// The backoff below (0.2 s doubling to 5 s, with jitter down to half) waits at least 28 s over
/// these attempts, so an S3 outage of that length stalls the jobs in flight instead of failing
/// them.
const STORAGE_ATTEMPTS: u32 = 16;

/// Runs the pipeline until `shutdown` turns true and the stages have drained.
pub async fn run(
    settings: Settings,
    store: JobStore,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let s3_settings = S3Settings {
        force_path_style: settings.s3_force_path_style,
        encryption: settings.s3_encryption.clone(),
        ..S3Settings::default()
    };
    let input = ObjectStore::open(&settings.input, &s3_settings)
        .await
        .context("failed to open RFO_INPUT_URL")?;
    let output = ObjectStore::open(&settings.output, &s3_settings)
        .await
        .context("failed to open RFO_OUTPUT_URL")?;
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let capacity = settings.channel_capacity;
    let source = Source::open(&settings).await?;
    let mut gauges = Gauges::default();
    source.probe_in_flight(&mut gauges);

    // Insert stage and acknowledgement.
    let detector = detector(&settings.detector);
    let (finished_tx, finished_rx) = mpsc::channel(capacity.max(settings.batch_size));
    gauges.channel("insert", &finished_tx);
    let inserter = Inserter {
        store,
        acknowledger: source.acknowledger.clone(),
        settings: InsertSettings {
            max_batch: settings.batch_size,
            linger: Duration::from_millis(settings.batch_linger_ms),
            backoff,
            shutdown_retry: Duration::from_secs(settings.shutdown_timeout_s / 2),
            detector: detector.name().to_owned(),
            detector_version: detector.version().to_owned(),
            log_keys: settings.log_keys,
        },
    };
    let insert_task = tokio::spawn(inserter.run(finished_rx, shutdown.clone()));

    // Upload stage.
    let (processed_tx, processed_rx) = mpsc::channel(capacity);
    gauges.channel("upload", &processed_tx);
    let uploader = Arc::new(Uploader {
        output,
        settings: UploadSettings {
            concurrency: settings.upload_concurrency,
            max_attempts: STORAGE_ATTEMPTS,
            backoff,
        },
    });
    let upload_task = tokio::spawn(uploader.run(processed_rx, finished_tx));

    // CPU stage: decode, detect, overlay, encode.
    let threads = if settings.worker_threads == 0 {
        num_cpus()
    } else {
        settings.worker_threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("rfo-cpu-{i}"))
        .build()
        .context("failed to start the CPU thread pool")?;
    let (downloaded_tx, downloaded_rx) = mpsc::channel(capacity);
    gauges.channel("process", &downloaded_tx);
    let processor = Arc::new(Processor {
        pool,
        limits: DecodeLimits {
            max_pixels: settings.max_pixels,
            max_side: settings.max_side,
            ..DecodeLimits::default()
        },
        detector,
        encode: EncodeSettings::default(),
    });
    let process_task = tokio::spawn(processor.run(downloaded_rx, processed_tx));

    // Download stage.
    let (delivery_tx, delivery_rx) = mpsc::channel(capacity);
    gauges.channel("download", &delivery_tx);
    let downloader = Arc::new(Downloader {
        input,
        settings: DownloadSettings {
            concurrency: settings.download_concurrency,
            max_input_bytes: settings.max_input_bytes,
            max_attempts: STORAGE_ATTEMPTS,
            backoff,
        },
    });
    let download_task = tokio::spawn(downloader.run(delivery_rx, downloaded_tx));

    // Fetch stage.
    tracing::info!(
        queue = %settings.queue.topic(),
        cpu_threads = threads,
        channel_capacity = capacity,
        "rfo-worker started"
    );
    let fetch_task = source.spawn_fetch(delivery_tx, shutdown);
    let gauge_task = gauges.spawn();

    let stages = [
        ("fetch", fetch_task),
        ("download", download_task),
        ("process", process_task),
        ("upload", upload_task),
        ("insert", insert_task),
    ];
    for (name, task) in stages {
        task.await
            .with_context(|| format!("the {name} stage panicked"))?;
    }
    gauge_task.abort();
    source.close();
    tracing::info!("rfo-worker drained");
    Ok(())
}

/// The queue side of the pipeline: where deliveries come from and how they are acknowledged.
struct Source {
    acknowledger: Arc<Acknowledger>,
    backend: SourceBackend,
}

enum SourceBackend {
    Kafka {
        consumer: Arc<JobConsumer>,
        offsets: Arc<Mutex<OffsetTracker>>,
        dead_letters: Arc<DeadLetters>,
    },
    Embedded {
        queue: EmbeddedQueue,
        renewal: JoinHandle<()>,
    },
}

impl Source {
    async fn open(settings: &Settings) -> anyhow::Result<Source> {
        match &settings.queue {
            QueueUrl::Kafka { brokers, topic } => {
                let offsets = Arc::new(Mutex::new(OffsetTracker::default()));
                let kafka_context = KafkaContext::new(settings.msk_iam)
                    .await
                    .context("failed to set up RFO_MSK_IAM")?;
                let context = WorkerContext {
                    topic: topic.clone(),
                    offsets: offsets.clone(),
                    kafka: kafka_context.clone(),
                };
                let mut config = rfo_core::kafka::consumer_config(
                    brokers,
                    &settings.consumer_group,
                    &settings.kafka,
                );
                if !settings.kafka.contains_key("statistics.interval.ms") {
                    config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
                }
                let consumer: JobConsumer = config
                    .create_with_context(context)
                    .context("failed to create the Kafka consumer for RFO_QUEUE_URL")?;
                consumer
                    .subscribe(&[topic])
                    .with_context(|| format!("failed to subscribe to topic {topic}"))?;
                let consumer = Arc::new(consumer);
                let producer: FutureProducer<KafkaContext> =
                    rfo_core::kafka::producer_config(brokers, 30_000, &settings.kafka)
                        .create_with_context(kafka_context)
                        .context("failed to create the Kafka producer of the dead-letter topic")?;
                let dead_letters = Arc::new(DeadLetters {
                    producer,
                    topic: format!("{topic}.dlq"),
                });
                let acknowledger = Arc::new(Acknowledger::Kafka {
                    consumer: consumer.clone(),
                    offsets: offsets.clone(),
                    topic: topic.clone(),
                    dead_letters: dead_letters.clone(),
                });
                Ok(Source {
                    acknowledger,
                    backend: SourceBackend::Kafka {
                        consumer,
                        offsets,
                        dead_letters,
                    },
                })
            }
            QueueUrl::Embedded { path } => {
                let queue = EmbeddedQueue::open(path, rfo_core::queue::DEFAULT_LEASE)
                    .await
                    .with_context(|| {
                        format!("failed to open the embedded queue {}", path.display())
                    })?;
                let in_flight = Arc::new(Mutex::new(BTreeSet::new()));
                let renewal = tokio::spawn(crate::embedded_source::renew(
                    queue.clone(),
                    in_flight.clone(),
                ));
                let acknowledger = Arc::new(Acknowledger::Embedded {
                    queue: queue.clone(),
                    in_flight,
                });
                Ok(Source {
                    acknowledger,
                    backend: SourceBackend::Embedded { queue, renewal },
                })
            }
        }
    }

    /// Makes `rfo_jobs_in_flight` count the jobs taken from the queue and not yet acknowledged.
    fn probe_in_flight(&self, gauges: &mut Gauges) {
        match &self.backend {
            SourceBackend::Kafka { offsets, .. } => {
                let offsets = offsets.clone();
                gauges.in_flight(move || crate::kafka_source::lock(&offsets).in_flight());
            }
            SourceBackend::Embedded { .. } => {
                if let Acknowledger::Embedded { in_flight, .. } = self.acknowledger.as_ref() {
                    let in_flight = in_flight.clone();
                    gauges.in_flight(move || crate::embedded_source::lock(&in_flight).len());
                }
            }
        }
    }

    fn spawn_fetch(
        &self,
        deliveries: mpsc::Sender<Delivery>,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        match &self.backend {
            SourceBackend::Kafka {
                consumer,
                offsets,
                dead_letters,
            } => tokio::spawn(crate::kafka_source::run(
                consumer.clone(),
                offsets.clone(),
                dead_letters.clone(),
                deliveries,
                shutdown,
            )),
            SourceBackend::Embedded { queue, .. } => {
                let Acknowledger::Embedded { in_flight, .. } = self.acknowledger.as_ref() else {
                    unreachable!("an embedded source has an embedded acknowledger");
                };
                tokio::spawn(crate::embedded_source::run(
                    queue.clone(),
                    in_flight.clone(),
                    deliveries,
                    shutdown,
                ))
            }
        }
    }

    fn close(self) {
        match self.backend {
            SourceBackend::Kafka { consumer, .. } => consumer.unsubscribe(),
            SourceBackend::Embedded { renewal, .. } => renewal.abort(),
        }
    }
}

/// Returns the detector named by `RFO_DETECTOR`, which the settings have validated.
pub fn detector(name: &str) -> Arc<dyn Detector> {
    match name {
        "exposure" => Arc::new(ExposureDetector),
        _ => Arc::new(RandomDetector),
    }
}

/// Opens the job store named by the settings.
pub fn open_store(database: &rfo_core::config::DatabaseUrl) -> anyhow::Result<JobStore> {
    JobStore::open(database, &PoolSettings::default()).context("invalid RFO_DATABASE_URL")
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
