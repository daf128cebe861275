use std::sync::Arc;

use rustls_pki_types::ServerName;

use super::*;
use crate::tls::upstream::UpstreamTls;

fn cluster(auto_sni: bool, auto_san_validation: bool) -> Cluster {
    let mut cluster = Cluster::new(
        "api.example.com".to_owned(),
        "api".to_owned(),
        "default".to_owned(),
        443,
    );
    cluster.tls = Some(Arc::new(UpstreamTls {
        mode: "SIMPLE",
        sni: ServerName::try_from("api.example.com").expect("a name"),
        auto_sni,
        auto_san_validation,
        subject_alt_names: Vec::new(),
        origin: String::new(),
        config: Err("unused".into()),
        refused: None,
        key: 7,
    }));
    cluster
}

#[test]
fn auto_sni_takes_the_authority_without_its_port_as_envoys_parse_authority() {
    let auto = cluster(true, true);
    let cases: [(&str, &str); 9] = [
        ("en.wikipedia.org", "en.wikipedia.org"),
        ("en.wikipedia.org:8443", "en.wikipedia.org"),
        ("192.0.2.1:80", "192.0.2.1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        // Not a port: taken whole (no certificate names it).
        ("host:https", "host:https"),
        ("host:65536", "host:65536"),
        ("host:", "host:"),
        // Brackets around what is no address stay.
        ("[host]", "[host]"),
    ];
    for (authority, host) in cases {
        assert_eq!(
            auto_sni_host(&auto, authority.as_bytes()),
            Some(host.as_bytes()),
            "{authority}"
        );
    }
    // Other clusters' connections are opened for their `sni` whatever the request.
    assert_eq!(
        auto_sni_host(&cluster(false, false), b"a.example.com"),
        None
    );
}

#[test]
fn the_server_name_is_the_host_an_address_sends_none_and_an_odd_host_is_refused_if_checked() {
    let checked = cluster(true, true);
    let tls = checked.tls.as_ref().expect("tls");
    let name = |host: Option<&[u8]>| server_name(tls, host).map(|n| n.to_str().into_owned());
    assert_eq!(name(None).as_deref(), Ok("api.example.com"));
    assert_eq!(
        name(Some(b"de.wikipedia.org")).as_deref(),
        Ok("de.wikipedia.org")
    );
    // rustls sends no SNI for an address, and checks the certificate against it.
    assert!(matches!(
        server_name(tls, Some(b"192.0.2.1")),
        Ok(ServerName::IpAddress(_))
    ));
    assert_eq!(name(Some(b"host:https")), Err(TlsFailure::NameMismatch));
    // The unspecified address stands for a connection with no name, whose certificate
    // names go unchecked: a request's host never opens one when the name is checked.
    assert_eq!(name(Some(b"0.0.0.0")), Err(TlsFailure::NameMismatch));
    let unchecked = cluster(true, false);
    let tls = unchecked.tls.as_ref().expect("tls");
    assert_eq!(
        server_name(tls, Some(b"host:https")).map(|n| n.to_str().into_owned()),
        Ok("api.example.com".to_owned())
    );
}

/// Two hosts' connections are pooled apart; one host's requests share theirs.
#[test]
fn server_name_keys_tell_hosts_apart() {
    let a = server_name_key(7, b"en.wikipedia.org");
    assert_eq!(a, server_name_key(7, b"en.wikipedia.org"));
    assert_ne!(a, server_name_key(7, b"de.wikipedia.org"));
    assert_ne!(a, server_name_key(8, b"en.wikipedia.org"));
}
