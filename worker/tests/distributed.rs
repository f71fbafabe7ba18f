//! Tests specific to the distributed backends (Kafka, the S3 server and PostgreSQL of
//! `ops/stack`). The cases that every backend set must pass are in `conformance.rs`.

mod common;

use std::time::Duration;

use common::sample_pngs;
use serde_json::Value;
use uuid::Uuid;

fn run_prefix() -> String {
    format!("test-{}", Uuid::now_v7().simple())
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
    // A port nothing listens on plays the part of a broker that is down.
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
