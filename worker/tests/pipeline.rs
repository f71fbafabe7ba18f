//! End-to-end tests of `rfo-api` and `rfo-worker` against the real Kafka, S3 server and
//! PostgreSQL of `ops/stack`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Deployment, png_size, sample_pngs, shared_dir};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::Value;
use uuid::Uuid;

fn run_prefix() -> String {
    format!("test-{}", Uuid::now_v7().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn samples_processed_end_to_end() {
    let deployment = Deployment::start("samples_processed_end_to_end").await;
    let prefix = run_prefix();
    let samples = sample_pngs();
    let mut expected_sizes = HashMap::new();
    let mut submitted = Vec::new();
    for (index, path) in samples.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        // Keys with a space, like the reference deployment's clients send.
        let key = format!("{prefix}/Image_{index} sample.png");
        expected_sizes.insert(key.clone(), png_size(&bytes));
        deployment.stack.put_input(&key, bytes).await;
        let (status, body) = deployment.submit(&key).await;
        assert_eq!(status, 202, "submit {key}: {body}");
        assert_eq!(body["image_key"], key.as_str());
        assert_eq!(body["queued"], true);
        assert_eq!(body["topic"], deployment.topic.as_str());
        submitted.push((key, body["job_id"].as_str().unwrap().to_owned()));
    }

    let db = deployment.stack.db().await;
    for (key, job_id) in &submitted {
        let job = deployment.wait_for(job_id, &["done", "failed"]).await;
        assert_eq!(job["status"], "done", "job for {key}: {job}");
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
            .stack
            .get_output(&format!("overlays/{job_id}.png"))
            .await
            .expect("overlay object exists");
        assert_eq!(png_size(&overlay), (width, height), "overlay size of {key}");
        let preview = deployment
            .stack
            .get_output(&format!("overlays/{job_id}.preview.png"))
            .await
            .expect("preview exists");
        let (pw, ph) = png_size(&preview);
        assert!(pw.max(ph) <= 256, "preview {pw}x{ph}");

        let row: (String, String, i32, i32, Value, i32) = sqlx::query_as(
            "SELECT status, image_key, width, height, boxes, attempts FROM jobs WHERE job_id = $1::uuid",
        )
        .bind(job_id)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(row.0, "done");
        assert_eq!(&row.1, key);
        assert_eq!((row.2 as u32, row.3 as u32), (width, height));
        assert_eq!(row.4[0]["x1"], b["x1"]);
        assert_eq!(row.4[0]["y2"], b["y2"]);
        assert!(row.5 >= 1);
    }

    let (status, recent) = deployment.get_json("/recent?n=1000").await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    let ours: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|id| submitted.iter().any(|(_, j)| j == id))
        .collect();
    let expected: Vec<&str> = submitted.iter().rev().map(|(_, j)| j.as_str()).collect();
    assert_eq!(ours, expected, "/recent lists this run's jobs newest first");
    let created: Vec<&str> = recent
        .as_array()
        .unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_key_gets_404_and_nothing_queued() {
    let deployment = Deployment::start("missing_key_gets_404_and_nothing_queued").await;
    let key = format!("{}/no such image.png", run_prefix());
    let (status, body) = deployment.submit(&key).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "input_not_found");

    let db = deployment.stack.db().await;
    let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE image_key = $1")
        .bind(&key)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows.0, 0, "no row for a missing key");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &deployment.stack.brokers)
        .create()
        .unwrap();
    for partition in 0..4 {
        let (low, high) = consumer
            .fetch_watermarks(
                &deployment.topic,
                partition,
                Timeout::After(Duration::from_secs(10)),
            )
            .unwrap();
        assert_eq!(high - low, 0, "partition {partition} holds no record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_rejects_invalid_requests() {
    let deployment = Deployment::start("submit_rejects_invalid_requests").await;
    let cases = [
        (serde_json::json!({"image_key": ""}), 400, "invalid_key"),
        (serde_json::json!({"image_key": "   "}), 400, "invalid_key"),
        (
            serde_json::json!({"image_key": "a\u{0007}b.png"}),
            400,
            "invalid_key",
        ),
        (
            serde_json::json!({"image_key": "x".repeat(1025)}),
            400,
            "invalid_key",
        ),
        (serde_json::json!({"key": "a.png"}), 400, "invalid_request"),
        (serde_json::json!({"image_key": 5}), 400, "invalid_request"),
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
    let response = deployment
        .http
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_fail_with_their_codes() {
    let mut deployment = Deployment::start("bad_inputs_fail_with_their_codes").await;
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
        deployment.stack.put_input(&key, bytes.clone()).await;
        let (status, body) = deployment.submit(&key).await;
        assert_eq!(status, 202, "{body}");
        jobs.push(body["job_id"].as_str().unwrap().to_owned());
    }
    for ((name, _, status, code), job_id) in inputs.iter().zip(&jobs) {
        let job = deployment.wait_for(job_id, &["done", "failed"]).await;
        assert_eq!(job["status"], *status, "{name}: {job}");
        match code {
            Some(code) => {
                assert_eq!(job["error"]["code"], *code, "{name}: {job}");
                assert!(
                    job["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{name}: {job}"
                );
                assert!(job["overlay_key"].is_null(), "{name}: {job}");
                let objects = deployment
                    .stack
                    .list_output(&format!("overlays/{job_id}"))
                    .await;
                assert!(
                    objects.is_empty(),
                    "no overlay for a failed job: {objects:?}"
                );
            }
            None => assert!(job.get("error").is_none(), "{name}: {job}"),
        }
    }
    assert!(
        deployment.workers[0].child.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_job_leaves_one_row() {
    let deployment = Deployment::start("redelivered_job_leaves_one_row").await;
    let key = format!("{}/twice.png", run_prefix());
    deployment
        .stack
        .put_input(&key, std::fs::read(&sample_pngs()[0]).unwrap())
        .await;
    let (status, body) = deployment.submit(&key).await;
    assert_eq!(status, 202, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let first = deployment.wait_for(&job_id, &["done"]).await;

    // Deliver the same job again, as Kafka does after a crash before the offset commit.
    let message = serde_json::json!({"v": 1, "job_id": job_id, "image_key": key, "submitted_at": first["created_at"]});
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &deployment.stack.brokers)
        .create()
        .unwrap();
    let payload = message.to_string();
    producer
        .send(
            FutureRecord::to(&deployment.topic)
                .key(&job_id)
                .payload(&payload),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .expect("produce the duplicate");

    let db = deployment.stack.db().await;
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let (attempts,): (i32,) =
            sqlx::query_as("SELECT attempts FROM jobs WHERE job_id = $1::uuid")
                .bind(&job_id)
                .fetch_one(&db)
                .await
                .unwrap();
        if attempts >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the duplicate was not processed in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE job_id = $1::uuid")
        .bind(&job_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let (_, second) = deployment.get_json(&format!("/jobs/{job_id}")).await;
    assert_eq!(second["status"], "done");
    assert_eq!(second["box"], first["box"], "a re-run gives the same box");
    assert_eq!(
        second["processed_at"], first["processed_at"],
        "the first result is kept"
    );
    let mut objects = deployment
        .stack
        .list_output(&format!("overlays/{job_id}"))
        .await;
    objects.sort();
    assert_eq!(
        objects,
        vec![
            format!("overlays/{job_id}.png"),
            format!("overlays/{job_id}.preview.png")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_answers_503_when_queue_is_down() {
    let stack = common::Stack::from_env();
    let key = format!("{}/queued.png", run_prefix());
    stack
        .put_input(&key, std::fs::read(&sample_pngs()[0]).unwrap())
        .await;
    let port = common::pick_port();
    let mut envs = common::api_env(&stack, "rfo-unreachable", port);
    // A port nothing listens on stands in for a broker that is down.
    let dead = common::pick_port();
    envs.retain(|(k, _)| *k != "RFO_QUEUE_URL");
    envs.push((
        "RFO_QUEUE_URL",
        format!("kafka://127.0.0.1:{dead}/rfo-unreachable"),
    ));
    envs.push(("RFO_PUBLISH_TIMEOUT_MS", "2000".to_owned()));
    let (api, url) = common::spawn_api("submit_answers_503_when_queue_is_down", envs, port);
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + common::WAIT;
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "rfo-api did not start: {}",
            api.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = {
        let r = http.get(format!("{url}/readyz")).send().await.unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 503, "not ready without a queue");

    let started = std::time::Instant::now();
    let response = http
        .post(format!("{url}/submit"))
        .json(&serde_json::json!({"image_key": key}))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    assert!(elapsed < Duration::from_secs(30), "503 took {elapsed:?}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_unavailable", "{body}");
    let job_id = body["job_id"]
        .as_str()
        .expect("the 503 body carries the job id")
        .to_owned();

    let db = stack.db().await;
    let (status, code): (String, Option<String>) =
        sqlx::query_as("SELECT status, error_code FROM jobs WHERE job_id = $1::uuid")
            .bind(&job_id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert_eq!(code.as_deref(), Some("queue_unavailable"));
}
