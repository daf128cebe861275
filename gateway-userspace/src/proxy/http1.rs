//! Our HTTP/1.1 server codec, on `httparse` (issue 15): request heads parsed from a buffer
//! the connection owns, bodies framed (Content-Length, chunked with trailers) and streamed
//! to the request handler with back-pressure, responses written with one write per head
//! where the body is ready. Every framing and size rule lives in `rules.rs`, each with its
//! default; the header-read and idle clocks are kept by the connection loop (`serve.rs`).
//!
//! It is the default (`--http1-server own`) since every end-to-end test passes with it;
//! `--http1-server hyper` keeps hyper's server behind the framing guard as a fallback for
//! now. hyper serves HTTP/2 either way (a connection that opens with the HTTP/2 preface is
//! handed to it).

mod body;
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
    Hyper,
    /// This codec.
    #[default]
    Own,
}
