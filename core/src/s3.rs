//! The S3 backend of [`crate::storage::ObjectStore`].
//!
//! The endpoint, region and credentials come from the standard AWS environment
//! (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_REGION`, the credentials chain).
//! Objects of at least `multipart_threshold` bytes are written as multipart uploads, and a
//! failed multipart upload is aborted so that no parts are left behind.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use bytes::Bytes;

use crate::config::ConfigError;
use crate::storage::{ObjectInfo, StorageError};

/// S3 requires every part of a multipart upload but the last to be at least 5 MiB.
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Server-side encryption requested for written objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// The bucket's default applies.
    BucketDefault,
    /// SSE-S3 (`AES256`).
    S3Managed,
    /// SSE-KMS with the given key id, or the account's default key when `None`.
    Kms(Option<String>),
}

impl Encryption {
    /// Builds the setting from `RFO_S3_SSE` (`none`, `AES256` or `aws:kms`, in any case) and
    /// `RFO_S3_SSE_KMS_KEY_ID` (a KMS key id, ARN or alias, or empty for the account's
    /// default key), which only `aws:kms` may use.
    pub fn from_settings(sse: &str, kms_key_id: &str) -> Result<Encryption, ConfigError> {
        let kms_key_id = kms_key_id.trim();
        let encryption = match sse.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Encryption::BucketDefault,
            "aes256" => Encryption::S3Managed,
            "aws:kms" => {
                let key = (!kms_key_id.is_empty()).then(|| kms_key_id.to_owned());
                return Ok(Encryption::Kms(key));
            }
            _ => {
                return Err(ConfigError::new(
                    "RFO_S3_SSE",
                    sse,
                    "expected none (the bucket's default encryption), AES256 (SSE-S3) or \
                     aws:kms (SSE-KMS)",
                ));
            }
        };
        if !kms_key_id.is_empty() {
            return Err(ConfigError::new(
                "RFO_S3_SSE_KMS_KEY_ID",
                kms_key_id,
                "a KMS key applies only with RFO_S3_SSE=aws:kms; set that or clear the key id",
            ));
        }
        Ok(encryption)
    }
}

/// Settings of the S3 client that are not part of the AWS environment.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Path-style addressing (`http://host/bucket/key`), which most local S3 servers need.
    pub force_path_style: bool,
    pub connect_timeout: Duration,
    /// Limit on one attempt of a request, including reading the body of small responses.
    pub operation_attempt_timeout: Duration,
    /// Objects of at least this many bytes are written as multipart uploads.
    pub multipart_threshold: usize,
    /// Size of each part but the last.
    pub part_size: usize,
    pub encryption: Encryption,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            force_path_style: false,
            connect_timeout: Duration::from_secs(3),
            operation_attempt_timeout: Duration::from_secs(30),
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            encryption: Encryption::BucketDefault,
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

/// A bucket, or a prefix in a bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    multipart_threshold: usize,
    part_size: usize,
    encryption: Encryption,
}

fn unavailable<E, R>(error: SdkError<E, R>) -> StorageError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StorageError::Unavailable(DisplayErrorContext(error).to_string())
}

/// Like [`unavailable`] for a request on an input key: the key is replaced in the message,
/// because errors are logged and a server may echo the key in its error text.
fn unavailable_for<E, R>(key: &str, error: SdkError<E, R>) -> StorageError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = DisplayErrorContext(error).to_string();
    StorageError::Unavailable(redact_key(&message, key))
}

fn redact_key(message: &str, key: &str) -> String {
    if key.is_empty() {
        return message.to_owned();
    }
    message.replace(key, "<image key>")
}

impl S3Store {
    pub async fn new(settings: &S3Settings, bucket: String, prefix: String) -> S3Store {
        S3Store {
            client: client(settings).await,
            bucket,
            prefix,
            multipart_threshold: settings.multipart_threshold,
            part_size: settings.part_size.max(MIN_PART_SIZE),
            encryption: settings.encryption.clone(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn object_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    pub(crate) async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError> {
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(key));
        match request.send().await {
            Ok(out) => Ok(ObjectInfo {
                size: out
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                etag: out.e_tag().map(str::to_owned),
            }),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), HeadObjectError::NotFound(_)) => {
                Err(StorageError::NotFound)
            }
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
                Err(StorageError::NotFound)
            }
            Err(e) => Err(unavailable_for(key, e)),
        }
    }

    /// Streams the object body into one buffer sized from the object's length.
    pub(crate) async fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>, StorageError> {
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key));
        let mut output = match request.send().await {
            Ok(output) => output,
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), GetObjectError::NoSuchKey(_))
                    || e.raw().status().as_u16() == 404 =>
            {
                return Err(StorageError::NotFound);
            }
            Err(e) => return Err(unavailable_for(key, e)),
        };
        let length = output
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        if length > limit {
            return Err(StorageError::TooLarge {
                size: length,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
        loop {
            match output.body.try_next().await {
                Ok(Some(chunk)) => {
                    let size = (bytes.len() + chunk.len()) as u64;
                    if size > limit {
                        return Err(StorageError::TooLarge { size, limit });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(StorageError::Unavailable(format!(
                        "reading the object body failed: {e}"
                    )));
                }
            }
        }
        if length != 0 && bytes.len() as u64 != length {
            return Err(StorageError::Unavailable(format!(
                "the object body ended after {} of {length} bytes",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let key = self.object_key(key);
        if body.len() < self.multipart_threshold {
            let (sse, kms_key) = self.encryption_fields();
            return self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type(content_type)
                .set_server_side_encryption(sse)
                .set_ssekms_key_id(kms_key)
                .body(ByteStream::from(body))
                .send()
                .await
                .map(|_| ())
                .map_err(unavailable);
        }
        self.put_multipart(&key, body, content_type).await
    }

    fn encryption_fields(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.encryption {
            Encryption::BucketDefault => (None, None),
            Encryption::S3Managed => (Some(ServerSideEncryption::Aes256), None),
            Encryption::Kms(key) => (Some(ServerSideEncryption::AwsKms), key.clone()),
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let (sse, kms_key) = self.encryption_fields();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .send()
            .await
            .map_err(unavailable)?;
        let Some(upload_id) = created.upload_id() else {
            return Err(StorageError::Unavailable(
                "the object store returned no upload id".to_owned(),
            ));
        };
        let completed = match self.upload_parts(key, upload_id, &body).await {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(unavailable),
            Err(error) => Err(error),
        };
        if completed.is_err() {
            self.abort(key, upload_id).await;
        }
        completed
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        body: &Bytes,
    ) -> Result<Vec<CompletedPart>, StorageError> {
        let mut parts = Vec::new();
        let mut start = 0;
        let mut number = 1;
        while start < body.len() {
            let end = (start + self.part_size).min(body.len());
            let output = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body.slice(start..end)))
                .send()
                .await
                .map_err(unavailable)?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(output.e_tag().map(str::to_owned))
                    .build(),
            );
            start = end;
            number += 1;
        }
        Ok(parts)
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(
                error = %DisplayErrorContext(e),
                "failed to abort a multipart upload; its parts stay until a bucket lifecycle rule removes them"
            );
        }
    }

    pub(crate) async fn check(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_settings_parse() {
        let cases = [
            ("none", "", Encryption::BucketDefault),
            ("", "", Encryption::BucketDefault),
            ("AES256", "", Encryption::S3Managed),
            ("aes256", "", Encryption::S3Managed),
            ("aws:kms", "", Encryption::Kms(None)),
            (
                "aws:kms",
                "alias/rfo-overlays",
                Encryption::Kms(Some("alias/rfo-overlays".to_owned())),
            ),
        ];
        for (sse, key, expected) in cases {
            let parsed = Encryption::from_settings(sse, key);
            assert_eq!(parsed.ok(), Some(expected), "RFO_S3_SSE={sse:?}");
        }
    }

    #[test]
    fn encryption_settings_reject_invalid() {
        let error = Encryption::from_settings("aws:kms:dsse", "").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("RFO_S3_SSE"), "{message}");
        assert!(message.contains("aws:kms:dsse"), "{message}");
        let error = Encryption::from_settings("AES256", "alias/rfo").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("RFO_S3_SSE_KMS_KEY_ID"), "{message}");
    }

    #[test]
    fn redaction_removes_the_key() {
        let message = "service error: NoSuchBucket: scans/Jane Doe.png was not found";
        let redacted = redact_key(message, "scans/Jane Doe.png");
        assert_eq!(
            redacted,
            "service error: NoSuchBucket: <image key> was not found"
        );
    }
}
