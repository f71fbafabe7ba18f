//! `e2e`: end-to-end throughput of rfo on the local stack, against its ceiling and against
//! the Python reference worker.
//!
//! The harness generates (or reuses) the synthetic radiographs, measures the ceiling and
//! uploads the images to the input bucket. Then, for rfo and for the reference worker in
//! turn, it creates a fresh topic, starts `rfo-api` and the worker, submits every image
//! through `POST /submit`, and polls until every job is recorded. With `--embedded` it runs
//! `rfo-worker batch` on the embedded backends instead, with no service. The last line is
//! the summary that scripts parse.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rfo_bench::sampler::{Sample, Sampler, Target, memory_kib, process_cpu_s};
use rfo_bench::stack::{Process, Stack, free_port};
use rfo_bench::{quantile, release_binary, workspace_dir};
use serde_json::Value;

/// End-to-end load run of rfo on the local stack (`eval "$(ops/stack env)"` first). Builds
/// nothing: run `cargo build --release --bins` before.
#[derive(Debug, Parser)]
struct Args {
    /// Distinct synthetic radiographs (generated once, then cached under target/).
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Noise seed of the synthetic set.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Backlog mode: submit this many jobs (cycling over the images) before the worker
    /// starts, to show that memory stays bounded. Skips the reference worker.
    #[arg(long)]
    backlog: Option<usize>,
    /// Skip the reference worker.
    #[arg(long)]
    no_peer: bool,
    /// Jobs given to the reference worker: the first N images. Defaults to all of them.
    #[arg(long)]
    peer_count: Option<usize>,
    /// Ceiling in images per second, measured earlier; measured in this run when missing.
    #[arg(long)]
    ceiling: Option<f64>,
    /// Images the ceiling is measured on: the first N of the set.
    #[arg(long, default_value_t = 24)]
    ceiling_count: usize,
    /// Partitions of the run's topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Maximum wait for all jobs of one phase, in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_s: u64,
    /// Run the pipeline on the embedded backends instead of the stack: `rfo-worker batch` on
    /// the image set, through the same API handlers and stages, with the queue and the
    /// database in SQLite files and the stores in folders of the run. Needs no service and
    /// skips the reference worker, which needs the stack.
    #[arg(long)]
    embedded: bool,
}

/// The worker under test in one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    Rfo,
    Peer,
}

impl Worker {
    fn name(self) -> &'static str {
        match self {
            Worker::Rfo => "rfo",
            Worker::Peer => "peer",
        }
    }
}

/// Figures of one phase.
struct PhaseReport {
    failed: usize,
    jobs_per_s: f64,
    peak_rss_kib: u64,
}

impl PhaseReport {
    /// Prints the peak RSS line of phase `name` and returns its report.
    fn printed(name: &str, failed: usize, jobs_per_s: f64, peak_rss_kib: u64) -> PhaseReport {
        println!(
            "{name}: peak_rss_mib={:.0} (VmHWM)",
            peak_rss_kib as f64 / 1024.0
        );
        PhaseReport {
            failed,
            jobs_per_s,
            peak_rss_kib,
        }
    }
}

/// What one phase needs from the run.
struct RunContext {
    stack: Stack,
    run_id: String,
    run_dir: PathBuf,
    partitions: i32,
    timeout: Duration,
    http: reqwest::Client,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run_id = uuid::Uuid::now_v7().simple().to_string()[..16].to_owned();
    let run_dir = workspace_dir().join("target/bench-runs").join(&run_id);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("failed to create {}", run_dir.display()))?;
    println!("run {run_id}: logs in {}", run_dir.display());
    println!("load average at start: {}", rfo_bench::load_average());
    for binary in ["rfo-api", "rfo-worker"] {
        let path = release_binary(binary);
        if !path.exists() {
            bail!(
                "{} is missing; build it with `cargo build --release --bins`",
                path.display()
            );
        }
    }

    let paths = tokio::task::block_in_place(|| rfo_bench::image_set(args.count, args.seed))?;
    let set_name = paths
        .first()
        .and_then(|path| path.parent())
        .and_then(|dir| dir.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .context("the synthetic set is empty; use --count 1 or more")?;
    let ceiling = match args.ceiling {
        Some(ceiling) => {
            println!("ceiling: images_per_s={ceiling:.3} (given)");
            ceiling
        }
        None => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let subset = &paths[..args.ceiling_count.clamp(1, paths.len())];
            let report =
                tokio::task::block_in_place(|| rfo_bench::ceiling::measure(subset, threads))?;
            rfo_bench::ceiling::print(&report);
            report.images_per_s
        }
    };

    if args.embedded {
        let report = run_embedded(&run_dir, &paths)?;
        println!("load average at end: {}", rfo_bench::load_average());
        print_summary(&report, ceiling, None);
        return Ok(());
    }

    let stack = Stack::from_env()?;
    let started = Instant::now();
    let keys = stack
        .upload_inputs(&paths, &format!("bench/{set_name}"), 4)
        .await?;
    println!(
        "uploaded {} images to s3://{}/bench/{set_name} in {:.1} s (objects already there are kept)",
        keys.len(),
        stack.input_bucket,
        started.elapsed().as_secs_f64()
    );

    let context = RunContext {
        stack,
        run_id,
        run_dir,
        partitions: args.partitions,
        timeout: Duration::from_secs(args.timeout_s),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
    };
    let (rfo, peer) = match args.backlog {
        Some(jobs) => {
            let submitted: Vec<String> = keys.iter().cycle().take(jobs).cloned().collect();
            (
                run_phase(&context, Worker::Rfo, &submitted, true).await?,
                None,
            )
        }
        None => {
            let rfo = run_phase(&context, Worker::Rfo, &keys, false).await?;
            let peer = if args.no_peer {
                None
            } else {
                let count = args.peer_count.unwrap_or(keys.len()).min(keys.len());
                rfo_bench::peer::ensure_venv()?;
                Some(run_phase(&context, Worker::Peer, &keys[..count], false).await?)
            };
            (rfo, peer)
        }
    };

    println!("load average at end: {}", rfo_bench::load_average());
    if rfo.failed > 0 || peer.as_ref().is_some_and(|peer| peer.failed > 0) {
        eprintln!(
            "some jobs failed; see the logs in {}",
            context.run_dir.display()
        );
    }
    print_summary(&rfo, ceiling, peer.as_ref());
    Ok(())
}

/// Prints the reference worker's rate, if it ran, and the machine-readable last line.
fn print_summary(rfo: &PhaseReport, ceiling: f64, peer: Option<&PhaseReport>) {
    let peer_multiple = match peer {
        Some(peer) => {
            println!("peer: jobs_per_s={:.3}", peer.jobs_per_s);
            format!("{:.2}", rfo.jobs_per_s / peer.jobs_per_s)
        }
        None => "na".to_owned(),
    };
    println!(
        "summary: jobs_per_s={:.3} ceiling_fraction={:.3} peer_multiple={peer_multiple} \
         peak_rss_mib={:.0}",
        rfo.jobs_per_s,
        rfo.jobs_per_s / ceiling,
        rfo.peak_rss_kib as f64 / 1024.0
    );
}

/// Runs `rfo-worker batch` on the embedded backends over `paths`, linked into an input
/// folder of the run, and prints its figures.
fn run_embedded(run_dir: &Path, paths: &[PathBuf]) -> anyhow::Result<PhaseReport> {
    let name = "embedded";
    let dir = run_dir.join(name);
    let input = dir.join("input");
    std::fs::create_dir_all(&input)
        .with_context(|| format!("failed to create {}", input.display()))?;
    for path in paths {
        let link = input.join(path.file_name().context("an image path names a file")?);
        // A hard link costs no copy. The copy is for a run folder on another file system.
        std::fs::hard_link(path, &link)
            .or_else(|_| std::fs::copy(path, &link).map(drop))
            .with_context(|| {
                format!("failed to link {} into {}", path.display(), input.display())
            })?;
    }

    let envs = [
        (
            "RFO_QUEUE_URL",
            format!("embedded://{}", dir.join("queue.db").display()),
        ),
        (
            "RFO_DATABASE_URL",
            format!("sqlite://{}", dir.join("rfo.db").display()),
        ),
        ("RFO_OUTPUT_URL", dir.join("output").display().to_string()),
        ("RFO_METRICS_LISTEN", format!("127.0.0.1:{}", free_port()?)),
        ("RUST_LOG", "info".to_owned()),
        ("NO_COLOR", "1".to_owned()),
    ]
    .map(|(key, value)| (key.to_owned(), value));

    println!(
        "{name}: rfo-worker batch over {} images in {}",
        paths.len(),
        input.display()
    );
    let mut process = Process::spawn(
        "rfo-worker batch",
        &release_binary("rfo-worker"),
        &["batch", &input.to_string_lossy()],
        &envs,
        run_dir.join("embedded-worker.log"),
    )?;

    // /proc drops the process when it exits, so memory and CPU are read while it runs.
    let (mut peak_rss_kib, mut cpu_s) = (0, 0.0);
    let status = loop {
        let (_, high_water) = memory_kib(process.pid());
        peak_rss_kib = peak_rss_kib.max(high_water);
        cpu_s = process_cpu_s(process.pid()).max(cpu_s);
        if let Some(status) = process.child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    let log = std::fs::read_to_string(&process.log).unwrap_or_default();
    if !status.success() {
        bail!(
            "rfo-worker batch exited with {status}; see {}",
            process.log.display()
        );
    }

    let summary = log
        .lines()
        .map(strip_ansi)
        .find(|line| line.starts_with("jobs: "))
        .with_context(|| format!("no summary line in {}", process.log.display()))?;
    println!("{name}: {summary}");

    let number_before = |marker: &str| -> Option<f64> {
        let (head, _) = summary.split_once(marker)?;
        head.rsplit([' ', '(']).next()?.parse().ok()
    };
    let jobs_per_s =
        number_before(" images/s").with_context(|| format!("no images/s rate in `{summary}`"))?;
    let failed = number_before(" failed")
        .with_context(|| format!("no failed count in `{summary}`"))? as usize;
    print_stage_percentiles(name, &log);
    println!("{name}: worker CPU {cpu_s:.1} s");
    Ok(PhaseReport::printed(name, failed, jobs_per_s, peak_rss_kib))
}

/// Runs one worker over `keys` on a fresh topic and prints its figures.
async fn run_phase(
    context: &RunContext,
    worker: Worker,
    keys: &[String],
    backlog: bool,
) -> anyhow::Result<PhaseReport> {
    let name = worker.name();
    let stack = &context.stack;
    let topic = format!("rfo-bench-{}-{name}", context.run_id);
    let group = format!("{topic}-workers");
    stack.create_topic(&topic, context.partitions).await?;
    println!(
        "{name}: topic {topic}, {} jobs{}",
        keys.len(),
        if backlog { ", backlog mode" } else { "" }
    );

    let mut envs = vec![
        (
            "RFO_QUEUE_URL".to_owned(),
            format!("kafka://{}/{topic}", stack.brokers),
        ),
        (
            "RFO_INPUT_URL".to_owned(),
            format!("s3://{}", stack.input_bucket),
        ),
        (
            "RFO_OUTPUT_URL".to_owned(),
            format!("s3://{}", stack.output_bucket),
        ),
        ("RFO_DATABASE_URL".to_owned(), stack.database_url.clone()),
        ("RFO_S3_FORCE_PATH_STYLE".to_owned(), "true".to_owned()),
        ("RFO_CONSUMER_GROUP".to_owned(), group.clone()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
        ("NO_COLOR".to_owned(), "1".to_owned()),
    ];
    let api_port = free_port()?;
    let mut api_envs = envs.clone();
    api_envs.push(("RFO_LISTEN".to_owned(), format!("127.0.0.1:{api_port}")));
    // The harness measures the pipeline, so the API runs without tokens, as in the tests.
    api_envs.push(("RFO_AUTH".to_owned(), "off".to_owned()));
    let mut api = Process::spawn(
        "rfo-api",
        &release_binary("rfo-api"),
        &[],
        &api_envs,
        context.run_dir.join(format!("{name}-api.log")),
    )?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    wait_ready(&context.http, &api_url, &mut api).await?;

    let metrics_url = match worker {
        Worker::Rfo => {
            let port = free_port()?;
            envs.push(("RFO_METRICS_LISTEN".to_owned(), format!("127.0.0.1:{port}")));
            Some(format!("http://127.0.0.1:{port}/metrics"))
        }
        Worker::Peer => None,
    };
    let start_worker = || -> anyhow::Result<Process> {
        let log = context.run_dir.join(format!("{name}-worker.log"));
        match worker {
            Worker::Rfo => {
                Process::spawn("rfo-worker", &release_binary("rfo-worker"), &[], &envs, log)
            }
            Worker::Peer => {
                let script = workspace_dir().join("bench/peer/peer_worker.py");
                let script = script.to_string_lossy();
                Process::spawn(
                    "peer worker",
                    &rfo_bench::peer::venv().join("bin/python"),
                    &[&script],
                    &envs,
                    log,
                )
            }
        }
    };
    let target = || Target {
        pid: 0,
        brokers: stack.brokers.clone(),
        topic: topic.clone(),
        partitions: context.partitions,
        group: group.clone(),
    };

    let mut running = None;
    if !backlog {
        let mut process = start_worker()?;
        wait_group_stable(&stack.brokers, &group, &mut process).await?;
        let sampler = Sampler::start(
            Target {
                pid: process.pid(),
                ..target()
            },
            Duration::from_secs(1),
        )?;
        running = Some((process, sampler, Instant::now()));
    }

    let first_submit = chrono::Utc::now();
    let submit_started = Instant::now();
    let job_ids = submit_all(&context.http, &api_url, keys).await?;
    println!(
        "{name}: submitted {} jobs in {:.1} s",
        job_ids.len(),
        submit_started.elapsed().as_secs_f64()
    );

    let (mut process, sampler, worker_started) = match running {
        Some(running) => running,
        None => {
            let mut process = start_worker()?;
            let worker_started = Instant::now();
            let sampler = Sampler::start(
                Target {
                    pid: process.pid(),
                    ..target()
                },
                Duration::from_secs(1),
            )?;
            process.check_running()?;
            (process, sampler, worker_started)
        }
    };
    let worker_cpu_before = sampler.snapshot().first().map_or(0.0, |s| s.process_cpu_s);
    let jobs = wait_all_done(context, &api_url, &job_ids, &mut process, &sampler).await;
    let drain_s = worker_started.elapsed().as_secs_f64();
    let (_, peak_rss_kib) = memory_kib(process.pid());
    let worker_cpu_s = process_cpu_s(process.pid());
    let samples = sampler.stop();
    let jobs = jobs?;
    if let Some(url) = &metrics_url {
        print_stage_histograms(&context.http, url).await;
    }
    process.terminate(Duration::from_secs(30));
    api.terminate(Duration::from_secs(10));

    let failed = jobs.iter().filter(|job| job["status"] != "done").count();
    let last_done = jobs
        .iter()
        .filter_map(|job| job["processed_at"].as_str())
        .filter_map(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .max()
        .context("no job has a processed_at time")?;
    let seconds = (last_done.with_timezone(&chrono::Utc) - first_submit).as_seconds_f64();
    let jobs_per_s = jobs.len() as f64 / seconds;
    println!(
        "{name}: {} jobs ({failed} failed) from first submit to last done in {seconds:.1} s: \
         jobs_per_s={jobs_per_s:.3}",
        jobs.len()
    );
    if backlog {
        println!(
            "{name}: drained the backlog in {drain_s:.1} s from worker start: \
             drain_jobs_per_s={:.3}",
            jobs.len() as f64 / drain_s
        );
    }
    print_stage_percentiles(
        name,
        &std::fs::read_to_string(&process.log).unwrap_or_default(),
    );
    print_samples(name, &samples, worker_cpu_s - worker_cpu_before);
    Ok(PhaseReport::printed(name, failed, jobs_per_s, peak_rss_kib))
}

async fn wait_ready(
    http: &reqwest::Client,
    api_url: &str,
    api: &mut Process,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        api.check_running()?;
        if let Ok(response) = http.get(format!("{api_url}/readyz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "rfo-api was not ready within 60 s; see {}",
                api.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the worker has joined its consumer group and the group is stable, so that
/// the group's start-up is not counted in the throughput.
async fn wait_group_stable(brokers: &str, group: &str, worker: &mut Process) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("failed to create a Kafka client")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        worker.check_running()?;
        let stable = tokio::task::block_in_place(|| {
            consumer
                .fetch_group_list(Some(group), Duration::from_secs(2))
                .ok()
                .and_then(|list| {
                    list.groups()
                        .first()
                        .map(|g| g.state() == "Stable" && !g.members().is_empty())
                })
                .unwrap_or(false)
        });
        if stable {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "consumer group {group} was not stable within 120 s; see {}",
                worker.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Submits every key, 8 requests at a time, and returns the job ids in submission order.
async fn submit_all(
    http: &reqwest::Client,
    api_url: &str,
    keys: &[String],
) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt;
    let url = format!("{api_url}/submit");
    let results: Vec<anyhow::Result<String>> = futures::stream::iter(keys.iter().map(|key| {
        let request = http
            .post(&url)
            .json(&serde_json::json!({ "image_key": key }));
        async move {
            let response = request.send().await.context("POST /submit failed")?;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status.as_u16() != 202 {
                bail!("POST /submit answered {status}: {body}");
            }
            body["job_id"]
                .as_str()
                .map(str::to_owned)
                .context("POST /submit returned no job_id")
        }
    }))
    .buffered(8)
    .collect()
    .await;
    results.into_iter().collect()
}

/// Polls `GET /recent` (and `GET /jobs/{id}` for jobs it does not list) until every job is
/// done or failed, and returns the jobs.
async fn wait_all_done(
    context: &RunContext,
    api_url: &str,
    job_ids: &[String],
    worker: &mut Process,
    sampler: &Sampler,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + context.timeout;
    let mut finished: std::collections::HashMap<String, Value> = Default::default();
    let mut last_report = Instant::now();
    let limit = job_ids.len().clamp(1, 1000);
    loop {
        worker.check_running()?;
        let listed: Vec<Value> = match context
            .http
            .get(format!("{api_url}/recent?n={limit}"))
            .send()
            .await
        {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        for job in listed {
            let Some(id) = job["job_id"].as_str() else {
                continue;
            };
            if job["status"] != "queued" && job_ids.iter().any(|wanted| wanted == id) {
                finished.insert(id.to_owned(), job);
            }
        }
        let remaining = job_ids.len() - finished.len();
        if remaining <= 20 {
            // /recent lists the newest jobs of every run, so it can miss a few of this run's.
            let stragglers: Vec<&String> = job_ids
                .iter()
                .filter(|id| !finished.contains_key(*id))
                .collect();
            for id in stragglers {
                if let Ok(response) = context
                    .http
                    .get(format!("{api_url}/jobs/{id}"))
                    .send()
                    .await
                    && let Ok(job) = response.json::<Value>().await
                    && job["status"] != "queued"
                    && job["status"].is_string()
                {
                    finished.insert(id.clone(), job);
                }
            }
        }
        if finished.len() == job_ids.len() {
            return Ok(job_ids
                .iter()
                .filter_map(|id| finished.remove(id))
                .collect());
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            let lag = sampler.snapshot().last().and_then(|sample| sample.lag);
            println!(
                "  {} of {} jobs recorded, consumer lag {}",
                finished.len(),
                job_ids.len(),
                lag.map_or("unknown".to_owned(), |lag| lag.to_string())
            );
            last_report = Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} jobs finished within {:?}; see {}",
                finished.len(),
                job_ids.len(),
                context.timeout,
                worker.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints p50 and p99 of each stage time of the worker's `job done` log lines.
fn print_stage_percentiles(name: &str, log: &str) {
    let fields = [
        "download_ms",
        "decode_ms",
        "render_ms",
        "upload_ms",
        "insert_ms",
        "total_ms",
    ];
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); fields.len()];
    for line in log
        .lines()
        .map(strip_ansi)
        .filter(|line| line.contains("job done"))
    {
        for token in line.split_whitespace() {
            let Some((key, value)) = token.split_once('=') else {
                continue;
            };
            if let Some(index) = fields.iter().position(|field| *field == key)
                && let Ok(value) = value.parse::<f64>()
            {
                values[index].push(value);
            }
        }
    }
    let mut parts = Vec::new();
    for (field, values) in fields.iter().zip(values.iter_mut()) {
        if let (Some(p50), Some(p99)) = (quantile(values, 0.5), quantile(values, 0.99)) {
            parts.push(format!("{field} p50={p50:.0} p99={p99:.0}"));
        }
    }
    println!(
        "{name}: stage times from the worker log: {}",
        parts.join("; ")
    );
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip a CSI sequence: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Prints the count and mean of each stage of `rfo_stage_duration_seconds`.
async fn print_stage_histograms(http: &reqwest::Client, url: &str) {
    let Ok(response) = http.get(url).send().await else {
        println!("rfo: metrics endpoint {url} did not answer");
        return;
    };
    let text = response.text().await.unwrap_or_default();
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let mut parts = Vec::new();
    for line in text
        .lines()
        .filter(|line| line.starts_with("rfo_stage_duration_seconds_sum"))
    {
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'));
        let Some((labels, _)) = labels else { continue };
        let count_line = format!("rfo_stage_duration_seconds_count{{{labels}}}");
        let count = text
            .lines()
            .find(|l| l.starts_with(&count_line))
            .and_then(value);
        if let (Some(sum), Some(count)) = (value(line), count)
            && count > 0.0
        {
            parts.push(format!(
                "{labels} n={count} mean_ms={:.0}",
                sum / count * 1000.0
            ));
        }
    }
    println!("rfo: rfo_stage_duration_seconds: {}", parts.join("; "));
}

/// Prints the samples, at most about 40 lines, and the CPU use over the phase.
fn print_samples(name: &str, samples: &[Sample], worker_cpu_s: f64) {
    let Some(last) = samples.last() else { return };
    let stride = samples.len().div_ceil(40).max(1);
    println!("{name}: t_s, consumer lag, worker RSS MiB, machine CPU busy %");
    for sample in samples.iter().step_by(stride).chain(std::iter::once(last)) {
        println!(
            "  {:>5.0}  {:>5}  {:>6.0}  {:>3.0}",
            sample.at_s,
            sample.lag.map_or("?".to_owned(), |lag| lag.to_string()),
            sample.rss_kib as f64 / 1024.0,
            sample.machine_busy * 100.0
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy: Vec<f64> = samples.iter().skip(1).map(|s| s.machine_busy).collect();
    let machine = busy.iter().sum::<f64>() / busy.len().max(1) as f64;
    let worker = worker_cpu_s / last.at_s.max(1e-9) / cores;
    println!(
        "{name}: cpu worker={:.0}% machine={:.0}% (of {cores} cores, averaged over {:.0} s)",
        worker * 100.0,
        machine * 100.0,
        last.at_s
    );
}
