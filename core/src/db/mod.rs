//! The `jobs` table, in PostgreSQL or SQLite, chosen by URL: submission rows, batched result
//! upserts and the queries behind `GET /jobs/{id}` and `GET /recent`.
//!
//! Both backends keep the same precedence: a `done` row keeps its first result, any other
//! row takes the newest one, and `attempts` only grows.

mod audit;
mod postgres;
pub(crate) mod sqlite;

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::DatabaseUrl;
use crate::error::ErrorCode;
use crate::record::{BoundingBox, BoxCoordinates, ErrorBody, JobResult, JobStatus, JobView};

pub use audit::{ANONYMOUS, AuditAction, AuditEntry};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Error of a database call. Every variant is transient: the caller retries or answers 503.
#[derive(Debug, thiserror::Error)]
#[error("database request failed: {0}")]
pub struct DbError(#[from] pub sqlx::Error);

/// Settings of the connection pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a caller waits for a connection before the request fails.
    pub acquire_timeout: Duration,
    /// Limit on one statement: PostgreSQL's `statement_timeout`, and SQLite's busy timeout.
    pub statement_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
        }
    }
}

/// Handle on the job table.
#[derive(Clone)]
pub enum JobStore {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl JobStore {
    /// Opens a lazily connecting pool, so a binary starts even while the database is down.
    /// A SQLite file and its folder are created when missing.
    pub fn open(url: &DatabaseUrl, settings: &PoolSettings) -> Result<JobStore, DbError> {
        match url {
            DatabaseUrl::Postgres(url) => {
                Ok(JobStore::Postgres(PgStore::connect_lazy(url, settings)?))
            }
            DatabaseUrl::Sqlite(path) => Ok(JobStore::Sqlite(SqliteStore::open(path, settings)?)),
        }
    }

    /// Applies the embedded migrations that the database does not have yet.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            JobStore::Postgres(store) => store.migrate().await,
            JobStore::Sqlite(store) => store.migrate().await,
        }
    }

    /// Checks that a connection can be had and answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        match self {
            JobStore::Postgres(store) => store.ping().await,
            JobStore::Sqlite(store) => store.ping().await,
        }
    }

    /// Records a submitted job as `queued`. A row that exists already is left as it is.
    pub async fn insert_queued(
        &self,
        job_id: Uuid,
        image_key: &str,
        input_etag: Option<&str>,
        created_at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        match self {
            JobStore::Postgres(store) => {
                store
                    .insert_queued(job_id, image_key, input_etag, created_at)
                    .await
            }
            JobStore::Sqlite(store) => {
                store
                    .insert_queued(job_id, image_key, input_etag, created_at)
                    .await
            }
        }
    }

    /// Marks a job that the queue did not take as `failed`, unless a worker recorded it already.
    pub async fn mark_unqueued(&self, job_id: Uuid, message: &str) -> Result<(), DbError> {
        match self {
            JobStore::Postgres(store) => store.mark_unqueued(job_id, message).await,
            JobStore::Sqlite(store) => store.mark_unqueued(job_id, message).await,
        }
    }

    /// Records that the queue acknowledged the job's message.
    pub async fn mark_published(&self, job_id: Uuid) -> Result<(), DbError> {
        match self {
            JobStore::Postgres(store) => store.mark_published(job_id).await,
            JobStore::Sqlite(store) => store.mark_published(job_id).await,
        }
    }

    /// Returns up to `limit` queued jobs created before `created_before` whose message the
    /// queue never acknowledged, oldest first.
    pub async fn unpublished(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UnpublishedJob>, DbError> {
        match self {
            JobStore::Postgres(store) => store.unpublished(created_before, limit).await,
            JobStore::Sqlite(store) => store.unpublished(created_before, limit).await,
        }
    }

    /// Writes a batch of results in one statement.
    pub async fn upsert_results(&self, results: &[JobResult]) -> Result<(), DbError> {
        if results.is_empty() {
            return Ok(());
        }
        let rows = one_row_per_job(results);
        match self {
            JobStore::Postgres(store) => store.upsert_results(&rows).await,
            JobStore::Sqlite(store) => store.upsert_results(&rows).await,
        }
    }

    pub async fn get(&self, job_id: Uuid) -> Result<Option<JobView>, DbError> {
        match self {
            JobStore::Postgres(store) => store.get(job_id).await,
            JobStore::Sqlite(store) => store.get(job_id).await,
        }
    }

    /// Returns the `limit` newest jobs of every status, newest first.
    pub async fn recent(&self, limit: u32) -> Result<Vec<JobView>, DbError> {
        match self {
            JobStore::Postgres(store) => store.recent(limit).await,
            JobStore::Sqlite(store) => store.recent(limit).await,
        }
    }

    /// Appends one row to the append-only `audit_log` table.
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), DbError> {
        match self {
            JobStore::Postgres(store) => store.append_audit(entry).await,
            JobStore::Sqlite(store) => store.append_audit(entry).await,
        }
    }
}

/// A queued job whose message the queue has not acknowledged, as [`JobStore::unpublished`]
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpublishedJob {
    pub job_id: Uuid,
    pub image_key: String,
    pub created_at: DateTime<Utc>,
}

/// One row of a result batch, flattened into the table's columns.
struct ResultRow<'a> {
    result: &'a JobResult,
    /// Attempts of every copy of the job in the batch.
    attempts: i32,
    status: &'static str,
    overlay_key: Option<&'a str>,
    preview_key: Option<&'a str>,
    boxes: &'a [BoundingBox],
    width: Option<i32>,
    height: Option<i32>,
    detector: Option<&'a str>,
    detector_version: Option<&'a str>,
    error_code: Option<&'static str>,
    error_message: Option<&'a str>,
}

/// Reduces a batch to one row per job: PostgreSQL rejects an upsert that touches a row twice,
/// and a job delivered twice can land in one batch. Of such copies the first `done` wins, as
/// it would in the table, and the attempts add up.
fn one_row_per_job(results: &[JobResult]) -> Vec<ResultRow<'_>> {
    let mut chosen: Vec<(&JobResult, u32)> = Vec::with_capacity(results.len());
    for r in results {
        match chosen.iter_mut().find(|(c, _)| c.job_id == r.job_id) {
            Some((current, attempts)) => {
                *attempts = attempts.saturating_add(r.attempts);
                if current.outcome.is_err() {
                    *current = r;
                }
            }
            None => chosen.push((r, r.attempts)),
        }
    }
    chosen
        .into_iter()
        .map(|(result, attempts)| {
            let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
            match &result.outcome {
                Ok(d) => ResultRow {
                    result,
                    attempts,
                    status: JobStatus::Done.as_str(),
                    overlay_key: Some(&d.overlay_key),
                    preview_key: Some(&d.preview_key),
                    boxes: &d.boxes,
                    width: i32::try_from(d.width).ok(),
                    height: i32::try_from(d.height).ok(),
                    detector: Some(&d.detector),
                    detector_version: Some(&d.detector_version),
                    error_code: None,
                    error_message: None,
                },
                Err(e) => ResultRow {
                    result,
                    attempts,
                    status: JobStatus::Failed.as_str(),
                    overlay_key: None,
                    preview_key: None,
                    boxes: &[],
                    width: None,
                    height: None,
                    detector: None,
                    detector_version: None,
                    error_code: Some(e.code.as_str()),
                    error_message: Some(&e.message),
                },
            }
        })
        .collect()
}

/// A stored row in the types both backends can produce.
struct StoredJob {
    job_id: Uuid,
    image_key: String,
    status: String,
    overlay_key: Option<String>,
    preview_key: Option<String>,
    boxes: Vec<BoundingBox>,
    width: Option<i64>,
    height: Option<i64>,
    detector: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    attempts: i64,
    created_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
}

const SELECT_COLUMNS: &str = "job_id, image_key, status, overlay_key, preview_key, boxes, width, \
     height, detector, error_code, error_message, attempts, created_at, processed_at";

impl StoredJob {
    fn into_view(self) -> JobView {
        let first_box = self.boxes.first().map(|b| BoxCoordinates {
            x1: b.x1,
            y1: b.y1,
            x2: b.x2,
            y2: b.y2,
        });
        let error = self.error_code.map(|code| ErrorBody {
            code: code.parse().unwrap_or(ErrorCode::Internal),
            message: self.error_message.unwrap_or_default(),
        });
        JobView {
            job_id: self.job_id,
            image_key: self.image_key,
            status: JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed),
            overlay_key: self.overlay_key,
            preview_key: self.preview_key,
            first_box,
            boxes: self.boxes,
            width: self.width.and_then(|w| u32::try_from(w).ok()),
            height: self.height.and_then(|h| u32::try_from(h).ok()),
            detector: self.detector,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            created_at: self.created_at,
            processed_at: self.processed_at,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::JobError;
    use crate::record::Detection;

    pub(super) fn result(job_id: Uuid, attempts: u32, done: bool) -> JobResult {
        let outcome = if done {
            Ok(Detection {
                overlay_key: format!("overlays/{job_id}.png"),
                preview_key: format!("overlays/{job_id}.preview.png"),
                boxes: vec![BoundingBox {
                    x1: 1,
                    y1: 2,
                    x2: 3,
                    y2: 4,
                    label: "region".to_string(),
                    score: 0.5,
                }],
                width: 4,
                height: 5,
                detector: "random".to_string(),
                detector_version: "1".to_string(),
            })
        } else {
            Err(JobError::new(ErrorCode::StorageUnavailable, "timed out"))
        };
        JobResult {
            job_id,
            image_key: "a.png".to_string(),
            submitted_at: crate::job::now_micros(),
            outcome,
            attempts,
            processed_at: crate::job::now_micros(),
        }
    }

    #[test]
    fn job_twice_in_batch_becomes_one_row() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let batch = [
            result(a, 1, false),
            result(b, 1, true),
            result(a, 2, true),
            result(a, 1, false),
        ];
        let rows = one_row_per_job(&batch);
        let ids: Vec<Uuid> = rows.iter().map(|r| r.result.job_id).collect();
        assert_eq!(ids, vec![a, b]);
        let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec!["done", "done"]);
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
        assert_eq!(attempts, vec![4, 1]);
        assert!(rows.iter().all(|r| r.error_code.is_none()));
    }
}
