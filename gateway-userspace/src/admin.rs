//! The admin surfaces, on Istio's ports: readiness (`/healthz/ready`, and `/healthz/live`
//! for liveness probes, 15021), Prometheus
//! (`/stats/prometheus`, 15090) and the local admin on 127.0.0.1:15000: `GET /config_dump`
//! (the live snapshot as JSON), `GET /logging` (the log filter in force) and
//! `POST /logging?level=debug` (switch it, as Envoy's admin does). They run on their own
//! small tasks and read only shared state, never the hot path's. Readiness has a thread
//! and runtime of its own, so a probe is answered however busy the metrics port is.
//!
//! A client gets `AdminState::head_timeout` for each request head, and as long between
//! requests on a kept-alive connection; a connection lasts at most
//! `ADMIN_CONNECTION_LIMIT`. A slow or silent client cannot hold these ports, and a flood
//! of them cannot take more than `ADMIN_MAX_CONNECTIONS` descriptors per port (the rest
//! wait in the backlog), so it cannot starve readiness or the listeners of descriptors.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use crate::{
    connections::ConnectionLimit, kubernetes::store::ClusterStore, listeners, logging::LogLevel,
    metrics::Metrics, runtime::Live,
};

/// Which endpoints an address serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    Readiness,
    Metrics,
    Admin,
}

#[derive(Clone)]
pub struct AdminState {
    /// True once listeners are bound, false again when draining.
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// The live configuration, for `/config_dump`.
    pub live: Arc<ArcSwap<Live>>,
    /// The live log filter; None when logging was set up elsewhere (tests).
    pub log_level: Option<LogLevel>,
    /// Time for a request head, and idle time allowed between requests.
    pub head_timeout: Duration,
    /// The cluster's watches (`--kubernetes`), whose health `/config_dump` shows.
    pub cluster: Option<Arc<ClusterStore>>,
}

/// The longest an admin connection lasts, whatever it does: a client that stops reading
/// a response does not keep it.
pub const ADMIN_CONNECTION_LIMIT: Duration = Duration::from_secs(60);
/// Connections served at once on each admin port.
pub const ADMIN_MAX_CONNECTIONS: usize = 128;
/// After a failed accept (EMFILE and the like), pause instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Binds `addr` (and `::` beside an unspecified IPv4 address) for the caller's runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<Vec<TcpListener>> {
    listeners::bind_admin(addr)?
        .into_iter()
        .map(|listener| {
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)
        })
        .collect()
}

/// Binds `addr` now and serves `surface` from a thread with a runtime of its own.
pub fn serve_on_own_thread(
    addr: SocketAddr,
    surface: Surface,
    state: AdminState,
) -> std::io::Result<()> {
    let listeners = listeners::bind_admin(addr)?;
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("{surface:?}").to_lowercase())
        .spawn(move || {
            runtime.block_on(async move {
                let mut served = tokio::task::JoinSet::new();
                for listener in listeners {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            served.spawn(serve(listener, surface, state.clone()));
                        }
                        Err(e) => warn!(error = %e, ?surface, "admin endpoint not served"),
                    }
                }
                while served.join_next().await.is_some() {}
            })
        })?;
    Ok(())
}

pub async fn serve(listener: TcpListener, surface: Surface, state: AdminState) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, ?surface, "admin listening");
    }
    let limit = ConnectionLimit::new(ADMIN_MAX_CONNECTIONS, Gauge::default(), Counter::default());
    loop {
        let slot = limit.acquire().await;
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, ?surface, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // The connection ends at ADMIN_CONNECTION_LIMIT anyway; a longer head clock
            // (`--header-read-timeout` has no upper bound) would overflow hyper's
            // `Instant + Duration` and panic the admin thread.
            let head_timeout = state.head_timeout.min(ADMIN_CONNECTION_LIMIT);
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(surface, &state, &request)) }
            });
            // HTTP/1 only (probes and scrapers speak it): hyper's head clock also runs
            // while a kept-alive connection waits for its next request.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(ADMIN_CONNECTION_LIMIT, connection).await {
                Ok(Err(e)) => debug!(error = %e, ?surface, "admin connection"),
                Err(_) => debug!(?surface, "admin connection closed at its time limit"),
                Ok(Ok(())) => {}
            }
        });
    }
}

fn respond(
    surface: Surface,
    state: &AdminState,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method();
    match (surface, request.uri().path()) {
        (Surface::Admin, "/logging") if method == Method::POST => set_log_level(state, request),
        (Surface::Admin, "/logging") if method == Method::GET => match &state.log_level {
            Some(level) => text(StatusCode::OK, &format!("{}\n", level.current())),
            None => text(StatusCode::NOT_FOUND, "no log-level switch\n"),
        },
        _ if method != Method::GET => text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"),
        // Liveness: the process answers, draining or not (a drain must not get it killed).
        (Surface::Readiness, "/healthz/live") => text(StatusCode::OK, ""),
        (Surface::Readiness, "/healthz/ready") => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (Surface::Metrics, "/stats/prometheus") => {
            let mut response = text(StatusCode::OK, &state.metrics.encode());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (Surface::Admin, "/config_dump") => {
            match config_dump(state).and_then(|dump| serde_json::to_string_pretty(&dump)) {
                Ok(json) => {
                    let mut response = text(StatusCode::OK, &json);
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, ""),
    }
}

/// `POST /logging?level=DIRECTIVES`: `debug`, or `gateway=debug,hyper=info` (commas and
/// `=` as they are; `%2C`/`%3D` are decoded too).
fn set_log_level(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(log_level) = &state.log_level else {
        return text(StatusCode::NOT_FOUND, "no log-level switch\n");
    };
    let level = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| {
            pair.strip_prefix("level=").map(|v| {
                v.replace("%2C", ",")
                    .replace("%2c", ",")
                    .replace("%3D", "=")
                    .replace("%3d", "=")
            })
        });
    let Some(level) = level.filter(|l| !l.is_empty()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "usage: POST /logging?level=debug\n",
        );
    };
    match log_level.set(&level) {
        Ok(()) => {
            info!(level, "log level switched from the admin port");
            text(StatusCode::OK, &format!("{}\n", log_level.current()))
        }
        Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

/// The live snapshot and, with `--kubernetes`, how each watch of the cluster is doing.
fn config_dump(state: &AdminState) -> serde_json::Result<serde_json::Value> {
    let mut dump = serde_json::to_value(&*state.live.load().snapshot)?;
    if let (Some(cluster), Some(fields)) = (&state.cluster, dump.as_object_mut()) {
        fields.insert(
            "kubernetes".into(),
            serde_json::json!({ "watches": cluster.health() }),
        );
    }
    Ok(dump)
}
