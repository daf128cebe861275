//! The client against scripted upstreams on real sockets: each test's upstream reads the
//! request as it comes and answers with the bytes the case needs.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::*;

/// An upstream that reads one request (head and `body_len` body bytes, or a chunked body
/// to its end), then writes `answer` in pieces of `step` bytes and closes if told to.
/// Resolves to the request's bytes.
async fn upstream(
    answer: &'static [u8],
    step: usize,
    close: bool,
) -> (std::net::SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let request = read_request(&mut stream).await;
        for piece in answer.chunks(step.max(1)) {
            stream.write_all(piece).await.expect("write");
            if step < answer.len() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if close {
            let _ = stream.shutdown().await;
        } else {
            // Held open until the client is done with it.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        }
        request
    });
    (addr, task)
}

/// A request's bytes: the head, then its Content-Length or chunked body.
async fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.expect("read") == 0 {
            return request;
        }
        request.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
    if let Some(length) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|l| l.trim().parse::<usize>().ok())
    {
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.expect("body");
        request.extend_from_slice(&body);
    } else if head.contains("transfer-encoding: chunked") {
        while !request.ends_with(b"0\r\n\r\n") {
            if stream.read(&mut byte).await.expect("read") == 0 {
                break;
            }
            request.push(byte[0]);
        }
    }
    request
}

fn get(method: Method) -> Request<ProxyBody> {
    let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed());
    *request.method_mut() = method;
    *request.uri_mut() = "/item?x=1".parse().expect("uri");
    request
        .headers_mut()
        .insert(header::HOST, "upstream.example".parse().expect("host"));
    request
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    reusable: bool,
}

async fn exchange(addr: std::net::SocketAddr, request: Request<ProxyBody>) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let Ok(response) = send(stream, request).await else {
        panic!("the exchange failed");
    };
    let (mut parts, mut body) = response.into_parts();
    let mut passed = body.take_passed();
    super::passed::whole(&mut parts.headers, &mut passed);
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body");
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: data.into(),
        trailers,
        reusable: body.take_reusable().is_some(),
    }
}

#[tokio::test]
async fn a_chunked_response_with_trailers() {
    let (addr, upstream) = upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
        7,
        false,
    )
    .await;
    let answer = exchange(addr, get(Method::GET)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "hello world");
    let trailers = answer.trailers.expect("trailers");
    assert_eq!(trailers["x-checksum"], "42");
    assert!(answer.reusable);
    let request = upstream.await.expect("upstream");
    assert_eq!(
        String::from_utf8_lossy(&request),
        "GET /item?x=1 HTTP/1.1\r\nhost: upstream.example\r\n\r\n"
    );
}

#[tokio::test]
async fn a_close_delimited_response_ends_with_the_connection() {
    let (addr, _upstream) = upstream(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", 4, true).await;
    let answer = exchange(addr, get(Method::GET)).await;
    assert_eq!(answer.body, "until the end");
    assert!(
        !answer.reusable,
        "a close-delimited body used the connection up"
    );
}

#[tokio::test]
async fn no_body_after_head_204_and_304_whatever_the_head_says() {
    for (method, head) in [
        (
            Method::HEAD,
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"[..],
        ),
        (Method::GET, &b"HTTP/1.1 204 No Content\r\n\r\n"[..]),
        (
            Method::GET,
            &b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"[..],
        ),
    ] {
        let (addr, _upstream) = upstream(head, head.len(), false).await;
        let answer = exchange(addr, get(method.clone())).await;
        assert!(answer.body.is_empty(), "{method} {}", answer.status);
        assert!(answer.reusable, "{method} {}", answer.status);
        if method == Method::HEAD {
            assert_eq!(answer.headers[header::CONTENT_LENGTH], "10");
        }
    }
}

#[tokio::test]
async fn interim_answers_are_skipped_and_the_body_still_goes_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let upstream = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let request = read_request(&mut stream).await;
        stream
            .write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            )
            .await
            .expect("write");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        request
    });
    let mut request = get(Method::POST);
    *request.body_mut() = Full::new(Bytes::from_static(b"payload"))
        .map_err(|never| match never {})
        .boxed();
    request
        .headers_mut()
        .insert(header::EXPECT, "100-continue".parse().expect("expect"));
    let answer = exchange(addr, request).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body, "ok");
    let request = upstream.await.expect("upstream");
    let request = String::from_utf8_lossy(&request);
    assert!(request.contains("content-length: 7\r\n"), "{request}");
    assert!(request.ends_with("\r\n\r\npayload"), "{request}");
}

#[tokio::test]
async fn a_streamed_body_of_unknown_length_goes_chunked() {
    let (addr, upstream) =
        upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 64, false).await;
    let frames = futures::stream::iter([
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::data(Bytes::from(vec![b'z'; 5000]))),
    ]);
    let mut request = get(Method::POST);
    *request.body_mut() = StreamBody::new(frames).boxed();
    let answer = exchange(addr, request).await;
    assert_eq!(answer.status, 200);
    assert!(answer.reusable);
    let request = upstream.await.expect("upstream");
    let text = String::from_utf8_lossy(&request);
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    let body_at = text.find("\r\n\r\n").expect("head") + 4;
    let expected = format!("3\r\nabc\r\n1388\r\n{}\r\n0\r\n\r\n", "z".repeat(5000));
    assert_eq!(&text[body_at..], expected);
}

#[tokio::test]
async fn a_response_head_split_across_reads() {
    let (addr, _upstream) = upstream(
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx-b: two\r\ncontent-length: 5\r\n\r\nhello",
        1,
        false,
    )
    .await;
    let answer = exchange(addr, get(Method::GET)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["x-b"], "two");
    assert_eq!(answer.body, "hello");
    assert!(answer.reusable);
}

#[tokio::test]
async fn a_connection_that_says_close_or_speaks_http_1_0_is_not_reused() {
    for head in [
        &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
        &b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
    ] {
        let (addr, _upstream) = upstream(head, head.len(), false).await;
        let answer = exchange(addr, get(Method::GET)).await;
        assert_eq!(answer.body, "ok");
        assert!(!answer.reusable, "{}", String::from_utf8_lossy(head));
    }
    // HTTP/1.0 with keep-alive may be reused.
    let head = b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok";
    let (addr, _upstream) = upstream(head, head.len(), false).await;
    assert!(exchange(addr, get(Method::GET)).await.reusable);
}

#[test]
fn a_standard_connection_header_is_read_not_kept_and_one_naming_headers_is_kept() {
    let parse = |head: &[u8]| {
        let mut head = parse_response(head, false)
            .expect("parsed")
            .expect("complete");
        let headers = std::mem::replace(&mut head.headers, HeadFields::Map(HeaderMap::new()));
        (head, headers.into_map())
    };
    let kept = parse(b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive\r\nkeep-alive: timeout=5\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n");
    assert!(kept.0.keep_alive);
    assert_eq!(
        kept.1.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["x-a", "content-length"]
    );
    let closing = parse(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
    assert!(!closing.0.keep_alive);
    assert!(!closing.1.contains_key(header::CONNECTION));
    // Names another header: kept for the proxy's hop-by-hop strip to read.
    let naming = parse(
        b"HTTP/1.1 200 OK\r\nconnection: close, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n",
    );
    assert!(!naming.0.keep_alive);
    assert_eq!(naming.1[header::CONNECTION], "close, x-hop");
    // A 101 keeps its Connection: the upgraded connection is passed through.
    let switching = parse(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    );
    assert_eq!(switching.1[header::CONNECTION], "upgrade");
}

#[tokio::test]
async fn malformed_responses_are_protocol_errors_and_a_close_is_not() {
    for (answer, protocol) in [
        (&b"HTTP/1.1 2OO OK\r\n\r\n"[..], true),
        (&b"garbage\r\n\r\n"[..], true),
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
            true,
        ),
        (
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
            true,
        ),
        (&b"HTTP/1.1 200 OK\r\ncontent-le"[..], false),
        (&b""[..], false),
    ] {
        let (addr, _upstream) = upstream(answer, answer.len().max(1), true).await;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let error = match send(stream, get(Method::GET)).await {
            Err(failed) => failed.error,
            Ok(response) => match response.into_body().collect().await {
                Err(error) => error,
                Ok(_) => panic!("{}: accepted", String::from_utf8_lossy(answer)),
            },
        };
        assert_eq!(
            error.is_protocol(),
            protocol,
            "{}: {error}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[tokio::test]
async fn a_response_body_cut_short_is_an_error() {
    let (addr, _upstream) = upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        64,
        true,
    )
    .await;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let Ok(response) = send(stream, get(Method::GET)).await else {
        panic!("no head");
    };
    let Err(error) = response.into_body().collect().await else {
        panic!("the body was not cut");
    };
    assert!(matches!(error, ClientError::Closed), "{error}");
}

#[test]
fn chunk_sizes_are_written_in_lowercase_hex() {
    for (n, text) in [(0, "0"), (1, "1"), (15, "f"), (16, "10"), (5000, "1388")] {
        let mut out = Vec::new();
        push_hex(&mut out, n);
        assert_eq!(out, text.as_bytes());
    }
}

#[test]
fn appended_fields_are_written_after_the_map_s() {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, http::HeaderValue::from_static("a.example"));
    let appended = [
        (&b"x-forwarded-for"[..], &b"10.0.0.1"[..]),
        (b"x-request-id", b"id-1"),
    ];
    let fields = || {
        headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
            .chain(appended)
    };
    let body = Empty::new().map_err(|never| match never {}).boxed();
    let outbound = Outbound::new(&Method::GET, "/item", Lines::default(), fields, body);
    assert_eq!(
        String::from_utf8_lossy(&outbound.head),
        "GET /item HTTP/1.1\r\nhost: a.example\r\nx-forwarded-for: 10.0.0.1\r\n\
         x-request-id: id-1\r\n\r\n"
    );
}
