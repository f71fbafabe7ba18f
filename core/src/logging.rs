//! Log set-up shared by the binaries: `RUST_LOG` filters, `info` by default.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Directive;

/// Targets whose debug and trace events can contain an image key, and so are capped at `info`
/// unless keys may be logged. The AWS SDK logs the endpoint parameters of each S3 request,
/// which include the object key, at debug level (aws-smithy-runtime 1.16 and aws-sdk-s3 1.157),
/// and its signer logs the canonical request, which includes the path, at trace level
/// (aws-sigv4 1.6).
const KEY_BEARING_TARGETS: [&str; 3] = ["aws_smithy_runtime", "aws_sdk_s3", "aws_sigv4"];

/// Installs the global subscriber. Text lines carry values as `key=value` fields.
pub fn init() {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if !log_keys_requested(std::env::args(), std::env::var("RFO_LOG_KEYS").ok()) {
        for target in KEY_BEARING_TARGETS {
            if let Ok(directive) = format!("{target}=info").parse::<Directive>() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Returns whether `--log-keys` or `RFO_LOG_KEYS` (the flag wins) turns key logging on. The
/// subscriber is installed before the settings are validated, so this reads them itself. An
/// invalid value counts as off here, and the settings reject it later.
fn log_keys_requested(args: impl Iterator<Item = String>, env: Option<String>) -> bool {
    let args: Vec<String> = args.collect();
    let mut flag = None;
    for (index, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix("--log-keys=") {
            flag = Some(value.to_owned());
        } else if arg == "--log-keys" {
            flag = args.get(index + 1).cloned();
        }
    }
    let value = flag.or(env).unwrap_or_default();
    crate::config::parse_bool("RFO_LOG_KEYS", &value).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn log_keys_flag_wins_over_env() {
        assert!(!log_keys_requested(args(&["rfo-api"]), None));
        assert!(log_keys_requested(args(&["rfo-api"]), Some("true".into())));
        assert!(!log_keys_requested(
            args(&["rfo-api", "--log-keys", "false"]),
            Some("true".into())
        ));
        assert!(log_keys_requested(
            args(&["rfo-api", "--log-keys=true"]),
            None
        ));
    }
}
