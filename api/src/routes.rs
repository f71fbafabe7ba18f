//! Request handlers. Every error body is `{"error": {"code", "message"}}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rfo_core::config::StorageUrl;
use rfo_core::db::{JobStore, PoolSettings};
use rfo_core::job::{JobMessage, validate_key};
use rfo_core::s3::{self, HeadError, S3Settings};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::auth::Authenticator;
use crate::settings::Settings;

/// Largest request body accepted; a submit body is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a readiness probe waits for each backend.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AppState {
    pub store: JobStore,
    s3: aws_sdk_s3::Client,
    input_bucket: String,
    input_prefix: String,
    producer: FutureProducer,
    topic: String,
    publish_timeout: Duration,
    log_keys: bool,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl AppState {
    pub async fn connect(
        settings: &Settings,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
    ) -> anyhow::Result<AppState> {
        let rfo_core::config::DatabaseUrl::Postgres(database_url) = &settings.database;
        let store = JobStore::connect_lazy(database_url, &PoolSettings::default())?;
        let StorageUrl::S3 { bucket, prefix } = &settings.input else {
            anyhow::bail!("RFO_INPUT_URL must be an s3:// URL");
        };
        let s3_settings = S3Settings {
            force_path_style: settings.s3_force_path_style,
            operation_attempt_timeout: Duration::from_secs(5),
            ..S3Settings::default()
        };
        let s3 = s3::client(&s3_settings).await;
        let rfo_core::config::QueueUrl::Kafka { brokers, topic } = &settings.queue;
        let producer: FutureProducer =
            rfo_core::kafka::producer_config(brokers, settings.publish_timeout_ms, &settings.kafka)
                .create()
                .map_err(|e| {
                    anyhow::anyhow!("failed to create the Kafka producer for RFO_QUEUE_URL: {e}")
                })?;
        Ok(AppState {
            store,
            s3,
            input_bucket: bucket.clone(),
            input_prefix: prefix.clone(),
            producer,
            topic: topic.clone(),
            publish_timeout: Duration::from_millis(settings.publish_timeout_ms),
            log_keys: settings.log_keys,
            metrics,
        })
    }
}

type HttpResponse = Response<Full<Bytes>>;

/// Routes one request. Never fails: every error becomes a JSON response.
pub async fn handle(
    state: Arc<AppState>,
    auth: Arc<Authenticator>,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    if let Some(rejection) = auth.check(&request) {
        return Ok(rejection);
    }
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (route, response) = match (&method, path.as_str()) {
        (&Method::POST, "/submit") => ("submit", submit(&state, request).await),
        (&Method::GET, "/recent") => ("recent", recent(&state, request.uri().query()).await),
        (&Method::GET, "/healthz") => (
            "healthz",
            json_response(StatusCode::OK, &json!({"status": "ok"})),
        ),
        (&Method::GET, "/readyz") => ("readyz", ready(&state).await),
        (&Method::GET, "/metrics") => ("metrics", metrics_response(&state)),
        (&Method::GET, p) if p.starts_with("/jobs/") => {
            ("job", job(&state, &p["/jobs/".len()..]).await)
        }
        (_, "/submit" | "/recent" | "/healthz" | "/readyz" | "/metrics") => (
            "other",
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {path}"),
            ),
        ),
        _ => (
            "other",
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for {path}"),
            ),
        ),
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("rfo_api_requests_total", "route" => route, "status" => status).increment(1);
    metrics::histogram!("rfo_api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

#[derive(Deserialize)]
struct SubmitRequest {
    image_key: String,
}

#[derive(Serialize)]
struct SubmitResponse<'a> {
    job_id: Uuid,
    image_key: &'a str,
    queued: bool,
    topic: &'a str,
}

async fn submit(state: &AppState, request: Request<Incoming>) -> HttpResponse {
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body is over {MAX_BODY_BYTES} bytes; send {{\"image_key\": \"...\"}}"
                ),
            );
        }
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("failed to read the request body: {error}"),
            );
        }
    };
    let submit: SubmitRequest = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "request body is not valid JSON of the form {{\"image_key\": \"...\"}}: {error}"
                ),
            );
        }
    };
    if let Err(error) = validate_key(&submit.image_key) {
        return error_response(StatusCode::BAD_REQUEST, "invalid_key", error.to_string());
    }

    let object_key = format!("{}{}", state.input_prefix, submit.image_key);
    let etag = match s3::head(&state.s3, &state.input_bucket, &object_key).await {
        Ok(info) => info.etag,
        Err(HeadError::NotFound) => {
            return error_response(
                StatusCode::NOT_FOUND,
                "input_not_found",
                format!(
                    "no object {:?} in bucket {}; upload the image first",
                    submit.image_key, state.input_bucket
                ),
            );
        }
        Err(HeadError::Unavailable(error)) => {
            tracing::warn!(%error, "input bucket lookup failed");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the input bucket could not be reached; retry later",
            );
        }
    };

    let job_id = Uuid::now_v7();
    // PostgreSQL keeps microseconds, so the API returns what the row will hold.
    let created_at: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    if let Err(error) = state
        .store
        .insert_queued(job_id, &submit.image_key, etag.as_deref(), created_at)
        .await
    {
        tracing::warn!(%job_id, %error, "failed to record a submitted job");
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the job database could not be reached; retry later",
        );
    }

    let message = JobMessage::new(job_id, submit.image_key.clone(), created_at).to_json();
    let key = job_id.to_string();
    let record = FutureRecord::to(&state.topic).key(&key).payload(&message);
    if let Err((error, _)) = state
        .producer
        .send(record, Timeout::After(state.publish_timeout))
        .await
    {
        tracing::warn!(%job_id, %error, "broker did not acknowledge the job");
        let reason = format!("the queue did not accept the job: {error}");
        if let Err(db_error) = state.store.mark_unqueued(job_id, &reason).await {
            // NOTE: the row stays `queued`; a worker's result replaces it if the broker did
            // persist the record after all.
            tracing::warn!(%job_id, error = %db_error, "failed to mark an unpublished job failed");
        }
        let body = json!({"error": {"code": "queue_unavailable", "message": "the queue could not take the job; it will not run, submit it again later"}, "job_id": job_id});
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    tracing::info!(%job_id, "job queued");
    if state.log_keys {
        tracing::debug!(%job_id, image_key = %submit.image_key, "job image key");
    }
    json_response(
        StatusCode::ACCEPTED,
        &SubmitResponse {
            job_id,
            image_key: &submit.image_key,
            queued: true,
            topic: &state.topic,
        },
    )
}

async fn recent(state: &AppState, query: Option<&str>) -> HttpResponse {
    let mut limit = 10;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "n" {
            match value.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        format!("n={value:?} is invalid; use a whole number from 1 to 1000"),
                    );
                }
            }
        }
    }
    match state.store.recent(limit).await {
        Ok(jobs) => json_response(StatusCode::OK, &jobs),
        Err(error) => {
            tracing::warn!(%error, "failed to list recent jobs");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the job database could not be reached; retry later",
            )
        }
    }
}

async fn job(state: &AppState, id: &str) -> HttpResponse {
    let Ok(job_id) = id.parse::<Uuid>() else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{id:?} is not a job id; job ids are UUIDs"),
        );
    };
    match state.store.get(job_id).await {
        Ok(Some(job)) => json_response(StatusCode::OK, &job),
        Ok(None) => error_response(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job {job_id}"),
        ),
        Err(error) => {
            tracing::warn!(%job_id, %error, "failed to look up a job");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the job database could not be reached; retry later",
            )
        }
    }
}

async fn ready(state: &AppState) -> HttpResponse {
    let database = tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await;
    let database_ok = matches!(database, Ok(Ok(())));
    let producer = state.producer.clone();
    let topic = state.topic.clone();
    let queue_ok = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), Timeout::After(READY_TIMEOUT))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    let status = if database_ok && queue_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &json!({"database": database_ok, "queue": queue_ok}))
}

fn metrics_response(state: &AppState) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> HttpResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message.into()}}),
    )
}
