//! What HTTPS, TLS and TCP listeners do with a connection before (or instead of) HTTP:
//! the TLS servers of a port (chosen by SNI) and the TCP routes, as compiled.

use std::sync::Arc;

use rustls::ServerConfig;
use serde::{Serialize, Serializer};

use super::WeightedCluster;
use crate::tls::server_config::ClientTrust;

/// What HTTPS, TLS and TCP listeners do with a connection before (or instead of) HTTP.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Transport {
    /// HTTPS and TLS ports: choose a server by SNI.
    Tls(ListenerTls),
    /// TCP ports: proxy the stream to these destinations (VirtualService `tcp` routes).
    Tcp(Vec<WeightedCluster>),
}

impl Transport {
    pub fn tls(&self) -> Option<&ListenerTls> {
        match self {
            Transport::Tls(tls) => Some(tls),
            Transport::Tcp(_) => None,
        }
    }
}

/// Every TLS server on one port, in Gateway order.
#[derive(Debug, Default, Serialize)]
pub struct ListenerTls {
    pub servers: Vec<TlsServer>,
}

#[derive(Debug, Serialize)]
pub struct TlsServer {
    /// `Gateway namespace/name spec.servers[i]`, for logs and the config dump.
    pub name: String,
    /// Lowercase: exact names, `*.suffix` wildcards and `*`.
    pub hosts: Vec<String>,
    pub mode: TlsMode,
    /// What a terminating server serves, for `routes` and the config dump.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<ServedCredential>,
}

/// One credential a server serves, described without its contents.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedCredential {
    /// `Secret namespace/name`, `file PATH`, … (as in logs and metrics).
    pub name: String,
    /// Subject, serial and expiry of the certificate served.
    pub certificate: String,
    /// Set when the current version is broken and this is the last good one: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    /// SIMPLE, MUTUAL and OPTIONAL_MUTUAL.
    Terminate {
        #[serde(serialize_with = "config_summary")]
        config: Arc<ServerConfig>,
        /// Whether the client certificate the handshake accepted may be trusted.
        #[serde(skip)]
        trust: ClientTrust,
        after: AfterTermination,
    },
    /// PASSTHROUGH: the raw stream goes to the first route whose `sniHosts` match.
    Passthrough { routes: Vec<SniRoute> },
}

/// What a terminated connection carries.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AfterTermination {
    /// HTTPS servers: HTTP/1.1 or HTTP/2 (by ALPN), routed by the listener's route table.
    Http,
    /// TLS servers that terminate: the decrypted stream to these destinations.
    Tcp(Vec<WeightedCluster>),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SniRoute {
    /// Lowercase exact names, `*.suffix` wildcards or `*`.
    pub sni_hosts: Vec<String>,
    pub clusters: Vec<WeightedCluster>,
}

impl ListenerTls {
    /// The server a ClientHello with this SNI gets: exact name, then the longest
    /// wildcard, then a `*` server; without SNI only a `*` server. None: refuse.
    pub fn select(&self, sni: Option<&str>) -> Option<(usize, &TlsServer)> {
        let sni = sni.map(str::to_ascii_lowercase);
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(index, server)| {
                let rank = server
                    .hosts
                    .iter()
                    .filter_map(|host| match &sni {
                        Some(name) => host_rank(host, name),
                        None => (host == "*").then_some(0),
                    })
                    .max()?;
                Some((rank, index, server))
            })
            // The best rank; the first server among equals.
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, index, server)| (index, server))
    }

    /// True when no server on the port terminates TLS.
    pub fn all_passthrough(&self) -> bool {
        self.servers
            .iter()
            .all(|s| matches!(s.mode, TlsMode::Passthrough { .. }))
    }

    /// Names and wildcards the port accepts, for the kernel's early SNI check.
    pub fn kernel_policy(&self) -> (bool, Vec<String>) {
        let mut accept_any = false;
        let mut names = Vec::new();
        for host in self.servers.iter().flat_map(|s| &s.hosts) {
            if host == "*" {
                accept_any = true;
            } else if !names.contains(host) {
                names.push(host.clone());
            }
        }
        names.sort();
        (accept_any, names)
    }
}

impl SniRoute {
    /// The route whose `sniHosts` accept the name most specifically (exact, then the
    /// longest wildcard, then `*`, as Envoy picks a filter chain by server name), the
    /// first among equals.
    pub fn find<'r>(routes: &'r [SniRoute], sni: Option<&str>) -> Option<&'r SniRoute> {
        let sni = sni.map(str::to_ascii_lowercase);
        routes
            .iter()
            .enumerate()
            .filter_map(|(index, route)| {
                let rank = route
                    .sni_hosts
                    .iter()
                    .filter_map(|host| match &sni {
                        Some(name) => host_rank(host, name),
                        None => (host == "*").then_some(0),
                    })
                    .max()?;
                Some((rank, index, route))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, _, route)| route)
    }
}

/// How specifically `pattern` matches `name`: exact beats every wildcard, a longer
/// wildcard suffix beats a shorter one, `*` matches last. None: no match. Whether it
/// matches is the rule the kernel filter shares (`gateway_ebpf::sni`): `*.example.com`
/// matches `a.example.com` and `a.b.example.com`, not `example.com`.
fn host_rank(pattern: &str, name: &str) -> Option<usize> {
    if !gateway_ebpf::pattern_matches(pattern.as_bytes(), name.as_bytes()) {
        return None;
    }
    Some(match pattern.strip_prefix('*') {
        None => usize::MAX,
        Some(suffix) => suffix.len(),
    })
}

fn config_summary<S: Serializer>(
    config: &Arc<ServerConfig>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let alpn: Vec<String> = config
        .alpn_protocols
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    serializer.collect_map([("alpn", alpn.join(","))])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(hosts: &[&str]) -> TlsServer {
        TlsServer {
            name: hosts.join(","),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            mode: TlsMode::Passthrough { routes: Vec::new() },
            credentials: Vec::new(),
        }
    }

    fn chosen(tls: &ListenerTls, sni: Option<&str>) -> Option<usize> {
        tls.select(sni).map(|(index, _)| index)
    }

    /// Userspace serves exactly what the shared rule accepts, on the table the kernel
    /// tests run too (gateway_ebpf::sni_table).
    #[test]
    fn server_selection_agrees_with_the_generated_sni_table() {
        for case in gateway_ebpf::sni_table::cases() {
            let tls = ListenerTls {
                servers: vec![server(&[case.pattern])],
            };
            assert_eq!(
                tls.select(Some(&case.name)).is_some(),
                case.accepted,
                "select: {case:?}"
            );
            let routes = [SniRoute {
                sni_hosts: vec![case.pattern.to_owned()],
                clusters: Vec::new(),
            }];
            assert_eq!(
                SniRoute::find(&routes, Some(&case.name)).is_some(),
                case.accepted,
                "passthrough route: {case:?}"
            );
        }
    }

    #[test]
    fn sni_picks_exact_then_longest_wildcard_then_star() {
        let tls = ListenerTls {
            servers: vec![
                server(&["*"]),
                server(&["*.example.com"]),
                server(&["*.api.example.com"]),
                server(&["www.example.com", "example.org"]),
            ],
        };
        assert_eq!(chosen(&tls, Some("www.example.com")), Some(3));
        assert_eq!(chosen(&tls, Some("WWW.Example.COM")), Some(3));
        assert_eq!(chosen(&tls, Some("v1.api.example.com")), Some(2));
        assert_eq!(chosen(&tls, Some("shop.example.com")), Some(1));
        assert_eq!(chosen(&tls, Some("example.com")), Some(0));
        assert_eq!(chosen(&tls, Some("other.net")), Some(0));
        assert_eq!(chosen(&tls, None), Some(0));
    }

    #[test]
    fn without_a_star_server_unknown_and_missing_sni_are_refused() {
        let tls = ListenerTls {
            servers: vec![server(&["*.example.com"]), server(&["a.example.org"])],
        };
        assert_eq!(chosen(&tls, Some("a.example.org")), Some(1));
        assert_eq!(chosen(&tls, Some("example.com")), None);
        assert_eq!(chosen(&tls, Some("b.example.org")), None);
        assert_eq!(chosen(&tls, None), None);
        assert_eq!(
            tls.kernel_policy(),
            (
                false,
                vec!["*.example.com".to_owned(), "a.example.org".to_owned()]
            )
        );
    }
}
