//! Our HTTP/1.1 server codec, on `httparse` (issue 15): request heads parsed from a buffer
//! the connection owns, bodies framed (Content-Length, chunked with trailers) and streamed
//! to the request handler with back-pressure, responses written with one write per head
//! where the body is ready. Every framing and size rule lives in `rules.rs`, each with its
//! default; the header-read and idle clocks are kept by the connection loop (`serve.rs`).
//!
//! Opt in with `--http1-server own`; hyper's server behind the framing guard stays the
//! default until an upload stalled after a large burst holds no more under the codec than
//! under hyper (the hostile-client suite measures 192 KiB per upload against hyper's ~85:
//! frozen read chunks keep their 16 KiB allocations alive while frames wait). hyper serves
//! HTTP/2 either way (a connection that opens with the HTTP/2 preface is handed to it).

mod body;
mod buffer;
mod chunked;
#[doc(hidden)]
pub mod fuzzing;
mod head;
mod response;
pub(super) mod rules;
mod serve;
mod upgrade;

pub(super) use body::RequestBody;
pub(super) use serve::{Ending, IdleWait, serve};
pub(super) use upgrade::{PendingUpgrade, Upgraded};

/// Which HTTP/1 server answers downstream connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Server {
    /// hyper's server behind the framing guard (`h1_guard.rs`).
    #[default]
    Hyper,
    /// This codec.
    Own,
}
