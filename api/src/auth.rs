//! Bearer-token authentication of API requests, and the commands that make tokens.
//!
//! Tokens are configured as SHA-256 hashes, never in plain text. An entry reads
//! `NAME:sha256:HEX:SCOPES`, where SCOPES joins `submit`, `read` and `metrics` with `+`. The
//! token of a request is hashed and compared with every configured hash in constant time. A
//! fast hash is enough because `rfo-api new-token` draws 256 random bits per token, so a
//! leaked hash cannot be reversed by guessing, and `hash-token` rejects tokens under 32
//! characters.

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use rfo_core::config::{ConfigError, parse_bool};
use rfo_core::db::ANONYMOUS;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::routes::error_response;
use crate::settings::AuthArgs;

/// Shortest token `hash-token` accepts, in characters.
const MIN_TOKEN_CHARS: usize = 32;
/// Prefix of the tokens `new-token` generates, so a leaked token is easy to recognise.
const TOKEN_PREFIX: &str = "rfo_";
const ENTRY_FORMAT: &str =
    "NAME:sha256:HEX:SCOPES, for example ci:sha256:<64 hex digits>:submit+read";

/// A permission a token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /submit`.
    Submit,
    /// `GET /recent` and `GET /jobs/{id}`.
    Read,
    /// `GET /metrics`, when `RFO_METRICS_AUTH` is on.
    Metrics,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Submit, Scope::Read, Scope::Metrics];

    fn name(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Metrics => "metrics",
        }
    }

    fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Requirement that a route puts on the request's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No token: the probes, and /metrics when `RFO_METRICS_AUTH` is off.
    Open,
    /// Any valid token, whatever its scopes: routes that do not exist, so that they tell an
    /// anonymous client nothing.
    AnyToken,
    Scope(Scope),
}

/// One configured token.
#[derive(Debug)]
struct TokenEntry {
    name: String,
    hash: [u8; 32],
    scopes: u8,
}

impl TokenEntry {
    fn has(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }
}

/// Checks the bearer token of each request against the configured token hashes.
#[derive(Debug)]
pub struct Authenticator {
    /// `None` when authentication is off.
    tokens: Option<Vec<TokenEntry>>,
    metrics_auth: bool,
}

impl Authenticator {
    /// Reads the tokens from `RFO_API_TOKENS` and `RFO_API_TOKENS_FILE`. With authentication on
    /// and no token configured, this fails instead of serving an API that rejects every client.
    pub fn from_args(args: &AuthArgs) -> Result<Authenticator, ConfigError> {
        let enabled = parse_bool("RFO_AUTH", &args.enabled)?;
        let metrics_auth = parse_bool("RFO_METRICS_AUTH", &args.metrics_auth)?;
        let mut tokens = Vec::new();
        if let Some(list) = &args.api_tokens {
            for (index, entry) in split_entries(list).enumerate() {
                let place = format!("entry {}", index + 1);
                tokens.push(parse_entry("RFO_API_TOKENS", &place, entry)?);
            }
        }
        if let Some(path) = &args.api_tokens_file {
            tokens.extend(read_token_file(path)?);
        }
        check_unique(&tokens)?;

        if !enabled {
            tracing::warn!(
                ignored_tokens = tokens.len(),
                "authentication is off (RFO_AUTH=off): any client that reaches the API can \
                 submit and read jobs; use this only for local development"
            );
            return Ok(Authenticator {
                tokens: None,
                metrics_auth,
            });
        }
        if tokens.is_empty() {
            return Err(ConfigError::new(
                "RFO_API_TOKENS",
                "",
                "authentication is on (RFO_AUTH defaults to on) but no token is configured; \
                 run `rfo-api new-token --scopes submit,read` and set RFO_API_TOKENS (or a line \
                 of RFO_API_TOKENS_FILE) to the entry it prints, or set RFO_AUTH=off for local \
                 development only",
            ));
        }
        if metrics_auth && !tokens.iter().any(|t| t.has(Scope::Metrics)) {
            tracing::warn!(
                "no token has the metrics scope, so /metrics rejects every request; add one \
                 or set RFO_METRICS_AUTH=false"
            );
        }
        tracing::info!(tokens = tokens.len(), metrics_auth, "authentication is on");
        Ok(Authenticator {
            tokens: Some(tokens),
            metrics_auth,
        })
    }

    fn access(&self, path: &str) -> Access {
        match path {
            "/healthz" | "/readyz" | "/openapi.json" => Access::Open,
            "/metrics" if !self.metrics_auth => Access::Open,
            "/metrics" => Access::Scope(Scope::Metrics),
            "/submit" => Access::Scope(Scope::Submit),
            "/recent" | "/jobs" => Access::Scope(Scope::Read),
            p if p.starts_with("/jobs/") => Access::Scope(Scope::Read),
            _ => Access::AnyToken,
        }
    }

    /// Returns the name of the token that grants the request its route, for the audit log,
    /// or the reason a request may not proceed, which [`Rejection::response`] turns into its
    /// 401 or 403 response. The name is [`ANONYMOUS`] when authentication is off or the route
    /// is open.
    pub fn check<B>(&self, request: &Request<B>) -> Result<String, Rejection> {
        let Some(tokens) = self.tokens.as_ref() else {
            return Ok(ANONYMOUS.to_owned());
        };
        let access = self.access(request.uri().path());
        if access == Access::Open {
            return Ok(ANONYMOUS.to_owned());
        }
        let presented = bearer_token(request.headers())?;
        let Some(entry) = find_token(tokens, presented) else {
            return Err(Rejection::UnknownToken);
        };
        match access {
            Access::Scope(scope) if !entry.has(scope) => Err(Rejection::InsufficientScope {
                token: entry.name.clone(),
                scope,
            }),
            _ => {
                tracing::debug!(token = %entry.name, "request authenticated");
                Ok(entry.name.clone())
            }
        }
    }
}

/// Finds the entry whose hash matches the token. Every entry is compared, in constant time, so
/// the time taken does not tell which entry matched or how much of a hash did.
fn find_token<'a>(tokens: &'a [TokenEntry], presented: &str) -> Option<&'a TokenEntry> {
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for entry in tokens {
        if bool::from(entry.hash.ct_eq(&hash)) {
            found = Some(entry);
        }
    }
    found
}

/// Reason a request is rejected.
#[derive(Debug)]
pub enum Rejection {
    MissingToken,
    MalformedHeader,
    UnknownToken,
    InsufficientScope { token: String, scope: Scope },
}

impl Rejection {
    /// Builds the 401 or 403 response, with its `WWW-Authenticate` challenge.
    pub fn response(self) -> Response<Full<Bytes>> {
        let (status, code, message, challenge) = match self {
            Rejection::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "this request needs a bearer token: send `Authorization: Bearer <token>`"
                    .to_owned(),
                r#"Bearer realm="rfo""#.to_owned(),
            ),
            Rejection::MalformedHeader => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the Authorization header is not of the form `Bearer <token>`".to_owned(),
                r#"Bearer realm="rfo", error="invalid_token""#.to_owned(),
            ),
            Rejection::UnknownToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the bearer token is not valid; ask the operator for a current token".to_owned(),
                r#"Bearer realm="rfo", error="invalid_token""#.to_owned(),
            ),
            Rejection::InsufficientScope { token, scope } => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!(
                    "token {token:?} lacks the {} scope that this request needs",
                    scope.name()
                ),
                format!(
                    r#"Bearer realm="rfo", error="insufficient_scope", scope="{}""#,
                    scope.name()
                ),
            ),
        };
        metrics::counter!("rfo_api_auth_rejections_total", "code" => code).increment(1);
        tracing::debug!(code, "request rejected by authentication");
        let mut response = error_response(status, code, message);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// Extracts the token of the only `Authorization: Bearer` header. The scheme is matched
/// without regard to case (RFC 9110, section 11.1).
fn bearer_token(headers: &HeaderMap) -> Result<&str, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::MissingToken);
    };
    if values.next().is_some() {
        return Err(Rejection::MalformedHeader);
    }
    let value = value.to_str().map_err(|_| Rejection::MalformedHeader)?;
    let (scheme, token) = value.split_once(' ').ok_or(Rejection::MalformedHeader)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Rejection::MalformedHeader);
    }
    Ok(token)
}

fn split_entries(list: &str) -> impl Iterator<Item = &str> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|entry| !entry.is_empty())
}

fn read_token_file(path: &Path) -> Result<Vec<TokenEntry>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new(
            "RFO_API_TOKENS_FILE",
            &path.display().to_string(),
            format!("failed to read the token file: {error}"),
        )
    })?;
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for entry in split_entries(line) {
            let place = format!("{} line {}", path.display(), index + 1);
            tokens.push(parse_entry("RFO_API_TOKENS_FILE", &place, entry)?);
        }
    }
    Ok(tokens)
}

/// Parses one `NAME:sha256:HEX:SCOPES` entry. Errors name the entry by its place, never by its
/// text, in case a plain token was pasted where its hash belongs.
fn parse_entry(variable: &str, place: &str, entry: &str) -> Result<TokenEntry, ConfigError> {
    let invalid = |reason: String| ConfigError::new(variable, place, reason);
    if entry.starts_with(TOKEN_PREFIX) {
        return Err(invalid(format!(
            "this looks like a plain token, which must not be stored; configure its hash \
             instead, as printed by `rfo-api hash-token` (expected {ENTRY_FORMAT})"
        )));
    }
    let parts: Vec<&str> = entry.split(':').collect();
    let [name, algorithm, hex_hash, scopes] = parts[..] else {
        return Err(invalid(format!(
            "expected four fields separated by colons: {ENTRY_FORMAT}"
        )));
    };
    if !valid_name(name) {
        return Err(invalid(format!(
            "the name {name:?} is invalid; use 1 to 64 letters, digits, `.`, `_` or `-`"
        )));
    }
    if algorithm != "sha256" {
        return Err(invalid(format!(
            "token {name}: the hash algorithm {algorithm:?} is not supported; expected sha256"
        )));
    }
    let mut hash = [0u8; 32];
    if hex::decode_to_slice(hex_hash, &mut hash).is_err() {
        return Err(invalid(format!(
            "token {name}: the hash is not 64 hexadecimal digits"
        )));
    }
    let mut bits = 0u8;
    for scope_name in scopes.split('+') {
        let Some(scope) = Scope::parse(scope_name) else {
            return Err(invalid(format!(
                "token {name}: the scope {scope_name:?} is unknown; expected submit, read or \
                 metrics, joined with `+`"
            )));
        };
        bits |= scope.bit();
    }
    Ok(TokenEntry {
        name: name.to_owned(),
        hash,
        scopes: bits,
    })
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Rejects two entries with one name (logs would not tell them apart) or one hash (the token
/// would have two sets of scopes).
fn check_unique(tokens: &[TokenEntry]) -> Result<(), ConfigError> {
    for (index, token) in tokens.iter().enumerate() {
        for earlier in &tokens[..index] {
            if earlier.name == token.name {
                return Err(ConfigError::new(
                    "RFO_API_TOKENS",
                    &token.name,
                    "two token entries have this name; give each token its own name",
                ));
            }
            if earlier.hash == token.hash {
                return Err(ConfigError::new(
                    "RFO_API_TOKENS",
                    &token.name,
                    format!(
                        "this entry has the same hash as token {:?}; configure each token once",
                        earlier.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Commands that make token entries; they need no other setting.
#[derive(Debug, Parser)]
#[command(name = "rfo-api")]
struct TokenCli {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Generate a random token and print it once, with the entry to add to RFO_API_TOKENS.
    NewToken(EntryArgs),
    /// Read a token from standard input and print the entry to add to RFO_API_TOKENS.
    HashToken(EntryArgs),
}

#[derive(Debug, clap::Args)]
struct EntryArgs {
    /// Scopes of the token, separated by commas: submit, read, metrics.
    #[arg(long, value_delimiter = ',', required = true)]
    scopes: Vec<String>,
    /// Name that logs and error messages use for the token; defaults to token-<hash prefix>.
    #[arg(long)]
    name: Option<String>,
}

/// Runs `new-token` or `hash-token` when the first argument names one, and returns `None`
/// otherwise. These run before the server settings are read, since they need none of them.
pub fn run_token_command() -> Option<anyhow::Result<()>> {
    let first = std::env::args_os().nth(1)?;
    if first != "new-token" && first != "hash-token" {
        return None;
    }
    let cli = TokenCli::parse();
    Some(match cli.command {
        TokenCommand::NewToken(args) => new_token(&args),
        TokenCommand::HashToken(args) => hash_token(&args),
    })
}

fn new_token(args: &EntryArgs) -> anyhow::Result<()> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random)
        .map_err(|error| anyhow::anyhow!("failed to read random bytes: {error}"))?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(random));
    let entry = token_entry(&token, args)?;
    println!("token: {token}");
    println!("entry: {entry}");
    eprintln!(
        "store the token now: rfo-api keeps only its hash and cannot show it again. Add the \
         entry to RFO_API_TOKENS or RFO_API_TOKENS_FILE."
    );
    Ok(())
}

fn hash_token(args: &EntryArgs) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut input)
        .map_err(|error| {
            anyhow::anyhow!("failed to read the token from standard input: {error}")
        })?;
    let token = input.trim();
    if token.chars().count() < MIN_TOKEN_CHARS {
        anyhow::bail!(
            "the token on standard input is shorter than {MIN_TOKEN_CHARS} characters; use \
             `rfo-api new-token` to generate one"
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!(
            "the token on standard input contains spaces or non-ASCII characters, which an \
             Authorization header cannot carry"
        );
    }
    println!("{}", token_entry(token, args)?);
    Ok(())
}

fn token_entry(token: &str, args: &EntryArgs) -> anyhow::Result<String> {
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let mut scopes = Vec::new();
    for name in &args.scopes {
        let scope = Scope::parse(name.trim()).ok_or_else(|| {
            anyhow::anyhow!("the scope {name:?} is unknown; expected submit, read or metrics")
        })?;
        if !scopes.contains(&scope.name()) {
            scopes.push(scope.name());
        }
    }
    let name = match &args.name {
        Some(name) if valid_name(name) => name.clone(),
        Some(name) => anyhow::bail!(
            "the name {name:?} is invalid; use 1 to 64 letters, digits, `.`, `_` or `-`"
        ),
        None => format!("token-{}", &hash[..8]),
    };
    Ok(format!("{name}:sha256:{hash}:{}", scopes.join("+")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_for(token: &str, name: &str, scopes: &str) -> String {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        format!("{name}:sha256:{hash}:{scopes}")
    }

    fn authenticator(entries: &str) -> Authenticator {
        Authenticator::from_args(&AuthArgs {
            enabled: "on".into(),
            api_tokens: Some(entries.into()),
            api_tokens_file: None,
            metrics_auth: "true".into(),
        })
        .unwrap()
    }

    fn status(auth: &Authenticator, path: &str, header: Option<&str>) -> u16 {
        let mut request = Request::get(path);
        if let Some(value) = header {
            request = request.header(AUTHORIZATION, value);
        }
        let request = request.body(()).unwrap();
        auth.check(&request)
            .map_or_else(|r| r.response().status().as_u16(), |_| 200)
    }

    #[test]
    fn entry_grants_only_its_scopes() {
        let token = "a".repeat(40);
        let auth = authenticator(&entry_for(&token, "reader", "read"));
        let bearer = format!("Bearer {token}");
        assert_eq!(status(&auth, "/recent", Some(&bearer)), 200);
        assert_eq!(status(&auth, "/jobs/x", Some(&bearer)), 200);
        assert_eq!(status(&auth, "/submit", Some(&bearer)), 403);
        assert_eq!(status(&auth, "/metrics", Some(&bearer)), 403);
        assert_eq!(status(&auth, "/healthz", None), 200);
        assert_eq!(status(&auth, "/recent", None), 401);
        assert_eq!(status(&auth, "/nowhere", None), 401);
        assert_eq!(status(&auth, "/recent", Some("Bearer wrong")), 401);
        assert_eq!(
            status(&auth, "/recent", Some(&format!("Basic {token}"))),
            401
        );
        assert_eq!(
            status(&auth, "/recent", Some(&format!("bearer {token}"))),
            200
        );
    }

    #[test]
    fn check_returns_token_name() {
        let token = "b".repeat(40);
        let auth = authenticator(&entry_for(&token, "reader", "read"));
        let request = Request::get("/recent")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(())
            .unwrap();
        assert_eq!(auth.check(&request).ok().as_deref(), Some("reader"));
        let open = Request::get("/healthz").body(()).unwrap();
        assert_eq!(auth.check(&open).ok().as_deref(), Some(ANONYMOUS));
    }

    #[test]
    fn plain_token_in_entries_is_rejected() {
        let error = Authenticator::from_args(&AuthArgs {
            enabled: "on".into(),
            api_tokens: Some(format!("{TOKEN_PREFIX}{}", "ab".repeat(32))),
            api_tokens_file: None,
            metrics_auth: "true".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("plain token"), "{error}");
        assert!(!error.contains("abab"), "the token leaked into {error}");
    }

    #[test]
    fn no_tokens_with_auth_on_fails() {
        let error = Authenticator::from_args(&AuthArgs {
            enabled: "on".into(),
            api_tokens: None,
            api_tokens_file: None,
            metrics_auth: "true".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("RFO_API_TOKENS"), "{error}");
        assert!(error.contains("new-token"), "{error}");
    }

    #[test]
    fn duplicate_hash_is_rejected() {
        let token = "b".repeat(40);
        let entries = format!(
            "{},{}",
            entry_for(&token, "one", "read"),
            entry_for(&token, "two", "submit")
        );
        let error = Authenticator::from_args(&AuthArgs {
            enabled: "on".into(),
            api_tokens: Some(entries),
            api_tokens_file: None,
            metrics_auth: "true".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("same hash"), "{error}");
    }

    #[test]
    fn token_entry_round_trips() {
        let args = EntryArgs {
            scopes: vec!["submit".into(), "read".into(), "read".into()],
            name: Some("ci".into()),
        };
        let token = "c".repeat(40);
        let entry = token_entry(&token, &args).unwrap();
        assert!(entry.ends_with(":submit+read"), "{entry}");
        let auth = authenticator(&entry);
        let bearer = format!("Bearer {token}");
        assert_eq!(status(&auth, "/submit", Some(&bearer)), 200);
    }
}
