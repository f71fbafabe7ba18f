//! Fault-injection tests against the real Kafka, S3 server and PostgreSQL of `ops/stack`.
//!
//! Each test runs at least 300 small jobs through `rfo-api` and `rfo-worker` processes and
//! injects a fault while they run: SIGKILL, SIGTERM, a service stopped or restarted, a stalled
//! download, or workers joining and leaving the group. It then checks that every job is `done`
//! exactly once: one row, the overlay and its preview in the output bucket and nothing else
//! under the job's key, no multipart upload left open, nothing in the dead-letter topic.
//!
//! The workers stall every download for `PACE_MS` through the test-only `RFO_FAILPOINTS`, so a
//! run of small images lasts long enough for a fault to strike mid-run while the CPU stays
//! mostly idle. The tests stop and start the stack's services, so they take one lock and run
//! one at a time. `RFO_FAULTS_LONG=1` runs more jobs and more kills, and `RFO_FAULTS_SEED`
//! repeats the random kill moments of an earlier run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Process, Stack};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::Timeout;
use serde_json::Value;
use uuid::Uuid;

/// Delay of every download, which sets the pace of a run: two downloads at a time make at
/// most 20 jobs a second.
const PACE_MS: u64 = 100;
const DOWNLOAD_CONCURRENCY: &str = "2";
/// Stall of the downloads held across SIGTERM with the broker down: longer than stopping the
/// broker takes, and shorter than the worker's default shutdown timeout of 30 s.
const STALL_MS: u64 = 20_000;
/// Maximum wait for a whole run to finish, faults included. It is generous, for loaded machines.
const RUN_WAIT: Duration = Duration::from_secs(420);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn long_runs() -> bool {
    std::env::var("RFO_FAULTS_LONG").is_ok_and(|v| v == "1")
}

fn job_count() -> usize {
    if long_runs() { 1000 } else { 300 }
}

/// A small, seedable random number generator (SplitMix64), so that the kill moments of a
/// failed run can be repeated from its printed seed.
struct SplitMix(u64);

impl SplitMix {
    fn from_env() -> SplitMix {
        let seed = match std::env::var("RFO_FAULTS_SEED") {
            Ok(value) => value
                .parse()
                .unwrap_or_else(|_| panic!("RFO_FAULTS_SEED={value:?} is not a u64")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        println!("fault seed: {seed} (repeat with RFO_FAULTS_SEED={seed})");
        SplitMix(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a number in `low..high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// Runs `ops/stack COMMAND SERVICE` of this checkout, with the stack's ports from the
/// environment.
fn stack_command(command: &str, service: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops/stack");
    let started = Instant::now();
    let output = Command::new(&script)
        .args([command, service])
        .output()
        .unwrap_or_else(|e| panic!("run {} {command} {service}: {e}", script.display()));
    assert!(
        output.status.success(),
        "ops/stack {command} {service} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "ops/stack {command} {service} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Starts a stopped service again when dropped, so a failed test leaves the stack running
/// for the tests after it.
struct Restore(&'static str);

impl Drop for Restore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops/stack"))
                .args(["start", self.0])
                .output();
        }
    }
}

/// Encodes a gray PNG of 48 by 48 pixels with a bright square whose place depends on `index`.
fn small_png(index: usize) -> Vec<u8> {
    let (width, height) = (48u32, 48u32);
    let (sx, sy) = ((index * 7) % 32, (index * 13) % 32);
    let mut pixels = vec![30u8; (width * height) as usize];
    for y in sy..sy + 12 {
        for x in sx..sx + 12 {
            pixels[y * width as usize + x] = 220;
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&pixels).unwrap();
    }
    out
}

/// One test's API, topic and workers.
struct Run {
    name: String,
    stack: Stack,
    topic: String,
    group: String,
    api: Process,
    api_url: String,
    http: reqwest::Client,
    workers: Vec<Process>,
    db: sqlx::PgPool,
    jobs: Vec<String>,
}

impl Run {
    async fn start(name: &str) -> Run {
        let stack = Stack::from_env();
        let topic = stack.new_topic(6).await;
        let group = format!("{topic}-workers");
        let port = common::pick_port();
        let mut envs = common::api_env(&stack, &topic, port);
        envs.push(("RFO_PUBLISH_TIMEOUT_MS", "2000".to_owned()));
        let (api, api_url) = common::spawn_api(name, envs, port);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let deadline = Instant::now() + common::WAIT;
        loop {
            if let Ok(r) = http.get(format!("{api_url}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rfo-api not ready in time; log:\n{}",
                api.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let db = stack.db().await;
        Run {
            name: name.to_owned(),
            stack,
            topic,
            group,
            api,
            api_url,
            http,
            workers: Vec::new(),
            db,
            jobs: Vec::new(),
        }
    }

    /// Starts a worker in the run's group with the pacing failpoint, `failpoints` added to
    /// it, and `extra` added to its environment. Returns its index in `workers`.
    fn add_worker(&mut self, failpoints: &str, extra: &[(&'static str, &str)]) -> usize {
        let mut envs = common::base_env(&self.stack, &self.topic);
        envs.push((
            "RFO_OUTPUT_URL",
            format!("s3://{}", self.stack.output_bucket),
        ));
        envs.push(("RFO_CONSUMER_GROUP", self.group.clone()));
        envs.push((
            "RFO_METRICS_LISTEN",
            format!("127.0.0.1:{}", common::pick_port()),
        ));
        envs.push(("RFO_DOWNLOAD_CONCURRENCY", DOWNLOAD_CONCURRENCY.to_owned()));
        // A killed member leaves the group after the session timeout, 6 s being the broker's
        // default minimum; until then its partitions wait.
        envs.push(("RFO_KAFKA_SESSION_TIMEOUT_MS", "6000".to_owned()));
        let mut rules = format!("download=sleep({PACE_MS})");
        if !failpoints.is_empty() {
            rules.push(';');
            rules.push_str(failpoints);
        }
        envs.push(("RFO_FAILPOINTS", rules));
        for (key, value) in extra {
            envs.retain(|(k, _)| k != key);
            envs.push((key, (*value).to_owned()));
        }
        let index = self.workers.len();
        let log = common::log_dir(&self.name).join(format!("worker-{index}.log"));
        self.workers.push(Process::spawn("rfo-worker", &envs, log));
        index
    }

    /// Uploads `count` small images and submits a job for each.
    async fn submit_jobs(&mut self, count: usize) {
        let prefix = format!("faults-{}", Uuid::now_v7().simple());
        let keys: Vec<String> = (0..count)
            .map(|i| format!("{prefix}/image-{i:04}.png"))
            .collect();
        let stack = &self.stack;
        futures::stream::iter(keys.iter().enumerate())
            .for_each_concurrent(16, |(i, key)| async move {
                stack.put_input(key, small_png(i)).await;
            })
            .await;
        let submitted: Vec<String> = futures::stream::iter(keys.iter())
            .map(|key| self.submit(key))
            .buffered(8)
            .map(|(status, body)| {
                assert_eq!(status, 202, "submit: {body}");
                body["job_id"].as_str().unwrap().to_owned()
            })
            .collect()
            .await;
        self.jobs.extend(submitted);
    }

    async fn submit(&self, key: &str) -> (u16, Value) {
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

    /// Number of this run's jobs that are `done`.
    async fn done(&self) -> usize {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1::uuid[]) AND status = 'done'",
        )
        .bind(&self.jobs)
        .fetch_one(&self.db)
        .await
        .unwrap_or((-1,));
        count.max(0) as usize
    }

    /// Waits until at least `target` jobs are done, and returns how many are.
    async fn wait_done(&self, target: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let done = self.done().await;
            if done >= target {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "{}: only {done} of {target} jobs done in {within:?}; worker logs in {}",
                self.name,
                common::log_dir(&self.name).display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the log of `worker` has a line that `matches`, and returns it without
    /// colors.
    async fn wait_log_line(&self, worker: usize, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + common::WAIT;
        loop {
            if let Some(line) = self.log(worker).lines().map(plain).find(|l| matches(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no matching line in the log of worker {worker} within {:?}",
                common::WAIT
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Returns the status of one job's row.
    async fn status(&self, job_id: &str) -> String {
        let (status,): (String,) =
            sqlx::query_as("SELECT status FROM jobs WHERE job_id = $1::uuid")
                .bind(job_id)
                .fetch_one(&self.db)
                .await
                .unwrap();
        status
    }

    /// Waits until `worker` exits, and returns its exit status.
    async fn wait_exit(&mut self, worker: usize, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.workers[worker].child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {worker} did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks that every job is done exactly once, prints a summary line for the reliability
    /// table, and returns how many deliveries were processed again.
    async fn verify(&self) -> u64 {
        let rows: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
            "SELECT job_id::text, status, attempts, overlay_key FROM jobs WHERE job_id = ANY($1::uuid[])",
        )
        .bind(&self.jobs)
        .fetch_all(&self.db)
        .await
        .unwrap();
        let mut by_job: BTreeMap<&str, usize> = BTreeMap::new();
        for row in &rows {
            *by_job.entry(row.0.as_str()).or_default() += 1;
        }
        let duplicated = by_job.values().filter(|&&n| n > 1).count();
        let not_done: Vec<&(String, String, i32, Option<String>)> =
            rows.iter().filter(|r| r.1 != "done").collect();
        let lost = self.jobs.len() - by_job.len() + not_done.len();
        let reprocessed: u64 = rows.iter().map(|r| (r.2 - 1).max(0) as u64).sum();
        println!(
            "fault summary: test={} jobs={} lost={lost} duplicated_rows={duplicated} reprocessed={reprocessed}",
            self.name,
            self.jobs.len()
        );
        assert_eq!(rows.len(), self.jobs.len(), "one row per job");
        assert_eq!(duplicated, 0, "no job has two rows");
        assert!(not_done.is_empty(), "jobs not done: {not_done:?}");
        for row in &rows {
            assert_eq!(
                row.3.as_deref(),
                Some(format!("overlays/{}.png", row.0).as_str()),
                "overlay key of {}",
                row.0
            );
        }

        let objects = self.list_run_objects().await;
        for job in &self.jobs {
            let found = objects.get(job.as_str()).cloned().unwrap_or_default();
            let expected: BTreeSet<String> = [
                format!("overlays/{job}.png"),
                format!("overlays/{job}.preview.png"),
            ]
            .into();
            assert_eq!(found, expected, "objects of job {job}");
        }

        self.check_multipart_uploads().await;
        self.check_dead_letters();
        reprocessed
    }

    /// Lists the output bucket's objects of this run's jobs, grouped by job id. UUIDv7 job ids
    /// sort by time, so the listing starts at the run's first id and stops after its last.
    async fn list_run_objects(&self) -> BTreeMap<String, BTreeSet<String>> {
        let first = self.jobs.iter().min().unwrap();
        let last = self.jobs.iter().max().unwrap();
        let ours: BTreeSet<&str> = self.jobs.iter().map(String::as_str).collect();
        let end = format!("overlays/{last}.~");
        let s3 = self.stack.s3().await;
        let mut objects: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut pages = s3
            .list_objects_v2()
            .bucket(&self.stack.output_bucket)
            .prefix("overlays/")
            .start_after(format!("overlays/{first}"))
            .into_paginator()
            .send();
        'pages: while let Some(page) = pages.next().await {
            let page = page.expect("list the output bucket");
            for object in page.contents() {
                let key = object.key().unwrap_or_default();
                if key > end.as_str() {
                    break 'pages;
                }
                let job = key
                    .trim_start_matches("overlays/")
                    .split('.')
                    .next()
                    .unwrap_or_default();
                if ours.contains(job) {
                    objects
                        .entry(job.to_owned())
                        .or_default()
                        .insert(key.to_owned());
                }
            }
        }
        objects
    }

    /// Checks that no multipart upload of this run's jobs is open, where the S3 server
    /// implements ListMultipartUploads.
    async fn check_multipart_uploads(&self) {
        let s3 = self.stack.s3().await;
        match s3
            .list_multipart_uploads()
            .bucket(&self.stack.output_bucket)
            .prefix("overlays/")
            .send()
            .await
        {
            Ok(listing) => {
                let open: Vec<&str> = listing
                    .uploads()
                    .iter()
                    .filter_map(|u| u.key())
                    .filter(|key| self.jobs.iter().any(|job| key.contains(job.as_str())))
                    .collect();
                println!(
                    "ListMultipartUploads: {} open in the output bucket, {} of this run",
                    listing.uploads().len(),
                    open.len()
                );
                assert!(open.is_empty(), "open multipart uploads: {open:?}");
            }
            Err(error) => println!(
                "ListMultipartUploads is not answered by this S3 server ({error:?}); open uploads not checked"
            ),
        }
    }

    fn check_dead_letters(&self) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stack.brokers)
            .create()
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks(
                &format!("{}.dlq", self.topic),
                0,
                Timeout::After(Duration::from_secs(30)),
            )
            .expect("read the dead-letter topic's offsets");
        assert_eq!(high - low, 0, "no job went to the dead-letter topic");
    }

    fn log(&self, worker: usize) -> String {
        self.workers[worker].log_text()
    }

    fn kill(&mut self, worker: usize) {
        let _ = self.workers[worker].child.kill();
        let _ = self.workers[worker].child.wait();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: logs of the API and the workers are in {} (API: {})",
                self.name,
                common::log_dir(&self.name).display(),
                self.api.log.display()
            );
        }
    }
}

/// Removes the ANSI color sequences that the log formatter writes around field names.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Returns the `failpoint fired` line of a log for `point`, without colors, if any.
fn failpoint_line(log: &str, point: &str) -> Option<String> {
    log.lines().map(plain).find(|line| {
        line.contains("failpoint fired") && line.contains(&format!("point=\"{point}\""))
    })
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(&format!("{name}=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start("sigkill_at_random_moments").await;
    let mut random = SplitMix::from_env();
    let total = job_count();
    run.submit_jobs(total).await;

    // First kill: exactly between upload and database insert, on a random upload.
    let hit = random.range(10, 60);
    let worker = run.add_worker(&format!("after-upload=kill@{hit}"), &[]);
    let status = run.wait_exit(worker, common::WAIT).await;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    let line = failpoint_line(&run.log(worker), "after-upload")
        .expect("the worker logged the after-upload failpoint");
    println!("kill 1 (after upload, hit {hit}): {line}");
    let job_id = field(&line, "job_id").expect("the failpoint line names the job");
    let overlay = run
        .stack
        .get_output(&format!("overlays/{job_id}.png"))
        .await;
    assert!(overlay.is_some(), "the killed job's overlay was uploaded");
    assert_eq!(
        run.status(job_id).await,
        "queued",
        "the killed job's row was not written before the kill"
    );

    // Second kill: after a batch is in the database and before its offsets are committed.
    let hit = random.range(2, 6);
    let worker = run.add_worker(&format!("after-insert=kill@{hit}"), &[]);
    let status = run.wait_exit(worker, common::WAIT).await;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    let line = failpoint_line(&run.log(worker), "after-insert")
        .expect("the worker logged the after-insert failpoint");
    println!("kill 2 (after insert, hit {hit}): {line}");

    // Then SIGKILL at random moments while jobs are in every stage.
    let kills = if long_runs() { 8 } else { 3 };
    // Each one strikes at a random moment after the new worker has recorded its first job,
    // so that it hits a worker with jobs in every stage rather than one still joining the
    // group.
    for kill in 0..kills {
        let before = run.done().await;
        let worker = run.add_worker("", &[]);
        run.wait_done(before + 1, common::WAIT).await;
        let delay = Duration::from_millis(random.range(0, 3_000));
        tokio::time::sleep(delay).await;
        let done = run.done().await;
        run.kill(worker);
        println!(
            "kill {} (random, {} ms after the worker's first recorded job): {} jobs recorded \
             by the killed worker, {done} of {total} done",
            kill + 3,
            delay.as_millis(),
            done - before
        );
    }

    run.add_worker("", &[]);
    run.wait_done(total, RUN_WAIT).await;
    let reprocessed = run.verify().await;
    assert!(
        reprocessed > 0,
        "the after-insert kill leaves recorded jobs whose offsets were not committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_restart_mid_run() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start("kafka_restart_mid_run").await;
    let total = job_count();
    run.submit_jobs(total).await;
    let worker = run.add_worker("", &[]);
    run.wait_done(total / 5, common::WAIT).await;

    let _restore = Restore("kafka");
    stack_command("stop", "kafka");
    // While the broker is down the API answers 503 promptly and marks the job failed, so no
    // job is left queued.
    let key = {
        let key = format!("faults-{}/during-outage.png", Uuid::now_v7().simple());
        run.stack.put_input(&key, small_png(0)).await;
        key
    };
    let started = Instant::now();
    let (status, body) = run.submit(&key).await;
    let elapsed = started.elapsed();
    println!("submit while Kafka is down: {status} after {elapsed:?}");
    assert_eq!(status, 503, "{body}");
    assert!(elapsed < Duration::from_secs(30), "503 took {elapsed:?}");
    assert_eq!(body["error"]["code"], "queue_unavailable", "{body}");
    let outage_job = body["job_id"].as_str().unwrap().to_owned();
    stack_command("start", "kafka");

    run.wait_done(total, RUN_WAIT).await;
    run.verify().await;
    let (status, code): (String, Option<String>) =
        sqlx::query_as("SELECT status, error_code FROM jobs WHERE job_id = $1::uuid")
            .bind(&outage_job)
            .fetch_one(&run.db)
            .await
            .unwrap();
    assert_ne!(
        status, "queued",
        "the job refused with 503 is not left queued"
    );
    if status == "failed" {
        assert_eq!(code.as_deref(), Some("queue_unavailable"));
    }
    assert!(
        run.workers[worker].child.try_wait().unwrap().is_none(),
        "the worker rode out the broker restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_mid_run() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start("postgres_restart_mid_run").await;
    let total = job_count();
    run.submit_jobs(total).await;
    let worker = run.add_worker("", &[]);
    run.wait_done(total / 5, common::WAIT).await;

    let _restore = Restore("postgres");
    stack_command("restart", "postgres");
    run.db = run.stack.db().await;

    run.wait_done(total, RUN_WAIT).await;
    run.verify().await;
    let log = run.log(worker);
    // A restart shorter than the pool's acquire timeout may fail no batch, but the pool's
    // connections are always terminated by it.
    assert!(
        log.contains("database write failed; retrying the batch")
            || log.contains("terminating connection due to administrator command"),
        "the worker saw the database go away"
    );
    assert!(
        run.workers[worker].child.try_wait().unwrap().is_none(),
        "the worker rode out the database restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_stopped_for_15_seconds() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start("s3_stopped_for_15_seconds").await;
    let total = job_count();
    run.submit_jobs(total).await;
    let worker = run.add_worker("", &[]);
    run.wait_done(total / 5, common::WAIT).await;

    let _restore = Restore("s3");
    stack_command("stop", "s3");
    let outage = Instant::now();
    // The outage itself lasts 15 seconds; nothing waits on this sleep for synchronisation.
    tokio::time::sleep(Duration::from_secs(15)).await;
    stack_command("start", "s3");
    println!("S3 server down for {:.1} s", outage.elapsed().as_secs_f64());

    run.wait_done(total, RUN_WAIT).await;
    run.verify().await;
    assert!(
        run.workers[worker].child.try_wait().unwrap().is_none(),
        "the worker rode out the S3 outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_scale_out_and_in() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start("workers_scale_out_and_in").await;
    let total = job_count();
    run.submit_jobs(total).await;
    let first = run.add_worker("", &[]);
    let second = run.add_worker("", &[]);
    run.wait_done(total / 5, common::WAIT).await;
    for worker in [first, second] {
        let log = run.log(worker);
        let assigned = log
            .lines()
            .filter(|l| l.contains("partitions assigned") && !l.contains("partitions=[]"))
            .count();
        assert!(assigned > 0, "worker {worker} got partitions:\n{log}");
    }

    // Scale out to three workers, then kill one of the first two.
    let third = run.add_worker("", &[]);
    let done = run.wait_done(total / 2, RUN_WAIT).await;
    run.kill(first);
    println!("killed worker {first} with {done} of {total} jobs done");

    run.wait_done(total, RUN_WAIT).await;
    run.verify().await;
    let log = run.log(third);
    assert!(
        log.lines()
            .any(|l| l.contains("partitions assigned") && !l.contains("partitions=[]")),
        "the third worker got partitions:\n{log}"
    );
    for worker in [second, third] {
        assert!(
            run.workers[worker].child.try_wait().unwrap().is_none(),
            "worker {worker} is still running"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_stalled_past_poll_interval() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start("download_stalled_past_poll_interval").await;
    let total = job_count();
    run.submit_jobs(total).await;
    // One download stalls 15 s, longer than the 10 s poll interval.
    let worker = run.add_worker(
        "download=sleep(15000)@40",
        &[("RFO_KAFKA_MAX_POLL_INTERVAL_MS", "10000")],
    );
    run.wait_done(total, RUN_WAIT).await;
    run.verify().await;
    let log = run.log(worker);
    let line = log
        .lines()
        .map(plain)
        .find(|l| l.contains("failpoint fired") && l.contains("sleep_ms=15000"))
        .expect("the download stalled");
    println!("stall: {line}");
    assert!(
        !log.contains("partitions revoked"),
        "the worker stayed in the group:\n{log}"
    );
    assert!(
        run.workers[worker].child.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
}

/// Sends SIGTERM mid-run and returns how long the worker took to exit.
async fn terminate_mid_run(run: &mut Run, worker: usize) -> Duration {
    let started = Instant::now();
    let status = run.workers[worker]
        .terminate(Duration::from_secs(120))
        .expect("the worker exits within 120 s of SIGTERM");
    let elapsed = started.elapsed();
    let log = run.log(worker);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; log:\n{log}"
    );
    assert!(log.contains("fetch stopped"), "the fetch stage stopped");
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_and_commits() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start("sigterm_drains_and_commits").await;
    let total = job_count();
    run.submit_jobs(total).await;
    let worker = run.add_worker("", &[]);
    run.wait_done(total / 3, common::WAIT).await;

    let elapsed = terminate_mid_run(&mut run, worker).await;
    let done = run.done().await;
    println!("SIGTERM with the broker up: exit 0 after {elapsed:?}, {done} of {total} done");
    assert!(run.log(worker).contains("rfo-worker drained"));

    run.add_worker("", &[]);
    run.wait_done(total, RUN_WAIT).await;
    let reprocessed = run.verify().await;
    assert_eq!(
        reprocessed, 0,
        "a drained worker commits what it recorded, so nothing is processed twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_broker_down() {
    let _serial = SERIAL.lock().await;
    let mut run = Run::start("sigterm_with_broker_down").await;
    let total = job_count();
    run.submit_jobs(total).await;
    // Two downloads a third into the run stall long enough for the broker to be stopped
    // around them, so the worker has jobs in flight when SIGTERM arrives.
    let hit = total / 3;
    let stall = format!("sleep({STALL_MS})");
    let worker = run.add_worker(
        &format!("download={stall}@{hit};download={stall}@{}", hit + 1),
        &[],
    );
    let line = run
        .wait_log_line(worker, |line| {
            line.contains(&format!("sleep_ms={STALL_MS}"))
        })
        .await;
    let job_id = field(&line, "job_id").expect("the failpoint line names the job");
    println!("stalled download: {line}");

    let restore = Restore("kafka");
    stack_command("stop", "kafka");
    assert_eq!(
        run.status(job_id).await,
        "queued",
        "the stalled job is still in flight once the broker is down; stopping the broker took \
         longer than the {STALL_MS} ms stall"
    );
    let done = run.done().await;
    let elapsed = terminate_mid_run(&mut run, worker).await;
    let drained = run.done().await;
    println!(
        "SIGTERM with the broker down: exit 0 after {elapsed:?}; {done} of {total} done at \
         SIGTERM, {drained} after exit"
    );
    assert_eq!(
        run.status(job_id).await,
        "done",
        "the job in flight at SIGTERM was recorded before exit, with the broker down"
    );
    stack_command("start", "kafka");
    drop(restore);

    run.add_worker("", &[]);
    run.wait_done(total, RUN_WAIT).await;
    run.verify().await;
}
