//! Command-line flags and environment variables of `rfo-api`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rfo_core::config::{
    ConfigError, DEFAULT_DATABASE_URL, DEFAULT_INPUT_URL, DEFAULT_QUEUE_URL, DatabaseUrl, QueueUrl,
    StorageUrl, kafka_overrides,
};

/// Settings of `rfo-api`. Each flag can also be set by the environment variable it names;
/// the flag wins.
#[derive(Debug, Parser)]
#[command(name = "rfo-api", version, about = "HTTP API of rfo")]
pub struct Args {
    /// Queue the jobs are published to: kafka://HOST:PORT[,HOST:PORT]/TOPIC or embedded://PATH.
    #[arg(long, env = "RFO_QUEUE_URL", default_value = DEFAULT_QUEUE_URL)]
    pub queue_url: String,
    /// Where input images are looked up: s3://BUCKET[/PREFIX], file:///PATH or a plain path.
    #[arg(long, env = "RFO_INPUT_URL", default_value = DEFAULT_INPUT_URL)]
    pub input_url: String,
    /// Job database: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE or sqlite://PATH.
    #[arg(long, env = "RFO_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Address the HTTP server listens on.
    #[arg(long, env = "RFO_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Path-style S3 addressing, which most local S3 servers need (true or false).
    #[arg(long, env = "RFO_S3_FORCE_PATH_STYLE", default_value = "false")]
    pub s3_force_path_style: String,
    /// Apply database migrations at start-up (true or false).
    #[arg(long, env = "RFO_MIGRATE", default_value = "true")]
    pub migrate: String,
    /// Allow image keys in debug-level log lines (true or false).
    #[arg(long, env = "RFO_LOG_KEYS", default_value = "false")]
    pub log_keys: String,
    /// Log in to Amazon MSK with IAM (true or false): SASL/OAUTHBEARER tokens signed with the
    /// AWS credentials chain, for the region in AWS_REGION.
    #[arg(long, env = "RFO_MSK_IAM", default_value = "false")]
    pub msk_iam: String,
    /// Milliseconds a submit waits for the broker to acknowledge the job before answering 503.
    #[arg(long, env = "RFO_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,
    /// Seconds after submission from which a queued job whose publish the queue never
    /// acknowledged is published again. Must exceed RFO_PUBLISH_TIMEOUT_MS, so a submit still
    /// waiting for the broker is not published twice.
    #[arg(long, env = "RFO_REPUBLISH_AFTER_S", default_value_t = 60)]
    pub republish_after_s: u64,
    /// Seconds between two searches for such jobs; the first runs at start-up.
    #[arg(long, env = "RFO_REPUBLISH_INTERVAL_S", default_value_t = 30)]
    pub republish_interval_s: u64,
    /// Seconds after submission from which such a job is marked failed with
    /// queue_unavailable instead of published again.
    #[arg(long, env = "RFO_REPUBLISH_GIVE_UP_S", default_value_t = 86_400)]
    pub republish_give_up_s: u64,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Authentication settings; `crate::auth` reads the token entries.
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    /// Require a bearer token on every route except /healthz and /readyz (on or off). Turn it
    /// off only for local development.
    #[arg(long = "auth", env = "RFO_AUTH", default_value = "on")]
    pub enabled: String,
    /// Accepted tokens as NAME:sha256:HEX:SCOPES entries separated by commas, where SCOPES
    /// joins submit, read and metrics with `+`. `rfo-api new-token` prints an entry.
    #[arg(long, env = "RFO_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// File of token entries, one or more a line; lines starting with `#` are comments. Used
    /// together with RFO_API_TOKENS.
    #[arg(long, env = "RFO_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// Require a token with the metrics scope on /metrics (true or false).
    #[arg(long, env = "RFO_METRICS_AUTH", default_value = "true")]
    pub metrics_auth: String,
}

/// Limits of the HTTP server, each against a kind of slow or oversized client.
#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// Largest request head (request line and headers), in bytes; larger heads get 431.
    #[arg(long, env = "RFO_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Most header fields in one request; more get 431.
    #[arg(long, env = "RFO_MAX_HEADERS", default_value_t = 64)]
    pub max_headers: usize,
    /// Seconds a client has to send a complete request head. The time counts from the
    /// connection's start or the end of the previous response, so it is also the keep-alive
    /// idle timeout.
    #[arg(long, env = "RFO_HEADER_READ_TIMEOUT_S", default_value_t = 10)]
    pub header_read_timeout_s: u64,
    /// Seconds from a complete request head to the response, body upload included; a request
    /// over it gets 408 and its connection is closed.
    #[arg(long, env = "RFO_REQUEST_TIMEOUT_S", default_value_t = 30)]
    pub request_timeout_s: u64,
    /// Most connections open at once; a connection over the limit is closed at once.
    #[arg(long, env = "RFO_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// PEM file of the TLS certificate chain, leaf first; set with RFO_TLS_KEY to serve HTTPS.
    #[arg(long, env = "RFO_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the TLS private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "RFO_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

/// Validated limits of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub tls: Option<TlsFiles>,
}

/// Paths of the certificate chain and private key that turn on HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn in_range<T>(
    variable: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if range.contains(&value) {
        return Ok(value);
    }
    Err(ConfigError::new(
        variable,
        &value.to_string(),
        format!(
            "expected a whole number from {} to {}",
            range.start(),
            range.end()
        ),
    ))
}

impl HttpArgs {
    pub fn validate(&self) -> Result<HttpSettings, ConfigError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError::new(
                    "RFO_TLS_KEY",
                    "",
                    format!(
                        "RFO_TLS_CERT is set to {} but RFO_TLS_KEY is missing; set both to serve HTTPS, or neither",
                        cert.display()
                    ),
                ));
            }
            (None, Some(key)) => {
                return Err(ConfigError::new(
                    "RFO_TLS_CERT",
                    "",
                    format!(
                        "RFO_TLS_KEY is set to {} but RFO_TLS_CERT is missing; set both to serve HTTPS, or neither",
                        key.display()
                    ),
                ));
            }
        };
        Ok(HttpSettings {
            max_header_bytes: in_range(
                "RFO_MAX_HEADER_BYTES",
                self.max_header_bytes,
                1024..=1024 * 1024,
            )?,
            max_headers: in_range("RFO_MAX_HEADERS", self.max_headers, 1..=1000)?,
            header_read_timeout: Duration::from_secs(in_range(
                "RFO_HEADER_READ_TIMEOUT_S",
                self.header_read_timeout_s,
                1..=600,
            )?),
            request_timeout: Duration::from_secs(in_range(
                "RFO_REQUEST_TIMEOUT_S",
                self.request_timeout_s,
                1..=3600,
            )?),
            max_connections: in_range("RFO_MAX_CONNECTIONS", self.max_connections, 1..=1_000_000)?,
            tls,
        })
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub queue: QueueUrl,
    pub input: StorageUrl,
    pub database: DatabaseUrl,
    pub listen: SocketAddr,
    pub s3_force_path_style: bool,
    pub migrate: bool,
    pub log_keys: bool,
    pub publish_timeout_ms: u64,
    pub republish: RepublishSettings,
    pub msk_iam: bool,
    pub kafka: BTreeMap<String, String>,
}

/// When queued jobs whose publish was never acknowledged are published again or given up.
#[derive(Debug, Clone, Copy)]
pub struct RepublishSettings {
    /// Age from which a job is published again.
    pub after: Duration,
    /// Time between two searches.
    pub interval: Duration,
    /// Age from which a job is marked failed instead.
    pub give_up: Duration,
}

impl Args {
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            ConfigError::new(
                "RFO_LISTEN",
                &self.listen,
                "expected HOST:PORT, for example 127.0.0.1:8000",
            )
        })?;
        let input = StorageUrl::parse("RFO_INPUT_URL", &self.input_url)?;
        if !(100..=120_000).contains(&self.publish_timeout_ms) {
            return Err(ConfigError::new(
                "RFO_PUBLISH_TIMEOUT_MS",
                &self.publish_timeout_ms.to_string(),
                "expected milliseconds from 100 to 120000",
            ));
        }
        let republish = self.republish_settings()?;
        let msk_iam = rfo_core::config::parse_bool("RFO_MSK_IAM", &self.msk_iam)?;
        let mut kafka = kafka_overrides(std::env::vars());
        rfo_core::kafka::apply_msk_iam(&mut kafka, msk_iam)?;
        Ok(Settings {
            queue: QueueUrl::parse("RFO_QUEUE_URL", &self.queue_url)?,
            input,
            database: DatabaseUrl::parse("RFO_DATABASE_URL", &self.database_url)?,
            listen,
            s3_force_path_style: rfo_core::config::parse_bool(
                "RFO_S3_FORCE_PATH_STYLE",
                &self.s3_force_path_style,
            )?,
            migrate: rfo_core::config::parse_bool("RFO_MIGRATE", &self.migrate)?,
            log_keys: rfo_core::config::parse_bool("RFO_LOG_KEYS", &self.log_keys)?,
            publish_timeout_ms: self.publish_timeout_ms,
            republish,
            msk_iam,
            kafka,
        })
    }

    fn republish_settings(&self) -> Result<RepublishSettings, ConfigError> {
        let after = in_range("RFO_REPUBLISH_AFTER_S", self.republish_after_s, 1..=86_400)?;
        if after * 1000 <= self.publish_timeout_ms {
            return Err(ConfigError::new(
                "RFO_REPUBLISH_AFTER_S",
                &after.to_string(),
                format!(
                    "expected more seconds than RFO_PUBLISH_TIMEOUT_MS allows a submit ({} ms), \
                     so a job still being published is not published twice",
                    self.publish_timeout_ms
                ),
            ));
        }
        let interval = in_range(
            "RFO_REPUBLISH_INTERVAL_S",
            self.republish_interval_s,
            1..=86_400,
        )?;
        let give_up = self.republish_give_up_s;
        if give_up <= after {
            return Err(ConfigError::new(
                "RFO_REPUBLISH_GIVE_UP_S",
                &give_up.to_string(),
                format!("expected more seconds than RFO_REPUBLISH_AFTER_S ({after})"),
            ));
        }
        Ok(RepublishSettings {
            after: Duration::from_secs(after),
            interval: Duration::from_secs(interval),
            give_up: Duration::from_secs(give_up),
        })
    }
}
