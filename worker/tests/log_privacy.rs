//! Image keys can carry a patient's name, so by default neither binary may write one to its log,
//! and no dead-letter header may carry one. These tests run the whole pipeline on the real
//! stack with `RUST_LOG=debug`, the most verbose level the default allows, and search every
//! captured line for every key and file stem they used.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Deployment, Stack, WAIT, sample_pngs, shared_dir};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use uuid::Uuid;

/// An input the test submitted, with the strings that must not reach a log.
struct Input {
    key: String,
    stem: String,
}

impl Input {
    fn new(prefix: &str, file_name: &str) -> Input {
        let stem = Path::new(file_name)
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 file stem")
            .to_owned();
        Input {
            key: format!("{prefix}/{file_name}"),
            stem,
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|s| s.to_str())
        .expect("UTF-8 file name")
        .to_owned()
}

/// Lines of `text` that contain `needle`.
fn hits<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|line| line.contains(needle)).collect()
}

/// Publishes a record that is not a runnable job, so the worker moves it to the dead letters.
async fn publish_raw(stack: &Stack, topic: &str, value: String) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("create a Kafka producer");
    let job_id = Uuid::now_v7().to_string();
    producer
        .send(
            FutureRecord::to(topic).key(&job_id).payload(&value),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .expect("publish a raw record");
}

/// Reads the dead-letter topic until it contains `expected` records; returns every header as
/// `name=value`.
fn dead_letter_headers(stack: &Stack, topic: &str, expected: usize) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create a Kafka consumer");
    consumer
        .subscribe(&[&format!("{topic}.dlq")])
        .expect("subscribe to the dead-letter topic");
    let mut headers = Vec::new();
    let mut records = 0;
    let deadline = Instant::now() + WAIT;
    while records < expected {
        assert!(
            Instant::now() < deadline,
            "the dead-letter topic has {records} records, expected {expected}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("read the dead-letter topic");
        records += 1;
        if let Some(list) = message.headers() {
            for header in list.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                headers.push(format!("{}={value}", header.key));
            }
        }
    }
    headers
}

/// Runs the samples, two broken images, a missing key, an invalid key and two records that
/// are not jobs through an API and a worker with `RUST_LOG=debug` and `RFO_LOG_KEYS` as
/// given; returns the inputs, the captured log lines and the dead-letter headers.
async fn run_pipeline(test: &str, log_keys: Option<&str>) -> (Vec<Input>, String, Vec<String>) {
    let stack = Stack::from_env();
    let topic = stack.new_topic(4).await;
    let mut overrides = vec![("RUST_LOG", "debug".to_owned())];
    if let Some(value) = log_keys {
        overrides.push(("RFO_LOG_KEYS", value.to_owned()));
    }
    let mut deployment = Deployment::start_with_env(test, topic, overrides).await;
    let prefix = format!("test-{}", Uuid::now_v7().simple());

    let mut inputs = Vec::new();
    let mut job_ids = Vec::new();
    let broken = ["P15_crc_bad_idat.png", "P13_truncated_mid_idat.png"]
        .map(|name| shared_dir().join("cases/png").join(name));
    for path in sample_pngs().iter().chain(broken.iter()) {
        let input = Input::new(&prefix, &file_name(path));
        let bytes = std::fs::read(path).expect("read a test image");
        deployment.stack.put_input(&input.key, bytes).await;
        let (status, body) = deployment.submit(&input.key).await;
        assert_eq!(status, 202, "submit {}: {body}", input.key);
        job_ids.push(body["job_id"].as_str().expect("job_id").to_owned());
        inputs.push(input);
    }

    let missing = Input::new(&prefix, "missing-radiograph.png");
    let (status, body) = deployment.submit(&missing.key).await;
    assert_eq!(status, 404, "submit of a missing key: {body}");
    inputs.push(missing);

    let invalid = Input::new(&prefix, "control-character\u{7}.png");
    let (status, body) = deployment.submit(&invalid.key).await;
    assert_eq!(
        status, 400,
        "submit of a key with a control character: {body}"
    );
    inputs.push(invalid);

    // A newer message version, and a job id that is not a UUID, both carrying a key.
    let future_version = Input::new(&prefix, "future-version.png");
    let value = serde_json::json!({
        "v": 2, "job_id": Uuid::now_v7(), "image_key": future_version.key,
        "submitted_at": "2026-12-04T00:00:00.000000+00:00",
    });
    publish_raw(&deployment.stack, &deployment.topic, value.to_string()).await;
    inputs.push(future_version);
    let bad_id = Input::new(&prefix, "bad-job-id.png");
    let value = serde_json::json!({
        "v": 1, "job_id": bad_id.stem, "image_key": bad_id.key,
        "submitted_at": "2026-12-04T00:00:00.000000+00:00",
    });
    publish_raw(&deployment.stack, &deployment.topic, value.to_string()).await;
    inputs.push(bad_id);

    let mut failed = 0;
    for job_id in &job_ids {
        let job = deployment.wait_for(job_id, &["done", "failed"]).await;
        if job["status"] == "failed" {
            failed += 1;
        }
    }
    assert_eq!(failed, broken.len(), "only the broken images fail");
    let (status, _) = deployment.get_json("/recent?n=100").await;
    assert_eq!(status, 200);

    let headers = dead_letter_headers(&deployment.stack, &deployment.topic, 2);
    assert!(
        headers
            .iter()
            .any(|h| h == "rfo-error-code=invalid_message"),
        "dead-letter headers: {headers:?}"
    );

    let mut logs = String::new();
    for process in std::iter::once(&mut deployment.api).chain(deployment.workers.iter_mut()) {
        let status = process.terminate(Duration::from_secs(60));
        assert!(status.is_some(), "a process did not stop on SIGTERM");
        logs.push_str(&process.log_text());
    }
    assert!(
        logs.contains("DEBUG"),
        "no debug line was captured, so the search below would prove nothing"
    );
    (inputs, logs, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_absent_from_logs_by_default() {
    let (inputs, logs, headers) = run_pipeline("keys_absent_from_logs_by_default", None).await;
    for input in &inputs {
        for needle in [&input.key, &input.stem] {
            let found = hits(&logs, needle);
            assert!(
                found.is_empty(),
                "{needle:?} appears in {} log lines, such as:\n{}",
                found.len(),
                found[..found.len().min(5)].join("\n")
            );
            let in_headers: Vec<&String> = headers.iter().filter(|h| h.contains(needle)).collect();
            assert!(
                in_headers.is_empty(),
                "{needle:?} appears in dead-letter headers {in_headers:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_logged_when_allowed() {
    let (inputs, logs, _) = run_pipeline("keys_logged_when_allowed", Some("true")).await;
    let logged = inputs
        .iter()
        .filter(|input| !hits(&logs, &input.key).is_empty())
        .count();
    assert!(
        logged > 0,
        "with RFO_LOG_KEYS=true no key of {} inputs appears in the logs",
        inputs.len()
    );
}
