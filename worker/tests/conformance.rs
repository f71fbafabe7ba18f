//! Conformance suite of the backend sets. Every case is written once and runs twice: on the
//! embedded backends (the embedded queue, folders and SQLite, in a fresh temporary folder) and
//! on the distributed ones (Kafka, the S3 server and PostgreSQL of `ops/stack`). In both sets
//! `rfo-api` and `rfo-worker` run as separate processes, so the cases can stop, kill and
//! restart workers. The tests of each set are named `embedded::CASE` and `distributed::CASE`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Process, Stack, png_size, sample_pngs, shared_dir};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::Timeout;
use rfo_core::config::QueueUrl;
use rfo_core::job::JobMessage;
use rfo_core::kafka::KafkaContext;
use rfo_core::queue::Publisher;
use serde_json::{Value, json};
use uuid::Uuid;

/// A backend set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Set {
    Embedded,
    Distributed,
}

/// Where one deployment keeps its queue, images and jobs.
enum Backends {
    /// A fresh topic of the local stack, with the stack's buckets and database.
    Distributed { stack: Stack, topic: String },
    /// A fresh folder holding `queue.db`, `rfo.db`, `input/` and `output/`.
    Embedded { root: PathBuf },
}

/// One row of the job table, read from the database itself rather than through the API.
#[derive(Debug)]
struct JobRow {
    status: String,
    image_key: String,
    width: Option<i64>,
    height: Option<i64>,
    boxes: Value,
    attempts: i64,
}

/// Columns of [`JobRow`] as a query returns them, with `boxes` as JSON or as JSON text.
type RowColumns<Boxes> = (String, String, Option<i64>, Option<i64>, Boxes, i64);

/// An API and any number of workers on one backend set.
struct Deployment {
    backends: Backends,
    api_url: String,
    api: Process,
    workers: Vec<Process>,
    http: reqwest::Client,
    logs: PathBuf,
}

impl Deployment {
    /// Starts the API, waits until it is ready and starts `workers` workers.
    async fn start(set: Set, case: &str, workers: usize) -> Deployment {
        let backends = match set {
            Set::Distributed => {
                let stack = Stack::from_env();
                let topic = stack.new_topic(4).await;
                Backends::Distributed { stack, topic }
            }
            Set::Embedded => {
                let root = std::env::temp_dir()
                    .join(format!("rfo-conformance-{}", Uuid::now_v7().simple()));
                std::fs::create_dir_all(root.join("input")).expect("create the input folder");
                Backends::Embedded { root }
            }
        };
        let logs = common::log_dir(&format!("conformance-{set:?}-{case}").to_lowercase());
        let port = common::pick_port();
        let mut envs = shared_env(&backends);
        envs.push(("RFO_LISTEN", format!("127.0.0.1:{port}")));
        envs.push(("RFO_AUTH", "off".to_owned()));
        let api = Process::spawn("rfo-api", &envs, logs.join("api.log"));
        let mut deployment = Deployment {
            backends,
            api_url: format!("http://127.0.0.1:{port}"),
            api,
            workers: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            logs,
        };
        // The API applies the migrations before it reports ready, so the workers started
        // afterwards find the tables in place.
        deployment.wait_ready().await;
        for _ in 0..workers {
            deployment.start_worker(&[]);
        }
        deployment
    }

    /// Starts one more worker with `extra` settings added to the deployment's.
    fn start_worker(&mut self, extra: &[(&'static str, String)]) -> usize {
        let index = self.workers.len();
        let mut envs = shared_env(&self.backends);
        match &self.backends {
            Backends::Distributed { stack, topic } => {
                envs.push(("RFO_OUTPUT_URL", format!("s3://{}", stack.output_bucket)));
                envs.push(("RFO_CONSUMER_GROUP", format!("{topic}-workers")));
            }
            Backends::Embedded { root } => {
                envs.push(("RFO_OUTPUT_URL", file_url(&root.join("output"))));
            }
        }
        envs.push((
            "RFO_METRICS_LISTEN",
            format!("127.0.0.1:{}", common::pick_port()),
        ));
        envs.extend(extra.iter().cloned());
        let log = self.logs.join(format!("worker-{index}.log"));
        self.workers.push(Process::spawn("rfo-worker", &envs, log));
        index
    }

    fn worker_logs(&self) -> String {
        self.workers
            .iter()
            .map(Process::log_text)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + common::WAIT;
        loop {
            let url = format!("{}/readyz", self.api_url);
            if let Ok(r) = self.http.get(url).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rfo-api not ready in time; log:\n{}",
                self.api.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn put_input(&self, key: &str, bytes: Vec<u8>) {
        match &self.backends {
            Backends::Distributed { stack, .. } => stack.put_input(key, bytes).await,
            Backends::Embedded { root } => {
                let path = root.join("input").join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, bytes)
                    .unwrap_or_else(|e| panic!("write test input {}: {e}", path.display()));
            }
        }
    }

    async fn get_output(&self, key: &str) -> Option<Vec<u8>> {
        match &self.backends {
            Backends::Distributed { stack, .. } => stack.get_output(key).await,
            Backends::Embedded { root } => std::fs::read(root.join("output").join(key)).ok(),
        }
    }

    /// Keys of the output objects that start with `prefix`, sorted.
    async fn list_output(&self, prefix: &str) -> Vec<String> {
        let mut keys = match &self.backends {
            Backends::Distributed { stack, .. } => stack.list_output(prefix).await,
            Backends::Embedded { root } => {
                let (folder, start) = prefix.rsplit_once('/').unwrap_or(("", prefix));
                match std::fs::read_dir(root.join("output").join(folder)) {
                    Ok(entries) => entries
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .filter(|name| name.starts_with(start))
                        .map(|name| format!("{folder}/{name}"))
                        .collect(),
                    Err(_) => Vec::new(),
                }
            }
        };
        keys.sort();
        keys
    }

    /// Reads every row of the job table whose `column` equals `value`.
    async fn rows(&self, column: &str, value: &str) -> Vec<JobRow> {
        match &self.backends {
            Backends::Distributed { stack, .. } => {
                let db = stack.db().await;
                let sql = format!(
                    "SELECT status, image_key, width::int8, height::int8, boxes, attempts::int8 \
                     FROM jobs WHERE {column}::text = $1"
                );
                let rows: Vec<RowColumns<Value>> = sqlx::query_as(&sql)
                    .bind(value)
                    .fetch_all(&db)
                    .await
                    .unwrap();
                db.close().await;
                rows.into_iter().map(JobRow::from).collect()
            }
            Backends::Embedded { root } => {
                let db = sqlx::SqlitePool::connect(&format!(
                    "sqlite://{}",
                    root.join("rfo.db").display()
                ))
                .await
                .expect("open the SQLite job database");
                let sql = format!(
                    "SELECT status, image_key, width, height, boxes, attempts \
                     FROM jobs WHERE {column} = ?1"
                );
                let rows: Vec<RowColumns<String>> = sqlx::query_as(&sql)
                    .bind(value)
                    .fetch_all(&db)
                    .await
                    .unwrap();
                db.close().await;
                rows.into_iter()
                    .map(|(s, k, w, h, boxes, a)| {
                        JobRow::from((
                            s,
                            k,
                            w,
                            h,
                            serde_json::from_str::<Value>(&boxes).unwrap(),
                            a,
                        ))
                    })
                    .collect()
            }
        }
    }

    /// Counts the records ever appended to the deployment's queue, consumed or not.
    async fn records_ever_queued(&self) -> i64 {
        match &self.backends {
            Backends::Distributed { stack, topic } => {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &stack.brokers)
                    .create()
                    .unwrap();
                let mut total = 0;
                for partition in 0..4 {
                    let (_, high) = consumer
                        .fetch_watermarks(topic, partition, Timeout::After(Duration::from_secs(10)))
                        .unwrap();
                    total += high;
                }
                total
            }
            Backends::Embedded { root } => {
                let db = sqlx::SqlitePool::connect(&format!(
                    "sqlite://{}",
                    root.join("queue.db").display()
                ))
                .await
                .expect("open the queue file");
                // AUTOINCREMENT keeps the highest sequence number ever used, so acknowledged
                // and deleted records still count.
                let seq: Option<i64> = sqlx::query_scalar(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'queue_records'",
                )
                .fetch_optional(&db)
                .await
                .unwrap();
                db.close().await;
                seq.unwrap_or(0)
            }
        }
    }

    /// Appends `message` to the queue once more, as a queue does after a worker crashed
    /// before it acknowledged the record.
    async fn publish_again(&self, message: &JobMessage) {
        let url = QueueUrl::parse("RFO_QUEUE_URL", &queue_url(&self.backends)).unwrap();
        let publisher = Publisher::open(
            &url,
            Duration::from_secs(10),
            &BTreeMap::new(),
            KafkaContext::default(),
        )
        .await
        .expect("open the queue");
        publisher
            .publish(message)
            .await
            .expect("publish the duplicate");
    }

    async fn submit(&self, key: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/submit", self.api_url))
            .json(&json!({ "image_key": key }))
            .send()
            .await
            .expect("POST /submit");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Submits `key` and returns the job id; fails the test unless the API returns 202.
    async fn submit_accepted(&self, key: &str) -> String {
        let (status, body) = self.submit(key).await;
        assert_eq!(status, 202, "submit {key}: {body}");
        body["job_id"].as_str().unwrap().to_owned()
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.api_url))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn job(&self, job_id: &str) -> Value {
        let (status, job) = self.get_json(&format!("/jobs/{job_id}")).await;
        assert_eq!(status, 200, "GET /jobs/{job_id}: {job}");
        job
    }

    /// Waits until the job's status is one of `statuses` and returns the job.
    async fn wait_for(&self, job_id: &str, statuses: &[&str]) -> Value {
        let deadline = Instant::now() + common::WAIT;
        loop {
            let (code, job) = self.get_json(&format!("/jobs/{job_id}")).await;
            if code == 200 && statuses.iter().any(|s| job["status"] == *s) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} did not reach {statuses:?} in time; last {job}; worker logs:\n{}",
                self.worker_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Backends::Embedded { root } = &self.backends
            && !std::thread::panicking()
        {
            // The fields' own drops kill the processes after this. Removing the folder while
            // they still have its files open is fine on Unix.
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

impl From<RowColumns<Value>> for JobRow {
    fn from(row: RowColumns<Value>) -> JobRow {
        JobRow {
            status: row.0,
            image_key: row.1,
            width: row.2,
            height: row.3,
            boxes: row.4,
            attempts: row.5,
        }
    }
}

fn file_url(path: &std::path::Path) -> String {
    format!("file://{}", path.display())
}

fn queue_url(backends: &Backends) -> String {
    match backends {
        Backends::Distributed { stack, topic } => format!("kafka://{}/{topic}", stack.brokers),
        Backends::Embedded { root } => format!("embedded://{}", root.join("queue.db").display()),
    }
}

/// Settings that the API and the workers share: the queue, the input store and the database.
fn shared_env(backends: &Backends) -> Vec<(&'static str, String)> {
    let mut envs = vec![("RFO_QUEUE_URL", queue_url(backends))];
    match backends {
        Backends::Distributed { stack, .. } => {
            envs.push(("RFO_INPUT_URL", format!("s3://{}", stack.input_bucket)));
            envs.push(("RFO_DATABASE_URL", stack.database_url.clone()));
            envs.push(("RFO_S3_FORCE_PATH_STYLE", "true".to_owned()));
            for name in [
                "AWS_ENDPOINT_URL_S3",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_REGION",
            ] {
                envs.push((name, common::stack_env(name)));
            }
        }
        Backends::Embedded { root } => {
            envs.push(("RFO_INPUT_URL", file_url(&root.join("input"))));
            envs.push((
                "RFO_DATABASE_URL",
                format!("sqlite://{}", root.join("rfo.db").display()),
            ));
        }
    }
    envs
}

fn run_prefix() -> String {
    format!("test-{}", Uuid::now_v7().simple())
}

/// Returns the JSON shape of a value: its object keys and the JSON type of every leaf. Strings that
/// are RFC 3339 timestamps become `timestamp` followed by the text with every digit replaced
/// by 0, so that two backends that write timestamps differently have different shapes.
fn shape(value: &Value) -> Value {
    match value {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("boolean"),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!("integer"),
        Value::Number(_) => json!("number"),
        Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {
            let digits: String = s
                .chars()
                .map(|c| if c.is_ascii_digit() { '0' } else { c })
                .collect();
            json!(format!("timestamp {digits}"))
        }
        Value::String(_) => json!("string"),
        Value::Array(items) => {
            let mut shapes: Vec<Value> = items.iter().map(shape).collect();
            shapes.dedup();
            Value::Array(shapes)
        }
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
    }
}

const TIMESTAMP: &str = "timestamp 0000-00-00T00:00:00.000000+00:00";

fn box_shape() -> Value {
    json!({"x1": "integer", "y1": "integer", "x2": "integer", "y2": "integer"})
}

fn detection_shape() -> Value {
    json!({
        "x1": "integer", "y1": "integer", "x2": "integer", "y2": "integer",
        "label": "string", "score": "number"
    })
}

/// Shape of a done job in `GET /jobs/{id}` and `GET /recent`, the same on every backend set.
fn done_shape() -> Value {
    json!({
        "job_id": "string",
        "image_key": "string",
        "status": "string",
        "overlay_key": "string",
        "preview_key": "string",
        "box": box_shape(),
        "boxes": [detection_shape()],
        "width": "integer",
        "height": "integer",
        "detector": "string",
        "attempts": "integer",
        "created_at": TIMESTAMP,
        "processed_at": TIMESTAMP,
    })
}

/// Shape of a job that failed on its image.
fn failed_shape() -> Value {
    json!({
        "job_id": "string",
        "image_key": "string",
        "status": "string",
        "overlay_key": "null",
        "preview_key": "null",
        "box": "null",
        "boxes": [],
        "width": "null",
        "height": "null",
        "detector": "null",
        "attempts": "integer",
        "created_at": TIMESTAMP,
        "processed_at": TIMESTAMP,
        "error": {"code": "string", "message": "string"},
    })
}

/// Asserts that the output contains exactly the overlay and the preview of `job_id`.
async fn assert_one_overlay(deployment: &Deployment, job_id: &str) {
    assert_eq!(
        deployment.list_output(&format!("overlays/{job_id}")).await,
        vec![
            format!("overlays/{job_id}.png"),
            format!("overlays/{job_id}.preview.png")
        ],
        "one overlay and one preview for job {job_id}"
    );
}

async fn samples_processed_end_to_end(set: Set) {
    let deployment = Deployment::start(set, "samples_processed_end_to_end", 1).await;
    let prefix = run_prefix();
    let samples = sample_pngs();
    let mut expected_sizes = HashMap::new();
    let mut submitted = Vec::new();
    for (index, path) in samples.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        // Keys with a space, like the reference deployment's clients send.
        let key = format!("{prefix}/Image_{index} sample.png");
        expected_sizes.insert(key.clone(), png_size(&bytes));
        deployment.put_input(&key, bytes).await;
        let (status, body) = deployment.submit(&key).await;
        assert_eq!(status, 202, "submit {key}: {body}");
        assert_eq!(
            shape(&body),
            json!({"job_id": "string", "image_key": "string", "queued": "boolean", "topic": "string"}),
            "{body}"
        );
        assert_eq!(body["image_key"], key.as_str());
        assert_eq!(body["queued"], true);
        submitted.push((key, body["job_id"].as_str().unwrap().to_owned()));
    }

    for (key, job_id) in &submitted {
        let job = deployment.wait_for(job_id, &["done", "failed"]).await;
        assert_eq!(job["status"], "done", "job for {key}: {job}");
        assert_eq!(
            shape(&job),
            done_shape(),
            "GET /jobs/{job_id} on {set:?}: {job}"
        );
        let (width, height) = expected_sizes[key];
        assert_eq!(job["width"], width, "{job}");
        assert_eq!(job["height"], height, "{job}");
        let b = &job["box"];
        let (x1, y1, x2, y2) = (
            b["x1"].as_u64().unwrap(),
            b["y1"].as_u64().unwrap(),
            b["x2"].as_u64().unwrap(),
            b["y2"].as_u64().unwrap(),
        );
        assert!(
            x1 < x2 && x2 <= u64::from(width),
            "box {b} not inside width {width}"
        );
        assert!(
            y1 < y2 && y2 <= u64::from(height),
            "box {b} not inside height {height}"
        );
        assert_eq!(job["overlay_key"], format!("overlays/{job_id}.png"));

        let overlay = deployment
            .get_output(&format!("overlays/{job_id}.png"))
            .await
            .expect("overlay object exists");
        assert_eq!(png_size(&overlay), (width, height), "overlay size of {key}");
        let preview = deployment
            .get_output(&format!("overlays/{job_id}.preview.png"))
            .await
            .expect("preview exists");
        let (pw, ph) = png_size(&preview);
        assert!(pw.max(ph) <= 256, "preview {pw}x{ph}");

        let rows = deployment.rows("job_id", job_id).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        let row = &rows[0];
        assert_eq!(row.status, "done");
        assert_eq!(&row.image_key, key);
        assert_eq!(row.width, Some(i64::from(width)));
        assert_eq!(row.height, Some(i64::from(height)));
        assert_eq!(row.boxes[0]["x1"], b["x1"]);
        assert_eq!(row.boxes[0]["y2"], b["y2"]);
        assert_eq!(row.attempts, 1);
    }

    let (status, recent) = deployment.get_json("/recent?n=1000").await;
    assert_eq!(status, 200);
    let listed = recent.as_array().unwrap();
    let ours: Vec<&Value> = listed
        .iter()
        .filter(|j| submitted.iter().any(|(_, id)| j["job_id"] == id.as_str()))
        .collect();
    let ids: Vec<&str> = ours.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = submitted.iter().rev().map(|(_, j)| j.as_str()).collect();
    assert_eq!(ids, expected, "/recent lists this run's jobs newest first");
    for job in &ours {
        assert_eq!(shape(job), done_shape(), "GET /recent on {set:?}: {job}");
        let (_, single) = deployment
            .get_json(&format!("/jobs/{}", job["job_id"].as_str().unwrap()))
            .await;
        assert_eq!(
            **job, single,
            "/recent and /jobs/{{id}} return the same job"
        );
    }
    let created: Vec<&str> = listed
        .iter()
        .map(|j| j["created_at"].as_str().unwrap())
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "/recent is sorted by created_at, newest first"
    );

    let (_, recent_two) = deployment.get_json("/recent?n=2").await;
    assert_eq!(recent_two.as_array().unwrap().len(), 2);
}

async fn missing_key_gets_404_and_nothing_queued(set: Set) {
    let deployment = Deployment::start(set, "missing_key_gets_404_and_nothing_queued", 1).await;
    let key = format!("{}/no such image.png", run_prefix());
    let (status, body) = deployment.submit(&key).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "input_not_found");
    assert_eq!(
        shape(&body),
        json!({"error": {"code": "string", "message": "string"}}),
        "{body}"
    );
    let rows = deployment.rows("image_key", &key).await;
    assert!(rows.is_empty(), "no row for a missing key: {rows:?}");
    assert_eq!(
        deployment.records_ever_queued().await,
        0,
        "no record queued for a missing key"
    );
}

async fn submit_rejects_invalid_requests(set: Set) {
    let deployment = Deployment::start(set, "submit_rejects_invalid_requests", 0).await;
    let cases = [
        (json!({"image_key": ""}), 400, "invalid_key"),
        (json!({"image_key": "   "}), 400, "invalid_key"),
        (json!({"image_key": "a\u{0007}b.png"}), 400, "invalid_key"),
        (json!({"image_key": "x".repeat(1025)}), 400, "invalid_key"),
        (json!({"key": "a.png"}), 400, "invalid_request"),
        (json!({"image_key": 5}), 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let response = deployment
            .http
            .post(format!("{}/submit", deployment.api_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"]["code"], code, "{body}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let response = deployment
        .http
        .post(format!("{}/submit", deployment.api_url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let oversized = format!("{{\"image_key\": \"{}\"}}", "x".repeat(100 * 1024));
    // A client of its own, because the server closes the connection after a 413 without
    // `Connection: close`, and a pooled connection reused after it fails.
    let response = reqwest::Client::new()
        .post(format!("{}/submit", deployment.api_url))
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);

    let (status, body) = deployment.get_json("/recent?n=0").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, _) = deployment.get_json("/recent?n=1001").await;
    assert_eq!(status, 400);
    let (status, body) = deployment
        .get_json(&format!("/jobs/{}", Uuid::now_v7()))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("job_not_found"))
    );
    let (status, _) = deployment.get_json("/jobs/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = deployment.get_json("/healthz").await;
    assert_eq!(status, 200);
    let metrics = deployment
        .http
        .get(format!("{}/metrics", deployment.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("rfo_api_requests_total")
    );
}

async fn bad_inputs_fail_with_their_codes(set: Set) {
    let mut deployment = Deployment::start(set, "bad_inputs_fail_with_their_codes", 1).await;
    let prefix = run_prefix();
    let truncated =
        std::fs::read(shared_dir().join("cases/png/P13_truncated_mid_idat.png")).unwrap();
    let good = std::fs::read(&sample_pngs()[0]).unwrap();
    let inputs = [
        (
            "notes.png",
            b"this is a text file, not an image\n".to_vec(),
            "failed",
            Some("unsupported_format"),
        ),
        (
            "truncated.png",
            truncated,
            "failed",
            Some("truncated_image"),
        ),
        ("good.png", good, "done", None),
    ];
    let mut jobs = Vec::new();
    for (name, bytes, _, _) in &inputs {
        let key = format!("{prefix}/{name}");
        deployment.put_input(&key, bytes.clone()).await;
        jobs.push(deployment.submit_accepted(&key).await);
    }
    for ((name, _, status, code), job_id) in inputs.iter().zip(&jobs) {
        let job = deployment.wait_for(job_id, &["done", "failed"]).await;
        assert_eq!(job["status"], *status, "{name}: {job}");
        match code {
            Some(code) => {
                assert_eq!(shape(&job), failed_shape(), "{name} on {set:?}: {job}");
                assert_eq!(job["error"]["code"], *code, "{name}: {job}");
                assert!(
                    job["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{name}: {job}"
                );
                let objects = deployment.list_output(&format!("overlays/{job_id}")).await;
                assert!(
                    objects.is_empty(),
                    "no overlay for a failed job: {objects:?}"
                );
            }
            None => {
                assert_eq!(shape(&job), done_shape(), "{name} on {set:?}: {job}");
                assert_one_overlay(&deployment, job_id).await;
            }
        }
    }
    assert!(
        deployment.workers[0].child.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
}

async fn redelivered_job_leaves_one_row(set: Set) {
    let deployment = Deployment::start(set, "redelivered_job_leaves_one_row", 1).await;
    let key = format!("{}/twice.png", run_prefix());
    deployment
        .put_input(&key, std::fs::read(&sample_pngs()[0]).unwrap())
        .await;
    let job_id = deployment.submit_accepted(&key).await;
    let first = deployment.wait_for(&job_id, &["done"]).await;

    let submitted_at = chrono::DateTime::parse_from_rfc3339(first["created_at"].as_str().unwrap())
        .unwrap()
        .to_utc();
    let message = JobMessage::new(job_id.parse().unwrap(), key.clone(), submitted_at);
    deployment.publish_again(&message).await;

    let deadline = Instant::now() + common::WAIT;
    loop {
        let rows = deployment.rows("job_id", &job_id).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        if rows[0].attempts >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the duplicate was not processed in time; worker log:\n{}",
            deployment.worker_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = deployment.job(&job_id).await;
    assert_eq!(second["status"], "done");
    assert_eq!(second["attempts"], 2);
    assert_eq!(second["box"], first["box"], "a re-run gives the same box");
    assert_eq!(
        second["processed_at"], first["processed_at"],
        "the first result is kept"
    );
    assert_one_overlay(&deployment, &job_id).await;
}

/// Uploads `count` inputs, cycling through the samples, and submits them; returns
/// (key, job id) pairs in submission order.
async fn submit_samples(deployment: &Deployment, count: usize) -> Vec<(String, String)> {
    let prefix = run_prefix();
    let samples = sample_pngs();
    let mut jobs = Vec::with_capacity(count);
    for index in 0..count {
        let key = format!("{prefix}/image-{index}.png");
        let bytes = std::fs::read(&samples[index % samples.len()]).unwrap();
        deployment.put_input(&key, bytes).await;
        let job_id = deployment.submit_accepted(&key).await;
        jobs.push((key, job_id));
    }
    jobs
}

/// Waits for every job to be done and checks that each has one row and one overlay.
async fn assert_all_done_once(deployment: &Deployment, jobs: &[(String, String)]) {
    for (key, job_id) in jobs {
        let job = deployment.wait_for(job_id, &["done", "failed"]).await;
        assert_eq!(job["status"], "done", "{key}: {job}");
        let rows = deployment.rows("job_id", job_id).await;
        assert_eq!(rows.len(), 1, "{key}: {rows:?}");
        assert_one_overlay(deployment, job_id).await;
    }
}

async fn jobs_queued_while_stopped_run_after_start(set: Set) {
    let mut deployment =
        Deployment::start(set, "jobs_queued_while_stopped_run_after_start", 1).await;
    let first = submit_samples(&deployment, 1).await;
    assert_all_done_once(&deployment, &first).await;
    let status = deployment.workers[0].terminate(common::WAIT);
    assert!(status.is_some(), "the worker stops on SIGTERM");

    let queued = submit_samples(&deployment, 4).await;
    for (key, job_id) in &queued {
        let job = deployment.job(job_id).await;
        assert_eq!(job["status"], "queued", "{key} waits for a worker: {job}");
    }
    deployment.start_worker(&[]);
    assert_all_done_once(&deployment, &queued).await;
    for (key, job_id) in &queued {
        let job = deployment.job(job_id).await;
        assert_eq!(job["attempts"], 1, "{key}: {job}");
    }
}

async fn killed_worker_jobs_finish_after_restart(set: Set) {
    let mut deployment = Deployment::start(set, "killed_worker_jobs_finish_after_restart", 1).await;
    let jobs = submit_samples(&deployment, 24).await;

    // Kill the worker as soon as the first job is done, while it has the others in flight.
    let deadline = Instant::now() + common::WAIT;
    let unfinished = loop {
        let (_, recent) = deployment.get_json("/recent?n=1000").await;
        let done = recent
            .as_array()
            .unwrap()
            .iter()
            .filter(|job| job["status"] != "queued")
            .count();
        if done > 0 {
            deployment.workers[0]
                .child
                .kill()
                .expect("SIGKILL the worker");
            deployment.workers[0].child.wait().unwrap();
            break jobs.len() - done;
        }
        assert!(
            Instant::now() < deadline,
            "no job finished in time; worker log:\n{}",
            deployment.worker_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        unfinished > 0,
        "the worker finished all {} jobs before it was killed; the case needs more jobs",
        jobs.len()
    );

    deployment.start_worker(&[]);
    assert_all_done_once(&deployment, &jobs).await;
}

/// Stamps one test per case and backend set: `embedded::CASE` and `distributed::CASE`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Set::Embedded).await;
                }
            )*
        }
        mod distributed {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Set::Distributed).await;
                }
            )*
        }
    };
}

conformance!(
    samples_processed_end_to_end,
    missing_key_gets_404_and_nothing_queued,
    submit_rejects_invalid_requests,
    bad_inputs_fail_with_their_codes,
    redelivered_job_leaves_one_row,
    jobs_queued_while_stopped_run_after_start,
    killed_worker_jobs_finish_after_restart,
);

/// Reads a worker's `rfo_jobs_total` counters from its metrics endpoint and sums them.
async fn jobs_finished_by(http: &reqwest::Client, metrics_address: &str) -> u64 {
    let text = http
        .get(format!("http://{metrics_address}/metrics"))
        .send()
        .await
        .expect("scrape the worker's metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with("rfo_jobs_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_queue_shared_by_two_workers() {
    let mut deployment =
        Deployment::start(Set::Embedded, "embedded_queue_shared_by_two_workers", 0).await;
    // Small channels keep the records one worker leases at once well below the job count,
    // so both workers get records.
    let mut metrics = Vec::new();
    for _ in 0..2 {
        let address = format!("127.0.0.1:{}", common::pick_port());
        deployment.start_worker(&[
            ("RFO_CHANNEL_CAPACITY", "1".to_owned()),
            ("RFO_DOWNLOAD_CONCURRENCY", "1".to_owned()),
            ("RFO_UPLOAD_CONCURRENCY", "1".to_owned()),
            ("RFO_METRICS_LISTEN", address.clone()),
        ]);
        metrics.push(address);
    }
    let jobs = submit_samples(&deployment, 16).await;
    assert_all_done_once(&deployment, &jobs).await;
    for (key, job_id) in &jobs {
        let rows = deployment.rows("job_id", job_id).await;
        assert_eq!(
            rows[0].attempts, 1,
            "{key} was processed more than once: {rows:?}"
        );
    }
    let mut per_worker = Vec::new();
    for address in &metrics {
        per_worker.push(jobs_finished_by(&deployment.http, address).await);
    }
    assert_eq!(
        per_worker.iter().sum::<u64>(),
        jobs.len() as u64,
        "jobs finished per worker: {per_worker:?}"
    );
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers took jobs: {per_worker:?}"
    );
    assert_eq!(deployment.records_ever_queued().await, jobs.len() as i64);
    let Backends::Embedded { root } = &deployment.backends else {
        unreachable!()
    };
    let queue = rfo_core::queue::EmbeddedQueue::open(
        &root.join("queue.db"),
        rfo_core::queue::DEFAULT_LEASE,
    )
    .await
    .unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0, "every record acknowledged");
    assert_eq!(queue.dead_letter_count().await.unwrap(), 0);
}
