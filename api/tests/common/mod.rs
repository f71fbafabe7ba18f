//! Harness of the API's integration tests: the local stack's settings, a fresh topic per test,
//! tokens from `rfo-api new-token`, and `rfo-api` started as a child process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rfo_core::s3::S3Settings;
use tokio::net::TcpStream;
use uuid::Uuid;

pub const API: &str = env!("CARGO_BIN_EXE_rfo-api");
/// Maximum wait for an API to start, which applies migrations first.
pub const START_WAIT: Duration = Duration::from_secs(120);

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set; run the tests with `eval \"$(ops/stack start)\"` first, or through ops/test")
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

pub fn log_dir() -> PathBuf {
    let dir = Path::new(API)
        .parent()
        .expect("target dir")
        .join("test-logs")
        .join("api");
    std::fs::create_dir_all(&dir).expect("create log dir");
    dir
}

/// Environment of the local stack, with the queue on `topic`.
pub fn stack_env(topic: &str) -> Vec<(String, String)> {
    let queue = env("RFO_QUEUE_URL");
    let brokers = queue
        .strip_prefix("kafka://")
        .and_then(|rest| rest.split('/').next())
        .expect("RFO_QUEUE_URL is kafka://BROKERS/TOPIC");
    let mut envs = vec![
        ("RFO_QUEUE_URL".into(), format!("kafka://{brokers}/{topic}")),
        ("RFO_INPUT_URL".into(), env("RFO_INPUT_URL")),
        ("RFO_DATABASE_URL".into(), env("RFO_DATABASE_URL")),
        ("RFO_S3_FORCE_PATH_STYLE".into(), "true".into()),
    ];
    for name in [
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
    ] {
        envs.push((name.into(), env(name)));
    }
    envs
}

pub fn brokers() -> String {
    env("RFO_QUEUE_URL")
        .trim_start_matches("kafka://")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

pub async fn new_topic() -> String {
    let topic = format!("rfo-test-{}", Uuid::now_v7().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("create a Kafka admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    for result in results {
        result.expect("topic created");
    }
    topic
}

pub async fn put_input(key: &str) {
    let bucket = env("RFO_INPUT_URL")
        .trim_start_matches("s3://")
        .trim_end_matches('/')
        .to_owned();
    let s3 = rfo_core::s3::client(&S3Settings {
        force_path_style: true,
        ..S3Settings::default()
    })
    .await;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(b"not read by the API".to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("upload test input {key:?}: {e:?}"));
}

/// A token printed by `rfo-api new-token`, with its entry.
pub struct Token {
    pub token: String,
    pub entry: String,
}

pub fn new_token(name: &str, scopes: &str) -> Token {
    let output = Command::new(API)
        .args(["new-token", "--name", name, "--scopes", scopes])
        .output()
        .expect("run rfo-api new-token");
    assert!(output.status.success(), "new-token failed: {output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} line in {stdout:?}"))
            .to_owned()
    };
    Token {
        token: field("token: "),
        entry: field("entry: "),
    }
}

/// An `rfo-api` child process, killed when dropped.
pub struct Api {
    pub child: Child,
    pub log: PathBuf,
    pub address: String,
}

impl Api {
    /// Starts an API with the stack's settings plus `extra`, and waits until it listens.
    pub async fn start(test: &str, extra: &[(&str, String)]) -> Api {
        let api = Api::spawn(test, &stack_env(&new_topic().await), extra);
        api.wait_listening().await;
        api
    }

    pub fn spawn(test: &str, base: &[(String, String)], extra: &[(&str, String)]) -> Api {
        let port = free_port();
        let log = log_dir().join(format!("{test}.log"));
        let file = std::fs::File::create(&log).expect("create log file");
        let mut command = Command::new(API);
        command.env_clear();
        command.env("PATH", env("PATH"));
        command.env("RUST_LOG", "info");
        command.env("RFO_LISTEN", format!("127.0.0.1:{port}"));
        command.envs(base.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command.envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let child = command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start rfo-api");
        Api {
            child,
            log,
            address: format!("127.0.0.1:{port}"),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn wait_listening(&self) {
        let deadline = Instant::now() + START_WAIT;
        while TcpStream::connect(&self.address).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "rfo-api did not listen in time; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the process to exit by itself, as it must on an invalid setting.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll rfo-api") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rfo-api kept running; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
