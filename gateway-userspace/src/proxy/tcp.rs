//! Byte streams to a destination: TCP servers, TLS-terminated TCP, and TLS passthrough
//! (where the already-read ClientHello goes first). A stream idle either way for
//! `--tcp-idle-timeout` is closed (Envoy's tcp_proxy `idle_timeout`), and so is one still
//! open at its listener's drain deadline (`tunnel.rs`).

use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tracing::debug;

use super::{
    tunnel::{self, Clocks, Ending},
    upstream_tls,
};
use crate::{
    runtime::Live,
    snapshot::{RouteAction, WeightedCluster},
};

/// Istio's default upstream connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to an endpoint of one of `clusters` (by weight), sends `prefix`, then copies
/// both ways until either side closes or `clocks` end it. Without a reachable endpoint the
/// downstream is closed, as Envoy's tcp_proxy does.
pub(super) async fn proxy<S>(
    live: &Live,
    mut downstream: S,
    prefix: &[u8],
    clusters: &[WeightedCluster],
    clocks: Clocks,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(cluster) = RouteAction::pick_cluster(clusters) else {
        debug!("no tcp route: closing");
        return;
    };
    let Some(endpoint) = live.cluster(&cluster.cluster).and_then(|c| c.pick()) else {
        debug!(cluster = %cluster.cluster.name, "no healthy upstream: closing");
        return;
    };
    let upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint.addr)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                endpoint.record(true);
                debug!(upstream = %endpoint.addr, error = %e, "upstream connect failed");
                return;
            }
            Err(_) => {
                endpoint.record(true);
                debug!(upstream = %endpoint.addr, "upstream connect timed out");
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    // A cluster that originates TLS (DestinationRule `tls`) gets it on TCP routes too,
    // opened for its `sni`: without one, no SNI and no name but `subjectAltNames` checked,
    // as Envoy's TCP proxy (auto_sni and auto_san_validation need a request's host).
    let mut upstream = match upstream_tls::secure(upstream, &cluster.cluster, CONNECT_TIMEOUT, None)
        .await
    {
        Ok(upstream) => upstream,
        Err(failure) => {
            endpoint.record(true);
            debug!(upstream = %endpoint.addr, reason = failure.reason(), "upstream TLS handshake failed: closing");
            return;
        }
    };
    endpoint.record(false);
    if !prefix.is_empty()
        && let Err(e) = upstream.write_all(prefix).await
    {
        debug!(upstream = %endpoint.addr, error = %e, "upstream write failed");
        return;
    }
    match tunnel::run(&mut downstream, &mut upstream, clocks).await {
        Ending::Closed { sent, received } => {
            debug!(upstream = %endpoint.addr, sent, received, "stream closed");
        }
        Ending::Failed(e) => {
            debug!(upstream = %endpoint.addr, error = %e, "stream ended with an error")
        }
        Ending::Idle => debug!(upstream = %endpoint.addr, "idle stream closed"),
        Ending::Drained => debug!(upstream = %endpoint.addr, "stream closed at the drain deadline"),
    }
}
