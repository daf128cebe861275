//! The hostile-client suite: what one client (or one bad Secret) could do to take the
//! gateway down, each tried for real against the real binary: memory held by stalled
//! uploads and streams, time held by slow heads and idle tunnels, descriptors, mirrors
//! to a black hole, the access log's pipe, and trust (session resumption, headers, paths,
//! broken credentials).

mod bodies;
mod edges;
mod ops;
mod passthrough;
mod trust;
