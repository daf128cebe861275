//! The gateway's own answers.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};

use super::{body::ProxyBody, grpc};

pub(super) fn local_response(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let body: ProxyBody = if body.is_empty() {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|never| match never {})
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if status != StatusCode::NOT_FOUND {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    grpc::mark_local(response, None)
}
