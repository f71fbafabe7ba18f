//! Backend URLs and the settings both binaries read from the environment.
//!
//! Every backend is named by one URL. Parsing happens once at start-up, and an invalid value
//! stops the binary with a message naming the variable, the value and what would be valid.

use std::collections::BTreeMap;
use std::path::PathBuf;

use url::Url;

/// Error in a setting, naming the variable and the offending value (with secrets removed).
#[derive(Debug, thiserror::Error)]
#[error("invalid {variable}={value:?}: {reason}")]
pub struct ConfigError {
    pub variable: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(variable: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            variable: variable.to_owned(),
            value: redact_url(value),
            reason: reason.into(),
        }
    }
}

/// Default of `RFO_QUEUE_URL`: the embedded queue in the data folder.
pub const DEFAULT_QUEUE_URL: &str = "embedded://./data/queue.db";
/// Default of `RFO_INPUT_URL`.
pub const DEFAULT_INPUT_URL: &str = "./data/input";
/// Default of `RFO_OUTPUT_URL`.
pub const DEFAULT_OUTPUT_URL: &str = "./data/output";
/// Default of `RFO_DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/rfo.db";
/// Name the embedded queue reports where Kafka reports its topic.
pub const EMBEDDED_TOPIC: &str = "rfo-jobs";

/// Where jobs are queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueUrl {
    /// `kafka://host1:9092,host2:9092/topic`
    Kafka { brokers: String, topic: String },
    /// `embedded://path/to/queue.db`: a queue in a SQLite file that needs no server and that
    /// processes on one machine share.
    Embedded { path: PathBuf },
}

impl QueueUrl {
    pub fn parse(variable: &str, value: &str) -> Result<QueueUrl, ConfigError> {
        if let Some(path) = value.strip_prefix("embedded://") {
            if path.is_empty() {
                return Err(ConfigError::new(
                    variable,
                    value,
                    "expected embedded://PATH, for example embedded://./data/queue.db",
                ));
            }
            return Ok(QueueUrl::Embedded {
                path: PathBuf::from(path),
            });
        }
        let valid = "expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC or embedded://PATH";
        let Some(rest) = value.strip_prefix("kafka://") else {
            return Err(ConfigError::new(variable, value, valid));
        };
        let Some((brokers, topic)) = rest.split_once('/') else {
            return Err(ConfigError::new(
                variable,
                value,
                format!("{valid}; the topic is missing"),
            ));
        };
        let brokers_valid = !brokers.is_empty()
            && brokers.split(',').all(|b| {
                b.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            });
        if !brokers_valid {
            return Err(ConfigError::new(
                variable,
                value,
                format!("{valid}; each broker needs a host and a port"),
            ));
        }
        let topic_valid = !topic.is_empty()
            && topic.len() <= 249
            && topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !topic_valid {
            return Err(ConfigError::new(
                variable,
                value,
                "a Kafka topic is 1 to 249 characters of ASCII letters, digits, '.', '_' and '-'",
            ));
        }
        Ok(QueueUrl::Kafka {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
        })
    }

    /// Returns the Kafka topic, or the embedded queue's fixed name.
    pub fn topic(&self) -> &str {
        match self {
            QueueUrl::Kafka { topic, .. } => topic,
            QueueUrl::Embedded { .. } => EMBEDDED_TOPIC,
        }
    }
}

/// Where images are read or overlays written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// `s3://bucket` or `s3://bucket/prefix/`
    S3 { bucket: String, prefix: String },
    /// `file:///path` or a plain path.
    File { root: PathBuf },
}

impl StorageUrl {
    pub fn parse(variable: &str, value: &str) -> Result<StorageUrl, ConfigError> {
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_valid = (3..=63).contains(&bucket.len())
                && bucket.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')
                });
            if !bucket_valid {
                return Err(ConfigError::new(
                    variable,
                    value,
                    "expected s3://BUCKET[/PREFIX] with a bucket name of 3 to 63 lowercase letters, digits, '.' and '-'",
                ));
            }
            return Ok(StorageUrl::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        if value.contains("://") && !value.starts_with("file://") {
            return Err(ConfigError::new(
                variable,
                value,
                "expected s3://BUCKET, file:///PATH or a plain path",
            ));
        }
        let path = value.strip_prefix("file://").unwrap_or(value);
        if path.is_empty() {
            return Err(ConfigError::new(variable, value, "the path is empty"));
        }
        Ok(StorageUrl::File {
            root: PathBuf::from(path),
        })
    }
}

/// The job database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    /// `sqlite://path/to/rfo.db`; the file is created when missing.
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    pub fn parse(variable: &str, value: &str) -> Result<DatabaseUrl, ConfigError> {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Url::parse(value).map_err(|e| ConfigError::new(variable, value, e.to_string()))?;
            return Ok(DatabaseUrl::Postgres(value.to_owned()));
        }
        if let Some(path) = value.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(ConfigError::new(
                    variable,
                    value,
                    "expected sqlite://PATH, for example sqlite://./data/rfo.db",
                ));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        Err(ConfigError::new(
            variable,
            value,
            "expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE or sqlite://PATH",
        ))
    }
}

/// Replaces the password of a URL with `***`, so that error messages never print it.
pub fn redact_url(value: &str) -> String {
    match Url::parse(value) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => value.to_owned(),
    }
}

/// Collects librdkafka settings from `RFO_KAFKA_<KEY>` variables, where the key's dots are
/// written as underscores: `RFO_KAFKA_SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`.
pub fn kafka_overrides(
    vars: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix("RFO_KAFKA_")?;
            Some((key.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect()
}

/// Parses a boolean setting: `true`/`false`, `1`/`0`, `yes`/`no`.
pub fn parse_bool(variable: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(variable, value, "expected true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_url_parses() {
        let q = QueueUrl::parse("RFO_QUEUE_URL", "kafka://a:9092,b:9093/rfo-jobs").unwrap();
        assert_eq!(
            q,
            QueueUrl::Kafka {
                brokers: "a:9092,b:9093".into(),
                topic: "rfo-jobs".into()
            }
        );
    }

    #[test]
    fn kafka_url_errors_name_variable_and_value() {
        let e = QueueUrl::parse("RFO_QUEUE_URL", "kafka://a:9092").unwrap_err();
        assert!(
            e.to_string().contains("RFO_QUEUE_URL=\"kafka://a:9092\""),
            "{e}"
        );
        assert!(e.to_string().contains("topic is missing"), "{e}");
        assert!(QueueUrl::parse("Q", "kafka://a/t").is_err());
        assert!(QueueUrl::parse("Q", "kafka://a:1/bad topic").is_err());
        assert!(QueueUrl::parse("Q", "amqp://a:1/t").is_err());
        assert!(QueueUrl::parse("Q", "embedded://").is_err());
    }

    #[test]
    fn embedded_urls_parse() {
        assert_eq!(
            QueueUrl::parse("Q", DEFAULT_QUEUE_URL).unwrap(),
            QueueUrl::Embedded {
                path: "./data/queue.db".into()
            }
        );
        assert_eq!(
            DatabaseUrl::parse("D", DEFAULT_DATABASE_URL).unwrap(),
            DatabaseUrl::Sqlite("./data/rfo.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("D", "sqlite:///var/lib/rfo/rfo.db").unwrap(),
            DatabaseUrl::Sqlite("/var/lib/rfo/rfo.db".into())
        );
        assert!(DatabaseUrl::parse("D", "sqlite://").is_err());
    }

    #[test]
    fn storage_urls_parse() {
        assert_eq!(
            StorageUrl::parse("V", "s3://rfo-input").unwrap(),
            StorageUrl::S3 {
                bucket: "rfo-input".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("V", "s3://b-1/in/").unwrap(),
            StorageUrl::S3 {
                bucket: "b-1".into(),
                prefix: "in/".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("V", "./data/input").unwrap(),
            StorageUrl::File {
                root: "./data/input".into()
            }
        );
        assert!(StorageUrl::parse("V", "s3://UPPER").is_err());
        assert!(StorageUrl::parse("V", "gs://x").is_err());
    }

    #[test]
    fn database_password_is_redacted() {
        let e = DatabaseUrl::parse("RFO_DATABASE_URL", "mysql://u:secret@h/db").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("***"), "{e}");
    }

    #[test]
    fn kafka_overrides_map_underscores_to_dots() {
        let vars = vec![
            (
                "RFO_KAFKA_SECURITY_PROTOCOL".to_owned(),
                "SASL_SSL".to_owned(),
            ),
            ("RFO_QUEUE_URL".to_owned(), "x".to_owned()),
        ];
        let map = kafka_overrides(vars);
        assert_eq!(
            map.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(map.len(), 1);
    }
}
