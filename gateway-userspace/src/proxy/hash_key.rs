//! The key a hashing cluster (DestinationRule `consistentHash`) balances a request by,
//! as Envoy's route hash policy computes it; and the cookie Envoy generates when a
//! `httpCookie` policy with a `ttl` finds none.

use std::{net::SocketAddr, time::Duration};

use http::{HeaderMap, HeaderValue, header};

use crate::{runtime::hash_ring::hash_key, snapshot::HashPolicy};

/// A request's hash, and the Set-Cookie its response carries when the key was generated.
pub(super) struct HashKey {
    pub hash: u64,
    pub set_cookie: Option<HeaderValue>,
}

/// The request's key by `policy`; None when the request lacks it (the balancer then
/// picks at random, as Envoy does without a hash).
pub(super) fn request_key(
    policy: &HashPolicy,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> Option<HashKey> {
    let plain = |bytes: &[u8]| {
        Some(HashKey {
            hash: hash_key(bytes),
            set_cookie: None,
        })
    };
    match policy {
        HashPolicy::Header(name) => {
            // Every value of a repeated header, in order.
            let mut values = headers.get_all(name.as_str()).iter().peekable();
            values.peek()?;
            let joined: Vec<&[u8]> = values.map(HeaderValue::as_bytes).collect();
            plain(&joined.join(&b","[..]))
        }
        HashPolicy::SourceIp => plain(peer.ip().to_string().as_bytes()),
        HashPolicy::QueryParameter(name) => {
            let value = query?.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then_some(value)
            })?;
            plain(value.as_bytes())
        }
        HashPolicy::Cookie { name, path, ttl } => match cookie(headers, name) {
            Some(value) => plain(value.as_bytes()),
            None => {
                let ttl = (*ttl)?;
                // One value per client connection, as Envoy derives it from the
                // connection's address: its concurrent requests land together.
                let value = format!("{:016x}", hash_key(peer.to_string().as_bytes()));
                Some(HashKey {
                    hash: hash_key(value.as_bytes()),
                    set_cookie: set_cookie(name, &value, path.as_deref(), ttl),
                })
            }
        },
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.trim_matches('"'))
        })
}

/// Envoy's generated cookie: quoted value, Max-Age unless a session cookie (ttl 0),
/// Path when set, HttpOnly.
fn set_cookie(name: &str, value: &str, path: Option<&str>, ttl: Duration) -> Option<HeaderValue> {
    let mut cookie = format!("{name}=\"{value}\"");
    if !ttl.is_zero() {
        cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Some(path) = path {
        cookie.push_str(&format!("; Path={path}"));
    }
    cookie.push_str("; HttpOnly");
    HeaderValue::from_str(&cookie).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "192.0.2.7:40000".parse().expect("address")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn the_same_header_value_gives_the_same_key_and_a_missing_header_none() {
        let policy = HashPolicy::Header("x-user".into());
        let key = |h: &HeaderMap| request_key(&policy, h, None, peer()).map(|k| k.hash);
        let alice = key(&headers(&[("x-user", "alice")]));
        assert!(alice.is_some());
        assert_eq!(alice, key(&headers(&[("x-user", "alice")])));
        assert_ne!(alice, key(&headers(&[("x-user", "bob")])));
        assert_eq!(key(&HeaderMap::new()), None);
    }

    #[test]
    fn a_query_parameter_is_found_among_others() {
        let policy = HashPolicy::QueryParameter("user".into());
        let key = |q| request_key(&policy, &HeaderMap::new(), Some(q), peer()).map(|k| k.hash);
        assert_eq!(key("a=1&user=alice"), key("user=alice"));
        assert_eq!(key("username=alice"), None);
    }

    #[test]
    fn a_missing_cookie_is_generated_only_with_a_ttl() {
        let policy = |ttl| HashPolicy::Cookie {
            name: "sticky".into(),
            path: Some("/".into()),
            ttl,
        };
        let without_ttl = request_key(&policy(None), &HeaderMap::new(), None, peer());
        assert!(without_ttl.is_none());
        let generated = request_key(
            &policy(Some(Duration::from_secs(60))),
            &HeaderMap::new(),
            None,
            peer(),
        )
        .expect("a generated key");
        let set = generated.set_cookie.expect("a Set-Cookie");
        let set = set.to_str().expect("ascii");
        assert!(set.starts_with("sticky=\""), "{set}");
        assert!(set.ends_with("; Max-Age=60; Path=/; HttpOnly"), "{set}");
        // The client sending it back hashes to the same key.
        let value = set.split(';').next().expect("pair");
        let echoed = HeaderMap::from_iter([(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {value}")).expect("value"),
        )]);
        let again = request_key(&policy(None), &echoed, None, peer()).expect("a key");
        assert_eq!(again.hash, generated.hash);
        assert!(again.set_cookie.is_none());
    }

    #[test]
    fn a_session_cookie_has_no_max_age() {
        let policy = HashPolicy::Cookie {
            name: "s".into(),
            path: None,
            ttl: Some(Duration::ZERO),
        };
        let key = request_key(&policy, &HeaderMap::new(), None, peer()).expect("a key");
        let set = key.set_cookie.expect("a Set-Cookie");
        assert!(set.to_str().expect("ascii").ends_with("\"; HttpOnly"));
    }
}
