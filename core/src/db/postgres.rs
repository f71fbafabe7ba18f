//! The PostgreSQL backend of the job table. A result batch is written by one UNNEST upsert.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, FromRow};
use uuid::Uuid;

use super::{
    AuditEntry, DbError, PoolSettings, ResultRow, SELECT_COLUMNS, StoredJob, UnpublishedJob,
};
use crate::error::ErrorCode;
use crate::record::{BoundingBox, JobView};

/// Migrations of the PostgreSQL schema, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Job table in PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
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

impl PgStore {
    /// Opens a lazily connecting pool, so a binary starts even while the database is down.
    pub fn connect_lazy(url: &str, settings: &PoolSettings) -> Result<PgStore, DbError> {
        let statement_timeout = settings.statement_timeout.as_millis().to_string();
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()?
            .options([("statement_timeout", statement_timeout.as_str())])
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options);
        Ok(PgStore { pool })
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

    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO audit_log (recorded_at, actor, action, job_ids, status, remote_addr) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(entry.recorded_at)
        .bind(&entry.actor)
        .bind(entry.action.as_str())
        .bind(&entry.job_ids)
        .bind(i32::from(entry.status))
        .bind(&entry.remote_addr)
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

    /// Records that the queue acknowledged the job's message.
    pub async fn mark_published(&self, job_id: Uuid) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE jobs SET published_at = now() WHERE job_id = $1 AND published_at IS NULL",
        )
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Lists queued jobs created before `created_before` whose message was never acknowledged.
    pub async fn unpublished(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UnpublishedJob>, DbError> {
        let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT job_id, image_key, created_at FROM jobs \
             WHERE status = 'queued' AND published_at IS NULL AND created_at < $1 \
             ORDER BY created_at LIMIT $2",
        )
        .bind(created_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(job_id, image_key, created_at)| UnpublishedJob {
                job_id,
                image_key,
                created_at,
            })
            .collect())
    }

    /// Writes a batch of results in one statement. A job recorded `done` stays `done`, with its
    /// first boxes and overlay; `attempts` only grows.
    pub(super) async fn upsert_results(&self, rows: &[ResultRow<'_>]) -> Result<(), DbError> {
        let columns = ResultColumns::from_rows(rows);
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
        Ok(row.map(|row| row.into_stored().into_view()))
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
        Ok(rows
            .into_iter()
            .map(|row| row.into_stored().into_view())
            .collect())
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
    fn from_rows(rows: &[ResultRow<'_>]) -> ResultColumns {
        let mut c = ResultColumns::default();
        for row in rows {
            c.job_id.push(row.result.job_id);
            c.image_key.push(row.result.image_key.clone());
            c.status.push(row.status);
            c.overlay_key.push(row.overlay_key.map(str::to_owned));
            c.preview_key.push(row.preview_key.map(str::to_owned));
            c.boxes.push(sqlx::types::Json(row.boxes.to_vec()));
            c.width.push(row.width);
            c.height.push(row.height);
            c.detector.push(row.detector.map(str::to_owned));
            c.detector_version
                .push(row.detector_version.map(str::to_owned));
            c.error_code.push(row.error_code);
            c.error_message.push(row.error_message.map(str::to_owned));
            c.attempts.push(row.attempts);
            c.created_at.push(row.result.submitted_at);
            c.processed_at.push(row.result.processed_at);
        }
        c
    }
}

impl JobRow {
    fn into_stored(self) -> StoredJob {
        StoredJob {
            job_id: self.job_id,
            image_key: self.image_key,
            status: self.status,
            overlay_key: self.overlay_key,
            preview_key: self.preview_key,
            boxes: self.boxes.0,
            width: self.width.map(i64::from),
            height: self.height.map(i64::from),
            detector: self.detector,
            error_code: self.error_code,
            error_message: self.error_message,
            attempts: i64::from(self.attempts),
            created_at: self.created_at,
            processed_at: self.processed_at,
        }
    }
}
