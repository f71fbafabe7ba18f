//! `rfo-worker`: the staged pipeline, one member of a Kafka consumer group or a reader of the
//! embedded queue; also the single-machine `all-in-one` and `batch` commands.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rfo_worker::settings::{Args, Command};
use rfo_worker::{pipeline, standalone};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rfo_core::logging::init();
    let args = Args::parse();
    if matches!(args.command, Some(Command::Migrate)) {
        let store = pipeline::open_store(&args.database()?)?;
        store
            .migrate()
            .await
            .context("failed to apply database migrations; is RFO_DATABASE_URL reachable?")?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let settings = args.validate()?;
    rfo_worker::failpoint::init_from_env()?;
    match &args.command {
        Some(Command::AllInOne) => return standalone::all_in_one(settings).await,
        Some(Command::Batch(batch)) => return standalone::batch(settings, batch).await,
        _ => {}
    }
    let store = pipeline::open_store(&settings.database)?;
    if settings.migrate {
        store
            .migrate()
            .await
            .context("failed to apply database migrations; is RFO_DATABASE_URL reachable?")?;
    }
    rfo_worker::telemetry::prometheus_builder()
        .with_http_listener(settings.metrics_listen)
        .install()
        .with_context(|| {
            format!(
                "failed to serve metrics on {} (RFO_METRICS_LISTEN)",
                settings.metrics_listen
            )
        })?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown_timeout = Duration::from_secs(settings.shutdown_timeout_s);
    let mut pipeline = tokio::spawn(pipeline::run(settings, store, shutdown_rx));
    tokio::select! {
        result = &mut pipeline => return result.context("the pipeline panicked")?,
        _ = shutdown_signal() => {}
    }
    tracing::info!(
        timeout_s = shutdown_timeout.as_secs(),
        "shutdown requested; draining the pipeline"
    );
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(shutdown_timeout, pipeline).await {
        Ok(result) => result.context("the pipeline panicked")?,
        Err(_) => {
            tracing::warn!(
                "the pipeline did not drain in time; unfinished jobs will be delivered again"
            );
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
