//! Kafka client configuration: the project's defaults, then the operator's `RFO_KAFKA_*`
//! settings, which win.

use std::collections::BTreeMap;
use std::error::Error;

use rdkafka::ClientConfig;
use rdkafka::client::{ClientContext, OAuthToken};

use crate::config::ConfigError;
use crate::msk_iam::{MskTokenProvider, TokenError};

/// Kafka principal name reported with MSK IAM tokens; the broker takes the identity from the
/// signature, not from this name.
const MSK_PRINCIPAL: &str = "rfo";

/// Client context of the project's producers. It makes SASL/OAUTHBEARER tokens for Amazon MSK
/// IAM access control when `RFO_MSK_IAM=true`.
#[derive(Clone, Default)]
pub struct KafkaContext {
    msk_iam: Option<MskTokenProvider>,
}

impl KafkaContext {
    /// Builds the context; with `msk_iam` it loads the AWS credentials chain and region.
    pub async fn new(msk_iam: bool) -> Result<KafkaContext, TokenError> {
        let msk_iam = match msk_iam {
            true => Some(MskTokenProvider::from_environment().await?),
            false => None,
        };
        Ok(KafkaContext { msk_iam })
    }

    /// Makes an OAUTHBEARER token for librdkafka, which calls this when a broker requests SASL
    /// login and again before the token expires.
    pub fn oauth_token(&self) -> Result<OAuthToken, Box<dyn Error>> {
        let Some(provider) = &self.msk_iam else {
            return Err(
                "sasl.mechanism=OAUTHBEARER needs RFO_MSK_IAM=true, the only \
                        OAUTHBEARER token source of rfo"
                    .into(),
            );
        };
        let token = provider.token()?;
        Ok(OAuthToken {
            token: token.token,
            principal_name: MSK_PRINCIPAL.to_owned(),
            lifetime_ms: token.expires_at_ms,
        })
    }
}

impl ClientContext for KafkaContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn Error>> {
        self.oauth_token()
    }
}

/// Adds the librdkafka settings that MSK IAM needs (`security.protocol=SASL_SSL`,
/// `sasl.mechanism=OAUTHBEARER`) to `overrides` when `msk_iam` is on, and rejects other values
/// of those two settings.
pub fn apply_msk_iam(
    overrides: &mut BTreeMap<String, String>,
    msk_iam: bool,
) -> Result<(), ConfigError> {
    if !msk_iam {
        return Ok(());
    }
    for (key, variable, required) in [
        (
            "security.protocol",
            "RFO_KAFKA_SECURITY_PROTOCOL",
            "SASL_SSL",
        ),
        ("sasl.mechanism", "RFO_KAFKA_SASL_MECHANISM", "OAUTHBEARER"),
    ] {
        match overrides.get(key) {
            Some(value) if !value.eq_ignore_ascii_case(required) => {
                return Err(ConfigError::new(
                    variable,
                    value,
                    format!("RFO_MSK_IAM=true needs {required}; set it or leave {variable} unset"),
                ));
            }
            Some(_) => {}
            None => {
                overrides.insert(key.to_owned(), required.to_owned());
            }
        }
    }
    Ok(())
}

/// Builds the configuration of a producer that waits for every in-sync replica and never
/// writes a record twice. `delivery_timeout_ms` bounds how long a send may take in all.
pub fn producer_config(
    brokers: &str,
    delivery_timeout_ms: u64,
    overrides: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", delivery_timeout_ms.to_string())
        .set("socket.connection.setup.timeout.ms", "3000")
        .set("compression.type", "zstd");
    apply(&mut config, overrides);
    config
}

/// Builds the configuration of a group consumer that commits only what the worker asks for.
pub fn consumer_config(
    brokers: &str,
    group: &str,
    overrides: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("socket.connection.setup.timeout.ms", "3000");
    apply(&mut config, overrides);
    config
}

fn apply(config: &mut ClientConfig, overrides: &BTreeMap<String, String>) {
    for (key, value) in overrides {
        config.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msk_iam_sets_sasl_settings() {
        let mut overrides = BTreeMap::new();
        apply_msk_iam(&mut overrides, true).unwrap();
        assert_eq!(overrides["security.protocol"], "SASL_SSL");
        assert_eq!(overrides["sasl.mechanism"], "OAUTHBEARER");

        let mut overrides = BTreeMap::new();
        apply_msk_iam(&mut overrides, false).unwrap();
        assert!(overrides.is_empty());

        let mut overrides =
            BTreeMap::from([("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned())]);
        let error = apply_msk_iam(&mut overrides, true).unwrap_err().to_string();
        assert!(error.contains("RFO_KAFKA_SASL_MECHANISM"), "{error}");
    }

    #[test]
    fn oauth_token_without_msk_iam_fails() {
        let Err(error) = KafkaContext::default().oauth_token() else {
            panic!("a token was made without RFO_MSK_IAM");
        };
        let error = error.to_string();
        assert!(error.contains("RFO_MSK_IAM"), "{error}");
    }
}
