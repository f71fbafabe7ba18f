//! Jobs that rfo-api recorded but never saw the queue acknowledge are published again by its
//! sweep, or marked failed once too old, on the real Kafka, S3 server and PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::Deployment;
use uuid::Uuid;

/// Inserts a queued row with no publish time, as rfo-api leaves one when it stops between
/// recording a job and publishing it.
async fn insert_unpublished(db: &sqlx::PgPool, key: &str, created_at: DateTime<Utc>) -> Uuid {
    let job_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (job_id, image_key, status, created_at) VALUES ($1, $2, 'queued', $3)",
    )
    .bind(job_id)
    .bind(key)
    .bind(created_at)
    .execute(db)
    .await
    .expect("insert an unpublished job");
    job_id
}

async fn published_at(db: &sqlx::PgPool, job_id: &str) -> Option<DateTime<Utc>> {
    let (published,): (Option<DateTime<Utc>>,) =
        sqlx::query_as("SELECT published_at FROM jobs WHERE job_id = $1::uuid")
            .bind(job_id)
            .fetch_one(db)
            .await
            .expect("job row");
    published
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unpublished_jobs_are_swept() {
    let stack = common::Stack::from_env();
    let topic = stack.new_topic(2).await;
    let deployment = Deployment::start_with_env(
        "unpublished_jobs_are_swept",
        topic,
        vec![
            ("RFO_REPUBLISH_INTERVAL_S", "1".to_owned()),
            ("RFO_REPUBLISH_AFTER_S", "60".to_owned()),
        ],
    )
    .await;
    // A job the queue took is recorded as published at once.
    let (key, submitted) = deployment.submit_sample("unpublished").await;
    let db = deployment.stack.db().await;
    assert!(
        published_at(&db, &submitted).await.is_some(),
        "a submit the queue acknowledged records published_at"
    );

    let now = Utc::now();
    let stale = insert_unpublished(&db, &key, now - chrono::Duration::minutes(10)).await;
    let expired = insert_unpublished(&db, &key, now - chrono::Duration::days(2)).await;
    let fresh = insert_unpublished(&db, &key, now).await;

    let job = deployment
        .wait_for(&stale.to_string(), &["done", "failed"])
        .await;
    assert_eq!(
        job["status"], "done",
        "the stale job was published and ran: {job}"
    );
    assert_eq!(job["image_key"], key.as_str());
    assert!(published_at(&db, &stale.to_string()).await.is_some());

    let job = deployment
        .wait_for(&expired.to_string(), &["done", "failed"])
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "queue_unavailable", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("submit it again")),
        "{job}"
    );

    // The fresh job is younger than RFO_REPUBLISH_AFTER_S (60 s by default), so the sweeps
    // that published the stale job left it alone.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let (_, job) = deployment.get_json(&format!("/jobs/{fresh}")).await;
        assert_eq!(job["status"], "queued", "{job}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(published_at(&db, &fresh.to_string()).await.is_none());
    // Other tests' APIs share the database and would publish the row once it is old enough.
    sqlx::query("DELETE FROM jobs WHERE job_id = $1")
        .bind(fresh)
        .execute(&db)
        .await
        .expect("delete the fresh job");
    let log = deployment.api.log_text();
    assert!(
        log.contains("published a job the queue had not acknowledged"),
        "the API logs the sweep: {log}"
    );
}
