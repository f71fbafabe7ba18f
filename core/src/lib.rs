//! Code shared by `rfo-api` and `rfo-worker`: the job message, the result record, settings,
//! error codes and the clients of Kafka, S3 and PostgreSQL.

pub mod config;
pub mod db;
pub mod error;
pub mod job;
pub mod kafka;
pub mod logging;
pub mod msk_iam;
pub mod queue;
pub mod record;
pub mod s3;
pub mod storage;

pub use error::{ErrorCode, ErrorKind, JobError};
pub use job::JobMessage;
pub use record::{BoundingBox, JobStatus, JobView};
