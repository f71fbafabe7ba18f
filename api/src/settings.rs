//! Command-line flags and environment variables of `rfo-api`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

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
    /// Milliseconds a submit waits for the broker to acknowledge the job before answering 503.
    #[arg(long, env = "RFO_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,
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
    pub kafka: BTreeMap<String, String>,
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
            kafka: kafka_overrides(std::env::vars()),
        })
    }
}
