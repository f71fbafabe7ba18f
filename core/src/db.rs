//! The `jobs` table in PostgreSQL: submission rows, batched result upserts and the queries
//! behind `GET /jobs/{id}` and `GET /recent`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, FromRow};
use uuid::Uuid;

use crate::error::ErrorCode;
use crate::record::{BoundingBox, BoxCoordinates, ErrorBody, JobResult, JobStatus, JobView};

/// Migrations of the PostgreSQL schema, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

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
    /// Server-side limit on one statement.
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
pub struct JobStore {
    pool: PgPool,
}

#[derive(FromRow)]
struct JobRow {
    job_id: Uuid,
    image_key: String,
    status: String,
    overlay_key: Option<String>,
    preview_key: Option<String>,
    boxes: sqlx::types::Json<Vec<BoundingBox>>,
    width: Option<i32>,
    height: Option<i32>,
    detector: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    attempts: i32,
    created_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
}

const SELECT_COLUMNS: &str = "job_id, image_key, status, overlay_key, preview_key, boxes, width, \
     height, detector, error_code, error_message, attempts, created_at, processed_at";

impl JobStore {
    /// Opens a lazily connecting pool, so a binary starts even while the database is down.
    pub fn connect_lazy(url: &str, settings: &PoolSettings) -> Result<JobStore, DbError> {
        let statement_timeout = settings.statement_timeout.as_millis().to_string();
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()?
            .options([("statement_timeout", statement_timeout.as_str())])
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options);
        Ok(JobStore { pool })
    }

    /// Applies the embedded migrations that the database does not have yet.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Checks that a connection can be had and answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Records a submitted job as `queued`. A row that exists already is left as it is.
    pub async fn insert_queued(
        &self,
        job_id: Uuid,
        image_key: &str,
        input_etag: Option<&str>,
        created_at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO jobs (job_id, image_key, input_etag, status, created_at) \
             VALUES ($1, $2, $3, 'queued', $4) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job_id)
        .bind(image_key)
        .bind(input_etag)
        .bind(created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a job that the queue did not take as `failed`, unless a worker recorded it already.
    pub async fn mark_unqueued(&self, job_id: Uuid, message: &str) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE jobs SET status = 'failed', error_code = $2, error_message = $3, \
             processed_at = now() WHERE job_id = $1 AND status = 'queued'",
        )
        .bind(job_id)
        .bind(ErrorCode::QueueUnavailable.as_str())
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes a batch of results in one statement. A job recorded `done` stays `done`, with its
    /// first boxes and overlay; `attempts` only grows.
    pub async fn upsert_results(&self, results: &[JobResult]) -> Result<(), DbError> {
        if results.is_empty() {
            return Ok(());
        }
        let columns = ResultColumns::from_results(results);
        sqlx::query(UPSERT_RESULTS)
            .bind(&columns.job_id)
            .bind(&columns.image_key)
            .bind(&columns.status)
            .bind(&columns.overlay_key)
            .bind(&columns.preview_key)
            .bind(&columns.boxes)
            .bind(&columns.width)
            .bind(&columns.height)
            .bind(&columns.detector)
            .bind(&columns.detector_version)
            .bind(&columns.error_code)
            .bind(&columns.error_message)
            .bind(&columns.attempts)
            .bind(&columns.created_at)
            .bind(&columns.processed_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get(&self, job_id: Uuid) -> Result<Option<JobView>, DbError> {
        let query = format!("SELECT {SELECT_COLUMNS} FROM jobs WHERE job_id = $1");
        let row: Option<JobRow> = sqlx::query_as(&query)
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(JobRow::into_view))
    }

    /// Returns the `limit` newest jobs of every status, newest first.
    pub async fn recent(&self, limit: u32) -> Result<Vec<JobView>, DbError> {
        let query = format!(
            "SELECT {SELECT_COLUMNS} FROM jobs ORDER BY created_at DESC, job_id DESC LIMIT $1"
        );
        let rows: Vec<JobRow> = sqlx::query_as(&query)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(JobRow::into_view).collect())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// One upsert for a whole batch: the columns arrive as arrays and UNNEST turns them into rows.
/// A `done` row keeps its result; any other row takes the new one.
const UPSERT_RESULTS: &str = "
INSERT INTO jobs AS j (job_id, image_key, status, overlay_key, preview_key, boxes, width, height,
                       detector, detector_version, error_code, error_message, attempts,
                       created_at, processed_at)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                     $7::int4[], $8::int4[], $9::text[], $10::text[], $11::text[], $12::text[],
                     $13::int4[], $14::timestamptz[], $15::timestamptz[])
ON CONFLICT (job_id) DO UPDATE SET
    status           = CASE WHEN j.status = 'done' THEN j.status           ELSE EXCLUDED.status END,
    overlay_key      = CASE WHEN j.status = 'done' THEN j.overlay_key      ELSE EXCLUDED.overlay_key END,
    preview_key      = CASE WHEN j.status = 'done' THEN j.preview_key      ELSE EXCLUDED.preview_key END,
    boxes            = CASE WHEN j.status = 'done' THEN j.boxes            ELSE EXCLUDED.boxes END,
    width            = CASE WHEN j.status = 'done' THEN j.width            ELSE EXCLUDED.width END,
    height           = CASE WHEN j.status = 'done' THEN j.height           ELSE EXCLUDED.height END,
    detector         = CASE WHEN j.status = 'done' THEN j.detector         ELSE EXCLUDED.detector END,
    detector_version = CASE WHEN j.status = 'done' THEN j.detector_version ELSE EXCLUDED.detector_version END,
    error_code       = CASE WHEN j.status = 'done' THEN j.error_code       ELSE EXCLUDED.error_code END,
    error_message    = CASE WHEN j.status = 'done' THEN j.error_message    ELSE EXCLUDED.error_message END,
    processed_at     = CASE WHEN j.status = 'done' THEN j.processed_at     ELSE EXCLUDED.processed_at END,
    attempts         = j.attempts + EXCLUDED.attempts
";

/// A batch of results pivoted into one array per column.
#[derive(Default)]
struct ResultColumns {
    job_id: Vec<Uuid>,
    image_key: Vec<String>,
    status: Vec<&'static str>,
    overlay_key: Vec<Option<String>>,
    preview_key: Vec<Option<String>>,
    boxes: Vec<sqlx::types::Json<Vec<BoundingBox>>>,
    width: Vec<Option<i32>>,
    height: Vec<Option<i32>>,
    detector: Vec<Option<String>>,
    detector_version: Vec<Option<String>>,
    error_code: Vec<Option<&'static str>>,
    error_message: Vec<Option<String>>,
    attempts: Vec<i32>,
    created_at: Vec<DateTime<Utc>>,
    processed_at: Vec<DateTime<Utc>>,
}

impl ResultColumns {
    /// Pivots `results` into columns with one row per job: PostgreSQL rejects an upsert that
    /// touches a row twice, and a job delivered twice can land in one batch. Of such a pair the
    /// first `done` wins, as it would in the table, and the attempts add up.
    fn from_results(results: &[JobResult]) -> ResultColumns {
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
        let mut c = ResultColumns::default();
        for (r, attempts) in chosen {
            c.job_id.push(r.job_id);
            c.image_key.push(r.image_key.clone());
            c.attempts.push(i32::try_from(attempts).unwrap_or(i32::MAX));
            c.created_at.push(r.submitted_at);
            c.processed_at.push(r.processed_at);
            match &r.outcome {
                Ok(d) => {
                    c.status.push(JobStatus::Done.as_str());
                    c.overlay_key.push(Some(d.overlay_key.clone()));
                    c.preview_key.push(Some(d.preview_key.clone()));
                    c.boxes.push(sqlx::types::Json(d.boxes.clone()));
                    c.width.push(i32::try_from(d.width).ok());
                    c.height.push(i32::try_from(d.height).ok());
                    c.detector.push(Some(d.detector.clone()));
                    c.detector_version.push(Some(d.detector_version.clone()));
                    c.error_code.push(None);
                    c.error_message.push(None);
                }
                Err(e) => {
                    c.status.push(JobStatus::Failed.as_str());
                    c.overlay_key.push(None);
                    c.preview_key.push(None);
                    c.boxes.push(sqlx::types::Json(Vec::new()));
                    c.width.push(None);
                    c.height.push(None);
                    c.detector.push(None);
                    c.detector_version.push(None);
                    c.error_code.push(Some(e.code.as_str()));
                    c.error_message.push(Some(e.message.clone()));
                }
            }
        }
        c
    }
}

impl JobRow {
    fn into_view(self) -> JobView {
        let first_box = self.boxes.0.first().map(|b| BoxCoordinates {
            x1: b.x1,
            y1: b.y1,
            x2: b.x2,
            y2: b.y2,
        });
        let error = match (self.error_code, self.error_message) {
            (Some(code), message) => Some(ErrorBody {
                code: code.parse().unwrap_or(ErrorCode::Internal),
                message: message.unwrap_or_default(),
            }),
            (None, _) => None,
        };
        JobView {
            job_id: self.job_id,
            image_key: self.image_key,
            status: JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed),
            overlay_key: self.overlay_key,
            preview_key: self.preview_key,
            first_box,
            boxes: self.boxes.0,
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

    fn result(job_id: Uuid, attempts: u32, done: bool) -> JobResult {
        let outcome = if done {
            Ok(Detection {
                overlay_key: format!("overlays/{job_id}.png"),
                preview_key: format!("overlays/{job_id}.preview.png"),
                boxes: Vec::new(),
                width: 4,
                height: 3,
                detector: "random".to_string(),
                detector_version: "1".to_string(),
            })
        } else {
            Err(JobError::new(ErrorCode::StorageUnavailable, "timed out"))
        };
        JobResult {
            job_id,
            image_key: "a.png".to_string(),
            submitted_at: Utc::now(),
            outcome,
            attempts,
            processed_at: Utc::now(),
        }
    }

    #[test]
    fn a_job_twice_in_a_batch_becomes_one_row() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let batch = [
            result(a, 1, false),
            result(b, 1, true),
            result(a, 2, true),
            result(a, 1, false),
        ];
        let columns = ResultColumns::from_results(&batch);
        assert_eq!(columns.job_id, vec![a, b]);
        assert_eq!(columns.status, vec!["done", "done"]);
        assert_eq!(columns.attempts, vec![4, 1]);
        assert_eq!(columns.error_code, vec![None, None]);
    }
}
