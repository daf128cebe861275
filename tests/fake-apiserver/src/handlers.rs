//! HTTP handling: discovery, LIST, WATCH, GET, and the writes, with fault injection and
//! the request log around them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::errors::ApiError;
use crate::faults::{Outage, RequestRecord};
use crate::query::Query;
use crate::resources::Resource;
use crate::routes::{self, ResourcePath, Route};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::state::{Shared, lock};
use crate::store::Filter;
use crate::watch::{self, WatchRequest};
use crate::{discovery, openapi};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) type Answer = Result<Response<Body>, ApiError>;

pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let raw_query = request.uri().query().unwrap_or("").to_string();
    let query = Query::parse(&raw_query);
    let delay = lock(&shared.faults).delay;
    let outage = *shared.outage.borrow();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (verb, answer) = if outage == Outage::Unavailable {
        ("other", Err(ApiError::from_code(503)))
    } else {
        dispatch(&shared, request, &path, &query).await
    };
    let response = answer.unwrap_or_else(|error| json_response(error.code, &error.status()));
    lock(&shared.requests).push(RequestRecord {
        method,
        path,
        query: raw_query,
        status: response.status().as_u16(),
        verb,
        resource_version: query.get("resourceVersion").map(str::to_string),
    });
    Ok(response)
}

pub(crate) fn json_response(code: u16, value: &Value) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn not_found() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn dispatch(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    path: &str,
    query: &Query,
) -> (&'static str, Answer) {
    let route = routes::parse(path);
    if let Route::Resource(target) = route {
        return resource(shared, request, target, query).await;
    }
    if request.method() != Method::GET {
        return (
            "other",
            Err(ApiError::new(405, "MethodNotAllowed", "method not allowed")),
        );
    }
    let served = lock(&shared.served).clone();
    let document = match route {
        Route::Version => Some(discovery::version()),
        Route::CoreVersions => Some(discovery::core_versions()),
        Route::GroupList => Some(discovery::group_list(&served)),
        Route::Group(group) => discovery::group(&served, group),
        Route::ResourceList { group, version } => discovery::resource_list(&served, group, version),
        Route::OpenApiRoot => Some(openapi::root(&served)),
        Route::OpenApi(path) => openapi::group_version(&served, path),
        Route::Resource(_) | Route::Unknown => None,
    };
    let answer = document
        .map(|d| json_response(200, &d))
        .ok_or_else(not_found);
    ("discovery", answer)
}

async fn resource(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    target: ResourcePath<'_>,
    query: &Query,
) -> (&'static str, Answer) {
    let method = request.method().clone();
    let verb = match (&method, target.name, target.status) {
        (&Method::GET, None, _) if query.flag("watch") => "watch",
        (&Method::GET, None, _) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, None, _) => "create",
        (&Method::PUT, Some(_), _) => "update",
        (&Method::PATCH, Some(_), _) => "patch",
        (&Method::DELETE, Some(_), false) => "delete",
        _ => "other",
    };
    let Some(res) = shared.find(target.group, target.version, target.plural) else {
        return (verb, Err(not_found()));
    };
    // A namespace prefix on a cluster-scoped kind, or a named namespaced object without one.
    let scoped_wrong = (target.namespace.is_some() && !res.namespaced)
        || (res.namespaced && target.name.is_some() && target.namespace.is_none());
    if scoped_wrong || (target.status && !res.status_subresource) {
        return (verb, Err(not_found()));
    }
    if let Some(code) = lock(&shared.faults).failures.get(&res.key()).copied() {
        return (verb, Err(ApiError::from_code(code)));
    }
    let cx = Target {
        shared,
        res,
        version: target.version.to_string(),
        namespace: target.namespace.unwrap_or("").to_string(),
        name: target.name.unwrap_or("").to_string(),
        status: target.status,
    };
    let answer = match verb {
        "watch" => cx.watch(query),
        "list" => cx.list(query),
        "get" => cx.get(),
        "delete" => match read_body(request).await {
            Ok((body, _)) => cx.delete(&body),
            Err(e) => Err(e),
        },
        // kubectl's typed commands (`create namespace`, ...) send protobuf.
        "create" | "update" if is_protobuf(&request) => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the fake API server reads JSON request bodies only",
        )),
        "create" | "update" | "patch" => match read_body(request).await {
            Ok(body) => cx.write(verb, &body, content_type_of(&body.1), query),
            Err(e) => Err(e),
        },
        _ => Err(ApiError::new(405, "MethodNotAllowed", "method not allowed")),
    };
    (verb, answer)
}

fn is_protobuf(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("protobuf"))
}

fn content_type_of(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

async fn read_body(request: Request<Incoming>) -> Result<(Bytes, String), ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    Ok((body.to_bytes(), content_type))
}

/// The resource a request is about, with its path's namespace and name.
pub(crate) struct Target<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) res: Resource,
    pub(crate) version: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) status: bool,
}

impl Target<'_> {
    /// The object as served through the requested version.
    pub(crate) fn served(&self, mut object: Value) -> Value {
        if let Some(map) = object.as_object_mut() {
            map.insert(
                "apiVersion".into(),
                self.res.api_version(&self.version).into(),
            );
            map.insert("kind".into(), self.res.kind.into());
        }
        object
    }

    fn filter(&self, query: &Query) -> Result<Filter, ApiError> {
        let invalid = |e: crate::selectors::SelectorError| ApiError::bad_request(e.to_string());
        Ok(Filter {
            namespace: (!self.namespace.is_empty()).then(|| self.namespace.clone()),
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
                .map_err(invalid)?,
            fields: FieldSelector::parse(
                query.get("fieldSelector").unwrap_or(""),
                self.res.kind == "Secret",
            )
            .map_err(invalid)?,
        })
    }

    fn list(&self, query: &Query) -> Answer {
        let filter = self.filter(query)?;
        let limit = match query.get("limit").filter(|l| !l.is_empty()) {
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let token = query.get("continue").filter(|c| !c.is_empty());
        let page = lock(&self.shared.store).list(&self.res, &filter, limit, token)?;
        let items: Vec<Value> = page.items.into_iter().map(|o| self.served(o)).collect();
        let mut metadata = json!({"resourceVersion": page.rv.to_string()});
        if let Some(token) = page.continue_token {
            metadata["continue"] = token.into();
        }
        let list = json!({
            "apiVersion": self.res.api_version(&self.version),
            "kind": self.res.list_kind(),
            "metadata": metadata,
            "items": items,
        });
        Ok(json_response(200, &list))
    }

    fn watch(&self, query: &Query) -> Answer {
        let filter = self.filter(query)?;
        let initial_events_end = query.flag("sendInitialEvents");
        let from =
            match query.get("resourceVersion") {
                _ if initial_events_end => None,
                None | Some("" | "0") => None,
                Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
            };
        let timeout = match query.get("timeoutSeconds") {
            Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
            })?)),
            None => None,
        };
        let start = lock(&self.shared.store).watch(&self.res, &filter, from);
        let body = match start {
            Ok(start) => {
                let request = WatchRequest {
                    res: self.res.clone(),
                    version: self.version.clone(),
                    filter,
                    timeout,
                    bookmarks: query.flag("allowWatchBookmarks"),
                    initial_events_end,
                };
                watch::stream(self.shared.clone(), request, start)
            }
            // As the apiserver's watch cache does: 200, then one ERROR event.
            Err(error) => watch::error_body(&error),
        };
        let mut response = Response::new(body.boxed_unsync());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }

    fn get(&self) -> Answer {
        let object = lock(&self.shared.store)
            .get(&self.res, &self.namespace, &self.name)
            .ok_or_else(|| ApiError::not_found(&self.qualified(), &self.name))?;
        Ok(json_response(200, &self.served((*object).clone())))
    }

    pub(crate) fn qualified(&self) -> String {
        if self.res.group.is_empty() {
            self.res.plural.to_string()
        } else {
            format!("{}.{}", self.res.plural, self.res.group)
        }
    }
}
