//! Transport security end to end: `rfo-api` and `rfo-worker` reach Kafka over SASL_SSL with
//! SCRAM-SHA-512 or over TLS with a client certificate, and PostgreSQL over TLS with
//! `sslmode=verify-full`, through the encrypted endpoints of `ops/stack`. The other tests
//! check that those endpoints turn away clients that skip encryption or authentication, or
//! that do not trust the server's certificate.
//!
//! Topics are created over the plaintext listener, since only the pipeline's own traffic is
//! under test.

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use common::{Deployment, Process, Stack, api_env, pick_port, sample_pngs, spawn_api, stack_env};
use serde_json::Value;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use uuid::Uuid;

/// How long a negative test waits for the API to reach the database, which must succeed
/// before a failing queue check means anything.
const DATABASE_WAIT: Duration = Duration::from_secs(60);

/// Encrypted endpoints of the local stack, from the `RFO_STACK_*` lines of `ops/stack env`.
struct SecureStack {
    ca: String,
    client_cert: String,
    client_key: String,
    sasl_ssl_brokers: String,
    sasl_mechanism: String,
    sasl_username: String,
    sasl_password: String,
    mtls_brokers: String,
    database_url: String,
}

/// How a Kafka client of the mutual-TLS listener presents itself.
enum ClientCertificate {
    Present,
    Missing,
}

impl SecureStack {
    fn from_env() -> SecureStack {
        SecureStack {
            ca: stack_env("RFO_STACK_TLS_CA"),
            client_cert: stack_env("RFO_STACK_TLS_CLIENT_CERT"),
            client_key: stack_env("RFO_STACK_TLS_CLIENT_KEY"),
            sasl_ssl_brokers: stack_env("RFO_STACK_KAFKA_SASL_SSL"),
            sasl_mechanism: stack_env("RFO_STACK_KAFKA_SASL_MECHANISM"),
            sasl_username: stack_env("RFO_STACK_KAFKA_SASL_USERNAME"),
            sasl_password: stack_env("RFO_STACK_KAFKA_SASL_PASSWORD"),
            mtls_brokers: stack_env("RFO_STACK_KAFKA_MTLS"),
            database_url: stack_env("RFO_STACK_DATABASE_TLS_URL"),
        }
    }

    /// Environment of the binaries for the SASL_SSL listener, logging in with `password`,
    /// and the TLS-only database.
    fn sasl_ssl_env(&self, topic: &str, password: &str) -> Vec<(&'static str, String)> {
        vec![
            (
                "RFO_QUEUE_URL",
                format!("kafka://{}/{topic}", self.sasl_ssl_brokers),
            ),
            ("RFO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".to_owned()),
            ("RFO_KAFKA_SASL_MECHANISM", self.sasl_mechanism.clone()),
            ("RFO_KAFKA_SASL_USERNAME", self.sasl_username.clone()),
            ("RFO_KAFKA_SASL_PASSWORD", password.to_owned()),
            ("RFO_KAFKA_SSL_CA_LOCATION", self.ca.clone()),
            ("RFO_DATABASE_URL", self.database_url.clone()),
        ]
    }

    /// Environment of the binaries for the mutual-TLS listener and the TLS-only database.
    fn mtls_env(&self, topic: &str, certificate: ClientCertificate) -> Vec<(&'static str, String)> {
        let mut envs = vec![
            (
                "RFO_QUEUE_URL",
                format!("kafka://{}/{topic}", self.mtls_brokers),
            ),
            ("RFO_KAFKA_SECURITY_PROTOCOL", "SSL".to_owned()),
            ("RFO_KAFKA_SSL_CA_LOCATION", self.ca.clone()),
            ("RFO_DATABASE_URL", self.database_url.clone()),
        ];
        if let ClientCertificate::Present = certificate {
            envs.push((
                "RFO_KAFKA_SSL_CERTIFICATE_LOCATION",
                self.client_cert.clone(),
            ));
            envs.push(("RFO_KAFKA_SSL_KEY_LOCATION", self.client_key.clone()));
        }
        envs
    }

    fn database_options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.database_url)
            .expect("RFO_STACK_DATABASE_TLS_URL is a PostgreSQL URL")
    }

    async fn db(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect_with(self.database_options())
            .await
            .expect("connect to the TLS-only database with sslmode=verify-full")
    }
}

/// Uploads the first sample radiograph, submits it and checks that the job is `done` in the
/// TLS-only database.
async fn process_sample(deployment: &Deployment, secure: &SecureStack) {
    let path = &sample_pngs()[0];
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let key = format!("test-{}/sample.png", Uuid::now_v7().simple());
    deployment.stack.put_input(&key, bytes).await;

    let (status, body) = deployment.submit(&key).await;
    assert_eq!(status, 202, "submit {key}: {body}");
    let job_id = body["job_id"]
        .as_str()
        .expect("job_id in the submit response");
    let job = deployment.wait_for(job_id, &["done", "failed"]).await;
    assert_eq!(job["status"], "done", "{job}");

    let job_id = Uuid::parse_str(job_id).expect("job_id is a UUID");
    let row_status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&secure.db().await)
        .await
        .expect("the job's row in the TLS-only database");
    assert_eq!(row_status, "done");
}

/// Checks that no log of the deployment's processes contains `secret`.
fn assert_logs_omit(deployment: &Deployment, secret: &str) {
    assert!(
        !deployment.api.log_text().contains(secret),
        "the rfo-api log contains a secret"
    );
    for worker in &deployment.workers {
        assert!(
            !worker.log_text().contains(secret),
            "the rfo-worker log {} contains a secret",
            worker.log.display()
        );
    }
}

/// Starts an API with `overrides`, waits until its `/readyz` reports the database
/// reachable, and returns that response's status and body with the API process.
async fn readiness(
    test: &str,
    topic: &str,
    overrides: Vec<(&'static str, String)>,
) -> (u16, Value, Process, String) {
    let port = pick_port();
    let mut envs = api_env(&Stack::from_env(), topic, port);
    envs.extend(overrides);
    let (api, api_url) = spawn_api(test, envs, port);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + DATABASE_WAIT;
    loop {
        if let Ok(response) = http.get(format!("{api_url}/readyz")).send().await {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if body["database"] == true {
                return (status, body, api, api_url);
            }
        }
        assert!(
            Instant::now() < deadline,
            "rfo-api did not reach the TLS-only database within {DATABASE_WAIT:?}; log:\n{}",
            api.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sasl_ssl_pipeline_reaches_done() {
    let secure = SecureStack::from_env();
    let topic = Stack::from_env().new_topic(2).await;
    let overrides = secure.sasl_ssl_env(&topic, &secure.sasl_password);
    let deployment =
        Deployment::start_with_env("sasl_ssl_pipeline_reaches_done", topic, overrides).await;
    process_sample(&deployment, &secure).await;
    assert_logs_omit(&deployment, &secure.sasl_password);
    // postgres://USER:PASSWORD@HOST..., as ops/stack writes it.
    let database_password = secure
        .database_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(credentials, _)| credentials.split_once(':'))
        .map(|(_, password)| password)
        .expect("RFO_STACK_DATABASE_TLS_URL carries a password");
    assert_logs_omit(&deployment, database_password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_pipeline_reaches_done() {
    let secure = SecureStack::from_env();
    let topic = Stack::from_env().new_topic(2).await;
    let overrides = secure.mtls_env(&topic, ClientCertificate::Present);
    let deployment =
        Deployment::start_with_env("mutual_tls_pipeline_reaches_done", topic, overrides).await;
    process_sample(&deployment, &secure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_scram_password_rejected() {
    let test = "wrong_scram_password_rejected";
    let secure = SecureStack::from_env();
    let stack = Stack::from_env();
    let topic = stack.new_topic(1).await;
    let wrong_password = format!("not-{}", secure.sasl_password);
    let overrides = secure.sasl_ssl_env(&topic, &wrong_password);
    let (status, body, api, api_url) = readiness(test, &topic, overrides).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["queue"], false, "{body}");

    // A submission is recorded and then fails, since the broker never takes the job.
    let key = format!("test-{}/sample.png", Uuid::now_v7().simple());
    let bytes = std::fs::read(&sample_pngs()[0]).expect("read the sample");
    stack.put_input(&key, bytes).await;
    let response = reqwest::Client::new()
        .post(format!("{api_url}/submit"))
        .json(&serde_json::json!({ "image_key": key }))
        .send()
        .await
        .expect("POST /submit");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "queue_unavailable", "{body}");

    let log = api.log_text();
    assert!(
        !log.contains(&wrong_password),
        "the rfo-api log contains the SASL password"
    );
    // librdkafka 2.12 logs this cause of a rejected login.
    assert!(
        log.contains("SASL authentication error"),
        "the rfo-api log does not show the rejected login; log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_without_certificate_rejected() {
    let secure = SecureStack::from_env();
    let topic = Stack::from_env().new_topic(1).await;
    let overrides = secure.mtls_env(&topic, ClientCertificate::Missing);
    let (status, body, _api, _) =
        readiness("mutual_tls_without_certificate_rejected", &topic, overrides).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["queue"], false, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn untrusted_broker_certificate_rejected() {
    let secure = SecureStack::from_env();
    let topic = Stack::from_env().new_topic(1).await;
    let mut overrides = secure.sasl_ssl_env(&topic, &secure.sasl_password);
    // The only trusted certificate is the client certificate, which did not issue the
    // broker's certificate, so the broker's chain cannot be verified.
    overrides.push(("RFO_KAFKA_SSL_CA_LOCATION", secure.client_cert.clone()));
    let (status, body, api, _) =
        readiness("untrusted_broker_certificate_rejected", &topic, overrides).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["queue"], false, "{body}");
    // OpenSSL 3 reports this cause of a failed chain check, and librdkafka logs it.
    let log = api.log_text();
    assert!(
        log.contains("certificate verify failed"),
        "the rfo-api log does not show the failed certificate check; log:\n{log}"
    );
}

#[tokio::test]
async fn tls_role_rejected_without_encryption() {
    let secure = SecureStack::from_env();
    let plain = secure.database_options().ssl_mode(PgSslMode::Disable);
    let error = plain
        .connect()
        .await
        .expect_err("the TLS-only role logged in without TLS");
    let message = error.to_string();
    assert!(
        message.contains("pg_hba.conf rejects connection"),
        "unexpected error: {message}"
    );
    assert!(
        message.contains("no encryption"),
        "unexpected error: {message}"
    );
}

#[tokio::test]
async fn database_verify_full_accepts_ip_and_localhost() {
    let secure = SecureStack::from_env();
    // The server certificate names 127.0.0.1 as an IP address and localhost as a DNS name.
    for host in ["127.0.0.1", "localhost"] {
        let options = secure.database_options().host(host);
        assert!(
            matches!(options.get_ssl_mode(), PgSslMode::VerifyFull),
            "RFO_STACK_DATABASE_TLS_URL does not ask for sslmode=verify-full"
        );
        let mut connection = options
            .connect()
            .await
            .unwrap_or_else(|e| panic!("verify-full connection to {host} failed: {e}"));
        let encrypted: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut connection)
                .await
                .expect("read pg_stat_ssl");
        assert!(encrypted, "the connection to {host} is not encrypted");
    }
}

#[tokio::test]
async fn untrusted_database_certificate_rejected() {
    let secure = SecureStack::from_env();
    // The client certificate did not issue the server's.
    let options = secure.database_options().ssl_root_cert(&secure.client_cert);
    let error = options
        .connect()
        .await
        .expect_err("a server certificate that the trusted certificate did not issue was accepted");
    let message = error.to_string();
    assert!(
        message.contains("UnknownIssuer"),
        "unexpected error: {message}"
    );
}
