//! Log set-up shared by the binaries: `RUST_LOG` filters, `info` by default.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Text lines carry values as `key=value` fields.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
