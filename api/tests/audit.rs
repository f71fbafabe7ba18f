//! The audit log of the real `rfo-api` binary: submits and reads leave rows with the token's
//! name, and the database rejects changes to those rows. One test runs against the local
//! stack's PostgreSQL, Kafka and S3 server (`eval "$(ops/stack start)"`), the other against
//! SQLite with the embedded queue and a folder of inputs.

mod common;

use std::time::Duration;

use common::{Api, Token, new_token, put_input};
use serde_json::Value;
use uuid::Uuid;

/// Submits `key` as the submitter, then reads the job and the recent list as the reader;
/// returns the job id.
async fn submit_and_read(api: &Api, key: &str, submitter: &Token, reader: &Token) -> Uuid {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let response = client
        .post(api.url("/submit"))
        .bearer_auth(&submitter.token)
        .json(&serde_json::json!({ "image_key": key }))
        .send()
        .await
        .expect("POST /submit");
    assert_eq!(response.status(), 202, "submit");
    let body: Value = response.json().await.unwrap();
    let job_id: Uuid = body["job_id"].as_str().unwrap().parse().unwrap();

    let response = client
        .get(api.url(&format!("/jobs/{job_id}")))
        .bearer_auth(&reader.token)
        .send()
        .await
        .expect("GET /jobs");
    assert_eq!(response.status(), 200, "read the job");
    let response = client
        .get(api.url("/recent?n=5"))
        .bearer_auth(&reader.token)
        .send()
        .await
        .expect("GET /recent");
    assert_eq!(response.status(), 200, "list recent jobs");
    job_id
}

/// Rows of one job as (actor, action, status, remote address), in insertion order.
type AuditRow = (String, String, i64, String);

fn check_rows(rows: &[AuditRow], submitter: &str, reader: &str) {
    let summary: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|(actor, action, status, _)| (actor.as_str(), action.as_str(), *status))
        .collect();
    assert_eq!(
        summary,
        [
            (submitter, "submit", 202),
            (reader, "read_job", 200),
            (reader, "list_recent", 200),
        ],
        "audit rows of the job"
    );
    for (_, _, _, remote) in rows {
        assert!(
            remote.starts_with("127.0.0.1:"),
            "remote address {remote:?}"
        );
    }
}

#[tokio::test]
async fn audit_rows_in_postgres() {
    let key = format!("audit/{}.png", Uuid::now_v7());
    put_input(&key).await;

    let submitter = new_token("audit-submitter", "submit");
    let reader = new_token("audit-reader", "read");
    let tokens = format!("{},{}", submitter.entry, reader.entry);
    let api = Api::start("audit_rows_in_postgres", &[("RFO_API_TOKENS", tokens)]).await;
    let job_id = submit_and_read(&api, &key, &submitter, &reader).await;

    let db = sqlx::PgPool::connect(&common::env("RFO_DATABASE_URL"))
        .await
        .expect("connect to the test database");
    let rows: Vec<(i64, String, String, i32, String)> = sqlx::query_as(
        "SELECT audit_id, actor, action, status, remote_addr FROM audit_log \
         WHERE $1 = ANY (job_ids) ORDER BY audit_id",
    )
    .bind(job_id)
    .fetch_all(&db)
    .await
    .expect("read the audit log");
    let summary: Vec<AuditRow> = rows
        .iter()
        .map(|(_, actor, action, status, remote)| {
            (
                actor.clone(),
                action.clone(),
                i64::from(*status),
                remote.clone(),
            )
        })
        .collect();
    check_rows(&summary, "audit-submitter", "audit-reader");

    let audit_id = rows[0].0;
    let update = sqlx::query("UPDATE audit_log SET actor = 'someone else' WHERE audit_id = $1")
        .bind(audit_id)
        .execute(&db)
        .await;
    let error = update.expect_err("an UPDATE of an audit row must fail");
    assert!(error.to_string().contains("append-only"), "{error}");
    let delete = sqlx::query("DELETE FROM audit_log WHERE audit_id = $1")
        .bind(audit_id)
        .execute(&db)
        .await;
    let error = delete.expect_err("a DELETE of an audit row must fail");
    assert!(error.to_string().contains("append-only"), "{error}");
    let truncate = sqlx::query("TRUNCATE audit_log").execute(&db).await;
    let error = truncate.expect_err("a TRUNCATE of the audit log must fail");
    assert!(error.to_string().contains("append-only"), "{error}");

    let actor: String = sqlx::query_scalar("SELECT actor FROM audit_log WHERE audit_id = $1")
        .bind(audit_id)
        .fetch_one(&db)
        .await
        .expect("the audit row is still there");
    assert_eq!(actor, "audit-submitter");
}

#[tokio::test]
async fn audit_rows_in_sqlite() {
    let dir = std::env::temp_dir().join(format!("rfo-audit-{}", Uuid::now_v7().simple()));
    let input = dir.join("input");
    std::fs::create_dir_all(&input).expect("create the input folder");
    let key = "scans/audit.png";
    std::fs::create_dir_all(input.join("scans")).unwrap();
    std::fs::write(input.join(key), b"not read by the API").unwrap();
    let database = dir.join("rfo.db");

    let submitter = new_token("audit-submitter", "submit");
    let reader = new_token("audit-reader", "read");
    let envs = [
        (
            "RFO_QUEUE_URL",
            format!("embedded://{}", dir.join("queue.db").display()),
        ),
        ("RFO_INPUT_URL", input.display().to_string()),
        (
            "RFO_DATABASE_URL",
            format!("sqlite://{}", database.display()),
        ),
        (
            "RFO_API_TOKENS",
            format!("{},{}", submitter.entry, reader.entry),
        ),
    ];
    let api = Api::spawn("audit_rows_in_sqlite", &[], &envs);
    api.wait_listening().await;
    let job_id = submit_and_read(&api, key, &submitter, &reader).await;

    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", database.display()))
        .await
        .expect("open the SQLite database");
    let rows: Vec<(i64, String, String, i64, String)> = sqlx::query_as(
        "SELECT audit_id, actor, action, status, remote_addr FROM audit_log \
         WHERE EXISTS (SELECT 1 FROM json_each(audit_log.job_ids) WHERE value = ?1) \
         ORDER BY audit_id",
    )
    .bind(job_id.to_string())
    .fetch_all(&db)
    .await
    .expect("read the audit log");
    let summary: Vec<AuditRow> = rows
        .iter()
        .map(|(_, actor, action, status, remote)| {
            (actor.clone(), action.clone(), *status, remote.clone())
        })
        .collect();
    check_rows(&summary, "audit-submitter", "audit-reader");

    let audit_id = rows[0].0;
    let update = sqlx::query("UPDATE audit_log SET actor = 'someone else' WHERE audit_id = ?1")
        .bind(audit_id)
        .execute(&db)
        .await;
    let error = update.expect_err("an UPDATE of an audit row must fail");
    assert!(error.to_string().contains("append-only"), "{error}");
    let delete = sqlx::query("DELETE FROM audit_log WHERE audit_id = ?1")
        .bind(audit_id)
        .execute(&db)
        .await;
    let error = delete.expect_err("a DELETE of an audit row must fail");
    assert!(error.to_string().contains("append-only"), "{error}");

    let actor: String = sqlx::query_scalar("SELECT actor FROM audit_log WHERE audit_id = ?1")
        .bind(audit_id)
        .fetch_one(&db)
        .await
        .expect("the audit row is still there");
    assert_eq!(actor, "audit-submitter");

    drop(api);
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
