//! The job message published to Kafka and the image-key rules both binaries apply.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the job message this build writes and reads.
pub const MESSAGE_VERSION: u32 = 1;

/// Maximum length of an image key in bytes of UTF-8, the same limit S3 puts on object keys.
pub const MAX_KEY_BYTES: usize = 1024;

/// Value of a job record on the queue. The record key is the job id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub v: u32,
    pub job_id: Uuid,
    pub image_key: String,
    #[serde(with = "timestamp")]
    pub submitted_at: DateTime<Utc>,
}

/// Why a queue record is not a job this worker can run.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The message names the kind of error and its position but never serde's own text,
    /// which quotes the offending value, because this error is logged.
    #[error(
        "record is not a valid job message: {} at line {} column {}",
        json_problem(.0), .0.line(), .0.column()
    )]
    Invalid(#[from] serde_json::Error),
    #[error(
        "job message version {0} is not supported; this worker reads version {MESSAGE_VERSION}"
    )]
    UnknownVersion(u32),
    #[error("job message has an invalid image key: {0}")]
    InvalidKey(#[from] KeyError),
}

fn json_problem(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Eof => "the JSON ends early",
        serde_json::error::Category::Data => "a field is missing or has an invalid value",
        serde_json::error::Category::Io => "the record could not be read",
    }
}

impl JobMessage {
    pub fn new(job_id: Uuid, image_key: String, submitted_at: DateTime<Utc>) -> Self {
        JobMessage {
            v: MESSAGE_VERSION,
            job_id,
            image_key,
            submitted_at,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job message always serializes")
    }

    /// Parses a record value. Unknown fields are ignored so producers can be upgraded first.
    pub fn parse(value: &[u8]) -> Result<JobMessage, MessageError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let version: Version = serde_json::from_slice(value)?;
        if version.v != MESSAGE_VERSION {
            return Err(MessageError::UnknownVersion(version.v));
        }
        let message: JobMessage = serde_json::from_slice(value)?;
        validate_key(&message.image_key)?;
        Ok(message)
    }
}

/// Why an image key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("image_key is empty; send the key of an object in the input bucket")]
    Empty,
    #[error("image_key consists only of whitespace; send the key of an object in the input bucket")]
    Blank,
    #[error("image_key is {0} bytes long; the maximum is {MAX_KEY_BYTES} bytes of UTF-8")]
    TooLong(usize),
    #[error("image_key contains the control character U+{0:04X} at byte {1}; remove it")]
    ControlCharacter(u32, usize),
}

/// Checks the rules every backend shares: non-empty, not only whitespace, at most
/// [`MAX_KEY_BYTES`] bytes, no control characters. Spaces and non-ASCII letters are valid.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    if let Some((index, c)) = key.char_indices().find(|(_, c)| c.is_control()) {
        return Err(KeyError::ControlCharacter(c as u32, index));
    }
    if key.chars().all(char::is_whitespace) {
        return Err(KeyError::Blank);
    }
    Ok(())
}

/// Key of the full-resolution overlay of a job: a function of the job id alone.
pub fn overlay_key(job_id: Uuid) -> String {
    format!("overlays/{job_id}.png")
}

/// Key of the small preview written beside the overlay.
pub fn preview_key(job_id: Uuid) -> String {
    format!("overlays/{job_id}.preview.png")
}

/// Returns the current time truncated to microseconds, the precision both databases keep.
pub fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Formats a timestamp as RFC 3339 in UTC with microseconds, the form the API returns.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Serde adapter writing timestamps with [`format_timestamp`].
pub mod timestamp {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_timestamp(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// The same for an optional timestamp.
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::Serializer;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::super::format_timestamp(t)),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips() {
        let message = JobMessage::new(Uuid::now_v7(), "Image_2_patient 1.png".into(), Utc::now());
        let parsed = JobMessage::parse(&message.to_json()).unwrap();
        assert_eq!(parsed.job_id, message.job_id);
        assert_eq!(parsed.image_key, message.image_key);
    }

    #[test]
    fn message_ignores_unknown_fields() {
        let value = br#"{"v":1,"job_id":"0190f5d2-0000-7000-8000-000000000001","image_key":"a.png","submitted_at":"2026-02-01T05:36:26.470485+00:00","extra":true}"#;
        assert_eq!(JobMessage::parse(value).unwrap().image_key, "a.png");
    }

    #[test]
    fn message_rejects_unknown_version() {
        let value = br#"{"v":2,"job_id":"0190f5d2-0000-7000-8000-000000000001","image_key":"a.png","submitted_at":"2026-02-01T05:36:26.470485+00:00"}"#;
        assert!(matches!(
            JobMessage::parse(value),
            Err(MessageError::UnknownVersion(2))
        ));
    }

    #[test]
    fn message_rejects_missing_field_and_garbage() {
        assert!(matches!(
            JobMessage::parse(br#"{"v":1}"#),
            Err(MessageError::Invalid(_))
        ));
        assert!(matches!(
            JobMessage::parse(b"not json"),
            Err(MessageError::Invalid(_))
        ));
    }

    #[test]
    fn message_errors_omit_values() {
        let value = br#"{"v":1,"job_id":"Patient Name","image_key":"Patient Name.png","submitted_at":"2026-02-01T05:36:26.470485+00:00"}"#;
        let error = JobMessage::parse(value).unwrap_err().to_string();
        assert!(error.contains("line 1 column"), "{error}");
        assert!(!error.contains("Patient"), "{error}");
        let value = br#"{"v":"Patient Name"}"#;
        let error = JobMessage::parse(value).unwrap_err().to_string();
        assert!(!error.contains("Patient"), "{error}");
    }

    #[test]
    fn key_rules() {
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert_eq!(validate_key("   "), Err(KeyError::Blank));
        assert_eq!(validate_key("a\nb"), Err(KeyError::ControlCharacter(10, 1)));
        assert_eq!(
            validate_key(&"x".repeat(1025)),
            Err(KeyError::TooLong(1025))
        );
        assert!(validate_key(&"x".repeat(1024)).is_ok());
        assert!(validate_key("Image_2_patient 1.png").is_ok());
        assert!(validate_key("Снимок ё.png").is_ok());
        assert!(validate_key(" trailing ").is_ok());
    }

    #[test]
    fn overlay_key_depends_on_job_only() {
        let id: Uuid = "0190f5d2-0000-7000-8000-000000000001".parse().unwrap();
        assert_eq!(
            overlay_key(id),
            "overlays/0190f5d2-0000-7000-8000-000000000001.png"
        );
        assert_eq!(
            preview_key(id),
            "overlays/0190f5d2-0000-7000-8000-000000000001.preview.png"
        );
    }

    #[test]
    fn timestamps_have_microseconds() {
        let t = DateTime::parse_from_rfc3339("2026-02-01T05:36:26.470485123Z").unwrap();
        assert_eq!(
            format_timestamp(&t.with_timezone(&Utc)),
            "2026-02-01T05:36:26.470485+00:00"
        );
    }
}
