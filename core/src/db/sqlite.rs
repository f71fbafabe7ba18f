//! The SQLite backend of the job table, for single-machine runs. Several processes may share
//! one file: it runs in WAL mode, and a writer waits for the lock up to the statement timeout.
//! A result batch is written by one upsert that reads its rows from a JSON array.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::FromRow;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use uuid::Uuid;

use super::{
    AuditEntry, DbError, PoolSettings, ResultRow, SELECT_COLUMNS, StoredJob, UnpublishedJob,
};
use crate::error::ErrorCode;
use crate::job::format_timestamp;
use crate::record::JobView;

/// Migrations of the SQLite schema, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Job table in a SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

#[derive(FromRow)]
struct JobRow {
    job_id: String,
    image_key: String,
    status: String,
    overlay_key: Option<String>,
    preview_key: Option<String>,
    boxes: String,
    width: Option<i64>,
    height: Option<i64>,
    detector: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    attempts: i64,
    created_at: String,
    processed_at: Option<String>,
}

/// Opens a pool on a SQLite file shared with other processes, creating the file and its
/// folder when missing.
pub(crate) fn open_pool(path: &Path, settings: &PoolSettings) -> Result<SqlitePool, DbError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| DbError(sqlx::Error::Io(e)))?;
    }
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(settings.statement_timeout);
    Ok(SqlitePoolOptions::new()
        .max_connections(settings.max_connections.min(4))
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options))
}

impl SqliteStore {
    pub fn open(path: &Path, settings: &PoolSettings) -> Result<SqliteStore, DbError> {
        Ok(SqliteStore {
            pool: open_pool(path, settings)?,
        })
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn insert_queued(
        &self,
        job_id: Uuid,
        image_key: &str,
        input_etag: Option<&str>,
        created_at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO jobs (job_id, image_key, input_etag, status, created_at) \
             VALUES (?1, ?2, ?3, 'queued', ?4) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job_id.to_string())
        .bind(image_key)
        .bind(input_etag)
        .bind(format_timestamp(&created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), DbError> {
        let job_ids: Vec<String> = entry.job_ids.iter().map(Uuid::to_string).collect();
        sqlx::query(
            "INSERT INTO audit_log (recorded_at, actor, action, job_ids, status, remote_addr) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(format_timestamp(&entry.recorded_at))
        .bind(&entry.actor)
        .bind(entry.action.as_str())
        .bind(json!(job_ids).to_string())
        .bind(i64::from(entry.status))
        .bind(&entry.remote_addr)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mark_unqueued(&self, job_id: Uuid, message: &str) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE jobs SET status = 'failed', error_code = ?2, error_message = ?3, \
             processed_at = ?4 WHERE job_id = ?1 AND status = 'queued'",
        )
        .bind(job_id.to_string())
        .bind(ErrorCode::QueueUnavailable.as_str())
        .bind(message)
        .bind(format_timestamp(&crate::job::now_micros()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mark_published(&self, job_id: Uuid) -> Result<(), DbError> {
        sqlx::query("UPDATE jobs SET published_at = ?2 WHERE job_id = ?1 AND published_at IS NULL")
            .bind(job_id.to_string())
            .bind(format_timestamp(&crate::job::now_micros()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn unpublished(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<UnpublishedJob>, DbError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT job_id, image_key, created_at FROM jobs \
             WHERE status = 'queued' AND published_at IS NULL AND created_at < ?1 \
             ORDER BY created_at LIMIT ?2",
        )
        .bind(format_timestamp(&created_before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(job_id, image_key, created_at)| {
                Ok(UnpublishedJob {
                    job_id: job_id
                        .parse()
                        .map_err(|e| decode_error("job_id", &job_id, e))?,
                    created_at: parse_time("created_at", &created_at)?,
                    image_key,
                })
            })
            .collect()
    }

    pub(super) async fn upsert_results(&self, rows: &[ResultRow<'_>]) -> Result<(), DbError> {
        let batch: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                json!({
                    "job_id": row.result.job_id.to_string(),
                    "image_key": row.result.image_key,
                    "status": row.status,
                    "overlay_key": row.overlay_key,
                    "preview_key": row.preview_key,
                    "boxes": serde_json::to_string(row.boxes).unwrap_or_else(|_| "[]".into()),
                    "width": row.width,
                    "height": row.height,
                    "detector": row.detector,
                    "detector_version": row.detector_version,
                    "error_code": row.error_code,
                    "error_message": row.error_message,
                    "attempts": row.attempts,
                    "created_at": format_timestamp(&row.result.submitted_at),
                    "processed_at": format_timestamp(&row.result.processed_at),
                })
            })
            .collect();
        sqlx::query(UPSERT_RESULTS)
            .bind(serde_json::Value::Array(batch).to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get(&self, job_id: Uuid) -> Result<Option<JobView>, DbError> {
        let query = format!("SELECT {SELECT_COLUMNS} FROM jobs WHERE job_id = ?1");
        let row: Option<JobRow> = sqlx::query_as(&query)
            .bind(job_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| row.into_stored().map(StoredJob::into_view))
            .transpose()
    }

    pub async fn recent(&self, limit: u32) -> Result<Vec<JobView>, DbError> {
        let query = format!(
            "SELECT {SELECT_COLUMNS} FROM jobs ORDER BY created_at DESC, job_id DESC LIMIT ?1"
        );
        let rows: Vec<JobRow> = sqlx::query_as(&query)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| row.into_stored().map(StoredJob::into_view))
            .collect()
    }
}

/// One upsert for a whole batch: `json_each` turns the JSON array of rows into rows. The
/// `WHERE true` keeps SQLite from reading `ON CONFLICT` as part of the SELECT's join.
const UPSERT_RESULTS: &str = "
INSERT INTO jobs AS j (job_id, image_key, status, overlay_key, preview_key, boxes, width, height,
                       detector, detector_version, error_code, error_message, attempts,
                       created_at, processed_at)
SELECT value ->> 'job_id', value ->> 'image_key', value ->> 'status', value ->> 'overlay_key',
       value ->> 'preview_key', value ->> 'boxes', value ->> 'width', value ->> 'height',
       value ->> 'detector', value ->> 'detector_version', value ->> 'error_code',
       value ->> 'error_message', value ->> 'attempts', value ->> 'created_at',
       value ->> 'processed_at'
FROM json_each(?1) WHERE true
ON CONFLICT (job_id) DO UPDATE SET
    status           = CASE WHEN j.status = 'done' THEN j.status           ELSE excluded.status END,
    overlay_key      = CASE WHEN j.status = 'done' THEN j.overlay_key      ELSE excluded.overlay_key END,
    preview_key      = CASE WHEN j.status = 'done' THEN j.preview_key      ELSE excluded.preview_key END,
    boxes            = CASE WHEN j.status = 'done' THEN j.boxes            ELSE excluded.boxes END,
    width            = CASE WHEN j.status = 'done' THEN j.width            ELSE excluded.width END,
    height           = CASE WHEN j.status = 'done' THEN j.height           ELSE excluded.height END,
    detector         = CASE WHEN j.status = 'done' THEN j.detector         ELSE excluded.detector END,
    detector_version = CASE WHEN j.status = 'done' THEN j.detector_version ELSE excluded.detector_version END,
    error_code       = CASE WHEN j.status = 'done' THEN j.error_code       ELSE excluded.error_code END,
    error_message    = CASE WHEN j.status = 'done' THEN j.error_message    ELSE excluded.error_message END,
    processed_at     = CASE WHEN j.status = 'done' THEN j.processed_at     ELSE excluded.processed_at END,
    attempts         = j.attempts + excluded.attempts
";

fn decode_error(column: &str, value: &str, error: impl std::fmt::Display) -> DbError {
    DbError(sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("invalid stored value {value:?}: {error}").into(),
    })
}

fn parse_time(column: &str, value: &str) -> Result<DateTime<Utc>, DbError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| decode_error(column, value, e))
}

impl JobRow {
    fn into_stored(self) -> Result<StoredJob, DbError> {
        Ok(StoredJob {
            job_id: self
                .job_id
                .parse()
                .map_err(|e| decode_error("job_id", &self.job_id, e))?,
            boxes: serde_json::from_str(&self.boxes)
                .map_err(|e| decode_error("boxes", &self.boxes, e))?,
            created_at: parse_time("created_at", &self.created_at)?,
            processed_at: self
                .processed_at
                .as_deref()
                .map(|t| parse_time("processed_at", t))
                .transpose()?,
            image_key: self.image_key,
            status: self.status,
            overlay_key: self.overlay_key,
            preview_key: self.preview_key,
            width: self.width,
            height: self.height,
            detector: self.detector,
            error_code: self.error_code,
            error_message: self.error_message,
            attempts: self.attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::result;

    async fn store() -> SqliteStore {
        let path = std::env::temp_dir().join(format!("rfo-db-{}/rfo.db", Uuid::now_v7()));
        let store = SqliteStore::open(&path, &PoolSettings::default()).unwrap();
        store.migrate().await.unwrap();
        store
    }

    #[tokio::test]
    async fn done_result_is_final() {
        let store = store().await;
        let job = store_queued(&store).await;
        let done = result(job, 1, true);
        let failed = result(job, 2, false);
        let rows = crate::db::one_row_per_job(std::slice::from_ref(&done));
        store.upsert_results(&rows).await.unwrap();
        let rows = crate::db::one_row_per_job(std::slice::from_ref(&failed));
        store.upsert_results(&rows).await.unwrap();
        let view = store.get(job).await.unwrap().unwrap();
        assert_eq!(view.status.as_str(), "done");
        assert_eq!(view.attempts, 3);
        assert_eq!(view.boxes, done.outcome.as_ref().unwrap().boxes);
        assert_eq!(view.width, Some(4));
        assert!(view.error.is_none());
    }

    #[tokio::test]
    async fn recent_lists_newest_first() {
        let store = store().await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(store_queued(&store).await);
        }
        let listed: Vec<Uuid> = store
            .recent(2)
            .await
            .unwrap()
            .iter()
            .map(|v| v.job_id)
            .collect();
        assert_eq!(listed, vec![ids[2], ids[1]]);
    }

    #[tokio::test]
    async fn unpublished_lists_old_queued_rows() {
        let store = store().await;
        let old = Uuid::now_v7();
        let created = crate::job::now_micros() - chrono::Duration::minutes(10);
        store
            .insert_queued(old, "old.png", None, created)
            .await
            .unwrap();
        let published = Uuid::now_v7();
        store
            .insert_queued(published, "sent.png", None, created)
            .await
            .unwrap();
        store.mark_published(published).await.unwrap();
        let recent = store_queued(&store).await;

        let cutoff = crate::job::now_micros() - chrono::Duration::minutes(1);
        let listed = store.unpublished(cutoff, 10).await.unwrap();
        let ids: Vec<Uuid> = listed.iter().map(|j| j.job_id).collect();
        assert_eq!(
            ids,
            vec![old],
            "only the old unpublished row; {recent} is too new"
        );
        assert_eq!(listed[0].image_key, "old.png");
        assert_eq!(listed[0].created_at, created);

        store.mark_unqueued(old, "gave up").await.unwrap();
        assert!(store.unpublished(cutoff, 10).await.unwrap().is_empty());
    }

    async fn store_queued(store: &SqliteStore) -> Uuid {
        let id = Uuid::now_v7();
        store
            .insert_queued(id, "a b.png", None, crate::job::now_micros())
            .await
            .unwrap();
        id
    }
}
