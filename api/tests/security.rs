//! Authentication and HTTP limits of the real `rfo-api` binary, started as a child process
//! against the local stack (`eval "$(ops/stack start)"` sets its variables).
//!
//! Each test starts its own API on a free loopback port with the settings it checks, and
//! bounds its waits with a wide margin over the configured timeouts, so a slow machine does
//! not fail it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{API, Api, Token, new_token, new_topic, put_input, stack_env};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use uuid::Uuid;

/// Extra time allowed on top of a configured timeout before a test calls it missed.
const MARGIN: Duration = Duration::from_secs(20);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends raw bytes, then reads until the server closes the connection or `wait` passes.
/// Returns what was read and whether the server closed the connection within `wait`; a write or
/// read error counts as a close.
async fn exchange(address: &str, request: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(wait, stream.read_to_end(&mut received)).await;
    (
        String::from_utf8_lossy(&received).into_owned(),
        read.is_ok(),
    )
}

/// Every protected route answers 401 without a token or with an unknown one, 403 with a token
/// that lacks the route's scope, and serves the request with the right one.
#[tokio::test]
async fn routes_require_valid_token() {
    let submit = new_token("submitter", "submit");
    let read = new_token("reader", "read");
    let metrics = new_token("scraper", "metrics");
    let entries = format!("{},{},{}", submit.entry, read.entry, metrics.entry);
    let api = Api::start("routes_require_valid_token", &[("RFO_API_TOKENS", entries)]).await;
    let key = format!("security/{}.png", Uuid::now_v7());
    put_input(&key).await;
    let unknown = format!("rfo_{}", "0".repeat(64));
    let job_path = format!("/jobs/{}", Uuid::now_v7());

    // Route, wrong-scope token, right token, status with the right token.
    let table: [(&str, &str, Option<&Token>, &Token, u16); 5] = [
        ("POST", "/submit", Some(&read), &submit, 202),
        ("GET", "/recent?n=1", Some(&submit), &read, 200),
        ("GET", &job_path, Some(&metrics), &read, 404),
        ("GET", "/metrics", Some(&read), &metrics, 200),
        ("GET", "/no-such-route", None, &read, 404),
    ];
    let client = http();
    for (method, path, wrong_scope, right, expected) in table {
        let send = |token: Option<&str>| {
            let mut request = match method {
                "POST" => client
                    .post(api.url(path))
                    .json(&serde_json::json!({ "image_key": key })),
                _ => client.get(api.url(path)),
            };
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };

        let response = send(None).await.expect("request without a token");
        assert_eq!(response.status(), 401, "{method} {path} without a token");
        let challenge = response.headers().get("www-authenticate").cloned();
        assert!(
            challenge.is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
            "{method} {path}: 401 without a WWW-Authenticate: Bearer header"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "missing_token", "{method} {path}");

        let response = send(Some(&unknown))
            .await
            .expect("request with a wrong token");
        assert_eq!(response.status(), 401, "{method} {path} with a wrong token");
        assert!(response.headers().contains_key("www-authenticate"));

        if let Some(wrong) = wrong_scope {
            let response = send(Some(&wrong.token)).await.expect("wrong-scope request");
            assert_eq!(response.status(), 403, "{method} {path} with a wrong scope");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "insufficient_scope");
        }

        let response = send(Some(&right.token)).await.expect("authorized request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(
            status, expected,
            "{method} {path} with the right token: {text}"
        );
    }

    for path in ["/healthz", "/readyz"] {
        let response = client.get(api.url(path)).send().await.unwrap();
        assert!(
            response.status() != 401 && response.status() != 403,
            "{path} must stay open, got {}",
            response.status()
        );
    }

    let log = api.log_text();
    for token in [&submit, &read, &metrics] {
        assert!(!log.contains(&token.token), "a token leaked into the log");
    }
}

#[tokio::test]
async fn metrics_open_when_metrics_auth_off() {
    let read = new_token("reader", "read");
    let api = Api::start(
        "metrics_open_when_metrics_auth_off",
        &[
            ("RFO_API_TOKENS", read.entry.clone()),
            ("RFO_METRICS_AUTH", "false".into()),
        ],
    )
    .await;
    let client = http();
    let metrics = client.get(api.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let recent = client.get(api.url("/recent")).send().await.unwrap();
    assert_eq!(recent.status(), 401);
}

#[tokio::test]
async fn start_without_tokens_fails() {
    let topic = new_topic().await;
    let mut api = Api::spawn("start_without_tokens_fails", &stack_env(&topic), &[]);
    let status = api.wait_exit();
    let log = api.log_text();
    assert!(!status.success(), "rfo-api started without tokens");
    assert!(
        log.contains("RFO_API_TOKENS"),
        "log names no variable:\n{log}"
    );
    assert!(log.contains("new-token"), "log names no fix:\n{log}");
}

#[tokio::test]
async fn plain_token_entry_fails_unprinted() {
    let token = new_token("leaky", "read").token;
    let topic = new_topic().await;
    let mut api = Api::spawn(
        "plain_token_entry_fails_unprinted",
        &stack_env(&topic),
        &[("RFO_API_TOKENS", token.clone())],
    );
    let status = api.wait_exit();
    let log = api.log_text();
    assert!(!status.success(), "rfo-api accepted a plain token");
    assert!(log.contains("plain token"), "log:\n{log}");
    assert!(
        !log.contains(&token[4..20]),
        "the token leaked into the log"
    );
}

#[tokio::test]
async fn auth_off_serves_and_warns() {
    let api = Api::start("auth_off_serves_and_warns", &[("RFO_AUTH", "off".into())]).await;
    let response = http().get(api.url("/recent?n=1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let log = api.log_text();
    assert!(log.contains("authentication is off"), "no warning:\n{log}");
    assert!(log.contains("WARN"), "the notice is not a warning:\n{log}");
}

#[test]
fn hash_token_matches_new_token() {
    let generated = new_token("ci", "submit,read");
    let mut child = Command::new(API)
        .args(["hash-token", "--name", "ci", "--scopes", "submit,read"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run rfo-api hash-token");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", generated.token).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        generated.entry
    );

    let short = Command::new(API)
        .args(["hash-token", "--scopes", "read"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !short.status.success(),
        "hash-token accepted an empty token"
    );
}

/// A client that sends its request head one byte per second is disconnected once
/// RFO_HEADER_READ_TIMEOUT_S has passed.
#[tokio::test]
async fn slow_head_is_cut_off() {
    let timeout = Duration::from_secs(2);
    let api = Api::start(
        "slow_head_is_cut_off",
        &[
            ("RFO_AUTH", "off".into()),
            ("RFO_HEADER_READ_TIMEOUT_S", timeout.as_secs().to_string()),
        ],
    )
    .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(&api.address).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".repeat(4);
    let trickle = async {
        for byte in request.iter().cycle() {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let mut received = Vec::new();
    let closed = tokio::select! {
        read = reader.read_to_end(&mut received) => { let _ = read; true }
        _ = trickle => true,
        _ = tokio::time::sleep(timeout + MARGIN) => false,
    };
    let elapsed = started.elapsed();
    assert!(
        closed,
        "the slow client was still connected after {elapsed:?}"
    );
    assert!(
        elapsed >= timeout - Duration::from_millis(500),
        "closed after {elapsed:?}, before the header timeout"
    );
    assert!(
        !String::from_utf8_lossy(&received).contains("200 OK"),
        "the slow request was served"
    );
}

/// A keep-alive connection left idle after a response is closed after the header timeout.
#[tokio::test]
async fn idle_keep_alive_is_closed() {
    let timeout = Duration::from_secs(2);
    let api = Api::start(
        "idle_keep_alive_is_closed",
        &[
            ("RFO_AUTH", "off".into()),
            ("RFO_HEADER_READ_TIMEOUT_S", timeout.as_secs().to_string()),
        ],
    )
    .await;
    let (text, closed) = exchange(
        &api.address,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        timeout + MARGIN,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "response: {text:?}");
    assert!(
        closed,
        "the idle connection stayed open for {:?}",
        timeout + MARGIN
    );
}

/// A body that trickles in is answered with 408 once RFO_REQUEST_TIMEOUT_S has passed.
#[tokio::test]
async fn slow_body_gets_408() {
    let timeout = Duration::from_secs(2);
    let api = Api::start(
        "slow_body_gets_408",
        &[
            ("RFO_AUTH", "off".into()),
            ("RFO_REQUEST_TIMEOUT_S", timeout.as_secs().to_string()),
        ],
    )
    .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(&api.address).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let head = b"POST /submit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    writer.write_all(head).await.unwrap();
    let trickle = async {
        for _ in 0..1000 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let mut received = Vec::new();
    tokio::select! {
        _ = reader.read_to_end(&mut received) => {}
        _ = trickle => {}
        _ = tokio::time::sleep(timeout + MARGIN) => {}
    }
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "response: {text:?}");
    assert!(text.contains("request_timeout"), "response: {text:?}");
    assert!(elapsed < timeout + MARGIN, "answered after {elapsed:?}");
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let submit = new_token("submitter", "submit");
    let api = Api::start(
        "oversized_body_gets_413",
        &[("RFO_API_TOKENS", submit.entry.clone())],
    )
    .await;
    let key = "k".repeat(70 * 1024);
    let response = http()
        .post(api.url("/submit"))
        .bearer_auth(&submit.token)
        .json(&serde_json::json!({ "image_key": key }))
        .send()
        .await
        .expect("POST /submit");
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
}

/// A request head over RFO_MAX_HEADER_BYTES, or with more fields than RFO_MAX_HEADERS, gets
/// 431 or a closed connection, never a served request.
#[tokio::test]
async fn oversized_heads_are_rejected() {
    let api = Api::start(
        "oversized_heads_are_rejected",
        &[
            ("RFO_AUTH", "off".into()),
            ("RFO_MAX_HEADER_BYTES", "8192".into()),
            ("RFO_MAX_HEADERS", "20".into()),
        ],
    )
    .await;
    let wait = Duration::from_secs(30);

    let large = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Large: {}\r\n\r\n",
        "a".repeat(10 * 1024)
    );
    let (text, _) = exchange(&api.address, large.as_bytes(), wait).await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "large head: {text:?}"
    );

    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let (text, _) = exchange(&api.address, many.as_bytes(), wait).await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "many fields: {text:?}"
    );

    let mut few = String::from("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for i in 0..10 {
        few.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    few.push_str("\r\n");
    let (text, _) = exchange(&api.address, few.as_bytes(), wait).await;
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "head within limits: {text:?}"
    );
}

/// Connections over RFO_MAX_CONNECTIONS are closed without a response, and a freed slot
/// takes a new connection.
#[tokio::test]
async fn connections_over_cap_are_closed() {
    let api = Api::start(
        "connections_over_cap_are_closed",
        &[
            ("RFO_AUTH", "off".into()),
            ("RFO_MAX_CONNECTIONS", "2".into()),
            ("RFO_HEADER_READ_TIMEOUT_S", "60".into()),
        ],
    )
    .await;
    // The start-up probe's connection may still hold a slot for a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut open_connections = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&api.address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buffer = [0u8; 512];
        let read = tokio::time::timeout(MARGIN, stream.read(&mut buffer))
            .await
            .expect("response within the margin")
            .unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
        open_connections.push(stream);
    }

    let (text, closed) = exchange(&api.address, request, MARGIN).await;
    assert!(text.is_empty(), "a third connection was served: {text:?}");
    assert!(closed, "the third connection stayed open");

    open_connections.pop();
    let deadline = Instant::now() + MARGIN;
    loop {
        let (text, _) = exchange(
            &api.address,
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            MARGIN,
        )
        .await;
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came free after a close");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes a self-signed certificate for 127.0.0.1 with `openssl`, or returns `None` when the
/// command is missing.
fn self_signed_cert(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // webpki rejects a CA certificate as a server's own, and `req -x509` makes one
        // unless told otherwise.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => Some((cert, key)),
        Ok(status) => panic!("openssl req failed: {status}"),
        Err(_) => None,
    }
}

async fn tls_get(address: &str, cert: &Path, request: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert).unwrap();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(MARGIN, tls.read_to_end(&mut received))
        .await
        .expect("TLS response within the margin")
        .ok();
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn tls_round_trip() {
    let dir = std::env::temp_dir().join(format!("rfo-tls-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some((cert, key)) = self_signed_cert(&dir) else {
        eprintln!("skipped: openssl is not installed, so no test certificate can be made");
        return;
    };
    let read = new_token("reader", "read");
    let api = Api::start(
        "tls_round_trip",
        &[
            ("RFO_API_TOKENS", read.entry.clone()),
            ("RFO_TLS_CERT", cert.display().to_string()),
            ("RFO_TLS_KEY", key.display().to_string()),
        ],
    )
    .await;

    let health = tls_get(
        &api.address,
        &cert,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "response: {health:?}");

    let recent = tls_get(
        &api.address,
        &cert,
        &format!(
            "GET /recent?n=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            read.token
        ),
    )
    .await;
    assert!(recent.starts_with("HTTP/1.1 200"), "response: {recent:?}");

    let (plain, _) = exchange(
        &api.address,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        MARGIN,
    )
    .await;
    assert!(
        !plain.contains("200 OK"),
        "plain HTTP was served: {plain:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
