//! `rfo-api`: accepts jobs over HTTP, records them, publishes them to Kafka and serves results.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use rfo_api::auth::Authenticator;
use rfo_api::routes::AppState;
use rfo_api::server;
use rfo_api::settings::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rfo_core::logging::init();
    if let Some(result) = rfo_api::auth::run_token_command() {
        return result;
    }
    let args = Args::parse();
    let settings = args.validate()?;
    let http = args.http.validate()?;
    let auth = Arc::new(Authenticator::from_args(&args.auth)?);

    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("failed to install the metrics recorder")?;
    let state = AppState::connect(&settings, metrics).await?;
    if settings.migrate {
        state
            .store
            .migrate()
            .await
            .context("failed to apply database migrations; is RFO_DATABASE_URL reachable?")?;
    }
    let state = Arc::new(state);
    rfo_api::republish::spawn(state.clone(), settings.republish);
    server::serve(settings.listen, state, auth, http).await
}
