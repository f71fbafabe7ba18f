//! The append-only `audit_log` table: who submitted or read which jobs, when, and from where.
//!
//! The migrations of both engines reject UPDATE and DELETE of its rows with triggers.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Actor recorded when the API runs with authentication off.
pub const ANONYMOUS: &str = "anonymous";

/// Request kind recorded in the `action` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// `POST /submit`.
    Submit,
    /// `GET /jobs/{job_id}`.
    ReadJob,
    /// `GET /recent`.
    ListRecent,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Submit => "submit",
            AuditAction::ReadJob => "read_job",
            AuditAction::ListRecent => "list_recent",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `audit_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub recorded_at: DateTime<Utc>,
    /// Token name, or [`ANONYMOUS`].
    pub actor: String,
    pub action: AuditAction,
    /// Jobs the request created or returned.
    pub job_ids: Vec<Uuid>,
    /// HTTP status of the response.
    pub status: u16,
    /// Client address and port.
    pub remote_addr: String,
}
