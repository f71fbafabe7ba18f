//! The single-machine commands: `all-in-one` runs the HTTP API and the pipeline in one
//! process, and `batch` processes a folder of radiographs through the same API handlers and
//! pipeline, then prints a summary and what `GET /recent` returns.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rfo_api::routes::{self, AppState};
use rfo_core::config::StorageUrl;
use rfo_core::db::JobStore;
use rfo_core::record::JobStatus;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::settings::{BatchArgs, Settings};
use rfo_image::synth;

/// Width and height of the synthetic radiographs `batch` generates when given no folder.
/// Smaller than the benchmark's images, so that a first run finishes in seconds.
const SYNTHETIC_SIZE: (u32, u32) = (2048, 2560);

/// Parses the API's settings from its own environment, with the queue, input and database
/// URLs of the worker, so that both sides use the same backends.
fn api_args(settings: &Settings, input_url: &str) -> anyhow::Result<rfo_api::settings::Args> {
    let args = rfo_api::settings::Args::try_parse_from([
        "rfo-api",
        "--queue-url",
        &url_text(&settings.queue),
        "--input-url",
        input_url,
        "--database-url",
        &database_text(&settings.database),
    ])?;
    Ok(args)
}

fn url_text(queue: &rfo_core::config::QueueUrl) -> String {
    match queue {
        rfo_core::config::QueueUrl::Kafka { brokers, topic } => {
            format!("kafka://{brokers}/{topic}")
        }
        rfo_core::config::QueueUrl::Embedded { path } => format!("embedded://{}", path.display()),
    }
}

fn database_text(database: &rfo_core::config::DatabaseUrl) -> String {
    match database {
        rfo_core::config::DatabaseUrl::Postgres(url) => url.clone(),
        rfo_core::config::DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
    }
}

fn storage_text(storage: &StorageUrl) -> String {
    match storage {
        StorageUrl::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        StorageUrl::File { root } => std::path::absolute(root)
            .unwrap_or_else(|_| root.clone())
            .display()
            .to_string(),
    }
}

/// Starts the pipeline on its own task; returns the task and the sender that stops it.
fn start_pipeline(
    settings: Settings,
    store: JobStore,
) -> (JoinHandle<anyhow::Result<()>>, watch::Sender<bool>) {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(crate::pipeline::run(settings, store, shutdown_rx));
    (task, shutdown_tx)
}

/// Stops the pipeline and waits up to `timeout` for it to drain.
async fn stop_pipeline(
    task: JoinHandle<anyhow::Result<()>>,
    shutdown: watch::Sender<bool>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let _ = shutdown.send(true);
    match tokio::time::timeout(timeout, task).await {
        Ok(result) => result.context("the pipeline panicked")?,
        Err(_) => {
            tracing::warn!(
                "the pipeline did not drain in time; unfinished jobs will be delivered again"
            );
            Ok(())
        }
    }
}

/// Runs `rfo-worker all-in-one` until SIGTERM or Ctrl-C.
pub async fn all_in_one(settings: Settings) -> anyhow::Result<()> {
    let args = api_args(&settings, &storage_text(&settings.input))?;
    let api = args.validate()?;
    let http = args.http.validate()?;
    let auth = Arc::new(rfo_api::auth::Authenticator::from_args(&args.auth)?);
    let metrics = crate::telemetry::prometheus_builder()
        .install_recorder()
        .context("failed to install the metrics recorder")?;
    let state = AppState::connect(&api, metrics).await?;
    if settings.migrate {
        migrate(&state.store).await?;
    }
    let timeout = Duration::from_secs(settings.shutdown_timeout_s);
    let (pipeline, shutdown) = start_pipeline(settings, state.store.clone());
    // The server returns after SIGTERM or Ctrl-C, once its connections have closed.
    let state = Arc::new(state);
    rfo_api::republish::spawn(state.clone(), api.republish);
    let served = rfo_api::server::serve(api.listen, state, auth, http).await;
    stop_pipeline(pipeline, shutdown, timeout).await?;
    served
}

async fn migrate(store: &JobStore) -> anyhow::Result<()> {
    store
        .migrate()
        .await
        .context("failed to apply database migrations; is RFO_DATABASE_URL reachable?")
}

/// Runs `rfo-worker batch`: submits every PNG of the folder, waits for the results and prints
/// the summary on stdout.
pub async fn batch(mut settings: Settings, args: &BatchArgs) -> anyhow::Result<()> {
    let folder = match &args.folder {
        Some(folder) => folder.clone(),
        None => generate_synthetic(Path::new("data/synthetic"), args.synthetic)?,
    };
    let files = png_files(&folder)?;
    if files.is_empty() {
        anyhow::bail!(
            "no .png files in {}; pass a folder of PNG radiographs, or no folder to generate synthetic ones",
            folder.display()
        );
    }
    settings.input = StorageUrl::File {
        root: folder.clone(),
    };
    let output = storage_text(&settings.output);
    let api = api_args(&settings, &folder.display().to_string())?.validate()?;
    let metrics = crate::telemetry::prometheus_builder()
        .install_recorder()
        .context("failed to install the metrics recorder")?;
    let state = AppState::connect(&api, metrics).await?;
    migrate(&state.store).await?;
    let timeout = Duration::from_secs(settings.shutdown_timeout_s);
    let (pipeline, shutdown) = start_pipeline(settings, state.store.clone());

    let started = Instant::now();
    let mut jobs = Vec::with_capacity(files.len());
    let mut rejected = 0;
    for name in &files {
        let body = serde_json::json!({ "image_key": name }).to_string();
        let response = routes::submit_body(&state, body.as_bytes()).await;
        let status = response.status();
        let json = response_json(response).await;
        match json["job_id"]
            .as_str()
            .and_then(|id| id.parse::<Uuid>().ok())
        {
            Some(job_id) if status.is_success() => jobs.push(job_id),
            _ => {
                rejected += 1;
                eprintln!(
                    "{name}: not submitted ({status}): {}",
                    json["error"]["message"]
                );
            }
        }
    }
    let outcome = wait_for_jobs(&state.store, &jobs, Duration::from_secs(args.timeout_s)).await;
    let elapsed = started.elapsed();
    stop_pipeline(pipeline, shutdown, timeout).await?;
    let outcome = outcome?;

    let limit = jobs.len().clamp(1, 1000);
    let recent = response_json(routes::recent(&state, Some(&format!("n={limit}"))).await).await;
    println!("GET /recent?n={limit}:");
    println!("{}", serde_json::to_string_pretty(&recent)?);
    println!();
    print_summary(&outcome, rejected, elapsed, &folder, &output);
    Ok(())
}

async fn response_json(response: routes::HttpResponse) -> serde_json::Value {
    use http_body_util::BodyExt;
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

/// Names of the `.png` files directly in `folder`, sorted.
fn png_files(folder: &Path) -> anyhow::Result<Vec<String>> {
    let entries = std::fs::read_dir(folder)
        .with_context(|| format!("cannot read the folder {}", folder.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry =
            entry.with_context(|| format!("cannot read the folder {}", folder.display()))?;
        let path = entry.path();
        let is_png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn generate_synthetic(folder: &Path, count: usize) -> anyhow::Result<PathBuf> {
    eprintln!(
        "no folder given: generating {count} synthetic radiographs of {} x {} pixels in {}",
        SYNTHETIC_SIZE.0,
        SYNTHETIC_SIZE.1,
        folder.display()
    );
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    for index in 0..count {
        let (width, height) = SYNTHETIC_SIZE;
        let spec = synth::SynthSpec::new(width, height, synth::Source::Scratch, index as u64);
        let bytes = synth::generate(&spec)?;
        let path = folder.join(synth::set_file_name(index));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(folder.to_path_buf())
}

/// Counts of the submitted jobs by final state.
struct Outcome {
    done: usize,
    failed: BTreeMap<String, usize>,
    unfinished: usize,
}

/// Polls the job table until every job is `done` or `failed`, or `timeout` passes. Shows a
/// progress bar on a terminal and a log line every few seconds otherwise.
async fn wait_for_jobs(
    store: &JobStore,
    jobs: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + timeout;
    let mut pending: HashSet<Uuid> = jobs.iter().copied().collect();
    let mut outcome = Outcome {
        done: 0,
        failed: BTreeMap::new(),
        unfinished: 0,
    };
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| indicatif::ProgressBar::new(jobs.len() as u64));
    let mut last_line = Instant::now();
    while !pending.is_empty() && Instant::now() < deadline {
        let ids: Vec<Uuid> = pending.iter().copied().collect();
        for job_id in ids {
            let Some(job) = store.get(job_id).await? else {
                continue;
            };
            match job.status {
                JobStatus::Queued => continue,
                JobStatus::Done => outcome.done += 1,
                JobStatus::Failed => {
                    let code = job.error.map(|e| e.code.to_string()).unwrap_or_default();
                    *outcome.failed.entry(code).or_default() += 1;
                }
            }
            pending.remove(&job_id);
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        if bar.is_none() && last_line.elapsed() >= Duration::from_secs(5) {
            let finished = jobs.len() - pending.len();
            tracing::info!(finished, total = jobs.len(), "batch progress");
            last_line = Instant::now();
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    outcome.unfinished = pending.len();
    Ok(outcome)
}

fn print_summary(
    outcome: &Outcome,
    rejected: usize,
    elapsed: Duration,
    input: &Path,
    output: &str,
) {
    let failed: usize = outcome.failed.values().sum();
    let finished = outcome.done + failed;
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        finished as f64 / seconds
    } else {
        0.0
    };
    println!(
        "jobs: {} done, {failed} failed, {} unfinished, {rejected} not submitted; {finished} images in {seconds:.1} s ({rate:.2} images/s)",
        outcome.done, outcome.unfinished
    );
    for (code, count) in &outcome.failed {
        println!("failed with {code}: {count}");
    }
    println!("input: {}", input.display());
    println!("overlays: {output}/overlays/");
}
