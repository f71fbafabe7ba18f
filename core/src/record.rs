//! The result of a job as stored in the database and returned by the API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ErrorCode, JobError};
use crate::job::timestamp;

pub use rfo_image::detect::BoundingBox;

/// Status of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Done,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        match s {
            "queued" => Some(JobStatus::Queued),
            "done" => Some(JobStatus::Done),
            "failed" => Some(JobStatus::Failed),
            _ => None,
        }
    }
}

/// Box as the API returns it, without label and score, for clients of the first API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoxCoordinates {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

/// Error as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// One job as `GET /jobs/{id}` and `GET /recent` return it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    pub job_id: Uuid,
    pub image_key: String,
    pub status: JobStatus,
    pub overlay_key: Option<String>,
    pub preview_key: Option<String>,
    #[serde(rename = "box")]
    pub first_box: Option<BoxCoordinates>,
    pub boxes: Vec<BoundingBox>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub detector: Option<String>,
    pub attempts: u32,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "timestamp::option")]
    pub processed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// What the worker records for one processed job.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub job_id: Uuid,
    pub image_key: String,
    pub submitted_at: DateTime<Utc>,
    pub outcome: Result<Detection, JobError>,
    /// Processing attempts made in this delivery; added to the stored count.
    pub attempts: u32,
    pub processed_at: DateTime<Utc>,
}

/// The successful part of a result.
#[derive(Debug, Clone)]
pub struct Detection {
    pub overlay_key: String,
    pub preview_key: String,
    pub boxes: Vec<BoundingBox>,
    pub width: u32,
    pub height: u32,
    pub detector: String,
    pub detector_version: String,
}
