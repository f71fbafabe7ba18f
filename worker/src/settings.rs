//! Command-line flags and environment variables of `rfo-worker`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use rfo_core::config::{
    ConfigError, DEFAULT_DATABASE_URL, DEFAULT_INPUT_URL, DEFAULT_OUTPUT_URL, DEFAULT_QUEUE_URL,
    DatabaseUrl, QueueUrl, StorageUrl, kafka_overrides, parse_bool,
};
use rfo_core::s3::Encryption;

/// Settings of `rfo-worker`. Each flag can also be set by the environment variable it names;
/// the flag wins.
#[derive(Debug, Parser)]
#[command(name = "rfo-worker", version, about = "Staged rfo worker")]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Queue the jobs are read from: kafka://HOST:PORT[,HOST:PORT]/TOPIC or embedded://PATH.
    #[arg(long, env = "RFO_QUEUE_URL", global = true, default_value = DEFAULT_QUEUE_URL)]
    pub queue_url: String,
    /// Where input images are read: s3://BUCKET[/PREFIX], file:///PATH or a plain path.
    #[arg(long, env = "RFO_INPUT_URL", global = true, default_value = DEFAULT_INPUT_URL)]
    pub input_url: String,
    /// Where overlays are written: s3://BUCKET[/PREFIX], file:///PATH or a plain path.
    #[arg(long, env = "RFO_OUTPUT_URL", global = true, default_value = DEFAULT_OUTPUT_URL)]
    pub output_url: String,
    /// Job database: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE or sqlite://PATH.
    #[arg(long, env = "RFO_DATABASE_URL", global = true, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Kafka consumer group shared by all workers.
    #[arg(long, env = "RFO_CONSUMER_GROUP", default_value = "rfo-workers")]
    pub consumer_group: String,
    /// Address of the Prometheus endpoint.
    #[arg(long, env = "RFO_METRICS_LISTEN", default_value = "127.0.0.1:9750")]
    pub metrics_listen: String,
    /// Path-style S3 addressing, which most local S3 servers need (true or false).
    #[arg(long, env = "RFO_S3_FORCE_PATH_STYLE", default_value = "false")]
    pub s3_force_path_style: String,
    /// Server-side encryption of written overlays and previews: none (the bucket's default),
    /// AES256 (SSE-S3) or aws:kms (SSE-KMS).
    #[arg(long, env = "RFO_S3_SSE", default_value = "none")]
    pub s3_sse: String,
    /// KMS key id, ARN or alias for RFO_S3_SSE=aws:kms; empty means the account's default key.
    #[arg(long, env = "RFO_S3_SSE_KMS_KEY_ID", default_value = "")]
    pub s3_sse_kms_key_id: String,
    /// Detector to run: random (a placeholder box seeded by the job id) or exposure (the box of
    /// the exposed region).
    #[arg(long, env = "RFO_DETECTOR", default_value = "random")]
    pub detector: String,
    /// Log in to Amazon MSK with IAM (true or false): SASL/OAUTHBEARER tokens signed with the
    /// AWS credentials chain, for the region in AWS_REGION.
    #[arg(long, env = "RFO_MSK_IAM", default_value = "false")]
    pub msk_iam: String,
    /// Allow image keys in debug-level log lines (true or false).
    #[arg(long, env = "RFO_LOG_KEYS", default_value = "false")]
    pub log_keys: String,
    /// Apply database migrations at start-up (true or false).
    #[arg(long, env = "RFO_MIGRATE", default_value = "true")]
    pub migrate: String,
    /// Threads of the CPU pool; 0 means one per core.
    #[arg(long, env = "RFO_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Downloads in flight at once.
    #[arg(long, env = "RFO_DOWNLOAD_CONCURRENCY", default_value_t = 4)]
    pub download_concurrency: usize,
    /// Uploads in flight at once.
    #[arg(long, env = "RFO_UPLOAD_CONCURRENCY", default_value_t = 4)]
    pub upload_concurrency: usize,
    /// Capacity of each channel between stages, in jobs.
    #[arg(long, env = "RFO_CHANNEL_CAPACITY", default_value_t = 2)]
    pub channel_capacity: usize,
    /// Largest input object read, in bytes.
    #[arg(long, env = "RFO_MAX_INPUT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_input_bytes: u64,
    /// Pixel budget of one image (width times height), checked from the PNG header.
    #[arg(long, env = "RFO_MAX_PIXELS", default_value_t = 64_000_000)]
    pub max_pixels: u64,
    /// Longest image side accepted, in pixels.
    #[arg(long, env = "RFO_MAX_SIDE", default_value_t = 16384)]
    pub max_side: u32,
    /// Most jobs written by one database statement.
    #[arg(long, env = "RFO_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: usize,
    /// Milliseconds a batch waits for more jobs before it is written.
    #[arg(long, env = "RFO_BATCH_LINGER_MS", default_value_t = 20)]
    pub batch_linger_ms: u64,
    /// Seconds a shutdown may take to drain the pipeline before the worker exits anyway.
    #[arg(long, env = "RFO_SHUTDOWN_TIMEOUT_S", default_value_t = 30)]
    pub shutdown_timeout_s: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline (the default).
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Run the HTTP API and the pipeline in one process. The API reads its own settings
    /// (RFO_LISTEN and the others of rfo-api) and shares the queue, input and database URLs.
    AllInOne,
    /// Process every PNG in a folder, then print a summary and what GET /recent returns.
    Batch(BatchArgs),
}

/// Arguments of `rfo-worker batch`.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Folder of PNG radiographs, read as the input store. Without it, synthetic radiographs
    /// are generated into ./data/synthetic and processed.
    pub folder: Option<std::path::PathBuf>,
    /// Number of synthetic radiographs generated when no folder is given.
    #[arg(long, default_value_t = 4)]
    pub synthetic: usize,
    /// Seconds to wait for all jobs before giving up.
    #[arg(long, default_value_t = 3600)]
    pub timeout_s: u64,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub queue: QueueUrl,
    pub input: StorageUrl,
    pub output: StorageUrl,
    pub database: DatabaseUrl,
    pub consumer_group: String,
    pub metrics_listen: SocketAddr,
    pub s3_force_path_style: bool,
    pub s3_encryption: Encryption,
    pub detector: String,
    pub log_keys: bool,
    pub migrate: bool,
    pub worker_threads: usize,
    pub download_concurrency: usize,
    pub upload_concurrency: usize,
    pub channel_capacity: usize,
    pub max_input_bytes: u64,
    pub max_pixels: u64,
    pub max_side: u32,
    pub batch_size: usize,
    pub batch_linger_ms: u64,
    pub shutdown_timeout_s: u64,
    pub msk_iam: bool,
    pub kafka: BTreeMap<String, String>,
}

fn positive(variable: &str, value: usize, max: usize) -> Result<usize, ConfigError> {
    if value == 0 || value > max {
        return Err(ConfigError::new(
            variable,
            &value.to_string(),
            format!("expected a whole number from 1 to {max}"),
        ));
    }
    Ok(value)
}

impl Args {
    /// Validates the database setting alone, for the `migrate` command.
    pub fn database(&self) -> Result<DatabaseUrl, ConfigError> {
        DatabaseUrl::parse("RFO_DATABASE_URL", &self.database_url)
    }

    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let metrics_listen = self.metrics_listen.parse().map_err(|_| {
            ConfigError::new(
                "RFO_METRICS_LISTEN",
                &self.metrics_listen,
                "expected HOST:PORT, for example 127.0.0.1:9750",
            )
        })?;
        if !matches!(self.detector.as_str(), "random" | "exposure") {
            return Err(ConfigError::new(
                "RFO_DETECTOR",
                &self.detector,
                "expected random or exposure",
            ));
        }
        if self.consumer_group.is_empty() {
            return Err(ConfigError::new(
                "RFO_CONSUMER_GROUP",
                "",
                "the consumer group name is empty",
            ));
        }
        if self.max_pixels == 0 || self.max_side == 0 || self.max_input_bytes == 0 {
            return Err(ConfigError::new(
                "RFO_MAX_PIXELS, RFO_MAX_SIDE or RFO_MAX_INPUT_BYTES",
                "0",
                "limits must be above zero",
            ));
        }
        let msk_iam = parse_bool("RFO_MSK_IAM", &self.msk_iam)?;
        let mut kafka = kafka_overrides(std::env::vars());
        rfo_core::kafka::apply_msk_iam(&mut kafka, msk_iam)?;
        Ok(Settings {
            queue: QueueUrl::parse("RFO_QUEUE_URL", &self.queue_url)?,
            input: StorageUrl::parse("RFO_INPUT_URL", &self.input_url)?,
            output: StorageUrl::parse("RFO_OUTPUT_URL", &self.output_url)?,
            database: self.database()?,
            consumer_group: self.consumer_group.clone(),
            metrics_listen,
            s3_force_path_style: parse_bool("RFO_S3_FORCE_PATH_STYLE", &self.s3_force_path_style)?,
            s3_encryption: Encryption::from_settings(&self.s3_sse, &self.s3_sse_kms_key_id)?,
            detector: self.detector.clone(),
            log_keys: parse_bool("RFO_LOG_KEYS", &self.log_keys)?,
            migrate: parse_bool("RFO_MIGRATE", &self.migrate)?,
            worker_threads: self.worker_threads,
            download_concurrency: positive(
                "RFO_DOWNLOAD_CONCURRENCY",
                self.download_concurrency,
                256,
            )?,
            upload_concurrency: positive("RFO_UPLOAD_CONCURRENCY", self.upload_concurrency, 256)?,
            channel_capacity: positive("RFO_CHANNEL_CAPACITY", self.channel_capacity, 1024)?,
            max_input_bytes: self.max_input_bytes,
            max_pixels: self.max_pixels,
            max_side: self.max_side,
            batch_size: positive("RFO_BATCH_SIZE", self.batch_size, 10_000)?,
            batch_linger_ms: self.batch_linger_ms,
            shutdown_timeout_s: self.shutdown_timeout_s,
            msk_iam,
            kafka,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(flags: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["rfo-worker"];
        argv.extend_from_slice(flags);
        Args::try_parse_from(argv).expect("flags parse").validate()
    }

    #[test]
    fn sse_flags_select_encryption() {
        let settings = validate(&["--s3-sse", "AES256"]).unwrap();
        assert_eq!(settings.s3_encryption, Encryption::S3Managed);
        let settings = validate(&[
            "--s3-sse",
            "aws:kms",
            "--s3-sse-kms-key-id",
            "alias/rfo-overlays",
        ])
        .unwrap();
        assert_eq!(
            settings.s3_encryption,
            Encryption::Kms(Some("alias/rfo-overlays".to_owned()))
        );
    }

    #[test]
    fn invalid_sse_flag_named() {
        let error = validate(&["--s3-sse", "aes-256"]).unwrap_err().to_string();
        assert!(error.contains("RFO_S3_SSE=\"aes-256\""), "{error}");
        assert!(error.contains("AES256"), "{error}");
    }

    #[test]
    fn msk_iam_flag_sets_sasl() {
        let settings = validate(&["--msk-iam", "true"]).unwrap();
        assert!(settings.msk_iam);
        assert_eq!(settings.kafka["sasl.mechanism"], "OAUTHBEARER");
        assert_eq!(settings.kafka["security.protocol"], "SASL_SSL");
    }
}
