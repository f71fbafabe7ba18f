//! The worker's Prometheus endpoint, scraped after a few jobs on the real Kafka, S3 server and
//! PostgreSQL of `ops/stack`.

mod common;

use std::time::{Duration, Instant};

use common::{Deployment, WAIT, sample_pngs};
use uuid::Uuid;

/// Partitions of the topic that `Deployment::start` creates.
const PARTITIONS: u32 = 4;
const DONE_JOBS: usize = 3;

/// Returns the value of the first sample of `name` whose labels include every pair of
/// `labels`. `name` is matched whole, so `x_count` does not match `x_count_total`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            if wanted { value.parse().ok() } else { None }
        })
        .next()
}

async fn scrape(http: &reqwest::Client, url: &str) -> String {
    match http.get(url).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Returns whether every job is recorded and acknowledged and every partition's lag is 0.
fn settled(text: &str, topic: &str) -> bool {
    let done = sample(text, "rfo_jobs_total", &[("status", "done")]);
    let failed = sample(text, "rfo_jobs_total", &[("status", "failed")]);
    let in_flight = sample(text, "rfo_jobs_in_flight", &[]);
    let lag_caught_up = (0..PARTITIONS).all(|partition| {
        let partition = partition.to_string();
        let labels = [("topic", topic), ("partition", partition.as_str())];
        sample(text, "rfo_consumer_lag", &labels) == Some(0.0)
    });
    done == Some(DONE_JOBS as f64) && failed == Some(1.0) && in_flight == Some(0.0) && lag_caught_up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_metrics_after_jobs() {
    let deployment = Deployment::start("worker_metrics_after_jobs").await;
    let prefix = format!("test-{}", Uuid::now_v7().simple());
    // The smallest samples keep the test quick on a loaded machine.
    let mut samples = sample_pngs();
    samples.sort_by_key(|path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX));
    let mut job_ids = Vec::new();
    for (index, path) in samples.iter().take(DONE_JOBS).enumerate() {
        let key = format!("{prefix}/sample-{index}.png");
        deployment
            .stack
            .put_input(&key, std::fs::read(path).unwrap())
            .await;
        let (status, body) = deployment.submit(&key).await;
        assert_eq!(status, 202, "submit {key}: {body}");
        job_ids.push(body["job_id"].as_str().unwrap().to_owned());
    }
    let text_key = format!("{prefix}/notes.png");
    deployment
        .stack
        .put_input(&text_key, b"this is a text file, not an image\n".to_vec())
        .await;
    let (status, body) = deployment.submit(&text_key).await;
    assert_eq!(status, 202, "submit {text_key}: {body}");
    job_ids.push(body["job_id"].as_str().unwrap().to_owned());
    for job_id in &job_ids {
        deployment.wait_for(job_id, &["done", "failed"]).await;
    }

    // The gauges are sampled every second and the lag every 5 s, so wait for them to settle.
    let url = &deployment.metrics_urls[0];
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = scrape(&deployment.http, url).await;
        if settled(&text, &deployment.topic) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "worker metrics did not settle in time; last scrape of {url}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Stage histograms: the text file fails in decode, so decode and render saw only the
    // images, and the insert stage wrote at least one batch.
    let stages = [
        ("download", DONE_JOBS + 1),
        ("decode", DONE_JOBS),
        ("render", DONE_JOBS),
        ("upload", DONE_JOBS + 1),
        ("insert", 1),
    ];
    for (stage, min_count) in stages {
        let labels = [("stage", stage)];
        let count = sample(&text, "rfo_stage_duration_seconds_count", &labels)
            .unwrap_or_else(|| panic!("no count of stage {stage}:\n{text}"));
        assert!(
            count >= min_count as f64,
            "stage {stage} count {count} < {min_count}"
        );
        let sum = sample(&text, "rfo_stage_duration_seconds_sum", &labels).unwrap();
        assert!(
            sum > 0.0 && sum < count * 600.0,
            "stage {stage} sum {sum} s"
        );
        let all = sample(
            &text,
            "rfo_stage_duration_seconds_bucket",
            &[("stage", stage), ("le", "+Inf")],
        );
        assert_eq!(all, Some(count), "+Inf bucket of stage {stage}");
    }
    let job_count = sample(&text, "rfo_job_duration_seconds_count", &[]);
    assert_eq!(
        job_count,
        Some((DONE_JOBS + 1) as f64),
        "rfo_job_duration_seconds"
    );

    // Jobs by outcome and error code.
    let done = sample(&text, "rfo_jobs_total", &[("status", "done")]);
    assert_eq!(done, Some(DONE_JOBS as f64), "done jobs");
    let labels = [("status", "failed"), ("code", "unsupported_format")];
    let failed = sample(&text, "rfo_jobs_total", &labels);
    assert_eq!(
        failed,
        Some(1.0),
        "failed jobs with code unsupported_format"
    );

    // Channel depths: present for every bounded channel, and within its capacity.
    for (channel, capacity) in [
        ("download", 2.0),
        ("process", 2.0),
        ("upload", 2.0),
        ("insert", 64.0),
    ] {
        let labels = [("channel", channel)];
        let found = sample(&text, "rfo_channel_capacity", &labels);
        assert_eq!(found, Some(capacity), "capacity of channel {channel}");
        let depth = sample(&text, "rfo_channel_depth", &labels)
            .unwrap_or_else(|| panic!("no depth of channel {channel}:\n{text}"));
        assert!(
            (0.0..=capacity).contains(&depth),
            "channel {channel} depth {depth} outside 0..={capacity}"
        );
    }

    // In flight and lag: all acknowledged, and every partition's lag reported and caught up.
    assert_eq!(sample(&text, "rfo_jobs_in_flight", &[]), Some(0.0));
    for partition in 0..PARTITIONS {
        let partition = partition.to_string();
        let labels = [
            ("topic", deployment.topic.as_str()),
            ("partition", partition.as_str()),
        ];
        let lag = sample(&text, "rfo_consumer_lag", &labels);
        assert_eq!(lag, Some(0.0), "lag of partition {partition}");
    }
}
