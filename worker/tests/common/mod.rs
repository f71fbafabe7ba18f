//! Harness of the integration tests: the local stack's settings, a fresh topic per test, and
//! `rfo-api` and `rfo-worker` started as child processes.
//!
//! The tests need the services of `ops/stack start` and its `export` lines in the environment.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rfo_core::s3::S3Settings;
use serde_json::Value;
use uuid::Uuid;

/// Longest wait for something that must happen; generous, since CI machines are slow.
pub const WAIT: Duration = Duration::from_secs(180);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set; run the tests with `eval \"$(ops/stack start)\"` first, or through .ci/run")
    })
}

/// Settings of the running local stack.
#[derive(Clone)]
pub struct Stack {
    pub brokers: String,
    pub input_bucket: String,
    pub output_bucket: String,
    pub database_url: String,
}

impl Stack {
    pub fn from_env() -> Stack {
        let queue = env("RFO_QUEUE_URL");
        let brokers = queue
            .strip_prefix("kafka://")
            .and_then(|rest| rest.split('/').next())
            .expect("RFO_QUEUE_URL is kafka://BROKERS/TOPIC")
            .to_owned();
        let bucket = |name: &str| {
            env(name)
                .trim_start_matches("s3://")
                .trim_end_matches('/')
                .to_owned()
        };
        Stack {
            brokers,
            input_bucket: bucket("RFO_INPUT_URL"),
            output_bucket: bucket("RFO_OUTPUT_URL"),
            database_url: env("RFO_DATABASE_URL"),
        }
    }

    pub async fn s3(&self) -> aws_sdk_s3::Client {
        rfo_core::s3::client(&S3Settings {
            force_path_style: true,
            ..S3Settings::default()
        })
        .await
    }

    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }

    /// Creates a topic of its own for one test, with its dead-letter topic beside it.
    pub async fn new_topic(&self, partitions: i32) -> String {
        let topic = format!("rfo-test-{}", Uuid::now_v7().simple());
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("create a Kafka admin client");
        let dlq = format!("{topic}.dlq");
        let topics = [
            NewTopic::new(&topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        ];
        let results = admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics");
        for result in results {
            result.expect("topic created");
        }
        topic
    }

    pub async fn put_input(&self, key: &str, bytes: Vec<u8>) {
        self.s3()
            .await
            .put_object()
            .bucket(&self.input_bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .unwrap_or_else(|e| panic!("upload test input {key:?}: {e:?}"));
    }

    pub async fn get_output(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .s3()
            .await
            .get_object()
            .bucket(&self.output_bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(
            out.body
                .collect()
                .await
                .expect("read output body")
                .into_bytes()
                .to_vec(),
        )
    }

    pub async fn list_output(&self, prefix: &str) -> Vec<String> {
        let out = self
            .s3()
            .await
            .list_objects_v2()
            .bucket(&self.output_bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("list output bucket");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }
}

/// Path of the shared test data (`shared/` beside the repository), found by walking up.
pub fn shared_dir() -> PathBuf {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    loop {
        let candidate = dir.join("shared");
        if candidate.join("samples").is_dir() {
            return candidate;
        }
        assert!(
            dir.pop(),
            "no shared/samples folder above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// The sample radiographs, sorted by file name.
pub fn sample_pngs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(shared_dir().join("samples/png"))
        .expect("read samples/png")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no sample PNGs found");
    files
}

/// Width and height from a PNG header.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("PNG header");
    let info = reader.info();
    (info.width, info.height)
}

pub fn binary(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; the project's binaries one level up.
    let exe = std::env::current_exe().expect("current test binary");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing; build it first with `cargo build --release --bins`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// Folder for the logs of one test's processes.
pub fn log_dir(test: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test binary");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("test-logs")
        .join(test);
    std::fs::create_dir_all(&dir).expect("create log dir");
    dir
}

/// A child process that is killed when dropped.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, envs: &[(&str, String)], log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("create log file");
        let mut command = Command::new(binary(name));
        // The test's own RUST_LOG, or `info`, unless `envs` sets one.
        command.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        command.envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
        let child = command
            .stdout(file.try_clone().expect("clone log file"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id() as i32;
        unsafe_kill(pid, 15);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

fn unsafe_kill(pid: i32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An API and a worker on one fresh topic.
pub struct Deployment {
    pub stack: Stack,
    pub topic: String,
    pub group: String,
    pub api_url: String,
    pub api: Process,
    pub workers: Vec<Process>,
    /// `/metrics` URL of each worker, in the order of `workers`.
    pub metrics_urls: Vec<String>,
    pub http: reqwest::Client,
    logs: PathBuf,
}

impl Deployment {
    pub async fn start(test: &str) -> Deployment {
        let stack = Stack::from_env();
        let topic = stack.new_topic(4).await;
        let group = format!("{topic}-workers");
        let logs = log_dir(test);
        let port = free_port();
        let api_url = format!("http://127.0.0.1:{port}");
        let api = Process::spawn(
            "rfo-api",
            &api_env(&stack, &topic, port),
            logs.join("api.log"),
        );
        let mut deployment = Deployment {
            stack,
            topic,
            group,
            api_url,
            api,
            workers: Vec::new(),
            metrics_urls: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            logs,
        };
        deployment.add_worker();
        deployment.wait_ready().await;
        deployment
    }

    pub fn worker_env(&self) -> Vec<(&'static str, String)> {
        let mut envs = base_env(&self.stack, &self.topic);
        envs.push((
            "RFO_OUTPUT_URL",
            format!("s3://{}", self.stack.output_bucket),
        ));
        envs.push(("RFO_CONSUMER_GROUP", self.group.clone()));
        envs.push(("RFO_METRICS_LISTEN", format!("127.0.0.1:{}", free_port())));
        envs
    }

    /// Starts one more worker in the deployment's consumer group.
    pub fn add_worker(&mut self) -> usize {
        let index = self.workers.len();
        let log = self.logs.join(format!("worker-{index}.log"));
        let envs = self.worker_env();
        self.metrics_urls.push(metrics_url(&envs));
        self.workers.push(Process::spawn("rfo-worker", &envs, log));
        index
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = format!("{}/readyz", self.api_url);
            if let Ok(r) = self.http.get(url).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rfo-api not ready in time; log:\n{}",
                self.api.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn submit(&self, key: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/submit", self.api_url))
            .json(&serde_json::json!({ "image_key": key }))
            .send()
            .await
            .expect("POST /submit");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Uploads the first sample radiograph under a fresh key below `prefix`, submits it and
    /// returns the key and the job id.
    pub async fn submit_sample(&self, prefix: &str) -> (String, String) {
        let key = format!("{prefix}-{}/image.png", Uuid::now_v7().simple());
        self.stack
            .put_input(&key, std::fs::read(&sample_pngs()[0]).unwrap())
            .await;
        let (status, body) = self.submit(&key).await;
        assert_eq!(status, 202, "{body}");
        let job_id = body["job_id"].as_str().unwrap().to_owned();
        (key, job_id)
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.api_url))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the job's status is one of `statuses` and returns the job.
    pub async fn wait_for(&self, job_id: &str, statuses: &[&str]) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (code, job) = self.get_json(&format!("/jobs/{job_id}")).await;
            if code == 200 && statuses.iter().any(|s| job["status"] == *s) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} did not reach {statuses:?} in time; last {job}; worker log:\n{}",
                self.workers
                    .iter()
                    .map(Process::log_text)
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Returns the `/metrics` URL of a worker started with `envs`.
fn metrics_url(envs: &[(&'static str, String)]) -> String {
    let listen = envs
        .iter()
        .rev()
        .find(|(name, _)| *name == "RFO_METRICS_LISTEN")
        .map(|(_, value)| value.as_str())
        .expect("worker environment sets RFO_METRICS_LISTEN");
    format!("http://{listen}/metrics")
}

pub fn base_env(stack: &Stack, topic: &str) -> Vec<(&'static str, String)> {
    let mut envs = vec![
        (
            "RFO_QUEUE_URL",
            format!("kafka://{}/{topic}", stack.brokers),
        ),
        ("RFO_INPUT_URL", format!("s3://{}", stack.input_bucket)),
        ("RFO_DATABASE_URL", stack.database_url.clone()),
        ("RFO_S3_FORCE_PATH_STYLE", "true".to_owned()),
    ];
    for name in [
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
    ] {
        envs.push((name, env(name)));
    }
    envs
}

/// Environment of an API on `topic` listening on `port`, with authentication off: these tests
/// exercise the pipeline, and `api/tests/security.rs` covers authentication.
pub fn api_env(stack: &Stack, topic: &str, port: u16) -> Vec<(&'static str, String)> {
    let mut envs = base_env(stack, topic);
    envs.push(("RFO_LISTEN", format!("127.0.0.1:{port}")));
    envs.push(("RFO_AUTH", "off".to_owned()));
    // Every test shares one database, and an API publishes unacknowledged jobs of any test to
    // its own topic, so only the test of that sweep lowers this age.
    envs.push(("RFO_REPUBLISH_AFTER_S", "86399".to_owned()));
    envs
}

/// Starts an API process with `envs` on a free port; returns it with its base URL.
pub fn spawn_api(test: &str, envs: Vec<(&'static str, String)>, port: u16) -> (Process, String) {
    let api = Process::spawn("rfo-api", &envs, log_dir(test).join("api.log"));
    (api, format!("http://127.0.0.1:{port}"))
}

pub fn pick_port() -> u16 {
    free_port()
}

/// Returns the value of a variable that `ops/stack start` exports, such as the addresses of
/// the encrypted endpoints, and panics with the command to run when it is not set.
pub fn stack_env(name: &str) -> String {
    env(name)
}

impl Deployment {
    /// Starts an API and one worker on `topic` like [`Deployment::start`], with `overrides`
    /// added to both processes' environment after the stack's settings. The overrides win, so
    /// one of `RFO_QUEUE_URL` or `RFO_DATABASE_URL` moves both processes to another endpoint.
    /// Workers started later with [`Deployment::add_worker`] get no overrides.
    pub async fn start_with_env(
        test: &str,
        topic: String,
        overrides: Vec<(&'static str, String)>,
    ) -> Deployment {
        let stack = Stack::from_env();
        let group = format!("{topic}-workers");
        let logs = log_dir(test);
        let port = free_port();
        let mut api_envs = api_env(&stack, &topic, port);
        api_envs.extend(overrides.iter().cloned());
        let api = Process::spawn("rfo-api", &api_envs, logs.join("api.log"));
        let mut deployment = Deployment {
            stack,
            topic,
            group,
            api_url: format!("http://127.0.0.1:{port}"),
            api,
            workers: Vec::new(),
            metrics_urls: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            logs,
        };
        let mut worker_envs = deployment.worker_env();
        worker_envs.extend(overrides);
        let log = deployment.logs.join("worker-0.log");
        deployment.metrics_urls.push(metrics_url(&worker_envs));
        deployment
            .workers
            .push(Process::spawn("rfo-worker", &worker_envs, log));
        deployment.wait_ready().await;
        deployment
    }
}
