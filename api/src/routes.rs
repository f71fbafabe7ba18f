//! Request handlers. Every error body is `{"error": {"code", "message"}}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rfo_core::db::{AuditAction, AuditEntry, JobStore, PoolSettings};
use rfo_core::job::{JobMessage, now_micros, validate_key};
use rfo_core::kafka::KafkaContext;
use rfo_core::queue::Publisher;
use rfo_core::s3::S3Settings;
use rfo_core::storage::{ObjectStore, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::auth::Authenticator;
use crate::settings::Settings;

/// Largest request body accepted; a submit body is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a readiness probe waits for each backend.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The backends and settings every handler shares.
pub struct AppState {
    pub store: JobStore,
    input: ObjectStore,
    publisher: Publisher,
    topic: String,
    log_keys: bool,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl AppState {
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub async fn connect(
        settings: &Settings,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
    ) -> anyhow::Result<AppState> {
        let store = JobStore::open(&settings.database, &PoolSettings::default())
            .context("invalid RFO_DATABASE_URL")?;
        let s3_settings = S3Settings {
            force_path_style: settings.s3_force_path_style,
            operation_attempt_timeout: Duration::from_secs(5),
            ..S3Settings::default()
        };
        let input = ObjectStore::open(&settings.input, &s3_settings)
            .await
            .context("failed to open RFO_INPUT_URL")?;
        let publisher = Publisher::open(
            &settings.queue,
            Duration::from_millis(settings.publish_timeout_ms),
            &settings.kafka,
            KafkaContext::new(settings.msk_iam)
                .await
                .context("failed to set up RFO_MSK_IAM")?,
        )
        .await
        .context("failed to open RFO_QUEUE_URL")?;
        Ok(AppState {
            store,
            input,
            publisher,
            topic: settings.queue.topic().to_owned(),
            log_keys: settings.log_keys,
            metrics,
        })
    }
}

pub type HttpResponse = Response<Full<Bytes>>;

/// Routes one request from `peer`. Every error becomes a JSON response, so this returns no
/// error. Submits and reads of jobs are recorded in the audit log first. When that record
/// cannot be written, a read gets 503 instead, but a submit keeps its response because its
/// job is queued already.
pub async fn handle(
    state: Arc<AppState>,
    auth: Arc<Authenticator>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let actor = match auth.check(&request) {
        Ok(actor) => actor,
        Err(rejection) => return Ok(rejection.response()),
    };
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (route, audited, response) = match (&method, path.as_str()) {
        (&Method::POST, "/submit") => {
            let (response, ids) = submit(&state, request).await;
            ("submit", Some((AuditAction::Submit, ids)), response)
        }
        (&Method::GET, "/recent") => {
            let (response, ids) = list_recent(&state, request.uri().query()).await;
            ("recent", Some((AuditAction::ListRecent, ids)), response)
        }
        (&Method::GET, "/healthz") => (
            "healthz",
            None,
            json_response(StatusCode::OK, &json!({"status": "ok"})),
        ),
        (&Method::GET, "/readyz") => ("readyz", None, ready(&state).await),
        (&Method::GET, "/metrics") => ("metrics", None, metrics_response(&state)),
        (&Method::GET, "/openapi.json") => ("openapi", None, openapi_response()),
        (&Method::GET, p) if p.starts_with("/jobs/") => {
            let (response, ids) = job(&state, &p["/jobs/".len()..]).await;
            ("job", Some((AuditAction::ReadJob, ids)), response)
        }
        (_, "/submit") => ("other", None, method_not_allowed(&method, &path, "POST")),
        (_, "/recent" | "/healthz" | "/readyz" | "/metrics" | "/openapi.json") => {
            ("other", None, method_not_allowed(&method, &path, "GET"))
        }
        (_, p) if p.starts_with("/jobs/") => {
            ("other", None, method_not_allowed(&method, &path, "GET"))
        }
        _ => (
            "other",
            None,
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for {path}"),
            ),
        ),
    };
    let response = match audited {
        Some((action, job_ids)) => {
            let entry = AuditEntry {
                recorded_at: now_micros(),
                actor,
                action,
                job_ids,
                status: response.status().as_u16(),
                remote_addr: peer.to_string(),
            };
            record_audit(&state, &entry, response).await
        }
        None => response,
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("rfo_api_requests_total", "route" => route, "status" => status).increment(1);
    metrics::histogram!("rfo_api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

/// Appends `entry` to the audit log; returns `response`, or a 503 in its place when the entry
/// of a read cannot be written.
async fn record_audit(
    state: &AppState,
    entry: &AuditEntry,
    response: HttpResponse,
) -> HttpResponse {
    let Err(error) = state.store.append_audit(entry).await else {
        return response;
    };
    metrics::counter!("rfo_api_audit_failures_total", "action" => entry.action.as_str())
        .increment(1);
    tracing::warn!(
        action = %entry.action,
        job_ids = ?entry.job_ids,
        %error,
        "failed to write the audit record"
    );
    if entry.action == AuditAction::Submit {
        return response;
    }
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        "the audit record of this request could not be written; retry later",
    )
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

/// Handles `POST /submit`; returns the response and the id of the job it created, if any.
async fn submit(state: &AppState, request: Request<Incoming>) -> (HttpResponse, Vec<Uuid>) {
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            // The unread rest of the body makes the server close the connection, so the
            // response carries `Connection: close` and a client does not reuse it.
            let mut response = error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body is over {MAX_BODY_BYTES} bytes; send {{\"image_key\": \"...\"}}"
                ),
            );
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return (response, Vec::new());
        }
        Err(error) => {
            let response = error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("failed to read the request body: {error}"),
            );
            return (response, Vec::new());
        }
    };
    let (response, job_id) = submit_job(state, &body).await;
    (response, job_id.into_iter().collect())
}

/// Handles the body of `POST /submit`. The all-in-one commands call it in-process.
pub async fn submit_body(state: &AppState, body: &[u8]) -> HttpResponse {
    submit_job(state, body).await.0
}

/// Parses a submit body and looks its key up in the input store; returns the request and the
/// input's ETag, or the error response.
async fn check_submission(
    state: &AppState,
    body: &[u8],
) -> Result<(SubmitRequest, Option<String>), HttpResponse> {
    let submit: SubmitRequest = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(error) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "request body is not valid JSON of the form {{\"image_key\": \"...\"}}: {error}"
                ),
            ));
        }
    };
    if let Err(error) = validate_key(&submit.image_key) {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            error.to_string(),
        ));
    }

    let etag = match state.input.head(&submit.image_key).await {
        Ok(info) => info.etag,
        Err(StorageError::NotFound) => {
            return Err(error_response(
                StatusCode::NOT_FOUND,
                "input_not_found",
                format!(
                    "no object {:?} in {}; upload the image first",
                    submit.image_key,
                    state.input.location()
                ),
            ));
        }
        Err(StorageError::InvalidKey(reason)) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_key",
                reason,
            ));
        }
        Err(error) => {
            tracing::warn!(%error, "input store lookup failed");
            return Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the input store could not be reached; retry later",
            ));
        }
    };
    Ok((submit, etag))
}

/// Records and publishes a submitted job; returns the response and the job id, when the
/// request got as far as creating one.
async fn submit_job(state: &AppState, body: &[u8]) -> (HttpResponse, Option<Uuid>) {
    let (submit, etag) = match check_submission(state, body).await {
        Ok(checked) => checked,
        Err(response) => return (response, None),
    };

    let job_id = Uuid::now_v7();
    // Both databases keep microseconds, so the API returns what the row will hold.
    let created_at = now_micros();
    if let Err(error) = state
        .store
        .insert_queued(job_id, &submit.image_key, etag.as_deref(), created_at)
        .await
    {
        tracing::warn!(%job_id, %error, "failed to record a submitted job");
        let response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the job database could not be reached; retry later",
        );
        return (response, None);
    }

    let message = JobMessage::new(job_id, submit.image_key.clone(), created_at);
    if let Err(error) = state.publisher.publish(&message).await {
        tracing::warn!(%job_id, %error, "the queue did not acknowledge the job");
        let reason = format!("the queue did not accept the job: {error}");
        if let Err(db_error) = state.store.mark_unqueued(job_id, &reason).await {
            // NOTE: the row stays `queued`; a worker's result replaces it if the broker did
            // persist the record after all.
            tracing::warn!(%job_id, error = %db_error, "failed to mark an unpublished job failed");
        }
        let body = json!({"error": {"code": "queue_unavailable", "message": "the queue could not take the job; it will not run, submit it again later"}, "job_id": job_id});
        return (
            json_response(StatusCode::SERVICE_UNAVAILABLE, &body),
            Some(job_id),
        );
    }
    if let Err(error) = state.store.mark_published(job_id).await {
        // The row stays unacknowledged, so a later sweep publishes the job again; the worker
        // processes a duplicate idempotently.
        tracing::warn!(%job_id, %error, "failed to record that the queue took a job");
    }
    tracing::info!(%job_id, "job queued");
    if state.log_keys {
        tracing::debug!(%job_id, image_key = %submit.image_key, "job image key");
    }
    let response = json_response(
        StatusCode::ACCEPTED,
        &SubmitResponse {
            job_id,
            image_key: &submit.image_key,
            queued: true,
            topic: &state.topic,
        },
    );
    (response, Some(job_id))
}

/// Handles `GET /recent` with the request's query string.
pub async fn recent(state: &AppState, query: Option<&str>) -> HttpResponse {
    list_recent(state, query).await.0
}

/// Lists recent jobs; returns the response and the ids of the listed jobs.
async fn list_recent(state: &AppState, query: Option<&str>) -> (HttpResponse, Vec<Uuid>) {
    let mut limit = 10;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "n" {
            match value.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => {
                    let response = error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        format!("n={value:?} is invalid; use a whole number from 1 to 1000"),
                    );
                    return (response, Vec::new());
                }
            }
        }
    }
    match state.store.recent(limit).await {
        Ok(jobs) => {
            let ids = jobs.iter().map(|job| job.job_id).collect();
            (json_response(StatusCode::OK, &jobs), ids)
        }
        Err(error) => {
            tracing::warn!(%error, "failed to list recent jobs");
            let response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the job database could not be reached; retry later",
            );
            (response, Vec::new())
        }
    }
}

/// Looks up one job; returns the response and the requested id when it is a valid one.
async fn job(state: &AppState, id: &str) -> (HttpResponse, Vec<Uuid>) {
    let Ok(job_id) = id.parse::<Uuid>() else {
        let response = error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{id:?} is not a job id; job ids are UUIDs"),
        );
        return (response, Vec::new());
    };
    (read_job(state, job_id).await, vec![job_id])
}

async fn read_job(state: &AppState, job_id: Uuid) -> HttpResponse {
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
    let queue_ok = state.publisher.ready(READY_TIMEOUT).await;
    let storage = tokio::time::timeout(READY_TIMEOUT, state.input.check()).await;
    let storage_ok = matches!(storage, Ok(Ok(())));
    let status = if database_ok && queue_ok && storage_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({"database": database_ok, "queue": queue_ok, "storage": storage_ok}),
    )
}

/// The OpenAPI 3.1 document of every route, body, status and error shape above.
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

fn openapi_response() -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI_DOCUMENT.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn metrics_response(state: &AppState) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Builds a 405 response with the `Allow` header that RFC 9110 (section 15.5.6) requires.
fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> HttpResponse {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}; use {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
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
