//! Prometheus metrics of the worker that are not counted where the work happens: the recorder
//! with its histogram buckets, the gauges sampled once a second (channel depths, jobs in
//! flight), and the Kafka consumer lag taken from librdkafka's statistics.
//!
//! The series are listed in docs/OPERATIONS.md.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use rdkafka::statistics::{Partition, Statistics};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often the sampled gauges are refreshed.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Default `statistics.interval.ms` of the consumer, so the lag gauges refresh every 5 s; an
/// `RFO_KAFKA_STATISTICS_INTERVAL_MS` setting wins.
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// Upper bounds, in seconds, of the buckets of every `*_seconds` histogram, from 1 ms to
/// 2 min. Longer observations fall only in the `+Inf` bucket.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Returns a Prometheus builder that exports `*_seconds` metrics as histograms with
/// [`SECONDS_BUCKETS`] (without buckets the exporter writes summaries, which cannot be
/// aggregated across workers).
pub fn prometheus_builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .expect("the bucket list is not empty")
}

type DepthProbe = Box<dyn Fn() -> Option<usize> + Send + Sync>;
type CountProbe = Box<dyn Fn() -> usize + Send + Sync>;

/// The gauges of one pipeline, sampled by a background task.
#[derive(Default)]
pub struct Gauges {
    channels: Vec<(&'static str, DepthProbe)>,
    in_flight: Option<CountProbe>,
}

impl Gauges {
    /// Adds `rfo_channel_depth{channel=NAME}`, the jobs waiting in the channel of `sender`, and
    /// sets `rfo_channel_capacity{channel=NAME}` once. The probe keeps only a weak sender, so
    /// it never keeps the channel open.
    pub fn channel<T: Send + 'static>(&mut self, name: &'static str, sender: &mpsc::Sender<T>) {
        let capacity = sender.max_capacity();
        metrics::gauge!("rfo_channel_capacity", "channel" => name).set(capacity as f64);
        let weak = sender.downgrade();
        let probe = move || weak.upgrade().map(|sender| capacity - sender.capacity());
        self.channels.push((name, Box::new(probe)));
    }

    /// Sets the probe of `rfo_jobs_in_flight`: jobs taken from the queue and not yet
    /// acknowledged.
    pub fn in_flight(&mut self, probe: impl Fn() -> usize + Send + Sync + 'static) {
        self.in_flight = Some(Box::new(probe));
    }

    /// Samples the gauges every [`SAMPLE_INTERVAL`] until the task is aborted. A closed
    /// channel's depth is set to 0.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                self.sample();
            }
        })
    }

    fn sample(&self) {
        for (name, probe) in &self.channels {
            let depth = probe().unwrap_or(0);
            metrics::gauge!("rfo_channel_depth", "channel" => *name).set(depth as f64);
        }
        if let Some(probe) = &self.in_flight {
            metrics::gauge!("rfo_jobs_in_flight").set(probe() as f64);
        }
    }
}

/// Sets `rfo_consumer_lag{topic, partition}` for every partition of `topic` assigned to this
/// consumer, from one librdkafka statistics report.
pub fn record_consumer_lag(topic: &str, statistics: &Statistics) {
    let Some(topic_statistics) = statistics.topics.get(topic) else {
        return;
    };
    for partition in topic_statistics.partitions.values() {
        if let Some(lag) = partition_lag(partition) {
            metrics::gauge!(
                "rfo_consumer_lag",
                "topic" => topic.to_owned(),
                "partition" => partition.partition.to_string()
            )
            .set(lag as f64);
        }
    }
}

/// Sets the lag of revoked partitions to 0, so that a sum over the workers counts each
/// partition once: its new owner reports it from its next statistics report.
pub fn clear_consumer_lag(topic: &str, partitions: &[i32]) {
    for partition in partitions {
        metrics::gauge!(
            "rfo_consumer_lag",
            "topic" => topic.to_owned(),
            "partition" => partition.to_string()
        )
        .set(0.0);
    }
}

/// Returns the records of an assigned partition that the group has not committed: the high
/// watermark minus the committed offset. Before the group's first commit on the partition
/// librdkafka reports no lag, and every retained record counts, since the consumer starts
/// from the earliest offset. `None` for librdkafka's internal partition -1, for partitions
/// not assigned here and while the watermarks are unknown.
fn partition_lag(partition: &Partition) -> Option<i64> {
    if partition.partition < 0 || !partition.desired {
        return None;
    }
    if partition.consumer_lag >= 0 {
        return Some(partition.consumer_lag);
    }
    // NOTE: this assumes auto.offset.reset=earliest, the default of the consumer settings.
    if partition.hi_offset >= 0 && partition.lo_offset >= 0 {
        return Some(partition.hi_offset - partition.lo_offset);
    }
    None
}
