//! `api_load`: `POST /submit` under load, for rfo-api and for the Python reference API.
//!
//! For each API in turn the harness creates a fresh topic, starts the API on loopback, and
//! sends `--requests` submits from `--concurrency` connections in a closed loop (each sends its
//! next request when the previous one has its response). Every submit names one small object that
//! the harness uploads to the input bucket first, so each request runs the whole path: the
//! object lookup, the database insert and the Kafka publish. The last line is the summary that
//! scripts parse.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_s3::primitives::ByteStream;
use clap::Parser;
use futures::StreamExt;
use rfo_bench::stack::{Process, Stack, free_port};
use rfo_bench::{load_average, quantile, release_binary, workspace_dir};

/// Load test of `POST /submit` on the local stack (`eval "$(ops/stack env)"` first). Builds
/// nothing: run `cargo build --release -p rfo-api` before.
#[derive(Debug, Parser)]
struct Args {
    /// Submits sent to each API after the warm-up.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Requests in flight at once (closed loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Submits sent to each API before the measurement, to open connections and warm caches.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// gunicorn worker processes of the reference API. 0 means 2 per core plus 1, the
    /// usual rule of thumb for gunicorn's sync workers.
    #[arg(long, default_value_t = 0)]
    peer_workers: usize,
    /// Skip the reference API.
    #[arg(long)]
    no_peer: bool,
    /// Partitions of each run's topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

/// Figures of one API.
struct LoadReport {
    accepted: usize,
    rejected: usize,
    accepted_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.requests > 0 && args.concurrency > 0,
        "--requests and --concurrency must be at least 1"
    );
    let stack = Stack::from_env()?;
    let run_id = uuid::Uuid::now_v7().simple().to_string()[..16].to_owned();
    let run_dir = workspace_dir().join("target/bench-runs").join(&run_id);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("failed to create {}", run_dir.display()))?;
    println!("run {run_id}: logs in {}", run_dir.display());
    println!(
        "requests={} concurrency={} warmup={}; load average at start: {}",
        args.requests,
        args.concurrency,
        args.warmup,
        load_average()
    );

    let key = format!("bench-api/{run_id}/input.png");
    stack
        .s3()
        .await
        .put_object()
        .bucket(&stack.input_bucket)
        .key(&key)
        .body(ByteStream::from_static(b"only its existence is checked"))
        .send()
        .await
        .with_context(|| format!("failed to upload {key} to the input bucket"))?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let rfo = run_api(&args, &stack, &http, &run_id, &run_dir, Api::Rfo, &key).await?;
    let peer = if args.no_peer {
        None
    } else {
        rfo_bench::peer::ensure_venv()?;
        Some(run_api(&args, &stack, &http, &run_id, &run_dir, Api::Peer, &key).await?)
    };
    println!("load average at end: {}", load_average());

    let mut summary = format!(
        "api summary: rfo_accepted_per_s={:.1} rfo_p50_ms={:.1} rfo_p99_ms={:.1}",
        rfo.accepted_per_s, rfo.p50_ms, rfo.p99_ms
    );
    if let Some(peer) = &peer {
        summary.push_str(&format!(
            " peer_accepted_per_s={:.1} peer_p50_ms={:.1} peer_p99_ms={:.1} multiple={:.2}",
            peer.accepted_per_s,
            peer.p50_ms,
            peer.p99_ms,
            rfo.accepted_per_s / peer.accepted_per_s
        ));
    }
    println!("{summary}");
    let rejected = rfo.rejected + peer.as_ref().map_or(0, |peer| peer.rejected);
    if rejected > 0 {
        bail!(
            "{rejected} submits were not accepted; see the API logs in {}",
            run_dir.display()
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Api {
    Rfo,
    Peer,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Rfo => "rfo-api",
            Api::Peer => "peer-api",
        }
    }
}

async fn run_api(
    args: &Args,
    stack: &Stack,
    http: &reqwest::Client,
    run_id: &str,
    run_dir: &std::path::Path,
    api: Api,
    key: &str,
) -> anyhow::Result<LoadReport> {
    let name = api.name();
    let topic = format!("rfo-bench-{run_id}-{name}");
    stack.create_topic(&topic, args.partitions).await?;
    let port = free_port()?;
    let envs = vec![
        (
            "RFO_QUEUE_URL".to_owned(),
            format!("kafka://{}/{topic}", stack.brokers),
        ),
        (
            "RFO_INPUT_URL".to_owned(),
            format!("s3://{}", stack.input_bucket),
        ),
        ("RFO_DATABASE_URL".to_owned(), stack.database_url.clone()),
        ("RFO_S3_FORCE_PATH_STYLE".to_owned(), "true".to_owned()),
        ("RFO_LISTEN".to_owned(), format!("127.0.0.1:{port}")),
        // Tokens are not what is measured; the tests cover authentication.
        ("RFO_AUTH".to_owned(), "off".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];
    let log = run_dir.join(format!("{name}.log"));
    let mut process = match api {
        Api::Rfo => Process::spawn(name, &release_binary("rfo-api"), &[], &envs, log)?,
        Api::Peer => {
            let workers = match args.peer_workers {
                0 => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()) + 1,
                workers => workers,
            };
            let bind = format!("127.0.0.1:{port}");
            let workers = workers.to_string();
            let folder = workspace_dir().join("bench/peer");
            let folder = folder.to_string_lossy();
            let gunicorn = rfo_bench::peer::venv().join("bin/gunicorn");
            let gunicorn_args = [
                "--workers",
                &workers,
                "--bind",
                &bind,
                "--chdir",
                &folder,
                "--log-level",
                "warning",
                "peer_api:app",
            ];
            println!("{name}: gunicorn with {workers} sync workers");
            Process::spawn(name, &gunicorn, &gunicorn_args, &envs, log)?
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(http, &base, &mut process).await?;

    let url = format!("{base}/submit");
    let body = serde_json::json!({ "image_key": key }).to_string();
    let warmup = send_all(http, &url, &body, args.warmup, args.concurrency).await;
    let warm_failures = warmup.iter().filter(|(status, _)| *status != 202).count();
    if warm_failures > 0 {
        bail!(
            "{name}: {warm_failures} of {} warm-up submits were not accepted (first status {:?}); see {}",
            args.warmup,
            warmup
                .iter()
                .find(|(status, _)| *status != 202)
                .map(|(s, _)| *s),
            process.log.display()
        );
    }

    let started = Instant::now();
    let results = send_all(http, &url, &body, args.requests, args.concurrency).await;
    let seconds = started.elapsed().as_secs_f64();
    process.check_running()?;
    process.terminate(Duration::from_secs(10));

    let accepted = results.iter().filter(|(status, _)| *status == 202).count();
    let mut latencies: Vec<f64> = results
        .iter()
        .filter(|(status, _)| *status == 202)
        .map(|(_, ms)| *ms)
        .collect();
    let report = LoadReport {
        accepted,
        rejected: results.len() - accepted,
        accepted_per_s: accepted as f64 / seconds,
        p50_ms: quantile(&mut latencies, 0.5).unwrap_or(f64::NAN),
        p99_ms: quantile(&mut latencies, 0.99).unwrap_or(f64::NAN),
    };
    println!(
        "{name}: {} accepted, {} not, in {seconds:.1} s: accepted_per_s={:.1} p50_ms={:.1} \
         p99_ms={:.1}",
        report.accepted, report.rejected, report.accepted_per_s, report.p50_ms, report.p99_ms
    );
    Ok(report)
}

/// Sends `count` submits, `concurrency` at a time, and returns each one's status (0 when no
/// response came) and latency in milliseconds.
async fn send_all(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    count: usize,
    concurrency: usize,
) -> Vec<(u16, f64)> {
    futures::stream::iter(0..count)
        .map(|_| async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await;
            let status = match response {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // Read the body, so the connection is reused.
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            (status, started.elapsed().as_secs_f64() * 1000.0)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Waits until the API responds 200 to `GET /healthz`.
async fn wait_healthy(
    http: &reqwest::Client,
    base: &str,
    process: &mut Process,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        process.check_running()?;
        if let Ok(response) = http.get(format!("{base}/healthz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not respond to GET /healthz within 60 s; see {}",
                process.name,
                process.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
