//! SASL/OAUTHBEARER tokens for Amazon MSK clusters with IAM access control.
//!
//! A token is a SigV4-presigned `GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster:Connect`
//! for the service `kafka-cluster`, valid for 900 seconds, with a `User-Agent` query parameter
//! added after signing, and the whole URL encoded as base64url without padding. AWS's own
//! signers (aws-msk-iam-sasl-signer for Go, Python and Java) build the same URL.
//!
//! NOTE: this has been checked only against that description and the unit tests below, not
//! against a real MSK cluster.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Validity of a token, the value the official signers use.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// Service name of MSK IAM authentication in the signature.
const SERVICE: &str = "kafka-cluster";
/// Value of the `User-Agent` query parameter.
const USER_AGENT: &str = concat!("rfo/", env!("CARGO_PKG_VERSION"));

/// Failure to make a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no AWS credentials for the MSK IAM token: {0}")]
    Credentials(String),
    #[error("failed to sign the MSK IAM token: {0}")]
    Signing(String),
}

/// A token and the moment it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MskToken {
    pub token: String,
    /// Expiry in milliseconds since the Unix epoch, as librdkafka expects it.
    pub expires_at_ms: i64,
}

/// Makes a token for `region` from `credentials`, signed at `now`.
pub fn token_from_credentials(
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
) -> Result<MskToken, TokenError> {
    let host = format!("kafka.{region}.amazonaws.com");
    let base = format!("https://{host}/?Action=kafka-cluster%3AConnect");
    let identity: Identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| TokenError::Signing(e.to_string()))?
        .into();
    let request = SignableRequest::new(
        "GET",
        base.as_str(),
        std::iter::once(("host", host.as_str())),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| TokenError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| TokenError::Signing(e.to_string()))?
        .into_parts();

    let mut url = url::Url::parse(&base).map_err(|e| TokenError::Signing(e.to_string()))?;
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in instructions.params() {
            query.append_pair(name, value);
        }
        query.append_pair("User-Agent", USER_AGENT);
    }
    let signed_at_ms = now
        .duration_since(UNIX_EPOCH)
        .map_err(|e| TokenError::Signing(e.to_string()))?
        .as_millis();
    let expires_at_ms = i64::try_from(signed_at_ms + TOKEN_LIFETIME.as_millis())
        .map_err(|e| TokenError::Signing(e.to_string()))?;
    Ok(MskToken {
        token: URL_SAFE_NO_PAD.encode(url.as_str()),
        expires_at_ms,
    })
}

/// Makes tokens from the AWS credentials chain of the environment (instance profile, web
/// identity, `AWS_ACCESS_KEY_ID`, ...).
#[derive(Clone, Debug)]
pub struct MskTokenProvider {
    region: String,
    credentials: SharedCredentialsProvider,
    runtime: tokio::runtime::Handle,
}

impl MskTokenProvider {
    /// Loads the default credentials chain and the region (`AWS_REGION`, or the profile's).
    /// Must be called inside the Tokio runtime, which [`MskTokenProvider::token`] later uses
    /// for the credential requests.
    pub async fn from_environment() -> Result<MskTokenProvider, TokenError> {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let region = config
            .region()
            .map(|r| r.as_ref().to_owned())
            .ok_or_else(|| {
                TokenError::Credentials(
                    "no AWS region for RFO_MSK_IAM=true; set AWS_REGION to the cluster's region"
                        .to_owned(),
                )
            })?;
        let credentials = config.credentials_provider().ok_or_else(|| {
            TokenError::Credentials("the AWS credentials chain found no provider".to_owned())
        })?;
        Ok(MskTokenProvider {
            region,
            credentials,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Makes a fresh token, blocking the calling thread until the credentials are loaded.
    /// rdkafka calls this from whichever thread polls the client, which can be a Tokio worker,
    /// so the credentials are awaited on a thread of their own.
    ///
    /// NOTE: the credentials chain caches its credentials, so the wait is usually short, but a
    /// refresh from the instance metadata service blocks one Tokio worker meanwhile, and needs
    /// a multi-threaded runtime whose other workers drive the request.
    pub fn token(&self) -> Result<MskToken, TokenError> {
        let credentials = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.runtime
                        .block_on(self.credentials.provide_credentials())
                })
                .join()
        })
        .map_err(|_| TokenError::Credentials("the credentials request panicked".to_owned()))?
        .map_err(|e| TokenError::Credentials(e.to_string()))?;
        token_from_credentials(&credentials, &self.region, SystemTime::now())
    }

    pub fn region(&self) -> &str {
        &self.region
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn decode(token: &str) -> url::Url {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .expect("base64url without padding");
        url::Url::parse(std::str::from_utf8(&bytes).expect("UTF-8")).expect("a URL")
    }

    #[test]
    fn token_is_presigned_connect_url() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session-token-example".to_owned()),
            None,
            "test",
        );
        // 2026-12-04T10:00:00Z
        let now = UNIX_EPOCH + Duration::from_secs(1_796_378_400);
        let token = token_from_credentials(&credentials, "eu-west-1", now).unwrap();
        assert!(!token.token.contains('='), "no padding: {}", token.token);
        assert!(!token.token.contains('+') && !token.token.contains('/'));
        assert_eq!(token.expires_at_ms, 1_796_378_400_000 + 900_000);

        let url = decode(&token.token);
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.host_str(), Some("kafka.eu-west-1.amazonaws.com"));
        assert_eq!(url.path(), "/");
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(query["Action"], "kafka-cluster:Connect");
        assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(
            query["X-Amz-Credential"],
            "AKIDEXAMPLE/20261204/eu-west-1/kafka-cluster/aws4_request"
        );
        assert_eq!(query["X-Amz-Date"], "20261204T100000Z");
        assert_eq!(query["X-Amz-Expires"], "900");
        assert_eq!(query["X-Amz-SignedHeaders"], "host");
        assert_eq!(query["X-Amz-Security-Token"], "session-token-example");
        let signature = &query["X-Amz-Signature"];
        assert_eq!(signature.len(), 64, "{signature}");
        assert!(signature.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(query["User-Agent"].starts_with("rfo/"));
        assert!(
            !url.as_str().contains("wJalrXUtnFEMI"),
            "the secret key is not in the token"
        );
        assert_eq!(query.len(), 9, "{query:?}");
    }

    #[test]
    fn token_signature_depends_on_time_and_key() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_378_400);
        let signature = |secret: &str, at: SystemTime| {
            let credentials = Credentials::new("AKIDEXAMPLE", secret, None, None, "test");
            let token = token_from_credentials(&credentials, "eu-west-1", at).unwrap();
            let url = decode(&token.token);
            let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
            assert!(!query.contains_key("X-Amz-Security-Token"));
            query["X-Amz-Signature"].clone()
        };
        let first = signature("secret-one", now);
        assert_eq!(
            first,
            signature("secret-one", now),
            "signing is deterministic"
        );
        assert_ne!(first, signature("secret-two", now));
        assert_ne!(first, signature("secret-one", now + Duration::from_secs(1)));
    }
}
