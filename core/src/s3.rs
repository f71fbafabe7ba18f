//! S3 client construction and the object operations both binaries use.
//!
//! The endpoint, region and credentials come from the standard AWS environment
//! (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_REGION`, the credentials chain).

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::head_object::HeadObjectError;

/// Settings of the S3 client that are not part of the AWS environment.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Path-style addressing (`http://host/bucket/key`), which most local S3 servers need.
    pub force_path_style: bool,
    pub connect_timeout: Duration,
    /// Limit on one attempt of a request, including reading the body of small responses.
    pub operation_attempt_timeout: Duration,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            force_path_style: false,
            connect_timeout: Duration::from_secs(3),
            operation_attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// Builds a client from the AWS environment and `settings`.
pub async fn client(settings: &S3Settings) -> Client {
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout)
        .operation_attempt_timeout(settings.operation_attempt_timeout)
        .build();
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(settings.force_path_style)
        .timeout_config(timeouts)
        .build();
    Client::from_conf(config)
}

/// Metadata of an object found by [`head`].
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub size: u64,
    pub etag: Option<String>,
}

/// Failure of a HEAD request.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("no object at the key")]
    NotFound,
    #[error("object store request failed: {0}")]
    Unavailable(String),
}

/// Looks an object up without reading it.
pub async fn head(client: &Client, bucket: &str, key: &str) -> Result<ObjectInfo, HeadError> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(ObjectInfo {
            size: out
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            etag: out.e_tag().map(str::to_owned),
        }),
        Err(SdkError::ServiceError(e)) if matches!(e.err(), HeadObjectError::NotFound(_)) => {
            Err(HeadError::NotFound)
        }
        Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
            Err(HeadError::NotFound)
        }
        Err(e) => Err(HeadError::Unavailable(DisplayErrorContext(e).to_string())),
    }
}
