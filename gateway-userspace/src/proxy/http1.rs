//! Our HTTP/1.1 server codec, on `httparse` (issue 15): request heads parsed from a buffer
//! the connection owns, bodies framed (Content-Length, chunked with trailers) and streamed
//! to the request handler with back-pressure, responses written with one write per head
//! where the body is ready. Every framing and size rule lives in `rules.rs`, each with its
//! default; the header-read and idle clocks are kept by the connection loop (`serve.rs`).
//!
//! The default since an upload stalled after a large burst holds about what it holds
//! under hyper (`buffer.rs`); `--http1-server hyper` serves with hyper behind the
//! framing guard instead. hyper serves HTTP/2 either way (a connection that opens with the
//! HTTP/2 preface is handed to it).

mod body;
mod buffer;
mod chunked;
pub(super) mod client;
mod field_line;
#[doc(hidden)]
pub mod fuzzing;
mod halves;
mod handoff;
mod head;
mod idle;
pub(super) mod passed;
pub(super) mod request_fields;
mod response;
pub(super) mod rules;
mod serve;
mod upgrade;

pub(super) use body::RequestBody;
pub(super) use idle::IdleWait;
pub(super) use serve::{Ending, serve};
pub(super) use upgrade::{PendingUpgrade, Upgraded};

/// Which HTTP/1 server answers downstream connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Server {
    /// hyper's server behind the framing guard (`h1_guard.rs`).
    Hyper,
    /// This codec.
    #[default]
    Own,
}

/// Which HTTP/1 client carries requests to HTTP/1.1 upstreams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Client {
    /// hyper's client connection (a connection task per upstream connection).
    Hyper,
    /// This codec's client (`client.rs`).
    #[default]
    Own,
}
