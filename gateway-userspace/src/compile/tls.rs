//! Served credentials, for both front ends (Istio servers in `istio/server_tls.rs`,
//! Gateway API listeners in `gateway_api/tls.rs`): what a compile loaded or kept, by name.
//!
//! A credential that cannot be read keeps its last good version (from the last applied
//! compile, in [`TlsState`](crate::tls::TlsState)); one that never loaded skips its
//! server. Either way a warning names the Secret or file, the report staged for the
//! reload lists it, and every other host on the port keeps serving.

use std::{collections::HashMap, sync::Arc};

use super::{index::Index, sink::Sink};
use crate::{
    config::Diagnostic,
    snapshot::ServedCredential,
    tls::{
        TlsState,
        credentials::{Credential, CredentialProblem, CredentialReport},
        server_config::{self},
    },
};

/// A terminating server's rustls configuration and what it may trust of client
/// certificates.
pub(super) type TerminatingConfig = (Arc<rustls::ServerConfig>, server_config::ClientTrust);

/// What a compile loaded or kept, and what it could not, by credential name.
#[derive(Default)]
pub(super) struct CompiledCredentials {
    used: HashMap<String, Credential>,
    report: CredentialReport,
}

/// A credential a server or a rule asks for: its name, who uses it (for the report),
/// where to say what went wrong, and what happens without it.
pub(super) struct Wanted<'r> {
    pub(super) name: String,
    pub(super) user: &'r str,
    pub(super) place: Diagnostic,
    pub(super) unserved: &'r str,
}

impl CompiledCredentials {
    /// This version of a credential, else its last good one (with a warning), else None
    /// (warned, counted, reported).
    pub(super) fn credential(
        &mut self,
        ix: &Index<'_>,
        sink: &mut Sink,
        wanted: Wanted<'_>,
        loaded: Result<Credential, String>,
        served: &mut Vec<ServedCredential>,
    ) -> Option<Credential> {
        let Wanted {
            name,
            user: server,
            place,
            unserved,
        } = wanted;
        let error = match loaded {
            Ok(credential) => {
                served.push(ServedCredential {
                    name: name.clone(),
                    certificate: credential.describe(),
                    stale: None,
                });
                if !self.report.loaded.contains(&name) {
                    self.report.loaded.push(name.clone());
                }
                self.used.insert(name, credential.clone());
                return Some(credential);
            }
            Err(error) => error,
        };
        let Some(last_good) = ix.tls.credentials.last_good(&name) else {
            let what = format!("{name}: {error}");
            self.missing(
                sink,
                Wanted {
                    name,
                    user: server,
                    place,
                    unserved,
                },
                &what,
            );
            return None;
        };
        let description = last_good.describe();
        let diagnostic = Diagnostic {
            message: format!(
                "{name}: {error}; this version is NOT applied: the server keeps serving the last good one ({description})"
            ),
            ..place
        };
        sink.push(diagnostic.clone());
        self.report.problems.push(CredentialProblem {
            credential: name.clone(),
            server: server.to_owned(),
            error: error.clone(),
            kept: Some(description.clone()),
            diagnostic,
        });
        served.push(ServedCredential {
            name: name.clone(),
            certificate: description,
            stale: Some(error),
        });
        self.used.insert(name, last_good.clone());
        Some(last_good)
    }

    /// A credential with no version to serve (`what` says why): its server is skipped,
    /// loudly.
    pub(super) fn missing(&mut self, sink: &mut Sink, wanted: Wanted<'_>, what: &str) {
        let diagnostic = Diagnostic {
            message: format!(
                "{what}; no valid version of it has ever loaded, so {}",
                wanted.unserved
            ),
            ..wanted.place
        };
        sink.push(diagnostic.clone());
        self.report.problems.push(CredentialProblem {
            credential: wanted.name,
            server: wanted.user.to_owned(),
            error: what.to_owned(),
            kept: None,
            diagnostic,
        });
    }

    /// Notes credential files this compile reads, for the reload loop to watch.
    pub(super) fn read_files(&mut self, paths: &[&str]) {
        let files = &mut self.report.files;
        files.extend(paths.iter().map(std::path::PathBuf::from));
    }

    /// This compile's credentials (and the upstream TLS configurations its clusters use),
    /// for the reload to commit once it is live.
    pub(super) fn stage(self, tls: &TlsState, upstream_tls_keys: &[u64]) {
        tls.upstream.keep_only(upstream_tls_keys);
        tls.credentials.stage(self.used, self.report);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{
        compile::{Identity, compile},
        config::{Diagnostics, Resources, source::split_documents, tests_support::parse},
        snapshot::TlsPortPolicy,
    };

    fn compiled(text: &str) -> (crate::snapshot::Snapshot, Diagnostics) {
        let mut resources = Resources::default();
        let mut diagnostics = Diagnostics::default();
        for doc in split_documents(Path::new("gw.yaml"), text) {
            parse(&doc, &mut resources, &mut diagnostics);
        }
        let (snapshot, more) = compile(&resources, &Identity::default());
        diagnostics.extend(more);
        (snapshot, diagnostics)
    }

    const GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: a, protocol: TLS}
    hosts: [\"Pass.Example.com\", \"*.wild.example.com\"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: b, protocol: HTTPS}
    hosts: [\"secure.example.com\"]
    tls: {mode: SIMPLE, credentialName: missing-cred}
  - port: {number: 443, name: c, protocol: HTTPS}
    hosts: [\"old.example.com\"]
    tls: {mode: SIMPLE, credentialName: missing-cred, cipherSuites: [DES-CBC3-SHA]}
";

    #[test]
    fn tls_ports_tell_the_kernel_their_names_and_bad_servers_are_reported() {
        let (snapshot, diagnostics) = compiled(GATEWAY);
        assert_eq!(
            snapshot.kernel.tls_ports,
            [TlsPortPolicy {
                port: 443,
                accept_any: false,
                names: vec!["*.wild.example.com".into(), "pass.example.com".into()],
                // The two terminating servers are skipped (bad Secret, bad suite).
                passthrough: true,
            }]
        );
        let text = diagnostics.to_string();
        assert!(
            text.contains("spec.servers[1].tls.credentialName: Secret missing-cred not found in namespace istio-system or default"),
            "{text}"
        );
        let error = diagnostics
            .errors()
            .next()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            error.contains(
                "spec.servers[2].tls.cipherSuites: cipher suite \"DES-CBC3-SHA\" is not offered"
            ),
            "{text}"
        );
        assert!(
            text.contains("no server on port 443 has host `*`"),
            "{text}"
        );
    }
}

#[cfg(test)]
#[path = "tls_state_tests.rs"]
mod state_tests;
