//! Host intersection, shared by both front ends: the hosts a route (VirtualService host,
//! HTTPRoute hostname) and a server or listener both accept.

/// The hosts both a VirtualService and a server accept: the more specific of the two,
/// or None when they are disjoint.
pub fn intersect_hosts(vs_host: &str, server_host: &str) -> Option<String> {
    let (a, b) = (
        vs_host.to_ascii_lowercase(),
        server_host.to_ascii_lowercase(),
    );
    if a == b {
        return Some(a);
    }
    if covers(&b, &a) {
        return Some(a);
    }
    if covers(&a, &b) {
        return Some(b);
    }
    None
}

/// Does pattern `wide` accept every host `narrow` accepts?
pub(super) fn covers(wide: &str, narrow: &str) -> bool {
    if wide == "*" {
        return true;
    }
    match wide.strip_prefix('*') {
        // `*.example.com` covers `a.example.com` and `*.a.example.com`.
        Some(suffix) => narrow.len() > suffix.len() && narrow.ends_with(suffix),
        None => false,
    }
}
