use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

use super::*;

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

async fn written(
    response: Response<TestBody>,
    method: Method,
    version: Version,
) -> (String, Written) {
    let mut out = Vec::new();
    let answering = Answering {
        method: &method,
        version,
        keep_alive: true,
    };
    let ending = write(&mut out, response, None, answering).await;
    let ending = ending.unwrap_or_else(|e| panic!("{e}"));
    (String::from_utf8_lossy(&out).into_owned(), ending)
}

fn streamed(chunks: &[&'static str], trailer: bool) -> TestBody {
    let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    if trailer {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        frames.push(Ok(Frame::trailers(trailers)));
    }
    StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
}

fn without_date(answer: &str) -> String {
    answer
        .lines()
        .filter(|l| !l.starts_with("date: "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn bodies_are_framed_by_length_chunks_or_close() {
    let full = Response::new(Full::new(Bytes::from_static(b"hello")).boxed_unsync());
    let (answer, ending) = written(full, Method::GET, Version::HTTP_11).await;
    assert_eq!(
        without_date(&answer),
        "HTTP/1.1 200 OK\ncontent-length: 5\n\nhello"
    );
    assert_eq!(ending, Written::KeepAlive);

    let chunked = Response::new(streamed(&["ab", "cde"], true));
    let (answer, _) = written(chunked, Method::GET, Version::HTTP_11).await;
    assert!(
        answer.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\ngrpc-status: 0\r\n\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("transfer-encoding: chunked\r\n"));

    // HTTP/1.0 has no chunked coding: the body ends with the connection.
    let old = Response::new(streamed(&["ab"], false));
    let (answer, ending) = written(old, Method::GET, Version::HTTP_10).await;
    assert!(answer.ends_with("\r\n\r\nab") && answer.contains("connection: close"));
    assert_eq!(ending, Written::Close);

    let mut head = Response::new(Empty::new().boxed_unsync());
    head.headers_mut()
        .insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("42"));
    let (answer, _) = written(head, Method::HEAD, Version::HTTP_11).await;
    assert_eq!(
        without_date(&answer),
        "HTTP/1.1 200 OK\ncontent-length: 42\n"
    );
}

#[tokio::test]
async fn connection_close_is_the_codecs_to_say() {
    let mut closing = Response::new(Empty::new().boxed_unsync());
    *closing.status_mut() = StatusCode::BAD_REQUEST;
    closing
        .headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    let (answer, ending) = written(closing, Method::POST, Version::HTTP_11).await;
    assert_eq!(ending, Written::Close);
    assert_eq!(answer.matches("connection: close").count(), 1, "{answer}");
    assert!(answer.contains("content-length: 0\r\n"));
}

#[test]
fn refusals_close() {
    let answer = String::from_utf8_lossy(&refusal(StatusCode::URI_TOO_LONG)).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
        "{answer}"
    );
    assert!(answer.contains("connection: close\r\n") && answer.ends_with("\r\n\r\n"));
}

#[test]
fn numbers_are_written_as_formatting_writes_them() {
    for n in [
        0u64,
        1,
        9,
        10,
        99,
        100,
        12_345,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        assert_eq!(out, n.to_string().as_bytes());
        let mut line = b"x\r\n".to_vec();
        push_content_length(&mut line, n);
        assert_eq!(line, format!("x\r\ncontent-length: {n}\r\n").as_bytes());
    }
    for n in [0usize, 1, 15, 16, 255, 4096, 0xdead_beef, usize::MAX] {
        let mut out = Vec::new();
        push_hex(&mut out, n);
        assert_eq!(out, format!("{n:x}").as_bytes());
    }
}

#[test]
fn usual_status_lines_are_the_lines_any_status_gets() {
    for code in 100..=599u16 {
        let Ok(status) = StatusCode::from_u16(code) else {
            continue;
        };
        if let Some(line) = usual_status_line(&status) {
            let reason = status.canonical_reason().unwrap_or("");
            assert_eq!(line, format!("HTTP/1.1 {code} {reason}\r\n").as_bytes());
        }
    }
}

#[test]
fn content_length_lines_carry_the_number_as_formatting_writes_it() {
    for n in [0u64, 7, 10, 12_345, u64::MAX] {
        let mut out = b"x".to_vec();
        push_content_length(&mut out, n);
        assert_eq!(out, format!("xcontent-length: {n}\r\n").as_bytes());
    }
}
