//! The audit log of the real `rfo-api` binary: submits and reads leave rows with the token's
//! name, and the database rejects changes to those rows. One test runs against the local
//! stack's PostgreSQL, Kafka and S3 server (`eval "$(ops/stack start)"`), the other against
//! SQLite with the embedded queue and a folder of inputs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rfo_core::s3::S3Settings;
use serde_json::Value;
use uuid::Uuid;

const API: &str = env!("CARGO_BIN_EXE_rfo-api");
/// Maximum wait for an API to start, which applies migrations first.
const START_WAIT: Duration = Duration::from_secs(120);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set; run the tests with `eval \"$(ops/stack start)\"` first, or through ops/test")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

fn log_dir() -> PathBuf {
    let dir = Path::new(API)
        .parent()
        .expect("target dir")
        .join("test-logs")
        .join("api-audit");
    std::fs::create_dir_all(&dir).expect("create log dir");
    dir
}

/// A token printed by `rfo-api new-token`: the secret and its `RFO_API_TOKENS` entry.
struct Token {
    token: String,
    entry: String,
}

fn new_token(name: &str, scopes: &str) -> Token {
    let output = Command::new(API)
        .args(["new-token", "--name", name, "--scopes", scopes])
        .output()
        .expect("run rfo-api new-token");
    assert!(output.status.success(), "new-token failed: {output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} line in {stdout:?}"))
            .to_owned()
    };
    Token {
        token: field("token: "),
        entry: field("entry: "),
    }
}

/// An `rfo-api` child process, killed when dropped.
struct Api {
    child: Child,
    log: PathBuf,
    base_url: String,
}

impl Api {
    async fn start(test: &str, envs: &[(&str, String)]) -> Api {
        let port = free_port();
        let log = log_dir().join(format!("{test}.log"));
        let file = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(API)
            .env("RUST_LOG", "info")
            .env("RFO_LISTEN", format!("127.0.0.1:{port}"))
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start rfo-api");
        let api = Api {
            child,
            log,
            base_url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + START_WAIT;
        let client = reqwest::Client::new();
        while client
            .get(format!("{}/healthz", api.base_url))
            .send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "rfo-api did not listen in time; log:\n{}",
                std::fs::read_to_string(&api.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits `key` as the submitter, then reads the job and the recent list as the reader;
/// returns the job id.
async fn submit_and_read(api: &Api, key: &str, submitter: &Token, reader: &Token) -> Uuid {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let response = client
        .post(format!("{}/submit", api.base_url))
        .bearer_auth(&submitter.token)
        .json(&serde_json::json!({ "image_key": key }))
        .send()
        .await
        .expect("POST /submit");
    assert_eq!(response.status(), 202, "submit");
    let body: Value = response.json().await.unwrap();
    let job_id: Uuid = body["job_id"].as_str().unwrap().parse().unwrap();

    let response = client
        .get(format!("{}/jobs/{job_id}", api.base_url))
        .bearer_auth(&reader.token)
        .send()
        .await
        .expect("GET /jobs");
    assert_eq!(response.status(), 200, "read the job");
    let response = client
        .get(format!("{}/recent?n=5", api.base_url))
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
    let brokers = env("RFO_QUEUE_URL")
        .trim_start_matches("kafka://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let topic = format!("rfo-test-{}", Uuid::now_v7().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("create a Kafka admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    for result in created {
        result.expect("topic created");
    }

    let key = format!("audit/{}.png", Uuid::now_v7());
    let bucket = env("RFO_INPUT_URL")
        .trim_start_matches("s3://")
        .trim_end_matches('/')
        .to_owned();
    let s3 = rfo_core::s3::client(&S3Settings {
        force_path_style: true,
        ..S3Settings::default()
    })
    .await;
    s3.put_object()
        .bucket(bucket)
        .key(&key)
        .body(ByteStream::from(b"not read by the API".to_vec()))
        .send()
        .await
        .expect("upload a test input");

    let submitter = new_token("audit-submitter", "submit");
    let reader = new_token("audit-reader", "read");
    let mut envs = vec![
        ("RFO_QUEUE_URL", format!("kafka://{brokers}/{topic}")),
        ("RFO_INPUT_URL", env("RFO_INPUT_URL")),
        ("RFO_DATABASE_URL", env("RFO_DATABASE_URL")),
        ("RFO_S3_FORCE_PATH_STYLE", "true".to_owned()),
        (
            "RFO_API_TOKENS",
            format!("{},{}", submitter.entry, reader.entry),
        ),
    ];
    for name in [
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
    ] {
        envs.push((name, env(name)));
    }
    let api = Api::start("audit_rows_in_postgres", &envs).await;
    let job_id = submit_and_read(&api, &key, &submitter, &reader).await;

    let db = sqlx::PgPool::connect(&env("RFO_DATABASE_URL"))
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
    let api = Api::start("audit_rows_in_sqlite", &envs).await;
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
