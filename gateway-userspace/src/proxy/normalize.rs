//! Request paths as routing and the upstream see them, normalized as Istio's gateway
//! does (mesh `pathNormalization`, `--path-normalization` here). By default `BASE`
//! (Envoy's `normalize_path` on, `merge_slashes` off, escaped slashes kept): RFC 3986
//! dot segments removed (`%2E` counts as a dot, `..;params` as `..`), percent-encoded
//! unreserved characters decoded, backslashes read as slashes. `MERGE_SLASHES` also
//! merges runs of slashes; `DECODE_AND_MERGE_SLASHES` first decodes `%2F` and `%5C`
//! (Envoy's `UNESCAPE_AND_FORWARD`). Without it `/public/../admin` would match
//! `/public`'s route while the upstream serves `/admin`. A path that cannot be
//! normalized (a broken or NUL escape) is refused (400), as Envoy refuses it.

use std::borrow::Cow;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub(super) enum PathError {
    #[error("`%` not followed by two hex digits at byte {0}")]
    BadEscape(usize),
    #[error("percent-encoded NUL at byte {0}")]
    EscapedNul(usize),
}

/// Istio's mesh `pathNormalization.normalization` (`NONE` is left out: it would let
/// `/public/../admin` meet `/public`'s rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PathNormalization {
    /// RFC 3986 dot segments, unreserved escapes decoded, `\` read as `/` (Istio's default).
    #[default]
    Base,
    /// `Base`, then runs of slashes merged: `/a//b` is `/a/b`.
    MergeSlashes,
    /// `%2F` and `%5C` decoded first, then `MergeSlashes`: `/a%2Fb` is `/a/b`.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    fn merges_slashes(self) -> bool {
        self != PathNormalization::Base
    }

    fn decodes_slashes(self) -> bool {
        self == PathNormalization::DecodeAndMergeSlashes
    }
}

/// The normalized form of `path` (origin-form, without the query); borrowed when the
/// path is already normal.
pub(super) fn normalize_path(
    path: &str,
    mode: PathNormalization,
) -> Result<Cow<'_, str>, PathError> {
    // `windows`, not `contains("//")`: a string pattern sets up a searcher per call.
    let doubled = || path.as_bytes().windows(2).any(|pair| pair == b"//");
    if is_normal(path.as_bytes()) && !(mode.merges_slashes() && doubled()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, mode.decodes_slashes())?;
    let mut normal = remove_dot_segments(&decoded);
    if mode.merges_slashes() {
        normal.dedup_by(|next, previous| *next == b'/' && *previous == b'/');
    }
    if normal == path.as_bytes() {
        return Ok(Cow::Borrowed(path));
    }
    // Only ASCII was decoded and only ASCII separators were touched: still UTF-8.
    String::from_utf8(normal)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadEscape(0))
}

/// A path the normalization leaves as it is, told without allocating (most paths):
/// absolute, no escape or backslash to decode, no dot segment to remove.
fn is_normal(path: &[u8]) -> bool {
    path.first() == Some(&b'/')
        && !path.iter().any(|&b| b == b'%' || b == b'\\')
        && !path[1..].split(|&b| b == b'/').any(|segment| {
            let name = segment.split(|&b| b == b';').next().unwrap_or_default();
            name == b"." || name == b".."
        })
}

/// Percent-decoding of unreserved characters (and of `%2F`, `%5C` when `slashes`; other
/// escapes kept as written, as Envoy keeps them), and `\` read as `/`.
fn decode(path: &str, slashes: bool) -> Result<Vec<u8>, PathError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 1);
    if bytes.first() != Some(&b'/') {
        out.push(b'/');
    }
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'\\' => out.push(b'/'),
            b'%' => {
                let value = bytes
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or(PathError::BadEscape(index))?;
                if value == 0 {
                    return Err(PathError::EscapedNul(index));
                }
                if is_unreserved(value) {
                    out.push(value);
                } else if slashes && (value == b'/' || value == b'\\') {
                    out.push(b'/');
                } else {
                    out.extend_from_slice(&bytes[index..index + 3]);
                }
                index += 3;
                continue;
            }
            _ => out.push(byte),
        }
        index += 1;
    }
    Ok(out)
}

/// RFC 3986 §2.3.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §5.2.4 over a path that starts with `/`. A segment is a dot segment by
/// what precedes its first `;` (Tomcat-style path parameters hide `..` otherwise).
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let segments: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&[u8]> = Vec::with_capacity(segments.len());
    for (index, segment) in segments.iter().enumerate() {
        let name = segment.split(|&b| b == b';').next().unwrap_or_default();
        match name {
            b"." => {}
            b".." => {
                kept.pop();
            }
            _ => {
                kept.push(segment);
                continue;
            }
        }
        // A dot segment at the end leaves a directory: "/a/b/.." is "/a/".
        if index == last {
            kept.push(b"");
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in kept {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_as_envoy_normalizes_them() {
        let table = [
            ("/", "/"),
            ("/xyz", "/xyz"),
            ("/x/y/z", "/x/y/z"),
            ("/public/../admin", "/admin"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/./c", "/a/b/c"),
            ("a/b/../c", "/a/c"),
            ("/a/b/../../../../c", "/c"),
            ("/a/..\\c", "/c"),
            ("/a\\b", "/a/b"),
            ("/%c0%af", "/%c0%af"),
            ("/%5c%25", "/%5c%25"),
            ("/a/%2F/b", "/a/%2F/b"),
            ("/a/b/%2E%2E/c", "/a/c"),
            ("/a/b/%2e./c", "/a/c"),
            ("/a/b/%2E/c", "/a/b/c"),
            ("..", "/"),
            ("/..", "/"),
            ("/../a/b", "/a/b"),
            ("/./a/b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a//b", "/a//b"),
            ("/a//..", "/a/"),
            ("/xyz/..;foo=bar/abc", "/abc"),
            ("/..;foo=bar/abc", "/abc"),
            ("/xyz/..;foo=bar", "/"),
            ("/xyz/.;foo=bar/abc", "/xyz/abc"),
            ("/%41%7a%30%2d%5F%7E", "/Az0-_~"),
            ("/%61dmin", "/admin"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a;b=c/d", "/a;b=c/d"),
            ("/...", "/..."),
            ("/.../..", "/"),
        ];
        for (path, normal) in table {
            assert_eq!(
                normalize_path(path, PathNormalization::Base).as_deref(),
                Ok(normal),
                "{path}"
            );
        }
        assert!(matches!(
            normalize_path("/already/fine", PathNormalization::Base),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn slashes_are_merged_and_escaped_slashes_decoded_as_istio_asks() {
        use PathNormalization::{Base, DecodeAndMergeSlashes, MergeSlashes};
        // (path, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)
        let table = [
            ("/a//b", "/a/b", "/a/b"),
            ("//a///b//", "/a/b/", "/a/b/"),
            ("/a/%2F/b", "/a/%2F/b", "/a/b"),
            ("/a%2fb", "/a%2fb", "/a/b"),
            ("/a%5Cb", "/a%5Cb", "/a/b"),
            ("/a/b%2F..%2Fc", "/a/b%2F..%2Fc", "/a/c"),
            ("/a//../b", "/a/b", "/a/b"),
            ("/a\\\\b", "/a/b", "/a/b"),
            ("/fine", "/fine", "/fine"),
        ];
        for (path, merged, decoded) in table {
            assert_eq!(
                normalize_path(path, MergeSlashes).as_deref(),
                Ok(merged),
                "{path}"
            );
            assert_eq!(
                normalize_path(path, DecodeAndMergeSlashes).as_deref(),
                Ok(decoded),
                "{path}"
            );
        }
        // BASE keeps them all, as Istio's default does.
        assert_eq!(normalize_path("/a//b", Base).as_deref(), Ok("/a//b"));
        assert_eq!(normalize_path("/a%2Fb", Base).as_deref(), Ok("/a%2Fb"));
        assert!(matches!(
            normalize_path("/already/fine", MergeSlashes),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn the_quick_check_passes_only_paths_the_full_normalization_leaves_alone() {
        for path in [
            "/",
            "/x",
            "/x/y/",
            "/a;b=c/d",
            "/...",
            "/.../..",
            "/a/./b",
            "/a/../b",
            "/.",
            "/..",
            "/a/.;x",
            "/a/..;x/",
            "/file.html",
            "/.well-known/x",
            "/a%2fb",
            "/a\\b",
            "a/b",
            "",
            "//x",
            "/x//y",
            "/%41",
        ] {
            let full = decode(path, false).map(|decoded| remove_dot_segments(&decoded));
            if is_normal(path.as_bytes()) {
                assert_eq!(full.as_deref(), Ok(path.as_bytes()), "{path}");
            }
        }
        assert!(is_normal(b"/file.html/x//y;p=1"));
        assert!(!is_normal(b"/a/../b"));
    }

    #[test]
    fn broken_escapes_are_refused() {
        let table = [
            ("/xyz/.%00../abc", PathError::EscapedNul(6)),
            ("/xyz/%00.%00./abc", PathError::EscapedNul(5)),
            ("/xyz/AAAAA%%0000/abc", PathError::BadEscape(10)),
            ("/a%", PathError::BadEscape(2)),
            ("/a%4", PathError::BadEscape(2)),
            ("/a%zz", PathError::BadEscape(2)),
            ("/a%+1", PathError::BadEscape(2)),
        ];
        for (path, error) in table {
            assert_eq!(
                normalize_path(path, PathNormalization::Base),
                Err(error),
                "{path}"
            );
        }
    }
}
