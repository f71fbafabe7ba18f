//! Wires the stages together, from the insert stage back to the fetch stage:
//!
//! ```text
//! fetch -> download -> decode + detect + overlay + encode -> upload -> batched insert -> commit
//! ```
//!
//! Each pair of stages is joined by a bounded channel of `channel_capacity` jobs. Shutdown
//! stops the fetch stage; each later stage ends when the channel before it is closed and empty.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use rfo_core::config::{DatabaseUrl, QueueUrl};
use rfo_core::db::{JobStore, PoolSettings};
use rfo_core::s3::S3Settings;
use tokio::sync::{mpsc, watch};

use crate::decode::DecodeLimits;
use crate::detect::{Detector, RandomDetector};
use crate::download::{DownloadSettings, Downloader};
use crate::fetch::{DeadLetters, JobConsumer, WorkerContext};
use crate::insert::{InsertSettings, Inserter};
use crate::offsets::OffsetTracker;
use crate::overlay::EncodeSettings;
use crate::process::Processor;
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::upload::{UploadSettings, Uploader};

/// Runs the pipeline until `shutdown` turns true and the stages have drained.
pub async fn run(
    settings: Settings,
    store: JobStore,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let QueueUrl::Kafka { brokers, topic } = &settings.queue;
    let offsets = Arc::new(Mutex::new(OffsetTracker::default()));
    let context = WorkerContext {
        topic: topic.clone(),
        offsets: offsets.clone(),
    };
    let consumer: JobConsumer =
        rfo_core::kafka::consumer_config(brokers, &settings.consumer_group, &settings.kafka)
            .create_with_context(context)
            .context("failed to create the Kafka consumer for RFO_QUEUE_URL")?;
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("failed to subscribe to topic {topic}"))?;
    let consumer = Arc::new(consumer);
    let producer: FutureProducer =
        rfo_core::kafka::producer_config(brokers, 30_000, &settings.kafka)
            .create()
            .context("failed to create the Kafka producer of the dead-letter topic")?;
    let dead_letters = Arc::new(DeadLetters {
        producer,
        topic: format!("{topic}.dlq"),
    });

    let s3 = rfo_core::s3::client(&S3Settings {
        force_path_style: settings.s3_force_path_style,
        ..S3Settings::default()
    })
    .await;
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let capacity = settings.channel_capacity;

    // Insert stage and offset commit.
    let (finished_tx, finished_rx) = mpsc::channel(capacity.max(settings.batch_size));
    let inserter = Inserter {
        store,
        consumer: consumer.clone(),
        offsets: offsets.clone(),
        topic: topic.clone(),
        settings: InsertSettings {
            max_batch: settings.batch_size,
            linger: Duration::from_millis(settings.batch_linger_ms),
            backoff,
            shutdown_retry: Duration::from_secs(settings.shutdown_timeout_s / 2),
            detector: settings.detector.clone(),
            detector_version: RandomDetector.version().to_owned(),
            log_keys: settings.log_keys,
        },
    };
    let insert_task = tokio::spawn(inserter.run(finished_rx, shutdown.clone()));

    // Upload stage.
    let (processed_tx, processed_rx) = mpsc::channel(capacity);
    let uploader = Arc::new(Uploader {
        client: s3.clone(),
        settings: UploadSettings {
            bucket: settings.output.0.clone(),
            prefix: settings.output.1.clone(),
            concurrency: settings.upload_concurrency,
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            max_attempts: 5,
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
    let processor = Arc::new(Processor {
        pool,
        limits: DecodeLimits {
            max_pixels: settings.max_pixels,
            max_side: settings.max_side,
            ..DecodeLimits::default()
        },
        detector: Arc::new(RandomDetector),
        encode: EncodeSettings::default(),
    });
    let process_task = tokio::spawn(processor.run(downloaded_rx, processed_tx));

    // Download stage.
    let (delivery_tx, delivery_rx) = mpsc::channel(capacity);
    let downloader = Arc::new(Downloader {
        client: s3,
        settings: DownloadSettings {
            bucket: settings.input.0.clone(),
            prefix: settings.input.1.clone(),
            concurrency: settings.download_concurrency,
            max_input_bytes: settings.max_input_bytes,
            max_attempts: 5,
            backoff,
        },
    });
    let download_task = tokio::spawn(downloader.run(delivery_rx, downloaded_tx));

    // Fetch stage.
    tracing::info!(%topic, group = %settings.consumer_group, cpu_threads = threads, channel_capacity = capacity, "rfo-worker started");
    let fetch_task = tokio::spawn(crate::fetch::run(
        consumer.clone(),
        offsets,
        dead_letters,
        delivery_tx,
        shutdown,
    ));

    for (name, task) in [
        ("fetch", fetch_task),
        ("download", download_task),
        ("process", process_task),
        ("upload", upload_task),
        ("insert", insert_task),
    ] {
        task.await
            .with_context(|| format!("the {name} stage panicked"))?;
    }
    consumer.unsubscribe();
    tracing::info!("rfo-worker drained");
    Ok(())
}

/// Opens the job store named by the settings.
pub fn open_store(database: &DatabaseUrl) -> anyhow::Result<JobStore> {
    let DatabaseUrl::Postgres(url) = database;
    JobStore::connect_lazy(url, &PoolSettings::default()).context("invalid RFO_DATABASE_URL")
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
