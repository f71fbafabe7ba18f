//! The local stack as the load harness uses it: settings from the `ops/stack env` exports,
//! a fresh Kafka topic per run, the input bucket, and the processes under test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_s3::primitives::ByteStream;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// Settings of the running local stack, read from the environment.
#[derive(Debug, Clone)]
pub struct Stack {
    pub brokers: String,
    pub input_bucket: String,
    pub output_bucket: String,
    pub database_url: String,
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!(
            "{name} is not set; run `eval \"$(ops/stack env)\"` (or `ops/stack start`) in this \
             shell first"
        )
    })
}

fn bucket(name: &str) -> anyhow::Result<String> {
    let url = env(name)?;
    match url.strip_prefix("s3://") {
        Some(rest) if !rest.is_empty() => Ok(rest.trim_end_matches('/').to_owned()),
        _ => bail!("{name}={url:?} is invalid: the harness needs s3://BUCKET"),
    }
}

impl Stack {
    pub fn from_env() -> anyhow::Result<Stack> {
        let queue = env("RFO_QUEUE_URL")?;
        let brokers = queue
            .strip_prefix("kafka://")
            .and_then(|rest| rest.split('/').next())
            .filter(|brokers| !brokers.is_empty())
            .with_context(|| {
                format!("RFO_QUEUE_URL={queue:?} is invalid: expected kafka://HOST:PORT/TOPIC")
            })?
            .to_owned();
        Ok(Stack {
            brokers,
            input_bucket: bucket("RFO_INPUT_URL")?,
            output_bucket: bucket("RFO_OUTPUT_URL")?,
            database_url: env("RFO_DATABASE_URL")?,
        })
    }

    /// Returns an S3 client for the stack's server, path-style as local servers need.
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates `topic` with `partitions` partitions and its dead-letter topic.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .context("failed to create a Kafka admin client")?;
        let dead_letters = format!("{topic}.dlq");
        let topics = [
            NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dead_letters, 1, TopicReplication::Fixed(1)),
        ];
        let results = admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .context("failed to create the run's topics")?;
        for result in results {
            if let Err((name, error)) = result {
                bail!("failed to create topic {name}: {error}");
            }
        }
        Ok(())
    }

    /// Uploads each file under `prefix`, keeping its file name, unless an object of the same
    /// size is already there. Returns the keys. Runs `parallel` uploads at once.
    pub async fn upload_inputs(
        &self,
        files: &[PathBuf],
        prefix: &str,
        parallel: usize,
    ) -> anyhow::Result<Vec<String>> {
        use futures::StreamExt;
        let client = self.s3().await;
        let keys: Vec<String> = files
            .iter()
            .map(|path| {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                format!("{prefix}/{name}")
            })
            .collect();
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(
            files
                .iter()
                .zip(&keys)
                .map(|(path, key)| upload_one(&client, &self.input_bucket, path, key)),
        )
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
        for result in results {
            result?;
        }
        Ok(keys)
    }
}

async fn upload_one(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    path: &Path,
    key: &str,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("failed to read {}", path.display()))?
        .len();
    if let Ok(head) = client.head_object().bucket(bucket).key(key).send().await
        && head.content_length() == Some(size as i64)
    {
        return Ok(());
    }
    let body = ByteStream::from_path(path)
        .await
        .with_context(|| format!("failed to read {}", path.display()))?;
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .send()
        .await
        .with_context(|| format!("failed to upload s3://{bucket}/{key}"))?;
    Ok(())
}

/// Returns a TCP port on loopback that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("failed to bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A child process whose output goes to a log file. It is killed when dropped.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Starts `program` with `envs` added to this process's environment.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        envs: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Process> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().map(|(key, value)| (key, value)))
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("failed to start {}", program.display()))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `within` for the exit; kills the process after that.
    pub fn terminate(&mut self, within: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within {within:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails when the process has exited, naming its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; see {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
