//! Failure codes shared by the API, the worker, the database rows and the metrics.
//!
//! The strings are part of the public contract: clients, dashboards and tests match on them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether retrying the same job can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client's request itself is invalid; nothing was queued.
    Request,
    /// Retrying gives the same outcome, so the job is marked `failed` at once.
    Permanent,
    /// A backend failed or timed out; the job is retried with backoff.
    Transient,
}

/// Failure code of a request or a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidKey,
    InputNotFound,
    InputTooLarge,
    UnsupportedFormat,
    CorruptImage,
    TruncatedImage,
    ImageTooLarge,
    QueueUnavailable,
    StorageUnavailable,
    DatabaseUnavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::InvalidKey,
        ErrorCode::InputNotFound,
        ErrorCode::InputTooLarge,
        ErrorCode::UnsupportedFormat,
        ErrorCode::CorruptImage,
        ErrorCode::TruncatedImage,
        ErrorCode::ImageTooLarge,
        ErrorCode::QueueUnavailable,
        ErrorCode::StorageUnavailable,
        ErrorCode::DatabaseUnavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::InputNotFound => "input_not_found",
            ErrorCode::InputTooLarge => "input_too_large",
            ErrorCode::UnsupportedFormat => "unsupported_format",
            ErrorCode::CorruptImage => "corrupt_image",
            ErrorCode::TruncatedImage => "truncated_image",
            ErrorCode::ImageTooLarge => "image_too_large",
            ErrorCode::QueueUnavailable => "queue_unavailable",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::DatabaseUnavailable => "database_unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn kind(self) -> ErrorKind {
        match self {
            ErrorCode::InvalidKey => ErrorKind::Request,
            ErrorCode::QueueUnavailable
            | ErrorCode::StorageUnavailable
            | ErrorCode::DatabaseUnavailable => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when a string is not one of the known codes.
#[derive(Debug, thiserror::Error)]
#[error("unknown error code {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

/// A failure with its code and a message written for the person who submitted the job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        JobError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn backend_codes_are_transient() {
        assert_eq!(ErrorCode::StorageUnavailable.kind(), ErrorKind::Transient);
        assert_eq!(ErrorCode::CorruptImage.kind(), ErrorKind::Permanent);
        assert!("bogus".parse::<ErrorCode>().is_err());
    }
}
