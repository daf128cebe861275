//! A small in-process stand-in for the API server's object endpoints (GET, POST, PUT and
//! PUT `…/status`, with resourceVersion compare-and-swap and `Status` errors), on a real
//! loopback socket: enough for the lease and status-writer tests. The protocol-faithful
//! fake (discovery, LIST, WATCH, selectors, fault knobs) is tests/fake-apiserver.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    /// Objects by URL path (without `/status`).
    objects: BTreeMap<String, Value>,
    last_version: u64,
    /// `METHOD path` of every request, in order.
    requests: Vec<String>,
    /// Answer every request with this code until cleared (an API server outage).
    failing: Option<u16>,
}

pub(crate) struct TestApiServer {
    url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestApiServer {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let state = Arc::new(Mutex::new(State::default()));
        let served = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(Arc::clone(&state), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestApiServer { url, state, task }
    }

    pub(crate) fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    /// Stores `object` at `path` as another writer would, with a new resourceVersion.
    pub(crate) fn put(&self, path: &str, mut object: Value) {
        let mut state = lock(&self.state);
        stamp(&mut state, &mut object);
        state.objects.insert(path.to_owned(), object);
    }

    pub(crate) fn get(&self, path: &str) -> Option<Value> {
        lock(&self.state).objects.get(path).cloned()
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    pub(crate) fn count(&self, prefix: &str) -> usize {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    }

    pub(crate) fn fail_with(&self, code: Option<u16>) {
        lock(&self.state).failing = code;
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn stamp(state: &mut State, object: &mut Value) {
    state.last_version += 1;
    object["metadata"]["resourceVersion"] = json!(state.last_version.to_string());
}

async fn answer(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let mut state = lock(&state);
    state.requests.push(format!("{} {path}", parts.method));
    if let Some(code) = state.failing {
        return Ok(failure(code, "InternalError", "failing on purpose"));
    }
    let (key, status_only) = match path.strip_suffix("/status") {
        Some(key) => (key.to_owned(), true),
        None => (path.clone(), false),
    };
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let response = match parts.method {
        Method::GET => match state.objects.get(&key) {
            Some(object) => ok(StatusCode::OK, object),
            None => failure(404, "NotFound", "not found"),
        },
        Method::POST => {
            let name = sent["metadata"]["name"].as_str().unwrap_or_default();
            let key = format!("{key}/{name}");
            if state.objects.contains_key(&key) {
                failure(409, "AlreadyExists", "already exists")
            } else {
                let mut object = sent;
                object["metadata"]["generation"] = json!(1);
                stamp(&mut state, &mut object);
                state.objects.insert(key, object.clone());
                ok(StatusCode::CREATED, &object)
            }
        }
        Method::PUT => match state.objects.get(&key).cloned() {
            None => failure(404, "NotFound", "not found"),
            Some(existing)
                if existing["metadata"]["resourceVersion"]
                    != sent["metadata"]["resourceVersion"] =>
            {
                failure(409, "Conflict", "the object has been modified")
            }
            Some(existing) => {
                let mut object = if status_only {
                    let mut object = existing;
                    object["status"] = sent["status"].clone();
                    object
                } else {
                    sent
                };
                stamp(&mut state, &mut object);
                state.objects.insert(key, object.clone());
                ok(StatusCode::OK, &object)
            }
        },
        _ => failure(405, "MethodNotAllowed", "method not allowed"),
    };
    Ok(response)
}

fn ok(code: StatusCode, object: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(object.to_string())));
    *response.status_mut() = code;
    response
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    let mut response = Response::new(Full::new(Bytes::from(status.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}
