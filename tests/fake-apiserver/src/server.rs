//! The listener and connections: HTTP/1.1 as kube-rs and client-go speak to a plain-HTTP
//! server. The listener sits in a slot that the test side can empty and refill without
//! waiting for the server task, so that "connections are refused" holds as soon as
//! [`crate::FakeApi::set_outage`] returns.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::handlers::handle;
use crate::state::{Shared, lock};

pub(crate) enum Listener {
    Open(TcpListener),
    /// Bound by the test side (outside the runtime); registered by the server task.
    Bound(std::net::TcpListener),
    Closed,
}

/// Binds synchronously: the kernel queues connections from this point on.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<Listener> {
    // std sets SO_REUSEADDR on Unix, so the same port can be bound again after an outage.
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(Listener::Bound(listener))
}

pub(crate) async fn serve(shared: Arc<Shared>) {
    let mut outage = shared.outage.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        outage.borrow_and_update();
        {
            let mut slot = lock(&shared.listener);
            if let Listener::Bound(_) = &*slot
                && let Listener::Bound(std) = std::mem::replace(&mut *slot, Listener::Closed)
            {
                *slot = TcpListener::from_std(std).map_or(Listener::Closed, Listener::Open);
            }
        }
        let accept = poll_fn(|cx| match &*lock(&shared.listener) {
            Listener::Open(listener) => listener.poll_accept(cx),
            Listener::Bound(_) | Listener::Closed => Poll::Pending,
        });
        tokio::select! {
            accepted = accept => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(connection(shared.clone(), stream));
                }
            }
            _ = outage.changed() => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn connection(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut cut = shared.cut_connections.subscribe();
    cut.mark_unchanged();
    let service = {
        let shared = shared.clone();
        service_fn(move |request| handle(shared.clone(), request))
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = cut.changed() => {}
    }
}
