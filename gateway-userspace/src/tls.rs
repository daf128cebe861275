//! TLS as an Istio gateway does it: every HTTPS/TLS server on a port becomes a
//! `TlsServer` (in the snapshot) with its own rustls configuration (certificates, client-certificate
//! policy, versions, suites, ALPN); a connection's ClientHello picks one server by SNI
//! (`ListenerTls::select`: exact name, then the longest wildcard, then `*`), which then
//! terminates (and serves HTTP or proxies TCP) or passes the raw stream through.
//!
//! `compile` builds these (`snapshot::Transport`) from Gateway servers and Secrets with
//! the rustls configurations made here; `proxy::tls` uses them. A new snapshot carries
//! new configurations, so certificate changes reach the next handshake
//! while open connections keep the snapshot they started with. What outlives one compile
//! (session scopes, the last good credentials) is in [`TlsState`].

pub mod certs;
pub mod client_cert;
pub mod credentials;
pub mod server_config;
pub mod sessions;
pub mod upstream;

use crate::snapshot::ListenerTls;

/// TLS state a running gateway keeps from one compile to the next.
#[derive(Default)]
pub struct TlsState {
    /// Ticket keys and session caches, one per client-auth policy (see `sessions`).
    pub sessions: sessions::SessionScopes,
    /// The last good version of each credential (see `credentials`).
    pub credentials: credentials::CredentialMemory,
    /// Upstream TLS client configurations by settings (see `upstream`).
    pub upstream: upstream::ClientConfigs,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials themselves.
        f.debug_struct("TlsState")
            .field("session_scopes", &self.sessions.live())
            .finish_non_exhaustive()
    }
}

/// What the HTTP handler knows about a terminated connection.
#[derive(Debug, Default)]
pub struct TlsConnectionInfo {
    /// The SNI the client sent, lowercase.
    pub sni: Option<String>,
    /// Index in the listener's [`ListenerTls::servers`] of the server SNI chose.
    pub server: usize,
    /// `x-forwarded-client-cert` for a verified client certificate.
    pub client_cert: Option<String>,
    /// The verified client certificate's identity for AuthorizationPolicy `principals`
    /// (`tls::client_cert::principal`).
    pub principal: Option<String>,
    /// The client presented a certificate that did not verify and was served anyway
    /// (AllowInsecureFallback): `client_cert` and `principal` are None, and nothing
    /// else may take the certificate for an identity.
    pub unverified_client_cert: bool,
}

impl TlsConnectionInfo {
    /// A request whose Host another server on the port would serve: the client reused
    /// a connection (HTTP/2 coalescing) that SNI bound to a different server, and gets
    /// 421 Misdirected Request so that it opens a new one.
    pub fn is_misdirected(&self, listener_tls: &ListenerTls, authority: &str) -> bool {
        let host = strip_port(authority);
        match listener_tls.select(Some(host)) {
            Some((index, _)) => index != self.server,
            None => false,
        }
    }
}

/// `host:port` → `host`, `[v6]:port` → `[v6]`.
fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            if host.starts_with('[') || !host.contains(':') {
                host
            } else {
                authority
            }
        }
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{TlsMode, TlsServer};

    fn server(hosts: &[&str]) -> TlsServer {
        TlsServer {
            name: hosts.join(","),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            mode: TlsMode::Passthrough { routes: Vec::new() },
            credentials: Vec::new(),
        }
    }

    #[test]
    fn a_host_served_by_another_server_is_misdirected() {
        let tls = ListenerTls {
            servers: vec![server(&["a.example.com"]), server(&["*.example.com"])],
        };
        let on_a = TlsConnectionInfo {
            sni: Some("a.example.com".into()),
            server: 0,
            client_cert: None,
            principal: None,
            unverified_client_cert: false,
        };
        assert!(!on_a.is_misdirected(&tls, "a.example.com:8443"));
        assert!(on_a.is_misdirected(&tls, "b.example.com"));
        // No server accepts it: routing answers (404), not 421.
        assert!(!on_a.is_misdirected(&tls, "example.net"));
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }
}
