//! `demo-upstream`: an httpbin-like echo server, the demo upstream of `cargo xtask run` and
//! the upstream of the end-to-end tests.
//!
//! `demo-upstream --listen ADDR [--name NAME]` prints `listening on IP:PORT` (the bound
//! address, so port 0 works) once, then answers every method on every path over HTTP/1.1
//! (keep-alive) and HTTP/2 prior knowledge with a JSON description of the request:
//! `{"method", "path", "host", "headers", "client", "upstream", "body_bytes", "version"}`.
//! `/status/NNN` answers with status NNN (200–599); HEAD, 204 and 304 carry no body.
//! `/delay/S` waits S seconds (up to 10, fractions allowed) before answering, as httpbin.
//! `/trailers` answers `ok` followed by the trailers `grpc-status: 0` and `x-trailer: yes`.
//! `/__requests` lists the requests seen so far (`method`, `path`, `host`), oldest first,
//! so tests can tell what reached the upstream (mirrors, retries, smuggling attempts).
//! `/__connections` answers how many TCP connections it has accepted, this one included,
//! so tests can tell that a connection never reached it (a denied TLS passthrough).
//! `x-echo-set-header: Name: value, Other: value` adds those headers to the response (as
//! the Gateway API conformance suite's echo backend does).
//! A request with `Upgrade` is answered 101 and the upgraded connection echoes its bytes.
//! With `--tls-cert FILE --tls-key FILE` it speaks TLS only (ALPN `h2`, `http/1.1`), and
//! the description has the connection's SNI as `sni` (null when the client sent none).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

const UPSTREAM_NAME_HEADER: HeaderName = HeaderName::from_static("x-upstream-name");

#[derive(Parser)]
#[command(about = "httpbin-like echo server (HTTP/1.1 and HTTP/2 prior knowledge)")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:18000 (port 0 picks a free port).
    #[arg(long)]
    listen: SocketAddr,
    /// Name reported in the `x-upstream-name` header and the `upstream` field.
    #[arg(long, default_value = "demo-upstream")]
    name: String,
    /// Serve TLS with this PEM certificate chain (and `--tls-key`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// Longest `/delay/S` honoured, as httpbin caps it.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// `/__requests` remembers at most this many requests.
const SEEN_LIMIT: usize = 10_000;

type Body = BoxBody<Bytes, hyper::Error>;

/// What every connection needs to answer: this upstream's name, and what it has seen.
struct Upstream {
    name: String,
    name_header: HeaderValue,
    seen: Mutex<Vec<Value>>,
    /// TCP connections accepted, counted before any TLS handshake.
    connections: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let name_header = HeaderValue::from_str(&args.name)
        .with_context(|| format!("--name {:?} is not a valid header value", args.name))?;
    let upstream = Arc::new(Upstream {
        name: args.name,
        name_header,
        seen: Mutex::new(Vec::new()),
        connections: AtomicU64::new(0),
    });

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    upstream.connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve_connection(stream, peer, Arc::clone(&upstream), tls.clone()));
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    eprintln!("demo-upstream: accept: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(())
}

/// A TLS acceptor for `--tls-cert`/`--tls-key`, offering HTTP/2 and HTTP/1.1.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain = CertificateDer::pem_file_iter(cert)
        .context("reading --tls-cert")?
        .collect::<Result<Vec<_>, _>>()
        .context("parsing --tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key).context("reading --tls-key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    upstream: Arc<Upstream>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    if let Err(err) = stream.set_nodelay(true) {
        eprintln!("demo-upstream: connection from {peer}: set_nodelay: {err}");
    }
    let builder = auto::Builder::new(TokioExecutor::new());
    let served = match tls {
        None => {
            let service = service_fn(move |req| respond(req, peer, Arc::clone(&upstream), None));
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
        }
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(stream) => {
                let sni = Some(stream.get_ref().1.server_name().map(str::to_owned));
                let service =
                    service_fn(move |req| respond(req, peer, Arc::clone(&upstream), sni.clone()));
                builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
            }
            Err(err) => {
                eprintln!("demo-upstream: TLS handshake from {peer}: {err}");
                return;
            }
        },
    };
    if let Err(err) = served {
        eprintln!("demo-upstream: connection from {peer}: {err}");
    }
}

/// `sni`: None on plaintext, else the TLS connection's SNI if it had one.
async fn respond(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    upstream: Arc<Upstream>,
    sni: Option<Option<String>>,
) -> Result<Response<Body>, hyper::Error> {
    if req.uri().path() == "/__requests" {
        let seen = upstream
            .seen
            .lock()
            .map(|seen| Value::Array(seen.clone()))
            .unwrap_or_default();
        return Ok(Response::new(full(Bytes::from(format!("{seen:#}\n")))));
    }
    if req.uri().path() == "/__connections" {
        let accepted = upstream.connections.load(Ordering::Relaxed);
        return Ok(Response::new(full(Bytes::from(format!("{accepted}\n")))));
    }
    if let Some(upgrade) = req.headers().get(UPGRADE).cloned() {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert(UPGRADE, upgrade);
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        return Ok(response);
    }
    if let Some(delay) = delay_for_path(req.uri().path()) {
        tokio::time::sleep(delay).await;
    }
    if req.uri().path() == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-trailer", HeaderValue::from_static("yes"));
        let body = Frames(
            [
                Frame::data(Bytes::from_static(b"ok\n")),
                Frame::trailers(trailers),
            ]
            .into(),
        )
        .boxed();
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        return Ok(response);
    }
    let (parts, mut body) = req.into_parts();

    // Read (and count) the whole request body without keeping it.
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            body_bytes += data.len() as u64;
        }
    }

    // Only complete requests count: a request whose body broke off never "arrived".
    if parts.uri.path() != "/__requests"
        && let Ok(mut seen) = upstream.seen.lock()
        && seen.len() < SEEN_LIMIT
    {
        let host = parts
            .headers
            .get(HOST)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
            .unwrap_or_default();
        seen.push(json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            "host": host,
        }));
    }

    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        match headers.get_mut(name.as_str()) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(value.into_owned()));
            }
        }
    }
    // HTTP/1 sends Host; HTTP/2 sends :authority, which hyper puts in the URI.
    let host = match parts.headers.get(HOST) {
        Some(value) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        None => parts
            .uri
            .authority()
            .map(|authority| authority.as_str().to_owned())
            .unwrap_or_default(),
    };
    let path = match parts.uri.path_and_query() {
        Some(path_and_query) => path_and_query.as_str().to_owned(),
        None => parts.uri.to_string(),
    };

    let status = status_for_path(parts.uri.path());
    let no_body = parts.method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let payload = if no_body {
        Bytes::new()
    } else {
        let mut description = json!({
            "method": parts.method.as_str(),
            "path": path,
            "host": host,
            "headers": headers,
            "client": peer.to_string(),
            "upstream": upstream.name,
            "body_bytes": body_bytes,
            "version": format!("{:?}", parts.version),
        });
        if let Some(sni) = sni {
            description["sni"] = json!(sni);
        }
        Bytes::from(format!("{description:#}\n"))
    };

    let mut response = Response::new(full(payload));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(UPSTREAM_NAME_HEADER, upstream.name_header.clone());
    for wanted in parts.headers.get_all("x-echo-set-header") {
        let wanted = String::from_utf8_lossy(wanted.as_bytes());
        for pair in wanted.split(',') {
            let Some((name, value)) = pair.split_once(':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                response.headers_mut().append(name, value);
            }
        }
    }
    Ok(response)
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A body of fixed frames (data, then trailers), as a gRPC server answers.
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// `/delay/S`: how long to wait, capped at `MAX_DELAY`.
fn delay_for_path(path: &str) -> Option<Duration> {
    let seconds: f64 = path.strip_prefix("/delay/")?.parse().ok()?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .map(|d| d.min(MAX_DELAY))
}

/// `/status/NNN` with NNN in 200..=599 answers NNN; everything else answers 200.
fn status_for_path(path: &str) -> StatusCode {
    path.strip_prefix("/status/")
        .filter(|code| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_paths() {
        assert_eq!(status_for_path("/status/404"), StatusCode::NOT_FOUND);
        assert_eq!(status_for_path("/status/204"), StatusCode::NO_CONTENT);
        assert_eq!(
            status_for_path("/status/503"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status_for_path("/status/101"), StatusCode::OK);
        assert_eq!(status_for_path("/status/700"), StatusCode::OK);
        assert_eq!(status_for_path("/status/40"), StatusCode::OK);
        assert_eq!(status_for_path("/status/404/x"), StatusCode::OK);
        assert_eq!(status_for_path("/headers"), StatusCode::OK);
    }
}
