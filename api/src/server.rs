//! The hyper accept loop: optional TLS, limits against slow and oversized clients, and
//! graceful shutdown on SIGTERM and Ctrl-C.
//!
//! Each connection holds a permit of a semaphore sized by `RFO_MAX_CONNECTIONS`; a connection
//! over the limit is closed at once. A client has `RFO_HEADER_READ_TIMEOUT_S` to finish the TLS
//! handshake and again to send each request head, and `RFO_REQUEST_TIMEOUT_S` from the head to
//! the response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::auth::Authenticator;
use crate::routes::{self, AppState, error_response};
use crate::settings::{HttpSettings, TlsFiles};

/// How long open connections may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Shortest time between two warnings about connections closed over the limit.
const REJECTION_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Shared state of every connection task.
#[derive(Clone)]
struct ConnectionContext {
    state: Arc<AppState>,
    auth: Arc<Authenticator>,
    http: Arc<HttpSettings>,
    tls: Option<TlsAcceptor>,
}

pub async fn serve(
    listen: SocketAddr,
    state: Arc<AppState>,
    auth: Arc<Authenticator>,
    http: HttpSettings,
) -> anyhow::Result<()> {
    let tls = http.tls.as_ref().map(tls_acceptor).transpose()?;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("failed to listen on {listen} (RFO_LISTEN); is the port in use?")
    })?;
    tracing::info!(
        address = %listener.local_addr()?,
        tls = tls.is_some(),
        max_connections = http.max_connections,
        "rfo-api listening"
    );

    let connections = Arc::new(Semaphore::new(http.max_connections));
    let context = ConnectionContext {
        state,
        auth,
        http: Arc::new(http),
        tls,
    };
    let mut rejected = RejectionLog::new();
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    // Dropping the stream closes the connection before any byte is read.
                    rejected.record(context.http.max_connections);
                    continue;
                };
                let context = context.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    serve_connection(stream, peer, context, watcher, permit).await;
                });
            }
            _ = &mut shutdown => break,
        }
    }

    tracing::info!("shutting down; waiting for open connections");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("rfo-api stopped"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("connections still open after the grace period; stopping"),
    }
    Ok(())
}

/// Counter of connections closed over the limit, which logs a warning at most once per
/// `REJECTION_WARNING_INTERVAL`.
struct RejectionLog {
    since_warning: u64,
    last_warning: Option<Instant>,
}

impl RejectionLog {
    fn new() -> Self {
        RejectionLog {
            since_warning: 0,
            last_warning: None,
        }
    }

    fn record(&mut self, max_connections: usize) {
        metrics::counter!("rfo_api_connections_rejected_total").increment(1);
        self.since_warning += 1;
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= REJECTION_WARNING_INTERVAL)
        {
            tracing::warn!(
                max_connections,
                rejected = self.since_warning,
                "closed connections over RFO_MAX_CONNECTIONS"
            );
            self.since_warning = 0;
            self.last_warning = Some(Instant::now());
        }
    }
}

/// Runs the TLS handshake when TLS is on, then serves HTTP/1.1 until the connection ends. The
/// permit is released when this returns.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    context: ConnectionContext,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
) {
    metrics::gauge!("rfo_api_open_connections").increment(1.0);
    match context.tls.clone() {
        None => serve_http(stream, peer, &context, watcher).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(context.http.header_read_timeout, acceptor.accept(stream))
                    .await;
            match handshake {
                Ok(Ok(stream)) => serve_http(stream, peer, &context, watcher).await,
                Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
    metrics::gauge!("rfo_api_open_connections").decrement(1.0);
}

async fn serve_http<I>(io: I, peer: SocketAddr, context: &ConnectionContext, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = context.state.clone();
    let auth = context.auth.clone();
    let request_timeout = context.http.request_timeout;
    let service = service_fn(move |request| {
        let handled = routes::handle(state.clone(), auth.clone(), peer, request);
        async move {
            match tokio::time::timeout(request_timeout, handled).await {
                Ok(result) => result,
                Err(_) => Ok(request_timeout_response(request_timeout)),
            }
        }
    });
    let http = &context.http;
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_read_timeout)
        .max_header_size(http.max_header_bytes)
        // hyper's read buffer must hold a whole head and cannot be under 8 KiB.
        .max_buf_size(http.max_header_bytes.max(8192))
        .max_headers(http.max_headers)
        .serve_connection(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}

/// Builds a 408 response that closes the connection, since the request body may still be
/// arriving.
fn request_timeout_response(
    request_timeout: Duration,
) -> Response<http_body_util::Full<bytes::Bytes>> {
    metrics::counter!("rfo_api_request_timeouts_total").increment(1);
    let mut response = error_response(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request did not complete within {} s (RFO_REQUEST_TIMEOUT_S)",
            request_timeout.as_secs()
        ),
    );
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Loads the certificate chain and key. A changed file takes effect at the next start.
fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "failed to read PEM certificates from {} (RFO_TLS_CERT)",
                files.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "no PEM certificate in {} (RFO_TLS_CERT); expected the chain, leaf first",
            files.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| {
        format!(
            "failed to read a PEM private key from {} (RFO_TLS_KEY)",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("failed to set up TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("RFO_TLS_CERT and RFO_TLS_KEY do not form a usable certificate and key pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
